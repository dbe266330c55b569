//! The CLI's ticket file: one resume ticket per (server, user), readable by its owner only.
//!
//! One line per ticket, tab-separated: `server user expires_at_ms ticket-hex`. The file is
//! rewritten whole on every change, through a temporary file created 0600 in the same
//! directory and renamed over it, so it is never seen half-written or with wider permissions.
//! A symbolic link is followed to the file it names, and the rename replaces that file, not
//! the link. Anything that is not a regular file (a device such as `/dev/null`, a FIFO, a
//! directory) is refused: the rename would replace it, and reading a FIFO waits forever.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bytes::Bytes;

use rampart::client::ResumeTicket;

/// Most tickets kept: one per server and user a person uses; a bound on what is read.
const MAX_ENTRIES: usize = 256;

/// Largest ticket file read, in bytes (256 lines of well under 512 bytes).
const MAX_FILE_BYTES: u64 = 128 * 1024;

/// The ticket file.
pub struct TicketFile {
    path: PathBuf,
}

/// One line of the file.
struct Entry {
    server: String,
    ticket: ResumeTicket,
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

/// `$XDG_CONFIG_HOME/rampart/NAME`, else `~/.config/rampart/NAME`; `None` when there is no
/// home to put it in.
pub fn config_file(name: &str) -> Option<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(config.join("rampart").join(name))
}

impl TicketFile {
    /// The file at `explicit`, else `$XDG_CONFIG_HOME/rampart/tickets`, else
    /// `~/.config/rampart/tickets`; `None` when there is no home to put it in.
    pub fn locate(explicit: Option<PathBuf>) -> Option<TicketFile> {
        let path = explicit.or_else(|| config_file("tickets"))?;
        Some(TicketFile { path })
    }

    /// The file to read and replace: the path itself when nothing is there yet, else the
    /// regular file it is or links to. Anything else is refused (see the module docs).
    fn target(&self) -> Result<PathBuf> {
        match std::fs::metadata(&self.path) {
            Ok(m) if m.is_file() => std::fs::canonicalize(&self.path)
                .with_context(|| format!("cannot resolve {}", self.path.display())),
            Ok(_) => bail!(
                "the tickets file {} is not a regular file; name a file with --tickets or \
                 RAMPART_TICKETS",
                self.path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::fs::symlink_metadata(&self.path).is_ok() {
                    bail!(
                        "the tickets file {} is a symbolic link to nothing",
                        self.path.display()
                    );
                }
                Ok(self.path.clone())
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.path.display())),
        }
    }

    fn read(&self) -> Result<Vec<Entry>> {
        let path = self.target()?;
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_FILE_BYTES), &mut text)
            .with_context(|| format!("cannot read {}", path.display()))?;
        // Lines that do not parse are dropped: the file is a cache, never a reason to fail.
        Ok(text
            .lines()
            .filter_map(|line| {
                let mut f = line.split('\t');
                let (server, user, expires, hex) = (f.next()?, f.next()?, f.next()?, f.next()?);
                Some(Entry {
                    server: server.to_string(),
                    ticket: ResumeTicket {
                        user: user.to_string(),
                        ticket: Bytes::from(unhex(hex)?),
                        expires_at_ms: expires.parse().ok()?,
                    },
                })
            })
            .take(MAX_ENTRIES)
            .collect())
    }

    /// The ticket kept for `user` at `server`, if any and not yet expired by this clock.
    pub fn get(&self, server: &str, user: &str) -> Result<Option<ResumeTicket>> {
        let now = rampart::activity::now_ms();
        Ok(self
            .read()?
            .into_iter()
            .find(|e| e.server == server && e.ticket.user == user && e.ticket.expires_at_ms > now)
            .map(|e| e.ticket))
    }

    /// Keeps `ticket` for its user at `server`, replacing the one kept before.
    pub fn put(&self, server: &str, ticket: &ResumeTicket) -> Result<()> {
        let path = self.target()?;
        let mut entries = self.read().unwrap_or_default();
        entries.retain(|e| !(e.server == server && e.ticket.user == ticket.user));
        entries.truncate(MAX_ENTRIES - 1);
        entries.push(Entry {
            server: server.to_string(),
            ticket: ticket.clone(),
        });
        let mut text = String::new();
        for e in &entries {
            let _ = write!(
                text,
                "{}\t{}\t{}\t",
                e.server, e.ticket.user, e.ticket.expires_at_ms
            );
            for b in e.ticket.ticket.iter() {
                let _ = write!(text, "{b:02x}");
            }
            text.push('\n');
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tickets.")
            .tempfile_in(&dir)
            .with_context(|| format!("cannot write in {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        tmp.write_all(text.as_bytes())?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_kept_per_server_and_user_in_a_0600_file() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let file =
            TicketFile::locate(Some(dir.path().join("sub").join("tickets"))).context("no file")?;
        let t = |user: &str, b: u8| ResumeTicket {
            user: user.into(),
            ticket: Bytes::from(vec![b; 73]),
            expires_at_ms: i64::MAX,
        };
        file.put("s1:1", &t("alice", 1))?;
        file.put("s2:1", &t("alice", 2))?;
        file.put("s1:1", &t("alice", 3))?;
        assert_eq!(file.get("s1:1", "alice")?, Some(t("alice", 3)));
        assert_eq!(file.get("s2:1", "alice")?, Some(t("alice", 2)));
        assert_eq!(file.get("s1:1", "bob")?, None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("sub").join("tickets"))?
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn a_link_is_followed_and_what_is_not_a_file_is_left_alone() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let t = ResumeTicket {
            user: "alice".into(),
            ticket: Bytes::from(vec![7; 73]),
            expires_at_ms: i64::MAX,
        };
        // A link to a file: the file gets the ticket, the link stays a link.
        let real = dir.path().join("real");
        std::fs::write(&real, "")?;
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link)?;
        let file = TicketFile::locate(Some(link.clone())).context("no file")?;
        file.put("s:1", &t)?;
        assert!(std::fs::symlink_metadata(&link)?.file_type().is_symlink());
        assert!(std::fs::read_to_string(&real)?.starts_with("s:1\talice\t"));
        assert_eq!(file.get("s:1", "alice")?, Some(t.clone()));
        // A directory, a FIFO and a dangling link are refused, and stay what they were.
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nothing"), &dangling)?;
        let mut refused = vec![dir.path().join("sub"), dangling.clone()];
        std::fs::create_dir(&refused[0])?;
        if made.is_ok_and(|s| s.success()) {
            refused.push(fifo);
        }
        for path in refused {
            let before = std::fs::symlink_metadata(&path)?.file_type();
            let file = TicketFile::locate(Some(path.clone())).context("no file")?;
            let err = file
                .put("s:1", &t)
                .expect_err("not a regular file")
                .to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(file.get("s:1", "alice").is_err(), "{}", path.display());
            assert_eq!(std::fs::symlink_metadata(&path)?.file_type(), before);
        }
        Ok(())
    }
}
