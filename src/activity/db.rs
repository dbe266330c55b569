//! The activity database, `DATA/activity.db`: recorded events, source labels for training
//! data, and firewall decisions.
//!
//! It is a separate SQLite file from the message store on purpose: the recorder commits a
//! batch every few milliseconds, and in its own file those commits never wait for (or delay)
//! the store's durable message commits. Same engine, same data directory, same WAL rules.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{intern_reason, Event, EventKind, EventName};

/// The database file's name inside the data directory.
pub const ACTIVITY_FILE: &str = "activity.db";

/// Schema migrations, in order; the schema version is `PRAGMA user_version`. Append only.
const MIGRATIONS: &[&str] = &[
    // 1: events, labels, decisions.
    "CREATE TABLE activity (
        id     INTEGER PRIMARY KEY,
        t_ms   INTEGER NOT NULL,
        conn   INTEGER NOT NULL,
        source TEXT    NOT NULL,
        event  TEXT    NOT NULL,
        detail TEXT    NOT NULL,
        code   INTEGER NOT NULL,
        size   INTEGER NOT NULL,
        extra  INTEGER NOT NULL
    );
    CREATE INDEX activity_by_time ON activity(t_ms);
    CREATE TABLE labels (
        source TEXT    PRIMARY KEY,
        label  TEXT    NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE decisions (
        id         INTEGER PRIMARY KEY,
        t_ms       INTEGER NOT NULL,
        source     TEXT    NOT NULL,
        action     TEXT    NOT NULL,
        duration_s INTEGER NOT NULL,
        score      REAL    NOT NULL,
        reason     TEXT    NOT NULL
    );",
    // 2: sources and event names stored as integers. A row held its source address and
    // event name as text, and those were most of its bytes: every address now has one row
    // in `sources`, `activity.source` is that row's id, and `activity.event` is the index of
    // the name in `EventName::ALL` (a name this build does not know stays text, so the
    // reader reports it exactly as before). Row ids and every other column are copied as
    // they are.
    "CREATE TABLE sources (
        id   INTEGER PRIMARY KEY,
        addr TEXT    NOT NULL UNIQUE
    );
    INSERT INTO sources (addr) SELECT DISTINCT source FROM activity;
    CREATE TABLE activity_v2 (
        id     INTEGER PRIMARY KEY,
        t_ms   INTEGER NOT NULL,
        conn   INTEGER NOT NULL,
        source INTEGER NOT NULL,
        event  INTEGER NOT NULL,
        detail TEXT    NOT NULL,
        code   INTEGER NOT NULL,
        size   INTEGER NOT NULL,
        extra  INTEGER NOT NULL
    );
    INSERT INTO activity_v2 (id, t_ms, conn, source, event, detail, code, size, extra)
        SELECT a.id, a.t_ms, a.conn, s.id,
               CASE a.event
                   WHEN 'accept' THEN 0
                   WHEN 'refused' THEN 1
                   WHEN 'frame_in' THEN 2
                   WHEN 'frame_out' THEN 3
                   WHEN 'decode_error' THEN 4
                   WHEN 'auth_ok' THEN 5
                   WHEN 'auth_failed' THEN 6
                   WHEN 'rate_limited' THEN 7
                   WHEN 'permission_denied' THEN 8
                   WHEN 'timeout' THEN 9
                   WHEN 'close' THEN 10
                   ELSE a.event
               END,
               a.detail, a.code, a.size, a.extra
        FROM activity a JOIN sources s ON s.addr = a.source
        ORDER BY a.id;
    DROP TABLE activity;
    ALTER TABLE activity_v2 RENAME TO activity;
    CREATE INDEX activity_by_time ON activity(t_ms);",
    // 3: behaviour families. A source's `group` (the `[[legit]] name` of the users behind
    // it) beside its label; a source with no row here has its label as group, so older
    // recordings export as they did, with `group` equal to `label`.
    "CREATE TABLE groups (
        source TEXT    PRIMARY KEY,
        grp    TEXT    NOT NULL
    ) WITHOUT ROWID;",
    // 4: when a labelled source started attacking. A source that behaves like a user before
    // it attacks (tamper, low-and-slow) has the time of its first attacking frame here; its
    // windows that end by then export as benign. NULL: attacking from its first event, as
    // every label meant before.
    "ALTER TABLE labels ADD COLUMN since_ms INTEGER;",
];

/// Errors from the activity database.
#[derive(Debug, thiserror::Error)]
pub enum ActivityError {
    /// SQLite failed.
    #[error("activity database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer rampart.
    #[error("activity database schema version {found} is newer than this build ({supported})")]
    SchemaTooNew {
        /// Version found.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// A stored row does not parse.
    #[error("activity database row {id} is corrupt: {what}")]
    Corrupt {
        /// Row id.
        id: i64,
        /// What is wrong.
        what: String,
    },
}

/// The path of the activity database in `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(ACTIVITY_FILE)
}

/// Opens (creating and migrating) the activity database in `data_dir`.
pub fn open(data_dir: &Path) -> Result<Connection, ActivityError> {
    // Who connected from where and did what: readable by the server's user only.
    crate::store::create_data_dir(data_dir)
        .and_then(|()| crate::store::create_private_file(&path(data_dir)))
        .map_err(|e| {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(format!("cannot create {}: {e}", data_dir.display())),
            )
        })?;
    let mut conn = Connection::open(path(data_dir))?;
    // WAL with NORMAL sync: a commit is a WAL append, and fsyncs happen at checkpoints. The
    // default checkpoint every 1,000 pages (4 MiB) made checkpoints, with their fsyncs, a
    // fifth of a busy recorder's time; every 8,192 pages (32 MiB) there are an eighth as
    // many. A 32 MiB page cache keeps the pages a batch touches across commits.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;
         PRAGMA wal_autocheckpoint = 1024; PRAGMA cache_size = -32768;",
    )?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(ActivityError::SchemaTooNew {
            found: version,
            supported,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(conn)
}

/// What the `event` column holds: the position of the event's name in [`EventName::ALL`].
fn event_code(kind: &EventKind) -> i64 {
    kind.event_name() as i64
}

/// The columns an event is stored as: (event, detail, code, size, extra).
fn columns(kind: &EventKind) -> (i64, &'static str, i64, i64, i64) {
    let event = event_code(kind);
    match *kind {
        EventKind::Accept | EventKind::PermissionDenied => (event, "", 0, 0, 0),
        EventKind::AuthOk { forgiven } => (event, "", 0, i64::from(forgiven), 0),
        // `code` 1 marks a failure that is not a guess, so that recordings from before the
        // flag (0) read back as guesses, as every failure then counted.
        EventKind::AuthFailed { guess } => (event, "", i64::from(!guess), 0, 0),
        EventKind::Refused { reason }
        | EventKind::DecodeError { reason }
        | EventKind::RateLimited { reason }
        | EventKind::Timeout { reason } => (event, reason, 0, 0, 0),
        EventKind::FrameIn {
            kind,
            size,
            assemble_ms,
        } => (
            event,
            "",
            i64::from(kind),
            i64::from(size),
            i64::from(assemble_ms),
        ),
        EventKind::FrameOut { kind, size } => (event, "", i64::from(kind), i64::from(size), 0),
        EventKind::Close {
            reason,
            unread_bytes,
        } => (event, reason, 0, i64::from(unread_bytes), 0),
    }
}

/// Rows per multi-row INSERT statement. One statement per row spent most of its time in
/// per-statement work (reset, bind, step, halt); 128 rows of 8 columns (1,024 parameters)
/// stay far below SQLite's limit of 32,766 bound parameters.
const ROWS_PER_INSERT: usize = 128;

/// Columns bound per row.
const COLUMNS: usize = 8;

/// `INSERT INTO activity (...) VALUES (?,?,...), ...` with `rows` rows.
fn insert_sql(rows: usize) -> String {
    let row = "(?,?,?,?,?,?,?,?)";
    let mut sql = String::from(
        "INSERT INTO activity (t_ms, conn, source, event, detail, code, size, extra) VALUES ",
    );
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(row);
    }
    sql
}

/// The `sources` row id of every address in `events`, adding the addresses not stored yet.
/// A batch holds few distinct addresses, so this is a handful of statements per batch.
fn source_ids(
    tx: &rusqlite::Transaction<'_>,
    events: &[Event],
) -> Result<ahash::AHashMap<IpAddr, i64>, rusqlite::Error> {
    let mut ids = ahash::AHashMap::new();
    let mut last: Option<IpAddr> = None;
    for e in events {
        if last == Some(e.ip) || ids.contains_key(&e.ip) {
            continue;
        }
        last = Some(e.ip);
        let addr = e.ip.to_string();
        let found: Option<i64> = tx
            .prepare_cached("SELECT id FROM sources WHERE addr = ?1")?
            .query_row([&addr], |r| r.get(0))
            .optional()?;
        let id = match found {
            Some(id) => id,
            None => {
                tx.prepare_cached("INSERT INTO sources (addr) VALUES (?1)")?
                    .execute([&addr])?;
                tx.last_insert_rowid()
            }
        };
        ids.insert(e.ip, id);
    }
    Ok(ids)
}

/// Binds the columns of `events` to `stmt`, row after row, starting at parameter 1.
fn bind_rows(
    stmt: &mut rusqlite::CachedStatement<'_>,
    events: &[Event],
    sources: &ahash::AHashMap<IpAddr, i64>,
) -> Result<(), rusqlite::Error> {
    for (row, e) in events.iter().enumerate() {
        // `source_ids` saw every address of the batch; 0 (no such row) cannot happen.
        let source = sources.get(&e.ip).copied().unwrap_or(0);
        let (event, detail, code, size, extra) = columns(&e.kind);
        let at = row * COLUMNS;
        stmt.raw_bind_parameter(at + 1, e.t_ms)?;
        stmt.raw_bind_parameter(at + 2, i64::try_from(e.conn).unwrap_or(i64::MAX))?;
        stmt.raw_bind_parameter(at + 3, source)?;
        stmt.raw_bind_parameter(at + 4, event)?;
        stmt.raw_bind_parameter(at + 5, detail)?;
        stmt.raw_bind_parameter(at + 6, code)?;
        stmt.raw_bind_parameter(at + 7, size)?;
        stmt.raw_bind_parameter(at + 8, extra)?;
    }
    Ok(())
}

/// Inserts events in one transaction with prepared statements, `ROWS_PER_INSERT` (128) rows per
/// statement and one row per statement for the remainder.
pub fn insert(conn: &mut Connection, events: &[Event]) -> Result<(), ActivityError> {
    let tx = conn.transaction()?;
    {
        let sources = source_ids(&tx, events)?;
        let mut chunks = events.chunks_exact(ROWS_PER_INSERT);
        if chunks.len() > 0 {
            let mut stmt = tx.prepare_cached(&insert_sql(ROWS_PER_INSERT))?;
            for chunk in &mut chunks {
                bind_rows(&mut stmt, chunk, &sources)?;
                stmt.raw_execute()?;
            }
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut stmt = tx.prepare_cached(&insert_sql(1))?;
            for e in rest {
                bind_rows(&mut stmt, std::slice::from_ref(e), &sources)?;
                stmt.raw_execute()?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

fn event_from_row(event: EventName, detail: &str, code: i64, size: i64, extra: i64) -> EventKind {
    let reason = intern_reason(detail);
    let u8_of = |v: i64| u8::try_from(v).unwrap_or(0);
    let u32_of = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
    match event {
        EventName::Accept => EventKind::Accept,
        EventName::Refused => EventKind::Refused { reason },
        EventName::FrameIn => EventKind::FrameIn {
            kind: u8_of(code),
            size: u32_of(size),
            assemble_ms: u32_of(extra),
        },
        EventName::FrameOut => EventKind::FrameOut {
            kind: u8_of(code),
            size: u32_of(size),
        },
        EventName::DecodeError => EventKind::DecodeError { reason },
        EventName::AuthOk => EventKind::AuthOk {
            forgiven: u32_of(size),
        },
        EventName::AuthFailed => EventKind::AuthFailed { guess: code == 0 },
        EventName::RateLimited => EventKind::RateLimited { reason },
        EventName::PermissionDenied => EventKind::PermissionDenied,
        EventName::Timeout => EventKind::Timeout { reason },
        EventName::Close => EventKind::Close {
            reason,
            unread_bytes: u32_of(size),
        },
    }
}

/// Every row of `sources`: id and address, or the address text where it does not parse
/// (reported as corrupt only if an event refers to it).
fn sources(
    conn: &Connection,
) -> Result<ahash::AHashMap<i64, Result<IpAddr, String>>, ActivityError> {
    let mut stmt = conn.prepare("SELECT id, addr FROM sources")?;
    let mut rows = stmt.query([])?;
    let mut out = ahash::AHashMap::new();
    while let Some(row) = rows.next()? {
        let addr: String = row.get(1)?;
        out.insert(row.get(0)?, addr.parse::<IpAddr>().map_err(|_| addr));
    }
    Ok(out)
}

/// Calls `f` for every stored event in time order (then insertion order).
pub fn for_each_event(conn: &Connection, mut f: impl FnMut(Event)) -> Result<u64, ActivityError> {
    let sources = sources(conn)?;
    let mut stmt = conn.prepare(
        "SELECT id, t_ms, conn, source, event, detail, code, size, extra
         FROM activity ORDER BY t_ms, id",
    )?;
    let mut rows = stmt.query([])?;
    let mut n = 0u64;
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let source: i64 = row.get(3)?;
        let ip = match sources.get(&source) {
            Some(Ok(ip)) => *ip,
            Some(Err(text)) => {
                return Err(ActivityError::Corrupt {
                    id,
                    what: format!("bad source address {text:?}"),
                })
            }
            None => {
                return Err(ActivityError::Corrupt {
                    id,
                    what: format!("unknown source {source}"),
                })
            }
        };
        // A name the schema-2 migration did not know stays text; it is reported once the
        // other columns are read, as it always was.
        let event = match row.get_ref(4)? {
            ValueRef::Integer(code) => Ok(usize::try_from(code)
                .ok()
                .and_then(|i| EventName::ALL.get(i).copied())
                .ok_or_else(|| ActivityError::Corrupt {
                    id,
                    what: format!("unknown event code {code}"),
                })?),
            ValueRef::Text(t) => {
                let name = String::from_utf8_lossy(t);
                EventName::from_name(&name).ok_or_else(|| ActivityError::Corrupt {
                    id,
                    what: format!("unknown event {name:?}"),
                })
            }
            other => {
                return Err(ActivityError::Corrupt {
                    id,
                    what: format!("event of type {}", other.data_type()),
                })
            }
        };
        let detail: String = row.get(5)?;
        let (code, size, extra) = (row.get(6)?, row.get(7)?, row.get(8)?);
        let kind = event_from_row(event?, &detail, code, size, extra);
        let conn_id: i64 = row.get(2)?;
        f(Event {
            t_ms: row.get(1)?,
            conn: u64::try_from(conn_id).unwrap_or(0),
            ip,
            kind,
        });
        n += 1;
    }
    Ok(n)
}

/// Labels sources (e.g. with the attack kind a scenario ran from them). A source without a
/// label exports as `benign`.
pub fn set_labels(conn: &mut Connection, labels: &[(IpAddr, String)]) -> Result<(), ActivityError> {
    let tx = conn.transaction()?;
    {
        let mut stmt =
            tx.prepare_cached("INSERT OR REPLACE INTO labels (source, label) VALUES (?1, ?2)")?;
        for (ip, label) in labels {
            stmt.execute(params![ip.to_string(), label])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Records when labelled sources started attacking (milliseconds since the Unix epoch):
/// their windows that end by then export as benign. A source without a label is skipped.
pub fn set_label_since(
    conn: &mut Connection,
    since: &[(IpAddr, i64)],
) -> Result<(), ActivityError> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached("UPDATE labels SET since_ms = ?2 WHERE source = ?1")?;
        for (ip, ms) in since {
            stmt.execute(params![ip.to_string(), ms])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Every label's start of attack, by source address text, for the sources that have one.
pub fn label_since(conn: &Connection) -> Result<Vec<(String, i64)>, ActivityError> {
    let mut stmt = conn.prepare(
        "SELECT source, since_ms FROM labels WHERE since_ms IS NOT NULL ORDER BY source",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Sets sources' behaviour families (the `group` export column), e.g. the `[[legit]] name`
/// of the users behind a legit source. A source without a group exports its label as group.
pub fn set_groups(conn: &mut Connection, groups: &[(IpAddr, String)]) -> Result<(), ActivityError> {
    let tx = conn.transaction()?;
    {
        let mut stmt =
            tx.prepare_cached("INSERT OR REPLACE INTO groups (source, grp) VALUES (?1, ?2)")?;
        for (ip, group) in groups {
            stmt.execute(params![ip.to_string(), group])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Every group, by source address text.
pub fn groups(conn: &Connection) -> Result<Vec<(String, String)>, ActivityError> {
    let mut stmt = conn.prepare("SELECT source, grp FROM groups ORDER BY source")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every label, by source address text.
pub fn labels(conn: &Connection) -> Result<Vec<(String, String)>, ActivityError> {
    let mut stmt = conn.prepare("SELECT source, label FROM labels ORDER BY source")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A stored firewall decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredDecision {
    /// Row id.
    pub id: i64,
    /// When, in milliseconds since the Unix epoch.
    pub t_ms: i64,
    /// The source.
    pub source: String,
    /// `block`, `shadow_block`, `allowed` or `unblock`.
    pub action: String,
    /// Block length in seconds.
    pub duration_s: i64,
    /// The score that crossed the threshold.
    pub score: f64,
    /// Why.
    pub reason: String,
}

/// Stores one firewall decision.
pub fn insert_decision(
    conn: &Connection,
    t_ms: i64,
    source: &str,
    action: &str,
    duration_s: u64,
    score: f64,
    reason: &str,
) -> Result<(), ActivityError> {
    conn.prepare_cached(
        "INSERT INTO decisions (t_ms, source, action, duration_s, score, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        t_ms,
        source,
        action,
        i64::try_from(duration_s).unwrap_or(i64::MAX),
        score,
        reason
    ])?;
    Ok(())
}

/// Every stored decision, oldest first.
pub fn decisions(conn: &Connection) -> Result<Vec<StoredDecision>, ActivityError> {
    let mut stmt = conn.prepare(
        "SELECT id, t_ms, source, action, duration_s, score, reason FROM decisions ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(StoredDecision {
            id: r.get(0)?,
            t_ms: r.get(1)?,
            source: r.get(2)?,
            action: r.get(3)?,
            duration_s: r.get(4)?,
            score: r.get(5)?,
            reason: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Deletes at most `max_rows` events, oldest first, that are older than `before_ms`, or,
/// when the database holds more than `max_bytes` in use, the oldest `max_rows` events
/// whatever their age. Returns how many rows went. One bounded step, so a caller on the
/// recorder's thread never stalls on a large backlog; freed pages are reused, so the file
/// stops growing rather than shrinks.
pub fn prune_step(
    conn: &Connection,
    before_ms: Option<i64>,
    max_bytes: Option<u64>,
    max_rows: u32,
) -> Result<u64, ActivityError> {
    let mut deleted = 0;
    if let Some(before) = before_ms {
        deleted += conn.execute(
            "DELETE FROM activity WHERE id IN
                 (SELECT id FROM activity WHERE t_ms < ?1 ORDER BY t_ms LIMIT ?2)",
            params![before, max_rows],
        )? as u64;
    }
    if let Some(cap) = max_bytes {
        if deleted == 0 && bytes_in_use(conn)? > cap {
            deleted += conn.execute(
                "DELETE FROM activity WHERE id IN
                     (SELECT id FROM activity ORDER BY id LIMIT ?1)",
                params![max_rows],
            )? as u64;
        }
    }
    Ok(deleted)
}

/// Bytes of the database file in use (pages that are not on the free list).
pub fn bytes_in_use(conn: &Connection) -> Result<u64, ActivityError> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(u64::try_from((pages - free).max(0) * size).unwrap_or(0))
}

/// The number of stored events.
pub fn count(conn: &Connection) -> Result<u64, ActivityError> {
    let n: Option<i64> = conn
        .query_row("SELECT count(*) FROM activity", [], |r| r.get(0))
        .optional()?;
    Ok(n.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
}

/// The largest decision row id (0 when there is none).
pub fn last_decision_id(conn: &Connection) -> Result<i64, ActivityError> {
    Ok(
        conn.query_row("SELECT coalesce(max(id), 0) FROM decisions", [], |r| {
            r.get(0)
        })?,
    )
}

/// `unblock` rows with an id above `after`, as (id, address). Rows whose source is not an
/// address (an IPv6 prefix, say) are skipped with a warning.
pub fn unblocks_since(conn: &Connection, after: i64) -> Result<Vec<(i64, IpAddr)>, ActivityError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, source FROM decisions WHERE action = 'unblock' AND id > ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map(params![after], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, source) = row?;
        match source.parse::<IpAddr>() {
            Ok(ip) => out.push((id, ip)),
            Err(_) => tracing::warn!(source = %source, "unblock row names no address"),
        }
    }
    Ok(out)
}

/// Blocks still in force at `now_ms`, one per source (its latest decision, if that is a
/// block whose time has not run out), as (source text, seconds left, reason).
pub fn active_blocks(
    conn: &Connection,
    now_ms: i64,
) -> Result<Vec<(String, u64, String)>, ActivityError> {
    let mut stmt = conn.prepare(
        "SELECT d.source, d.t_ms, d.duration_s, d.reason FROM decisions d
         JOIN (SELECT source, max(id) AS id FROM decisions
               WHERE action IN ('block', 'unblock') GROUP BY source) last
           ON last.id = d.id
         WHERE d.action = 'block' ORDER BY d.source",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (source, t_ms, duration_s, reason) = row?;
        let ends = t_ms.saturating_add(duration_s.saturating_mul(1000));
        if ends > now_ms {
            let left = u64::try_from((ends - now_ms + 999) / 1000).unwrap_or(0);
            out.push((source, left, reason));
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn event(i: u64) -> Event {
        Event {
            t_ms: 1_700_000_000_000 + i as i64,
            conn: i,
            ip: IpAddr::from([127, 0, 2, (i % 3) as u8]),
            kind: if i % 2 == 0 {
                EventKind::FrameIn {
                    kind: 3,
                    size: i as u32,
                    assemble_ms: 1,
                }
            } else {
                EventKind::Close {
                    reason: "eof",
                    unread_bytes: 2,
                }
            },
        }
    }

    /// A database as schema version 1 wrote it, holding `events` in v1's text columns.
    pub(in crate::activity) fn write_v1(dir: &Path, events: &[Event]) -> Result<(), ActivityError> {
        std::fs::create_dir_all(dir).map_err(|e| ActivityError::Corrupt {
            id: 0,
            what: e.to_string(),
        })?;
        let conn = Connection::open(path(dir))?;
        conn.execute_batch(MIGRATIONS[0])?;
        conn.pragma_update(None, "user_version", 1)?;
        let mut stmt = conn.prepare(
            "INSERT INTO activity (t_ms, conn, source, event, detail, code, size, extra)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for e in events {
            let (_, detail, code, size, extra) = columns(&e.kind);
            stmt.execute(params![
                e.t_ms,
                i64::try_from(e.conn).unwrap_or(i64::MAX),
                e.ip.to_string(),
                e.kind.name(),
                detail,
                code,
                size,
                extra
            ])?;
        }
        Ok(())
    }

    /// Every kind of event, from IPv4 and IPv6 peers, timestamps not in insertion order.
    pub(in crate::activity) fn every_kind() -> Vec<Event> {
        let kinds = super::super::one_of_each_kind();
        let ips: [IpAddr; 3] = [
            IpAddr::from([10, 0, 0, 1]),
            "2001:db8::7".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            "::ffff:10.0.0.1"
                .parse()
                .unwrap_or(IpAddr::from([0, 0, 0, 0])),
        ];
        (0..66u64)
            .map(|i| Event {
                t_ms: 1_700_000_000_000 + (i % 5) as i64,
                conn: i,
                ip: ips[(i % 3) as usize],
                kind: kinds[(i % 11) as usize],
            })
            .collect()
    }

    fn all_events(conn: &Connection) -> Result<Vec<Event>, ActivityError> {
        let mut back = Vec::new();
        for_each_event(conn, |e| back.push(e))?;
        Ok(back)
    }

    fn temp() -> Result<tempfile::TempDir, ActivityError> {
        tempfile::tempdir().map_err(|e| ActivityError::Corrupt {
            id: 0,
            what: e.to_string(),
        })
    }

    /// The `event` column holds each name's position in `EventName::ALL`, the codes the
    /// schema-2 migration gave the names version 1 stored.
    #[test]
    fn event_codes_are_the_positions_the_migration_gave() {
        for e in every_kind() {
            let code = event_code(&e.kind);
            assert_eq!(
                EventName::ALL.get(code as usize),
                Some(&e.kind.event_name())
            );
        }
        for (i, name) in EventName::NAMES.into_iter().enumerate() {
            let case = format!("WHEN '{name}' THEN {i}\n");
            assert!(MIGRATIONS[1].contains(&case), "{case}");
        }
        assert_eq!(
            MIGRATIONS[1].matches(" WHEN '").count(),
            EventName::ALL.len()
        );
    }

    /// Every kind of event, IPv4 and IPv6, comes back exactly as recorded, in time order.
    #[test]
    fn every_kind_round_trips() -> Result<(), ActivityError> {
        let dir = temp()?;
        let mut conn = open(dir.path())?;
        let sent = every_kind();
        insert(&mut conn, &sent)?;
        let mut want = sent.clone();
        want.sort_by_key(|e| e.t_ms);
        assert_eq!(all_events(&conn)?, want);
        let sources: i64 = conn.query_row("SELECT count(*) FROM sources", [], |r| r.get(0))?;
        assert_eq!(sources, 3, "one row per address");
        Ok(())
    }

    /// A database at schema version 1 migrates: its rows read back unchanged, their ids are
    /// kept, new rows follow them and reuse the sources already stored.
    #[test]
    fn a_version_1_database_migrates_and_keeps_its_rows() -> Result<(), ActivityError> {
        let dir = temp()?;
        let old = every_kind();
        write_v1(dir.path(), &old)?;
        let mut conn = open(dir.path())?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        assert_eq!(version, MIGRATIONS.len() as i64);
        let mut want = old.clone();
        want.sort_by_key(|e| e.t_ms);
        assert_eq!(all_events(&conn)?, want);
        let max_id: i64 = conn.query_row("SELECT max(id) FROM activity", [], |r| r.get(0))?;
        assert_eq!(max_id, old.len() as i64);
        let index: i64 = conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'activity_by_time'",
            [],
            |r| r.get(0),
        )?;
        assert_eq!(index, 1, "the time index survives the migration");

        let new: Vec<Event> = old
            .iter()
            .map(|e| Event {
                t_ms: e.t_ms + 10,
                ..*e
            })
            .collect();
        insert(&mut conn, &new)?;
        want.extend(new);
        want.sort_by_key(|e| e.t_ms);
        assert_eq!(all_events(&conn)?, want);
        let sources: i64 = conn.query_row("SELECT count(*) FROM sources", [], |r| r.get(0))?;
        assert_eq!(sources, 3);
        drop(conn);
        // Opening again migrates nothing more.
        assert_eq!(all_events(&open(dir.path())?)?, want);
        Ok(())
    }

    /// Rows v1 could hold but no build writes (an unknown event name, an address that does
    /// not parse) are reported as corrupt after the migration, as before it.
    #[test]
    fn corrupt_version_1_rows_stay_reported() -> Result<(), ActivityError> {
        for (source, event, what) in [
            ("10.0.0.1", "bogus", "unknown event \"bogus\""),
            (
                "not-an-address",
                "accept",
                "bad source address \"not-an-address\"",
            ),
        ] {
            let dir = temp()?;
            write_v1(dir.path(), &[])?;
            Connection::open(path(dir.path()))?.execute(
                "INSERT INTO activity (t_ms, conn, source, event, detail, code, size, extra)
                 VALUES (1, 1, ?1, ?2, '', 0, 0, 0)",
                params![source, event],
            )?;
            let conn = open(dir.path())?;
            match all_events(&conn) {
                Err(ActivityError::Corrupt { id: 1, what: w }) => assert_eq!(w, what),
                other => panic!("expected a corrupt row, got {other:?}"),
            }
        }
        Ok(())
    }

    /// Batches below, at and around the multi-row statement's size come back whole and in
    /// order.
    #[test]
    fn groups_sit_beside_labels_and_start_empty() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut conn = open(dir.path())?;
        assert!(groups(&conn)?.is_empty());
        let a: IpAddr = "127.0.0.1".parse()?;
        set_labels(&mut conn, &[(a, "flood".to_string())])?;
        set_groups(&mut conn, &[(a, "nat+typos".to_string())])?;
        set_groups(&mut conn, &[(a, "mobile".to_string())])?;
        assert_eq!(
            groups(&conn)?,
            vec![("127.0.0.1".to_string(), "mobile".to_string())]
        );
        assert_eq!(
            labels(&conn)?,
            vec![("127.0.0.1".to_string(), "flood".to_string())]
        );
        Ok(())
    }

    #[test]
    fn batches_of_every_shape_round_trip_in_order() -> Result<(), ActivityError> {
        let dir = tempfile::tempdir().map_err(|e| ActivityError::Corrupt {
            id: 0,
            what: e.to_string(),
        })?;
        let mut conn = open(dir.path())?;
        let mut sent = Vec::new();
        let mut next = 0u64;
        for len in [0usize, 1, 127, 128, 129, 256, 300] {
            let batch: Vec<Event> = (next..next + len as u64).map(event).collect();
            next += len as u64;
            insert(&mut conn, &batch)?;
            sent.extend(batch);
        }
        let mut back = Vec::new();
        for_each_event(&conn, |e| back.push(e))?;
        assert_eq!(back, sent);
        assert_eq!(count(&conn)?, next);
        Ok(())
    }
}
