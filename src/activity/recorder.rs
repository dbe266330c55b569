//! The recorder: a bounded channel in front of one writer thread that commits batches.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::db::{self, ActivityError};
use super::Event;

/// Receives every committed batch on the writer thread; the live feature windows and the
/// model's verdicts hang off this.
pub trait WindowSink: Send {
    /// Called with each batch after it is committed, in order.
    fn observe(&mut self, events: &[Event]);
    /// Called at least every flush interval, with the current time, so windows can close
    /// even when no events arrive.
    fn tick(&mut self, now_ms: i64);
}

/// Counters of what the recorder did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RecorderStats {
    /// Events committed to the database.
    pub recorded: u64,
    /// Events shed because the channel was full (never silently: reports show this).
    pub shed: u64,
    /// Batches committed.
    pub batches: u64,
    /// Batches that failed to commit (their events are counted as shed).
    pub failed_batches: u64,
}

#[derive(Debug, Default)]
struct Counters {
    recorded: AtomicU64,
    shed: AtomicU64,
    batches: AtomicU64,
    failed_batches: AtomicU64,
}

/// A firewall decision to store next to the events.
#[derive(Debug, Clone)]
pub struct DecisionRecord {
    /// When, in milliseconds since the Unix epoch.
    pub t_ms: i64,
    /// The source, as text.
    pub source: String,
    /// `block`, `shadow_block`, `allowed` or `unblock`.
    pub action: &'static str,
    /// Block length in seconds.
    pub duration_s: u64,
    /// The score behind the decision.
    pub score: f64,
    /// Why.
    pub reason: String,
}

/// Called on the writer thread with every source an operator unblocked through the
/// activity database (`rampart firewall unblock`).
pub type UnblockHook = Box<dyn FnMut(std::net::IpAddr) + Send>;

enum Msg {
    Event(Event),
    Flush(mpsc::Sender<()>),
    Decision(DecisionRecord),
    OnUnblock(UnblockHook),
    ShedBelow(crate::store::FreeSpace),
}

/// Sends events to the writer thread. Cheap to clone; the thread stops when every clone is
/// dropped, after committing what it holds.
#[derive(Clone)]
pub struct Recorder {
    tx: Option<SyncSender<Msg>>,
    counters: Arc<Counters>,
    thread: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Largest batch committed in one transaction.
const BATCH_MAX: usize = 8192;

impl Recorder {
    /// A recorder that records nothing (recording disabled).
    pub fn disabled() -> Recorder {
        Recorder {
            tx: None,
            counters: Arc::default(),
            thread: Arc::default(),
        }
    }

    /// Opens `DATA/activity.db` and starts the writer thread with a channel of `capacity`
    /// events, committing at least every `flush` and handing each batch to `sink`.
    pub fn start(
        data_dir: &Path,
        capacity: usize,
        flush: Duration,
        sink: Option<Box<dyn WindowSink>>,
    ) -> Result<Recorder, ActivityError> {
        let conn = db::open(data_dir)?;
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        let counters = Arc::new(Counters::default());
        let c = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name("rampart-recorder".into())
            .spawn(move || writer(conn, rx, c, flush, sink))
            .map_err(|e| {
                rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISUSE),
                    Some(format!("cannot start the recorder thread: {e}")),
                )
            })?;
        Ok(Recorder {
            tx: Some(tx),
            counters,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
        })
    }

    /// Records an event without ever blocking; if the channel is full the event is shed
    /// and counted.
    pub fn record(&self, event: Event) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Msg::Event(event)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.shed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Stores a firewall decision. Decisions are rare, so this waits for room rather than
    /// shed one (bounded by the writer, which drains continuously).
    pub fn decision(&self, d: DecisionRecord) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Decision(d));
        }
    }

    /// Installs the hook the writer calls, about once per flush interval, for each new
    /// `unblock` row an operator wrote into the activity database.
    pub fn on_unblock(&self, hook: UnblockHook) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::OnUnblock(hook));
        }
    }

    /// Sheds (and counts as shed) every batch that finds the disk below `space`'s floor,
    /// so activity never takes the last bytes the store needs (see
    /// [`FreeSpace::room_for_activity`](crate::store::FreeSpace::room_for_activity)).
    pub fn shed_below(self, space: crate::store::FreeSpace) -> Recorder {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::ShedBelow(space));
        }
        self
    }

    /// Waits until everything recorded so far is committed (tests, exports, shutdown).
    pub fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (done_tx, done_rx) = mpsc::channel();
        if tx.send(Msg::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(Duration::from_secs(30));
        }
    }

    /// What the recorder has done so far.
    pub fn stats(&self) -> RecorderStats {
        RecorderStats {
            recorded: self.counters.recorded.load(Ordering::Relaxed),
            shed: self.counters.shed.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
            failed_batches: self.counters.failed_batches.load(Ordering::Relaxed),
        }
    }

    /// Commits what is pending and stops the writer thread once every other clone is gone.
    pub fn close(mut self) {
        self.flush();
        self.tx = None;
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        // Only the last clone's drop disconnects the channel, so join only if we were it.
        if Arc::strong_count(&self.thread) == 1 {
            if let Some(h) = handle {
                let _ = h.join();
            }
        } else if let Some(h) = handle {
            // Put it back for the last clone.
            *self
                .thread
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(h);
        }
    }
}

fn writer(
    mut conn: rusqlite::Connection,
    rx: Receiver<Msg>,
    counters: Arc<Counters>,
    flush: Duration,
    mut sink: Option<Box<dyn WindowSink>>,
) {
    let mut batch: Vec<Event> = Vec::with_capacity(BATCH_MAX);
    let mut waiters: Vec<mpsc::Sender<()>> = Vec::new();
    let mut decisions: Vec<DecisionRecord> = Vec::new();
    let mut unblock_hook: Option<UnblockHook> = None;
    let mut floor: Option<crate::store::FreeSpace> = None;
    // Unblock rows older than the start are history, not commands.
    let mut last_unblock = db::last_decision_id(&conn).unwrap_or(0);
    let mut last_tick = Instant::now();
    loop {
        let disconnected = match rx.recv_timeout(flush) {
            Ok(msg) => {
                let mut next = Some(msg);
                // Take this message and what is already queued, up to one batch, without
                // waiting.
                while let Some(m) = next.take() {
                    match m {
                        Msg::Event(e) => batch.push(e),
                        Msg::Flush(w) => waiters.push(w),
                        Msg::Decision(d) => decisions.push(d),
                        Msg::OnUnblock(h) => unblock_hook = Some(h),
                        Msg::ShedBelow(space) => floor = Some(space),
                    }
                    if batch.len() < BATCH_MAX {
                        next = rx.try_recv().ok();
                    }
                }
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        if !batch.is_empty() && floor.as_ref().is_some_and(|f| !f.room_for_activity()) {
            counters
                .shed
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            batch.clear();
        }
        if !batch.is_empty() {
            match db::insert(&mut conn, &batch) {
                Ok(()) => {
                    counters
                        .recorded
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    counters.batches.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::error!(error = %e, events = batch.len(), "activity batch not committed");
                    counters
                        .shed
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    counters.failed_batches.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Some(s) = sink.as_mut() {
                s.observe(&batch);
            }
            batch.clear();
        }
        for d in decisions.drain(..) {
            if let Err(e) = db::insert_decision(
                &conn,
                d.t_ms,
                &d.source,
                d.action,
                d.duration_s,
                d.score,
                &d.reason,
            ) {
                tracing::error!(error = %e, "firewall decision not stored");
            }
        }
        if last_tick.elapsed() >= flush || disconnected {
            if let Some(s) = sink.as_mut() {
                s.tick(super::now_ms());
            }
            if let Some(hook) = unblock_hook.as_mut() {
                match db::unblocks_since(&conn, last_unblock) {
                    Ok(rows) => {
                        for (id, ip) in rows {
                            last_unblock = last_unblock.max(id);
                            hook(ip);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read unblock commands"),
                }
            }
            last_tick = Instant::now();
        }
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
        if disconnected {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::{db, EventKind};

    fn event(i: u64) -> Event {
        Event {
            t_ms: 1_700_000_000_000 + i as i64,
            conn: i % 7,
            ip: std::net::IpAddr::from([127, 0, 1, (i % 200) as u8]),
            kind: match i % 4 {
                0 => EventKind::Accept,
                1 => EventKind::FrameIn {
                    kind: 3,
                    size: i as u32,
                    assemble_ms: 2,
                },
                2 => EventKind::DecodeError {
                    reason: "bad_magic",
                },
                _ => EventKind::Close {
                    reason: "eof",
                    unread_bytes: 5,
                },
            },
        }
    }

    struct Count(Arc<AtomicU64>);
    impl WindowSink for Count {
        fn observe(&mut self, events: &[Event]) {
            self.0.fetch_add(events.len() as u64, Ordering::Relaxed);
        }
        fn tick(&mut self, _: i64) {}
    }

    #[test]
    fn events_round_trip_through_the_database() -> Result<(), ActivityError> {
        let dir = tempfile::tempdir().map_err(|e| ActivityError::Corrupt {
            id: 0,
            what: e.to_string(),
        })?;
        let seen = Arc::new(AtomicU64::new(0));
        let rec = Recorder::start(
            dir.path(),
            100_000,
            Duration::from_millis(10),
            Some(Box::new(Count(Arc::clone(&seen)))),
        )?;
        let sent: Vec<Event> = (0..10_000).map(event).collect();
        for e in &sent {
            rec.record(*e);
        }
        rec.flush();
        let stats = rec.stats();
        assert_eq!(stats.recorded + stats.shed, 10_000);
        assert_eq!(stats.shed, 0, "a channel of 100k holds 10k events");
        assert_eq!(seen.load(Ordering::Relaxed), 10_000);
        rec.close();
        let conn = db::open(dir.path())?;
        let mut back = Vec::new();
        db::for_each_event(&conn, |e| back.push(e))?;
        assert_eq!(back, sent);
        Ok(())
    }

    #[test]
    fn a_full_channel_sheds_and_counts() -> Result<(), ActivityError> {
        let dir = tempfile::tempdir().map_err(|e| ActivityError::Corrupt {
            id: 0,
            what: e.to_string(),
        })?;
        // A tiny channel and a burst far larger than it: some events must be shed, and
        // every event is either recorded or counted as shed.
        let rec = Recorder::start(dir.path(), 4, Duration::from_millis(50), None)?;
        for i in 0..50_000 {
            rec.record(event(i));
        }
        rec.flush();
        let stats = rec.stats();
        assert_eq!(stats.recorded + stats.shed, 50_000);
        assert!(stats.shed > 0);
        let conn = db::open(dir.path())?;
        assert_eq!(db::count(&conn)?, stats.recorded);
        Ok(())
    }
}
