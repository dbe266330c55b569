//! The recorder: a bounded channel in front of one writer thread that commits batches.

use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::time::Instant;

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
    /// Called before the next batch when events stamped from `from_ms` to `to_ms` were
    /// shed: the windows around them are incomplete.
    fn lost(&mut self, _from_ms: i64, _to_ms: i64) {}
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
    /// Events deleted by retention (`activity.retain_days`, `activity.max_bytes`).
    pub pruned: u64,
    /// Frame events of anonymous connections past their per-second allowance, counted
    /// instead of stored (`activity::fold`).
    pub folded: u64,
}

#[derive(Debug)]
struct Counters {
    recorded: AtomicU64,
    shed: AtomicU64,
    batches: AtomicU64,
    failed_batches: AtomicU64,
    pruned: AtomicU64,
    folded: AtomicU64,
    /// The longest commit (with any checkpoint it ran) since last taken, microseconds.
    longest_commit_us: AtomicU64,
    /// Decisions that found the channel full, for the writer's next pass: a decision
    /// never waits for room, so a stalled writer cannot stall the session that decided.
    held: std::sync::Mutex<Vec<DecisionRecord>>,
    /// Until when the writer takes nothing from its queue ([`Recorder::stall`]).
    stalled_until: std::sync::Mutex<Option<Instant>>,
    /// The earliest and latest stamp of the events shed since the writer last looked
    /// (`i64::MAX` and `i64::MIN` when none), which it reports to the sink.
    shed_span: (AtomicI64, AtomicI64),
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            recorded: AtomicU64::default(),
            shed: AtomicU64::default(),
            batches: AtomicU64::default(),
            failed_batches: AtomicU64::default(),
            pruned: AtomicU64::default(),
            folded: AtomicU64::default(),
            longest_commit_us: AtomicU64::default(),
            held: std::sync::Mutex::default(),
            stalled_until: std::sync::Mutex::default(),
            shed_span: (AtomicI64::new(i64::MAX), AtomicI64::new(i64::MIN)),
        }
    }
}

/// Most decisions held beside a full channel; past it a decision's record is shed (the
/// block itself is in force in memory either way).
const HELD_DECISIONS_MAX: usize = 4096;

impl Counters {
    /// Whether the writer is stalled ([`Recorder::stall`]): how long still, if so.
    fn stalled_for(&self) -> Option<Duration> {
        let until = (*self
            .stalled_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))?;
        let now = Instant::now();
        (until > now).then(|| until - now)
    }
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
    Retain(Retention),
    ShedBelow(crate::store::FreeSpace),
}

/// How much activity the database keeps. Old events are deleted in small steps on the
/// writer's thread, between commits, so pruning never stalls recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Events older than this are deleted (`None`: kept whatever their age).
    pub max_age: Option<Duration>,
    /// Past this many bytes in use, the oldest events are deleted (`None`: no cap).
    pub max_bytes: Option<u64>,
}

/// How long the writer naps after taking what was queued, before it looks again. Waiting on
/// the channel instead woke it for every event or two: under 64 clients sending messages
/// (two events each), the futex wake-ups between the sessions and this thread were about a
/// sixth of the server's CPU. Commits wait for the flush interval anyway, and the channel
/// holds far more than a nap's worth of events, so napping sheds nothing.
const NAP: Duration = Duration::from_millis(2);

/// Most events one pruning step deletes: a few milliseconds of work.
const PRUNE_STEP_ROWS: u32 = 4096;
/// How often retention is checked while there is nothing left to prune.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// Sends events to the writer thread. Cheap to clone; the thread stops when every clone is
/// dropped, after committing what it holds.
#[derive(Clone)]
pub struct Recorder {
    tx: Option<SyncSender<Msg>>,
    counters: Arc<Counters>,
    thread: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
    /// In a simulation, the writer runs as a task instead of a thread ([`crate::sim`]).
    sim: Option<SimWriter>,
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
            sim: None,
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
        let w = Writer::new(conn, Arc::clone(&counters), flush, sink);
        if crate::sim::active() {
            let shared: SimWriter = Arc::new(std::sync::Mutex::new(Some((w, rx))));
            tokio::spawn(sim_writer(Arc::clone(&shared)));
            return Ok(Recorder {
                tx: Some(tx),
                counters,
                thread: Arc::default(),
                sim: Some(shared),
            });
        }
        let thread = std::thread::Builder::new()
            .name("rampart-recorder".into())
            .spawn(move || writer(w, rx))
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
            sim: None,
        })
    }

    /// Records an event without ever blocking; if the channel is full the event is shed
    /// and counted.
    pub fn record(&self, event: Event) {
        let Some(tx) = &self.tx else { return };
        let t_ms = event.t_ms;
        match tx.try_send(Msg::Event(event)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.shed.fetch_add(1, Ordering::Relaxed);
                let (from, to) = &self.counters.shed_span;
                from.fetch_min(t_ms, Ordering::Relaxed);
                to.fetch_max(t_ms, Ordering::Relaxed);
            }
        }
    }

    /// Stores a firewall decision without ever waiting: one that finds the channel full is
    /// held for the writer's next pass (up to `HELD_DECISIONS_MAX`, past which it is shed
    /// and counted), so a stalled writer never stalls the connection that decided.
    pub fn decision(&self, d: DecisionRecord) {
        let Some(tx) = &self.tx else { return };
        if let Err(TrySendError::Full(Msg::Decision(d))) = tx.try_send(Msg::Decision(d)) {
            let mut held = self
                .counters
                .held
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if held.len() < HELD_DECISIONS_MAX {
                held.push(d);
            } else {
                self.counters.shed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Stops the writer taking anything from its queue for `d` (fault injection: a writer
    /// stuck on its disk). Events recorded meanwhile fill the channel and are then shed;
    /// decisions are held ([`Recorder::decision`]).
    pub fn stall(&self, d: Duration) {
        *self
            .counters
            .stalled_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now() + d);
    }

    /// Sends a message that must not be shed: waits for room, or in a simulation, where the
    /// writer runs on this thread, makes room by running a pass first.
    fn send(&self, tx: &SyncSender<Msg>, msg: Msg) {
        let Some(shared) = &self.sim else {
            let _ = tx.send(msg);
            return;
        };
        let mut msg = msg;
        loop {
            if self.counters.stalled_for().is_some() {
                // A stalled writer makes no room: waiting would hang this thread.
                if let Err(TrySendError::Full(_)) = tx.try_send(msg) {
                    self.counters.shed.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            match tx.try_send(msg) {
                Err(TrySendError::Full(back)) if sim_pass(shared) => msg = back,
                _ => return,
            }
            // A pass that takes nothing leaves the channel full: the writer is busy further
            // up this thread's stack, so the message is shed rather than deadlock.
            if shared.try_lock().is_err() {
                self.counters.shed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }

    /// Installs the hook the writer calls, about once per flush interval, for each new
    /// `unblock` row an operator wrote into the activity database.
    pub fn on_unblock(&self, hook: UnblockHook) {
        if let Some(tx) = &self.tx {
            self.send(tx, Msg::OnUnblock(hook));
        }
    }

    /// Sets how much activity the database keeps; the writer prunes towards it in small
    /// steps, starting now.
    pub fn retain(&self, retention: Retention) {
        if let Some(tx) = &self.tx {
            self.send(tx, Msg::Retain(retention));
        }
    }

    /// [`Recorder::retain`], by value, for building a recorder in one expression.
    pub fn retaining(self, retention: Retention) -> Recorder {
        self.retain(retention);
        self
    }

    /// Sheds (and counts as shed) every batch that finds the disk below `space`'s floor,
    /// so activity never takes the last bytes the store needs (see
    /// [`FreeSpace::room_for_activity`](crate::store::FreeSpace::room_for_activity)).
    pub fn shed_below(self, space: crate::store::FreeSpace) -> Recorder {
        if let Some(tx) = &self.tx {
            self.send(tx, Msg::ShedBelow(space));
        }
        self
    }

    /// Waits until everything recorded so far is committed (tests, exports, shutdown).
    pub fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        if let Some(shared) = &self.sim {
            // On the simulation's thread: commit inline, queued messages first.
            let (done_tx, _done_rx) = mpsc::channel();
            self.send(tx, Msg::Flush(done_tx));
            sim_pass(shared);
            return;
        }
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
            pruned: self.counters.pruned.load(Ordering::Relaxed),
            folded: self.counters.folded.load(Ordering::Relaxed),
        }
    }

    /// The longest commit of a batch (including any WAL checkpoint it ran) since the last
    /// call, resetting it: what a stall detector samples.
    pub fn take_longest_commit(&self) -> Duration {
        Duration::from_micros(self.counters.longest_commit_us.swap(0, Ordering::Relaxed))
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

/// The writer's state between batches: what is pending and when it is due.
struct Writer {
    conn: rusqlite::Connection,
    counters: Arc<Counters>,
    flush: Duration,
    sink: Option<Box<dyn WindowSink>>,
    batch: Vec<Event>,
    waiters: Vec<mpsc::Sender<()>>,
    decisions: Vec<DecisionRecord>,
    unblock_hook: Option<UnblockHook>,
    floor: Option<crate::store::FreeSpace>,
    last_unblock: i64,
    /// Ids of the `unblock` rows this writer stored for the firewall, not yet polled.
    own_unblocks: Vec<i64>,
    last_tick: Instant,
    retention: Option<Retention>,
    folder: super::fold::Folder,
    /// None: prune at the next tick (just configured, or the last step was full).
    last_prune: Option<Instant>,
    /// When the oldest event or decision not yet committed arrived. Commits wait for a
    /// whole flush interval's worth: one transaction per event rewrote the same few B-tree
    /// pages into the WAL each time (19 MB of WAL for 8 s of the baseline scenario), and
    /// that write-back competed with the store's durable commits for the disk.
    pending_since: Option<Instant>,
}

impl Writer {
    fn new(
        conn: rusqlite::Connection,
        counters: Arc<Counters>,
        flush: Duration,
        sink: Option<Box<dyn WindowSink>>,
    ) -> Writer {
        // Unblock rows older than the start are history, not commands.
        let last_unblock = db::last_decision_id(&conn).unwrap_or(0);
        Writer {
            conn,
            counters,
            flush,
            sink,
            batch: Vec::with_capacity(BATCH_MAX),
            waiters: Vec::new(),
            decisions: Vec::new(),
            unblock_hook: None,
            floor: None,
            last_unblock,
            own_unblocks: Vec::new(),
            last_tick: Instant::now(),
            retention: None,
            folder: super::fold::Folder::default(),
            last_prune: None,
            pending_since: None,
        }
    }

    /// How long the writer may wait for a message before something is due.
    fn wait(&self) -> Duration {
        self.pending_since
            .map_or(self.flush, |t| self.flush.saturating_sub(t.elapsed()))
    }

    fn full(&self) -> bool {
        self.batch.len() >= BATCH_MAX
    }

    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Event(e) => self.batch.push(e),
            Msg::Flush(w) => self.waiters.push(w),
            Msg::Decision(d) => self.decisions.push(d),
            Msg::OnUnblock(h) => self.unblock_hook = Some(h),
            Msg::Retain(r) => {
                self.retention = Some(r);
                self.last_prune = None;
            }
            Msg::ShedBelow(space) => self.floor = Some(space),
        }
    }

    /// Takes the held decisions and what is queued, up to one batch, without waiting. True
    /// if every sender is gone.
    fn drain(&mut self, rx: &Receiver<Msg>) -> bool {
        self.decisions.append(
            &mut self
                .counters
                .held
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        while !self.full() {
            match rx.try_recv() {
                Ok(m) => self.take(m),
                Err(mpsc::TryRecvError::Empty) => return false,
                Err(mpsc::TryRecvError::Disconnected) => return true,
            }
        }
        false
    }

    /// Commits what is due, ticks the sink, runs the unblock hook and a pruning step, and
    /// answers flush waiters. `disconnected`: the last pass; commit everything.
    fn step(&mut self, disconnected: bool) {
        let flush = self.flush;
        let (from, to) = &self.counters.shed_span;
        let (from, to) = (
            from.swap(i64::MAX, Ordering::Relaxed),
            to.swap(i64::MIN, Ordering::Relaxed),
        );
        if from <= to {
            if let Some(sink) = self.sink.as_mut() {
                sink.lost(from, to);
            }
        }
        if self.pending_since.is_none() && !(self.batch.is_empty() && self.decisions.is_empty()) {
            self.pending_since = Some(Instant::now());
        }
        let due = disconnected
            || !self.waiters.is_empty()
            || self.full()
            || self.pending_since.is_some_and(|t| t.elapsed() >= flush);
        if due {
            self.pending_since = None;
            if !self.batch.is_empty() && self.floor.as_ref().is_some_and(|f| !f.room_for_activity())
            {
                self.counters
                    .shed
                    .fetch_add(self.batch.len() as u64, Ordering::Relaxed);
                self.batch.clear();
            }
            let folded = self.folder.fold(&mut self.batch);
            self.counters.folded.fetch_add(folded, Ordering::Relaxed);
            commit_pending(
                &mut self.conn,
                &self.counters,
                &mut self.batch,
                &mut self.decisions,
                &mut self.sink,
                &mut self.own_unblocks,
            );
        }
        if self.last_tick.elapsed() >= flush || disconnected {
            if let Some(s) = self.sink.as_mut() {
                // Windows close only up to the oldest event not yet handed over: after a
                // stall the batch holds events older than the sink's lag.
                let now = super::now_ms();
                s.tick(
                    self.batch
                        .iter()
                        .map(|e| e.t_ms)
                        .min()
                        .map_or(now, |t| t.min(now)),
                );
            }
            if let Some(hook) = self.unblock_hook.as_mut() {
                match db::unblocks_since(&self.conn, self.last_unblock) {
                    Ok(rows) => {
                        for (id, ip) in rows {
                            self.last_unblock = self.last_unblock.max(id);
                            // An unblock the firewall took and logged itself (a fleet's, or
                            // through its API) is a record, not a command: applied again
                            // now, it would lift a block decided since.
                            if let Some(i) = self.own_unblocks.iter().position(|&o| o == id) {
                                self.own_unblocks.swap_remove(i);
                                continue;
                            }
                            hook(ip);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read unblock commands"),
                }
            }
            self.last_tick = Instant::now();
        }
        if let Some(r) = self.retention {
            if self.last_prune.map_or(true, |t| t.elapsed() >= PRUNE_EVERY) {
                let full = prune(&self.conn, &self.counters, r);
                // A full step means more is waiting: take the next one at the next tick.
                self.last_prune = (!full).then(Instant::now);
            }
        }
        for w in self.waiters.drain(..) {
            let _ = w.send(());
        }
    }
}

/// The writer thread: waits for messages (at most until something is due), takes what is
/// queued, steps, and naps.
fn writer(mut w: Writer, rx: Receiver<Msg>) {
    loop {
        if let Some(left) = w.counters.stalled_for() {
            std::thread::sleep(left.min(Duration::from_millis(100)));
            continue;
        }
        let mut took = false;
        let disconnected = match rx.recv_timeout(w.wait()) {
            Ok(msg) => {
                took = true;
                w.take(msg);
                w.drain(&rx)
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        w.step(disconnected);
        if disconnected {
            return;
        }
        if took {
            std::thread::sleep(NAP.min(w.flush));
        }
    }
}

/// The writer and its channel in a simulation, shared by its task and
/// [`Recorder::flush`]; `None` once the last sender is gone.
type SimWriter = Arc<std::sync::Mutex<Option<(Writer, Receiver<Msg>)>>>;

/// One pass of a simulation's writer: take what is queued and step. False once finished.
/// Skips the pass (true) if the writer is busy further up this thread's stack.
fn sim_pass(shared: &SimWriter) -> bool {
    let Ok(mut slot) = shared.try_lock() else {
        return true;
    };
    let Some((w, rx)) = slot.as_mut() else {
        return false;
    };
    if w.counters.stalled_for().is_some() {
        return true;
    }
    let disconnected = w.drain(rx);
    w.step(disconnected);
    if disconnected {
        *slot = None;
    }
    !disconnected
}

/// The writer's task in a simulation: a pass every [`NAP`] of virtual time.
async fn sim_writer(shared: SimWriter) {
    while sim_pass(&shared) {
        tokio::time::sleep(NAP).await;
    }
}

/// One pruning step; true if it deleted a whole step's worth (more may be waiting).
fn prune(conn: &rusqlite::Connection, counters: &Counters, r: Retention) -> bool {
    let before_ms = r.max_age.map(|age| {
        super::now_ms().saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
    });
    match db::prune_step(conn, before_ms, r.max_bytes, PRUNE_STEP_ROWS) {
        Ok(n) => {
            counters.pruned.fetch_add(n, Ordering::Relaxed);
            n >= u64::from(PRUNE_STEP_ROWS)
        }
        Err(e) => {
            tracing::warn!(error = %e, "activity retention step failed");
            false
        }
    }
}

/// Commits the pending events in one transaction, hands them to the sink, and stores the
/// pending firewall decisions; the ids of the `unblock` rows among them go to
/// `own_unblocks`.
fn commit_pending(
    conn: &mut rusqlite::Connection,
    counters: &Counters,
    batch: &mut Vec<Event>,
    decisions: &mut Vec<DecisionRecord>,
    sink: &mut Option<Box<dyn WindowSink>>,
    own_unblocks: &mut Vec<i64>,
) {
    if !batch.is_empty() {
        let started = Instant::now();
        let inserted = db::insert(conn, batch);
        let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        counters
            .longest_commit_us
            .fetch_max(took, Ordering::Relaxed);
        match inserted {
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
            s.observe(batch);
        }
        batch.clear();
    }
    for d in decisions.drain(..) {
        match db::insert_decision(
            conn,
            d.t_ms,
            &d.source,
            d.action,
            d.duration_s,
            d.score,
            &d.reason,
        ) {
            Ok(()) if d.action == "unblock" => {
                // Rare (operators' actions); bounded all the same, oldest first out.
                if own_unblocks.len() >= 1024 {
                    own_unblocks.remove(0);
                }
                own_unblocks.push(conn.last_insert_rowid());
            }
            Ok(()) => {}
            Err(e) => tracing::error!(error = %e, "firewall decision not stored"),
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
    fn an_unblock_the_firewall_logged_is_not_applied_again_as_a_command(
    ) -> Result<(), ActivityError> {
        let dir = tempfile::tempdir().map_err(|e| ActivityError::Corrupt {
            id: 0,
            what: e.to_string(),
        })?;
        let rec = Recorder::start(dir.path(), 1024, Duration::from_millis(5), None)?;
        let applied = Arc::new(std::sync::Mutex::new(Vec::new()));
        let hook_applied = Arc::clone(&applied);
        rec.on_unblock(Box::new(move |ip| {
            hook_applied
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(ip);
        }));
        // The firewall lifted a block itself and logged it...
        rec.decision(DecisionRecord {
            t_ms: crate::activity::now_ms(),
            source: "127.0.9.1".into(),
            action: "unblock",
            duration_s: 0,
            score: 0.0,
            reason: "unblocked by an operator".into(),
        });
        // ...and an operator wrote one for another address.
        let conn = db::open(dir.path())?;
        std::thread::sleep(Duration::from_millis(100));
        db::insert_decision(&conn, 0, "127.0.9.2", "unblock", 0, 0.0, "cli")?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while applied.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(100));
        let applied = applied.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(applied, ["127.0.9.2".parse::<std::net::IpAddr>().unwrap()]);
        assert_eq!(db::decisions(&conn)?.len(), 2);
        Ok(())
    }

    #[test]
    fn events_arriving_apart_share_one_commit_per_interval() -> Result<(), ActivityError> {
        let dir = tempfile::tempdir().map_err(|e| ActivityError::Corrupt {
            id: 0,
            what: e.to_string(),
        })?;
        // Events trickling in, each on its own, well within one flush interval: they must be
        // committed together, not one transaction each (which rewrote the same pages into
        // the WAL for every event).
        let rec = Recorder::start(dir.path(), 1024, Duration::from_secs(5), None)?;
        for i in 0..40 {
            rec.record(event(i));
            std::thread::sleep(Duration::from_millis(2));
        }
        rec.flush();
        let stats = rec.stats();
        assert_eq!(stats.recorded, 40);
        assert_eq!(stats.batches, 1, "{stats:?}");
        Ok(())
    }

    #[test]
    fn retention_prunes_old_events_in_steps() -> Result<(), ActivityError> {
        let dir = tempfile::tempdir().map_err(|e| ActivityError::Corrupt {
            id: 0,
            what: e.to_string(),
        })?;
        let rec = Recorder::start(dir.path(), 100_000, Duration::from_millis(5), None)?;
        let now = crate::activity::now_ms();
        // 10,000 events two days old (more than two steps), then 100 from now.
        for i in 0..10_100u64 {
            let mut e = event(i);
            e.t_ms = if i < 10_000 {
                now - 2 * 86_400_000
            } else {
                now
            };
            rec.record(e);
        }
        rec.flush();
        rec.retain(Retention {
            max_age: Some(Duration::from_secs(86_400)),
            max_bytes: None,
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while rec.stats().pruned < 10_000 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            rec.flush();
        }
        assert_eq!(rec.stats().pruned, 10_000);
        rec.close();
        let conn = db::open(dir.path())?;
        assert_eq!(db::count(&conn)?, 100, "recent events are kept");
        Ok(())
    }

    #[test]
    fn a_size_cap_deletes_the_oldest_events() -> Result<(), ActivityError> {
        let dir = tempfile::tempdir().map_err(|e| ActivityError::Corrupt {
            id: 0,
            what: e.to_string(),
        })?;
        let mut conn = db::open(dir.path())?;
        let batch: Vec<Event> = (0..20_000).map(event).collect();
        db::insert(&mut conn, &batch)?;
        let full = db::bytes_in_use(&conn)?;
        let cap = full / 2;
        let mut steps = 0;
        while db::prune_step(&conn, None, Some(cap), 1000)? > 0 {
            steps += 1;
            assert!(steps < 100, "pruning must converge");
        }
        assert!(db::bytes_in_use(&conn)? <= cap);
        let left = db::count(&conn)?;
        assert!(left > 0 && left < 20_000, "{left}");
        // The newest events are the ones kept.
        let mut first = None;
        db::for_each_event(&conn, |e| {
            first.get_or_insert(e.t_ms);
        })?;
        assert_eq!(first, Some(event(20_000 - left).t_ms));
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

    /// A sink that keeps what it is told of shed events.
    struct Lost(Arc<std::sync::Mutex<Vec<(i64, i64)>>>);
    impl WindowSink for Lost {
        fn observe(&mut self, _: &[Event]) {}
        fn tick(&mut self, _: i64) {}
        fn lost(&mut self, from_ms: i64, to_ms: i64) {
            if let Ok(mut l) = self.0.lock() {
                l.push((from_ms, to_ms));
            }
        }
    }

    #[test]
    fn a_stalled_writer_never_makes_a_decision_wait_and_tells_the_sink_what_was_shed(
    ) -> Result<(), ActivityError> {
        let dir = tempfile::tempdir().map_err(|e| ActivityError::Corrupt {
            id: 0,
            what: e.to_string(),
        })?;
        let lost = Arc::new(std::sync::Mutex::new(Vec::new()));
        let rec = Recorder::start(
            dir.path(),
            4,
            Duration::from_millis(10),
            Some(Box::new(Lost(Arc::clone(&lost)))),
        )?;
        rec.stall(Duration::from_secs(3600));
        for i in 0..100 {
            rec.record(event(i));
        }
        // The channel is full and its writer stalled for an hour: the decisions must
        // return anyway (held), long before the stall would end.
        let (done_tx, done_rx) = mpsc::channel();
        let deciding = rec.clone();
        std::thread::spawn(move || {
            for i in 0..10 {
                deciding.decision(DecisionRecord {
                    t_ms: 1000 + i,
                    source: format!("127.0.0.{i}"),
                    action: "block",
                    duration_s: 60,
                    score: 1.0,
                    reason: "test".into(),
                });
            }
            let _ = done_tx.send(());
        });
        let returned = done_rx.recv_timeout(Duration::from_secs(60)).is_ok();
        rec.stall(Duration::ZERO);
        assert!(returned, "a decision waited for the stalled writer");
        rec.flush();
        let stats = rec.stats();
        assert_eq!(stats.recorded + stats.shed, 100);
        assert!(stats.shed > 0);
        let conn = db::open(dir.path())?;
        assert_eq!(db::decisions(&conn)?.len(), 10, "held decisions are stored");
        let told = lost.lock().map(|l| l.clone()).unwrap_or_default();
        // event(i) is stamped T0 + i; the first four filled the channel.
        assert_eq!(told.len(), 1, "{told:?}");
        assert!(
            told[0].0 >= event(4).t_ms && told[0].1 == event(99).t_ms,
            "{told:?}"
        );
        Ok(())
    }
}
