//! A [`Store`] on PostgreSQL, for several servers that share one database (`store.url`,
//! docs/FLEET.md). SQLite ([`crate::store::SqliteStore`]) stays the default.
//!
//! # Tables
//!
//! The same three as the SQLite store, with the same meaning: `users`, `items` and
//! `item_blobs` (see `src/store/sqlite/mod.rs`). Text a user sent (titles, bodies, blob
//! names) is stored as `bytea`, because PostgreSQL's `text` refuses the NUL character that
//! a message may hold. `items.id` is a `bigserial`: a sequence never hands out an id twice,
//! even after a delete or a rolled-back insert, as SQLite's `AUTOINCREMENT` does not either.
//!
//! # Migrations
//!
//! `rampart_schema(version)` holds the schema version. [`MIGRATIONS`] is append-only:
//! migration `i` moves the schema from version `i` to `i + 1`. Opening runs the missing
//! ones and the version bump in one transaction under an advisory lock, so servers started
//! together migrate once and a failure leaves the old version intact.
//!
//! # Concurrency
//!
//! Every check-then-change runs in one transaction that locks the rows it checks: a
//! delivery locks its sender's `users` row (`FOR NO KEY UPDATE`, which does not conflict
//! with the key-share lock the recipient's foreign key takes, so two users writing to each
//! other cannot deadlock) before it reads the usage, and a delete locks its item row. Any
//! number of servers may deliver and delete at once; the quota holds across all of them.
//! A transaction PostgreSQL aborts for a deadlock or a serialization failure is retried.
//!
//! # Durability and failures
//!
//! A call returns only after its commit did, and PostgreSQL's default
//! `synchronous_commit = on` makes a commit durable before it answers. A connection that
//! fails is dropped and the next call opens a new one, so the store recovers by itself when
//! the database comes back; until then each call fails with [`StoreError::Database`].
//!
//! # Blobs
//!
//! [`PgBlobs`] keeps blobs in the same database, in 256 KiB chunks (`blobs`,
//! `blob_chunks`; see `src/store/postgres/blobs.rs`), on this store's connections, so that
//! every server of a fleet reads the files any of them took. `store.blobs = "local"` keeps
//! them in each server's data directory instead.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::{Client, IsolationLevel, NoTls, Row, Transaction};

use super::{
    check_blob, check_password_hash, is_valid_blob_id, size_to_sql, sql_to_u64, validate_user_name,
    BlobRef, InboxEntry, Item, ItemId, ItemKind, NewItem, Store, StoreError, UserId, UserSummary,
};

mod blobs;

pub use blobs::{PgBlobs, CHUNK_BYTES, STALE_UPLOAD_AGE};

/// Schema migrations, in order; see the module docs. Append only.
pub const MIGRATIONS: &[&str] = &[
    // 1: users, items and the blobs items refer to, as in the SQLite store's version 3.
    "CREATE TABLE users (
        id            BIGSERIAL PRIMARY KEY,
        name          TEXT   NOT NULL UNIQUE,
        password_hash TEXT   NOT NULL CHECK (password_hash <> ''),
        created_at_ms BIGINT NOT NULL,
        usage_bytes   BIGINT NOT NULL DEFAULT 0 CHECK (usage_bytes >= 0),
        ticket_epoch  BIGINT NOT NULL DEFAULT 0 CHECK (ticket_epoch >= 0)
    );
    CREATE TABLE items (
        id             BIGSERIAL PRIMARY KEY,
        owner          BIGINT   NOT NULL REFERENCES users(id),
        sender         BIGINT   NOT NULL REFERENCES users(id),
        kind           SMALLINT NOT NULL CHECK (kind IN (1, 2, 3)),
        size           BIGINT   NOT NULL CHECK (size >= 0),
        received_at_ms BIGINT   NOT NULL,
        title          BYTEA    NOT NULL,
        body           BYTEA    NOT NULL
    );
    CREATE INDEX items_by_owner ON items(owner, id);
    CREATE INDEX items_by_sender ON items(sender);
    CREATE TABLE item_blobs (
        item_id BIGINT  NOT NULL REFERENCES items(id) ON DELETE CASCADE,
        idx     INTEGER NOT NULL,
        blob_id TEXT    NOT NULL,
        name    BYTEA   NOT NULL,
        size    BIGINT  NOT NULL CHECK (size >= 0),
        digest  BYTEA   NOT NULL CHECK (length(digest) = 32),
        PRIMARY KEY (item_id, idx)
    );
    CREATE INDEX item_blobs_by_blob ON item_blobs(blob_id);",
    // 2: the firewall decisions the servers of a fleet share (src/fleet.rs).
    "CREATE TABLE fleet_decisions (
        id         BIGSERIAL PRIMARY KEY,
        origin     TEXT   NOT NULL,
        source     TEXT   NOT NULL,
        action     TEXT   NOT NULL CHECK (action IN ('block', 'unblock')),
        until_ms   BIGINT NOT NULL,
        reason     TEXT   NOT NULL,
        created_ms BIGINT NOT NULL
    );
    CREATE INDEX fleet_decisions_in_force ON fleet_decisions(until_ms);",
    // 3: secrets every server of a fleet must share (the key resume tickets are signed
    // with), so that a ticket one server issued is honoured by the others.
    "CREATE TABLE fleet_secrets (
        name  TEXT  PRIMARY KEY,
        value BYTEA NOT NULL
    );",
    // 4: blobs, chunked, so that every server of a fleet reads what any of them took
    // (src/store/postgres/blobs.rs).
    "CREATE TABLE blobs (
        id         TEXT        PRIMARY KEY CHECK (id ~ '^[0-9a-f]{32}$'),
        state      TEXT        NOT NULL CHECK (state IN ('staged', 'committed', 'lost')),
        size       BIGINT      CHECK (size >= 0),
        digest     BYTEA       CHECK (length(digest) = 32),
        created_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE INDEX blobs_by_state ON blobs(state, created_at);
    CREATE TABLE blob_chunks (
        blob_id TEXT    NOT NULL REFERENCES blobs(id) ON DELETE CASCADE,
        seq     INTEGER NOT NULL CHECK (seq >= 0),
        data    BYTEA   NOT NULL,
        PRIMARY KEY (blob_id, seq)
    );
    ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;",
    // 5: evidence the servers of a fleet share, so that each one's score for a source sums
    // what all of them saw (src/fleet.rs): a signal's points per source and poll.
    "ALTER TABLE fleet_decisions
        DROP CONSTRAINT fleet_decisions_action_check,
        ADD CONSTRAINT fleet_decisions_action_check
            CHECK (action IN ('block', 'unblock', 'evidence')),
        ADD COLUMN points DOUBLE PRECISION NOT NULL DEFAULT 0;",
    // 6: the activity windows each server's detector closed, so that the fleet's activity
    // can be exported and analysed as a whole (src/fleet.rs, `rampart activity export
    // --store-url`): one row per server, source and window, its features in schema order.
    "CREATE TABLE fleet_windows (
        id              BIGSERIAL          PRIMARY KEY,
        origin          TEXT               NOT NULL,
        source          TEXT               NOT NULL,
        window_start_ms BIGINT             NOT NULL,
        window_ms       BIGINT             NOT NULL CHECK (window_ms > 0),
        feature_schema  INTEGER            NOT NULL,
        features        DOUBLE PRECISION[] NOT NULL
    );
    CREATE INDEX fleet_windows_by_start ON fleet_windows(window_start_ms);",
];

/// The advisory lock key that serializes migrations across servers ("rampart" in ASCII).
const MIGRATION_LOCK: i64 = 0x0072_616d_7061_7274;

/// The first key of the transaction-scoped advisory lock that orders deliveries to one
/// recipient ("inbx" in ASCII; the second key is the recipient's id, its low 32 bits: two
/// recipients that share them only wait for each other).
const INBOX_LOCK: i32 = 0x696e_6278;

/// Connections a store keeps open at most; a call that finds them all busy waits for one.
/// Opening one per call under load costs a connection setup per delivery (64 clients ran
/// at 635 messages a second that way), and PostgreSQL allows 100 by default for the whole
/// fleet.
pub const MAX_CONNECTIONS: usize = 16;

/// A pooled connection idle for longer than this is checked with a round trip before use.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// How long opening a connection may take when the URL does not say
/// (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A transaction aborted for a deadlock or a serialization failure is run again up to this
/// many times in all.
const ATTEMPTS: u32 = 3;

/// What each item costs on top of its size ([`crate::store::ITEM_OVERHEAD_BYTES`]).
const OVERHEAD: u64 = super::ITEM_OVERHEAD_BYTES;

/// The PostgreSQL-backed [`Store`]: a pool of at most [`MAX_CONNECTIONS`] blocking
/// connections to one database.
pub struct PgStore {
    config: postgres::Config,
    /// The URL without its password, for messages.
    shown: String,
    pool: Mutex<Pool>,
    /// Signalled when a connection is returned or closed.
    freed: Condvar,
}

/// The store's connections: the ones not in use, each with when it was last returned, and
/// how many are open in all (in use or not).
#[derive(Default)]
struct Pool {
    idle: Vec<(Client, Instant)>,
    open: usize,
}

impl Drop for PgStore {
    /// Closing a blocking client blocks on its runtime, which tokio refuses on a thread
    /// that runs tasks; the last handle to a server's store may well be dropped on one.
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.pool().idle);
        off_runtime(move || drop(idle));
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

/// `url` with the password, if any, replaced by `***`, for logs and errors. Takes both
/// forms PostgreSQL accepts: a URL, and `key=value` pairs.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url
            .split(' ')
            .map(|pair| match pair.split_once('=') {
                Some(("password", _)) => "password=***",
                _ => pair,
            })
            .collect::<Vec<_>>()
            .join(" ");
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

impl From<postgres::Error> for StoreError {
    /// Out of disk on the database server is [`StoreError::StorageFull`]; anything else is
    /// [`StoreError::Database`].
    fn from(e: postgres::Error) -> StoreError {
        if e.code() == Some(&SqlState::DISK_FULL) {
            StoreError::StorageFull
        } else if let Some(db) = e.as_db_error() {
            // The server's own words: "db error" alone says nothing.
            StoreError::Database(format!("{} ({})", db.message(), db.code().code()))
        } else {
            StoreError::Database(e.to_string())
        }
    }
}

/// Whether PostgreSQL aborted the transaction only because of another one, so that running
/// it again may succeed.
fn is_retryable(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(&SqlState::T_R_DEADLOCK_DETECTED | &SqlState::T_R_SERIALIZATION_FAILURE)
    )
}

/// Why a call failed: the database said so, or the store's own checks did.
enum Failure {
    Pg(postgres::Error),
    Store(StoreError),
}

impl From<postgres::Error> for Failure {
    fn from(e: postgres::Error) -> Failure {
        Failure::Pg(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure::Store(e)
    }
}

type Attempt<T> = Result<T, Failure>;

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`; see
    /// docs/FLEET.md for the options) and brings its schema up to date. Fails with
    /// [`StoreError::SchemaTooNew`] if a newer build migrated it further.
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let shown = redact_url(url);
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Database(format!("invalid store.url {shown}: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("rampart");
        }
        let store = PgStore {
            config,
            shown,
            pool: Mutex::new(Pool::default()),
            freed: Condvar::new(),
        };
        store.run(migrate)?;
        Ok(store)
    }

    /// The URL this store connects to, without its password.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// The key resume tickets are signed with, shared by every server on this database:
    /// the first server to ask creates it. Whoever can read the database can forge tickets
    /// with it, as whoever can read a data directory can with `ticket.key`.
    pub fn shared_ticket_key(&self) -> Result<[u8; crate::store::TICKET_KEY_LEN], StoreError> {
        let mut fresh = [0u8; crate::store::TICKET_KEY_LEN];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut fresh);
        let stored: Vec<u8> = self.run(|c| {
            c.execute(
                "INSERT INTO fleet_secrets (name, value) VALUES ('ticket_key', $1)
                 ON CONFLICT (name) DO NOTHING",
                &[&&fresh[..]],
            )?;
            Ok(c.query_one(
                "SELECT value FROM fleet_secrets WHERE name = 'ticket_key'",
                &[],
            )?
            .get(0))
        })?;
        stored.try_into().map_err(|v: Vec<u8>| {
            StoreError::Corrupt(format!(
                "the shared ticket key is {} bytes, not {}",
                v.len(),
                crate::store::TICKET_KEY_LEN
            ))
        })
    }

    /// The schema version the database is at.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.run(|c| {
            Ok(c.query_one("SELECT version FROM rampart_schema", &[])?
                .get(0))
        })
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        // The pool holds whole clients and a count; a panic elsewhere cannot leave it
        // half-changed.
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection for one call: an idle one, checked if it idled long; else a new one if
    /// fewer than [`MAX_CONNECTIONS`] are open; else the next one returned.
    fn acquire(&self) -> Result<Client, StoreError> {
        let mut pool = self.pool();
        loop {
            if let Some((mut c, since)) = pool.idle.pop() {
                drop(pool);
                // A connection idle for a while may have been ended by the database (a
                // restart, an idle timeout) without a word: ask before trusting it, so
                // that the first call after a restart does not fail on a dead connection.
                if !c.is_closed()
                    && (since.elapsed() < CHECK_IDLE_AFTER || c.is_valid(CONNECT_TIMEOUT).is_ok())
                {
                    return Ok(c);
                }
                drop(c);
                pool = self.pool();
                pool.open = pool.open.saturating_sub(1);
                continue;
            }
            if pool.open < MAX_CONNECTIONS {
                pool.open += 1;
                drop(pool);
                let connected = self.connect();
                if connected.is_err() {
                    self.pool().open -= 1;
                    self.freed.notify_one();
                }
                return connected;
            }
            pool = self
                .freed
                .wait(pool)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Gives a connection back after a call; a broken one is closed and frees its place.
    fn release(&self, client: Client) {
        if client.is_closed() {
            drop(client);
            self.pool().open -= 1;
        } else {
            self.pool().idle.push((client, Instant::now()));
        }
        self.freed.notify_one();
    }

    fn connect(&self) -> Result<Client, StoreError> {
        self.config
            .connect(NoTls)
            .map_err(|e| StoreError::Database(format!("cannot connect to {}: {e}", self.shown)))
    }

    /// Runs `f` on a pooled connection, again on a deadlock or serialization failure. A
    /// connection that broke is dropped, so the next call opens a fresh one.
    fn run<T: Send>(
        &self,
        f: impl FnMut(&mut Client) -> Attempt<T> + Send,
    ) -> Result<T, StoreError> {
        off_runtime(|| self.run_here(f))
    }

    fn run_here<T>(&self, mut f: impl FnMut(&mut Client) -> Attempt<T>) -> Result<T, StoreError> {
        let mut lease = Lease {
            store: self,
            client: Some(self.acquire()?),
        };
        let Some(client) = lease.client.as_mut() else {
            return Err(StoreError::ResultLost);
        };
        let mut attempt = 1;
        let result = loop {
            match f(client) {
                Err(Failure::Pg(e)) if is_retryable(&e) && attempt < ATTEMPTS => attempt += 1,
                Ok(v) => break Ok(v),
                Err(Failure::Pg(e)) => break Err(StoreError::from(e)),
                Err(Failure::Store(e)) => break Err(e),
            }
        };
        drop(lease);
        result
    }
}

/// A connection taken from the pool, given back when dropped (after a panic too, so that
/// the pool never counts a connection nobody holds).
struct Lease<'a> {
    store: &'a PgStore,
    client: Option<Client>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            self.store.release(c);
        }
    }
}

/// Runs `f` where the blocking client may block: the client drives its connection with a
/// runtime of its own, which tokio refuses to start on a thread that runs async tasks. The
/// server calls the store on the blocking pool, where `f` runs as it is; a call from a task
/// (opening the store at start-up) moves off the runtime first.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Err(_) => f(),
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        // block_in_place needs the multi-threaded runtime: a thread of its own instead.
        Ok(_) => std::thread::scope(|s| match s.spawn(f).join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
    }
}

/// Brings the schema up to date under the migration lock; see the module docs.
fn migrate(client: &mut Client) -> Attempt<()> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS rampart_schema (version BIGINT NOT NULL)")?;
    let found: Option<i64> = tx
        .query_opt("SELECT version FROM rampart_schema", &[])?
        .map(|r| r.get(0));
    let version = match found {
        Some(v) => v,
        None => {
            tx.execute("INSERT INTO rampart_schema (version) VALUES (0)", &[])?;
            0
        }
    };
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(StoreError::SchemaTooNew {
            found: version,
            supported,
        }
        .into());
    }
    for sql in MIGRATIONS
        .iter()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        tx.batch_execute(sql)?;
    }
    tx.execute("UPDATE rampart_schema SET version = $1", &[&supported])?;
    tx.commit()?;
    Ok(())
}

fn to_text(bytes: Vec<u8>, what: &str) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|_| StoreError::Corrupt(format!("{what} is not UTF-8")))
}

/// An item split into its columns, its blob references checked before anything is stored
/// (their ids later become paths).
struct Columns {
    kind: ItemKind,
    size: u64,
    charge: u64,
    title: String,
    body: String,
    blobs: Vec<BlobRef>,
}

impl Columns {
    fn new(item: NewItem) -> Result<Columns, StoreError> {
        let kind = item.kind();
        let size = item.size();
        let charge = item.charge();
        let (title, body, blobs) = item.into_columns();
        for blob in &blobs {
            check_blob(blob)?;
        }
        Ok(Columns {
            kind,
            size,
            charge,
            title,
            body,
            blobs,
        })
    }
}

/// One delivery in `tx`: the sender's row locked, the recipient checked, the quota
/// checked, the item and its blobs inserted and the usage charged.
fn deliver_in(
    tx: &mut Transaction<'_>,
    from: UserId,
    to: UserId,
    item: &Columns,
    quota: u64,
) -> Attempt<ItemId> {
    let used = tx
        .query_opt(
            "SELECT usage_bytes FROM users WHERE id = $1 FOR NO KEY UPDATE",
            &[&from],
        )?
        .ok_or(StoreError::UnknownUserId(from))?;
    let used = sql_to_u64(used.get(0), "usage")?;
    if tx
        .query_opt("SELECT 1 FROM users WHERE id = $1", &[&to])?
        .is_none()
    {
        return Err(StoreError::UnknownUserId(to).into());
    }
    let total = used
        .checked_add(item.charge)
        .filter(|&total| total <= quota)
        .ok_or(StoreError::QuotaExceeded {
            used,
            requested: item.charge,
            quota,
        })?;
    // Checked after the quota, as the SQLite store does: an absurd size is over quota.
    let total = size_to_sql(total)?;
    let size = size_to_sql(item.size)?;
    // Deliveries to one recipient take their ids and commit one at a time, so an inbox's ids
    // become visible in order: otherwise a later id from another sender could commit first,
    // and a client paging with LIST_INBOX `after` past it would never see the earlier one.
    // Held until commit; taken after the sender's row, as every delivery does, so the two
    // locks cannot deadlock.
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&INBOX_LOCK, &(to as i32)],
    )?;
    let id: i64 = tx
        .query_one(
            "INSERT INTO items (owner, sender, kind, size, received_at_ms, title, body)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            &[
                &to,
                &from,
                &i16::from(item.kind as u8),
                &size,
                &crate::sim::now_ms(),
                &item.title.as_bytes(),
                &item.body.as_bytes(),
            ],
        )?
        .get(0);
    for (idx, blob) in (0i32..).zip(&item.blobs) {
        tx.execute(
            "INSERT INTO item_blobs (item_id, idx, blob_id, name, size, digest)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &id,
                &idx,
                &blob.blob_id,
                &blob.name.as_bytes(),
                &size_to_sql(blob.size)?,
                &&blob.digest[..],
            ],
        )?;
    }
    tx.execute(
        "UPDATE users SET usage_bytes = $2 WHERE id = $1",
        &[&from, &total],
    )?;
    Ok(sql_to_u64(id, "item id")?)
}

const ITEM_COLUMNS: &str = "i.id, i.kind, u.name, i.size, i.received_at_ms, i.title, i.body";

/// An inbox entry and the item's body from a row of [`ITEM_COLUMNS`].
fn entry(row: &Row) -> Result<(InboxEntry, String), StoreError> {
    let kind: i16 = row.get(1);
    let kind = u8::try_from(kind)
        .ok()
        .and_then(|k| ItemKind::try_from(k).ok())
        .ok_or_else(|| StoreError::Corrupt(format!("unknown item kind {kind}")))?;
    let entry = InboxEntry {
        id: sql_to_u64(row.get(0), "item id")?,
        kind,
        from: row.get(2),
        size: sql_to_u64(row.get(3), "item size")?,
        received_at_ms: row.get(4),
        title: to_text(row.get(5), "an item title")?,
    };
    Ok((entry, to_text(row.get(6), "an item body")?))
}

fn item_blobs(tx: &mut Transaction<'_>, id: i64) -> Attempt<Vec<BlobRef>> {
    let rows = tx.query(
        "SELECT blob_id, name, size, digest FROM item_blobs WHERE item_id = $1 ORDER BY idx",
        &[&id],
    )?;
    let mut blobs = Vec::with_capacity(rows.len());
    for row in rows {
        let blob_id: String = row.get(0);
        if !is_valid_blob_id(&blob_id) {
            return Err(
                StoreError::Corrupt(format!("stored blob id {blob_id:?} is malformed")).into(),
            );
        }
        let digest: Vec<u8> = row.get(3);
        let digest: [u8; 32] = digest
            .try_into()
            .map_err(|_| StoreError::Corrupt(format!("blob {blob_id} has a malformed digest")))?;
        blobs.push(BlobRef {
            name: to_text(row.get(1), "a blob name")?,
            size: sql_to_u64(row.get(2), "blob size")?,
            digest,
            blob_id,
        });
    }
    Ok(blobs)
}

impl Store for PgStore {
    fn add_user(&self, name: &str, password_hash: &str) -> Result<UserId, StoreError> {
        validate_user_name(name)?;
        check_password_hash(password_hash)?;
        self.run(|c| {
            let inserted = c.query_one(
                "INSERT INTO users (name, password_hash, created_at_ms) VALUES ($1, $2, $3)
                 RETURNING id",
                &[&name, &password_hash, &crate::sim::now_ms()],
            );
            match inserted {
                Ok(row) => Ok(row.get(0)),
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    Err(StoreError::UserExists(name.to_owned()).into())
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    fn set_password(&self, name: &str, password_hash: &str) -> Result<(), StoreError> {
        check_password_hash(password_hash)?;
        let changed = self.run(|c| {
            Ok(c.execute(
                "UPDATE users SET password_hash = $2, ticket_epoch = ticket_epoch + 1
                 WHERE name = $1",
                &[&name, &password_hash],
            )?)
        })?;
        if changed == 0 {
            return Err(StoreError::UnknownUser(name.to_owned()));
        }
        Ok(())
    }

    fn upgrade_password_hash(&self, id: UserId, old: &str, new: &str) -> Result<bool, StoreError> {
        check_password_hash(new)?;
        let changed = self.run(|c| {
            Ok(c.execute(
                "UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2",
                &[&id, &old, &new],
            )?)
        })?;
        Ok(changed == 1)
    }

    fn list_users(&self) -> Result<Vec<UserSummary>, StoreError> {
        let rows = self.run(|c| {
            Ok(c.query(
                "SELECT name, created_at_ms, usage_bytes FROM users ORDER BY name COLLATE \"C\"",
                &[],
            )?)
        })?;
        rows.iter()
            .map(|r| {
                Ok(UserSummary {
                    name: r.get(0),
                    created_at_ms: r.get(1),
                    usage_bytes: sql_to_u64(r.get(2), "usage")?,
                })
            })
            .collect()
    }

    fn credentials(&self, name: &str) -> Result<Option<(UserId, String)>, StoreError> {
        self.run(|c| {
            Ok(c.query_opt(
                "SELECT id, password_hash FROM users WHERE name = $1",
                &[&name],
            )?
            .map(|r| (r.get(0), r.get(1))))
        })
    }

    fn ticket_epoch(&self, id: UserId) -> Result<Option<(String, u64)>, StoreError> {
        let found: Option<(String, i64)> = self.run(|c| {
            Ok(
                c.query_opt("SELECT name, ticket_epoch FROM users WHERE id = $1", &[&id])?
                    .map(|r| (r.get(0), r.get(1))),
            )
        })?;
        match found {
            Some((name, epoch)) => Ok(Some((name, sql_to_u64(epoch, "ticket_epoch")?))),
            None => Ok(None),
        }
    }

    fn user_id(&self, name: &str) -> Result<Option<UserId>, StoreError> {
        self.run(|c| {
            Ok(
                c.query_opt("SELECT id FROM users WHERE name = $1", &[&name])?
                    .map(|r| r.get(0)),
            )
        })
    }

    fn usage(&self, user: UserId) -> Result<u64, StoreError> {
        let usage: Option<i64> = self.run(|c| {
            Ok(
                c.query_opt("SELECT usage_bytes FROM users WHERE id = $1", &[&user])?
                    .map(|r| r.get(0)),
            )
        })?;
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
        let item = Columns::new(item)?;
        self.run(|c| {
            let mut tx = c.transaction()?;
            let id = deliver_in(&mut tx, from, to, &item, quota)?;
            tx.commit()?;
            Ok(id)
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
        let rows = self.run(|c| {
            Ok(c.query(
                &format!(
                    "SELECT {ITEM_COLUMNS} FROM items i JOIN users u ON u.id = i.sender
                     WHERE i.owner = $1 AND i.id > $2 ORDER BY i.id LIMIT $3"
                ),
                &[&owner, &after, &i64::from(limit)],
            )?)
        })?;
        rows.iter().map(|r| Ok(entry(r)?.0)).collect()
    }

    fn item(&self, owner: UserId, id: ItemId) -> Result<Option<Item>, StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        // One snapshot for the item and its blobs, in case a delete commits between them.
        let found = self.run(|c| {
            let mut tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            // Filtering on the owner makes "not yours" and "does not exist" the same.
            let row = tx.query_opt(
                &format!(
                    "SELECT {ITEM_COLUMNS} FROM items i JOIN users u ON u.id = i.sender
                     WHERE i.id = $1 AND i.owner = $2"
                ),
                &[&id, &owner],
            )?;
            let Some(row) = row else {
                return Ok(None);
            };
            let blobs = item_blobs(&mut tx, id)?;
            tx.commit()?;
            Ok(Some((entry(&row)?, blobs)))
        })?;
        let Some(((entry, body), blobs)) = found else {
            return Ok(None);
        };
        Item::from_columns(entry, body, blobs).map(Some)
    }

    fn item_owner(&self, id: ItemId) -> Result<Option<UserId>, StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        self.run(|c| {
            Ok(
                c.query_opt("SELECT owner FROM items WHERE id = $1", &[&id])?
                    .map(|r| r.get(0)),
            )
        })
    }

    fn item_id_issued(&self, id: ItemId) -> Result<bool, StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(false);
        };
        // The sequence behind BIGSERIAL: a value taken by an insert that rolled back counts as
        // handed out, which errs towards the stale side.
        self.run(|c| {
            let row = c.query_one(
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM items_id_seq",
                &[],
            )?;
            let highest: i64 = row.get(0);
            Ok(id <= highest)
        })
    }

    fn delete(&self, owner: UserId, id: ItemId) -> Result<Option<Vec<String>>, StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        self.run(|c| {
            let mut tx = c.transaction()?;
            let Some(found) = tx.query_opt(
                "SELECT sender, size FROM items WHERE id = $1 AND owner = $2 FOR UPDATE",
                &[&id, &owner],
            )?
            else {
                return Ok(None);
            };
            let (sender, size): (i64, i64) = (found.get(0), found.get(1));
            let charge = size.saturating_add(OVERHEAD as i64);
            let blob_ids: Vec<String> = tx
                .query(
                    "SELECT blob_id FROM item_blobs WHERE item_id = $1 ORDER BY idx",
                    &[&id],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            tx.execute("DELETE FROM item_blobs WHERE item_id = $1", &[&id])?;
            tx.execute("DELETE FROM items WHERE id = $1", &[&id])?;
            let changed = tx.execute(
                "UPDATE users SET usage_bytes = usage_bytes - $2 WHERE id = $1 AND usage_bytes >= $2",
                &[&sender, &charge],
            )?;
            if changed != 1 {
                // Dropping tx rolls back: the item stays rather than the usage going wrong.
                return Err(StoreError::Corrupt(format!(
                    "usage of user {sender} is smaller than the charge of item {id}"
                ))
                .into());
            }
            let mut unreferenced = Vec::new();
            for blob_id in blob_ids {
                let used = tx
                    .query_opt(
                        "SELECT 1 FROM item_blobs WHERE blob_id = $1 LIMIT 1",
                        &[&blob_id],
                    )?
                    .is_some();
                if !used && !unreferenced.contains(&blob_id) {
                    unreferenced.push(blob_id);
                }
            }
            tx.commit()?;
            Ok(Some(unreferenced))
        })
    }

    fn referenced_blobs(&self) -> Result<Vec<String>, StoreError> {
        let rows = self.run(|c| {
            Ok(c.query(
                "SELECT DISTINCT blob_id FROM item_blobs ORDER BY blob_id",
                &[],
            )?)
        })?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::store::conformance::{
        message, pattern, suite, two_users, upload, Backend, TestResult, BIG,
    };
    use crate::store::{Blobs, NewItem};

    /// The database the PostgreSQL tests use, from this variable: a URL a superuser or a
    /// user that may create schemas connects with. Unset, they are skipped (with a note);
    /// `.ci/run` sets it to a server it starts itself.
    pub(crate) const URL_VAR: &str = "RAMPART_TEST_POSTGRES";

    /// A schema of its own in the test database, dropped at the end, and the URL that
    /// puts a store in it.
    struct Postgres {
        base: String,
        schema: String,
        url: String,
        blobs: Blobs,
    }

    impl Postgres {
        /// A client on the test's schema, to look at its tables.
        fn client(&self) -> Result<Client, postgres::Error> {
            Client::connect(&self.url, NoTls)
        }

        /// Rows in the blob tables.
        fn blob_rows(&self) -> Result<i64, Box<dyn std::error::Error>> {
            Ok(self
                .client()?
                .query_one(
                    "SELECT (SELECT count(*) FROM blobs) + (SELECT count(*) FROM blob_chunks)",
                    &[],
                )?
                .get(0))
        }

        /// Makes the blobs `ids` (all of them with `None`) older than the safe age.
        fn backdate(&self, ids: Option<&[&str]>) -> TestResult {
            let older = "created_at - interval '25 hours'";
            let mut c = self.client()?;
            match ids {
                Some(ids) => c.execute(
                    &format!("UPDATE blobs SET created_at = {older} WHERE id = ANY($1)"),
                    &[&ids],
                )?,
                None => c.execute(&format!("UPDATE blobs SET created_at = {older}"), &[])?,
            };
            Ok(())
        }
    }

    impl Backend for Postgres {
        type S = PgStore;
        fn open(&self) -> Result<PgStore, StoreError> {
            PgStore::open(&self.url)
        }
        fn blobs(&self) -> &Blobs {
            &self.blobs
        }
        fn blob_leftovers(&self) -> Result<usize, Box<dyn std::error::Error>> {
            Ok(usize::try_from(self.blob_rows()?)?)
        }
        fn age_blobs(&self) -> TestResult {
            self.backdate(None)
        }
    }

    impl Drop for Postgres {
        fn drop(&mut self) {
            if let Ok(mut c) = Client::connect(&self.base, NoTls) {
                let _ = c.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema));
            }
        }
    }

    fn postgres() -> Result<Option<Postgres>, Box<dyn std::error::Error>> {
        let Ok(base) = std::env::var(URL_VAR) else {
            eprintln!(
                "skipped: set {URL_VAR} to a PostgreSQL URL to run the PostgreSQL store tests"
            );
            return Ok(None);
        };
        let schema = format!("rampart_test_{:016x}", rand::random::<u64>());
        let mut admin = Client::connect(&base, NoTls)
            .map_err(|e| format!("{URL_VAR}={}: {e}", redact_url(&base)))?;
        admin.batch_execute(&format!("CREATE SCHEMA {schema}"))?;
        let sep = if base.contains('?') { '&' } else { '?' };
        // Its own application name, so a test can find its store's connections.
        let url =
            format!("{base}{sep}options=-c%20search_path%3D{schema}&application_name={schema}");
        let blobs = Blobs::new(Arc::new(PgBlobs::new(Arc::new(PgStore::open(&url)?))));
        Ok(Some(Postgres {
            base,
            schema,
            url,
            blobs,
        }))
    }

    suite!(postgres);

    #[test]
    fn deliveries_to_one_inbox_become_visible_in_id_order() -> TestResult {
        let Some(pg) = postgres()? else {
            return Ok(());
        };
        let store = Arc::new(pg.open()?);
        let (alice, bob) = two_users(&*store)?;
        let carol = store.add_user("carol", "h-c")?;
        // alice's delivery to bob is inserted but not committed yet.
        let mut client = pg.client()?;
        let mut tx = client.transaction()?;
        let item = Columns::new(message("first"))?;
        let first =
            deliver_in(&mut tx, alice, bob, &item, BIG).map_err(|_| "the first delivery failed")?;
        // carol's delivery to bob waits for it, so that no reader sees the later id first.
        let (done, waiting) = std::sync::mpsc::channel();
        let s = Arc::clone(&store);
        let second = std::thread::spawn(move || {
            let id = s.deliver(carol, bob, message("second"), BIG);
            let _ = done.send(());
            id
        });
        assert!(
            waiting
                .recv_timeout(std::time::Duration::from_millis(300))
                .is_err(),
            "the second delivery committed while the first was open"
        );
        assert!(store.inbox(bob, 0, 10)?.is_empty());
        tx.commit()?;
        let second = second.join().map_err(|_| "the delivery panicked")??;
        assert!(second > first, "{second} after {first}");
        let ids: Vec<ItemId> = store.inbox(bob, 0, 10)?.iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![first, second]);
        Ok(())
    }

    #[test]
    fn a_blob_one_server_committed_is_read_through_another() -> TestResult {
        let Some(pg) = postgres()? else {
            return Ok(());
        };
        // Two servers: a store and its blobs each, on one database.
        let (one, two) = (Arc::new(pg.open()?), Arc::new(pg.open()?));
        let blobs_one = Blobs::new(Arc::new(PgBlobs::new(Arc::clone(&one))));
        let blobs_two = Blobs::new(Arc::new(PgBlobs::new(Arc::clone(&two))));
        let (alice, bob) = two_users(&*one)?;
        let content = pattern(2 * CHUNK_BYTES + 99);
        let file = upload(&blobs_one, &content, 65_536)?;
        let id = one.deliver(alice, bob, NewItem::File(file.clone()), BIG)?;
        // The other server finds the item, and its bytes.
        let item = two.item(bob, id)?.ok_or("the item is missing")?;
        assert_eq!(item.content, crate::store::ItemContent::File(file.clone()));
        let whole = blobs_two.read_at(&file.blob_id, 0, usize::MAX)?;
        assert!(whole == content);
        assert_eq!(*blake3::hash(&whole).as_bytes(), file.digest);
        let at = CHUNK_BYTES - 1;
        assert!(blobs_two.read_at(&file.blob_id, at as u64, 2)? == content[at..at + 2]);
        // A delete through the second server frees the blob for both.
        assert_eq!(two.delete(bob, id)?, Some(vec![file.blob_id.clone()]));
        blobs_two.remove(&file.blob_id)?;
        assert!(matches!(
            blobs_one.read_at(&file.blob_id, 0, 1),
            Err(StoreError::BlobNotFound(_))
        ));
        Ok(())
    }

    #[test]
    fn crash_leftovers_are_swept_only_once_old() -> TestResult {
        let Some(pg) = postgres()? else {
            return Ok(());
        };
        let blobs = &pg.blobs;
        let none: std::collections::HashSet<String> = Default::default();
        // A crash in the middle of an upload: its writer never drops.
        let mut crashed = blobs.stage()?;
        crashed.append(&pattern(CHUNK_BYTES + 5))?;
        let crashed_id = crashed.id().to_owned();
        std::mem::forget(crashed);
        // Another server's upload in progress, and a blob committed but not delivered yet.
        let mut uploading = blobs.stage()?;
        uploading.append(b"in flight")?;
        let waiting = upload(blobs, b"about to be delivered", 8)?;
        let rows = pg.blob_rows()?;
        assert_eq!(blobs.sweep_orphans(&none)?, 0, "young: left alone");
        assert_eq!(pg.blob_rows()?, rows);
        // A day later, the crashed upload goes; the others are the same age as before.
        pg.backdate(Some(&[&crashed_id]))?;
        assert_eq!(blobs.sweep_orphans(&none)?, 0);
        // Its row and its one full chunk (the 5 bytes after it died in its buffer).
        assert_eq!(pg.blob_rows()?, rows - 2);
        let done = uploading.commit("f")?;
        assert_eq!(blobs.read_at(&done.blob_id, 0, 100)?, b"in flight");
        // An old unreferenced blob is set aside as lost, and stays readable.
        pg.backdate(Some(&[&waiting.blob_id]))?;
        assert_eq!(blobs.sweep_orphans(&none)?, 1);
        assert_eq!(blobs.read_at(&waiting.blob_id, 0, 5)?, b"about");
        let state: String = pg
            .client()?
            .query_one("SELECT state FROM blobs WHERE id = $1", &[&waiting.blob_id])?
            .get(0);
        assert_eq!(state, "lost");
        Ok(())
    }

    #[test]
    fn a_commit_whose_rows_were_swept_fails_cleanly() -> TestResult {
        let Some(pg) = postgres()? else {
            return Ok(());
        };
        let blobs = &pg.blobs;
        let mut staged = blobs.stage()?;
        staged.append(&pattern(CHUNK_BYTES + 1))?;
        // Another server started, and took this upload for a day-old leftover.
        pg.client()?
            .execute("DELETE FROM blobs WHERE id = $1", &[&staged.id()])?;
        assert!(matches!(
            staged.commit("late"),
            Err(StoreError::NotCommitted(why)) if why.contains("not committed")
        ));
        assert_eq!(pg.blob_rows()?, 0);
        Ok(())
    }

    #[test]
    fn the_schema_is_migrated_once_and_a_newer_one_is_refused() -> TestResult {
        let Some(pg) = postgres()? else {
            return Ok(());
        };
        let store = pg.open()?;
        assert_eq!(store.schema_version()?, MIGRATIONS.len() as i64);
        let (alice, bob) = two_users(&store)?;
        store.deliver(alice, bob, message("kept"), BIG)?;
        // A second server opening the same database migrates nothing and sees the data.
        let again = pg.open()?;
        assert_eq!(again.inbox(bob, 0, 10)?.len(), 1);
        let mut c = Client::connect(&pg.url, NoTls)?;
        c.execute("UPDATE rampart_schema SET version = version + 1", &[])?;
        assert!(matches!(
            pg.open(),
            Err(StoreError::SchemaTooNew { found, supported })
                if found == supported + 1 && supported == MIGRATIONS.len() as i64
        ));
        Ok(())
    }

    #[test]
    fn a_lost_connection_is_replaced_on_the_next_call() -> TestResult {
        let Some(pg) = postgres()? else {
            return Ok(());
        };
        let store = pg.open()?;
        let (alice, bob) = two_users(&store)?;
        // Ends every connection of this test's store, as a database restart would.
        let mut admin = Client::connect(&pg.base, NoTls)?;
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&pg.schema],
        )?;
        // The pooled connection is dead: this call may fail, and says so clearly...
        let first = store.deliver(alice, bob, message("a"), BIG);
        if let Err(e) = &first {
            assert!(matches!(e, StoreError::Database(_)), "{e:?}");
        }
        // ...and the next one runs on a fresh connection.
        store.deliver(alice, bob, message("b"), BIG)?;
        assert_eq!(
            store.inbox(bob, 0, 10)?.len(),
            1 + usize::from(first.is_ok())
        );
        Ok(())
    }

    #[test]
    fn an_unreachable_database_is_a_clear_error() {
        // Port 1 on loopback: nothing listens there.
        match PgStore::open("postgres://rampart:secret@127.0.0.1:1/rampart?connect_timeout=2") {
            Err(StoreError::Database(why)) => {
                assert!(why.contains("cannot connect to"), "{why}");
                assert!(!why.contains("secret"), "the password leaked: {why}");
            }
            other => panic!("{other:?}"),
        }
        match PgStore::open("postgres://127.0.0.1:notaport/x") {
            Err(StoreError::Database(why)) => assert!(why.contains("invalid store.url"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_url_is_shown_without_its_password() {
        assert_eq!(
            redact_url("postgres://rampart:s3cr@t@db.local:5432/rampart?sslmode=disable"),
            "postgres://rampart:***@db.local:5432/rampart?sslmode=disable"
        );
        assert_eq!(
            redact_url("postgres://rampart@127.0.0.1/rampart"),
            "postgres://rampart@127.0.0.1/rampart"
        );
        assert_eq!(
            redact_url("postgres://127.0.0.1/db?user=a@b"),
            "postgres://127.0.0.1/db?user=a@b"
        );
        assert_eq!(
            redact_url("host=/tmp user=x password=hunter2 dbname=r"),
            "host=/tmp user=x password=*** dbname=r"
        );
    }
}
