//! [`PgBlobs`]: blobs in the PostgreSQL database a fleet shares, so that a file one server
//! took is read through any other (docs/FLEET.md, "Blobs").
//!
//! # Tables
//!
//! - `blobs`: one row per blob: its id, `state` (`staged` while it is uploaded,
//!   `committed` once readable, `lost` once set aside by the orphan sweep), `size`, blake3
//!   `digest` (both set by the commit) and `created_at` (the database's clock, so that the
//!   servers' clocks do not matter).
//! - `blob_chunks`: the bytes, in [`CHUNK_BYTES`] pieces keyed by `(blob_id, seq)`; every
//!   chunk but the last is full. Stored `EXTERNAL` (out of line, not compressed: uploads
//!   are mostly compressed already, and PostgreSQL would try for nothing). Deleting a
//!   `blobs` row deletes its chunks.
//!
//! # Streaming
//!
//! Neither direction holds a whole blob in memory. A writer buffers at most one chunk and
//! inserts each chunk as it fills, in a transaction of its own, so an upload of any length
//! holds no connection and no transaction open between its chunks. [`BlobStore::read_at`]
//! fetches only the chunks that overlap the range asked for, in one statement (one
//! snapshot).
//!
//! # Durability
//!
//! The commit inserts the last chunk and turns the row `committed` in one transaction,
//! after checking that the chunks hold exactly the bytes counted; PostgreSQL's
//! `synchronous_commit = on` makes it durable before it answers, so a blob is durable
//! before the item that references it is delivered.
//!
//! # Leftovers
//!
//! A writer dropped without commit deletes its rows (off the async runtime when there is
//! one). A crash leaves them `staged`; [`BlobStore::sweep_orphans`] at start-up deletes
//! staged rows older than [`STALE_UPLOAD_AGE`] only, because other servers of the fleet may
//! be uploading right now. It sets committed blobs that no item references and that are
//! older than the same age aside as `lost`, never deleting them (as `DATA/lost+found/` for
//! the directory); a `lost` blob stays readable, so a delivery that raced the sweep loses
//! nothing.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::{Attempt, PgStore};
use crate::store::{is_valid_blob_id, size_to_sql, sql_to_u64, BlobStore, BlobWriter, StoreError};

/// The size of every chunk but a blob's last: 256 KiB, the protocol's default chunk
/// (`limits.max_chunk_bytes`), so that a download's read usually touches one or two rows.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Staged rows (uploads a crash interrupted) and unreferenced committed blobs are left
/// alone at start-up until they are this old: another server of the fleet may be uploading
/// into them, or about to deliver them, right now. An upload that takes longer than this
/// would lose its rows to a server starting meanwhile (its commit then fails cleanly).
pub const STALE_UPLOAD_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// Blobs as chunks in a PostgreSQL database, on the connections of a [`PgStore`] (its
/// pool, its migrations). Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgBlobs {
    store: Arc<PgStore>,
}

impl PgBlobs {
    /// Blobs in the database of `store`, which has already brought the schema up to date.
    pub fn new(store: Arc<PgStore>) -> PgBlobs {
        PgBlobs { store }
    }
}

fn check_id(blob_id: &str) -> Result<(), StoreError> {
    if is_valid_blob_id(blob_id) {
        Ok(())
    } else {
        Err(StoreError::InvalidBlobId(blob_id.to_owned()))
    }
}

impl BlobStore for PgBlobs {
    /// Inserts the blob's `staged` row.
    fn create(&self, blob_id: &str) -> Result<Box<dyn BlobWriter>, StoreError> {
        check_id(blob_id)?;
        self.store.run(|c| {
            c.execute(
                "INSERT INTO blobs (id, state) VALUES ($1, 'staged')",
                &[&blob_id],
            )?;
            Ok(())
        })?;
        Ok(Box::new(PgWriter {
            store: Arc::clone(&self.store),
            id: blob_id.to_owned(),
            buf: Vec::new(),
            seq: 0,
            failed: false,
            committed: false,
        }))
    }

    fn read_at(&self, blob_id: &str, offset: u64, max_len: usize) -> Result<Vec<u8>, StoreError> {
        check_id(blob_id)?;
        // Chunk numbers past i64 cannot exist; clamping keeps the arithmetic defined and
        // the range past every blob's end.
        let chunk = CHUNK_BYTES as u64;
        let first = i64::try_from(offset / chunk).unwrap_or(i64::MAX);
        let end = offset.saturating_add(u64::try_from(max_len).unwrap_or(u64::MAX));
        let last = i64::try_from(end.saturating_sub(1) / chunk).unwrap_or(i64::MAX);
        // One statement, one snapshot: the size and the chunks agree even if the blob is
        // removed meanwhile. A LEFT JOIN, so that a blob with no chunk in the range (an
        // offset past its end) still answers with its size.
        let rows = self.store.run(|c| {
            Ok(c.query(
                "SELECT b.size, c.seq, c.data FROM blobs b
                 LEFT JOIN blob_chunks c
                   ON c.blob_id = b.id AND c.seq BETWEEN $2::BIGINT AND $3::BIGINT
                 WHERE b.id = $1 AND b.state <> 'staged'
                 ORDER BY c.seq",
                &[&blob_id, &first, &last],
            )?)
        })?;
        let Some(head) = rows.first() else {
            return Err(StoreError::BlobNotFound(blob_id.to_owned()));
        };
        let size = sql_to_u64(head.get(0), "blob size")?;
        let available = size.saturating_sub(offset);
        let want = usize::try_from(available).map_or(max_len, |a| a.min(max_len));
        if want == 0 {
            return Ok(Vec::new());
        }
        let corrupt = || StoreError::Corrupt(format!("blob {blob_id} is missing chunks"));
        let mut out = Vec::with_capacity(want);
        // Where the next byte wanted sits inside the current chunk.
        let mut skip = usize::try_from(offset % chunk).map_err(|_| corrupt())?;
        for (expected, row) in (first..).zip(&rows) {
            let seq: Option<i32> = row.get(1);
            let data: Option<Vec<u8>> = row.get(2);
            let (Some(seq), Some(data)) = (seq, data) else {
                return Err(corrupt());
            };
            if i64::from(seq) != expected {
                return Err(corrupt());
            }
            let piece = data.get(skip..).ok_or_else(corrupt)?;
            let take = piece.len().min(want - out.len());
            out.extend_from_slice(piece.get(..take).ok_or_else(corrupt)?);
            skip = 0;
            if out.len() == want {
                return Ok(out);
            }
        }
        Err(corrupt())
    }

    fn remove(&self, blob_id: &str) -> Result<(), StoreError> {
        check_id(blob_id)?;
        // The chunks go with the row (ON DELETE CASCADE), in one transaction.
        self.store.run(|c| {
            c.execute("DELETE FROM blobs WHERE id = $1", &[&blob_id])?;
            Ok(())
        })
    }

    /// Deletes `staged` rows older than [`STALE_UPLOAD_AGE`] (uploads a crash interrupted)
    /// and marks committed blobs older than that which no id in `referenced` names as
    /// `lost`; returns how many were marked. Both counts are logged.
    fn sweep_orphans(&self, referenced: &HashSet<String>) -> Result<usize, StoreError> {
        let age = STALE_UPLOAD_AGE.as_secs_f64();
        let cleared = self.store.run(|c| {
            Ok(c.execute(
                "DELETE FROM blobs WHERE state = 'staged'
                 AND created_at < now() - make_interval(secs => $1)",
                &[&age],
            )?)
        })?;
        if cleared > 0 {
            tracing::info!(
                cleared,
                "deleted uploads in the database that a crash left unfinished over a day ago"
            );
        }
        let candidates: Vec<String> = self.store.run(|c| {
            Ok(c.query(
                "SELECT id FROM blobs WHERE state = 'committed'
                 AND created_at < now() - make_interval(secs => $1)",
                &[&age],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
        })?;
        let orphans: Vec<&String> = candidates
            .iter()
            .filter(|id| !referenced.contains(*id))
            .collect();
        if orphans.is_empty() {
            return Ok(0);
        }
        let marked = self.store.run(|c| {
            Ok(c.execute(
                "UPDATE blobs SET state = 'lost' WHERE state = 'committed' AND id = ANY($1)",
                &[&orphans],
            )?)
        })?;
        let marked = usize::try_from(marked).unwrap_or(usize::MAX);
        tracing::warn!(
            marked,
            "marked blobs in the database that no item references as lost; nothing was \
             deleted. They are leftovers of a crash, or blobs whose items the database \
             lost: restore it from a backup if items are missing, else delete them \
             (DELETE FROM blobs WHERE state = 'lost')"
        );
        Ok(marked)
    }
}

/// An upload into the database: full chunks inserted as they fill, the rest buffered.
#[derive(Debug)]
struct PgWriter {
    store: Arc<PgStore>,
    id: String,
    /// The chunk being filled; never more than [`CHUNK_BYTES`].
    buf: Vec<u8>,
    /// The number of the chunk being filled.
    seq: i32,
    /// An insert failed: what the database holds is unknown, so the upload is over.
    failed: bool,
    committed: bool,
}

impl PgWriter {
    fn usable(&self) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::NotCommitted(format!(
                "an earlier write of blob {} failed; the upload must start again",
                self.id
            )));
        }
        Ok(())
    }

    /// Inserts the buffered chunk in a transaction of its own.
    fn flush(&mut self) -> Result<(), StoreError> {
        let (id, seq, data) = (&self.id, self.seq, &self.buf);
        let inserted = self.store.run(|c| insert_chunk(c, id, seq, data));
        let gone = match inserted {
            Ok(inserted) => !inserted,
            Err(e) => {
                self.failed = true;
                return Err(e);
            }
        };
        if gone {
            self.failed = true;
            return Err(rows_gone(&self.id));
        }
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or_else(|| StoreError::InvalidItem("blob too large".into()))?;
        self.buf.clear();
        Ok(())
    }
}

/// Inserts one chunk of blob `id`; `false` if the blob's row is gone (the foreign key
/// refused the chunk).
fn insert_chunk(
    c: &mut impl postgres::GenericClient,
    id: &str,
    seq: i32,
    data: &[u8],
) -> Attempt<bool> {
    match c.execute(
        "INSERT INTO blob_chunks (blob_id, seq, data) VALUES ($1, $2, $3)",
        &[&id, &seq, &data],
    ) {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some(&postgres::error::SqlState::FOREIGN_KEY_VIOLATION) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Why an upload whose staged rows vanished (or do not add up) cannot be committed.
fn rows_gone(id: &str) -> StoreError {
    StoreError::NotCommitted(format!(
        "blob {id} was not committed: its staged rows are gone (deleted as a leftover \
         after {} h?) or do not hold the bytes uploaded",
        STALE_UPLOAD_AGE.as_secs() / 3600
    ))
}

impl BlobWriter for PgWriter {
    fn append(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        self.usable()?;
        while !data.is_empty() {
            let room = CHUNK_BYTES - self.buf.len();
            let (now, rest) = data.split_at(room.min(data.len()));
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(CHUNK_BYTES);
            }
            self.buf.extend_from_slice(now);
            data = rest;
            if self.buf.len() == CHUNK_BYTES {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Inserts the last chunk and turns the row `committed`, with its size and digest, in
    /// one transaction that first checks the chunks hold exactly `size` bytes.
    fn commit(mut self: Box<Self>, size: u64, digest: &[u8; 32]) -> Result<(), StoreError> {
        self.usable()?;
        let size = size_to_sql(size)?;
        let (id, seq, data) = (&self.id, self.seq, &self.buf);
        let done = self.store.run(|c| -> Attempt<bool> {
            let mut tx = c.transaction()?;
            if !data.is_empty() && !insert_chunk(&mut tx, id, seq, data)? {
                return Ok(false);
            }
            let changed = tx.execute(
                "UPDATE blobs SET state = 'committed', size = $2, digest = $3
                 WHERE id = $1 AND state = 'staged'
                   AND $2 = (SELECT coalesce(sum(octet_length(data)), 0)
                             FROM blob_chunks WHERE blob_id = $1)",
                &[id, &size, &&digest[..]],
            )?;
            if changed != 1 {
                // Dropping tx rolls the last chunk back.
                return Ok(false);
            }
            tx.commit()?;
            Ok(true)
        });
        match done {
            Ok(true) => {
                self.committed = true;
                Ok(())
            }
            Ok(false) => Err(rows_gone(id)),
            Err(e) => Err(e),
        }
    }
}

impl Drop for PgWriter {
    /// Deletes what an upload that was not committed wrote. On the async runtime the
    /// round trip runs on its blocking pool, so that no task waits for the database.
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let store = Arc::clone(&self.store);
        let id = std::mem::take(&mut self.id);
        let clean = move || {
            let deleted = store.run(|c| {
                c.execute(
                    "DELETE FROM blobs WHERE id = $1 AND state = 'staged'",
                    &[&id],
                )?;
                Ok(())
            });
            if let Err(e) = deleted {
                tracing::warn!(blob_id = %id, error = %e, "could not delete an unfinished upload from the database; it is deleted as a leftover later");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if !crate::sim::active() => {
                handle.spawn_blocking(clean);
            }
            _ => clean(),
        }
    }
}
