//! The embedded default [`Store`]: one SQLite database file, `DATA_DIR/rampart.db`.
//!
//! # Tables
//!
//! - `users(id, name UNIQUE, password_hash, created_at_ms, usage_bytes, ticket_epoch)`:
//!   accounts. `ticket_epoch` grows by one with every [`Store::set_password`] (and never
//!   with the server's own argon2 re-hash), so resume tickets bound to an older epoch are
//!   revoked by `rampart user passwd`.
//!   `usage_bytes` is the sum, over the items the user sent that still exist, of each
//!   item's size plus [`ITEM_OVERHEAD_BYTES`]; [`Store::deliver`] and [`Store::delete`]
//!   update it in the same transaction as the item, so it can never drift from `items`.
//! - `items(id AUTOINCREMENT, owner, sender, kind, size, received_at_ms, title, body)`: one
//!   row per message, mail or file. `title` is the mail subject or the file name ("" for
//!   messages); `body` is the message text or mail body ("" for files). `AUTOINCREMENT`
//!   makes SQLite remember the largest id ever used, so ids are never reused after a delete.
//! - `item_blobs(item_id, idx, blob_id, name, size, digest)`: the blobs an item refers to,
//!   in order: a file item has one row, a mail one per attachment. Rows go with their item
//!   (`ON DELETE CASCADE`). A blob id may appear in more than one item.
//!
//! # Files
//!
//! - [`schema`]: the database file, its connections, `quick_check` at open, and the
//!   migrations (the schema version is SQLite's `PRAGMA user_version`; append only).
//! - [`batch`]: deliveries and group commit: the batch transaction, its ledger of senders'
//!   usage, and savepoints.
//! - this file: [`SqliteStore`] and every other [`Store`] method (accounts, reads, deletes).
//!
//! # Integrity and a full disk
//!
//! [`SqliteStore::open`] runs `PRAGMA quick_check` and refuses a damaged database
//! ([`StoreError::Damaged`]) instead of serving errors for every request. A server's store
//! ([`SqliteStore::with_min_free_bytes`]) refuses deliveries below the free-space floor and
//! keeps a [`Reserve`] that a delete failing for lack of space releases before it retries,
//! so users can always free space.
//!
//! # Concurrency
//!
//! One writer connection and one reader connection, each behind its own mutex. WAL lets
//! the reader see the last committed state while the writer works, and a single writer
//! means no `SQLITE_BUSY` between our own writes. Writes that check and then change (quota,
//! ownership) run in `BEGIN IMMEDIATE` transactions so the check and the change are atomic.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::lock::DataDirLock;
use super::space::{FreeSpace, Reserve};
use super::{check_blob, check_password_hash, size_to_sql, sql_to_u64};
use super::{
    is_valid_blob_id, validate_user_name, BlobRef, Deliveries, InboxEntry, Item, ItemId, ItemKind,
    NewItem, Store, StoreError, UserId, UserSummary, ITEM_OVERHEAD_BYTES,
};

mod batch;
mod schema;

use batch::{Delivery, Recipient, ResultTo};

/// The SQLite-backed [`Store`].
///
/// Deliveries use group commit: each caller queues its work, and whichever caller holds the
/// writer connection next runs every queued delivery in one IMMEDIATE transaction, in queue
/// order, and commits once (a delivery of several rows runs in its own savepoint; a message
/// is one insert, and each sender's usage is read and written once per batch). With
/// `synchronous=FULL` that one commit is one fsync for the whole batch, and nobody is
/// acknowledged before it returns. Under load the batch grows
/// to the number of waiting callers, so throughput scales with concurrency instead of being
/// capped at one fsync per message.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    pending: Mutex<Vec<(Delivery, ResultTo)>>,
    /// Whether a leader for async callers' deliveries is running (`SqliteStore::lead`).
    leading: AtomicBool,
    space: FreeSpace,
    /// Only a server's store keeps one ([`SqliteStore::with_min_free_bytes`]).
    reserve: Option<Reserve>,
    /// A server's store holds the data directory's lock ([`SqliteStore::holding`]).
    _lock: Option<Arc<DataDirLock>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens `data_dir/rampart.db`, creating the directory and the database on first start,
    /// checks it (`PRAGMA quick_check`; [`StoreError::Damaged`] if it fails or the file is not
    /// a database), and brings the schema up to date.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        crate::store::create_data_dir(data_dir)?;
        let path = data_dir.join(schema::DB_FILE);
        // The password hashes: readable by the server's user only.
        crate::store::create_private_file(&path)?;
        let (writer, reader) = schema::open(&path)?;
        Ok(SqliteStore {
            path,
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            pending: Mutex::new(Vec::new()),
            leading: AtomicBool::new(false),
            space: FreeSpace::unlimited(data_dir),
            reserve: None,
            _lock: None,
        })
    }

    /// Holds `lock`, the data directory's, for as long as this store lives. A server's
    /// blobs hold it too, and the store can outlive them (a batch leader finishing on a
    /// blocking thread): so the lock is released only once the database is closed, and a
    /// server that takes it next never opens the files while this one still has them open.
    pub fn holding(mut self, lock: Arc<DataDirLock>) -> Self {
        self._lock = Some(lock);
        self
    }

    /// Refuses deliveries with [`StoreError::StorageFull`] while less than
    /// `min_free_bytes` is free, and keeps the free-space [`Reserve`] in the data directory
    /// for deletes on a full disk. For the server, which owns the data directory; offline
    /// tools open the store without either.
    pub fn with_min_free_bytes(mut self, min_free_bytes: u64) -> Self {
        let dir = self.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        self.space = FreeSpace::new(&dir, min_free_bytes);
        self.reserve = Some(Reserve::open(&dir));
        self
    }

    /// Whether a delivery may be stored: the disk is above the floor. A reserve released
    /// for deletes is taken back here once there is room for it.
    fn has_room(&self) -> bool {
        if let Some(reserve) = &self.reserve {
            reserve.restore(&self.space);
        }
        !matches!(self.space.check(0), Err(StoreError::StorageFull))
    }

    /// The path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version the database is at.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        let conn = self.read();
        Ok(conn.pragma_query_value(None, "user_version", |row| row.get(0))?)
    }

    fn read(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave the connection mid-transaction:
        // rusqlite's Transaction rolls back when dropped during unwinding. So the
        // connection is still usable and poisoning carries no information for us.
        self.reader.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> MutexGuard<'_, Connection> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn now_ms() -> i64 {
    crate::sim::now_ms()
}

fn sql_to_kind(value: i64) -> Result<ItemKind, StoreError> {
    u8::try_from(value)
        .ok()
        .and_then(|v| ItemKind::try_from(v).ok())
        .ok_or_else(|| StoreError::Corrupt(format!("unknown item kind {value}")))
}

/// The raw columns of one `items` row joined with its sender's name.
struct ItemRow {
    id: i64,
    kind: i64,
    from: String,
    size: i64,
    received_at_ms: i64,
    title: String,
    body: String,
}

impl ItemRow {
    const COLUMNS: &'static str = "i.id, i.kind, u.name, i.size, i.received_at_ms, i.title, i.body";

    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(ItemRow {
            id: row.get(0)?,
            kind: row.get(1)?,
            from: row.get(2)?,
            size: row.get(3)?,
            received_at_ms: row.get(4)?,
            title: row.get(5)?,
            body: row.get(6)?,
        })
    }

    fn into_entry(self) -> Result<(InboxEntry, String), StoreError> {
        let entry = InboxEntry {
            id: sql_to_u64(self.id, "item id")?,
            kind: sql_to_kind(self.kind)?,
            from: self.from,
            size: sql_to_u64(self.size, "item size")?,
            received_at_ms: self.received_at_ms,
            title: self.title,
        };
        Ok((entry, self.body))
    }
}

fn item_blobs(conn: &Connection, item_id: i64) -> Result<Vec<BlobRef>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT blob_id, name, size, digest FROM item_blobs WHERE item_id = ?1 ORDER BY idx",
    )?;
    let rows = stmt.query_map(params![item_id], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, i64>(2)?,
            row.get::<_, Vec<u8>>(3)?,
        ))
    })?;
    let mut blobs = Vec::new();
    for row in rows {
        let (blob_id, name, size, digest) = row?;
        if !is_valid_blob_id(&blob_id) {
            return Err(StoreError::Corrupt(format!(
                "stored blob id {blob_id:?} is malformed"
            )));
        }
        let digest: [u8; 32] = digest
            .try_into()
            .map_err(|_| StoreError::Corrupt(format!("blob {blob_id} has a malformed digest")))?;
        blobs.push(BlobRef {
            blob_id,
            name,
            size: sql_to_u64(size, "blob size")?,
            digest,
        });
    }
    Ok(blobs)
}

/// Deletes the owner's item and frees its charge in one IMMEDIATE transaction; see
/// [`Store::delete`].
fn delete_item(
    conn: &mut Connection,
    owner: UserId,
    id: i64,
) -> Result<Option<Vec<String>>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: Option<(i64, i64)> = tx
        .prepare_cached("SELECT sender, size FROM items WHERE id = ?1 AND owner = ?2")?
        .query_row(params![id, owner], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let Some((sender, size)) = found else {
        return Ok(None);
    };
    let charge = size.saturating_add(ITEM_OVERHEAD_BYTES as i64);
    let blob_ids: Vec<String> = {
        let mut stmt =
            tx.prepare_cached("SELECT blob_id FROM item_blobs WHERE item_id = ?1 ORDER BY idx")?;
        let rows = stmt.query_map(params![id], |row| row.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    // Deleting the blob rows explicitly rather than through the cascade keeps this
    // correct even on a connection where foreign keys were left off.
    tx.prepare_cached("DELETE FROM item_blobs WHERE item_id = ?1")?
        .execute(params![id])?;
    tx.prepare_cached("DELETE FROM items WHERE id = ?1")?
        .execute(params![id])?;
    let changed = tx
        .prepare_cached(
            "UPDATE users SET usage_bytes = usage_bytes - ?2 WHERE id = ?1 AND usage_bytes >= ?2",
        )?
        .execute(params![sender, charge])?;
    if changed != 1 {
        // Rolling back (by dropping tx) leaves the item in place rather than making the
        // usage column negative or silently wrong.
        return Err(StoreError::Corrupt(format!(
            "usage of user {sender} is smaller than the charge of item {id}"
        )));
    }
    let mut unreferenced = Vec::new();
    {
        let mut still_used =
            tx.prepare_cached("SELECT EXISTS (SELECT 1 FROM item_blobs WHERE blob_id = ?1)")?;
        for blob_id in blob_ids {
            let used: bool = still_used.query_row(params![blob_id], |row| row.get(0))?;
            if !used && !unreferenced.contains(&blob_id) {
                unreferenced.push(blob_id);
            }
        }
    }
    tx.commit()?;
    Ok(Some(unreferenced))
}

/// Builds each item's [`Delivery`]; an item refused before it touches the database (a bad
/// blob reference) keeps its place as `Some(error)` in the first list.
fn checked(
    from: UserId,
    items: impl Iterator<Item = (Recipient, NewItem)>,
    quota: u64,
) -> (Vec<Option<StoreError>>, Vec<Delivery>) {
    let mut refused = Vec::new();
    let mut deliveries = Vec::new();
    for (to, item) in items {
        match Delivery::new(from, to, item, quota) {
            Ok(delivery) => {
                refused.push(None);
                deliveries.push(delivery);
            }
            Err(e) => refused.push(Some(e)),
        }
    }
    (refused, deliveries)
}

/// The answers in the items' order: the refusals where they were, the committed results
/// in between, in turn.
fn in_place(
    refused: Vec<Option<StoreError>>,
    committed: impl IntoIterator<Item = Result<ItemId, StoreError>>,
) -> Vec<Result<ItemId, StoreError>> {
    let mut committed = committed.into_iter();
    refused
        .into_iter()
        .map(|r| match r {
            Some(e) => Err(e),
            None => committed
                .next()
                .unwrap_or_else(|| Err(StoreError::ResultLost)),
        })
        .collect()
}

impl Store for SqliteStore {
    fn add_user(&self, name: &str, password_hash: &str) -> Result<UserId, StoreError> {
        validate_user_name(name)?;
        check_password_hash(password_hash)?;
        let conn = self.write();
        let inserted = conn
            .prepare_cached(
                "INSERT INTO users (name, password_hash, created_at_ms) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![name, password_hash, now_ms()]);
        match inserted {
            Ok(_) => Ok(conn.last_insert_rowid()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
            {
                Err(StoreError::UserExists(name.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn set_password(&self, name: &str, password_hash: &str) -> Result<(), StoreError> {
        check_password_hash(password_hash)?;
        let conn = self.write();
        let changed = conn
            .prepare_cached(
                "UPDATE users SET password_hash = ?2, ticket_epoch = ticket_epoch + 1 \
                 WHERE name = ?1",
            )?
            .execute(params![name, password_hash])?;
        if changed == 0 {
            return Err(StoreError::UnknownUser(name.to_owned()));
        }
        Ok(())
    }

    fn upgrade_password_hash(&self, id: UserId, old: &str, new: &str) -> Result<bool, StoreError> {
        check_password_hash(new)?;
        let conn = self.write();
        let changed = conn
            .prepare_cached(
                "UPDATE users SET password_hash = ?3 WHERE id = ?1 AND password_hash = ?2",
            )?
            .execute(params![id, old, new])?;
        Ok(changed == 1)
    }

    fn list_users(&self) -> Result<Vec<UserSummary>, StoreError> {
        let conn = self.read();
        let mut stmt = conn
            .prepare_cached("SELECT name, created_at_ms, usage_bytes FROM users ORDER BY name")?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?;
        let mut users = Vec::new();
        for row in rows {
            let (name, created_at_ms, usage) = row?;
            users.push(UserSummary {
                name,
                created_at_ms,
                usage_bytes: sql_to_u64(usage, "usage")?,
            });
        }
        Ok(users)
    }

    fn credentials(&self, name: &str) -> Result<Option<(UserId, String)>, StoreError> {
        let conn = self.read();
        let found = conn
            .prepare_cached("SELECT id, password_hash FROM users WHERE name = ?1")?
            .query_row(params![name], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        Ok(found)
    }

    fn ticket_epoch(&self, id: UserId) -> Result<Option<(String, u64)>, StoreError> {
        let conn = self.read();
        let found: Option<(String, i64)> = conn
            .prepare_cached("SELECT name, ticket_epoch FROM users WHERE id = ?1")?
            .query_row(params![id], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        match found {
            Some((name, epoch)) => Ok(Some((name, sql_to_u64(epoch, "ticket_epoch")?))),
            None => Ok(None),
        }
    }

    fn user_id(&self, name: &str) -> Result<Option<UserId>, StoreError> {
        let conn = self.read();
        let found = conn
            .prepare_cached("SELECT id FROM users WHERE name = ?1")?
            .query_row(params![name], |row| row.get(0))
            .optional()?;
        Ok(found)
    }

    fn usage(&self, user: UserId) -> Result<u64, StoreError> {
        let conn = self.read();
        let usage: Option<i64> = conn
            .prepare_cached("SELECT usage_bytes FROM users WHERE id = ?1")?
            .query_row(params![user], |row| row.get(0))
            .optional()?;
        match usage {
            Some(usage) => sql_to_u64(usage, "usage"),
            None => Err(StoreError::UnknownUserId(user)),
        }
    }

    fn deliver(
        &self,
        from: UserId,
        to: UserId,
        item: NewItem,
        quota: u64,
    ) -> Result<ItemId, StoreError> {
        let delivery = Delivery::new(from, Recipient::Id(to), item, quota)?;
        if !self.has_room() {
            return Err(StoreError::StorageFull);
        }
        self.group_commit(vec![delivery])
            .pop()
            .unwrap_or_else(|| Err(StoreError::ResultLost))
    }

    /// One group commit for the whole list: the items join the batch together, in order.
    fn deliver_all(
        &self,
        from: UserId,
        items: Vec<(UserId, NewItem)>,
        quota: u64,
    ) -> Vec<Result<ItemId, StoreError>> {
        if !items.is_empty() && !self.has_room() {
            return items.iter().map(|_| Err(StoreError::StorageFull)).collect();
        }
        let (refused, deliveries) = checked(
            from,
            items.into_iter().map(|(to, i)| (Recipient::Id(to), i)),
            quota,
        );
        in_place(refused, self.group_commit(deliveries))
    }

    /// Queues the items for the group commit and awaits them: no thread waits per delivery,
    /// and the names are looked up inside the batch. The disk's floor is checked once per
    /// batch, by the batch.
    fn deliver_named(
        self: Arc<Self>,
        from: UserId,
        items: Vec<(String, NewItem)>,
        quota: u64,
    ) -> Deliveries {
        let (refused, deliveries) = checked(
            from,
            items.into_iter().map(|(to, i)| (Recipient::Name(to), i)),
            quota,
        );
        let n = deliveries.len();
        let gathered = (n > 0).then(|| self.queue_named(deliveries));
        Box::pin(async move {
            let committed = match gathered {
                Some(rx) => rx.await.unwrap_or_default(),
                None => Vec::new(),
            };
            let committed = committed
                .into_iter()
                .chain(std::iter::repeat_with(|| None))
                .take(n)
                .map(|r| r.unwrap_or(Err(StoreError::ResultLost)));
            in_place(refused, committed)
                .into_iter()
                .map(|r| match r {
                    Ok(id) => Ok(Some(id)),
                    Err(StoreError::UnknownUser(_)) => Ok(None),
                    Err(e) => Err(e),
                })
                .collect()
        })
    }

    fn inbox(
        &self,
        owner: UserId,
        after: ItemId,
        limit: u32,
    ) -> Result<Vec<InboxEntry>, StoreError> {
        // Ids are positive i64, so nothing can come after an id beyond i64::MAX.
        let Ok(after) = i64::try_from(after) else {
            return Ok(Vec::new());
        };
        let conn = self.read();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {} FROM items i JOIN users u ON u.id = i.sender
             WHERE i.owner = ?1 AND i.id > ?2 ORDER BY i.id LIMIT ?3",
            ItemRow::COLUMNS
        ))?;
        let rows = stmt.query_map(params![owner, after, limit], ItemRow::from_row)?;
        let mut entries = Vec::new();
        for row in rows {
            entries.push(row?.into_entry()?.0);
        }
        Ok(entries)
    }

    fn item_owner(&self, id: ItemId) -> Result<Option<UserId>, StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        let conn = self.read();
        let owner = conn
            .prepare_cached("SELECT owner FROM items WHERE id = ?1")?
            .query_row(params![id], |r| r.get(0))
            .optional()?;
        Ok(owner)
    }

    fn item_id_issued(&self, id: ItemId) -> Result<bool, StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(false);
        };
        let conn = self.read();
        // AUTOINCREMENT keeps the highest id ever used in sqlite_sequence (no row before the
        // first item), and never hands out a lower one.
        let highest: i64 = conn
            .prepare_cached(
                "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'items'), 0)",
            )?
            .query_row([], |r| r.get(0))?;
        Ok(id <= highest)
    }

    fn item(&self, owner: UserId, id: ItemId) -> Result<Option<Item>, StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        let conn = self.read();
        // A consistent snapshot across the item row and its blobs, in case a delete
        // commits between the two reads.
        let tx = Transaction::new_unchecked(&conn, TransactionBehavior::Deferred)?;
        // Filtering on the owner in SQL makes "not yours" and "does not exist"
        // indistinguishable to the caller.
        let row = tx
            .prepare_cached(&format!(
                "SELECT {} FROM items i JOIN users u ON u.id = i.sender
                 WHERE i.id = ?1 AND i.owner = ?2",
                ItemRow::COLUMNS
            ))?
            .query_row(params![id, owner], ItemRow::from_row)
            .optional()?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (entry, body) = row.into_entry()?;
        let blobs = item_blobs(&tx, id)?;
        tx.finish()?;
        Item::from_columns(entry, body, blobs).map(Some)
    }

    /// A delete that fails for lack of space releases the free-space reserve and tries
    /// once more, so a user can always free space on a full disk.
    fn delete(&self, owner: UserId, id: ItemId) -> Result<Option<Vec<String>>, StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        // Its own statement: the writer lock is released before a retry takes it again.
        let first = delete_item(&mut self.write(), owner, id);
        match first {
            Err(StoreError::StorageFull) if self.reserve.as_ref().is_some_and(Reserve::release) => {
                delete_item(&mut self.write(), owner, id)
            }
            other => other,
        }
    }

    fn referenced_blobs(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.read();
        let mut stmt =
            conn.prepare_cached("SELECT DISTINCT blob_id FROM item_blobs ORDER BY blob_id")?;
        let rows = stmt.query_map([], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    pub(super) use crate::store::conformance::{blob, message, two_users, TestResult, BIG, EVIL};
    use crate::store::conformance::{count_files, suite, Backend};
    use crate::store::Blobs;

    /// What each item costs on top of its size.
    pub(super) const O: u64 = ITEM_OVERHEAD_BYTES;

    pub(super) fn store() -> Result<(tempfile::TempDir, SqliteStore), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(dir.path())?;
        Ok((dir, store))
    }

    /// Checks the usage column against a sum over items, the invariant deliver and delete keep.
    pub(super) fn assert_usage_consistent(store: &SqliteStore) -> TestResult {
        let conn = store.read();
        let mismatched: i64 = conn.query_row(
            "SELECT COUNT(*) FROM users u WHERE u.usage_bytes <>
               (SELECT COALESCE(SUM(size + 256), 0) FROM items i WHERE i.sender = u.id)",
            [],
            |row| row.get(0),
        )?;
        assert_eq!(mismatched, 0);
        Ok(())
    }

    /// A data directory of its own, for the shared suite.
    struct Sqlite {
        dir: tempfile::TempDir,
        blobs: Blobs,
    }

    impl Backend for Sqlite {
        type S = SqliteStore;
        fn open(&self) -> Result<SqliteStore, StoreError> {
            SqliteStore::open(self.dir.path())
        }
        fn blobs(&self) -> &Blobs {
            &self.blobs
        }
        fn blob_leftovers(&self) -> Result<usize, Box<dyn std::error::Error>> {
            // Staged and committed files alike; what lost+found holds is set aside.
            Ok(count_files(&self.dir.path().join("blobs"))?)
        }
        fn age_blobs(&self) -> TestResult {
            // The directory is one server's: its sweep needs no safe age.
            Ok(())
        }
    }

    fn sqlite() -> Result<Option<Sqlite>, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let blobs = Blobs::in_dir(dir.path())?;
        Ok(Some(Sqlite { dir, blobs }))
    }

    suite!(sqlite);

    #[test]
    fn below_the_floor_deliveries_are_refused_and_reads_and_deletes_work() -> TestResult {
        let (dir, store) = store()?;
        let (alice, bob) = two_users(&store)?;
        let kept = store.deliver(alice, bob, message("kept"), BIG)?;
        // A floor no disk can meet: the disk is "full" for new data.
        let store = store.with_min_free_bytes(u64::MAX / 2);
        assert!(dir.path().join(crate::store::RESERVE_FILE).is_file());
        assert!(matches!(
            store.deliver(alice, bob, message("refused"), BIG),
            Err(StoreError::StorageFull)
        ));
        let results = store.deliver_all(alice, vec![(bob, message("a")), (bob, message("b"))], BIG);
        assert_eq!(results.len(), 2);
        assert!(results
            .iter()
            .all(|r| matches!(r, Err(StoreError::StorageFull))));
        // The async path checks the floor in the batch, for every delivery in it.
        let store = std::sync::Arc::new(store);
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        let named = rt.block_on(std::sync::Arc::clone(&store).deliver_named(
            alice,
            vec![
                ("bob".into(), message("c")),
                ("nobody".into(), message("d")),
            ],
            BIG,
        ));
        assert!(
            matches!(
                named.as_slice(),
                [Err(StoreError::StorageFull), Err(StoreError::StorageFull)]
            ),
            "{named:?}"
        );
        assert_eq!(store.inbox(bob, 0, 10)?.len(), 1);
        assert!(store.item(bob, kept)?.is_some());
        assert_eq!(store.delete(bob, kept)?, Some(Vec::new()));
        assert_eq!(store.usage(alice)?, 0);
        Ok(())
    }

    #[test]
    fn poisoned_lock_is_recovered() -> TestResult {
        let (_dir, store) = store()?;
        let store = std::sync::Arc::new(store);
        let clone = std::sync::Arc::clone(&store);
        let joined = std::thread::spawn(move || {
            let _guard = clone.write();
            panic!("poison the writer lock");
        })
        .join();
        assert!(joined.is_err());
        assert!(store.writer.is_poisoned());
        store.add_user("alice", "h")?;
        assert!(store.user_id("alice")?.is_some());
        Ok(())
    }
}
