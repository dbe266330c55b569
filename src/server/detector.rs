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

/// Window features whose events the firewall's rules score and, for an honest user, take
/// back: a failed login is forgiven once the right password follows. A window's model points
/// come from what it shows beyond them, so a typo is neither judged twice nor punished after
/// it was forgiven. (Denials and broken frames are never forgiven, so the model's view of
/// them stands: it is what lets it catch an enumeration kept under the rules' threshold.)
const RULE_SCORED: &[&str] = &["auth_failures"];

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
}

/// The counters of a running detector.
#[derive(Debug)]
pub(crate) struct Detection {
    scorer: Arc<LiveCounters>,
    shed: Arc<AtomicU64>,
    already_blocked: Arc<AtomicU64>,
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
    /// Set once the firewall exists, in `enforce` mode only.
    guard: Arc<OnceLock<Weak<Guard>>>,
}

impl Sink {
    /// Queues the anomaly for the relay, unless its source is already blocked; counts what
    /// it drops.
    fn offer(&self, ip: IpAddr, verdict: &Verdict) {
        let blocked = self
            .guard
            .get()
            .and_then(Weak::upgrade)
            .is_some_and(|g| g.is_blocked(ip));
        if blocked {
            self.already_blocked.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // The rules score failed logins themselves and forgive typos; the model adds only
        // what the window shows beyond them.
        let score = match self.algo {
            Algo::Kmeans => verdict.score_without(RULE_SCORED),
            Algo::Gmm => verdict.score,
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx
                .try_send((ip, score, verdict.threshold, verdict.to_string()))
        {
            self.shed.fetch_add(1, Ordering::Relaxed);
        }
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
    // Weak: the guard outlives no server, and the sink must not keep it alive.
    let guard: Arc<OnceLock<Weak<Guard>>> = Arc::new(OnceLock::new());
    let sink = Sink {
        tx,
        algo,
        shed: Arc::clone(&shed),
        already_blocked: Arc::clone(&already_blocked),
        guard: Arc::clone(&guard),
    };
    let scorer = LiveScorer::new(
        model,
        window,
        config.limits.max_tracked_sources as usize,
        Box::new(move |ip, verdict| sink.offer(ip, &verdict)),
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

    #[test]
    fn an_anomaly_from_a_blocked_source_takes_no_room_in_the_queue() {
        let guard = Arc::new(Guard::new(&Config::default()));
        let (tx, rx) = mpsc::sync_channel(1);
        let sink = Sink {
            tx,
            algo: Algo::Kmeans,
            shed: Arc::new(AtomicU64::new(0)),
            already_blocked: Arc::new(AtomicU64::new(0)),
            guard: Arc::new(OnceLock::new()),
        };
        let blocked: IpAddr = "127.0.9.1".parse().unwrap();
        let open: IpAddr = "127.0.9.2".parse().unwrap();
        assert!(guard.block(blocked, Duration::from_secs(60), "test"));
        // Before the firewall exists every anomaly is queued.
        sink.offer(blocked, &anomalous());
        assert_eq!(rx.try_recv().map(|a| a.0), Ok(blocked));
        let _ = sink.guard.set(Arc::downgrade(&guard));
        // A full queue of the blocked source's anomalies would shed the open source's one.
        for _ in 0..3 {
            sink.offer(blocked, &anomalous());
        }
        sink.offer(open, &anomalous());
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
