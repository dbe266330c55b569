//! The data directory's owner: one server at a time.
//!
//! A server sweeps `blobs/tmp` and moves unreferenced blobs away at start-up; a second
//! server on the same directory would do that to the first one's uploads in flight. So the
//! server holds an exclusive `flock(2)` on `DATA/rampart.lock` for its whole life, and the
//! file holds its pid so the refusal can name the owner. The kernel drops the lock when the
//! process dies, however it dies, so a crash never leaves a stale lock behind; the pid in the
//! file is only a hint for the message.
//!
//! Offline commands (`rampart user`, `rampart firewall`, `rampart activity`) do not take
//! this lock: they only touch the SQLite databases, whose own locking makes them safe next
//! to a running server, and never the blob files.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::StoreError;

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "rampart.lock";

/// An exclusive lock on a data directory, released when dropped (or when the process
/// ends).
#[derive(Debug)]
pub struct DataDirLock {
    path: PathBuf,
    // Held open: closing the last descriptor of the open file releases the flock.
    _file: File,
}

/// Creates `data_dir` (and its parents) if it is missing, readable by its owner only: it holds
/// the password hashes, the ticket key and every user's items. A directory that exists is
/// left as the operator made it.
pub fn create_data_dir(data_dir: &Path) -> std::io::Result<()> {
    if data_dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(data_dir)
}

/// Creates the file at `path` empty and readable by its owner only if nothing is there yet, so
/// that a database opened on it next (and, for SQLite, its journal files, which take the
/// database's permissions) is not readable by other users whatever the umask.
pub fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

impl DataDirLock {
    /// Takes the lock on `data_dir` (creating the directory if needed) without waiting, and
    /// writes this process's pid into the lock file. Fails with [`StoreError::InUse`] if
    /// another process, or another server in this process, holds it.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, StoreError> {
        create_data_dir(data_dir)?;
        let path = data_dir.join(LOCK_FILE);
        // Not truncated on open: the owner's pid must still be readable if the lock is held.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if !try_lock_exclusive(&file)? {
            let mut text = String::new();
            // The pid is only for the message; an unreadable one is reported as unknown.
            let _ = file.read_to_string(&mut text);
            return Err(StoreError::InUse {
                dir: data_dir.to_path_buf(),
                pid: text.trim().parse().ok(),
            });
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        writeln!(file, "{}", std::process::id())?;
        file.sync_all()?;
        Ok(DataDirLock { path, _file: file })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(false)` if someone else holds the lock. An flock belongs
/// to the open file description, so a second open of the same file conflicts even within
/// one process.
#[cfg(unix)]
fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    use rustix::fs::{flock, FlockOperation};
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Elsewhere there is no flock; the lock is a no-op rather than a refusal to run.
#[cfg(not(unix))]
fn try_lock_exclusive(_file: &File) -> io::Result<bool> {
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_owners_pid_until_the_first_is_dropped(
    ) -> Result<(), StoreError> {
        let dir = tempfile::tempdir()?;
        let first = DataDirLock::acquire(dir.path())?;
        assert!(first.path().is_file());
        match DataDirLock::acquire(dir.path()) {
            Err(StoreError::InUse { dir: d, pid }) => {
                assert_eq!(d, dir.path());
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        let message = DataDirLock::acquire(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            message,
            format!(
                "data directory {} is in use by another rampart (pid {})",
                dir.path().display(),
                std::process::id()
            )
        );
        drop(first);
        let again = DataDirLock::acquire(dir.path())?;
        drop(again);
        Ok(())
    }
}
