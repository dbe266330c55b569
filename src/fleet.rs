//! Fleet mode: servers that share one PostgreSQL database (`store.url`) share their
//! firewall's blocks too, so a source one server blocked is refused by every server.
//!
//! Each server runs one link thread. It writes every block its own firewall decides to the
//! `fleet_decisions` table (origin, source, action, absolute end, reason), and every
//! [`POLL`] it reads the rows added since it last looked and applies those of the other
//! servers: a block through [`Firewall::apply_peer_block`] (refused here until the same end,
//! escalation counted, open sessions in good standing spared), an operator's unblock
//! (`rampart firewall unblock` with `store.url` set) through [`Firewall::unblock`]. On
//! start it applies every block still in force. The allow list is each server's own
//! configuration and wins everywhere, as it does for a local decision.
//!
//! Evidence is shared the same way, so that each server's score for a source sums what
//! every server saw: each signal the firewall scores without deciding (and each it forgives,
//! as negative points) goes to the link, which sums them per source and signal and writes
//! one `evidence` row each per poll, in one statement. The other servers score a row's
//! points as their own signal would (decayed by the row's age, not shared again), so a
//! source that spreads its offences over several servers reaches the threshold as it would
//! on one. Evidence rows are read for `EVIDENCE_KEEP_MS` after they are written.
//!
//! Activity is shared as windows: every complete window a server's live detector closes
//! (one source, one window, the features of [`FEATURES`]) goes to the link through a bounded
//! queue ([`window_channel`]; a full queue sheds and counts) and is written to
//! `fleet_windows` once per poll, in one statement. Each server still records its own
//! events in its data directory; `rampart activity export --store-url` ([`export_windows`])
//! writes the fleet's windows as the same CSV that `activity export` writes from one
//! directory. Windows are kept for `activity.retain_days`.
//!
//! A block thus reaches the other servers within one poll and a round trip (well under a
//! second). While the database is down each server keeps its own blocks and goes on
//! deciding locally; its decisions wait in a bounded queue and are shared once the database
//! is back.
//!
//! Ends are absolute times (milliseconds since the Unix epoch, the deciding server's
//! clock): the servers' clocks should agree (NTP), or blocks end early or late by the skew.
//! Every minute each link deletes the rows that can no longer matter.
//!
//! Ids of a `bigserial` are handed out when a row is inserted, not when it commits, so a
//! row may appear below the highest id already read. Each poll therefore reads back
//! `OVERLAP` ids below it and skips the ones it has seen.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::Duration;

use postgres::{Client, NoTls};
use serde::Serialize;

use crate::activity::export::{self as activity_export, ExportError, ExportSummary};
use crate::activity::features::{FeatureRow, FEATURES, FEATURE_SCHEMA_VERSION};
use crate::detect::OnWindow;
use crate::firewall::{Firewall, SharedBlock, SharedEvidence, Signal};
use crate::guard::SourceKey;
use crate::store::StoreError;

/// How often each server reads the other servers' decisions.
pub const POLL: Duration = Duration::from_millis(200);

/// Ids below the highest seen that each poll reads again (see the module docs).
const OVERLAP: i64 = 256;

/// Blocks waiting to be written while the database is unreachable; more are dropped (and
/// counted): the other servers then judge those sources by what they see themselves.
const OUTBOX: usize = 4096;

/// How often each server deletes the decisions that can no longer matter.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The longest block, in milliseconds: an unblock older than this lifts nothing.
const MAX_BLOCK_MS: i64 = (crate::config::MAX_BLOCK_SECS * 1000) as i64;

/// The action column of an operator's unblock.
pub const UNBLOCK: &str = "unblock";
const BLOCK: &str = "block";
/// The action column of evidence: a signal's points (the reason column names the signal).
const EVIDENCE: &str = "evidence";

/// How long evidence rows stay readable: a server that starts (or reconnects) within this
/// scores what the others saw, decayed by its age.
const EVIDENCE_KEEP_MS: i64 = 60_000;

/// Windows waiting for the link: about a poll's worth of windows of 40 000 sources. More
/// are dropped (and counted) while the database is slow or down.
const WINDOW_QUEUE: usize = 8192;

/// Windows written in one statement at most; the rest wait for the next poll.
const WINDOWS_PER_WRITE: usize = 4096;

/// The sending end of the window queue, for the live detector
/// ([`LiveScorer::with_window_tap`](crate::detect::LiveScorer::with_window_tap)), and the
/// receiving end for [`start`].
pub fn window_channel() -> (OnWindow, WindowInbox) {
    let (tx, rx) = mpsc::sync_channel::<FeatureRow>(WINDOW_QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let shed = Arc::clone(&dropped);
    let tap: OnWindow = Box::new(move |row: &FeatureRow| {
        if tx.try_send(row.clone()).is_err() {
            shed.fetch_add(1, Ordering::Relaxed);
        }
    });
    (tap, WindowInbox { rx, dropped })
}

/// The link's end of the window queue ([`window_channel`]).
#[derive(Debug)]
pub struct WindowInbox {
    rx: Receiver<FeatureRow>,
    /// Windows the tap dropped because the queue was full.
    dropped: Arc<AtomicU64>,
}

/// What the fleet link has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FleetStats {
    /// This server's blocks written for the others.
    pub shared: u64,
    /// Other servers' blocks applied here.
    pub applied: u64,
    /// Operators' unblocks applied here.
    pub unblocked: u64,
    /// This server's blocks dropped because the outbox was full.
    pub dropped: u64,
    /// Polls that failed (the database unreachable, say).
    pub failures: u64,
    /// Evidence rows (one per source and signal per poll) written for the others.
    pub evidence_shared: u64,
    /// Other servers' evidence rows scored here.
    pub evidence_applied: u64,
    /// Signals not shared because the evidence queue was full.
    pub evidence_dropped: u64,
    /// Activity windows written to `fleet_windows`.
    pub windows_shared: u64,
    /// Activity windows not shared because the window queue was full.
    pub windows_dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    shared: AtomicU64,
    applied: AtomicU64,
    unblocked: AtomicU64,
    dropped: AtomicU64,
    failures: AtomicU64,
    evidence_shared: AtomicU64,
    evidence_applied: AtomicU64,
    evidence_dropped: AtomicU64,
    windows_shared: AtomicU64,
}

/// A running fleet link's counters.
#[derive(Debug, Clone)]
pub struct FleetLink {
    counters: Arc<Counters>,
    windows_dropped: Arc<AtomicU64>,
}

impl FleetLink {
    /// A snapshot of the counters.
    pub fn stats(&self) -> FleetStats {
        let c = &self.counters;
        FleetStats {
            shared: c.shared.load(Ordering::Relaxed),
            applied: c.applied.load(Ordering::Relaxed),
            unblocked: c.unblocked.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            evidence_shared: c.evidence_shared.load(Ordering::Relaxed),
            evidence_applied: c.evidence_applied.load(Ordering::Relaxed),
            evidence_dropped: c.evidence_dropped.load(Ordering::Relaxed),
            windows_shared: c.windows_shared.load(Ordering::Relaxed),
            windows_dropped: self.windows_dropped.load(Ordering::Relaxed),
        }
    }
}

/// Starts the link thread of `firewall` on the database at `url` (the store's, already
/// migrated), which also writes the windows `windows` receives and deletes shared windows
/// older than `retain` (kept for ever if `None`). It ends once the firewall is gone.
pub fn start(
    url: &str,
    firewall: &Arc<Firewall>,
    windows: Option<WindowInbox>,
    retain: Option<Duration>,
) -> Result<FleetLink, StoreError> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Database(format!("invalid store.url: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(2));
    }
    let (tx, rx) = mpsc::sync_channel(OUTBOX);
    firewall.share_blocks(tx);
    let (etx, erx) = mpsc::sync_channel(OUTBOX);
    firewall.share_evidence(etx);
    let counters = Arc::new(Counters::default());
    let (wrx, windows_dropped) = match windows {
        Some(inbox) => (Some(inbox.rx), inbox.dropped),
        None => (None, Arc::new(AtomicU64::new(0))),
    };
    let link = Link {
        wrx,
        windows: Vec::new(),
        retain_ms: retain.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        config,
        origin: format!("{:016x}", rand::random::<u64>()),
        firewall: Arc::downgrade(firewall),
        rx,
        erx,
        evidence: HashMap::new(),
        outbox: VecDeque::new(),
        seen: BTreeSet::new(),
        caught_up: false,
        counters: Arc::clone(&counters),
        warned: false,
        pruned_at: None,
    };
    std::thread::Builder::new()
        .name("rampart-fleet".into())
        .spawn(move || link.run())
        .map_err(StoreError::Io)?;
    Ok(FleetLink {
        counters,
        windows_dropped,
    })
}

/// Writes an operator's unblock of `source` for every server of the fleet.
pub fn unblock(url: &str, source: SourceKey) -> Result<(), StoreError> {
    let mut c = Client::connect(url, NoTls)?;
    c.execute(
        "INSERT INTO fleet_decisions (origin, source, action, until_ms, reason, created_ms)
         VALUES ('operator', $1, $2, 0, 'unblocked by an operator', $3)",
        &[&source.to_string(), &UNBLOCK, &crate::activity::now_ms()],
    )?;
    Ok(())
}

struct Link {
    config: postgres::Config,
    /// This server's name in the table: random, so that restarts and servers on one host
    /// never mistake each other's rows for their own.
    origin: String,
    firewall: Weak<Firewall>,
    rx: Receiver<SharedBlock>,
    /// This firewall's evidence, summed per source and signal until the next write.
    erx: Receiver<SharedEvidence>,
    evidence: HashMap<(SourceKey, Signal), f64>,
    /// The live detector's windows ([`window_channel`]), and those taken from it and not
    /// written yet (at most [`WINDOWS_PER_WRITE`]).
    wrx: Option<Receiver<FeatureRow>>,
    windows: Vec<FeatureRow>,
    /// Shared windows older than this many milliseconds are deleted.
    retain_ms: Option<i64>,
    outbox: VecDeque<SharedBlock>,
    /// Ids read, down to [`OVERLAP`] below the highest.
    seen: BTreeSet<i64>,
    caught_up: bool,
    counters: Arc<Counters>,
    /// A failure was logged and no success came since: log the next one at debug only.
    warned: bool,
    /// When this link last deleted the rows that can no longer matter.
    pruned_at: Option<std::time::Instant>,
}

impl Link {
    fn run(mut self) {
        let mut client: Option<Client> = None;
        loop {
            match self.rx.recv_timeout(POLL) {
                Ok(b) => self.queue(b),
                Err(RecvTimeoutError::Timeout) => {}
                // The firewall, which holds the sender, is gone: the server stopped.
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while let Ok(b) = self.rx.try_recv() {
                self.queue(b);
            }
            while let Ok(e) = self.erx.try_recv() {
                self.gather(e);
            }
            if let Some(wrx) = &self.wrx {
                // The rest wait in the queue (which sheds when full) for the next poll.
                while self.windows.len() < WINDOWS_PER_WRITE {
                    match wrx.try_recv() {
                        Ok(row) => self.windows.push(row),
                        Err(_) => break,
                    }
                }
            }
            let Some(firewall) = self.firewall.upgrade() else {
                return;
            };
            let connected = match client.take() {
                Some(c) if !c.is_closed() => Ok(c),
                _ => self.config.connect(NoTls),
            };
            let result = connected.and_then(|mut c| {
                let r = self.sync(&mut c, &firewall);
                client = Some(c);
                r
            });
            match result {
                Ok(()) => self.warned = false,
                Err(e) => {
                    client = None;
                    self.counters.failures.fetch_add(1, Ordering::Relaxed);
                    if self.warned {
                        tracing::debug!(error = %e, "fleet link: still cannot sync decisions");
                    } else {
                        tracing::warn!(error = %e, "fleet link: cannot sync decisions; blocks stay local until the database is back");
                        self.warned = true;
                    }
                }
            }
        }
    }

    fn queue(&mut self, b: SharedBlock) {
        if self.outbox.len() >= OUTBOX {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            self.outbox.push_back(b);
        }
    }

    /// Adds `e` to the evidence waiting to be written; a source and signal not waiting yet
    /// is dropped (and counted) when [`OUTBOX`] are.
    fn gather(&mut self, e: SharedEvidence) {
        let full = self.evidence.len() >= OUTBOX;
        match self.evidence.get_mut(&(e.source, e.signal)) {
            Some(points) => *points += e.points,
            None if full => {
                self.counters
                    .evidence_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.evidence.insert((e.source, e.signal), e.points);
            }
        }
    }

    /// Writes the evidence gathered since the last write, one row per source and signal,
    /// in one statement.
    fn write_evidence(&mut self, c: &mut Client) -> Result<(), postgres::Error> {
        let rows: Vec<((SourceKey, Signal), f64)> = self
            .evidence
            .iter()
            .filter(|(_, p)| p.is_finite() && **p != 0.0)
            .map(|(k, p)| (*k, *p))
            .collect();
        if !rows.is_empty() {
            let now = crate::activity::now_ms();
            let sources: Vec<String> = rows.iter().map(|((s, _), _)| s.to_string()).collect();
            let signals: Vec<String> = rows
                .iter()
                .map(|((_, g), _)| g.as_str().to_string())
                .collect();
            let points: Vec<f64> = rows.iter().map(|(_, p)| *p).collect();
            c.execute(
                "INSERT INTO fleet_decisions
                    (origin, source, action, until_ms, reason, created_ms, points)
                 SELECT $1, t.source, $2, $3, t.signal, $4, t.points
                 FROM UNNEST($5::TEXT[], $6::TEXT[], $7::FLOAT8[]) AS t(source, signal, points)",
                &[
                    &self.origin,
                    &EVIDENCE,
                    &now.saturating_add(EVIDENCE_KEEP_MS),
                    &now,
                    &sources,
                    &signals,
                    &points,
                ],
            )?;
            self.counters
                .evidence_shared
                .fetch_add(rows.len() as u64, Ordering::Relaxed);
        }
        self.evidence.clear();
        Ok(())
    }

    /// Writes the windows taken from the queue, in one statement: the features of every
    /// row flattened into one array, each row taking its slice.
    fn write_windows(&mut self, c: &mut Client) -> Result<(), postgres::Error> {
        if self.windows.is_empty() {
            return Ok(());
        }
        let width = FEATURES.len() as i64;
        let mut sources = Vec::with_capacity(self.windows.len());
        let mut starts = Vec::with_capacity(self.windows.len());
        let mut lengths = Vec::with_capacity(self.windows.len());
        let mut values = Vec::with_capacity(self.windows.len() * FEATURES.len());
        for row in &self.windows {
            sources.push(row.source.to_string());
            starts.push(row.window_start_ms);
            lengths.push(i64::try_from(row.window_ms).unwrap_or(i64::MAX));
            values.extend_from_slice(&row.values);
        }
        c.execute(
            "INSERT INTO fleet_windows
                (origin, source, window_start_ms, window_ms, feature_schema, features)
             SELECT $1, w.source, w.start_ms, w.window_ms, $2,
                    ($3::FLOAT8[])[((w.i - 1) * $4 + 1)::INT : (w.i * $4)::INT]
             FROM UNNEST($5::TEXT[], $6::BIGINT[], $7::BIGINT[])
                  WITH ORDINALITY AS w(source, start_ms, window_ms, i)",
            &[
                &self.origin,
                &(FEATURE_SCHEMA_VERSION as i32),
                &values,
                &width,
                &sources,
                &starts,
                &lengths,
            ],
        )?;
        self.counters
            .windows_shared
            .fetch_add(self.windows.len() as u64, Ordering::Relaxed);
        self.windows.clear();
        Ok(())
    }

    /// Writes the outbox, then applies what the other servers decided since the last poll.
    fn sync(&mut self, c: &mut Client, firewall: &Firewall) -> Result<(), postgres::Error> {
        while let Some(b) = self.outbox.front() {
            let until = crate::activity::now_ms().saturating_add(
                i64::try_from(b.duration_s.saturating_mul(1000)).unwrap_or(i64::MAX),
            );
            c.execute(
                "INSERT INTO fleet_decisions (origin, source, action, until_ms, reason, created_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &self.origin,
                    &b.source.to_string(),
                    &BLOCK,
                    &until,
                    &b.reason,
                    &crate::activity::now_ms(),
                ],
            )?;
            self.outbox.pop_front();
            self.counters.shared.fetch_add(1, Ordering::Relaxed);
        }
        self.write_evidence(c)?;
        self.write_windows(c)?;
        let now = crate::activity::now_ms();
        let rows = if self.caught_up {
            let from = self
                .seen
                .last()
                .copied()
                .unwrap_or(0)
                .saturating_sub(OVERLAP);
            c.query(
                "SELECT id, origin, source, action, until_ms, reason, created_ms, points
                 FROM fleet_decisions WHERE id > $1 ORDER BY id",
                &[&from],
            )?
        } else {
            // First look: what is still in force, and the unblocks that may lift it (none
            // older than the oldest block in force can).
            c.query(
                "SELECT id, origin, source, action, until_ms, reason, created_ms, points
                 FROM fleet_decisions
                 WHERE until_ms > $1
                    OR (action = $2 AND created_ms >= (SELECT min(created_ms)
                        FROM fleet_decisions WHERE until_ms > $1))
                 ORDER BY id",
                &[&now, &UNBLOCK],
            )?
        };
        for row in rows {
            let id: i64 = row.get(0);
            if !self.seen.insert(id) {
                continue;
            }
            let origin: String = row.get(1);
            if origin == self.origin {
                continue;
            }
            let source: String = row.get(2);
            let Ok(source) = source.parse::<SourceKey>() else {
                tracing::warn!(%source, "fleet link: skipping a decision for an unreadable source");
                continue;
            };
            let action: String = row.get(3);
            let until: i64 = row.get(4);
            let reason: String = row.get(5);
            let ip = source.net().network();
            if action == EVIDENCE {
                let created: i64 = row.get(6);
                let points: f64 = row.get(7);
                let Some(signal) = Signal::ALL.iter().copied().find(|s| s.as_str() == reason)
                else {
                    continue;
                };
                let age = Duration::from_millis(now.saturating_sub(created).max(0).unsigned_abs());
                firewall.apply_peer_evidence(source, signal, points, age);
                self.counters
                    .evidence_applied
                    .fetch_add(1, Ordering::Relaxed);
            } else if action == UNBLOCK {
                // Only a block in force is lifted (and logged): on the first look every
                // unblock ever written is read.
                if firewall.guard().is_blocked(ip) && firewall.unblock(ip) {
                    self.counters.unblocked.fetch_add(1, Ordering::Relaxed);
                }
            } else if until > now && !firewall.guard().is_blocked(ip) {
                // A source this server blocked already keeps its own block: the same
                // offence seen twice is not escalated twice.
                let left = Duration::from_millis(until.saturating_sub(now).unsigned_abs());
                if firewall.apply_peer_block(source, left, &reason) {
                    self.counters.applied.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if !matches!(self.pruned_at, Some(t) if t.elapsed() < PRUNE_EVERY) {
            // Rows that can no longer matter: blocks that ended, and unblocks older than the
            // longest block (every block they could lift has ended).
            c.execute(
                "DELETE FROM fleet_decisions
                 WHERE (action <> $1 AND until_ms < $2) OR (action = $3 AND created_ms < $4)",
                &[
                    &UNBLOCK,
                    &now.saturating_sub(PRUNE_EVERY.as_millis() as i64),
                    &UNBLOCK,
                    &now.saturating_sub(MAX_BLOCK_MS),
                ],
            )?;
            if let Some(keep) = self.retain_ms {
                c.execute(
                    "DELETE FROM fleet_windows WHERE window_start_ms < $1",
                    &[&now.saturating_sub(keep)],
                )?;
            }
            self.pruned_at = Some(std::time::Instant::now());
        }
        self.caught_up = true;
        if let Some(&top) = self.seen.last() {
            let keep = top.saturating_sub(OVERLAP);
            self.seen = self.seen.split_off(&keep);
        }
        Ok(())
    }
}

/// What [`export_windows`] wrote, and what it left out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetExport {
    /// The CSV written (its `events` counts the windows read).
    #[serde(flatten)]
    pub summary: ExportSummary,
    /// Servers whose windows are among the rows.
    pub servers: u64,
    /// Windows of another length than the one asked for, left out.
    pub other_window: u64,
    /// Windows of another feature schema (a server of another version), left out.
    pub other_schema: u64,
}

/// Writes every window the servers of the fleet at `url` shared (`fleet_windows`) whose
/// length is `window` to `out`, as the CSV `rampart activity export` writes: ordered by
/// window start, then source, then server, one row per server that saw the source in that
/// window, every source `benign`. Rows are streamed, never all in memory.
pub fn export_windows(url: &str, out: &Path, window: Duration) -> Result<FleetExport, ExportError> {
    use postgres::fallible_iterator::FallibleIterator;
    // postgres::Error's own text stops at "error connecting to server": add its cause.
    let db = |e: postgres::Error| {
        ExportError::Fleet(match std::error::Error::source(&e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        })
    };
    let mut c = Client::connect(url, NoTls).map_err(db)?;
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    let schema = FEATURE_SCHEMA_VERSION as i32;
    let counts = c
        .query_one(
            "SELECT count(DISTINCT origin) FILTER (WHERE window_ms = $1 AND feature_schema = $2),
                    count(*) FILTER (WHERE window_ms <> $1),
                    count(*) FILTER (WHERE window_ms = $1 AND feature_schema <> $2)
             FROM fleet_windows",
            &[&window_ms, &schema],
        )
        .map_err(db)?;
    let (servers, other_window, other_schema): (i64, i64, i64) =
        (counts.get(0), counts.get(1), counts.get(2));
    let summary = activity_export::export_rows(out, window, |emit| {
        let mut rows = c
            .query_raw(
                "SELECT source, window_start_ms, features FROM fleet_windows
                 WHERE window_ms = $1 AND feature_schema = $2
                 ORDER BY window_start_ms, source, origin, id",
                [&window_ms as &(dyn postgres::types::ToSql + Sync), &schema],
            )
            .map_err(db)?;
        let mut batch = Vec::with_capacity(1024);
        let mut read = 0u64;
        while let Some(row) = rows.next().map_err(db)? {
            read += 1;
            let source: String = row.get(0);
            let source = source.parse::<SourceKey>().map_err(|_| {
                ExportError::Fleet(format!("a shared window names {source:?}, not a source"))
            })?;
            let values: Vec<f64> = row.get(2);
            if values.len() != FEATURES.len() {
                return Err(ExportError::Fleet(format!(
                    "a shared window of schema {schema} holds {} features, not {}",
                    values.len(),
                    FEATURES.len()
                )));
            }
            batch.push(FeatureRow {
                source,
                window_start_ms: row.get(1),
                window_ms: window_ms.unsigned_abs(),
                values,
            });
            if batch.len() == batch.capacity() {
                emit(&batch)?;
                batch.clear();
            }
        }
        emit(&batch)?;
        Ok(read)
    })?;
    Ok(FleetExport {
        summary,
        servers: servers.unsigned_abs(),
        other_window: other_window.unsigned_abs(),
        other_schema: other_schema.unsigned_abs(),
    })
}
