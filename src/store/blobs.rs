//! Content files (uploads and mail attachments) on disk, written so a crash never exposes
//! half a file.
//!
//! Layout under `DATA_DIR/blobs/`:
//!
//! - `tmp/<id>.part`: uploads in progress. Anything here at start-up is the remains of a
//!   crash and is deleted by [`BlobStore::open`].
//! - `<first two hex digits of id>/<id>`: committed blobs, fsynced before and after the
//!   rename that moved them here. A committed blob that no item references (the server
//!   crashed between commit and delivery, or the item was deleted) is an orphan, and
//!   [`BlobStore::sweep_orphans`] removes it at start-up.
//!
//! Every path is built from a blob id, 128 random bits in lower-case hex, and every id
//! that comes back from outside is checked by [`is_valid_blob_id`] before it is used. A
//! client-provided name is never part of a path.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rand::RngCore;

use super::{is_valid_blob_id, sanitize_file_name, BlobRef, StoreError};

/// The directory under the data directory that holds all blobs.
const BLOBS_DIR: &str = "blobs";
/// The directory under [`BLOBS_DIR`] that holds uploads in progress.
const TMP_DIR: &str = "tmp";
/// The extension of an upload in progress.
const PART_EXT: &str = "part";

/// The blob files under `DATA_DIR/blobs`.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Opens (creating if needed) `DATA_DIR/blobs` and `DATA_DIR/blobs/tmp`, and deletes
    /// whatever is left in `tmp`: half uploads from before a crash or restart.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
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
        Ok(BlobStore { root })
    }

    /// Starts a new blob under a fresh random id, as `blobs/tmp/<id>.part`.
    pub fn stage(&self) -> Result<StagedBlob, StoreError> {
        let id = new_blob_id();
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

    /// Removes a committed blob; removing one that is already gone is not an error, so a
    /// retried cleanup is harmless.
    pub fn remove(&self, blob_id: &str) -> Result<(), StoreError> {
        match fs::remove_file(self.blob_path(blob_id)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes every committed blob whose id is not in `referenced`, and returns how many
    /// were deleted.
    ///
    /// Run this only at start-up, before the server accepts uploads: a blob committed but
    /// not yet delivered is unreferenced too, and would be swept. Files whose names are not
    /// blob ids are left alone and logged, since the store did not create them.
    pub fn sweep_orphans(&self, referenced: &HashSet<String>) -> Result<usize, StoreError> {
        let mut removed = 0usize;
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
                    fs::remove_file(entry.path())?;
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed unreferenced blobs");
        }
        Ok(removed)
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

    /// Appends `data` to the staging file and the running digest.
    pub fn append(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let added = u64::try_from(data.len()).unwrap_or(u64::MAX);
        let total = self
            .written
            .checked_add(added)
            .ok_or_else(|| StoreError::InvalidItem("blob size overflows".into()))?;
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
        assert!(stray.is_file());
        assert_eq!(tmp_entries(&store)?, 1);
        assert_eq!(store.sweep_orphans(&referenced)?, 0);
        drop(in_progress);
        Ok(())
    }
}
