//! Persistence behind a small, synchronous trait.
//!
//! The server talks to storage only through [`Store`], so the embedded default
//! ([`SqliteStore`], SQLite in WAL mode) can later be swapped for a shared backend.
//! Large payloads (files and mail attachments) do not live in the item tables: they are
//! written to a [`BlobStore`] first (the data directory's [`DirBlobs`], or chunks in a
//! fleet's PostgreSQL database), made durable, and only then referenced by an item through
//! a [`BlobRef`]. The server reaches them through [`Blobs`], which adds what every backend
//! shares (quota reservations, the free-space floor). Paths and keys are derived only from
//! the random blob id, never from anything a client sent.
//!
//! The trait is synchronous on purpose: SQLite calls block, and the server runs them
//! inside `spawn_blocking` rather than pretending they are asynchronous. The one exception
//! is the hot path, [`Store::deliver_named`]: a delivery waits for a group commit that
//! another thread runs, so it is a future, and no thread waits per delivery.
//!
//! Around the data: [`DataDirLock`] keeps a second server off a data directory,
//! [`FreeSpace`] and [`Reserve`] keep a full disk from breaking reads and deletes, and
//! [`Pending`] charges uploads to their sender's quota before they are items, and
//! [`load_or_create_ticket_key`] keeps the secret that resume tickets are signed with.

// A panic while a batch leads the group commit would leave its callers without answers, so
// none may hide in an unwrap or an index. Tests may use them.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod blobs;
#[cfg(test)]
pub(crate) mod conformance;
pub mod fault;
mod lock;
mod names;
mod pending;
#[cfg(feature = "postgres")]
pub mod postgres;
mod secret;
mod space;
mod sqlite;

pub use blobs::{BlobStore, BlobWriter, Blobs, DirBlobs, StagedBlob, LOST_FOUND_DIR};
pub use lock::{create_data_dir, create_private_file, DataDirLock, LOCK_FILE};
pub use names::{sanitize_file_name, validate_user_name, MAX_FILE_NAME_BYTES, MAX_USER_NAME_LEN};
pub use pending::Pending;
#[cfg(feature = "postgres")]
pub use postgres::{PgBlobs, PgStore};
pub use secret::{load_or_create_ticket_key, TICKET_KEY_FILE, TICKET_KEY_LEN};
pub use space::{is_out_of_space, FreeSpace, Reserve, RESERVE_BYTES, RESERVE_FILE};
pub use sqlite::SqliteStore;

/// What every item costs against its sender's quota on top of its content. Without it an
/// empty item costs nothing, yet 14,000 empty messages and 200 empty files grew the
/// database by 4.9 MB (about 345 bytes per row with its index entries); 256 bytes makes
/// flooding with empty items run into the quota at roughly the rate it fills the disk.
pub const ITEM_OVERHEAD_BYTES: u64 = 256;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;

/// The database id of a user account.
pub type UserId = i64;

/// The database id of an item (message, mail or file). Ids are positive and never reused,
/// even after the item is deleted, so a stale id can never name someone else's new item.
pub type ItemId = u64;

/// What an item is; the numeric values are stored in the database and must not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum ItemKind {
    /// A short chat message.
    Message = 1,
    /// A mail with a subject, a body and optional attachments.
    Mail = 2,
    /// A single file.
    File = 3,
}

impl ItemKind {
    /// The lower-case name of the kind, as shown to users and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Message => "message",
            ItemKind::Mail => "mail",
            ItemKind::File => "file",
        }
    }
}

impl TryFrom<u8> for ItemKind {
    type Error = StoreError;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            1 => Ok(ItemKind::Message),
            2 => Ok(ItemKind::Mail),
            3 => Ok(ItemKind::File),
            other => Err(StoreError::UnknownKind(other)),
        }
    }
}

impl std::fmt::Display for ItemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One user account as listed by administrators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserSummary {
    /// The user's login name.
    pub name: String,
    /// When the account was created, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// Bytes currently charged to this user's quota: each item they sent that still exists
    /// costs its size plus [`ITEM_OVERHEAD_BYTES`].
    pub usage_bytes: u64,
}

/// A finished, fsynced blob in the blob store, ready to be attached to an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    /// 32 lower-case hex characters (128 random bits); the only thing a path is built from.
    pub blob_id: String,
    /// The sanitized display name (see [`sanitize_file_name`]); never used in a path.
    pub name: String,
    /// The blob's length in bytes.
    pub size: u64,
    /// The blake3 digest of the blob's content.
    pub digest: [u8; 32],
}

/// An item about to be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewItem {
    /// A chat message.
    Message {
        /// The message text.
        text: String,
    },
    /// A mail.
    Mail {
        /// The subject line.
        subject: String,
        /// The body text.
        body: String,
        /// Committed blobs attached to the mail, in order.
        attachments: Vec<BlobRef>,
    },
    /// A file, already committed to the blob store.
    File(BlobRef),
}

impl NewItem {
    /// The kind of this item.
    pub fn kind(&self) -> ItemKind {
        match self {
            NewItem::Message { .. } => ItemKind::Message,
            NewItem::Mail { .. } => ItemKind::Mail,
            NewItem::File(_) => ItemKind::File,
        }
    }

    /// What this item costs against its sender's quota: its [`NewItem::size`] plus
    /// [`ITEM_OVERHEAD_BYTES`], saturating.
    pub fn charge(&self) -> u64 {
        self.size().saturating_add(ITEM_OVERHEAD_BYTES)
    }

    /// The item's content bytes: message text; mail subject, body and attachment sizes; or
    /// the file's size. Saturates instead of overflowing, so an absurd size is refused by
    /// the quota check rather than wrapping around to a small one.
    pub fn size(&self) -> u64 {
        match self {
            NewItem::Message { text } => len_u64(text),
            NewItem::Mail {
                subject,
                body,
                attachments,
            } => attachments
                .iter()
                .fold(len_u64(subject).saturating_add(len_u64(body)), |acc, a| {
                    acc.saturating_add(a.size)
                }),
            NewItem::File(blob) => blob.size,
        }
    }
}

impl NewItem {
    /// The item as its stored columns: title (mail subject or file name, "" for a
    /// message), body (message text or mail body, "" for a file) and blobs, in order.
    pub(crate) fn into_columns(self) -> (String, String, Vec<BlobRef>) {
        match self {
            NewItem::Message { text } => (String::new(), text, Vec::new()),
            NewItem::Mail {
                subject,
                body,
                attachments,
            } => (subject, body, attachments),
            NewItem::File(blob) => (blob.name.clone(), String::new(), vec![blob]),
        }
    }
}

/// Converts a string length to `u64`; `usize` is at most 64 bits on every supported target.
fn len_u64(s: &str) -> u64 {
    u64::try_from(s.len()).unwrap_or(u64::MAX)
}

/// One line of an inbox listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InboxEntry {
    /// The item's id.
    pub id: ItemId,
    /// What the item is.
    pub kind: ItemKind,
    /// The sender's user name.
    pub from: String,
    /// The item's content bytes (see [`NewItem::size`]).
    pub size: u64,
    /// When the item was committed, in milliseconds since the Unix epoch.
    pub received_at_ms: i64,
    /// The mail subject, the file name, or "" for messages.
    pub title: String,
}

/// A whole item: its inbox entry plus its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The listing fields.
    pub entry: InboxEntry,
    /// The content.
    pub content: ItemContent,
}

impl Item {
    /// The item whose listing is `entry`, from its stored body and blobs (the reverse of
    /// [`NewItem::into_columns`]); a file item without exactly one blob is corrupt.
    pub(crate) fn from_columns(
        entry: InboxEntry,
        body: String,
        mut blobs: Vec<BlobRef>,
    ) -> Result<Item, StoreError> {
        let content = match entry.kind {
            ItemKind::Message => ItemContent::Message { text: body },
            ItemKind::Mail => ItemContent::Mail {
                subject: entry.title.clone(),
                body,
                attachments: blobs,
            },
            ItemKind::File => {
                let blob = blobs.pop().filter(|_| blobs.is_empty()).ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "file item {} does not have exactly one blob",
                        entry.id
                    ))
                })?;
                ItemContent::File(blob)
            }
        };
        Ok(Item { entry, content })
    }
}

/// The content of a stored item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemContent {
    /// A chat message.
    Message {
        /// The message text.
        text: String,
    },
    /// A mail.
    Mail {
        /// The subject line.
        subject: String,
        /// The body text.
        body: String,
        /// The attached blobs, in the order they were delivered.
        attachments: Vec<BlobRef>,
    },
    /// A file.
    File(BlobRef),
}

/// Everything that can go wrong in the store; one variant per reason so callers can match.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The user name is already taken.
    #[error("user {0:?} already exists")]
    UserExists(String),
    /// No user has this name.
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// No user has this id.
    #[error("unknown user id {0}")]
    UnknownUserId(UserId),
    /// Delivering the item would push the sender over their quota; nothing was stored.
    #[error("quota exceeded: {used} bytes used, {requested} requested, quota is {quota}")]
    QuotaExceeded {
        /// Bytes already charged to the sender.
        used: u64,
        /// Bytes the refused item would have added.
        requested: u64,
        /// The sender's quota.
        quota: u64,
    },
    /// The user name does not satisfy [`validate_user_name`]; the string says why.
    #[error("invalid user name: {0}")]
    InvalidName(String),
    /// A password hash must not be empty, or anyone could log in without a password.
    #[error("empty password hash")]
    EmptyPasswordHash,
    /// A blob id is not exactly 32 lower-case hex characters.
    #[error("invalid blob id {0:?}")]
    InvalidBlobId(String),
    /// No committed blob has this id (never committed, or removed).
    #[error("blob {0} not found")]
    BlobNotFound(String),
    /// The caller built an item the store cannot hold; the string says why.
    #[error("invalid item: {0}")]
    InvalidItem(String),
    /// A numeric item kind that is not one of [`ItemKind`].
    #[error("unknown item kind {0}")]
    UnknownKind(u8),
    /// The database was written by a newer build with migrations this build does not know.
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew {
        /// The version found in the database.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The disk holding the data directory is full, or below `storage.min_free_bytes`:
    /// nothing new was stored, and reading and deleting still work. Transient: it clears
    /// when space is freed.
    #[error("storage is full: delete items to free space, or retry later")]
    StorageFull,
    /// Another process (or another server in this process) holds the data directory's lock.
    #[error("data directory {} is in use by another rampart (pid {})", dir.display(), pid.map_or_else(|| "unknown".to_owned(), |p| p.to_string()))]
    InUse {
        /// The data directory.
        dir: std::path::PathBuf,
        /// The owner's pid as it wrote it into the lock file, if readable.
        pid: Option<u32>,
    },
    /// The database failed its integrity check (`PRAGMA quick_check`) or is not a database.
    #[error("database {} is damaged ({detail}); restore it from a backup, or move it aside to start with an empty one (unreferenced blobs then go to lost+found)", path.display())]
    Damaged {
        /// The database file.
        path: std::path::PathBuf,
        /// SQLite's first complaint.
        detail: String,
    },
    /// A batch of deliveries could not be committed and was rolled back; nothing in it was
    /// stored. A failure of the moment (an IO error, a lock), not damage to stored data.
    #[error("the delivery batch was not committed, nothing was stored: {0}")]
    NotCommitted(String),
    /// A delivery got no result from the store (its batch was dropped unanswered, as when
    /// the caller leading it panicked, or a bug lost the result): it was not acknowledged.
    /// Reported rather than hidden; not damage to stored data.
    #[error("a delivery got no result from the store and was not acknowledged")]
    ResultLost,
    /// A file system error.
    #[error("io error: {0}")]
    Io(std::io::Error),
    /// A database error.
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
    /// The database server (PostgreSQL, `store.url`) could not be reached or refused the
    /// statement; nothing was stored. Transient while the server is down: the store opens a
    /// fresh connection on the next call.
    #[error("database error: {0}")]
    Database(String),
    /// Stored data that violates the store's own invariants.
    #[error("corrupt store: {0}")]
    Corrupt(String),
}

impl From<std::io::Error> for StoreError {
    /// Out of space is [`StoreError::StorageFull`], never a generic IO failure.
    fn from(e: std::io::Error) -> StoreError {
        if is_out_of_space(&e) {
            StoreError::StorageFull
        } else {
            StoreError::Io(e)
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    /// SQLITE_FULL (and an IO error that is ENOSPC underneath) is
    /// [`StoreError::StorageFull`].
    fn from(e: rusqlite::Error) -> StoreError {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            StoreError::StorageFull
        } else {
            StoreError::Sqlite(e)
        }
    }
}

/// What [`Store::deliver_named`] resolves to: each item's id, `Ok(None)` for a recipient
/// name no user has, or why it was refused, in the order the items were given.
pub type Deliveries =
    Pin<Box<dyn Future<Output = Vec<Result<Option<ItemId>, StoreError>>> + Send + 'static>>;

/// [`Store::deliver_all`] for items addressed by name: each name is looked up once
/// ([`Store::user_id`]), an unknown one answers `Ok(None)` without touching the others, and
/// the rest are delivered together. Blocks; [`Store::deliver_named`]'s default runs it on
/// the blocking pool.
pub fn deliver_all_named<S: Store + ?Sized>(
    store: &S,
    from: UserId,
    items_for: Vec<(String, NewItem)>,
    quota: u64,
) -> Vec<Result<Option<ItemId>, StoreError>> {
    let mut known: Vec<(String, Option<UserId>)> = Vec::new();
    // Per item: its recipient's id, or the answer it already has.
    let mut plan: Vec<Result<UserId, Result<Option<ItemId>, StoreError>>> =
        Vec::with_capacity(items_for.len());
    let mut items = Vec::with_capacity(items_for.len());
    for (to, item) in items_for {
        let id = match known.iter().find(|(name, _)| *name == to) {
            Some((_, id)) => Ok(*id),
            None => store.user_id(&to).inspect(|id| known.push((to, *id))),
        };
        match id {
            Ok(Some(id)) => {
                plan.push(Ok(id));
                items.push((id, item));
            }
            Ok(None) => plan.push(Err(Ok(None))),
            Err(e) => plan.push(Err(Err(e))),
        }
    }
    let mut results = store.deliver_all(from, items, quota).into_iter();
    plan.into_iter()
        .map(|p| match p {
            Ok(_) => results
                .next()
                .unwrap_or_else(|| Err(StoreError::ResultLost))
                .map(Some),
            Err(answer) => answer,
        })
        .collect()
}

/// Persistence for users and their items.
///
/// Every method but [`Store::deliver_named`] is synchronous and may block on disk; the
/// server calls them inside `spawn_blocking`. Methods that take a `UserId` trust it: it comes from the
/// authenticated session, never from a request.
pub trait Store: Send + Sync + 'static {
    /// Creates a user; [`StoreError::UserExists`] if the name is taken, and the name must
    /// pass [`validate_user_name`].
    fn add_user(&self, name: &str, password_hash: &str) -> Result<UserId, StoreError>;

    /// Replaces a user's password hash; [`StoreError::UnknownUser`] if there is no such user.
    fn set_password(&self, name: &str, password_hash: &str) -> Result<(), StoreError>;

    /// Replaces user `id`'s password hash with `new` only while it is still `old`, so a
    /// password changed in the meantime (`rampart user passwd`) is never overwritten;
    /// returns whether it was replaced. The server uses it to move a hash to the current
    /// argon2 parameters after a successful login.
    fn upgrade_password_hash(&self, id: UserId, old: &str, new: &str) -> Result<bool, StoreError>;

    /// Every user, sorted by name.
    fn list_users(&self) -> Result<Vec<UserSummary>, StoreError>;

    /// The user's id and stored password hash, or `None` if there is no such user.
    fn credentials(&self, name: &str) -> Result<Option<(UserId, String)>, StoreError>;

    /// User `id`'s name and ticket epoch, or `None` if there is no such user. The epoch
    /// grows with every [`Store::set_password`] (not with [`Store::upgrade_password_hash`]):
    /// a resume ticket names the epoch it was issued in, and is void once it moved on.
    fn ticket_epoch(&self, id: UserId) -> Result<Option<(String, u64)>, StoreError>;

    /// The id of the user with this name, if any.
    fn user_id(&self, name: &str) -> Result<Option<UserId>, StoreError>;

    /// Bytes currently charged to this user (the items they sent that still exist).
    fn usage(&self, user: UserId) -> Result<u64, StoreError>;

    /// Commits a new item for `to`, sent by `from`, charging its size to the SENDER's quota,
    /// atomically (check + insert in one IMMEDIATE transaction). Returns only after the commit is durable.
    fn deliver(
        &self,
        from: UserId,
        to: UserId,
        item: NewItem,
        quota: u64,
    ) -> Result<ItemId, StoreError>;

    /// Commits several items sent by `from`, in order, exactly as if [`Store::deliver`] were
    /// called for each in turn (each is charged against the quota after the ones before it),
    /// and returns each one's result in the same order. One failing leaves the others. A
    /// store may make them durable with a single commit; it returns only after every
    /// successful one is durable.
    fn deliver_all(
        &self,
        from: UserId,
        items: Vec<(UserId, NewItem)>,
        quota: u64,
    ) -> Vec<Result<ItemId, StoreError>> {
        items
            .into_iter()
            .map(|(to, item)| self.deliver(from, to, item, quota))
            .collect()
    }

    /// Delivers `items` from `from`, each to the user its name names, as
    /// [`Store::deliver_all`] does (in order, each charged after the ones before it, one
    /// commit where the store can), and resolves once every item is durably committed or
    /// refused: `Ok(None)` for a name no user has. For async callers: the calling thread
    /// never blocks. The default resolves the names and runs [`Store::deliver_all`] on
    /// tokio's blocking pool ([`deliver_all_named`]); [`SqliteStore`] queues the items for
    /// its group commit instead, so no thread waits per delivery.
    fn deliver_named(
        self: Arc<Self>,
        from: UserId,
        items: Vec<(String, NewItem)>,
        quota: u64,
    ) -> Deliveries {
        let n = items.len();
        Box::pin(async move {
            if crate::sim::active() {
                return deliver_all_named(&*self, from, items, quota);
            }
            tokio::task::spawn_blocking(move || deliver_all_named(&*self, from, items, quota))
                .await
                .unwrap_or_else(|_| (0..n).map(|_| Err(StoreError::ResultLost)).collect())
        })
    }

    /// Up to `limit` of the owner's items with an id greater than `after`, in ascending id order.
    fn inbox(
        &self,
        owner: UserId,
        after: ItemId,
        limit: u32,
    ) -> Result<Vec<InboxEntry>, StoreError>;

    /// None both when the id does not exist and when it belongs to someone else (no enumeration oracle).
    fn item(&self, owner: UserId, id: ItemId) -> Result<Option<Item>, StoreError>;
    /// The owner of an item, if it exists. Lets the server tell "not yours" (denied and
    /// recorded as a tampering signal) from "does not exist"; item ids are sequential, so
    /// existence is not a secret worth hiding.
    fn item_owner(&self, id: ItemId) -> Result<Option<UserId>, StoreError>;
    /// Whether `id` was ever handed out to an item, which may since have been deleted. Lets
    /// the server tell a stale id (an item deleted since, a client's cache) from one no item
    /// ever had (an enumeration past the end; a firewall signal). Ids are handed out in
    /// increasing order, so this is `id` against the highest one handed out so far.
    fn item_id_issued(&self, id: ItemId) -> Result<bool, StoreError>;

    /// Deletes the owner's item, frees the sender's quota; returns the blob ids that are no longer referenced (caller removes the files). None if not the owner's.
    fn delete(&self, owner: UserId, id: ItemId) -> Result<Option<Vec<String>>, StoreError>;

    /// Every blob id referenced by some item (used to sweep orphans at start-up).
    fn referenced_blobs(&self) -> Result<Vec<String>, StoreError>;
}

/// Refuses an empty password hash, with which anyone could log in.
pub(crate) fn check_password_hash(hash: &str) -> Result<(), StoreError> {
    if hash.is_empty() {
        return Err(StoreError::EmptyPasswordHash);
    }
    Ok(())
}

/// Converts a size for storage; both databases' integers are signed 64-bit.
pub(crate) fn size_to_sql(size: u64) -> Result<i64, StoreError> {
    i64::try_from(size).map_err(|_| StoreError::InvalidItem(format!("size {size} is too large")))
}

/// Converts a stored non-negative integer back, treating a negative value as corruption.
pub(crate) fn sql_to_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative {what} {value}")))
}

/// Checks a blob reference before it is stored: its id later becomes a path, so a forged
/// one must never get into the database.
pub(crate) fn check_blob(blob: &BlobRef) -> Result<(), StoreError> {
    if !is_valid_blob_id(&blob.blob_id) {
        return Err(StoreError::InvalidBlobId(blob.blob_id.clone()));
    }
    size_to_sql(blob.size)?;
    Ok(())
}

/// Whether `id` is exactly 32 lower-case hex characters, the only shape a blob id can have.
///
/// Everything that turns a blob id into a path checks this first, so a forged id such as
/// `../../x` can never reach the file system.
pub fn is_valid_blob_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(size: u64) -> BlobRef {
        BlobRef {
            blob_id: "0".repeat(32),
            name: "a".into(),
            size,
            digest: [0; 32],
        }
    }

    #[test]
    fn kind_round_trips_through_u8() -> Result<(), StoreError> {
        for kind in [ItemKind::Message, ItemKind::Mail, ItemKind::File] {
            assert_eq!(ItemKind::try_from(kind as u8)?, kind);
        }
        assert!(matches!(
            ItemKind::try_from(0),
            Err(StoreError::UnknownKind(0))
        ));
        assert!(matches!(
            ItemKind::try_from(4),
            Err(StoreError::UnknownKind(4))
        ));
        assert_eq!(ItemKind::Mail.as_str(), "mail");
        Ok(())
    }

    #[test]
    fn item_sizes() {
        assert_eq!(
            NewItem::Message {
                text: "héllo".into()
            }
            .size(),
            6
        );
        let mail = NewItem::Mail {
            subject: "ab".into(),
            body: "cde".into(),
            attachments: vec![blob(10), blob(5)],
        };
        assert_eq!(mail.size(), 20);
        assert_eq!(NewItem::File(blob(7)).size(), 7);
        let huge = NewItem::Mail {
            subject: String::new(),
            body: String::new(),
            attachments: vec![blob(u64::MAX), blob(u64::MAX)],
        };
        assert_eq!(huge.size(), u64::MAX);
    }

    #[test]
    fn blob_id_shape() {
        assert!(is_valid_blob_id("0123456789abcdef0123456789abcdef"));
        assert!(!is_valid_blob_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!is_valid_blob_id("0123456789abcdef0123456789abcde"));
        assert!(!is_valid_blob_id("../../../../../../../../etc/pass"));
        assert!(!is_valid_blob_id(""));
    }

    #[test]
    fn inbox_entry_serializes_kind_as_word() -> Result<(), serde_json::Error> {
        let entry = InboxEntry {
            id: 1,
            kind: ItemKind::File,
            from: "a".into(),
            size: 2,
            received_at_ms: 3,
            title: "t".into(),
        };
        let json = serde_json::to_string(&entry)?;
        assert!(json.contains("\"kind\":\"file\""), "{json}");
        Ok(())
    }
}
