//! Live scoring: a [`WindowSink`] on the recorder's writer thread.
//!
//! It runs the same [`Extractor`] that `rampart activity export` runs (DESIGN.md, decision
//! 10) on every committed batch, closes windows as the clock passes them, scores each closed
//! window with the model, and hands anomalous ones to a callback (the firewall). A window's
//! score costs O(features × clusters) without allocation; the extractor bounds the sources it
//! tracks, so the work per batch is bounded by the batch and the source cap, never by what a
//! peer claims (decision 9).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{DetectError, Model, Verdict};
use crate::activity::features::{Extractor, FeatureRow, FEATURES, FEATURE_SCHEMA_VERSION};
use crate::activity::{Event, WindowSink};

/// Called with each anomalous window (its source is `row.ip()`) and its verdict.
pub type OnAnomaly = Box<dyn Fn(&FeatureRow, Verdict) + Send>;

/// Called with every complete window the scorer closes, before it is scored (a fleet server
/// ships them to the fleet's database: `fleet::window_channel`). It must not block.
pub type OnWindow = Box<dyn Fn(&FeatureRow) + Send>;

/// Counters a [`LiveScorer`] keeps; clone the handle before moving the scorer into the
/// recorder.
#[derive(Debug, Default)]
pub struct LiveCounters {
    windows: AtomicU64,
    anomalies: AtomicU64,
    incomplete: AtomicU64,
}

/// A snapshot of [`LiveCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LiveStats {
    /// Windows scored.
    pub windows: u64,
    /// Windows reported as anomalous.
    pub anomalies: u64,
    /// Windows not scored because the recorder shed events in or before them
    /// ([`WindowSink::lost`]): a window missing its events is not evidence.
    pub incomplete: u64,
}

impl LiveCounters {
    /// The current counts.
    pub fn snapshot(&self) -> LiveStats {
        LiveStats {
            windows: self.windows.load(Ordering::Relaxed),
            anomalies: self.anomalies.load(Ordering::Relaxed),
            incomplete: self.incomplete.load(Ordering::Relaxed),
        }
    }
}

/// Scores live windows and reports anomalous sources.
pub struct LiveScorer {
    model: Arc<Model>,
    extractor: Extractor,
    max_sources: usize,
    lag_ms: i64,
    /// Windows starting before this are not scored: events were shed ([`WindowSink::lost`]).
    blind_until_ms: i64,
    on_anomaly: OnAnomaly,
    on_window: Option<OnWindow>,
    counters: Arc<LiveCounters>,
}

impl std::fmt::Debug for LiveScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveScorer")
            .field("window", &self.extractor.window())
            .field("lag_ms", &self.lag_ms)
            .field("stats", &self.counters.snapshot())
            .finish_non_exhaustive()
    }
}

impl LiveScorer {
    /// A scorer with windows of `window`, tracking at most `max_sources` sources, that calls
    /// `on_anomaly` for each anomalous window. Fails if the model was trained on another
    /// feature schema or another window length.
    pub fn new(
        model: Arc<Model>,
        window: Duration,
        max_sources: usize,
        on_anomaly: OnAnomaly,
    ) -> Result<LiveScorer, DetectError> {
        model.check_schema(FEATURE_SCHEMA_VERSION, FEATURES)?;
        if let Some(trained) = model.window() {
            if trained != window {
                return Err(DetectError::BadModel(format!(
                    "the model was trained on {} ms windows, the live extractor uses {} ms",
                    trained.as_millis(),
                    window.as_millis()
                )));
            }
        }
        Ok(LiveScorer {
            model,
            extractor: Extractor::new(window, max_sources),
            max_sources,
            lag_ms: 0,
            blind_until_ms: i64::MIN,
            on_anomaly,
            on_window: None,
            counters: Arc::default(),
        })
    }

    /// Hands every complete window to `on_window` as well (windows left unscored after
    /// events were shed are not complete, and not handed on).
    pub fn with_window_tap(mut self, on_window: OnWindow) -> LiveScorer {
        self.on_window = Some(on_window);
        self
    }

    /// Closes a window only once the clock is `lag` past its end, so that events the
    /// recorder commits a little late still count in their own window (a few flush
    /// intervals).
    pub fn with_lag(mut self, lag: Duration) -> LiveScorer {
        self.lag_ms = i64::try_from(lag.as_millis()).unwrap_or(i64::MAX);
        self
    }

    /// Groups IPv6 sources by `prefix` bits (the server's `ip.ipv6_prefix`).
    pub fn with_ipv6_prefix(mut self, prefix: u8) -> LiveScorer {
        self.extractor = std::mem::replace(
            &mut self.extractor,
            Extractor::new(Duration::from_millis(1), 1),
        )
        .with_ipv6_prefix(prefix);
        self
    }

    /// The counters, shared.
    pub fn counters(&self) -> Arc<LiveCounters> {
        Arc::clone(&self.counters)
    }

    /// Scores every window still open (shutdown).
    pub fn finish(&mut self) {
        let rows = self.extractor.finish();
        self.score(&rows);
    }

    fn score(&self, rows: &[FeatureRow]) {
        let threshold = self.model.threshold();
        // Counted before the verdict is handed on: whoever acts on it (the firewall's relay
        // thread) may read the counters at once and must find this window in them.
        let (rows, incomplete): (Vec<&FeatureRow>, Vec<&FeatureRow>) = rows
            .iter()
            .partition(|r| r.window_start_ms >= self.blind_until_ms);
        self.counters
            .incomplete
            .fetch_add(incomplete.len() as u64, Ordering::Relaxed);
        self.counters
            .windows
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        if let Some(tap) = &self.on_window {
            for row in &rows {
                tap(row);
            }
        }
        for row in rows {
            // The cheap score first; the explanation (which allocates) only when needed.
            if self.model.score(&row.values) > threshold {
                self.counters.anomalies.fetch_add(1, Ordering::Relaxed);
                (self.on_anomaly)(row, self.model.verdict(row));
            }
        }
    }
}

impl WindowSink for LiveScorer {
    fn observe(&mut self, events: &[Event]) {
        for e in events {
            self.extractor.push(e);
        }
    }

    fn tick(&mut self, now_ms: i64) {
        let rows = self
            .extractor
            .close_until(now_ms.saturating_sub(self.lag_ms));
        self.score(&rows);
    }

    /// Events from `from_ms` to `to_ms` were shed. Every window up to the one after `to_ms`
    /// is left unscored, and what the extractor knew is forgotten: a connection whose close
    /// was shed would otherwise look held open from then on, as a slowloris connection
    /// does, and an honest user would be blocked for the recorder's trouble.
    fn lost(&mut self, _from_ms: i64, to_ms: i64) {
        let window = self.extractor.window();
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        self.blind_until_ms = self
            .blind_until_ms
            .max(to_ms.saturating_add(window_ms.saturating_mul(2)));
        let prefix = self.extractor.ipv6_prefix();
        let mut forgotten = std::mem::replace(
            &mut self.extractor,
            Extractor::new(window, self.max_sources).with_ipv6_prefix(prefix),
        );
        let pending = forgotten.finish().len() as u64;
        self.counters
            .incomplete
            .fetch_add(pending, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::EventKind;
    use crate::detect::data::RowSpec;
    use crate::detect::{train, Dataset, TrainSpec, BENIGN};
    use crate::protocol::Kind;
    use std::net::IpAddr;
    use std::sync::Mutex;

    /// A window-aligned base time.
    const T0: i64 = 1_700_000_000_000;

    fn ip(host: u8) -> IpAddr {
        IpAddr::from([127, 0, 1, host])
    }

    /// A well-behaved client: one connection per window, a login, a few messages each
    /// answered, a clean close.
    fn benign_window(events: &mut Vec<Event>, host: u8, window: i64, conn: u64) {
        let t = T0 + window * 1000;
        let e = |dt: i64, kind| Event {
            t_ms: t + dt,
            conn,
            ip: ip(host),
            kind,
        };
        events.push(e(1, EventKind::Accept));
        events.push(e(
            2,
            EventKind::FrameIn {
                kind: Kind::Auth as u8,
                size: 40,
                assemble_ms: 0,
            },
        ));
        events.push(e(3, EventKind::AuthOk { forgiven: 0 }));
        let n = 2 + (u64::from(host) + window as u64) % 4;
        for i in 0..n as i64 {
            events.push(e(
                10 + i * 150,
                EventKind::FrameIn {
                    kind: Kind::SendMessage as u8,
                    size: 100 + (i as u32 * 37 + u32::from(host)) % 200,
                    assemble_ms: 0,
                },
            ));
            events.push(e(
                11 + i * 150,
                EventKind::FrameOut {
                    kind: Kind::Ok as u8,
                    size: 8,
                },
            ));
        }
        events.push(e(
            900,
            EventKind::Close {
                reason: "bye",
                unread_bytes: 0,
            },
        ));
    }

    /// A flood of garbage frames.
    fn attack_window(events: &mut Vec<Event>, host: u8, window: i64, conn: u64) {
        let t = T0 + window * 1000;
        for i in 0..500 {
            events.push(Event {
                t_ms: t + i,
                conn,
                ip: ip(host),
                kind: EventKind::DecodeError {
                    reason: "bad_magic",
                },
            });
        }
    }

    fn model_from(events: &[Event]) -> Result<Model, DetectError> {
        let mut x = Extractor::new(Duration::from_secs(1), 1000);
        for e in events {
            x.push(e);
        }
        let rows = x.finish();
        let sources: Vec<String> = rows.iter().map(|r| r.source.to_string()).collect();
        let ds = Dataset::from_rows(
            FEATURES.iter().map(|s| (*s).to_owned()).collect(),
            true,
            rows.iter().zip(&sources).map(|(r, s)| RowSpec {
                source: s,
                window_start_ms: r.window_start_ms,
                window_ms: r.window_ms,
                values: &r.values,
                label: Some(BENIGN),
            }),
        )?;
        let params = TrainSpec::default().k(4).seed(1).check()?;
        Ok(train(&ds, &params)?.model)
    }

    /// Benign traffic of 8 hosts for windows `0..windows`, and a flood from 127.0.1.99 in
    /// windows `attack`.
    fn traffic(windows: i64, attack: std::ops::Range<i64>) -> Vec<Event> {
        let mut events = Vec::new();
        let mut conn = 0;
        for w in 0..windows {
            for host in 1..=8 {
                conn += 1;
                benign_window(&mut events, host, w, conn);
            }
            if attack.contains(&w) {
                conn += 1;
                attack_window(&mut events, 99, w, conn);
            }
        }
        events.sort_by_key(|e| e.t_ms);
        events
    }

    #[test]
    fn an_anomalous_source_is_reported_and_benign_ones_are_not() -> Result<(), DetectError> {
        let model = Arc::new(model_from(&traffic(300, 0..0))?);
        let seen: Arc<Mutex<Vec<(IpAddr, Verdict)>>> = Arc::default();
        let sink_seen = Arc::clone(&seen);
        let mut scorer = LiveScorer::new(
            model,
            Duration::from_secs(1),
            1000,
            Box::new(move |row, v| {
                if let Ok(mut s) = sink_seen.lock() {
                    s.push((row.ip(), v));
                }
            }),
        )?
        .with_lag(Duration::from_millis(500));
        let counters = scorer.counters();
        // The same kind of day again, with a flood in windows 200..205.
        for batch in traffic(210, 200..205).chunks(256) {
            scorer.observe(batch);
            if let Some(last) = batch.last() {
                scorer.tick(last.t_ms);
            }
        }
        scorer.tick(T0 + 211 * 1000);

        let seen = seen.lock().map_err(|_| DetectError::NoLabels)?;
        let attacker: Vec<&Verdict> = seen
            .iter()
            .filter(|(a, _)| *a == ip(99))
            .map(|(_, v)| v)
            .collect();
        assert!(attacker.len() >= 4, "the flood was not reported: {seen:?}");
        let v = attacker[0];
        assert!(v.anomalous && v.score > v.threshold);
        assert!(v.top.iter().any(|c| c.feature == "decode_errors"), "{v}");
        // The model allows about 1 % false positives on benign windows.
        let benign = seen.len() - attacker.len();
        assert!(benign <= 8 * 210 / 50, "{benign} benign windows reported");
        let stats = counters.snapshot();
        assert_eq!(stats.anomalies as usize, seen.len());
        assert!(stats.windows >= 8 * 209, "{stats:?}");
        Ok(())
    }

    #[test]
    fn a_model_of_another_window_is_refused() -> Result<(), DetectError> {
        let model = model_from(&traffic(50, 0..0))?;
        let err = LiveScorer::new(
            Arc::new(model),
            Duration::from_secs(10),
            10,
            Box::new(|_, _| {}),
        );
        assert!(matches!(err, Err(DetectError::BadModel(_))));
        Ok(())
    }
}
