//! Content (uploads and mail attachments): where its bytes live, and what every upload
//! goes through whatever the place.
//!
//! [`BlobStore`] is a place for blob bytes. Two backends implement it:
//!
//! - [`DirBlobs`], the directory `DATA/blobs/` of one server: the embedded default;
//! - `PgBlobs` (`src/store/postgres/blobs.rs`, with the `postgres` feature), chunked in the
//!   PostgreSQL database a fleet shares, so that every server reads what any of them took.
//!
//! The trait is shaped so that an object store (the S3 API) fits as well: a
//! [`BlobWriter`] is a multipart upload (appends buffered into parts, [`BlobWriter::commit`]
//! completes it, dropping it aborts it), [`BlobStore::read_at`] is a ranged GET and
//! [`BlobStore::remove`] a DELETE, which an object store already treats as idempotent.
//!
//! [`Blobs`] is what the server holds: one backend behind an `Arc<dyn BlobStore>`, and
//! around it everything that does not depend on where the bytes go. It picks each blob's
//! random id, hashes uploads as they arrive, charges them to their sender's quota before
//! they are items ([`Pending`]), keeps the free-space floor of the data directory's disk
//! when the backend writes there, and hands out the [`BlobRef`] of a committed blob.
//!
//! Every blob id is 128 random bits in lower-case hex, and every backend checks an id that
//! comes back from outside with [`is_valid_blob_id`] before it uses it. A client-provided
//! name is never part of a path or a key.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use rand::RngCore;

use super::lock::DataDirLock;
use super::pending::Pending;
use super::space::FreeSpace;
use super::{sanitize_file_name, BlobRef, StoreError, UserId};

mod dir;

pub use dir::{DirBlobs, LOST_FOUND_DIR};

/// A place for blob bytes: the local directory ([`DirBlobs`]), PostgreSQL (`PgBlobs`), or
/// later an object store. The server uses it through [`Blobs`].
///
/// Every method checks the blob ids it is given and refuses a malformed one with
/// [`StoreError::InvalidBlobId`].
pub trait BlobStore: Send + Sync + std::fmt::Debug + 'static {
    /// Starts writing a new blob under `blob_id` (fresh from [`Blobs`], never reused). The
    /// blob is invisible until [`BlobWriter::commit`]; a writer dropped before that leaves
    /// nothing behind.
    fn create(&self, blob_id: &str) -> Result<Box<dyn BlobWriter>, StoreError>;

    /// Reads up to `max_len` bytes of a committed blob starting at `offset`; the result is
    /// shorter only at the end of the blob, and empty when `offset` is at or past the end.
    /// Only the part of the blob the range covers is read. A blob that does not exist is
    /// [`StoreError::BlobNotFound`].
    fn read_at(&self, blob_id: &str, offset: u64, max_len: usize) -> Result<Vec<u8>, StoreError>;

    /// Removes a committed blob; removing one that is already gone is not an error, so a
    /// retried cleanup is harmless.
    fn remove(&self, blob_id: &str) -> Result<(), StoreError>;

    /// Start-up housekeeping: clears what a crash left of unfinished uploads, and sets aside
    /// (never deletes) committed blobs whose id is not in `referenced`. Returns how many were
    /// set aside. Each backend documents what it may touch safely, with other servers of a
    /// fleet running.
    fn sweep_orphans(&self, referenced: &HashSet<String>) -> Result<usize, StoreError>;

    /// The local directory the bytes are written to, if any: the free-space floor
    /// (`storage.min_free_bytes`) is kept on its file system. `None` for a backend whose
    /// bytes go elsewhere and which reports its own full disk as
    /// [`StoreError::StorageFull`].
    fn local_dir(&self) -> Option<&Path> {
        None
    }
}

/// One blob being written (an upload in progress): appended to in order, then committed.
/// Dropping a writer that was not committed aborts it, and what it wrote is removed.
pub trait BlobWriter: Send + Sync + std::fmt::Debug {
    /// Appends `data`. A backend buffers at most one of its chunks or parts in memory.
    fn append(&mut self, data: &[u8]) -> Result<(), StoreError>;

    /// Makes the blob durable and readable: when this returns `Ok` the blob survives a
    /// crash of this server and of the backend. `size` and `digest` are what [`Blobs`]
    /// counted and hashed; a backend may record them, and refuses a `size` that is not
    /// what it was given. On error nothing committed is left behind.
    fn commit(self: Box<Self>, size: u64, digest: &[u8; 32]) -> Result<(), StoreError>;
}

/// The blobs of a server: one [`BlobStore`], with the quota reservations of uploads in
/// progress and the free-space floor, which are the same for every backend. Clones share
/// the backend and the reservations (and, for a server, the data directory's lock).
#[derive(Debug, Clone)]
pub struct Blobs {
    backend: Arc<dyn BlobStore>,
    /// The floor, on the backend's local directory; `None` when it has none.
    space: Option<FreeSpace>,
    pending: Arc<Pending>,
    /// Held for as long as any clone lives (see [`Blobs::holding`]).
    _lock: Option<Arc<DataDirLock>>,
}

impl Blobs {
    /// The blobs in `backend`, with no free-space floor and no reservations yet.
    pub fn new(backend: Arc<dyn BlobStore>) -> Blobs {
        let space = backend.local_dir().map(FreeSpace::unlimited);
        Blobs {
            backend,
            space,
            pending: Arc::default(),
            _lock: None,
        }
    }

    /// The blobs in the directory `DATA_DIR/blobs` ([`DirBlobs::open`]).
    pub fn in_dir(data_dir: &Path) -> Result<Blobs, StoreError> {
        Ok(Blobs::new(Arc::new(DirBlobs::open(data_dir)?)))
    }

    /// Holds `lock`, the data directory's, for as long as these blobs or a clone of them
    /// live: a server's lifetime.
    pub fn holding(mut self, lock: Arc<DataDirLock>) -> Blobs {
        self._lock = Some(lock);
        self
    }

    /// The data directory's lock these blobs hold, if any, without holding it: it upgrades
    /// only while something still holds the lock.
    pub fn held_lock(&self) -> Option<std::sync::Weak<DataDirLock>> {
        self._lock.as_ref().map(Arc::downgrade)
    }

    /// Refuses new uploads and chunks that would leave less than `min_free_bytes` free on
    /// the file system of the backend's local directory, with [`StoreError::StorageFull`].
    /// A backend without one ([`BlobStore::local_dir`]) has no floor here.
    pub fn with_min_free_bytes(mut self, min_free_bytes: u64) -> Blobs {
        self.space = self
            .backend
            .local_dir()
            .map(|dir| FreeSpace::new(dir, min_free_bytes));
        self
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn BlobStore> {
        &self.backend
    }

    /// Starts a new blob under a fresh random id, charged to no one (tools and tests; the
    /// server uses [`Blobs::stage_for`]).
    pub fn stage(&self) -> Result<StagedBlob, StoreError> {
        self.stage_with(None)
    }

    /// Starts `user`'s upload of `size` bytes: refused with [`StoreError::StorageFull`] if
    /// it would not fit above the free-space floor, and with [`StoreError::QuotaExceeded`]
    /// unless `used` (the user's charge in the database), plus what the user's other
    /// uploads hold, plus `size` and [`ITEM_OVERHEAD_BYTES`](super::ITEM_OVERHEAD_BYTES)
    /// fits in `quota`. The reservation holds until the upload is dropped, removed, or
    /// [`Blobs::delivered`].
    pub fn stage_for(
        &self,
        user: UserId,
        size: u64,
        used: u64,
        quota: u64,
    ) -> Result<StagedBlob, StoreError> {
        check_space(self.space.as_ref(), size)?;
        self.stage_with(Some((user, size, used, quota)))
    }

    /// Bytes reserved right now by `user`'s uploads that are not items yet.
    pub fn pending_bytes(&self, user: UserId) -> u64 {
        self.pending.of(user)
    }

    /// Ends the quota reservation of a blob that is now part of a delivered item, whose
    /// own charge in the database has replaced it.
    pub fn delivered(&self, blob_id: &str) {
        self.pending.release(blob_id);
    }

    fn stage_with(
        &self,
        charge: Option<(UserId, u64, u64, u64)>,
    ) -> Result<StagedBlob, StoreError> {
        let id = new_blob_id();
        if let Some((user, size, used, quota)) = charge {
            self.pending.reserve(user, &id, size, used, quota)?;
        }
        match self.backend.create(&id) {
            Ok(writer) => Ok(StagedBlob {
                id,
                writer: Some(writer),
                written: 0,
                hasher: blake3::Hasher::new(),
                committed: false,
                space: self.space.clone(),
                pending: Arc::clone(&self.pending),
            }),
            Err(e) => {
                self.pending.release(&id);
                Err(e)
            }
        }
    }

    /// [`BlobStore::read_at`] on the backend.
    pub fn read_at(
        &self,
        blob_id: &str,
        offset: u64,
        max_len: usize,
    ) -> Result<Vec<u8>, StoreError> {
        self.backend.read_at(blob_id, offset, max_len)
    }

    /// Removes a committed blob and any quota its upload still held; removing one that is
    /// already gone is not an error ([`BlobStore::remove`]).
    pub fn remove(&self, blob_id: &str) -> Result<(), StoreError> {
        self.pending.release(blob_id);
        self.backend.remove(blob_id)
    }

    /// [`BlobStore::sweep_orphans`] on the backend. Run it only at start-up, before the
    /// server accepts uploads: a blob committed but not yet delivered is unreferenced too.
    pub fn sweep_orphans(&self, referenced: &HashSet<String>) -> Result<usize, StoreError> {
        self.backend.sweep_orphans(referenced)
    }
}

/// [`StoreError::StorageFull`] unless `bytes` more fit above the floor, if there is one.
fn check_space(space: Option<&FreeSpace>, bytes: u64) -> Result<(), StoreError> {
    match space {
        Some(space) => space.check(bytes),
        None => Ok(()),
    }
}

/// An upload in progress: appended to, hashed as it goes, and either committed or, when
/// dropped, removed (its backend's writer aborts) with its quota reservation released.
#[derive(Debug)]
pub struct StagedBlob {
    id: String,
    /// Taken by [`StagedBlob::commit`].
    writer: Option<Box<dyn BlobWriter>>,
    written: u64,
    hasher: blake3::Hasher,
    /// Set once the blob is committed: its quota reservation then lives on until the blob is
    /// delivered or removed.
    committed: bool,
    space: Option<FreeSpace>,
    pending: Arc<Pending>,
}

impl StagedBlob {
    /// The blob id this upload will be committed under.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Bytes appended so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `data` to the blob and the running digest. Refused with
    /// [`StoreError::StorageFull`] if it would leave less than the free-space floor.
    pub fn append(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let added = u64::try_from(data.len()).unwrap_or(u64::MAX);
        let total = self
            .written
            .checked_add(added)
            .ok_or_else(|| StoreError::InvalidItem("blob size overflows".into()))?;
        check_space(self.space.as_ref(), added)?;
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| StoreError::InvalidItem("the upload is already committed".into()))?;
        writer.append(data)?;
        self.hasher.update(data);
        self.written = total;
        Ok(())
    }

    /// The blake3 digest of everything appended so far.
    pub fn digest_so_far(&self) -> [u8; 32] {
        *self.hasher.finalize().as_bytes()
    }

    /// Makes the blob durable and readable ([`BlobWriter::commit`]) and returns its
    /// reference with its size and blake3 digest. After this the blob is durable but
    /// unreferenced until an item references it.
    ///
    /// `name` is passed through [`sanitize_file_name`] and is only recorded in the
    /// returned [`BlobRef`]; it never becomes part of a path or key. On error no committed
    /// blob is left behind.
    pub fn commit(mut self, name: &str) -> Result<BlobRef, StoreError> {
        let digest = self.digest_so_far();
        let writer = self
            .writer
            .take()
            .ok_or_else(|| StoreError::InvalidItem("the upload is already committed".into()))?;
        writer.commit(self.written, &digest)?;
        self.committed = true;
        Ok(BlobRef {
            blob_id: self.id.clone(),
            name: sanitize_file_name(name),
            size: self.written,
            digest,
        })
    }
}

impl Drop for StagedBlob {
    /// Releases the quota reservation of an upload that was not committed; its writer, if
    /// still here, aborts as it drops.
    fn drop(&mut self) {
        if !self.committed {
            self.pending.release(&self.id);
        }
    }
}

/// A fresh blob id: 128 bits from the OS-seeded thread RNG, as 32 lower-case hex digits.
///
/// This is the one random choice in the store that is deliberately not seeded: ids must
/// not be predictable, and nothing behaves differently depending on their value.
fn new_blob_id() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn below_the_floor_uploads_and_chunks_are_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let open = Blobs::in_dir(dir.path())?;
        let mut staged = open.stage_for(1, 10, 0, u64::MAX)?;
        let full = open.clone().with_min_free_bytes(u64::MAX / 2);
        assert!(matches!(
            full.stage_for(1, 10, 0, u64::MAX),
            Err(StoreError::StorageFull)
        ));
        let mut starved = full.stage()?;
        assert!(matches!(starved.append(b"x"), Err(StoreError::StorageFull)));
        staged.append(b"fine")?;
        Ok(())
    }
}
