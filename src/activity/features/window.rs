//! Windowing: which (source, window) rows exist and when they become final. Events are
//! counted per source into at most two open windows; finished windows become rows through
//! the schema's accumulator and history.
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

use super::schema::{compute, Acc, FeatureRow, History};
use crate::activity::Event;
use crate::guard::SourceKey;

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

/// IPv6 sources are grouped by this prefix unless [`Extractor::with_ipv6_prefix`] says
/// otherwise; the same default as the guard's `ip.ipv6_prefix`.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// Longest window accepted by [`parse_window`] and [`Extractor::new`].
pub const MAX_WINDOW: Duration = Duration::from_secs(3600);

/// When the extractor is full, it evicts this fraction (1/N) of its sources at once, so that
/// the scan that finds the least recently seen ones costs O(1) per new source on average.
pub(super) const EVICT_FRACTION: usize = 32;

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
        src.slots[i].add(e, &mut src.open, &mut src.last_frame_in_ms);
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
}
