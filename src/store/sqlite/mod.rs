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

use super::space::{FreeSpace, Reserve};
use super::{
    is_valid_blob_id, validate_user_name, BlobRef, Deliveries, InboxEntry, Item, ItemContent,
    ItemId, ItemKind, NewItem, Store, StoreError, UserId, UserSummary, ITEM_OVERHEAD_BYTES,
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
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(schema::DB_FILE);
        let (writer, reader) = schema::open(&path)?;
        Ok(SqliteStore {
            path,
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            pending: Mutex::new(Vec::new()),
            leading: AtomicBool::new(false),
            space: FreeSpace::unlimited(data_dir),
            reserve: None,
        })
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

fn check_password_hash(hash: &str) -> Result<(), StoreError> {
    if hash.is_empty() {
        return Err(StoreError::EmptyPasswordHash);
    }
    Ok(())
}

/// Converts a size for storage; SQLite integers are signed 64-bit.
fn size_to_sql(size: u64) -> Result<i64, StoreError> {
    i64::try_from(size).map_err(|_| StoreError::InvalidItem(format!("size {size} is too large")))
}

/// Converts a stored non-negative integer back, treating a negative value as corruption.
fn sql_to_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative {what} {value}")))
}

fn sql_to_kind(value: i64) -> Result<ItemKind, StoreError> {
    u8::try_from(value)
        .ok()
        .and_then(|v| ItemKind::try_from(v).ok())
        .ok_or_else(|| StoreError::Corrupt(format!("unknown item kind {value}")))
}

/// Checks the blob references of an item before they are stored: their ids later become
/// paths, so a forged one must never get into the database.
fn check_blob(blob: &BlobRef) -> Result<(), StoreError> {
    if !is_valid_blob_id(&blob.blob_id) {
        return Err(StoreError::InvalidBlobId(blob.blob_id.clone()));
    }
    size_to_sql(blob.size)?;
    Ok(())
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
        let mut blobs = item_blobs(&tx, id)?;
        tx.finish()?;
        let content = match entry.kind {
            ItemKind::Message => ItemContent::Message { text: body },
            ItemKind::Mail => ItemContent::Mail {
                subject: entry.title.clone(),
                body,
                attachments: blobs,
            },
            ItemKind::File => {
                let blob = blobs.pop().filter(|_| blobs.is_empty()).ok_or_else(|| {
                    StoreError::Corrupt(format!("file item {id} does not have exactly one blob"))
                })?;
                ItemContent::File(blob)
            }
        };
        Ok(Some(Item { entry, content }))
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
    use crate::store::BlobStore;
    use std::collections::HashSet;

    pub(super) type TestResult = Result<(), Box<dyn std::error::Error>>;

    pub(super) const BIG: u64 = 1 << 30;
    pub(super) const EVIL: &str = "x'); DROP TABLE users;--";
    /// What each item costs on top of its size.
    pub(super) const O: u64 = ITEM_OVERHEAD_BYTES;

    pub(super) fn store() -> Result<(tempfile::TempDir, SqliteStore), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(dir.path())?;
        Ok((dir, store))
    }

    pub(super) fn two_users(store: &SqliteStore) -> Result<(UserId, UserId), StoreError> {
        Ok((
            store.add_user("alice", "h-a")?,
            store.add_user("bob", "h-b")?,
        ))
    }

    pub(super) fn blob(
        blobs: &BlobStore,
        content: &[u8],
        name: &str,
    ) -> Result<BlobRef, StoreError> {
        let mut staged = blobs.stage()?;
        staged.append(content)?;
        staged.commit(name)
    }

    pub(super) fn message(text: &str) -> NewItem {
        NewItem::Message { text: text.into() }
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

    #[test]
    fn add_and_duplicate_user() -> TestResult {
        let (_dir, store) = store()?;
        let id = store.add_user("alice", "hash")?;
        assert!(
            matches!(store.add_user("alice", "other"), Err(StoreError::UserExists(n)) if n == "alice")
        );
        assert_eq!(store.user_id("alice")?, Some(id));
        assert_eq!(store.user_id("nobody")?, None);
        assert!(matches!(
            store.add_user("Alice", "h"),
            Err(StoreError::InvalidName(_))
        ));
        assert!(matches!(
            store.add_user(EVIL, "h"),
            Err(StoreError::InvalidName(_))
        ));
        assert!(matches!(
            store.add_user("carol", ""),
            Err(StoreError::EmptyPasswordHash)
        ));
        assert_eq!(store.user_id("carol")?, None);
        Ok(())
    }

    #[test]
    fn credentials_and_password_change() -> TestResult {
        let (_dir, store) = store()?;
        let id = store.add_user("alice", "$argon2id$old")?;
        assert_eq!(
            store.credentials("alice")?,
            Some((id, "$argon2id$old".to_owned()))
        );
        assert_eq!(store.credentials("bob")?, None);
        assert_eq!(store.ticket_epoch(id)?, Some(("alice".to_owned(), 0)));
        store.set_password("alice", EVIL)?;
        assert_eq!(store.credentials("alice")?, Some((id, EVIL.to_owned())));
        // A password change revokes the user's resume tickets; a re-hash does not.
        assert_eq!(store.ticket_epoch(id)?, Some(("alice".to_owned(), 1)));
        assert!(store.upgrade_password_hash(id, EVIL, "$argon2id$rehashed")?);
        assert_eq!(store.ticket_epoch(id)?, Some(("alice".to_owned(), 1)));
        assert_eq!(store.ticket_epoch(id + 1)?, None);
        assert!(
            matches!(store.set_password("bob", "h"), Err(StoreError::UnknownUser(n)) if n == "bob")
        );
        assert!(matches!(
            store.set_password("alice", ""),
            Err(StoreError::EmptyPasswordHash)
        ));
        Ok(())
    }

    #[test]
    fn a_hash_upgrade_never_overwrites_a_changed_password() -> TestResult {
        let (_dir, store) = store()?;
        let id = store.add_user("alice", "$argon2id$old")?;
        assert!(store.upgrade_password_hash(id, "$argon2id$old", "$argon2id$new")?);
        assert_eq!(
            store.credentials("alice")?.map(|c| c.1).as_deref(),
            Some("$argon2id$new")
        );
        // An operator changed the password between the login and its upgrade: kept.
        store.set_password("alice", "$argon2id$operator")?;
        assert!(!store.upgrade_password_hash(id, "$argon2id$new", "$argon2id$newer")?);
        assert_eq!(
            store.credentials("alice")?.map(|c| c.1).as_deref(),
            Some("$argon2id$operator")
        );
        assert!(matches!(
            store.upgrade_password_hash(id, "$argon2id$operator", ""),
            Err(StoreError::EmptyPasswordHash)
        ));
        Ok(())
    }

    #[test]
    fn list_users_sorted_with_usage() -> TestResult {
        let (_dir, store) = store()?;
        let c = store.add_user("carol", "h")?;
        let a = store.add_user("alice", "h")?;
        store.add_user("bob", "h")?;
        store.deliver(c, a, message("hey"), BIG)?;
        let users = store.list_users()?;
        let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob", "carol"]);
        assert_eq!(users[2].usage_bytes, 3 + O);
        assert_eq!(users[0].usage_bytes, 0);
        assert!(users[0].created_at_ms > 0);
        Ok(())
    }

    #[test]
    fn deliver_each_kind_and_read_back() -> TestResult {
        let (dir, store) = store()?;
        let blobs = BlobStore::open(dir.path())?;
        let (alice, bob) = two_users(&store)?;

        let m = store.deliver(alice, bob, message(EVIL), BIG)?;
        let att1 = blob(&blobs, b"attachment one", "one.txt")?;
        let att2 = blob(&blobs, b"two", EVIL)?;
        let mail = NewItem::Mail {
            subject: EVIL.into(),
            body: "body\0with nul".into(),
            attachments: vec![att1.clone(), att2.clone()],
        };
        let mail_size = mail.size();
        let ml = store.deliver(alice, bob, mail, BIG)?;
        let file = blob(&blobs, b"file content", "report.pdf")?;
        let f = store.deliver(bob, bob, NewItem::File(file.clone()), BIG)?;
        assert!(m < ml && ml < f);

        let inbox = store.inbox(bob, 0, 10)?;
        let summary: Vec<(ItemId, ItemKind, &str, u64, &str)> = inbox
            .iter()
            .map(|e| (e.id, e.kind, e.from.as_str(), e.size, e.title.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (m, ItemKind::Message, "alice", EVIL.len() as u64, ""),
                (ml, ItemKind::Mail, "alice", mail_size, EVIL),
                (f, ItemKind::File, "bob", 12, "report.pdf"),
            ]
        );
        assert_eq!(mail_size, (EVIL.len() + 13 + 14 + 3) as u64);
        assert!(store.inbox(alice, 0, 10)?.is_empty());

        let item = store.item(bob, m)?.ok_or("message missing")?;
        assert_eq!(item.entry, inbox[0]);
        assert_eq!(item.content, ItemContent::Message { text: EVIL.into() });
        let item = store.item(bob, ml)?.ok_or("mail missing")?;
        assert_eq!(
            item.content,
            ItemContent::Mail {
                subject: EVIL.into(),
                body: "body\0with nul".into(),
                attachments: vec![att1, att2],
            }
        );
        let item = store.item(bob, f)?.ok_or("file missing")?;
        assert_eq!(item.content, ItemContent::File(file));

        assert_eq!(store.usage(alice)?, EVIL.len() as u64 + mail_size + 2 * O);
        assert_eq!(store.usage(bob)?, 12 + O);
        assert_usage_consistent(&store)?;
        // The evil strings did nothing to the schema.
        assert_eq!(store.list_users()?.len(), 2);
        Ok(())
    }

    #[test]
    fn inbox_pages_by_id() -> TestResult {
        let (_dir, store) = store()?;
        let (alice, bob) = two_users(&store)?;
        let ids: Vec<ItemId> = (0..5)
            .map(|i| store.deliver(alice, bob, message(&format!("m{i}")), BIG))
            .collect::<Result<_, _>>()?;
        let page: Vec<ItemId> = store.inbox(bob, 0, 2)?.iter().map(|e| e.id).collect();
        assert_eq!(page, ids[..2]);
        let page: Vec<ItemId> = store.inbox(bob, ids[1], 10)?.iter().map(|e| e.id).collect();
        assert_eq!(page, ids[2..]);
        assert!(store.inbox(bob, ids[4], 10)?.is_empty());
        assert!(store.inbox(bob, 0, 0)?.is_empty());
        assert!(store.inbox(bob, u64::MAX, 10)?.is_empty());
        Ok(())
    }

    #[test]
    fn other_users_items_are_invisible() -> TestResult {
        let (_dir, store) = store()?;
        let (alice, bob) = two_users(&store)?;
        let id = store.deliver(alice, bob, message("for bob only"), BIG)?;
        // The sender does not own the item either: it lives in the recipient's inbox.
        assert_eq!(store.item(alice, id)?, None);
        assert_eq!(store.item(alice, id + 1000)?, None);
        assert_eq!(store.item(bob, u64::MAX)?, None);
        assert_eq!(store.delete(alice, id)?, None);
        assert_eq!(store.delete(alice, u64::MAX)?, None);
        assert!(store.item(bob, id)?.is_some());
        assert_eq!(store.usage(alice)?, 12 + O);
        Ok(())
    }

    #[test]
    fn quota_exceeded_is_refused_atomically() -> TestResult {
        let (dir, store) = store()?;
        let blobs = BlobStore::open(dir.path())?;
        let (alice, bob) = two_users(&store)?;
        // Room for two 5-byte messages with their overhead.
        let quota = 10 + 2 * O;
        store.deliver(alice, bob, message("12345"), quota)?;
        let err = store.deliver(alice, bob, message("123456"), quota);
        assert!(
            matches!(
                err,
                Err(StoreError::QuotaExceeded {
                    used,
                    requested,
                    quota: q,
                }) if used == 5 + O && requested == 6 + O && q == quota
            ),
            "{err:?}"
        );
        let att = blob(&blobs, b"123", "a")?;
        let mail = NewItem::Mail {
            subject: "s".into(),
            body: "b".into(),
            attachments: vec![att],
        };
        assert!(matches!(
            store.deliver(alice, bob, mail, quota - 1),
            Err(StoreError::QuotaExceeded { .. })
        ));
        assert_eq!(store.inbox(bob, 0, 10)?.len(), 1);
        assert!(store.referenced_blobs()?.is_empty());
        assert_eq!(store.usage(alice)?, 5 + O);
        // Exactly filling the quota is allowed.
        store.deliver(alice, bob, message("12345"), quota)?;
        assert_eq!(store.usage(alice)?, quota);
        // Sizes that would overflow are refused, not wrapped.
        let big = BlobRef {
            size: i64::MAX as u64,
            ..blob(&blobs, b"", "h")?
        };
        let huge = NewItem::Mail {
            subject: String::new(),
            body: String::new(),
            attachments: vec![big.clone(), big.clone(), big.clone()],
        };
        assert!(matches!(
            store.deliver(alice, bob, huge, u64::MAX),
            Err(StoreError::QuotaExceeded {
                requested: u64::MAX,
                quota: u64::MAX,
                ..
            })
        ));
        let unstorable = NewItem::File(BlobRef {
            size: u64::MAX,
            ..big
        });
        assert!(matches!(
            store.deliver(alice, bob, unstorable, u64::MAX),
            Err(StoreError::InvalidItem(_))
        ));
        assert_eq!(store.inbox(bob, 0, 10)?.len(), 2);
        assert_usage_consistent(&store)?;
        Ok(())
    }

    #[test]
    fn deliver_refuses_bad_input() -> TestResult {
        let (_dir, store) = store()?;
        let (alice, bob) = two_users(&store)?;
        let forged = BlobRef {
            blob_id: "../../../../etc/passwd".into(),
            name: "passwd".into(),
            size: 1,
            digest: [0; 32],
        };
        assert!(matches!(
            store.deliver(alice, bob, NewItem::File(forged), BIG),
            Err(StoreError::InvalidBlobId(_))
        ));
        assert!(matches!(
            store.deliver(alice, 999, message("x"), BIG),
            Err(StoreError::UnknownUserId(999))
        ));
        assert!(matches!(
            store.deliver(999, bob, message("x"), BIG),
            Err(StoreError::UnknownUserId(999))
        ));
        assert!(matches!(
            store.usage(999),
            Err(StoreError::UnknownUserId(999))
        ));
        assert!(store.inbox(bob, 0, 10)?.is_empty());
        Ok(())
    }

    #[test]
    fn delete_frees_quota_and_returns_unreferenced_blobs() -> TestResult {
        let (dir, store) = store()?;
        let blobs = BlobStore::open(dir.path())?;
        let (alice, bob) = two_users(&store)?;
        let shared = blob(&blobs, b"shared", "shared")?;
        let own = blob(&blobs, b"own", "own")?;
        let mail = NewItem::Mail {
            subject: "s".into(),
            body: "b".into(),
            attachments: vec![shared.clone(), own.clone(), own.clone()],
        };
        let m = store.deliver(alice, bob, mail, BIG)?;
        // The same blob forwarded to alice is still referenced after bob deletes his copy.
        let f = store.deliver(bob, alice, NewItem::File(shared.clone()), BIG)?;
        let mut referenced = store.referenced_blobs()?;
        referenced.sort();
        let mut expected = vec![shared.blob_id.clone(), own.blob_id.clone()];
        expected.sort();
        assert_eq!(referenced, expected);

        assert_eq!(store.usage(alice)?, 2 + 6 + 3 + 3 + O);
        assert_eq!(store.delete(bob, m)?, Some(vec![own.blob_id.clone()]));
        assert_eq!(store.usage(alice)?, 0);
        assert_eq!(store.item(bob, m)?, None);
        assert_eq!(store.delete(bob, m)?, None);
        assert_eq!(store.referenced_blobs()?, vec![shared.blob_id.clone()]);

        assert_eq!(store.delete(alice, f)?, Some(vec![shared.blob_id.clone()]));
        assert_eq!(store.usage(bob)?, 0);
        assert!(store.referenced_blobs()?.is_empty());
        assert_usage_consistent(&store)?;

        let none_left: HashSet<String> = HashSet::new();
        assert_eq!(blobs.sweep_orphans(&none_left)?, 2);
        Ok(())
    }

    #[test]
    fn item_ids_are_never_reused() -> TestResult {
        let (dir, store) = store()?;
        let (alice, bob) = two_users(&store)?;
        let first = store.deliver(alice, bob, message("a"), BIG)?;
        let second = store.deliver(alice, bob, message("b"), BIG)?;
        store.delete(bob, second)?;
        store.delete(bob, first)?;
        let third = store.deliver(alice, bob, message("c"), BIG)?;
        assert!(third > second, "{third} reused an id <= {second}");
        drop(store);
        let store = SqliteStore::open(dir.path())?;
        store.delete(bob, third)?;
        let fourth = store.deliver(alice, bob, message("d"), BIG)?;
        assert!(fourth > third);
        Ok(())
    }

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

    #[test]
    fn deliver_all_is_deliver_in_turn() -> TestResult {
        let (_dir, store) = store()?;
        let (alice, bob) = two_users(&store)?;
        let carol = store.add_user("carol", "h")?;
        let bad = BlobRef {
            blob_id: "../escape".into(),
            name: "x".into(),
            size: 1,
            digest: [0; 32],
        };
        // Quota 25 and two items' overhead: the 20-byte message fits, the next 10 do not,
        // the 5 after them do.
        let quota = 25 + 2 * O;
        let items = vec![
            (bob, message("01234567890123456789")),
            (carol, message("0123456789")),
            (bob, NewItem::File(bad)),
            (UserId::MAX, message("x")),
            (carol, message("01234")),
        ];
        let results = store.deliver_all(alice, items, quota);
        assert_eq!(results.len(), 5);
        let first = *results[0].as_ref().map_err(|e| e.to_string())?;
        assert!(
            matches!(
                results[1],
                Err(StoreError::QuotaExceeded { used, requested, quota: q })
                    if used == 20 + O && requested == 10 + O && q == quota
            ),
            "{:?}",
            results[1]
        );
        assert!(
            matches!(results[2], Err(StoreError::InvalidBlobId(_))),
            "{:?}",
            results[2]
        );
        assert!(
            matches!(results[3], Err(StoreError::UnknownUserId(_))),
            "{:?}",
            results[3]
        );
        let last = *results[4].as_ref().map_err(|e| e.to_string())?;
        assert!(last > first, "ids follow the order of the list");
        assert_eq!(store.usage(alice)?, quota);
        assert_eq!(store.inbox(bob, 0, 10)?.len(), 1);
        assert_eq!(store.inbox(carol, 0, 10)?.len(), 1);
        assert!(store.deliver_all(alice, Vec::new(), quota).is_empty());
        assert_usage_consistent(&store)?;
        Ok(())
    }
}
