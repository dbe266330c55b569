//! Features per (source, window): the one extractor that both the live detector (a
//! [`WindowSink`](super::WindowSink) on the recorder's writer thread) and `rampart activity
//! export` run, so the model scores in production exactly what it was trained on (no
//! training/serving skew). Every feature is documented in `docs/DETECTION.md`.
//!
//! Windows are fixed and aligned: window `k` of a `W` ms extractor covers
//! `[k*W, (k+1)*W)` ms since the Unix epoch. A source is an IPv4 address, or an IPv6 network
//! of `ipv6_prefix` bits ([`SourceKey`]), exactly as the guard and the firewall count them.
//!
//! A source emits one row for each window in which it had at least one event, and one row for
//! each window without events during which it still held open connections (so a peer that
//! holds idle connections or drips a frame byte by byte is visible while it does it), for at
//! most [`IDLE_ROWS_MAX_MS`] after its last event.
//!
//! Rows become final when the caller closes their window ([`Extractor::close_until`]), or when
//! the source has an event two windows later. Until then, an event up to one window late still
//! lands in its own window; an event for a window that is already final goes into the
//! source's current window and is counted in [`ExtractorStats::late_events`].
//!
//! Invariant: `push` allocates only when a new source appears; memory is bounded by
//! `max_sources` (least-recently-seen sources are evicted and counted); output order never
//! depends on hash order; every value is finite.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

use super::{CloseReason, Event, EventKind};
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

/// A source that holds open connections but sends nothing emits idle rows for at most this
/// long after its last event (or [`IDLE_ROWS_MAX_WINDOWS`] windows if that is shorter, but
/// at least two windows). Every server timeout (idle, auth, frame budget, write) is far
/// shorter, so a source still "open" past this has lost its close event (shed by the
/// recorder) rather than holding a connection.
pub const IDLE_ROWS_MAX_MS: i64 = 300_000;

/// At most this many idle rows follow a source's last event (matters for tiny windows).
pub const IDLE_ROWS_MAX_WINDOWS: i64 = 600;

/// A source unseen for this long (or four windows, if longer) is forgotten: its history and
/// open-connection count restart from zero, exactly as if it had never been seen.
pub const FORGET_AFTER_MS: i64 = 600_000;

/// Time a request frame may take to arrive, from its first byte to its last, before
/// `slow_frame_ms_max` counts it: a second covers a large frame on a slow link and any
/// client's way of writing a frame in pieces, so only a frame held open on purpose (or a link
/// too slow to use) shows.
pub const SLOW_FRAME_GRACE_MS: u32 = 1_000;

/// Gaps between request frames longer than this count as this long, which bounds the
/// inter-arrival sums (an hour is far past every server timeout).
pub const GAP_CAP_MS: u64 = 3_600_000;

/// IPv6 sources are grouped by this prefix unless [`Extractor::with_ipv6_prefix`] says
/// otherwise; the same default as the guard's `ip.ipv6_prefix`.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// Longest window accepted by [`parse_window`] and [`Extractor::new`].
pub const MAX_WINDOW: Duration = Duration::from_secs(3600);

/// When the extractor is full, it evicts this fraction (1/N) of its sources at once, so that
/// the scan that finds the least recently seen ones costs O(1) per new source on average.
const EVICT_FRACTION: usize = 32;

/// Defines [`FEATURES`] and the function that computes them from one window's accumulator
/// and the source's history, from one list, so names and values cannot drift apart.
macro_rules! features {
    ($w:ident, $h:ident; $( $name:ident = $value:expr; )*) => {
        /// Feature names, in column order (CSV columns, model inputs). Documented one by one
        /// in `docs/DETECTION.md`.
        pub const FEATURES: &[&str] = &[$(stringify!($name)),*];

        fn compute($w: &Acc, $h: &History) -> Vec<f64> {
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

/// Why a window length was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// Not a whole number followed by a unit.
    #[error("invalid window `{0}`: expected a whole number followed by ms, s or m (e.g. 500ms, 1s, 10s)")]
    Syntax(String),
    /// Zero or longer than [`MAX_WINDOW`].
    #[error("invalid window `{0}`: it must be at least 1ms and at most 1h")]
    Range(String),
}

/// Parses a window length: a whole number followed by `ms`, `s` or `m` (`500ms`, `1s`, `10s`,
/// `1m`), from 1 ms to [`MAX_WINDOW`].
pub fn parse_window(text: &str) -> Result<Duration, WindowError> {
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = t.split_at(digits);
    let per_unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        _ => return Err(WindowError::Syntax(text.to_owned())),
    };
    if number.is_empty() {
        return Err(WindowError::Syntax(text.to_owned()));
    }
    // Too many digits for u64 is out of range, not a syntax error.
    let ms = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(per_unit_ms))
        .ok_or_else(|| WindowError::Range(text.to_owned()))?;
    let window = Duration::from_millis(ms);
    if ms == 0 || window > MAX_WINDOW {
        return Err(WindowError::Range(text.to_owned()));
    }
    Ok(window)
}

/// Formats a window length the way [`parse_window`] reads it (`500ms`, `1s`, `2m`).
pub fn format_window(window: Duration) -> String {
    let ms = window.as_millis();
    if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 && ms > 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
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

/// What the extractor did, for reports (none of it changes the rows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ExtractorStats {
    /// Events pushed.
    pub events: u64,
    /// Rows emitted (returned, or waiting for their window to close).
    pub rows: u64,
    /// Sources tracked now.
    pub sources: u64,
    /// Events for a window that was already final, counted into the source's current window.
    pub late_events: u64,
    /// Sources evicted (least recently seen first) to stay within `max_sources`.
    pub evicted_sources: u64,
    /// Windows of evicted sources that were still open and so never emitted.
    pub dropped_windows: u64,
    /// Sources forgotten after [`FORGET_AFTER_MS`] without events.
    pub forgotten_sources: u64,
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
struct Acc {
    active: bool,
    start_ms: i64,
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
    fn open(start_ms: i64, open_connections: u32) -> Acc {
        Acc {
            active: true,
            start_ms,
            concurrent_max: open_connections,
            ..Acc::default()
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
struct History {
    last_start_ms: Option<i64>,
    frames_in: f64,
    permission_denials: f64,
    auth_guesses: f64,
    gap_n: f64,
    gap_sum: f64,
    gap_sum_sq: f64,
}

impl History {
    fn absorb(&mut self, w: &Acc) {
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

/// Per-source state: at most two open windows (the newest one and the one before it, which
/// still takes late events), the open-connection count, and the history.
#[derive(Debug, Clone)]
struct Source {
    /// Open windows, indexed by the parity of the window number.
    slots: [Acc; 2],
    /// Windows starting before this are final (emitted, or empty).
    final_until: i64,
    /// Start of the newest window that has an event.
    newest_ms: i64,
    /// Time of the latest event.
    last_seen_ms: i64,
    /// Time of the latest request frame, for inter-arrival gaps.
    last_frame_in_ms: Option<i64>,
    /// Connections accepted and not yet closed.
    open: u32,
    /// Idle rows after the newest window stop at this time (last event + the idle limit).
    idle_end_ms: i64,
    /// Windows from this one to the newest window (exclusive) had no events; `gap_open`
    /// connections were open through them, and their idle rows stop at `gap_idle_end_ms`.
    gap_from_ms: i64,
    gap_open: u32,
    gap_idle_end_ms: i64,
    history: History,
}

impl Source {
    fn new(final_until: i64, t_ms: i64) -> Source {
        Source {
            slots: [Acc::default(); 2],
            final_until,
            newest_ms: i64::MIN,
            last_seen_ms: t_ms,
            last_frame_in_ms: None,
            open: 0,
            idle_end_ms: i64::MIN,
            gap_from_ms: i64::MAX,
            gap_open: 0,
            gap_idle_end_ms: i64::MIN,
            history: History::default(),
        }
    }

    fn has_open_windows(&self) -> bool {
        self.slots.iter().any(|s| s.active)
    }
}

/// Window geometry and limits shared by the per-source steps.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    window_ms: i64,
    idle_rows_ms: i64,
    forget_ms: i64,
}

impl Geometry {
    fn align(&self, t_ms: i64) -> i64 {
        t_ms.div_euclid(self.window_ms) * self.window_ms
    }

    fn slot(&self, start_ms: i64) -> usize {
        usize::from(start_ms.div_euclid(self.window_ms).rem_euclid(2) == 1)
    }
}

/// Where finished rows go.
struct Out<'a> {
    ready: &'a mut Vec<FeatureRow>,
    stats: &'a mut ExtractorStats,
}

impl Out<'_> {
    fn emit(&mut self, key: SourceKey, history: &mut History, acc: &Acc, geo: Geometry) {
        history.absorb(acc);
        self.ready.push(FeatureRow {
            source: key,
            window_start_ms: acc.start_ms,
            window_ms: geo.window_ms.unsigned_abs(),
            values: compute(acc, history),
        });
        self.stats.rows += 1;
    }
}

/// Connections the source held open through window `ws`, which had no event of it, if that
/// window gets an idle row (0 if not).
fn idle_connections(src: &Source, ws: i64) -> u32 {
    let (open, idle_end) = if ws > src.newest_ms {
        (src.open, src.idle_end_ms)
    } else if ws >= src.gap_from_ms {
        (src.gap_open, src.gap_idle_end_ms)
    } else {
        (0, i64::MIN)
    };
    if ws < idle_end {
        open
    } else {
        0
    }
}

/// Makes every window of `src` that starts before `until` final: emits its row if it had
/// events, or an idle row if the source held connections open through it.
fn finalize(src: &mut Source, key: SourceKey, until: i64, geo: Geometry, out: &mut Out<'_>) {
    while src.final_until < until {
        let ws = src.final_until;
        let next = ws.saturating_add(geo.window_ms);
        let i = geo.slot(ws);
        if src.slots[i].active && src.slots[i].start_ms == ws {
            let acc = src.slots[i];
            src.slots[i].active = false;
            out.emit(key, &mut src.history, &acc, geo);
            src.final_until = next;
            continue;
        }
        let idle = idle_connections(src, ws);
        if idle > 0 {
            out.emit(key, &mut src.history, &Acc::open(ws, idle), geo);
            src.final_until = next;
            continue;
        }
        // Nothing in this window, nor in the following ones up to the next open window, the
        // end of the gap before the newest window, or `until`: jump there.
        let mut jump = until;
        if ws <= src.newest_ms {
            jump = jump.min(src.newest_ms.saturating_add(geo.window_ms));
        }
        for s in &mut src.slots {
            if s.active && s.start_ms < ws {
                // Unreachable by construction (open windows never fall behind
                // `final_until`); drop rather than emit out of order.
                s.active = false;
                out.stats.dropped_windows += 1;
            } else if s.active {
                jump = jump.min(s.start_ms);
            }
        }
        src.final_until = jump.max(next);
    }
}

/// Adds one event to an open window of its source.
fn apply(src: &mut Source, i: usize, e: &Event) {
    let Source {
        slots,
        open,
        last_frame_in_ms,
        ..
    } = src;
    let w = &mut slots[i];
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

/// Per-source, per-window accumulators and the rows they become. One instance per event
/// stream: the live detector's window sink owns one, `activity export` another.
#[derive(Debug)]
pub struct Extractor {
    geo: Geometry,
    max_sources: usize,
    ipv6_prefix: u8,
    sources: BTreeMap<SourceKey, Source>,
    /// Windows starting before this are closed for every source.
    horizon: i64,
    /// Start of the newest window any event went into.
    newest_ms: Option<i64>,
    /// Final rows, returned once their window is closed.
    ready: Vec<FeatureRow>,
    stats: ExtractorStats,
}

impl Extractor {
    /// An extractor with windows of `window` (whole milliseconds, clamped to 1 ms ..=
    /// [`MAX_WINDOW`]) that tracks at most `max_sources` sources (at least 1).
    pub fn new(window: Duration, max_sources: usize) -> Extractor {
        let max_ms = MAX_WINDOW.as_millis() as i64;
        let window_ms = i64::try_from(window.as_millis())
            .unwrap_or(max_ms)
            .clamp(1, max_ms);
        Extractor {
            geo: Geometry {
                window_ms,
                idle_rows_ms: IDLE_ROWS_MAX_MS
                    .min(IDLE_ROWS_MAX_WINDOWS * window_ms)
                    .max(2 * window_ms),
                forget_ms: FORGET_AFTER_MS.max(4 * window_ms),
            },
            max_sources: max_sources.max(1),
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            sources: BTreeMap::new(),
            horizon: i64::MIN,
            newest_ms: None,
            ready: Vec::new(),
            stats: ExtractorStats::default(),
        }
    }

    /// Groups IPv6 sources by `prefix` bits (the server's `ip.ipv6_prefix`) instead of
    /// [`DEFAULT_IPV6_PREFIX`]. Set it before the first event.
    pub fn with_ipv6_prefix(mut self, prefix: u8) -> Extractor {
        self.ipv6_prefix = prefix.min(128);
        self
    }

    /// The window length.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.geo.window_ms.unsigned_abs())
    }

    /// The IPv6 grouping prefix.
    pub fn ipv6_prefix(&self) -> u8 {
        self.ipv6_prefix
    }

    /// The source an address is counted under.
    pub fn source_of(&self, ip: IpAddr) -> SourceKey {
        SourceKey::from_ip(ip, self.ipv6_prefix)
    }

    /// What the extractor has done so far.
    pub fn stats(&self) -> ExtractorStats {
        ExtractorStats {
            sources: self.sources.len() as u64,
            ..self.stats
        }
    }

    /// Adds one event. Events must come in roughly time order: up to one window late is
    /// counted in its own window, later than that in the source's current window.
    pub fn push(&mut self, e: &Event) {
        self.stats.events += 1;
        let geo = self.geo;
        let key = SourceKey::from_ip(e.ip, self.ipv6_prefix);
        let mut w = geo.align(e.t_ms);
        if self.sources.len() >= self.max_sources && !self.sources.contains_key(&key) {
            self.evict();
        }
        let horizon = self.horizon;
        let Extractor {
            sources,
            ready,
            stats,
            ..
        } = self;
        let mut out = Out { ready, stats };
        let src = sources
            .entry(key)
            .or_insert_with(|| Source::new(horizon.max(w.saturating_sub(geo.window_ms)), e.t_ms));
        let known = src.newest_ms != i64::MIN;
        if w > src.newest_ms {
            // Windows two or more before this one can no longer receive events.
            finalize(src, key, w.saturating_sub(geo.window_ms), geo, &mut out);
            // The windows between the previous newest window and this one had no events;
            // remember what was open through them for the one that is not final yet.
            src.gap_from_ms = if known {
                src.newest_ms.saturating_add(geo.window_ms)
            } else {
                i64::MAX
            };
            src.gap_open = src.open;
            src.gap_idle_end_ms = src.idle_end_ms;
            src.newest_ms = w;
        }
        if known && e.t_ms.max(horizon).saturating_sub(src.last_seen_ms) > geo.forget_ms {
            // Unseen for so long that nothing about it is remembered (the purge in
            // `close_until` drops such sources; this does the same for one that comes back
            // before a purge ran).
            src.history = History::default();
            src.open = 0;
            src.gap_open = 0;
            src.last_frame_in_ms = None;
            out.stats.forgotten_sources += 1;
        }
        if w < src.final_until {
            // Its window is final: count it in the source's current window.
            out.stats.late_events += 1;
            let newest = src.slots[geo.slot(src.newest_ms)];
            w = if newest.active && newest.start_ms == src.newest_ms {
                src.newest_ms
            } else {
                src.final_until
            };
            src.newest_ms = src.newest_ms.max(w);
        }
        let i = geo.slot(w);
        if !(src.slots[i].active && src.slots[i].start_ms == w) {
            if src.slots[i].active {
                // Unreachable: open windows are the newest two, and `w` is one of them.
                out.stats.dropped_windows += 1;
            }
            src.slots[i] = Acc::open(w, src.open);
        }
        apply(src, i, e);
        src.last_seen_ms = src.last_seen_ms.max(e.t_ms);
        src.idle_end_ms = src.last_seen_ms.saturating_add(geo.idle_rows_ms);
        self.newest_ms = Some(self.newest_ms.map_or(w, |n| n.max(w)));
    }

    /// Closes every window that ended at or before `now_ms` and returns the rows of closed
    /// windows not returned before, ordered by window start, then source.
    ///
    /// The live caller should pass its clock minus the recorder's commit delay (a few flush
    /// intervals), so that events committed a little late still count in their own window.
    pub fn close_until(&mut self, now_ms: i64) -> Vec<FeatureRow> {
        let geo = self.geo;
        let until = geo.align(now_ms);
        if until > self.horizon {
            self.horizon = until;
            let mut out = Out {
                ready: &mut self.ready,
                stats: &mut self.stats,
            };
            for (key, src) in self.sources.iter_mut() {
                finalize(src, *key, until, geo, &mut out);
            }
            // Forget sources unseen for long enough (two windows past the forgetting time,
            // so that a late event for one would have reset it anyway).
            let before = self.sources.len();
            let limit = geo.forget_ms.saturating_add(2 * geo.window_ms);
            self.sources.retain(|_, s| {
                s.has_open_windows() || until.saturating_sub(s.last_seen_ms) <= limit
            });
            self.stats.forgotten_sources += (before - self.sources.len()) as u64;
        }
        let horizon = self.horizon;
        let (mut closed, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ready)
            .into_iter()
            .partition(|r| r.window_start_ms < horizon);
        self.ready = pending;
        sort_rows(&mut closed);
        closed
    }

    /// Closes every window up to the newest one seen and returns all remaining rows, ordered
    /// by window start, then source (end of an offline stream, or shutdown).
    pub fn finish(&mut self) -> Vec<FeatureRow> {
        let mut rows = match self.newest_ms {
            Some(n) => self.close_until(n.saturating_add(self.geo.window_ms)),
            None => Vec::new(),
        };
        rows.append(&mut self.ready);
        sort_rows(&mut rows);
        rows
    }

    /// Evicts the least recently seen sources (a batch, so the scan is amortized), dropping
    /// their open windows; both are counted.
    fn evict(&mut self) {
        let excess = (self.sources.len() + 1).saturating_sub(self.max_sources);
        let batch = (self.max_sources / EVICT_FRACTION).max(excess).max(1);
        let mut by_age: Vec<(i64, SourceKey)> = self
            .sources
            .iter()
            .map(|(k, s)| (s.last_seen_ms, *k))
            .collect();
        let n = batch.min(by_age.len());
        if n == 0 {
            return;
        }
        if n < by_age.len() {
            by_age.select_nth_unstable(n - 1);
        }
        for (_, key) in &by_age[..n] {
            if let Some(s) = self.sources.remove(key) {
                self.stats.evicted_sources += 1;
                self.stats.dropped_windows += s.slots.iter().filter(|a| a.active).count() as u64;
            }
        }
    }
}

fn sort_rows(rows: &mut [FeatureRow]) {
    rows.sort_by_key(|r| (r.window_start_ms, r.source));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// A window-aligned base time (2023-11-14T22:13:20Z).
    const T0: i64 = 1_700_000_000_000;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 1, last))
    }

    fn ev(t: i64, conn: u64, host: u8, kind: EventKind) -> Event {
        Event {
            t_ms: T0 + t,
            conn,
            ip: ip(host),
            kind,
        }
    }

    fn frame_in(kind: Kind, size: u32, assemble_ms: u32) -> EventKind {
        EventKind::FrameIn {
            kind: kind as u8,
            size,
            assemble_ms,
        }
    }

    fn frame_out(kind: Kind, size: u32) -> EventKind {
        EventKind::FrameOut {
            kind: kind as u8,
            size,
        }
    }

    fn close(reason: &'static str, unread_bytes: u32) -> EventKind {
        EventKind::Close {
            reason,
            unread_bytes,
        }
    }

    fn run(window_ms: u64, events: &[Event]) -> Vec<FeatureRow> {
        let mut x = Extractor::new(Duration::from_millis(window_ms), 1000);
        for e in events {
            x.push(e);
        }
        x.finish()
    }

    fn get(row: &FeatureRow, name: &str) -> f64 {
        match row.value(name) {
            Some(v) => v,
            None => panic!("no feature {name}"),
        }
    }

    /// Asserts the named features of `row`; every other feature must be 0 unless listed in
    /// `ignore`.
    fn check(row: &FeatureRow, want: &[(&str, f64)], ignore: &[&str]) {
        for (name, value) in want {
            assert_eq!(get(row, name), *value, "feature {name}");
        }
        for (i, name) in FEATURES.iter().enumerate() {
            if want.iter().all(|(n, _)| n != name) && !ignore.contains(name) {
                assert_eq!(row.values[i], 0.0, "feature {name} should be 0");
            }
        }
    }

    /// History features depend on decay; the window tests ignore them unless they check them.
    const HIST: [&str; 4] = [
        "hist_frames_in",
        "hist_permission_denials",
        "hist_auth_guesses",
        "hist_gap_cv",
    ];

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
        let doc = include_str!("../../docs/DETECTION.md");
        for name in FEATURES {
            assert!(
                doc.contains(&format!("`{name}`")),
                "docs/DETECTION.md does not document `{name}`"
            );
        }
        assert!(doc.contains(&format!("version {FEATURE_SCHEMA_VERSION}")));
    }

    /// The reasons that count as header errors, frame timeouts, write timeouts and peer
    /// closes, as the schema spelled them out before they were derived: pinned, since the
    /// trained model depends on them.
    #[test]
    fn reason_classes_are_the_trained_ones() {
        let names = |f: fn(&str) -> bool, all: &[&'static str]| -> Vec<&'static str> {
            all.iter().copied().filter(|r| f(r)).collect()
        };
        let header = |r: &str| DecodeErrorKind::from_name(r).is_some_and(DecodeErrorKind::is_fatal);
        assert_eq!(
            names(header, &DecodeErrorKind::NAMES),
            [
                "bad_magic",
                "unsupported_version",
                "unknown_kind",
                "unexpected_kind",
                "reserved_flags",
                "frame_too_large",
            ]
        );
        let peer = |r: &str| CloseReason::from_name(r).is_some_and(CloseReason::by_peer);
        assert_eq!(names(peer, &CloseReason::NAMES), ["eof", "bye"]);
        assert_eq!(DecodeErrorKind::FrameTooLarge.as_str(), "frame_too_large");
        assert_eq!(CloseReason::FrameBudget.as_str(), "frame_budget");
        assert_eq!(CloseReason::SlowFrame.as_str(), "slow_frame");
        assert_eq!(CloseReason::WriteTimeout.as_str(), "write_timeout");
    }

    #[test]
    fn one_session_in_one_window() {
        let events = [
            ev(0, 1, 5, EventKind::Accept),
            ev(10, 1, 5, frame_in(Kind::Auth, 20, 0)),
            ev(12, 1, 5, EventKind::AuthOk { forgiven: 0 }),
            ev(12, 1, 5, frame_out(Kind::AuthOk, 6)),
            ev(110, 1, 5, frame_in(Kind::Fetch, 8, 3)),
            ev(111, 1, 5, EventKind::PermissionDenied),
            ev(111, 1, 5, frame_out(Kind::Error, 30)),
            ev(310, 1, 5, frame_in(Kind::SendMessage, 100, 5)),
            ev(312, 1, 5, frame_out(Kind::Accepted, 8)),
            ev(400, 1, 5, frame_in(Kind::Bye, 0, 0)),
            ev(400, 1, 5, frame_out(Kind::Ok, 0)),
            ev(401, 1, 5, close("bye", 0)),
        ];
        let rows = run(1000, &events);
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(r.source, SourceKey::V4(Ipv4Addr::new(127, 0, 1, 5)));
        assert_eq!(r.window_start_ms, T0);
        assert_eq!(r.window_ms, 1000);
        assert_eq!(r.ip(), ip(5));
        check(
            r,
            &[
                ("connections_opened", 1.0),
                ("concurrent_connections_max", 1.0),
                ("closes", 1.0),
                ("frames_in", 4.0),
                ("frames_out", 4.0),
                ("bytes_in", 128.0),
                ("bytes_out", 44.0),
                ("frame_in_size_mean", 32.0),
                ("frame_in_size_max", 100.0),
                ("auth_ok", 1.0),
                ("permission_denials", 1.0),
                ("distinct_kinds", 4.0),
                ("kind_fraction_item", 0.25),
                ("kind_fraction_write", 0.25),
                ("kind_fraction_control", 0.5),
                // Gaps 100, 200, 90.
                ("interarrival_mean_ms", 130.0),
                ("interarrival_var_ms2", (900.0 + 4900.0 + 1600.0) / 3.0),
                // The first window: history is this window alone.
                ("hist_frames_in", 4.0),
                ("hist_permission_denials", 1.0),
            ],
            &["hist_gap_cv"],
        );
        let cv = get(r, "hist_gap_cv");
        let want = ((900.0f64 + 4900.0 + 1600.0) / 3.0).sqrt() / 130.0;
        assert!((cv - want).abs() < 1e-12, "{cv} vs {want}");
    }

    #[test]
    fn typos_a_login_redeems_and_retries_leave_no_guesses_in_the_history() {
        let fail = |t, guess| ev(t, 1, 8, EventKind::AuthFailed { guess });
        let events = [
            ev(0, 1, 8, EventKind::Accept),
            // Window 0: two typos and a retry of one of them, then the right password.
            fail(10, true),
            fail(20, true),
            fail(30, false),
            ev(40, 1, 8, EventKind::AuthOk { forgiven: 2 }),
            // Window 1: a guess nobody redeems, and a frame that took 1.5 s to arrive.
            fail(1010, true),
            ev(1020, 1, 8, frame_in(Kind::Ping, 0, 1_500)),
        ];
        let rows = run(1000, &events);
        assert_eq!(rows.len(), 2);
        let (a, b) = (&rows[0], &rows[1]);
        assert_eq!(
            get(a, "auth_failures"),
            3.0,
            "every failure counts in its window"
        );
        assert_eq!(
            get(a, "hist_auth_guesses"),
            0.0,
            "redeemed typos and retries do not"
        );
        assert_eq!(get(b, "auth_failures"), 1.0);
        assert_eq!(get(b, "hist_auth_guesses"), 1.0);
        assert_eq!(
            get(b, "slow_frame_ms_max"),
            500.0,
            "only the time past the grace"
        );
        // A frame within the grace is no slow frame, however it was split.
        let quick = run(
            1000,
            &[ev(0, 1, 8, frame_in(Kind::Ping, 0, SLOW_FRAME_GRACE_MS))],
        );
        assert_eq!(get(&quick[0], "slow_frame_ms_max"), 0.0);
    }

    #[test]
    fn failures_timeouts_and_closes_are_counted_by_reason() {
        let events = [
            ev(0, 1, 7, EventKind::Accept),
            ev(1, 0, 7, EventKind::Refused { reason: "blocked" }),
            ev(
                2,
                1,
                7,
                EventKind::DecodeError {
                    reason: "frame_too_large",
                },
            ),
            ev(
                3,
                1,
                7,
                EventKind::DecodeError {
                    reason: "invalid_utf8",
                },
            ),
            ev(
                4,
                1,
                7,
                EventKind::DecodeError {
                    reason: "bad_magic",
                },
            ),
            ev(5, 1, 7, EventKind::AuthFailed { guess: true }),
            ev(
                6,
                1,
                7,
                EventKind::RateLimited {
                    reason: "login_rate_ip",
                },
            ),
            ev(
                7,
                1,
                7,
                EventKind::Timeout {
                    reason: "slow_frame",
                },
            ),
            ev(
                8,
                1,
                7,
                EventKind::Timeout {
                    reason: "write_timeout",
                },
            ),
            ev(9, 1, 7, EventKind::Timeout { reason: "idle" }),
            ev(10, 1, 7, close("write_timeout", 5000)),
            ev(11, 2, 7, EventKind::Accept),
            ev(12, 2, 7, close("eof", 7)),
        ];
        let rows = run(1000, &events);
        assert_eq!(rows.len(), 1);
        check(
            &rows[0],
            &[
                ("connections_opened", 2.0),
                ("concurrent_connections_max", 1.0),
                ("refused", 1.0),
                ("closes", 2.0),
                ("server_closes", 1.0),
                ("decode_errors", 3.0),
                ("header_errors", 2.0),
                ("frame_too_large", 1.0),
                ("auth_failures", 1.0),
                ("rate_limit_hits", 1.0),
                ("timeouts", 3.0),
                ("frame_timeouts", 1.0),
                ("write_timeouts", 1.0),
                ("unread_outbound_bytes", 5007.0),
                ("hist_auth_guesses", 1.0),
            ],
            &[],
        );
    }

    #[test]
    fn windows_are_aligned_and_close_at_their_end() {
        let mut x = Extractor::new(Duration::from_secs(1), 10);
        x.push(&ev(999, 1, 1, frame_in(Kind::Ping, 0, 0)));
        x.push(&ev(1000, 1, 1, frame_in(Kind::Ping, 0, 0)));
        x.push(&ev(1999, 1, 1, frame_in(Kind::Ping, 0, 0)));
        assert!(x.close_until(T0 + 999).is_empty());
        let first = x.close_until(T0 + 1000);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].window_start_ms, T0);
        assert_eq!(get(&first[0], "frames_in"), 1.0);
        // The window [T0+1000, T0+2000) ends at T0+2000, not before.
        assert!(x.close_until(T0 + 1999).is_empty());
        let second = x.close_until(T0 + 2000);
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].window_start_ms, T0 + 1000);
        assert_eq!(get(&second[0], "frames_in"), 2.0);
        // The gap 999 -> 1000 counts in the second window, with 1000 -> 1999.
        assert_eq!(get(&second[0], "interarrival_mean_ms"), 500.0);
        assert!(x.finish().is_empty());
        // Negative times align downwards too.
        let mut y = Extractor::new(Duration::from_millis(500), 10);
        y.push(&Event {
            t_ms: -1,
            conn: 1,
            ip: ip(1),
            kind: EventKind::Accept,
        });
        let rows = y.finish();
        assert_eq!(rows[0].window_start_ms, -500);
        assert_eq!(rows[0].window_ms, 500);
    }

    #[test]
    fn rows_come_in_window_then_source_order() {
        let events = [
            ev(0, 1, 9, frame_in(Kind::Ping, 0, 0)),
            ev(1, 2, 3, frame_in(Kind::Ping, 0, 0)),
            ev(1500, 2, 3, frame_in(Kind::Ping, 0, 0)),
            ev(1600, 1, 9, frame_in(Kind::Ping, 0, 0)),
            ev(1700, 3, 200, frame_in(Kind::Ping, 0, 0)),
        ];
        let rows = run(1000, &events);
        let keys: Vec<(i64, String)> = rows
            .iter()
            .map(|r| (r.window_start_ms - T0, r.source.to_string()))
            .collect();
        let want = [
            (0, "127.0.1.3"),
            (0, "127.0.1.9"),
            (1000, "127.0.1.3"),
            (1000, "127.0.1.9"),
            (1000, "127.0.1.200"),
        ];
        let want: Vec<(i64, String)> = want.iter().map(|(t, s)| (*t, s.to_string())).collect();
        // 127.0.1.200 sorts after 127.0.1.9 as an address, not as text.
        assert_eq!(keys, want);
    }

    #[test]
    fn events_up_to_one_window_late_count_in_their_own_window() {
        let mut x = Extractor::new(Duration::from_secs(1), 10);
        x.push(&ev(1500, 1, 1, frame_in(Kind::Ping, 0, 0)));
        // One window late, not yet closed: its own window.
        x.push(&ev(900, 2, 1, frame_in(Kind::Ping, 0, 0)));
        let rows = x.close_until(T0 + 2000);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].window_start_ms, T0);
        assert_eq!(get(&rows[0], "frames_in"), 1.0);
        assert_eq!(rows[1].window_start_ms, T0 + 1000);
        assert_eq!(get(&rows[1], "frames_in"), 1.0);
        assert_eq!(x.stats().late_events, 0);
        // The window of T0+500 is closed: the event counts in the current window.
        x.push(&ev(2100, 1, 1, frame_in(Kind::Ping, 0, 0)));
        x.push(&ev(500, 3, 1, frame_in(Kind::Ping, 0, 0)));
        // Two windows behind the source's newest window: final even though not closed.
        x.push(&ev(4200, 1, 1, frame_in(Kind::Ping, 0, 0)));
        x.push(&ev(2200, 1, 1, frame_in(Kind::Ping, 0, 0)));
        assert_eq!(x.stats().late_events, 2);
        let rows = x.finish();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].window_start_ms, T0 + 2000);
        assert_eq!(get(&rows[0], "frames_in"), 2.0);
        assert_eq!(rows[1].window_start_ms, T0 + 4000);
        assert_eq!(get(&rows[1], "frames_in"), 2.0);
        // The late frame stamped before its predecessor counts a zero gap.
        assert_eq!(get(&rows[1], "interarrival_mean_ms"), 1050.0);
    }

    #[test]
    fn a_late_event_of_a_new_source_goes_into_the_first_open_window() {
        let mut x = Extractor::new(Duration::from_secs(1), 10);
        assert!(x.close_until(T0 + 3000).is_empty());
        x.push(&ev(100, 1, 4, EventKind::AuthFailed { guess: true }));
        assert_eq!(x.stats().late_events, 1);
        let rows = x.finish();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].window_start_ms, T0 + 3000);
        assert_eq!(get(&rows[0], "auth_failures"), 1.0);
    }

    #[test]
    fn open_connections_emit_idle_rows() {
        let events = [
            ev(100, 1, 2, EventKind::Accept),
            ev(200, 2, 2, EventKind::Accept),
            ev(1200, 1, 2, close("eof", 0)),
            // Nothing in windows 2 and 3, one connection still open.
            ev(4500, 2, 2, close("idle", 0)),
            // Nothing at all in windows 5 and 6.
            ev(7000, 3, 2, EventKind::Refused { reason: "blocked" }),
        ];
        let rows = run(1000, &events);
        let starts: Vec<i64> = rows.iter().map(|r| r.window_start_ms - T0).collect();
        assert_eq!(starts, [0, 1000, 2000, 3000, 4000, 7000]);
        let conc: Vec<f64> = rows
            .iter()
            .map(|r| get(r, "concurrent_connections_max"))
            .collect();
        assert_eq!(conc, [2.0, 2.0, 1.0, 1.0, 1.0, 0.0]);
        check(&rows[2], &[("concurrent_connections_max", 1.0)], &HIST);
        check(
            &rows[4],
            &[
                ("concurrent_connections_max", 1.0),
                ("closes", 1.0),
                ("server_closes", 1.0),
            ],
            &HIST,
        );
    }

    #[test]
    fn idle_rows_stop_when_the_source_is_stale() {
        // An accept whose close was lost: idle rows for IDLE_ROWS_MAX_MS, then none.
        let mut x = Extractor::new(Duration::from_secs(10), 10);
        x.push(&ev(0, 1, 2, EventKind::Accept));
        let rows = x.close_until(T0 + 3_600_000);
        assert_eq!(rows.len() as i64, IDLE_ROWS_MAX_MS / 10_000);
        assert_eq!(rows.last().map(|r| r.window_start_ms), Some(T0 + 290_000));
        // Forgotten: a close now does not go negative, and the history restarts.
        x.push(&ev(3_600_001, 1, 2, close("eof", 0)));
        let rows = x.finish();
        assert_eq!(rows.len(), 1);
        check(&rows[0], &[("closes", 1.0)], &[]);
        assert_eq!(x.stats().forgotten_sources, 1);
        assert_eq!(x.stats().sources, 1);
    }

    #[test]
    fn history_decays_with_the_half_life() {
        let events = [
            ev(0, 1, 1, frame_in(Kind::Fetch, 8, 0)),
            ev(1, 1, 1, EventKind::PermissionDenied),
            ev(1, 1, 1, frame_out(Kind::Error, 20)),
            ev(60_000, 1, 1, frame_in(Kind::Ping, 0, 0)),
            ev(60_001, 1, 1, frame_out(Kind::Pong, 0)),
        ];
        let rows = run(1000, &events);
        assert_eq!(rows.len(), 2);
        let r = &rows[1];
        // One half-life later the first window weighs one half.
        check(
            r,
            &[
                ("frames_in", 1.0),
                ("frames_out", 1.0),
                ("distinct_kinds", 1.0),
                ("kind_fraction_control", 1.0),
                ("interarrival_mean_ms", 60_000.0),
                ("hist_frames_in", 1.5),
                ("hist_permission_denials", 0.5),
            ],
            &[],
        );
    }

    #[test]
    fn regular_gaps_have_no_variation() {
        let events: Vec<Event> = (0..30)
            .map(|i| ev(i * 1000 + 5, 1, 1, frame_in(Kind::Fetch, 8, 0)))
            .collect();
        let rows = run(1000, &events);
        assert_eq!(rows.len(), 30);
        for r in &rows[1..] {
            assert_eq!(get(r, "interarrival_mean_ms"), 1000.0);
            assert_eq!(get(r, "interarrival_var_ms2"), 0.0);
            assert!(get(r, "hist_gap_cv").abs() < 1e-6);
        }
        // Irregular gaps: 10, 1990, 10, 1990, ...
        let events: Vec<Event> = (0..30)
            .map(|i| {
                ev(
                    (i / 2) * 2000 + (i % 2) * 10,
                    1,
                    1,
                    frame_in(Kind::Ping, 0, 0),
                )
            })
            .collect();
        let rows = run(1000, &events);
        let last = &rows[rows.len() - 1];
        assert!(
            get(last, "hist_gap_cv") > 0.9,
            "{}",
            get(last, "hist_gap_cv")
        );
    }

    #[test]
    fn sources_are_bounded_and_the_least_recently_seen_go_first() {
        let mut x = Extractor::new(Duration::from_secs(1), 4);
        for host in 1..=4u8 {
            x.push(&ev(i64::from(host), 1, host, frame_in(Kind::Ping, 0, 0)));
        }
        // Host 1 is seen again: host 2 is now the least recently seen.
        x.push(&ev(10, 1, 1, frame_in(Kind::Ping, 0, 0)));
        x.push(&ev(11, 1, 5, frame_in(Kind::Ping, 0, 0)));
        let s = x.stats();
        assert_eq!(s.sources, 4);
        assert_eq!(s.evicted_sources, 1);
        assert_eq!(s.dropped_windows, 1);
        let rows = x.finish();
        let hosts: Vec<String> = rows.iter().map(|r| r.source.to_string()).collect();
        assert_eq!(hosts, ["127.0.1.1", "127.0.1.3", "127.0.1.4", "127.0.1.5"]);
        // Many more sources than room: never more than the bound.
        let mut x = Extractor::new(Duration::from_secs(1), 100);
        for i in 0..10_000u32 {
            x.push(&Event {
                t_ms: T0 + i64::from(i),
                conn: 1,
                ip: IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + i)),
                kind: EventKind::Accept,
            });
            assert!(x.stats().sources <= 100);
        }
        let s = x.stats();
        assert_eq!(s.evicted_sources + s.sources, 10_000);
        assert!(s.sources >= 100 - 100 / EVICT_FRACTION as u64);
    }

    #[test]
    fn ipv6_sources_are_grouped_by_prefix() {
        let a: IpAddr = "2001:db8::1".parse().unwrap_or(ip(0));
        let b: IpAddr = "2001:db8::2".parse().unwrap_or(ip(0));
        let mapped: IpAddr = "::ffff:127.0.1.1".parse().unwrap_or(ip(0));
        let mut x = Extractor::new(Duration::from_secs(1), 10);
        for (i, addr) in [a, b, mapped, ip(1)].into_iter().enumerate() {
            x.push(&Event {
                t_ms: T0 + i as i64,
                conn: i as u64,
                ip: addr,
                kind: EventKind::Accept,
            });
        }
        let rows = x.finish();
        let got: Vec<(String, f64)> = rows
            .iter()
            .map(|r| (r.source.to_string(), get(r, "connections_opened")))
            .collect();
        assert_eq!(
            got,
            [
                ("127.0.1.1".to_string(), 2.0),
                ("2001:db8::/64".to_string(), 2.0)
            ]
        );
        assert_eq!(rows[1].ip().to_string(), "2001:db8::");
        let x = Extractor::new(Duration::from_secs(1), 10).with_ipv6_prefix(128);
        assert_eq!(x.source_of(a).to_string(), "2001:db8::1/128");
    }

    #[test]
    fn window_lengths_parse_and_format() {
        let ok = [
            ("1s", 1000),
            ("10s", 10_000),
            ("500ms", 500),
            ("1ms", 1),
            ("2m", 120_000),
            (" 1s ", 1000),
            ("60m", 3_600_000),
        ];
        for (text, ms) in ok {
            assert_eq!(parse_window(text), Ok(Duration::from_millis(ms)), "{text}");
        }
        let syntax = [
            "", "1", "s", "1.5s", "-1s", "1 s", "1h", "10sec", "ms", "1S",
        ];
        for text in syntax {
            match parse_window(text) {
                Err(WindowError::Syntax(t)) => assert_eq!(t, text),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        for text in ["0s", "0ms", "61m", "3601s", "99999999999999999999ms"] {
            assert_eq!(
                parse_window(text),
                Err(WindowError::Range(text.to_string())),
                "{text}"
            );
        }
        assert_eq!(
            parse_window("10").map_err(|e| e.to_string()),
            Err(
                "invalid window `10`: expected a whole number followed by ms, s or m \
                 (e.g. 500ms, 1s, 10s)"
                    .to_string()
            )
        );
        for ms in [1, 500, 1000, 1500, 10_000, 60_000, 90_000] {
            let w = Duration::from_millis(ms);
            assert_eq!(parse_window(&format_window(w)), Ok(w));
        }
        assert_eq!(format_window(Duration::from_secs(1)), "1s");
        assert_eq!(format_window(Duration::from_millis(1500)), "1500ms");
        // The constructor clamps what the parser would refuse.
        assert_eq!(
            Extractor::new(Duration::ZERO, 1).window(),
            Duration::from_millis(1)
        );
        assert_eq!(
            Extractor::new(Duration::from_secs(86_400), 1).window(),
            MAX_WINDOW
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn arb_kind() -> impl Strategy<Value = EventKind> {
            prop_oneof![
                Just(EventKind::Accept),
                Just(EventKind::Refused { reason: "blocked" }),
                (0u8..=255, any::<u32>(), any::<u32>()).prop_map(|(kind, size, assemble_ms)| {
                    EventKind::FrameIn {
                        kind,
                        size,
                        assemble_ms,
                    }
                }),
                (0u8..=255, any::<u32>())
                    .prop_map(|(kind, size)| EventKind::FrameOut { kind, size }),
                Just(EventKind::DecodeError {
                    reason: "bad_magic"
                }),
                (0u32..4).prop_map(|forgiven| EventKind::AuthOk { forgiven }),
                any::<bool>().prop_map(|guess| EventKind::AuthFailed { guess }),
                Just(EventKind::RateLimited {
                    reason: "frame_rate_ip"
                }),
                Just(EventKind::PermissionDenied),
                Just(EventKind::Timeout { reason: "idle" }),
                any::<u32>().prop_map(|unread_bytes| EventKind::Close {
                    reason: "eof",
                    unread_bytes
                }),
            ]
        }

        /// Events in time order (steps of 0 to 3 s, sometimes a huge jump) from a few hosts.
        fn arb_events() -> impl Strategy<Value = Vec<Event>> {
            proptest::collection::vec(
                (
                    prop_oneof![9 => 0i64..3000, 1 => 0i64..10_000_000],
                    0u8..6,
                    arb_kind(),
                ),
                0..200,
            )
            .prop_map(|steps| {
                let mut t = T0;
                steps
                    .into_iter()
                    .map(|(dt, host, kind)| {
                        t += dt;
                        Event {
                            t_ms: t,
                            conn: u64::from(host),
                            ip: ip(host),
                            kind,
                        }
                    })
                    .collect()
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Values are finite, rows are unique per (source, window) and sorted, and the
            /// rows do not depend on how often the caller closes windows.
            #[test]
            fn rows_are_finite_unique_and_independent_of_the_close_cadence(
                events in arb_events(),
                window_ms in prop_oneof![Just(1u64), Just(1000), Just(10_000), 1u64..5000],
            ) {
                let w = Duration::from_millis(window_ms);
                let mut once = Extractor::new(w, 1000);
                let mut often = Extractor::new(w, 1000);
                let mut often_rows = Vec::new();
                for e in &events {
                    once.push(e);
                    often.push(e);
                    often_rows.extend(often.close_until(e.t_ms));
                }
                often_rows.extend(often.finish());
                let once_rows = once.finish();
                prop_assert_eq!(&once_rows, &often_rows);
                let keys: Vec<(i64, SourceKey)> =
                    once_rows.iter().map(|r| (r.window_start_ms, r.source)).collect();
                prop_assert!(keys.windows(2).all(|p| p[0] < p[1]), "sorted and unique");
                for r in &once_rows {
                    prop_assert_eq!(r.values.len(), FEATURES.len());
                    prop_assert!(r.values.iter().all(|v| v.is_finite() && *v >= 0.0));
                    prop_assert_eq!(r.window_start_ms.rem_euclid(window_ms as i64), 0);
                }
                prop_assert_eq!(once.stats().late_events, 0);
            }

            /// Shuffled input never panics, never emits a non-finite value, and never tracks
            /// more sources than allowed.
            #[test]
            fn disorder_is_tolerated(
                events in arb_events(),
                swaps in proptest::collection::vec((0usize..200, 0usize..200), 0..50),
                closes in proptest::collection::vec(0usize..200, 0..10),
            ) {
                let mut events = events;
                let n = events.len();
                if n > 0 {
                    for (a, b) in swaps {
                        events.swap(a % n, b % n);
                    }
                }
                let mut x = Extractor::new(Duration::from_millis(700), 3);
                let mut rows = Vec::new();
                for (i, e) in events.iter().enumerate() {
                    x.push(e);
                    prop_assert!(x.stats().sources <= 3);
                    if closes.contains(&i) {
                        rows.extend(x.close_until(e.t_ms));
                    }
                }
                rows.extend(x.finish());
                for r in &rows {
                    prop_assert!(r.values.iter().all(|v| v.is_finite()));
                }
            }
        }
    }
}
