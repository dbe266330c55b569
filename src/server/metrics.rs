//! Server counters: cheap atomics bumped on the hot path and read as a [`MetricsSnapshot`].
//!
//! Breakdowns by reason or kind are [`Tally`]s indexed by a vocabulary's positions (close
//! reasons, refusals, rate limits, frame kinds), never by free strings, so that every label a
//! scrape shows is a name the rest of the server already uses.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::activity::{limit_position, refusal_position, CloseReason, LIMITS, REFUSALS};
use crate::guard::{Limited, Refusal};
use crate::protocol::{DecodeError, Kind};

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
            /// Connections refused at accept, by refusal, positioned like the guard's refusals.
            pub refused_by: Tally<{ REFUSALS.len() }>,
            /// Connections closed, by [`CloseReason`] position.
            pub closed_by: Tally<{ CloseReason::ALL.len() }>,
            /// Requests refused by a rate limiter, by limit, positioned like the guard's limits
            /// (a login refused because the verification queue was full has no limit and is
            /// counted in `rate_limited` only).
            pub limited_by: Tally<{ LIMITS.len() }>,
            /// Frames received, by [`Kind::ALL`] position.
            pub frames_in_by: Tally<{ Kind::ALL.len() }>,
            /// Frames sent, by [`Kind::ALL`] position.
            pub frames_out_by: Tally<{ Kind::ALL.len() }>,
            /// How long each store delivery kept its session waiting (the queue, the group
            /// commit and its fsync).
            pub store_commit: Latency,
            /// How late the event-loop lag probe woke, each time it woke.
            pub loop_lag: Latency,
            /// Uploads staged and not yet finished or dropped, across all sessions.
            pub open_uploads: AtomicU64,
        }

        /// A point-in-time copy of [`Metrics`].
        #[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
        pub struct MetricsSnapshot {
            $( $(#[$doc])* pub $name: u64, )*
            /// Decode errors by reason label.
            pub decode_errors: BTreeMap<&'static str, u64>,
            /// Connections refused at accept, by refusal name.
            pub refused_by: BTreeMap<&'static str, u64>,
            /// Connections closed, by close reason.
            pub closed_by: BTreeMap<&'static str, u64>,
            /// Rate-limit refusals, by limit name.
            pub limited_by: BTreeMap<&'static str, u64>,
            /// Frames received, by wire name.
            pub frames_in_by: BTreeMap<&'static str, u64>,
            /// Frames sent, by wire name.
            pub frames_out_by: BTreeMap<&'static str, u64>,
            /// Uploads open now.
            pub open_uploads: u64,
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
                    refused_by: self.refused_by.read(REFUSALS.iter().map(Refusal::reason)),
                    closed_by: self.closed_by.read(CloseReason::NAMES),
                    limited_by: self.limited_by.read(LIMITS.iter().map(|l| l.reason())),
                    frames_in_by: self.frames_in_by.read(Kind::ALL.iter().map(|k| k.wire_name())),
                    frames_out_by: self.frames_out_by.read(Kind::ALL.iter().map(|k| k.wire_name())),
                    open_uploads: self.open_uploads.load(Ordering::Relaxed),
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
    /// Requests for an item id that no item ever had (past the highest handed out).
    unknown_ids,
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

impl Metrics {
    /// Counts a connection refused at accept, by its refusal.
    pub fn refused(&self, refusal: &Refusal) {
        Metrics::bump(&self.connections_refused);
        self.refused_by.bump(refusal_position(refusal));
    }

    /// Counts a connection closed, by its reason.
    pub fn closed(&self, reason: CloseReason) {
        Metrics::bump(&self.connections_closed);
        self.closed_by.bump(position(&CloseReason::ALL, &reason));
    }

    /// Counts a request refused by a rate limiter.
    pub fn limited(&self, limit: Limited) {
        Metrics::bump(&self.rate_limited);
        self.limited_by.bump(limit_position(limit));
    }

    /// Counts a frame received.
    pub fn frame_in(&self, kind: Kind) {
        Metrics::bump(&self.frames_in);
        self.frames_in_by.bump(position(Kind::ALL, &kind));
    }

    /// Counts a frame sent.
    pub fn frame_out(&self, kind: Kind) {
        Metrics::bump(&self.frames_out);
        self.frames_out_by.bump(position(Kind::ALL, &kind));
    }

    /// An upload staged: counted open until the returned guard is dropped, however its
    /// session ends.
    pub fn upload_opened(self: &std::sync::Arc<Self>) -> OpenUpload {
        Metrics::bump(&self.open_uploads);
        OpenUpload(std::sync::Arc::clone(self))
    }
}

/// One open upload in [`Metrics::open_uploads`], for as long as it lives.
#[derive(Debug)]
pub struct OpenUpload(std::sync::Arc<Metrics>);

impl Drop for OpenUpload {
    fn drop(&mut self) {
        self.0.open_uploads.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The position of `v` in `all` (past the end if absent, which [`Tally::bump`] ignores).
fn position<T: PartialEq>(all: &[T], v: &T) -> usize {
    all.iter().position(|x| x == v).unwrap_or(usize::MAX)
}

/// Counters by position in a vocabulary of `N` names.
#[derive(Debug)]
pub struct Tally<const N: usize>([AtomicU64; N]);

impl<const N: usize> Default for Tally<N> {
    fn default() -> Self {
        Tally(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl<const N: usize> Tally<N> {
    /// Adds one at position `i`; a position past the end is ignored.
    pub fn bump(&self, i: usize) {
        if let Some(c) = self.0.get(i) {
            Metrics::bump(c);
        }
    }

    /// The counts paired with `names`, the vocabulary in position order.
    pub fn read(
        &self,
        names: impl IntoIterator<Item = &'static str>,
    ) -> BTreeMap<&'static str, u64> {
        names
            .into_iter()
            .zip(self.0.iter())
            .map(|(n, c)| (n, c.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Upper bounds of the [`Latency`] buckets, in microseconds: 100 µs (an event loop or a
/// cached commit doing well) to 2.5 s (a disk that stalls), about ×2.5 a step, which is
/// what a Prometheus quantile needs to tell a healthy fsync from a sick one.
pub const LATENCY_BOUNDS_US: [u64; 11] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 500_000, 2_500_000,
];

/// A latency histogram of atomics: a count per [`LATENCY_BOUNDS_US`] bucket and one above
/// the last, their sum and their count.
#[derive(Debug, Default)]
pub struct Latency {
    buckets: Tally<{ LATENCY_BOUNDS_US.len() + 1 }>,
    sum_us: AtomicU64,
    count: AtomicU64,
}

/// A copy of a [`Latency`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LatencySnapshot {
    /// Observations per bucket (not cumulative): `(upper bound in µs, count)`, the last
    /// bucket's bound `None` (no bound).
    pub buckets: Vec<(Option<u64>, u64)>,
    /// The sum of every observation, microseconds.
    pub sum_us: u64,
    /// How many observations.
    pub count: u64,
}

impl Latency {
    /// Adds one observation.
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        self.buckets.bump(i);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        Metrics::bump(&self.count);
    }

    /// A copy. Read while others observe, the count may run one or two ahead of the
    /// buckets; a scrape does not need better.
    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            buckets: LATENCY_BOUNDS_US
                .iter()
                .map(|b| Some(*b))
                .chain(std::iter::once(None))
                .zip(self.buckets.0.iter())
                .map(|(b, c)| (b, c.load(Ordering::Relaxed)))
                .collect(),
            sum_us: self.sum_us.load(Ordering::Relaxed),
            count: self.count.load(Ordering::Relaxed),
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
    /// The longest store delivery as a session waited for it (the queue, the group commit
    /// and its fsync): a slow disk shows here.
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

    #[test]
    fn breakdowns_add_up_to_their_totals() {
        let m = Metrics::default();
        m.closed(CloseReason::Eof);
        m.closed(CloseReason::Blocked);
        m.closed(CloseReason::Blocked);
        m.refused(&Refusal::AcceptRate);
        m.limited(Limited::LoginIp);
        m.frame_in(Kind::Auth);
        m.frame_out(Kind::Error);
        m.frame_out(Kind::AuthOk);
        let s = m.snapshot();
        assert_eq!(s.connections_closed, 3);
        assert_eq!(s.closed_by.get("blocked"), Some(&2));
        assert_eq!(s.closed_by.get("eof"), Some(&1));
        assert_eq!(s.closed_by.len(), CloseReason::ALL.len());
        assert_eq!(s.refused_by.get("accept_rate"), Some(&1));
        assert_eq!(s.refused_by.values().sum::<u64>(), s.connections_refused);
        assert_eq!(s.limited_by.get("login_rate_ip"), Some(&1));
        assert_eq!(s.frames_in_by.get("AUTH"), Some(&1));
        assert_eq!(s.frames_out_by.values().sum::<u64>(), 2);
        assert_eq!(s.frames_out_by.len(), Kind::ALL.len());
    }

    #[test]
    fn open_uploads_fall_when_their_guard_drops() {
        let m = std::sync::Arc::new(Metrics::default());
        let a = m.upload_opened();
        let b = m.upload_opened();
        assert_eq!(m.snapshot().open_uploads, 2);
        drop(a);
        drop(b);
        assert_eq!(m.snapshot().open_uploads, 0);
    }

    #[test]
    fn latency_lands_in_the_first_bucket_that_holds_it() {
        let l = Latency::default();
        l.observe(Duration::from_micros(100));
        l.observe(Duration::from_micros(101));
        l.observe(Duration::from_secs(60));
        let s = l.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.sum_us, 60_000_201);
        assert_eq!(s.buckets.first(), Some(&(Some(100), 1)));
        assert_eq!(s.buckets.get(1), Some(&(Some(250), 1)));
        assert_eq!(s.buckets.last(), Some(&(None, 1)));
        assert_eq!(s.buckets.len(), LATENCY_BOUNDS_US.len() + 1);
    }
}
