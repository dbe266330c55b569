//! [`DirBlobs`]: blobs as files in the data directory, written so a crash never exposes
//! half a file. The embedded default, and all a single server needs.
//!
//! Layout under `DATA_DIR/blobs/`:
//!
//! - `tmp/<id>.part`: uploads in progress. Anything here at start-up is the remains of a
//!   crash and is deleted by [`DirBlobs::open`]. The data directory belongs to one server
//!   (its lock, [`crate::store::DataDirLock`]), so nobody else can be uploading into it.
//! - `<first two hex digits of id>/<id>`: committed blobs, fsynced before and after the
//!   rename that moved them here. A committed blob that no item references (the server
//!   crashed between commit and delivery, a removal failed, or the database lost the item)
//!   is an orphan, and [`BlobStore::sweep_orphans`] moves it to `DATA/lost+found/` at
//!   start-up. Orphans are never deleted: the database cannot tell a leftover from a file
//!   it lost, and a lost or rolled-back database must not take every file with it.
//!
//! Every path is built from a blob id, and every id that comes back from outside is checked
//! by [`is_valid_blob_id`] before it is used.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{BlobStore, BlobWriter};
use crate::store::{is_valid_blob_id, StoreError};

/// The directory under the data directory that holds all blobs.
const BLOBS_DIR: &str = "blobs";
/// The directory under [`BLOBS_DIR`] that holds uploads in progress.
const TMP_DIR: &str = "tmp";
/// The extension of an upload in progress.
const PART_EXT: &str = "part";
/// The directory under the data directory that unreferenced blobs are moved to.
pub const LOST_FOUND_DIR: &str = "lost+found";

/// The blob files under `DATA_DIR/blobs`.
#[derive(Debug, Clone)]
pub struct DirBlobs {
    root: PathBuf,
}

impl DirBlobs {
    /// Opens (creating if needed) `DATA_DIR/blobs` and `DATA_DIR/blobs/tmp`, and deletes
    /// whatever is left in `tmp`: half uploads from before a crash or restart. A server
    /// takes the data directory's lock first, so that this never touches another server's
    /// uploads.
    pub fn open(data_dir: &Path) -> Result<DirBlobs, StoreError> {
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
        Ok(DirBlobs { root })
    }

    /// Opens a committed blob for reading; a missing one is [`StoreError::BlobNotFound`].
    pub fn open_blob(&self, blob_id: &str) -> Result<File, StoreError> {
        match File::open(self.blob_path(blob_id)?) {
            Ok(file) => Ok(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::BlobNotFound(blob_id.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
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

impl BlobStore for DirBlobs {
    /// Creates `blobs/tmp/<id>.part`.
    fn create(&self, blob_id: &str) -> Result<Box<dyn BlobWriter>, StoreError> {
        // The id becomes a file name: checked like every other.
        blob_path(&self.root, blob_id)?;
        let tmp_path = self.tmp_dir().join(format!("{blob_id}.{PART_EXT}"));
        // create_new makes an (astronomically unlikely) id collision an error instead of
        // two uploads silently sharing one file.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)?;
        Ok(Box::new(DirWriter {
            id: blob_id.to_owned(),
            root: self.root.clone(),
            tmp_path,
            file,
            written: 0,
            finished: false,
        }))
    }

    fn read_at(&self, blob_id: &str, offset: u64, max_len: usize) -> Result<Vec<u8>, StoreError> {
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

    fn remove(&self, blob_id: &str) -> Result<(), StoreError> {
        let path = self.blob_path(blob_id)?;
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Moves every committed blob whose id is not in `referenced` to `DATA/lost+found/`,
    /// and returns how many were moved; a warning gives the count. (`blobs/tmp` was
    /// already emptied by [`DirBlobs::open`].)
    ///
    /// Nothing is deleted: an unreferenced blob may be a leftover, or a file the database
    /// lost (deleted, emptied, or rolled back with its WAL), and only an operator can tell.
    /// Files whose names are not blob ids are left alone and logged, since the store did
    /// not create them.
    fn sweep_orphans(&self, referenced: &HashSet<String>) -> Result<usize, StoreError> {
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

    fn local_dir(&self) -> Option<&Path> {
        Some(&self.root)
    }
}

/// An upload in progress in `blobs/tmp`, renamed into place by its commit and removed when
/// dropped before.
#[derive(Debug)]
struct DirWriter {
    id: String,
    root: PathBuf,
    tmp_path: PathBuf,
    file: File,
    written: u64,
    /// Set once the staging file no longer needs removing (it was renamed into place).
    finished: bool,
}

impl BlobWriter for DirWriter {
    fn append(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.file.write_all(data)?;
        self.written = self
            .written
            .saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
        Ok(())
    }

    /// Fsyncs the file, renames `tmp/<id>.part` to `<first two hex digits>/<id>`, and
    /// fsyncs both directories. On error the staging file is removed and no committed blob
    /// is left behind.
    fn commit(mut self: Box<Self>, size: u64, _digest: &[u8; 32]) -> Result<(), StoreError> {
        if size != self.written {
            return Err(StoreError::InvalidItem(format!(
                "blob {} has {} bytes, not {size}",
                self.id, self.written
            )));
        }
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
        Ok(())
    }
}

impl Drop for DirWriter {
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
    use std::sync::Arc;

    use super::*;
    use crate::store::Blobs;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// The directory backend, and the facade over it that stages uploads.
    fn open(dir: &Path) -> Result<(DirBlobs, Blobs), StoreError> {
        let blobs = DirBlobs::open(dir)?;
        Ok((blobs.clone(), Blobs::new(Arc::new(blobs))))
    }

    fn tmp_entries(store: &DirBlobs) -> io::Result<usize> {
        Ok(fs::read_dir(store.tmp_dir())?.count())
    }

    #[test]
    fn dropped_stage_leaves_nothing_in_tmp() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (store, blobs) = open(dir.path())?;
        let mut staged = blobs.stage()?;
        staged.append(b"half an upload")?;
        assert_eq!(tmp_entries(&store)?, 1);
        drop(staged);
        assert_eq!(tmp_entries(&store)?, 0);
        Ok(())
    }

    #[test]
    fn a_committed_blob_is_renamed_into_its_shard() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (store, blobs) = open(dir.path())?;
        let mut staged = blobs.stage()?;
        staged.append(b"hello world")?;
        let blob = staged.commit("../../etc/passwd")?;
        let id = &blob.blob_id;
        assert_eq!(tmp_entries(&store)?, 0);
        assert!(dir.path().join("blobs").join(&id[..2]).join(id).is_file());
        let mut content = Vec::new();
        store.open_blob(id)?.read_to_end(&mut content)?;
        assert_eq!(content, b"hello world");
        Ok(())
    }

    #[test]
    fn open_clears_tmp() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (store, blobs) = open(dir.path())?;
        let mut staged = blobs.stage()?;
        staged.append(b"crash before commit")?;
        // Simulates a crash: the process dies without running Drop.
        std::mem::forget(staged);
        fs::create_dir(store.tmp_dir().join("stray-dir"))?;
        assert_eq!(tmp_entries(&store)?, 2);
        let (store, _) = open(dir.path())?;
        assert_eq!(tmp_entries(&store)?, 0);
        Ok(())
    }

    #[test]
    fn forged_ids_never_become_paths() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (store, _) = open(dir.path())?;
        for bad in ["../../../etc/passwd", "", "tmp", &"A".repeat(32)] {
            assert!(
                matches!(store.open_blob(bad), Err(StoreError::InvalidBlobId(_))),
                "{bad:?}"
            );
            assert!(matches!(
                store.create(bad),
                Err(StoreError::InvalidBlobId(_))
            ));
        }
        assert_eq!(tmp_entries(&store)?, 0);
        let missing = "0".repeat(32);
        assert!(matches!(
            store.open_blob(&missing),
            Err(StoreError::BlobNotFound(id)) if id == missing
        ));
        Ok(())
    }

    #[test]
    fn sweep_moves_only_unreferenced() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (store, blobs) = open(dir.path())?;
        let keep = blobs.stage()?.commit("keep")?;
        let orphan = blobs.stage()?.commit("orphan")?;
        let mut in_progress = blobs.stage()?;
        in_progress.append(b"still uploading")?;
        let stray = dir
            .path()
            .join("blobs")
            .join(&keep.blob_id[..2])
            .join("notes.txt");
        fs::write(&stray, b"not ours")?;

        let referenced: HashSet<String> = [keep.blob_id.clone()].into_iter().collect();
        assert_eq!(blobs.sweep_orphans(&referenced)?, 1);
        assert!(store.open_blob(&keep.blob_id).is_ok());
        assert!(store.open_blob(&orphan.blob_id).is_err());
        // Moved, not deleted.
        let found = dir.path().join(LOST_FOUND_DIR).join(&orphan.blob_id);
        assert!(found.is_file(), "{} missing", found.display());
        assert!(stray.is_file());
        assert_eq!(tmp_entries(&store)?, 1);
        assert_eq!(blobs.sweep_orphans(&referenced)?, 0);
        drop(in_progress);
        Ok(())
    }

    #[test]
    fn with_no_database_every_blob_goes_to_lost_and_found_intact() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (store, blobs) = open(dir.path())?;
        let mut ids = Vec::new();
        for i in 0..3u8 {
            let mut staged = blobs.stage()?;
            staged.append(&[i; 100])?;
            ids.push(staged.commit("f")?.blob_id);
        }
        // What a lost or emptied database looks like: it references nothing.
        assert_eq!(blobs.sweep_orphans(&HashSet::new())?, 3);
        for (i, id) in (0u8..).zip(&ids) {
            let moved = fs::read(store.lost_found_dir().join(id))?;
            assert_eq!(moved, [i; 100]);
        }
        assert_eq!(blobs.sweep_orphans(&HashSet::new())?, 0);
        Ok(())
    }
}
