//! Live detection: the model scores every source's activity windows and its anomalies feed
//! the firewall.
//!
//! ```text
//! recorder writer thread                       relay thread
//!   batch ─▶ LiveScorer ─▶ anomaly ─try_send─▶ [bounded queue] ─▶ Firewall::model_anomaly
//! ```
//!
//! The scorer runs on the recorder's writer thread (a [`WindowSink`]), with the same
//! `Extractor` that `rampart activity export` runs. Anomalies do not reach the firewall on
//! that thread: a decision is stored through the recorder's own channel, and the writer
//! waiting for room in the channel it alone drains would never wake. So anomalies go
//! through a small bounded queue to a relay thread; a full queue sheds and counts.
//!
//! In `enforce` mode an anomaly from a source the guard already blocks is not queued at all:
//! the firewall would ignore it, and under a botnet those are nearly all of them (a blocked
//! source's windows of refused connections stay anomalous). Queued, they filled the queue in
//! one scoring pass and shed the verdicts of sources not yet blocked.
//!
//! What the relay does with an anomaly depends on `firewall.model`: `enforce` hands it to
//! the firewall, whose score the rules feed too; `shadow` (the default) hands it to a
//! model-only [`Firewall::shadow_board`], whose decisions are all `shadow_block` and are
//! stored with the firewall's own, so the model's verdicts are recorded and explained but
//! never block; `off` drops it (the server normally runs no model at all then).
//!
//! Invariant: the relay holds the firewall weakly. The firewall holds the recorder, whose
//! writer thread holds the scorer, which holds the queue: a strong reference would keep the
//! whole chain alive forever. When the server is dropped the firewall goes, the recorder's
//! last sender with it, the writer thread ends, the queue disconnects and the relay ends.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use serde::Serialize;

use crate::activity::features::{feature_index, FeatureRow};
use crate::activity::WindowSink;
use crate::config::{Config, ModelMode};
use crate::detect::{Algo, DetectError, LiveCounters, LiveScorer, Model, OnWindow, Verdict};
use crate::firewall::Firewall;
use crate::guard::Guard;

/// Anomalies waiting for the firewall. Each anomalous window is one entry; a source is
/// blocked after a few, so this holds the verdicts of hundreds of sources at once.
const QUEUE: usize = 1024;

/// One anomalous window on its way to the firewall: source, score, threshold, explanation.
type Anomaly = (IpAddr, f64, f64, String);

/// Windows close this many recorder flush intervals after their end, so that events
/// committed a little late still count in their own window.
const LAG_FLUSHES: u32 = 4;

/// Window features whose events the firewall's rules already score, or that follow from
/// such an event: a window's model points come from what it shows beyond them, so that no
/// event is judged twice. A failed login is the rules' to score and to forgive once the
/// right password follows; a broken frame (`decode_errors`, `header_errors`,
/// `frame_too_large`) and a timeout (`timeouts`, `frame_timeouts`, `write_timeouts`) have
/// their own weights; a close the server made (`server_closes`) follows one of those, or is
/// no offence at all (an idle session, a reset by the network). Counted twice, one stray
/// HTTP request or two connection resets blocked an address (docs/DETECTION.md, "What the
/// rules already scored"). Denials stay: nothing forgives them, and the model's view of them
/// is what catches an enumeration kept under the rules' threshold.
pub(crate) const RULE_SCORED: &[&str] = &[
    "auth_failures",
    "decode_errors",
    "header_errors",
    "frame_too_large",
    "timeouts",
    "frame_timeouts",
    "write_timeouts",
    "server_closes",
];

/// A window in which the source sent nothing and opened and held at most one connection (a
/// TCP health check, a port probe, a client that connects and gives up) earns no model
/// points: it cost the server one accept, and the rules score what such connections can do
/// at volume (refusals past the accept rate and the per-source caps, authentication
/// timeouts). The closed world has no such window, so the model finds it far off (about
/// four times the threshold), and a health check every second was blocked after two. More
/// than one connection a second stays the model's to judge: a plaintext client hammering a
/// TLS port sends nothing the frame layer sees either, and only the model blocks it.
pub(crate) fn silent(row: &FeatureRow) -> bool {
    silent_by(|name: &str| {
        feature_index(name)
            .and_then(|i| row.values.get(i).copied())
            .unwrap_or(0.0)
    })
}

/// [`silent`] on a window whose features `at` looks up by name.
pub(crate) fn silent_by(at: impl Fn(&str) -> f64) -> bool {
    at("frames_in") == 0.0
        && at("bytes_in") == 0.0
        && at("slow_frame_ms_max") == 0.0
        && at("connections_opened") <= 1.0
        && at("concurrent_connections_max") <= 1.0
}

/// What the live detector has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DetectionStats {
    /// Activity windows scored.
    pub windows: u64,
    /// Windows the model found anomalous.
    pub anomalies: u64,
    /// Anomalies shed because the relay's queue was full.
    pub shed: u64,
    /// Anomalies not queued because their source was already blocked (`enforce` mode).
    pub already_blocked: u64,
    /// Anomalies not queued because the source sent nothing in the window and opened and held
    /// at most one connection (a silent window).
    pub silent: u64,
}

/// The counters of a running detector.
#[derive(Debug)]
pub(crate) struct Detection {
    scorer: Arc<LiveCounters>,
    shed: Arc<AtomicU64>,
    already_blocked: Arc<AtomicU64>,
    silent: Arc<AtomicU64>,
}

impl Detection {
    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> DetectionStats {
        let s = self.scorer.snapshot();
        DetectionStats {
            windows: s.windows,
            anomalies: s.anomalies,
            shed: self.shed.load(Ordering::Relaxed),
            already_blocked: self.already_blocked.load(Ordering::Relaxed),
            silent: self.silent.load(Ordering::Relaxed),
        }
    }
}

/// The relay's end of the queue, waiting for the firewall to exist.
pub(crate) struct Pending {
    rx: Receiver<Anomaly>,
    mode: ModelMode,
    /// Where the sink finds the guard once the firewall exists (`enforce` mode only).
    guard: Arc<OnceLock<Weak<Guard>>>,
}

/// The scorer's end of the queue: what it does with each anomalous window.
struct Sink {
    tx: SyncSender<Anomaly>,
    algo: Algo,
    shed: Arc<AtomicU64>,
    already_blocked: Arc<AtomicU64>,
    silent: Arc<AtomicU64>,
    /// Set once the firewall exists, in `enforce` mode only.
    guard: Arc<OnceLock<Weak<Guard>>>,
}

impl Sink {
    /// Queues the anomaly for the relay, unless the window was silent or its source is already
    /// blocked; counts what it drops.
    fn offer(&self, row: &FeatureRow, verdict: &Verdict) {
        let ip = row.ip();
        if silent(row) {
            self.silent.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let blocked = self
            .guard
            .get()
            .and_then(Weak::upgrade)
            .is_some_and(|g| g.is_blocked(ip));
        if blocked {
            self.already_blocked.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let score = live_score(self.algo, verdict);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx
                .try_send((ip, score, verdict.threshold, verdict.to_string()))
        {
            self.shed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The score the firewall's points come from. The rules score failed logins themselves and
/// forgive typos, and weigh broken frames and timeouts on their own; the model adds only what
/// the window shows beyond them ([`RULE_SCORED`]).
pub(crate) fn live_score(algo: Algo, verdict: &Verdict) -> f64 {
    match algo {
        Algo::Kmeans => verdict.score_without(RULE_SCORED),
        Algo::Gmm => verdict.score,
    }
}

/// Builds the scorer for the recorder (windows of the model's length; sources capped by
/// `limits.max_tracked_sources`) and the relay's end of its queue. Fails if the model was
/// trained on another feature schema.
pub(crate) fn scorer(
    model: Arc<Model>,
    config: &Config,
    on_window: Option<OnWindow>,
) -> Result<(Box<dyn WindowSink>, Pending, Detection), DetectError> {
    let window = model.window().unwrap_or(Duration::from_secs(1));
    let algo = model.algo();
    let (tx, rx): (SyncSender<Anomaly>, _) = mpsc::sync_channel(QUEUE);
    let shed = Arc::new(AtomicU64::new(0));
    let already_blocked = Arc::new(AtomicU64::new(0));
    let silent = Arc::new(AtomicU64::new(0));
    // Weak: the guard outlives no server, and the sink must not keep it alive.
    let guard: Arc<OnceLock<Weak<Guard>>> = Arc::new(OnceLock::new());
    let sink = Sink {
        tx,
        algo,
        shed: Arc::clone(&shed),
        already_blocked: Arc::clone(&already_blocked),
        silent: Arc::clone(&silent),
        guard: Arc::clone(&guard),
    };
    let scorer = LiveScorer::new(
        model,
        window,
        config.limits.max_tracked_sources as usize,
        Box::new(move |row, verdict| sink.offer(row, &verdict)),
    )?
    .with_lag(config.activity.flush() * LAG_FLUSHES)
    .with_ipv6_prefix(config.ip.ipv6_prefix);
    let scorer = match on_window {
        Some(tap) => scorer.with_window_tap(tap),
        None => scorer,
    };
    let detection = Detection {
        scorer: scorer.counters(),
        shed,
        already_blocked,
        silent,
    };
    Ok((
        Box::new(scorer),
        Pending {
            rx,
            mode: config.firewall.model,
            guard,
        },
        detection,
    ))
}

impl Pending {
    /// Starts the relay thread, which hands every anomaly to `firewall` (or, in shadow
    /// mode, to its shadow board) until the scorer is gone.
    pub(crate) fn start(self, firewall: Weak<Firewall>) -> std::io::Result<()> {
        let Pending { rx, mode, guard } = self;
        if let (ModelMode::Enforce, Some(fw)) = (mode, firewall.upgrade()) {
            // The firewall ignores anomalies from a blocked source; the sink drops them
            // before they take room in the queue.
            let _ = guard.set(Arc::downgrade(fw.guard()));
        }
        // The board holds the guard, never the firewall or the recorder (see the
        // invariant above).
        let board = match (mode, firewall.upgrade()) {
            (ModelMode::Shadow, Some(fw)) => Some(fw.shadow_board()),
            _ => None,
        };
        let relay = move |(ip, score, threshold, explanation): Anomaly| -> bool {
            let Some(fw) = firewall.upgrade() else {
                return false;
            };
            match (mode, &board) {
                (ModelMode::Enforce, _) => {
                    fw.model_anomaly(ip, score, threshold, &explanation);
                }
                (ModelMode::Shadow, Some(board)) => {
                    if let Some(d) = board.model_anomaly(ip, score, threshold, &explanation) {
                        fw.record_decision(d);
                    }
                }
                (ModelMode::Shadow, None) | (ModelMode::Off, _) => {}
            }
            true
        };
        if crate::sim::active() {
            // In a simulation the relay is a task that looks every millisecond of virtual
            // time, as a thread woken by the channel would see it.
            tokio::spawn(async move {
                loop {
                    loop {
                        match rx.try_recv() {
                            Ok(a) => {
                                if !relay(a) {
                                    return;
                                }
                            }
                            Err(mpsc::TryRecvError::Disconnected) => return,
                            Err(mpsc::TryRecvError::Empty) => break,
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
            return Ok(());
        }
        std::thread::Builder::new()
            .name("rampart-detect".into())
            .spawn(move || {
                while let Ok(a) = rx.recv() {
                    if !relay(a) {
                        break;
                    }
                }
            })
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::features::feature_index;

    fn anomalous() -> Verdict {
        Verdict {
            anomalous: true,
            score: 9.0,
            threshold: 1.0,
            cluster: 0,
            top: Vec::new(),
        }
    }

    /// A window of `ip` with these feature values, the others 0.
    fn row(ip: IpAddr, set: &[(&str, f64)]) -> FeatureRow {
        let mut values = vec![0.0; crate::activity::features::FEATURES.len()];
        for (name, v) in set {
            values[feature_index(name).expect("a feature")] = *v;
        }
        FeatureRow {
            source: crate::guard::SourceKey::from_ip(ip, 64),
            window_start_ms: 0,
            window_ms: 1000,
            values,
        }
    }

    /// A k-means sink with a queue of `room` anomalies, before the firewall exists.
    fn sink(room: usize) -> (Sink, Receiver<Anomaly>) {
        let (tx, rx) = mpsc::sync_channel(room);
        let sink = Sink {
            tx,
            algo: Algo::Kmeans,
            shed: Arc::new(AtomicU64::new(0)),
            already_blocked: Arc::new(AtomicU64::new(0)),
            silent: Arc::new(AtomicU64::new(0)),
            guard: Arc::new(OnceLock::new()),
        };
        (sink, rx)
    }

    /// A window in which `ip` sent requests.
    fn busy_row(ip: IpAddr) -> FeatureRow {
        row(ip, &[("frames_in", 40.0), ("bytes_in", 4000.0)])
    }

    #[test]
    fn a_window_in_which_the_source_sent_nothing_earns_no_points() {
        let (sink, rx) = sink(8);
        let ip: IpAddr = "127.0.9.3".parse().unwrap();
        // A TCP health check: one connection opened and closed, nothing sent.
        let check = row(
            ip,
            &[
                ("connections_opened", 1.0),
                ("closes", 1.0),
                ("concurrent_connections_max", 1.0),
            ],
        );
        sink.offer(&check, &anomalous());
        assert!(rx.try_recv().is_err());
        assert_eq!(sink.silent.load(Ordering::Relaxed), 1);
        // Not silent: a request frame, several connections (one after another, or side by
        // side), or a frame still dripping in.
        for set in [
            vec![
                ("connections_opened", 1.0),
                ("frames_in", 1.0),
                ("bytes_in", 20.0),
            ],
            vec![
                ("connections_opened", 5.0),
                ("concurrent_connections_max", 1.0),
            ],
            vec![("concurrent_connections_max", 30.0)],
            vec![
                ("concurrent_connections_max", 1.0),
                ("slow_frame_ms_max", 900.0),
            ],
        ] {
            sink.offer(&row(ip, &set), &anomalous());
            assert_eq!(rx.try_recv().map(|a| a.0), Ok(ip), "{set:?}");
        }
        assert_eq!(sink.silent.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_anomaly_from_a_blocked_source_takes_no_room_in_the_queue() {
        let guard = Arc::new(Guard::new(&Config::default()));
        let (sink, rx) = sink(1);
        let blocked: IpAddr = "127.0.9.1".parse().unwrap();
        let open: IpAddr = "127.0.9.2".parse().unwrap();
        let (blocked_row, open_row) = (busy_row(blocked), busy_row(open));
        assert!(guard.block(blocked, Duration::from_secs(60), "test"));
        // Before the firewall exists every anomaly is queued.
        sink.offer(&blocked_row, &anomalous());
        assert_eq!(rx.try_recv().map(|a| a.0), Ok(blocked));
        let _ = sink.guard.set(Arc::downgrade(&guard));
        // A full queue of the blocked source's anomalies would shed the open source's one.
        for _ in 0..3 {
            sink.offer(&blocked_row, &anomalous());
        }
        sink.offer(&open_row, &anomalous());
        assert_eq!(rx.try_recv().map(|a| a.0), Ok(open));
        assert_eq!(sink.already_blocked.load(Ordering::Relaxed), 3);
        assert_eq!(sink.shed.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn rule_scored_features_are_features() {
        for name in RULE_SCORED {
            assert!(feature_index(name).is_some(), "{name}");
        }
    }
}
