//! Deliveries and group commit: each caller queues its checked [`Delivery`] values, and
//! whichever caller holds the writer connection next runs every queued delivery in one
//! IMMEDIATE transaction, in queue order, and commits once (see [`SqliteStore`]).
//!
//! Two kinds of caller queue deliveries: a thread ([`SqliteStore::group_commit`], behind
//! the synchronous [`Store::deliver`](crate::store::Store::deliver)) waits on its own channel
//! and leads batches itself while any of its results is missing; an async task
//! ([`SqliteStore::queue_named`]) leaves its deliveries with a [`Gather`] and awaits it, and a
//! single leader on the blocking pool ([`SqliteStore::lead`]) runs batches until the queue
//! is empty. A batch answers each delivery whichever kind queued it.
//!
//! Inside a batch, a [`Ledger`] reads each sender's usage once and writes it back once, and
//! every delivery either succeeds, or fails and leaves no trace; one whose writes cannot be
//! undone makes the whole batch roll back ([`Outcome::MustRollBack`]).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{check_blob, now_ms, size_to_sql, sql_to_u64, SqliteStore};
use crate::store::{BlobRef, ItemId, ItemKind, NewItem, StoreError, UserId};

/// Where a queued delivery's result goes: its place in its caller's list, and how that
/// caller waits.
pub(super) enum ResultTo {
    /// A thread in [`SqliteStore::group_commit`], on its channel.
    Thread(usize, SyncSender<(usize, Result<ItemId, StoreError>)>),
    /// An async task, through the [`Gather`] it awaits.
    Task(usize, Arc<Gather>),
}

impl ResultTo {
    fn send(self, result: Result<ItemId, StoreError>) {
        match self {
            ResultTo::Thread(i, to) => {
                let _ = to.send((i, result));
            }
            ResultTo::Task(i, gather) => gather.put(i, result),
        }
    }
}

/// One async caller's deliveries in flight: their results as they come, sent on together
/// once the last one is in. Only queued deliveries hold it, so if a batch is dropped
/// unanswered (its leader panicked) the sender goes with the last of them and the caller
/// learns its results are lost instead of waiting for ever.
pub(super) struct Gather {
    state: Mutex<GatherState>,
}

/// Every result of one caller's deliveries, `None` for one not (yet) in.
type Results = Vec<Option<Result<ItemId, StoreError>>>;

struct GatherState {
    results: Results,
    missing: usize,
    to: Option<tokio::sync::oneshot::Sender<Results>>,
}

/// What an async caller awaits: every result, `None` for one that never came.
pub(super) type Gathered = tokio::sync::oneshot::Receiver<Results>;

impl Gather {
    /// A gathering of `n` results, and the receiver its caller awaits.
    fn new(n: usize) -> (Arc<Gather>, Gathered) {
        let (to, rx) = tokio::sync::oneshot::channel();
        let gather = Gather {
            state: Mutex::new(GatherState {
                results: (0..n).map(|_| None).collect(),
                missing: n,
                to: Some(to),
            }),
        };
        (Arc::new(gather), rx)
    }

    fn put(&self, i: usize, result: Result<ItemId, StoreError>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = state.results.get_mut(i) {
            if slot.replace(result).is_none() {
                state.missing -= 1;
            }
        }
        if state.missing == 0 {
            if let Some(to) = state.to.take() {
                let _ = to.send(std::mem::take(&mut state.results));
            }
        }
    }
}

/// What a delivery (or any job run in a savepoint) left in the batch transaction.
#[derive(Debug)]
enum Outcome<T> {
    /// It succeeded, or it failed and left no trace: the batch goes on and may commit.
    Sound(Result<T, StoreError>),
    /// It failed and what it wrote could not be undone (or SQLite ended the transaction):
    /// the batch must roll back rather than commit writes its caller was told failed.
    MustRollBack(StoreError),
}

/// Why a batch did not commit, kept so that each of its deliveries gets its own error.
#[derive(Clone)]
enum BatchFailure {
    /// The disk is full: each delivery is told [`StoreError::StorageFull`].
    Full,
    /// Anything else, described.
    Other(String),
}

impl BatchFailure {
    fn of(e: &rusqlite::Error) -> BatchFailure {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            BatchFailure::Full
        } else {
            BatchFailure::Other(e.to_string())
        }
    }

    /// A delivery could not be undone, so the batch was rolled back.
    fn rolled_back() -> BatchFailure {
        BatchFailure::Other("a delivery could not be undone".into())
    }

    fn error(&self) -> StoreError {
        match self {
            BatchFailure::Full => StoreError::StorageFull,
            BatchFailure::Other(why) => StoreError::NotCommitted(why.clone()),
        }
    }
}

impl SqliteStore {
    /// Queues `deliveries` together (so they run in this order, in the same batch) for the
    /// next group commit and waits for all their results, leading batches itself while any
    /// is missing and nobody else is leading.
    pub(super) fn group_commit(
        &self,
        deliveries: Vec<Delivery>,
    ) -> Vec<Result<ItemId, StoreError>> {
        let mut answers = Answers::queue(&self.pending, deliveries);
        while answers.awaited() {
            let mut conn = self.write();
            // A leader may have run our deliveries while we waited for the connection.
            if !answers.awaited() {
                break;
            }
            let batch =
                std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
            if batch.is_empty() {
                // Our deliveries are in a batch whose results are being handed out right now.
                drop(conn);
                std::thread::yield_now();
                continue;
            }
            self.run_queued(&mut conn, batch);
        }
        answers.into_results()
    }

    /// Queues `deliveries` together for the next group commit and returns what their caller
    /// awaits; starts a leader if none is running. Never blocks on the database.
    pub(super) fn queue_named(self: &Arc<Self>, deliveries: Vec<Delivery>) -> Gathered {
        let (gather, gathered) = Gather::new(deliveries.len());
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            for (i, delivery) in deliveries.into_iter().enumerate() {
                pending.push((delivery, ResultTo::Task(i, Arc::clone(&gather))));
            }
        }
        drop(gather);
        if !self.leading.swap(true, Ordering::SeqCst) {
            let leader = Leader {
                store: Arc::clone(self),
                stepped_down: false,
            };
            // In a simulation the caller leads at once, on the simulation's thread.
            match tokio::runtime::Handle::try_current() {
                _ if crate::sim::active() => leader.lead(),
                Ok(rt) => drop(rt.spawn_blocking(move || leader.lead())),
                Err(_) => drop(std::thread::spawn(move || leader.lead())),
            }
        }
        gathered
    }
}

/// The leader of async callers' batches, while it runs. If it never runs (its runtime shut
/// down first) or panics, dropping it steps it down, so the next delivery starts another
/// leader instead of waiting for one that is gone; that leader runs what is still queued.
struct Leader {
    store: Arc<SqliteStore>,
    stepped_down: bool,
}

impl Drop for Leader {
    fn drop(&mut self) {
        if !self.stepped_down {
            self.store.leading.store(false, Ordering::SeqCst);
        }
    }
}

impl Leader {
    /// Runs batches until the queue is empty, taking the writer connection for one batch at
    /// a time so other writers get their turn between them; then steps down. A delivery
    /// queued just as it stepped down found a leader still in place and started none, so it
    /// looks once more and leads again if the queue is not empty.
    fn lead(mut self) {
        let store = Arc::clone(&self.store);
        loop {
            loop {
                let mut conn = store.write();
                let batch = std::mem::take(
                    &mut *store.pending.lock().unwrap_or_else(PoisonError::into_inner),
                );
                if batch.is_empty() {
                    break;
                }
                store.run_queued(&mut conn, batch);
            }
            store.leading.store(false, Ordering::SeqCst);
            let empty = store
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty();
            if empty || store.leading.swap(true, Ordering::SeqCst) {
                self.stepped_down = true;
                return;
            }
        }
    }
}

impl SqliteStore {
    /// Runs one batch, unless the disk is below the free-space floor: then every delivery
    /// in it is refused with [`StoreError::StorageFull`] (a caller that checked before it
    /// queued may have been overtaken by the disk filling).
    fn run_queued(&self, conn: &mut Connection, batch: Vec<(Delivery, ResultTo)>) {
        if !self.has_room() {
            for (_, to) in batch {
                to.send(Err(StoreError::StorageFull));
            }
            return;
        }
        run_batch(conn, batch);
    }
}

/// One caller's deliveries in flight: the results received so far, in the caller's order.
struct Answers {
    rx: Receiver<(usize, Result<ItemId, StoreError>)>,
    results: Vec<Option<Result<ItemId, StoreError>>>,
    missing: usize,
    /// Every sender is gone: a result still missing now never comes (the batch holding it
    /// was dropped unanswered, as when its leader panicked).
    orphaned: bool,
}

impl Answers {
    /// Puts `deliveries` on the queue, one after another, and returns their answers to be.
    fn queue(pending: &Mutex<Vec<(Delivery, ResultTo)>>, deliveries: Vec<Delivery>) -> Answers {
        let n = deliveries.len();
        let (tx, rx) = std::sync::mpsc::sync_channel(n);
        {
            let mut pending = pending.lock().unwrap_or_else(PoisonError::into_inner);
            for (i, delivery) in deliveries.into_iter().enumerate() {
                pending.push((delivery, ResultTo::Thread(i, tx.clone())));
            }
        }
        Answers {
            rx,
            results: (0..n).map(|_| None).collect(),
            missing: n,
            orphaned: false,
        }
    }

    /// Takes every result that has arrived; whether any is still to come.
    fn awaited(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok((i, r)) => {
                    if let Some(slot) = self.results.get_mut(i) {
                        if slot.replace(r).is_none() {
                            self.missing -= 1;
                        }
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.orphaned = true;
                    break;
                }
            }
        }
        self.missing > 0 && !self.orphaned
    }

    /// The results in the caller's order; one that never came is [`StoreError::ResultLost`].
    fn into_results(self) -> Vec<Result<ItemId, StoreError>> {
        self.results
            .into_iter()
            .map(|r| r.unwrap_or(Err(StoreError::ResultLost)))
            .collect()
    }
}

/// One delivery, checked as far as it can be without the database, waiting for a batch.
pub(super) struct Delivery {
    from: UserId,
    to: Recipient,
    kind: ItemKind,
    /// The content size, stored in `items.size`.
    size: u64,
    /// What the item costs against the quota ([`NewItem::charge`]).
    requested: u64,
    title: String,
    body: String,
    blobs: Vec<BlobRef>,
    quota: u64,
}

/// Whom a delivery is for: a user id the caller already looked up, or a name the batch looks
/// up (an async caller has no database connection of its own to ask).
pub(super) enum Recipient {
    /// A user id, checked to exist in the batch.
    Id(UserId),
    /// A user name; [`StoreError::UnknownUser`] if no user has it.
    Name(String),
}

impl Delivery {
    /// Splits `item` into its columns and checks its blob references.
    pub(super) fn new(
        from: UserId,
        to: Recipient,
        item: NewItem,
        quota: u64,
    ) -> Result<Delivery, StoreError> {
        let kind = item.kind();
        let size = item.size();
        let requested = item.charge();
        let (title, body, blobs) = item.into_columns();
        for blob in &blobs {
            check_blob(blob)?;
        }
        Ok(Delivery {
            from,
            to,
            kind,
            size,
            requested,
            title,
            body,
            blobs,
            quota,
        })
    }

    /// Inserts the item for `to` and its blob rows; returns the item's id.
    fn insert(&self, tx: &Connection, to: UserId) -> Result<ItemId, StoreError> {
        // The charge must be storable too: it is added to the sender's usage.
        size_to_sql(self.requested)?;
        let size = size_to_sql(self.size)?;
        tx.prepare_cached(
            "INSERT INTO items (owner, sender, kind, size, received_at_ms, title, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            to,
            self.from,
            self.kind as u8,
            size,
            now_ms(),
            self.title,
            self.body
        ])?;
        let item_id = tx.last_insert_rowid();
        for (idx, blob) in (0i64..).zip(&self.blobs) {
            insert_blob(tx, item_id, idx, blob)?;
        }
        sql_to_u64(item_id, "item id")
    }
}

fn insert_blob(tx: &Connection, item_id: i64, idx: i64, blob: &BlobRef) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO item_blobs (item_id, idx, blob_id, name, size, digest)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        item_id,
        idx,
        blob.blob_id,
        blob.name,
        size_to_sql(blob.size)?,
        &blob.digest[..],
    ])?;
    Ok(())
}

/// What a batch has learnt from the database so far: each sender's usage (as the batch's
/// deliveries have charged it) and which recipients exist. Usage is read once per sender and
/// written back once, before the commit, so a batch of N messages from one sender costs N
/// inserts, not N reads, inserts and updates. A batch can hold deliveries from as many
/// senders as there are connections, hence maps rather than lists.
#[derive(Default)]
struct Ledger {
    /// Sender, and its usage as read and as charged since.
    usage: Usages,
    /// Recipient, and whether it exists.
    users: Recipients,
}

/// Each sender's usage within a batch.
#[derive(Default)]
struct Usages(HashMap<UserId, Usage>);

/// One sender's usage within a batch.
#[derive(Clone, Copy)]
struct Usage {
    read: u64,
    now: u64,
}

/// Which recipients exist, and which names are whose, as far as a batch has asked.
#[derive(Default)]
struct Recipients {
    ids: HashMap<UserId, bool>,
    names: HashMap<String, Option<UserId>>,
}

impl Usages {
    /// `user`'s usage as charged so far in this batch, read from the database the first
    /// time; a charge is recorded by setting its `now`.
    fn of(&mut self, tx: &Connection, user: UserId) -> Result<&mut Usage, StoreError> {
        let slot = match self.0.entry(user) {
            Entry::Occupied(known) => return Ok(known.into_mut()),
            Entry::Vacant(slot) => slot,
        };
        let used: Option<i64> = tx
            .prepare_cached("SELECT usage_bytes FROM users WHERE id = ?1")?
            .query_row(params![user], |row| row.get(0))
            .optional()?;
        let used = match used {
            Some(used) => sql_to_u64(used, "usage")?,
            None => return Err(StoreError::UnknownUserId(user)),
        };
        Ok(slot.insert(Usage {
            read: used,
            now: used,
        }))
    }

    /// Writes every changed usage back.
    fn write_back(&self, tx: &Connection) -> Result<(), StoreError> {
        for (&user, u) in self.0.iter().filter(|(_, u)| u.now != u.read) {
            tx.prepare_cached("UPDATE users SET usage_bytes = ?2 WHERE id = ?1")?
                .execute(params![user, size_to_sql(u.now)?])?;
        }
        Ok(())
    }
}

impl Recipients {
    /// Whether `user` exists, asked of the database the first time.
    fn exists(&mut self, tx: &Connection, user: UserId) -> Result<bool, StoreError> {
        if let Some(&known) = self.ids.get(&user) {
            return Ok(known);
        }
        let known = tx
            .prepare_cached("SELECT 1 FROM users WHERE id = ?1")?
            .exists(params![user])?;
        self.ids.insert(user, known);
        Ok(known)
    }

    /// The id of the user named `name`, if any, asked of the database the first time.
    fn named(&mut self, tx: &Connection, name: &str) -> Result<Option<UserId>, StoreError> {
        if let Some(&known) = self.names.get(name) {
            return Ok(known);
        }
        let id = tx
            .prepare_cached("SELECT id FROM users WHERE name = ?1")?
            .query_row(params![name], |row| row.get(0))
            .optional()?;
        self.names.insert(name.to_owned(), id);
        Ok(id)
    }

    /// The recipient's id, checked to exist.
    fn resolve(&mut self, tx: &Connection, to: &Recipient) -> Result<UserId, StoreError> {
        match to {
            Recipient::Id(id) if self.exists(tx, *id)? => Ok(*id),
            Recipient::Id(id) => Err(StoreError::UnknownUserId(*id)),
            Recipient::Name(name) => self
                .named(tx, name)?
                .ok_or_else(|| StoreError::UnknownUser(name.clone())),
        }
    }
}

/// The sender's quota check (the batch transaction is IMMEDIATE, so it holds the write lock
/// before any quota is read and no other writer can charge the same sender between check and
/// insert) and the recipient check. Returns the recipient, the sender's usage, to be
/// charged, and what it becomes with this delivery.
fn check<'l>(
    tx: &Connection,
    ledger: &'l mut Ledger,
    d: &Delivery,
) -> Result<(UserId, &'l mut Usage, u64), StoreError> {
    let usage = ledger.usage.of(tx, d.from)?;
    let to = ledger.users.resolve(tx, &d.to)?;
    let used = usage.now;
    let total = used
        .checked_add(d.requested)
        .filter(|&total| total <= d.quota)
        .ok_or(StoreError::QuotaExceeded {
            used,
            requested: d.requested,
            quota: d.quota,
        })?;
    Ok((to, usage, total))
}

/// Runs one delivery inside the batch transaction: [`check`], the insert, then the charge.
/// A refused or failed delivery leaves no trace, or says it could not undo its writes
/// ([`Outcome::MustRollBack`]).
fn run_delivery(tx: &Connection, ledger: &mut Ledger, d: &Delivery) -> Outcome<ItemId> {
    let (to, usage, new_usage) = match check(tx, ledger, d) {
        Ok(checked) => checked,
        Err(e) => return Outcome::Sound(Err(e)),
    };
    let inserted = if d.blobs.is_empty() {
        // One statement: SQLite undoes a statement that fails a constraint by itself. Any
        // other failure may have ended the transaction or left it in doubt.
        match d.insert(tx, to) {
            Ok(id) => Outcome::Sound(Ok(id)),
            Err(e) => {
                let undone = matches!(&e, StoreError::Sqlite(s)
                    if s.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation));
                if undone {
                    Outcome::Sound(Err(e))
                } else {
                    Outcome::MustRollBack(e)
                }
            }
        }
    } else {
        // Several rows: a savepoint undoes them together.
        in_savepoint(tx, |tx| d.insert(tx, to))
    };
    if matches!(inserted, Outcome::Sound(Ok(_))) {
        usage.now = new_usage;
    }
    inserted
}

/// Runs `job` in a savepoint: released if it succeeds, rolled back if it fails, so a failed
/// job leaves no trace in the batch. The savepoint statements are cached (rusqlite's
/// `Savepoint` parses its SQL on every use, which was a measurable share of each delivery).
/// [`Outcome::MustRollBack`] if the savepoint could not be closed.
fn in_savepoint<T>(
    conn: &Connection,
    job: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Outcome<T> {
    let run = |sql: &str| {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(|_| ())
    };
    if let Err(e) = run("SAVEPOINT delivery") {
        return Outcome::Sound(Err(e.into()));
    }
    let failed = match job(conn) {
        Ok(v) => match run("RELEASE delivery") {
            Ok(()) => return Outcome::Sound(Ok(v)),
            Err(e) => StoreError::from(e),
        },
        Err(e) => e,
    };
    // The job failed, or its savepoint could not be released: undo its writes.
    match run("ROLLBACK TO delivery").and_then(|()| run("RELEASE delivery")) {
        Ok(()) => Outcome::Sound(Err(failed)),
        Err(_) => Outcome::MustRollBack(failed),
    }
}

/// Runs queued deliveries in one transaction, in order, and commits once; then tells every
/// caller its delivery's fate.
///
/// Once a delivery must roll back (a failure it could not undo, or SQLite ended the
/// transaction under us), no further delivery runs, since it would run outside any
/// transaction, and the batch rolls back: every delivery in it is answered with an error.
pub(super) fn run_batch(conn: &mut Connection, batch: Vec<(Delivery, ResultTo)>) {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a batch transaction");
            let failure = BatchFailure::of(&e);
            for (_, to) in batch {
                to.send(Err(failure.error()));
            }
            return;
        }
    };
    let mut ledger = Ledger::default();
    let mut must_roll_back = false;
    let mut results = Vec::with_capacity(batch.len());
    for (delivery, _) in &batch {
        if must_roll_back {
            results.push(Err(BatchFailure::rolled_back().error()));
            continue;
        }
        let result = match run_delivery(&tx, &mut ledger, delivery) {
            Outcome::Sound(result) => result,
            Outcome::MustRollBack(e) => {
                must_roll_back = true;
                Err(e)
            }
        };
        must_roll_back = must_roll_back || tx.is_autocommit();
        results.push(result);
    }
    must_roll_back = must_roll_back || ledger.usage.write_back(&tx).is_err() || tx.is_autocommit();
    // With synchronous=FULL the WAL is fsynced when commit returns. A transaction that must
    // roll back does so when dropped.
    let committed = if must_roll_back {
        tracing::error!("a delivery could not be undone; the whole batch was rolled back");
        Err(BatchFailure::rolled_back())
    } else {
        tx.commit().map_err(|e| {
            tracing::warn!(error = %e, "a delivery batch did not commit");
            BatchFailure::of(&e)
        })
    };
    for ((_, to), result) in batch.into_iter().zip(results) {
        let result = match (result, &committed) {
            (Ok(_), Err(failure)) => Err(failure.error()),
            (other, _) => other,
        };
        to.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::tests::{
        assert_usage_consistent, blob, message, store, two_users, TestResult, BIG, O,
    };
    use crate::store::{Blobs, Store};

    #[test]
    fn disk_full_is_storage_full_not_corruption() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        assert!(matches!(
            BatchFailure::of(&full).error(),
            StoreError::StorageFull
        ));
        assert!(matches!(StoreError::from(full), StoreError::StorageFull));
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
            None,
        );
        assert!(matches!(
            BatchFailure::of(&busy).error(),
            StoreError::NotCommitted(_)
        ));
    }

    /// Room for 25 ten-byte messages with their overhead.
    const Q25: u64 = 25 * (10 + O);

    /// Eight threads each try ten 10-byte messages from alice under a quota of [`Q25`],
    /// each thread with `send`, which returns the ids it got accepted: exactly 25 get in,
    /// and each thread's ids ascend.
    fn concurrent_deliveries(send: fn(&SqliteStore, UserId, UserId) -> Vec<ItemId>) -> TestResult {
        let (_dir, store) = store()?;
        let (alice, bob) = two_users(&store)?;
        let store = std::sync::Arc::new(store);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let store = std::sync::Arc::clone(&store);
                std::thread::spawn(move || send(&store, alice, bob))
            })
            .collect();
        let mut accepted = 0;
        for t in threads {
            let ids = t.join().map_err(|_| "delivery thread panicked")?;
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
            accepted += ids.len();
        }
        assert_eq!(accepted, 25);
        assert_eq!(store.usage(alice)?, Q25);
        assert_usage_consistent(&store)?;
        Ok(())
    }

    #[test]
    fn concurrent_delivers_respect_quota() -> TestResult {
        concurrent_deliveries(|store, alice, bob| {
            (0..10)
                .filter_map(|_| store.deliver(alice, bob, message("0123456789"), Q25).ok())
                .collect()
        })
    }

    #[test]
    fn concurrent_batches_respect_quota_and_order() -> TestResult {
        concurrent_deliveries(|store, alice, bob| {
            let batch = (0..10).map(|_| (bob, message("0123456789"))).collect();
            store
                .deliver_all(alice, batch, Q25)
                .into_iter()
                .filter_map(Result::ok)
                .collect()
        })
    }

    /// Eight async callers (tasks on a runtime, each on the leader's batches) and eight
    /// threads (leading batches themselves) offer ten messages each under a quota that
    /// admits 25: exactly 25 get in, every caller's ids ascend, and the name no user has
    /// (the fourth item of each async call) is `Ok(None)` without disturbing the others.
    #[test]
    fn async_and_thread_callers_share_the_batches() -> TestResult {
        let (_dir, store) = store()?;
        let (alice, bob) = two_users(&store)?;
        let store = Arc::new(store);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()?;
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let items = (0..10)
                    .map(|i| {
                        let to = if i == 3 { "nobody" } else { "bob" };
                        (to.to_string(), message("0123456789"))
                    })
                    .collect();
                rt.spawn(Arc::clone(&store).deliver_named(alice, items, Q25))
            })
            .collect();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let batch = (0..10).map(|_| (bob, message("0123456789"))).collect();
                    store.deliver_all(alice, batch, Q25)
                })
            })
            .collect();
        let mut accepted = 0;
        for task in tasks {
            let results = rt.block_on(task)?;
            assert_eq!(results.len(), 10);
            let mut ids = Vec::new();
            for (i, r) in results.iter().enumerate() {
                match r {
                    Ok(None) if i == 3 => {}
                    Ok(Some(id)) if i != 3 => ids.push(*id),
                    Err(StoreError::QuotaExceeded { .. }) if i != 3 => {}
                    other => panic!("item {i}: {other:?}"),
                }
            }
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
            accepted += ids.len();
        }
        for t in threads {
            let results = t.join().map_err(|_| "delivery thread panicked")?;
            let ids: Vec<ItemId> = results.into_iter().filter_map(Result::ok).collect();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
            accepted += ids.len();
        }
        assert_eq!(accepted, 25);
        assert_eq!(store.usage(alice)?, Q25);
        assert_usage_consistent(&store)?;
        Ok(())
    }

    #[test]
    fn a_leader_that_never_ran_steps_down_and_the_next_delivery_leads() -> TestResult {
        let (_dir, store) = store()?;
        let (alice, bob) = two_users(&store)?;
        let store = Arc::new(store);
        // As when a runtime shut down before its leader's blocking task ran: a delivery
        // queued behind that leader, and the leader dropped unrun.
        store.leading.store(true, Ordering::SeqCst);
        let first = store.queue_named(vec![Delivery::new(
            alice,
            Recipient::Name("bob".into()),
            message("first"),
            BIG,
        )?]);
        drop(Leader {
            store: Arc::clone(&store),
            stepped_down: false,
        });
        assert!(!store.leading.load(Ordering::SeqCst));
        // The next delivery starts a leader, which runs what was still queued too.
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        let next = rt.block_on(Arc::clone(&store).deliver_named(
            alice,
            vec![("bob".into(), message("next"))],
            BIG,
        ));
        assert!(matches!(next.as_slice(), [Ok(Some(_))]), "{next:?}");
        let first = rt.block_on(first)?;
        assert!(matches!(first.as_slice(), [Some(Ok(_))]), "{first:?}");
        assert_eq!(store.inbox(bob, 0, 10)?.len(), 2);
        // The leader answers its deliveries before it steps down, on its own thread: give it
        // the moment between the two.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.leading.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!store.leading.load(Ordering::SeqCst));
        Ok(())
    }

    #[test]
    fn an_async_batch_dropped_unanswered_is_result_lost() -> TestResult {
        let (_dir, store) = store()?;
        let (alice, _) = two_users(&store)?;
        let store = Arc::new(store);
        // Hold the lead, so the delivery waits in the queue; then drop the queue, as a
        // leader that panicked mid-batch would.
        store.leading.store(true, Ordering::SeqCst);
        let waiting = Arc::clone(&store).deliver_named(
            alice,
            vec![
                ("bob".into(), message("lost")),
                ("bob".into(), message("too")),
            ],
            BIG,
        );
        drop(std::mem::take(
            &mut *store.pending.lock().map_err(|_| "poisoned")?,
        ));
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        let results = rt.block_on(waiting);
        assert!(
            matches!(
                results.as_slice(),
                [Err(StoreError::ResultLost), Err(StoreError::ResultLost)]
            ),
            "{results:?}"
        );
        Ok(())
    }

    /// Room for 30 ten-byte messages with their overhead.
    const Q30: u64 = 30 * (10 + O);

    #[test]
    fn many_callers_each_get_every_answer_once() -> TestResult {
        // 16 threads, each 20 calls of one to four messages, single and batched mixed, under
        // a quota that admits exactly 30 of the 800 messages offered: every call returns, with
        // one answer per message, and the accepted ones add up.
        let (_dir, store) = store()?;
        let (alice, bob) = two_users(&store)?;
        let store = std::sync::Arc::new(store);
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let store = std::sync::Arc::clone(&store);
                std::thread::spawn(move || {
                    let mut accepted = 0;
                    for call in 0..20usize {
                        let n = 1 + (t + call) % 4;
                        let results = if n == 1 {
                            vec![store.deliver(alice, bob, message("0123456789"), Q30)]
                        } else {
                            let batch = (0..n).map(|_| (bob, message("0123456789"))).collect();
                            store.deliver_all(alice, batch, Q30)
                        };
                        assert_eq!(results.len(), n);
                        for r in results {
                            match r {
                                Ok(_) => accepted += 1,
                                Err(StoreError::QuotaExceeded { .. }) => {}
                                Err(e) => panic!("unexpected error: {e}"),
                            }
                        }
                    }
                    accepted
                })
            })
            .collect();
        let mut accepted = 0;
        for t in threads {
            accepted += t.join().map_err(|_| "delivery thread panicked")?;
        }
        assert_eq!(accepted, 30);
        assert_eq!(store.usage(alice)?, Q30);
        assert_eq!(store.inbox(bob, 0, 100)?.len(), 30);
        assert_usage_consistent(&store)?;
        Ok(())
    }

    #[test]
    fn a_batch_dropped_unanswered_is_result_lost_not_a_wait_forever() -> TestResult {
        // As when the caller leading the batch panicked: the batch was taken off the queue
        // and dropped with its result channels.
        let (_dir, store) = store()?;
        let (alice, bob) = two_users(&store)?;
        let delivery = Delivery::new(alice, Recipient::Id(bob), message("lost"), BIG)?;
        let mut answers = Answers::queue(&store.pending, vec![delivery]);
        assert!(answers.awaited());
        drop(std::mem::take(
            &mut *store.pending.lock().map_err(|_| "poisoned")?,
        ));
        assert!(!answers.awaited());
        let results = answers.into_results();
        assert!(
            matches!(results.as_slice(), [Err(StoreError::ResultLost)]),
            "{results:?}"
        );
        Ok(())
    }

    #[test]
    fn a_job_that_fails_after_writing_leaves_no_trace() -> TestResult {
        let (_dir, store) = store()?;
        let (alice, _) = two_users(&store)?;
        let charge = |c: &Connection, fail: bool| -> Result<(), StoreError> {
            c.execute(
                "UPDATE users SET usage_bytes = usage_bytes + 5 WHERE id = ?1",
                params![alice],
            )?;
            if fail {
                return Err(StoreError::InvalidItem("refused after writing".into()));
            }
            Ok(())
        };
        let mut conn = store.write();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let results: Vec<_> = [false, true, false]
            .into_iter()
            .map(|fail| in_savepoint(&tx, |c| charge(c, fail)))
            .collect();
        assert!(
            matches!(
                results.as_slice(),
                [
                    Outcome::Sound(Ok(())),
                    Outcome::Sound(Err(StoreError::InvalidItem(_))),
                    Outcome::Sound(Ok(())),
                ]
            ),
            "{results:?}"
        );
        tx.commit()?;
        drop(conn);
        assert_eq!(
            store.usage(alice)?,
            10,
            "only the two that succeeded were applied"
        );
        Ok(())
    }

    #[test]
    fn a_batch_charges_each_sender_in_turn_and_writes_usage_once() -> TestResult {
        let (_dir, store) = store()?;
        let (alice, bob) = two_users(&store)?;
        let carol = store.add_user("carol", "h")?;
        let blob = blob(&Blobs::in_dir(_dir.path())?, b"0123456789", "f.txt")?;
        // Every quota is 25 bytes plus two items' overhead.
        let q = 25 + 2 * O;
        // One batch, senders interleaved: alice (quota 25) sends 20, then 10 (refused), then
        // a 10-byte file (refused), then 5; bob sends 7 and 30 (refused under 25); carol
        // sends to nobody (refused) and then 3.
        let d = |from, to, item, quota| Delivery::new(from, Recipient::Id(to), item, quota);
        let batch = vec![
            d(alice, bob, message("01234567890123456789"), q)?,
            d(bob, alice, message("0123456"), q)?,
            d(alice, carol, message("0123456789"), q)?,
            d(alice, bob, NewItem::File(blob), q)?,
            d(carol, UserId::MAX, message("x"), q)?,
            d(bob, carol, message("012345678901234567890123456789"), q)?,
            d(alice, carol, message("01234"), q)?,
            d(carol, bob, message("012"), q)?,
        ];
        let results = store.group_commit(batch);
        let ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
        assert_eq!(
            ok,
            [true, true, false, false, false, false, true, true],
            "{results:?}"
        );
        assert!(
            matches!(
                results[3],
                Err(StoreError::QuotaExceeded { used, requested, quota })
                    if used == 20 + O && requested == 10 + O && quota == q
            ),
            "{:?}",
            results[3]
        );
        assert!(matches!(results[4], Err(StoreError::UnknownUserId(_))));
        assert_eq!(store.usage(alice)?, q);
        assert_eq!(store.usage(bob)?, 7 + O);
        assert_eq!(store.usage(carol)?, 3 + O);
        assert_usage_consistent(&store)?;
        Ok(())
    }
}
