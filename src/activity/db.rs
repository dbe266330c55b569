//! The activity database, `DATA/activity.db`: recorded events, source labels for training
//! data, and firewall decisions.
//!
//! It is a separate SQLite file from the message store on purpose: the recorder commits a
//! batch every few milliseconds, and in its own file those commits never wait for (or delay)
//! the store's durable message commits. Same engine, same data directory, same WAL rules.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{intern_reason, Event, EventKind};

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
    std::fs::create_dir_all(data_dir).map_err(|e| {
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!("cannot create {}: {e}", data_dir.display())),
        )
    })?;
    let mut conn = Connection::open(path(data_dir))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
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

/// The columns an event is stored as: (event, detail, code, size, extra).
fn columns(kind: &EventKind) -> (&'static str, &'static str, i64, i64, i64) {
    let name = kind.name();
    match *kind {
        EventKind::Accept
        | EventKind::AuthOk
        | EventKind::AuthFailed
        | EventKind::PermissionDenied => (name, "", 0, 0, 0),
        EventKind::Refused { reason }
        | EventKind::DecodeError { reason }
        | EventKind::RateLimited { reason }
        | EventKind::Timeout { reason } => (name, reason, 0, 0, 0),
        EventKind::FrameIn {
            kind,
            size,
            assemble_ms,
        } => (
            name,
            "",
            i64::from(kind),
            i64::from(size),
            i64::from(assemble_ms),
        ),
        EventKind::FrameOut { kind, size } => (name, "", i64::from(kind), i64::from(size), 0),
        EventKind::Close {
            reason,
            unread_bytes,
        } => (name, reason, 0, i64::from(unread_bytes), 0),
    }
}

/// Rows per multi-row INSERT statement. One statement per row spent most of its time in
/// per-statement work (reset, bind, step, halt); 32 rows of 8 columns stay far below SQLite's
/// limit of 32,766 bound parameters.
const ROWS_PER_INSERT: usize = 32;

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

/// Binds the columns of `events` to `stmt`, row after row, starting at parameter 1.
fn bind_rows(
    stmt: &mut rusqlite::CachedStatement<'_>,
    events: &[Event],
    ip_text: &mut String,
    last_ip: &mut Option<IpAddr>,
) -> Result<(), rusqlite::Error> {
    for (row, e) in events.iter().enumerate() {
        // Consecutive events mostly come from the same peer: format its address once.
        if *last_ip != Some(e.ip) {
            *ip_text = e.ip.to_string();
            *last_ip = Some(e.ip);
        }
        let (event, detail, code, size, extra) = columns(&e.kind);
        let at = row * COLUMNS;
        stmt.raw_bind_parameter(at + 1, e.t_ms)?;
        stmt.raw_bind_parameter(at + 2, i64::try_from(e.conn).unwrap_or(i64::MAX))?;
        stmt.raw_bind_parameter(at + 3, ip_text.as_str())?;
        stmt.raw_bind_parameter(at + 4, event)?;
        stmt.raw_bind_parameter(at + 5, detail)?;
        stmt.raw_bind_parameter(at + 6, code)?;
        stmt.raw_bind_parameter(at + 7, size)?;
        stmt.raw_bind_parameter(at + 8, extra)?;
    }
    Ok(())
}

/// Inserts events in one transaction with prepared statements, [`ROWS_PER_INSERT`] rows per
/// statement and one row per statement for the remainder.
pub fn insert(conn: &mut Connection, events: &[Event]) -> Result<(), ActivityError> {
    let tx = conn.transaction()?;
    {
        let mut ip_text = String::new();
        let mut last_ip = None;
        let mut chunks = events.chunks_exact(ROWS_PER_INSERT);
        if chunks.len() > 0 {
            let mut stmt = tx.prepare_cached(&insert_sql(ROWS_PER_INSERT))?;
            for chunk in &mut chunks {
                bind_rows(&mut stmt, chunk, &mut ip_text, &mut last_ip)?;
                stmt.raw_execute()?;
            }
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut stmt = tx.prepare_cached(&insert_sql(1))?;
            for e in rest {
                bind_rows(
                    &mut stmt,
                    std::slice::from_ref(e),
                    &mut ip_text,
                    &mut last_ip,
                )?;
                stmt.raw_execute()?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

fn event_from_row(
    id: i64,
    event: &str,
    detail: &str,
    code: i64,
    size: i64,
    extra: i64,
) -> Result<EventKind, ActivityError> {
    let reason = intern_reason(detail);
    let u8_of = |v: i64| u8::try_from(v).unwrap_or(0);
    let u32_of = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
    Ok(match event {
        "accept" => EventKind::Accept,
        "refused" => EventKind::Refused { reason },
        "frame_in" => EventKind::FrameIn {
            kind: u8_of(code),
            size: u32_of(size),
            assemble_ms: u32_of(extra),
        },
        "frame_out" => EventKind::FrameOut {
            kind: u8_of(code),
            size: u32_of(size),
        },
        "decode_error" => EventKind::DecodeError { reason },
        "auth_ok" => EventKind::AuthOk,
        "auth_failed" => EventKind::AuthFailed,
        "rate_limited" => EventKind::RateLimited { reason },
        "permission_denied" => EventKind::PermissionDenied,
        "timeout" => EventKind::Timeout { reason },
        "close" => EventKind::Close {
            reason,
            unread_bytes: u32_of(size),
        },
        other => {
            return Err(ActivityError::Corrupt {
                id,
                what: format!("unknown event {other:?}"),
            })
        }
    })
}

/// Calls `f` for every stored event in time order (then insertion order).
pub fn for_each_event(conn: &Connection, mut f: impl FnMut(Event)) -> Result<u64, ActivityError> {
    let mut stmt = conn.prepare(
        "SELECT id, t_ms, conn, source, event, detail, code, size, extra
         FROM activity ORDER BY t_ms, id",
    )?;
    let mut rows = stmt.query([])?;
    let mut n = 0u64;
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let source: String = row.get(3)?;
        let ip: IpAddr = source.parse().map_err(|_| ActivityError::Corrupt {
            id,
            what: format!("bad source address {source:?}"),
        })?;
        let event: String = row.get(4)?;
        let detail: String = row.get(5)?;
        let kind = event_from_row(id, &event, &detail, row.get(6)?, row.get(7)?, row.get(8)?)?;
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
mod tests {
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

    /// Batches below, at and around the multi-row statement's size come back whole and in
    /// order.
    #[test]
    fn batches_of_every_shape_round_trip_in_order() -> Result<(), ActivityError> {
        let dir = tempfile::tempdir().map_err(|e| ActivityError::Corrupt {
            id: 0,
            what: e.to_string(),
        })?;
        let mut conn = open(dir.path())?;
        let mut sent = Vec::new();
        let mut next = 0u64;
        for len in [0usize, 1, 31, 32, 33, 64, 100] {
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
