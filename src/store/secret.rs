//! The server secret that resume tickets are signed with: `DATA/ticket.key`, 32 random bytes.
//!
//! The file is created on the first start, readable by its owner only (0600), and appears
//! atomically: the bytes are written and fsynced in a temporary file in the same directory,
//! which is then linked into place without replacing a key that is already there. A crash
//! therefore leaves either no key or a whole one, never a short one that would sign tickets
//! with a guessable secret. Keeping the key across restarts keeps the tickets users hold
//! valid; deleting it revokes every ticket at the next start.

use std::io::{Read, Write};
use std::path::Path;

use rand::RngCore;

use super::StoreError;

/// The key file's name inside the data directory.
pub const TICKET_KEY_FILE: &str = "ticket.key";

/// Length of the ticket key in bytes: a blake3 key.
pub const TICKET_KEY_LEN: usize = 32;

/// Reads the ticket key from `data_dir`, creating it (0600, atomically) if there is none.
/// A key file of any other length is refused as [`StoreError::Corrupt`], naming the file:
/// signing with part of a key would make tickets forgeable.
pub fn load_or_create_ticket_key(data_dir: &Path) -> Result<[u8; TICKET_KEY_LEN], StoreError> {
    let path = data_dir.join(TICKET_KEY_FILE);
    match read_key(&path)? {
        Some(key) => Ok(key),
        None => {
            let mut key = [0u8; TICKET_KEY_LEN];
            rand::rngs::OsRng.fill_bytes(&mut key);
            let mut tmp = tempfile::Builder::new()
                .prefix(".ticket.key.")
                .tempfile_in(data_dir)?;
            // tempfile creates the file 0600 on unix; set it anyway, so the rule is here.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                tmp.as_file()
                    .set_permissions(std::fs::Permissions::from_mode(0o600))?;
            }
            tmp.write_all(&key)?;
            tmp.as_file().sync_all()?;
            match tmp.persist_noclobber(&path) {
                Ok(_) => {
                    // Make the new name durable too.
                    if let Ok(dir) = std::fs::File::open(data_dir) {
                        let _ = dir.sync_all();
                    }
                    Ok(key)
                }
                // Someone else created it first: theirs is the key.
                Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => read_key(&path)?
                    .ok_or_else(|| StoreError::Corrupt(format!("{} vanished", path.display()))),
                Err(e) => Err(e.error.into()),
            }
        }
    }
}

/// The key in `path`, or `None` if the file does not exist.
fn read_key(path: &Path) -> Result<Option<[u8; TICKET_KEY_LEN]>, StoreError> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata()?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:o}"),
                "the ticket key is readable by others; chmod 600 it"
            );
        }
    }
    // One byte more than a key, so a longer file is told apart without reading it all.
    let mut buf = Vec::with_capacity(TICKET_KEY_LEN + 1);
    Read::by_ref(&mut file)
        .take(TICKET_KEY_LEN as u64 + 1)
        .read_to_end(&mut buf)?;
    let key: [u8; TICKET_KEY_LEN] = buf.as_slice().try_into().map_err(|_| {
        StoreError::Corrupt(format!(
            "{} is not {TICKET_KEY_LEN} bytes long; delete it to make a new key (this revokes \
             every resume ticket)",
            path.display()
        ))
    })?;
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_once_0600_and_read_back() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let first = load_or_create_ticket_key(dir.path())?;
        let second = load_or_create_ticket_key(dir.path())?;
        assert_eq!(first, second);
        assert_ne!(first, [0u8; TICKET_KEY_LEN]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(TICKET_KEY_FILE))?
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        assert_eq!(names, [TICKET_KEY_FILE]);
        Ok(())
    }

    #[test]
    fn a_short_key_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join(TICKET_KEY_FILE), [1u8; 31])?;
        let err = load_or_create_ticket_key(dir.path())
            .err()
            .ok_or("short key accepted")?;
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        assert!(err.to_string().contains("ticket.key"), "{err}");
        Ok(())
    }
}
