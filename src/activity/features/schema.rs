//! The feature schema: [`FEATURES`] (names, order, definitions) from one table, the
//! per-window accumulator that events are counted into, and the per-source history that the
//! `hist_*` features decay. What a row means lives here; when rows are made lives in
//! `window`. Every feature is documented in `docs/DETECTION.md`.

use std::net::IpAddr;

use serde::Serialize;

use crate::activity::{CloseReason, Event, EventKind};
use crate::guard::SourceKey;
use crate::protocol::error::DecodeErrorKind;
use crate::protocol::Kind;

/// Version of the feature schema ([`FEATURES`], their order and their definitions). Bump it on
/// any change; model files store it and refuse data of another version.
pub const FEATURE_SCHEMA_VERSION: u32 = 3;

/// Half-life of the per-source history features (`hist_*`): a minute of memory, long enough
/// to see a one-request-a-second enumeration build up, short enough that a source that stops
/// misbehaving is forgiven within minutes.
pub const HISTORY_HALF_LIFE_MS: i64 = 60_000;

/// Time a request frame may take to arrive, from its first byte to its last, before
/// `slow_frame_ms_max` counts it: a second covers a large frame on a slow link and any
/// client's way of writing a frame in pieces, so only a frame held open on purpose (or a link
/// too slow to use) shows.
pub const SLOW_FRAME_GRACE_MS: u32 = 1_000;

/// Gaps between request frames longer than this count as this long, which bounds the
/// inter-arrival sums (an hour is far past every server timeout).
pub const GAP_CAP_MS: u64 = 3_600_000;

/// Defines [`FEATURES`] and the function that computes them from one window's accumulator
/// and the source's history, from one list, so names and values cannot drift apart.
macro_rules! features {
    ($w:ident, $h:ident; $( $name:ident = $value:expr; )*) => {
        /// Feature names, in column order (CSV columns, model inputs). Documented one by one
        /// in `docs/DETECTION.md`.
        pub const FEATURES: &[&str] = &[$(stringify!($name)),*];

        /// One row's values, in [`FEATURES`] order, from its window and the history that
        /// already absorbed that window.
        pub(super) fn compute($w: &Acc, $h: &History) -> Vec<f64> {
            vec![$(finite($value)),*]
        }
    };
}

features! { w, h;
    // Connections.
    connections_opened = f64::from(w.connections_opened);
    concurrent_connections_max = f64::from(w.concurrent_max);
    refused = f64::from(w.refused);
    closes = f64::from(w.closes);
    server_closes = f64::from(w.server_closes);
    // Volume.
    frames_in = f64::from(w.frames_in);
    frames_out = f64::from(w.frames_out);
    bytes_in = w.bytes_in as f64;
    bytes_out = w.bytes_out as f64;
    frame_in_size_mean = ratio(w.bytes_in as f64, f64::from(w.frames_in));
    frame_in_size_max = f64::from(w.frame_in_max);
    // Protocol and session failures.
    decode_errors = f64::from(w.decode_errors);
    header_errors = f64::from(w.header_errors);
    frame_too_large = f64::from(w.frame_too_large);
    auth_ok = f64::from(w.auth_ok);
    auth_failures = f64::from(w.auth_failures);
    permission_denials = f64::from(w.permission_denials);
    rate_limit_hits = f64::from(w.rate_limit_hits);
    // What is asked for.
    distinct_kinds = f64::from(w.kinds.len());
    kind_fraction_item = ratio(f64::from(w.item_frames), f64::from(w.frames_in));
    kind_fraction_write = ratio(f64::from(w.write_frames), f64::from(w.frames_in));
    kind_fraction_control = ratio(f64::from(w.control_frames), f64::from(w.frames_in));
    // Timing.
    timeouts = f64::from(w.timeouts);
    frame_timeouts = f64::from(w.frame_timeouts);
    write_timeouts = f64::from(w.write_timeouts);
    slow_frame_ms_max = f64::from(w.partial_ms_max.saturating_sub(SLOW_FRAME_GRACE_MS));
    unread_outbound_bytes = w.unread_bytes as f64;
    interarrival_mean_ms = w.gaps.mean();
    interarrival_var_ms2 = w.gaps.variance();
    // The source's recent past (decayed, causal: this window and earlier ones only).
    hist_frames_in = h.frames_in;
    hist_permission_denials = h.permission_denials;
    hist_auth_guesses = h.auth_guesses;
    hist_gap_cv = h.gap_cv();
}

/// The position of a feature in [`FEATURES`].
pub fn feature_index(name: &str) -> Option<usize> {
    FEATURES.iter().position(|f| *f == name)
}

/// `x`, or 0 when `x` is NaN or infinite.
fn finite(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

/// `a / b`, or 0 when `b` is not positive.
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// One source's features for one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureRow {
    /// The source (an IPv4 address or an IPv6 network); displays and serializes as text,
    /// e.g. `127.0.1.5` or `2001:db8::/64`.
    pub source: SourceKey,
    /// Start of the window, in milliseconds since the Unix epoch (a multiple of `window_ms`).
    pub window_start_ms: i64,
    /// Length of the window in milliseconds.
    pub window_ms: u64,
    /// One finite value per name in [`FEATURES`], in that order.
    pub values: Vec<f64>,
}

impl FeatureRow {
    /// The value of the feature called `name`, if there is one.
    pub fn value(&self, name: &str) -> Option<f64> {
        feature_index(name).and_then(|i| self.values.get(i).copied())
    }

    /// An address of the source, for the firewall: the IPv4 address itself, or the network
    /// address of an IPv6 source (the firewall groups it into the same prefix).
    pub fn ip(&self) -> IpAddr {
        match self.source {
            SourceKey::V4(v4) => IpAddr::V4(v4),
            SourceKey::V6 { net, .. } => IpAddr::V6(net),
        }
    }
}

/// A set of frame kind bytes. Request kinds are all below 0x80; a reply kind (which the
/// decoder never lets in) would share the bit of `kind & 0x7f`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct KindSet(u128);

impl KindSet {
    fn insert(&mut self, kind: u8) {
        self.0 |= 1u128 << (kind & 0x7f);
    }

    fn len(self) -> u32 {
        self.0.count_ones()
    }
}

/// Count, sum and sum of squares of inter-arrival gaps, exact in integers.
#[derive(Debug, Clone, Copy, Default)]
struct Gaps {
    n: u64,
    sum: u64,
    sum_sq: u128,
}

impl Gaps {
    fn add(&mut self, gap_ms: u64) {
        let g = gap_ms.min(GAP_CAP_MS);
        self.n = self.n.saturating_add(1);
        self.sum = self.sum.saturating_add(g);
        self.sum_sq = self.sum_sq.saturating_add(u128::from(g) * u128::from(g));
    }

    fn mean(&self) -> f64 {
        ratio(self.sum as f64, self.n as f64)
    }

    /// Population variance: (n·Σg² − (Σg)²) / n², the numerator computed exactly.
    fn variance(&self) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let n = u128::from(self.n);
        let s = u128::from(self.sum);
        let num = n.saturating_mul(self.sum_sq).saturating_sub(s * s);
        num as f64 / (n * n) as f64
    }
}

/// Everything counted about one source in one window. Fixed size: no allocation per event.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Acc {
    /// The window is open (a slot of its source holds it).
    pub(super) active: bool,
    /// Start of the window.
    pub(super) start_ms: i64,
    connections_opened: u32,
    concurrent_max: u32,
    refused: u32,
    closes: u32,
    server_closes: u32,
    frames_in: u32,
    frames_out: u32,
    bytes_in: u64,
    bytes_out: u64,
    frame_in_max: u32,
    decode_errors: u32,
    header_errors: u32,
    frame_too_large: u32,
    auth_ok: u32,
    auth_failures: u32,
    auth_guesses: u32,
    auth_forgiven: u32,
    permission_denials: u32,
    rate_limit_hits: u32,
    kinds: KindSet,
    item_frames: u32,
    write_frames: u32,
    control_frames: u32,
    timeouts: u32,
    frame_timeouts: u32,
    write_timeouts: u32,
    partial_ms_max: u32,
    unread_bytes: u64,
    gaps: Gaps,
}

impl Acc {
    /// An open window starting at `start_ms`, with `open_connections` held open into it.
    pub(super) fn open(start_ms: i64, open_connections: u32) -> Acc {
        Acc {
            active: true,
            start_ms,
            concurrent_max: open_connections,
            ..Acc::default()
        }
    }

    /// Adds one event to this window. `open` is the source's count of open connections and
    /// `last_frame_in_ms` the time of its latest request frame, both kept across windows.
    pub(super) fn add(&mut self, e: &Event, open: &mut u32, last_frame_in_ms: &mut Option<i64>) {
        let w = self;
        match e.kind {
            EventKind::Accept => {
                inc(&mut w.connections_opened);
                *open = open.saturating_add(1);
                w.concurrent_max = w.concurrent_max.max(*open);
            }
            EventKind::Refused { .. } => inc(&mut w.refused),
            EventKind::FrameIn {
                kind,
                size,
                assemble_ms,
            } => {
                inc(&mut w.frames_in);
                w.bytes_in = w.bytes_in.saturating_add(u64::from(size));
                w.frame_in_max = w.frame_in_max.max(size);
                w.partial_ms_max = w.partial_ms_max.max(assemble_ms);
                w.kinds.insert(kind);
                match Kind::from_u8(kind) {
                    Some(Kind::Fetch | Kind::Download | Kind::Delete) => inc(&mut w.item_frames),
                    Some(
                        Kind::SendMessage
                        | Kind::UploadBegin
                        | Kind::UploadChunk
                        | Kind::UploadEnd
                        | Kind::SendFile
                        | Kind::SendMail,
                    ) => inc(&mut w.write_frames),
                    Some(Kind::Auth | Kind::Ping | Kind::Bye) => inc(&mut w.control_frames),
                    _ => {}
                }
                // Frames of all the source's connections, in the order they are pushed; a frame
                // pushed before an earlier-stamped one (another connection, same batch) counts a
                // zero gap.
                if let Some(last) = *last_frame_in_ms {
                    w.gaps
                        .add(e.t_ms.saturating_sub(last).max(0).unsigned_abs());
                }
                *last_frame_in_ms = Some(last_frame_in_ms.map_or(e.t_ms, |l| l.max(e.t_ms)));
            }
            EventKind::FrameOut { size, .. } => {
                inc(&mut w.frames_out);
                w.bytes_out = w.bytes_out.saturating_add(u64::from(size));
            }
            EventKind::DecodeError { reason } => {
                inc(&mut w.decode_errors);
                let kind = DecodeErrorKind::from_name(reason);
                if kind.is_some_and(DecodeErrorKind::is_fatal) {
                    inc(&mut w.header_errors);
                }
                if kind == Some(DecodeErrorKind::FrameTooLarge) {
                    inc(&mut w.frame_too_large);
                }
            }
            EventKind::AuthOk { forgiven } => {
                inc(&mut w.auth_ok);
                w.auth_forgiven = w.auth_forgiven.saturating_add(forgiven);
            }
            EventKind::AuthFailed { guess } => {
                inc(&mut w.auth_failures);
                if guess {
                    inc(&mut w.auth_guesses);
                }
            }
            EventKind::RateLimited { .. } => inc(&mut w.rate_limit_hits),
            EventKind::PermissionDenied => inc(&mut w.permission_denials),
            EventKind::Timeout { reason } => {
                inc(&mut w.timeouts);
                match CloseReason::from_name(reason) {
                    // A frame that took too long to arrive.
                    Some(CloseReason::FrameBudget | CloseReason::SlowFrame) => {
                        inc(&mut w.frame_timeouts);
                    }
                    // A peer that does not read its replies.
                    Some(CloseReason::WriteTimeout) => inc(&mut w.write_timeouts),
                    _ => {}
                }
            }
            EventKind::Close {
                reason,
                unread_bytes,
            } => {
                inc(&mut w.closes);
                // An unknown reason was not the peer's choice either.
                if !CloseReason::from_name(reason).is_some_and(CloseReason::by_peer) {
                    inc(&mut w.server_closes);
                }
                w.unread_bytes = w.unread_bytes.saturating_add(u64::from(unread_bytes));
                *open = open.saturating_sub(1);
            }
        }
    }
}

fn inc(x: &mut u32) {
    *x = x.saturating_add(1);
}

/// A decayed history sum below this counts as zero.
const FORGET_BELOW: f64 = 1e-6;

/// The source's recent past: sums decayed with [`HISTORY_HALF_LIFE_MS`], updated once per
/// emitted row, in window order.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct History {
    last_start_ms: Option<i64>,
    frames_in: f64,
    permission_denials: f64,
    auth_guesses: f64,
    gap_n: f64,
    gap_sum: f64,
    gap_sum_sq: f64,
}

impl History {
    /// Takes in a finished window (windows come in order).
    pub(super) fn absorb(&mut self, w: &Acc) {
        let decay = match self.last_start_ms {
            Some(last) => {
                let dt = w.start_ms.saturating_sub(last).max(0) as f64;
                (-dt / HISTORY_HALF_LIFE_MS as f64).exp2()
            }
            None => 0.0,
        };
        self.last_start_ms = Some(w.start_ms);
        // Decayed leftovers below FORGET_BELOW are noise; flushing them to zero keeps the
        // values (and the CSV) free of denormal-sized numbers.
        let mix = |old: f64, new: f64| {
            let v = finite(old * decay + new);
            if v < FORGET_BELOW {
                0.0
            } else {
                v
            }
        };
        self.frames_in = mix(self.frames_in, f64::from(w.frames_in));
        self.permission_denials = mix(self.permission_denials, f64::from(w.permission_denials));
        // Failed guesses less the ones a later login of the same account from this source
        // showed to be typos: a user who mistypes and then gets in leaves nothing here, a
        // guesser (who never gets in to the accounts it guesses) keeps every guess.
        let guesses = f64::from(w.auth_guesses) - f64::from(w.auth_forgiven);
        self.auth_guesses = mix(self.auth_guesses, guesses);
        self.gap_n = mix(self.gap_n, w.gaps.n as f64);
        self.gap_sum = mix(self.gap_sum, w.gaps.sum as f64);
        self.gap_sum_sq = mix(self.gap_sum_sq, w.gaps.sum_sq as f64);
    }

    /// Coefficient of variation (standard deviation / mean) of the decayed gaps.
    fn gap_cv(&self) -> f64 {
        let mean = ratio(self.gap_sum, self.gap_n);
        if mean <= 0.0 {
            return 0.0;
        }
        let var = (ratio(self.gap_sum_sq, self.gap_n) - mean * mean).max(0.0);
        var.sqrt() / mean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_names_are_unique_snake_case_and_match_the_values() {
        let mut seen = std::collections::BTreeSet::new();
        for name in FEATURES {
            assert!(seen.insert(*name), "duplicate feature {name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name} is not snake_case"
            );
        }
        let values = compute(&Acc::default(), &History::default());
        assert_eq!(values.len(), FEATURES.len());
        assert!(values.iter().all(|v| *v == 0.0));
        assert_eq!(feature_index("connections_opened"), Some(0));
        assert_eq!(feature_index("nope"), None);
    }

    #[test]
    fn every_feature_is_documented() {
        let doc = include_str!("../../../docs/DETECTION.md");
        for name in FEATURES {
            assert!(
                doc.contains(&format!("`{name}`")),
                "docs/DETECTION.md does not document `{name}`"
            );
        }
        assert!(doc.contains(&format!("version {FEATURE_SCHEMA_VERSION}")));
    }
}
