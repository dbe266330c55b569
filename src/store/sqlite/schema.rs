//! The database file, its connections and its schema: opening `rampart.db`, the integrity
//! check at open, and the migrations.
//!
//! # Migrations
//!
//! The schema version is SQLite's `PRAGMA user_version`. [`MIGRATIONS`] is an ordered list;
//! migration `i` moves the database from version `i` to `i + 1`, each in its own
//! transaction together with the version bump, so a crash mid-migration leaves the old
//! version intact. To change the schema, append a new string; never edit an old one.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::store::StoreError;

/// The database file's name inside the data directory.
pub(super) const DB_FILE: &str = "rampart.db";

/// How long a connection waits for a lock held by another connection before failing.
const BUSY_TIMEOUT: Duration = Duration::from_millis(5000);

/// Schema migrations, in order; see the module docs. Append only.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: users, items and the blobs items refer to.
    "CREATE TABLE users (
        id            INTEGER PRIMARY KEY,
        name          TEXT    NOT NULL UNIQUE,
        password_hash TEXT    NOT NULL CHECK (password_hash <> ''),
        created_at_ms INTEGER NOT NULL,
        usage_bytes   INTEGER NOT NULL DEFAULT 0 CHECK (usage_bytes >= 0)
    );
    CREATE TABLE items (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        owner          INTEGER NOT NULL REFERENCES users(id),
        sender         INTEGER NOT NULL REFERENCES users(id),
        kind           INTEGER NOT NULL CHECK (kind IN (1, 2, 3)),
        size           INTEGER NOT NULL CHECK (size >= 0),
        received_at_ms INTEGER NOT NULL,
        title          TEXT    NOT NULL,
        body           TEXT    NOT NULL
    );
    CREATE INDEX items_by_owner ON items(owner, id);
    CREATE INDEX items_by_sender ON items(sender);
    CREATE TABLE item_blobs (
        item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
        idx     INTEGER NOT NULL,
        blob_id TEXT    NOT NULL,
        name    TEXT    NOT NULL,
        size    INTEGER NOT NULL CHECK (size >= 0),
        digest  BLOB    NOT NULL CHECK (length(digest) = 32),
        PRIMARY KEY (item_id, idx)
    ) WITHOUT ROWID;
    CREATE INDEX item_blobs_by_blob ON item_blobs(blob_id);",
    // 2: every item costs ITEM_OVERHEAD_BYTES (256) on top of its size; charge the items
    // that already exist, so deleting one later frees exactly what it costs.
    "UPDATE users SET usage_bytes = usage_bytes +
        256 * (SELECT COUNT(*) FROM items WHERE items.sender = users.id);",
    // 3: resume tickets are bound to the user's epoch; a password change moves it on.
    "ALTER TABLE users ADD COLUMN ticket_epoch INTEGER NOT NULL DEFAULT 0
        CHECK (ticket_epoch >= 0);",
];

/// Opens the database at `path` (creating it on first start), checks it and brings its
/// schema up to date; returns the writer connection and then the reader. A file that is not
/// a database, or one that fails `PRAGMA quick_check`, is [`StoreError::Damaged`].
pub(super) fn open(path: &Path) -> Result<(Connection, Connection), StoreError> {
    let damaged = |e: StoreError| match e {
        StoreError::Sqlite(s)
            if matches!(
                s.sqlite_error_code(),
                Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
            ) =>
        {
            StoreError::Damaged {
                path: path.to_path_buf(),
                detail: s.to_string(),
            }
        }
        other => other,
    };
    let mut writer = open_connection(path).map_err(damaged)?;
    quick_check(&writer, path).map_err(damaged)?;
    migrate(&mut writer).map_err(damaged)?;
    // The reader is opened after the migrations so it never sees a half-built schema.
    let reader = open_connection(path).map_err(damaged)?;
    Ok((writer, reader))
}

/// Opens one connection: WAL, `synchronous=FULL`, foreign keys on, and a busy timeout.
fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt(format!(
            "could not switch the database to wal mode (got {mode:?})"
        )));
    }
    // FULL makes every commit fsync the WAL, which is what "durable before acknowledged"
    // needs; NORMAL would lose the last commits on power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(conn)
}

/// `PRAGMA quick_check`: "ok", or the first of its complaints as [`StoreError::Damaged`].
/// O(database size), run once at open; it reads every page but skips the index-content
/// cross-checks of `integrity_check`, which cost several times more.
fn quick_check(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let first: String = conn.query_row("PRAGMA quick_check(1)", [], |row| row.get(0))?;
    if first == "ok" {
        return Ok(());
    }
    Err(StoreError::Damaged {
        path: path.to_path_buf(),
        detail: first,
    })
}

/// Applies the migrations the database has not had yet; refuses one from a newer build.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let supported = i64::try_from(MIGRATIONS.len())
        .map_err(|_| StoreError::Corrupt("too many migrations".into()))?;
    let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    if found < 0 {
        return Err(StoreError::Corrupt(format!(
            "negative schema version {found}"
        )));
    }
    for (version, sql) in (1i64..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(found).unwrap_or(0))
    {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
        tx.execute_batch(sql)?;
        // PRAGMA takes no bound parameters; `version` is our own counter, not user data.
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(version, "applied database migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::tests::{
        assert_usage_consistent, message, store, two_users, TestResult, BIG, EVIL, O,
    };
    use crate::store::sqlite::SqliteStore;
    use crate::store::{ItemContent, Store};

    #[test]
    fn data_survives_reopen_and_migrations_are_idempotent() -> TestResult {
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().join("nested").join("data");
        let (alice, bob, id) = {
            let store = SqliteStore::open(&data_dir)?;
            assert!(store.path().is_file());
            let (alice, bob) = two_users(&store)?;
            let id = store.deliver(alice, bob, message(EVIL), BIG)?;
            (alice, bob, id)
        };
        for _ in 0..2 {
            let store = SqliteStore::open(&data_dir)?;
            assert_eq!(store.schema_version()?, MIGRATIONS.len() as i64);
            assert_eq!(store.user_id("alice")?, Some(alice));
            assert_eq!(store.credentials("bob")?, Some((bob, "h-b".to_owned())));
            let item = store.item(bob, id)?.ok_or("item lost on reopen")?;
            assert_eq!(item.content, ItemContent::Message { text: EVIL.into() });
            assert_eq!(store.usage(alice)?, EVIL.len() as u64 + O);
        }
        Ok(())
    }

    #[test]
    fn a_damaged_database_is_refused_at_open_with_a_clear_error() -> TestResult {
        // Garbage where the header should be: not a database at all.
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join(DB_FILE), vec![0x5a; 64 * 1024])?;
        let err = SqliteStore::open(dir.path())
            .err()
            .ok_or("garbage opened")?;
        assert!(matches!(err, StoreError::Damaged { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.starts_with("database "), "{text}");
        assert!(text.contains("is damaged"), "{text}");

        // A real database with one garbled page in the middle: opens fine without the
        // check, and answers errors later; with it, open refuses.
        let dir = tempfile::tempdir()?;
        {
            let store = SqliteStore::open(dir.path())?;
            let (alice, bob) = two_users(&store)?;
            for i in 0..400 {
                store.deliver(alice, bob, message(&format!("{i:0>200}")), BIG)?;
            }
        }
        let path = dir.path().join(DB_FILE);
        let mut bytes = std::fs::read(&path)?;
        assert!(bytes.len() > 12 * 4096, "{} bytes", bytes.len());
        for b in bytes.iter_mut().skip(8 * 4096).take(4096) {
            *b = 0xa5;
        }
        std::fs::write(&path, &bytes)?;
        let err = SqliteStore::open(dir.path())
            .err()
            .ok_or("damaged opened")?;
        assert!(matches!(err, StoreError::Damaged { .. }), "{err:?}");
        Ok(())
    }

    #[test]
    fn migration_2_charges_existing_items_their_overhead() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            // A version-1 database with two items from alice and one from bob.
            let mut conn = Connection::open(dir.path().join(DB_FILE))?;
            let tx = conn.transaction()?;
            tx.execute_batch(MIGRATIONS[0])?;
            tx.pragma_update(None, "user_version", 1)?;
            tx.execute_batch(
                "INSERT INTO users (id, name, password_hash, created_at_ms, usage_bytes)
                     VALUES (1, 'alice', 'h', 0, 7), (2, 'bob', 'h', 0, 0), (3, 'carol', 'h', 0, 2);
                 INSERT INTO items (owner, sender, kind, size, received_at_ms, title, body)
                     VALUES (2, 1, 1, 3, 0, '', 'abc'), (2, 1, 1, 4, 0, '', 'abcd'),
                            (1, 3, 1, 2, 0, '', 'ab');",
            )?;
            tx.commit()?;
        }
        let store = SqliteStore::open(dir.path())?;
        // Migrated through 2 to the newest version.
        assert_eq!(store.schema_version()?, MIGRATIONS.len() as i64);
        assert_eq!(store.usage(1)?, 7 + 2 * O);
        assert_eq!(store.usage(2)?, 0);
        assert_eq!(store.usage(3)?, 2 + O);
        assert_usage_consistent(&store)?;
        // Deleting an old item frees exactly what it now costs.
        let first = store.inbox(2, 0, 1)?[0].id;
        store.delete(2, first)?;
        assert_eq!(store.usage(1)?, 4 + O);
        assert_usage_consistent(&store)?;
        Ok(())
    }

    #[test]
    fn newer_schema_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        drop(SqliteStore::open(dir.path())?);
        {
            let conn = Connection::open(dir.path().join(DB_FILE))?;
            conn.pragma_update(None, "user_version", 999)?;
        }
        assert!(matches!(
            SqliteStore::open(dir.path()),
            Err(StoreError::SchemaTooNew { found: 999, .. })
        ));
        Ok(())
    }

    #[test]
    fn connections_are_configured() -> TestResult {
        let (_dir, store) = store()?;
        for conn in [store.read(), store.write()] {
            let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
            assert_eq!(mode, "wal");
            let sync: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get(0))?;
            assert_eq!(sync, 2, "synchronous should be FULL");
            let fk: i64 = conn.pragma_query_value(None, "foreign_keys", |r| r.get(0))?;
            assert_eq!(fk, 1);
        }
        Ok(())
    }
}
