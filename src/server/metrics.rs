//! Server counters: cheap atomics bumped on the hot path and read as a [`MetricsSnapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::protocol::DecodeError;

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident, )*) => {
        /// Live counters shared by every connection.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $( $(#[$doc])* pub $name: AtomicU64, )*
            /// Decode errors by reason, indexed like [`DecodeError::REASONS`].
            pub decode_errors: [AtomicU64; DecodeError::REASONS.len()],
            /// The longest waits since a stall detector last took them.
            pub stalls: Stalls,
        }

        /// A point-in-time copy of [`Metrics`].
        #[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
        pub struct MetricsSnapshot {
            $( $(#[$doc])* pub $name: u64, )*
            /// Decode errors by reason label.
            pub decode_errors: std::collections::BTreeMap<&'static str, u64>,
        }

        impl Metrics {
            /// Copies every counter.
            pub fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot {
                    $( $name: self.$name.load(Ordering::Relaxed), )*
                    decode_errors: DecodeError::REASONS
                        .iter()
                        .zip(self.decode_errors.iter())
                        .map(|(r, c)| (*r, c.load(Ordering::Relaxed)))
                        .collect(),
                }
            }
        }
    };
}

counters! {
    /// Connections admitted.
    connections_accepted,
    /// Connections refused at accept (deny list, blocklist, caps, accept rate).
    connections_refused,
    /// Connections closed, for any reason.
    connections_closed,
    /// Frames received and decoded.
    frames_in,
    /// Reply frames queued.
    frames_out,
    /// Bytes read from clients.
    bytes_in,
    /// Bytes written to clients.
    bytes_out,
    /// Requests refused by a rate limiter.
    rate_limited,
    /// Successful logins.
    auth_ok,
    /// Failed logins.
    auth_failed,
    /// Requests refused for ownership (another user's item).
    permission_denied,
    /// Sessions ended by a frame budget, idle, auth or write timeout.
    timeouts,
    /// Connection tasks that panicked (contained: only that connection closed).
    panics,
    /// Storage or internal errors answered with INTERNAL.
    internal_errors,
    /// Items durably committed.
    items_delivered,
    /// Errors from accept() itself (e.g. out of file descriptors).
    accept_errors,
    /// TLS handshakes completed.
    tls_handshakes,
    /// TLS handshakes that failed (bad records, no shared version, peer closed at once).
    tls_handshake_failures,
    /// TLS handshakes cut at their time budget (a slow ClientHello).
    tls_handshake_timeouts,
    /// Connections closed unshaken because the handshake caps were full.
    tls_handshakes_capped,
    /// Connections to the TLS port whose first bytes were not TLS.
    tls_not_tls,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a decode error by its reason.
    pub fn decode_error(&self, e: &DecodeError) {
        if let Some(i) = DecodeError::REASONS.iter().position(|r| *r == e.reason()) {
            if let Some(c) = self.decode_errors.get(i) {
                Metrics::bump(c);
            }
        }
    }
}

impl MetricsSnapshot {
    /// All decode errors, whatever the reason.
    pub fn decode_errors_total(&self) -> u64 {
        self.decode_errors.values().sum()
    }
}

/// The longest waits seen since they were last taken: what a stall detector samples once
/// per interval (the scenario runner, once a second). Each is a maximum in microseconds,
/// reset by [`Stalls::take`].
#[derive(Debug, Default)]
pub struct Stalls {
    /// How late the event loop ran a timer that should have fired every
    /// [`LAG_PROBE_EVERY`]: a worker thread that is blocked or starved shows here.
    pub loop_lag_us: AtomicU64,
    /// The longest store delivery as a session waited for it (blocking-pool hand-off, group
    /// commit and its fsync): a slow disk shows here.
    pub delivery_us: AtomicU64,
}

/// How often the server's event-loop lag probe wakes.
pub const LAG_PROBE_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// One sample of [`Stalls`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StallSample {
    /// Longest event-loop lag, microseconds.
    pub loop_lag_us: u64,
    /// Longest store delivery, microseconds.
    pub delivery_us: u64,
}

impl Stalls {
    /// Raises `counter` to `d` if `d` is longer.
    pub fn note(counter: &AtomicU64, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        counter.fetch_max(us, Ordering::Relaxed);
    }

    /// The maxima since the last call, resetting them.
    pub fn take(&self) -> StallSample {
        StallSample {
            loop_lag_us: self.loop_lag_us.swap(0, Ordering::Relaxed),
            delivery_us: self.delivery_us.swap(0, Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stalls_keep_the_maximum_until_taken() {
        let m = Metrics::default();
        Stalls::note(&m.stalls.delivery_us, Duration::from_millis(3));
        Stalls::note(&m.stalls.delivery_us, Duration::from_millis(40));
        Stalls::note(&m.stalls.delivery_us, Duration::from_millis(5));
        Stalls::note(&m.stalls.loop_lag_us, Duration::from_micros(700));
        assert_eq!(
            m.stalls.take(),
            StallSample {
                loop_lag_us: 700,
                delivery_us: 40_000
            }
        );
        assert_eq!(m.stalls.take(), StallSample::default());
    }
}
