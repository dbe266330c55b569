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
