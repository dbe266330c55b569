//! Free space on the data directory's file system, and the reserve that keeps deletes
//! working on a full disk.
//!
//! [`FreeSpace`] answers one question before anything new is written: is there still
//! `storage.min_free_bytes` free after this write? Uploads, deliveries and the activity
//! recorder all ask it, so on a filling disk new data stops at the floor while what is
//! already stored can still be read and deleted. The recorder asks through
//! [`FreeSpace::room_for_activity`] and sheds what it cannot write.
//!
//! The floor only holds back rampart's own writes. Another process can still fill the disk
//! to the last block, and then SQLite cannot even delete (a delete appends pages to the
//! WAL). So the server keeps [`Reserve`], a file of [`RESERVE_BYTES`] real blocks, and gives
//! them back to the file system when a delete fails for lack of space; it takes them again
//! once the disk has room.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::StoreError;

/// The reserve file's name inside the data directory.
pub const RESERVE_FILE: &str = "rampart.reserve";

/// Size of the reserve. A delete rewrites about eight 4 KiB pages (the item, its blob rows,
/// two indexes each, the sender's usage) into the WAL: about 35 KiB. 1 MiB covers a few
/// dozen deletes, each of which frees its blobs and so makes room for the next.
pub const RESERVE_BYTES: u64 = 1024 * 1024;

/// Whether an IO error means the file system is out of space or over a disk quota.
pub fn is_out_of_space(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        use rustix::io::Errno;
        e.raw_os_error()
            .is_some_and(|n| n == Errno::NOSPC.raw_os_error() || n == Errno::DQUOT.raw_os_error())
    }
    #[cfg(not(unix))]
    {
        e.kind() == io::ErrorKind::StorageFull
    }
}

/// The free-space floor of one data directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FreeSpace {
    dir: PathBuf,
    min_free_bytes: u64,
}

impl FreeSpace {
    /// Keeps `min_free_bytes` free on the file system that holds `dir`.
    pub fn new(dir: &Path, min_free_bytes: u64) -> FreeSpace {
        FreeSpace {
            dir: dir.to_path_buf(),
            min_free_bytes,
        }
    }

    /// No floor: only a real ENOSPC stops a write (stores opened outside a server).
    pub fn unlimited(dir: &Path) -> FreeSpace {
        FreeSpace::new(dir, 0)
    }

    /// The floor in bytes.
    pub fn min_free_bytes(&self) -> u64 {
        self.min_free_bytes
    }

    /// Bytes an unprivileged writer can still use on the file system.
    pub fn available(&self) -> io::Result<u64> {
        available_bytes(&self.dir)
    }

    /// [`StoreError::StorageFull`] unless `bytes` more can be written and still leave the
    /// floor free. With no floor this never asks the file system.
    pub fn check(&self, bytes: u64) -> Result<(), StoreError> {
        if self.min_free_bytes == 0 {
            return Ok(());
        }
        let available = self.available()?;
        if available.saturating_sub(bytes) < self.min_free_bytes {
            return Err(StoreError::StorageFull);
        }
        Ok(())
    }

    /// Whether the activity recorder may commit its next batch: the disk still has the
    /// floor free. Below it the recorder sheds and counts its events, so activity never
    /// takes the bytes the store keeps for deletes. If free space cannot be read, recording
    /// goes on (the write itself then reports a real failure).
    pub fn room_for_activity(&self) -> bool {
        self.check(0).is_ok()
    }
}

/// `statvfs(3)`: blocks available to unprivileged users times the fragment size.
#[cfg(unix)]
fn available_bytes(dir: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Without statvfs the floor cannot be measured; only a real ENOSPC stops writes.
#[cfg(not(unix))]
fn available_bytes(_dir: &Path) -> io::Result<u64> {
    Ok(u64::MAX)
}

/// [`RESERVE_BYTES`] of allocated blocks in `DATA/rampart.reserve`, given back to the file
/// system when a delete needs them.
#[derive(Debug)]
pub struct Reserve {
    path: PathBuf,
    held: AtomicBool,
}

impl Reserve {
    /// Opens the reserve of `data_dir` and fills it to [`RESERVE_BYTES`] if the disk has
    /// room; a disk too full for it is logged, not refused, since refusing to start would not
    /// make room.
    pub fn open(data_dir: &Path) -> Reserve {
        let reserve = Reserve {
            path: data_dir.join(RESERVE_FILE),
            held: AtomicBool::new(false),
        };
        if let Err(e) = reserve.fill() {
            tracing::warn!(error = %e, path = %reserve.path.display(), "no free-space reserve: deletes may fail while the disk is full");
        }
        reserve
    }

    /// Whether the reserve currently holds its blocks.
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// Gives the reserve's blocks back to the file system. Returns whether there was
    /// anything to give.
    pub fn release(&self) -> bool {
        if !self.held.swap(false, Ordering::Relaxed) {
            return false;
        }
        match fs::remove_file(&self.path) {
            Ok(()) => {
                tracing::warn!(
                    bytes = RESERVE_BYTES,
                    "disk full: released the free-space reserve so deletes can proceed"
                );
                true
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::error!(error = %e, "cannot release the free-space reserve");
                false
            }
        }
    }

    /// Takes the reserve again after a release, if `space` has room for it above the floor.
    pub fn restore(&self, space: &FreeSpace) {
        if self.is_held() {
            return;
        }
        let room = space
            .available()
            .is_ok_and(|a| a >= space.min_free_bytes().saturating_add(2 * RESERVE_BYTES));
        if room {
            if let Err(e) = self.fill() {
                tracing::warn!(error = %e, "cannot restore the free-space reserve");
            }
        }
    }

    /// Writes real zeros (a sparse `set_len` would reserve nothing) and fsyncs.
    fn fill(&self) -> io::Result<()> {
        let existing = fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if existing >= RESERVE_BYTES {
            self.held.store(true, Ordering::Relaxed);
            return Ok(());
        }
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&self.path)?;
            let zeros = [0u8; 64 * 1024];
            let mut left = RESERVE_BYTES;
            while left > 0 {
                let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
                file.write_all(zeros.get(..n).unwrap_or(&zeros))?;
                left -= n as u64;
            }
            file.sync_all()
        })();
        match result {
            Ok(()) => {
                self.held.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                // Half a reserve would take space without being counted on; give it back.
                let _ = fs::remove_file(&self.path);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_floor_beyond_the_disk_refuses_and_no_floor_never_does() -> Result<(), StoreError> {
        let dir = tempfile::tempdir()?;
        let available = FreeSpace::unlimited(dir.path()).available()?;
        assert!(available > 0);
        FreeSpace::unlimited(dir.path()).check(u64::MAX)?;
        let floor = FreeSpace::new(dir.path(), u64::MAX);
        assert!(matches!(floor.check(0), Err(StoreError::StorageFull)));
        assert!(!floor.room_for_activity());
        let low = FreeSpace::new(dir.path(), 1);
        low.check(0)?;
        assert!(low.room_for_activity());
        assert!(matches!(low.check(u64::MAX), Err(StoreError::StorageFull)));
        Ok(())
    }

    #[test]
    fn the_reserve_is_filled_released_and_restored() -> Result<(), StoreError> {
        let dir = tempfile::tempdir()?;
        let reserve = Reserve::open(dir.path());
        let path = dir.path().join(RESERVE_FILE);
        assert!(reserve.is_held());
        assert_eq!(fs::metadata(&path)?.len(), RESERVE_BYTES);
        assert!(reserve.release());
        assert!(!path.exists());
        assert!(!reserve.release(), "a second release has nothing to give");
        // No room above a huge floor: stays released.
        reserve.restore(&FreeSpace::new(dir.path(), u64::MAX / 2));
        assert!(!reserve.is_held());
        reserve.restore(&FreeSpace::unlimited(dir.path()));
        assert!(reserve.is_held());
        assert_eq!(fs::metadata(&path)?.len(), RESERVE_BYTES);
        Ok(())
    }

    #[test]
    fn enospc_and_edquot_are_out_of_space_and_others_are_not() {
        #[cfg(unix)]
        {
            use rustix::io::Errno;
            for (errno, full) in [
                (Errno::NOSPC, true),
                (Errno::DQUOT, true),
                (Errno::IO, false),
            ] {
                let e = io::Error::from_raw_os_error(errno.raw_os_error());
                assert_eq!(is_out_of_space(&e), full, "{e}");
            }
        }
        assert!(!is_out_of_space(&io::Error::other("x")));
    }
}
