//! Content files (uploads and mail attachments) on disk, written so a crash never exposes
//! half a file.
//!
//! Layout under `DATA_DIR/blobs/`:
//!
//! - `tmp/<id>.part`: uploads in progress. Anything here at start-up is the remains of a
//!   crash and is deleted by [`BlobStore::open`].
//! - `<first two hex digits of id>/<id>`: committed blobs, fsynced before and after the
//!   rename that moved them here. A committed blob that no item references (the server
//!   crashed between commit and delivery, a removal failed, or the database lost the item)
//!   is an orphan, and [`BlobStore::sweep_orphans`] moves it to `DATA/lost+found/` at
//!   start-up. Orphans are never deleted: the database cannot tell a leftover from a file
//!   it lost, and a lost or rolled-back database must not take every file with it.
//!
//! Every path is built from a blob id, 128 random bits in lower-case hex, and every id
//! that comes back from outside is checked by [`is_valid_blob_id`] before it is used. A
//! client-provided name is never part of a path.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::RngCore;

use super::lock::DataDirLock;
use super::pending::Pending;
use super::space::FreeSpace;
use super::{is_valid_blob_id, sanitize_file_name, BlobRef, StoreError, UserId};

/// The directory under the data directory that holds all blobs.
const BLOBS_DIR: &str = "blobs";
/// The directory under [`BLOBS_DIR`] that holds uploads in progress.
const TMP_DIR: &str = "tmp";
/// The extension of an upload in progress.
const PART_EXT: &str = "part";
/// The directory under the data directory that unreferenced blobs are moved to.
pub const LOST_FOUND_DIR: &str = "lost+found";

/// The blob files under `DATA_DIR/blobs`. Clones share the quota reservations of uploads
/// in progress and, for a server's store, the data-directory lock.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    space: FreeSpace,
    pending: Arc<Pending>,
    /// Held for as long as any clone lives (see [`BlobStore::open_exclusive`]).
    _lock: Option<Arc<DataDirLock>>,
}

impl BlobStore {
    /// Opens (creating if needed) `DATA_DIR/blobs` and `DATA_DIR/blobs/tmp`, and deletes
    /// whatever is left in `tmp`: half uploads from before a crash or restart.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        BlobStore::open_with(data_dir, None)
    }

    /// [`BlobStore::open`] for a server: first takes the data directory's lock
    /// ([`DataDirLock`]), so the start-up sweeps can never touch another server's uploads,
    /// and holds it for as long as this store or a clone of it lives.
    pub fn open_exclusive(data_dir: &Path) -> Result<Self, StoreError> {
        let lock = DataDirLock::acquire(data_dir)?;
        BlobStore::open_with(data_dir, Some(Arc::new(lock)))
    }

    /// Refuses new uploads and chunks that would leave less than `min_free_bytes` free on
    /// the blob store's file system, with [`StoreError::StorageFull`].
    pub fn with_min_free_bytes(mut self, min_free_bytes: u64) -> Self {
        self.space = FreeSpace::new(&self.root, min_free_bytes);
        self
    }

    fn open_with(data_dir: &Path, lock: Option<Arc<DataDirLock>>) -> Result<Self, StoreError> {
        let root = data_dir.join(BLOBS_DIR);
        let tmp = root.join(TMP_DIR);
        fs::create_dir_all(&tmp)?;
        let mut cleared = 0usize;
        for entry in fs::read_dir(&tmp)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
            cleared += 1;
        }
        if cleared > 0 {
            tracing::info!(cleared, "removed unfinished uploads from blobs/tmp");
        }
        Ok(BlobStore {
            space: FreeSpace::unlimited(&root),
            root,
            pending: Arc::default(),
            _lock: lock,
        })
    }

    /// Starts a new blob under a fresh random id, as `blobs/tmp/<id>.part`, charged to no
    /// one (tools and tests; the server uses [`BlobStore::stage_for`]).
    pub fn stage(&self) -> Result<StagedBlob, StoreError> {
        self.stage_with(None)
    }

    /// Starts `user`'s upload of `size` bytes: refused with [`StoreError::StorageFull`] if
    /// it would not fit above the free-space floor, and with [`StoreError::QuotaExceeded`]
    /// unless `used` (the user's charge in the database), plus what the user's other
    /// uploads hold, plus `size` and [`ITEM_OVERHEAD_BYTES`](super::ITEM_OVERHEAD_BYTES)
    /// fits in `quota`. The reservation holds until the upload is dropped, removed, or
    /// [`BlobStore::delivered`].
    pub fn stage_for(
        &self,
        user: UserId,
        size: u64,
        used: u64,
        quota: u64,
    ) -> Result<StagedBlob, StoreError> {
        self.space.check(size)?;
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
        let staged = self.create_staged(id.clone());
        if staged.is_err() {
            self.pending.release(&id);
        }
        staged
    }

    fn create_staged(&self, id: String) -> Result<StagedBlob, StoreError> {
        let tmp_path = self.tmp_dir().join(format!("{id}.{PART_EXT}"));
        // create_new makes an (astronomically unlikely) id collision an error instead of
        // two uploads silently sharing one file.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)?;
        Ok(StagedBlob {
            id,
            root: self.root.clone(),
            tmp_path,
            file,
            written: 0,
            hasher: blake3::Hasher::new(),
            finished: false,
            committed: false,
            space: self.space.clone(),
            pending: Arc::clone(&self.pending),
        })
    }

    /// Opens a committed blob for reading.
    pub fn open_blob(&self, blob_id: &str) -> Result<File, StoreError> {
        Ok(File::open(self.blob_path(blob_id)?)?)
    }

    /// Reads up to `max_len` bytes starting at `offset`; the result is shorter only at the
    /// end of the blob, and empty when `offset` is at or past the end.
    pub fn read_at(
        &self,
        blob_id: &str,
        offset: u64,
        max_len: usize,
    ) -> Result<Vec<u8>, StoreError> {
        let mut file = self.open_blob(blob_id)?;
        let len = file.metadata()?.len();
        // Sizing the buffer from the file rather than from `max_len` keeps a huge requested
        // length from allocating more than the blob actually holds.
        let available = len.saturating_sub(offset);
        let want = usize::try_from(available).map_or(max_len, |a| a.min(max_len));
        if want == 0 {
            return Ok(Vec::new());
        }
        file.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::with_capacity(want);
        file.take(u64::try_from(want).unwrap_or(u64::MAX))
            .read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// Removes a committed blob (and any quota its upload still held); removing one that is
    /// already gone is not an error, so a retried cleanup is harmless.
    pub fn remove(&self, blob_id: &str) -> Result<(), StoreError> {
        let path = self.blob_path(blob_id)?;
        self.pending.release(blob_id);
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Moves every committed blob whose id is not in `referenced` to `DATA/lost+found/`,
    /// and returns how many were moved; a warning gives the count.
    ///
    /// Nothing is deleted: an unreferenced blob may be a leftover, or a file the database
    /// lost (deleted, emptied, or rolled back with its WAL), and only an operator can tell.
    /// Run this only at start-up, before the server accepts uploads: a blob committed but
    /// not yet delivered is unreferenced too. Files whose names are not blob ids are left
    /// alone and logged, since the store did not create them.
    pub fn sweep_orphans(&self, referenced: &HashSet<String>) -> Result<usize, StoreError> {
        let lost_found = self.lost_found_dir();
        let mut moved = 0usize;
        for shard in fs::read_dir(&self.root)? {
            let shard = shard?;
            let shard_name = shard.file_name();
            let Some(shard_name) = shard_name.to_str() else {
                continue;
            };
            if !is_shard_name(shard_name) || !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(shard.path())? {
                let entry = entry?;
                let name = entry.file_name();
                let id = match name.to_str() {
                    Some(id) if is_valid_blob_id(id) && id.starts_with(shard_name) => id,
                    _ => {
                        tracing::warn!(path = %entry.path().display(), "unexpected file in blob store left alone");
                        continue;
                    }
                };
                if !referenced.contains(id) {
                    if moved == 0 {
                        fs::create_dir_all(&lost_found)?;
                    }
                    // A rename within one file system: the bytes are never copied, and a
                    // crash leaves the blob in one place or the other.
                    fs::rename(entry.path(), lost_found.join(id))?;
                    moved += 1;
                }
            }
        }
        if moved > 0 {
            sync_dir(&lost_found)?;
            tracing::warn!(
                moved,
                dir = %lost_found.display(),
                "moved blobs that no item references to lost+found; nothing was deleted. \
                 They are leftovers of a crash, or files the database lost: restore the \
                 database from a backup if items are missing, else delete them"
            );
        }
        Ok(moved)
    }

    /// `DATA/lost+found`, where unreferenced blobs are moved.
    pub fn lost_found_dir(&self) -> PathBuf {
        match self.root.parent() {
            Some(data_dir) => data_dir.join(LOST_FOUND_DIR),
            None => self.root.join(LOST_FOUND_DIR),
        }
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join(TMP_DIR)
    }

    fn blob_path(&self, blob_id: &str) -> Result<PathBuf, StoreError> {
        blob_path(&self.root, blob_id)
    }
}

/// An upload in progress: appended to, hashed as it goes, and either committed or, when
/// dropped, removed.
#[derive(Debug)]
pub struct StagedBlob {
    id: String,
    root: PathBuf,
    tmp_path: PathBuf,
    file: File,
    written: u64,
    hasher: blake3::Hasher,
    /// Set once the staging file no longer needs removing (it was renamed into place).
    finished: bool,
    /// Set once the blob is committed: its quota reservation then lives on until the blob is
    /// delivered or removed.
    committed: bool,
    space: FreeSpace,
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

    /// Appends `data` to the staging file and the running digest. Refused with
    /// [`StoreError::StorageFull`] if it would leave less than the free-space floor.
    pub fn append(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let added = u64::try_from(data.len()).unwrap_or(u64::MAX);
        let total = self
            .written
            .checked_add(added)
            .ok_or_else(|| StoreError::InvalidItem("blob size overflows".into()))?;
        self.space.check(added)?;
        self.file.write_all(data)?;
        self.hasher.update(data);
        self.written = total;
        Ok(())
    }

    /// The blake3 digest of everything appended so far.
    pub fn digest_so_far(&self) -> [u8; 32] {
        *self.hasher.finalize().as_bytes()
    }

    /// Makes the blob durable and visible: fsyncs the file, renames `tmp/<id>.part` to
    /// `<first two hex digits>/<id>`, and fsyncs both directories. Returns the blob's
    /// reference with its size and blake3 digest. After this the blob is durable but
    /// unreferenced until an item references it.
    ///
    /// `name` is passed through [`sanitize_file_name`] and is only recorded in the
    /// returned [`BlobRef`]; it never becomes part of a path. On error the staging file is
    /// removed and no committed blob is left behind.
    pub fn commit(mut self, name: &str) -> Result<BlobRef, StoreError> {
        self.file.flush()?;
        self.file.sync_all()?;
        let final_path = blob_path(&self.root, &self.id)?;
        let shard_dir = final_path
            .parent()
            .ok_or_else(|| StoreError::Corrupt("blob path has no parent".into()))?
            .to_path_buf();
        let shard_is_new = !shard_dir.is_dir();
        fs::create_dir_all(&shard_dir)?;
        fs::rename(&self.tmp_path, &final_path)?;
        // From here the staging file is gone; Drop must not try to remove it again.
        self.finished = true;
        let synced = sync_dir(&shard_dir)
            .and_then(|()| sync_dir(&self.root.join(TMP_DIR)))
            .and_then(|()| {
                if shard_is_new {
                    sync_dir(&self.root)
                } else {
                    Ok(())
                }
            });
        if let Err(e) = synced {
            // The blob is not known to be durable, so it must not be handed out as if it
            // were; removing it keeps the "committed means durable" promise.
            let _ = fs::remove_file(&final_path);
            return Err(e.into());
        }
        self.committed = true;
        Ok(BlobRef {
            blob_id: self.id.clone(),
            name: sanitize_file_name(name),
            size: self.written,
            digest: self.digest_so_far(),
        })
    }
}

impl Drop for StagedBlob {
    fn drop(&mut self) {
        if !self.committed {
            self.pending.release(&self.id);
        }
        if !self.finished {
            if let Err(e) = fs::remove_file(&self.tmp_path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(blob_id = %self.id, error = %e, "could not remove unfinished upload");
                }
            }
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

fn blob_path(root: &Path, blob_id: &str) -> Result<PathBuf, StoreError> {
    // A valid id is ASCII, so `get` can only fail for an invalid one.
    match blob_id.get(..2) {
        Some(shard) if is_valid_blob_id(blob_id) => Ok(root.join(shard).join(blob_id)),
        _ => Err(StoreError::InvalidBlobId(blob_id.to_owned())),
    }
}

fn is_shard_name(name: &str) -> bool {
    name.len() == 2 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Makes a directory's entries (a rename into or out of it) durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Windows cannot open a directory as a file, and NTFS journals renames itself.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn tmp_entries(store: &BlobStore) -> io::Result<usize> {
        Ok(fs::read_dir(store.tmp_dir())?.count())
    }

    #[test]
    fn dropped_stage_leaves_nothing() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = BlobStore::open(dir.path())?;
        let mut staged = store.stage()?;
        staged.append(b"half an upload")?;
        assert_eq!(tmp_entries(&store)?, 1);
        drop(staged);
        assert_eq!(tmp_entries(&store)?, 0);
        Ok(())
    }

    #[test]
    fn commit_makes_blob_readable_with_right_digest() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = BlobStore::open(dir.path())?;
        let mut staged = store.stage()?;
        let id = staged.id().to_owned();
        assert!(is_valid_blob_id(&id));
        staged.append(b"hello ")?;
        staged.append(b"world")?;
        assert_eq!(staged.written(), 11);
        assert_eq!(
            staged.digest_so_far(),
            *blake3::hash(b"hello world").as_bytes()
        );
        let blob = staged.commit("../../etc/passwd")?;
        assert_eq!(blob.blob_id, id);
        assert_eq!(blob.name, "passwd");
        assert_eq!(blob.size, 11);
        assert_eq!(blob.digest, *blake3::hash(b"hello world").as_bytes());
        assert_eq!(tmp_entries(&store)?, 0);
        assert!(dir.path().join("blobs").join(&id[..2]).join(&id).is_file());

        let mut content = Vec::new();
        store.open_blob(&id)?.read_to_end(&mut content)?;
        assert_eq!(content, b"hello world");
        assert_eq!(store.read_at(&id, 0, 5)?, b"hello");
        assert_eq!(store.read_at(&id, 6, 100)?, b"world");
        assert_eq!(store.read_at(&id, 11, 100)?, b"");
        assert_eq!(store.read_at(&id, u64::MAX, usize::MAX)?, b"");
        assert_eq!(store.read_at(&id, 3, 0)?, b"");
        Ok(())
    }

    #[test]
    fn empty_blob_commits() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = BlobStore::open(dir.path())?;
        let blob = store.stage()?.commit("")?;
        assert_eq!(blob.size, 0);
        assert_eq!(blob.name, "unnamed");
        assert_eq!(blob.digest, *blake3::hash(b"").as_bytes());
        assert_eq!(store.read_at(&blob.blob_id, 0, 10)?, b"");
        Ok(())
    }

    #[test]
    fn open_clears_tmp() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = BlobStore::open(dir.path())?;
        let mut staged = store.stage()?;
        staged.append(b"crash before commit")?;
        // Simulates a crash: the process dies without running Drop.
        std::mem::forget(staged);
        fs::create_dir(store.tmp_dir().join("stray-dir"))?;
        assert_eq!(tmp_entries(&store)?, 2);
        let store = BlobStore::open(dir.path())?;
        assert_eq!(tmp_entries(&store)?, 0);
        Ok(())
    }

    #[test]
    fn forged_ids_are_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = BlobStore::open(dir.path())?;
        for bad in [
            "../../../etc/passwd",
            "",
            "tmp",
            &"A".repeat(32),
            &"0".repeat(33),
        ] {
            assert!(
                matches!(store.open_blob(bad), Err(StoreError::InvalidBlobId(_))),
                "{bad:?}"
            );
            assert!(matches!(
                store.read_at(bad, 0, 1),
                Err(StoreError::InvalidBlobId(_))
            ));
            assert!(matches!(
                store.remove(bad),
                Err(StoreError::InvalidBlobId(_))
            ));
        }
        let missing = "0".repeat(32);
        assert!(
            matches!(store.open_blob(&missing), Err(StoreError::Io(e)) if e.kind() == io::ErrorKind::NotFound)
        );
        Ok(())
    }

    #[test]
    fn remove_is_idempotent() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = BlobStore::open(dir.path())?;
        let blob = store.stage()?.commit("x")?;
        store.remove(&blob.blob_id)?;
        assert!(store.open_blob(&blob.blob_id).is_err());
        store.remove(&blob.blob_id)?;
        Ok(())
    }

    #[test]
    fn sweep_removes_only_unreferenced() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = BlobStore::open(dir.path())?;
        let keep = store.stage()?.commit("keep")?;
        let orphan = store.stage()?.commit("orphan")?;
        let mut in_progress = store.stage()?;
        in_progress.append(b"still uploading")?;
        let stray = dir
            .path()
            .join("blobs")
            .join(&keep.blob_id[..2])
            .join("notes.txt");
        fs::write(&stray, b"not ours")?;

        let referenced: HashSet<String> = [keep.blob_id.clone()].into_iter().collect();
        assert_eq!(store.sweep_orphans(&referenced)?, 1);
        assert!(store.open_blob(&keep.blob_id).is_ok());
        assert!(store.open_blob(&orphan.blob_id).is_err());
        // Moved, not deleted.
        let found = dir.path().join(LOST_FOUND_DIR).join(&orphan.blob_id);
        assert!(found.is_file(), "{} missing", found.display());
        assert!(stray.is_file());
        assert_eq!(tmp_entries(&store)?, 1);
        assert_eq!(store.sweep_orphans(&referenced)?, 0);
        drop(in_progress);
        Ok(())
    }

    #[test]
    fn with_no_database_every_blob_goes_to_lost_and_found_intact() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = BlobStore::open(dir.path())?;
        let mut ids = Vec::new();
        for i in 0..3u8 {
            let mut staged = store.stage()?;
            staged.append(&[i; 100])?;
            ids.push(staged.commit("f")?.blob_id);
        }
        // What a lost or emptied database looks like: it references nothing.
        assert_eq!(store.sweep_orphans(&HashSet::new())?, 3);
        for (i, id) in (0u8..).zip(&ids) {
            let moved = fs::read(store.lost_found_dir().join(id))?;
            assert_eq!(moved, [i; 100]);
        }
        assert_eq!(store.sweep_orphans(&HashSet::new())?, 0);
        Ok(())
    }

    #[test]
    fn uploads_hold_quota_across_stores_until_dropped_removed_or_delivered() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = BlobStore::open(dir.path())?;
        let other_session = store.clone();
        let overhead = crate::store::ITEM_OVERHEAD_BYTES;
        let quota = 16 * 1024 + overhead;
        // One 12 KiB upload fits a 16 KiB quota; a second, from another session, does not.
        let first = store.stage_for(1, 12 * 1024, 0, quota)?;
        assert_eq!(store.pending_bytes(1), 12 * 1024 + overhead);
        assert!(matches!(
            other_session.stage_for(1, 12 * 1024, 0, quota),
            Err(StoreError::QuotaExceeded { .. })
        ));
        assert_eq!(tmp_entries(&store)?, 1, "a refused upload stages nothing");
        // Dropped unfinished: released.
        drop(first);
        assert_eq!(store.pending_bytes(1), 0);
        // Finished but undelivered still counts; removing it releases.
        let mut second = other_session.stage_for(1, 10, 0, quota)?;
        second.append(b"0123456789")?;
        let done = second.commit("a")?;
        assert_eq!(store.pending_bytes(1), 10 + overhead);
        assert!(store.stage_for(1, 16 * 1024, 0, quota).is_err());
        store.remove(&done.blob_id)?;
        assert_eq!(store.pending_bytes(1), 0);
        // Delivered: the item's own charge takes over.
        let third = store.stage_for(1, 0, 0, quota)?.commit("b")?;
        assert_eq!(store.pending_bytes(1), overhead);
        store.delivered(&third.blob_id);
        assert_eq!(store.pending_bytes(1), 0);
        Ok(())
    }

    #[test]
    fn below_the_floor_uploads_and_chunks_are_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let open = BlobStore::open(dir.path())?;
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
