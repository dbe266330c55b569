//! Downloads (DOWNLOAD) verified against the blake3 digest from FETCH, and saving a mail's
//! attachments into a directory without ever writing outside it.
//!
//! A download keeps a window of DOWNLOAD requests in flight, each for the next range of
//! `chunk_size` bytes. The server may send fewer bytes than asked (its own `max_chunk`); the
//! client then shrinks its step to what the server sends, ignores the now misaligned replies
//! still in flight, and carries on from the first missing byte. Every byte is checked to land
//! exactly where the last one ended, so a reordered or overlapping reply cannot corrupt the
//! output, and the digest check at the end catches anything else.
//!
//! Downloads to files ([`Client::download_to_file`], [`Client::save_attachments`]) write to
//! a hidden temporary file next to the destination and give it its name only after the
//! digest matched and the bytes were fsynced, as the server does with blobs: a file under
//! the destination's name is always a whole, verified copy, even after a crash.

use std::collections::VecDeque;
use std::io;
use std::path::{Component, Path, PathBuf};

use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};

use super::session::unexpected;
use super::{hex, Client, ClientError};
use crate::protocol::{Attachment, DecodeError, ItemBody, Reply, Request};
use crate::store::{sanitize_file_name, MAX_FILE_NAME_BYTES};

/// How many numbered variants (`name (1).ext`, ...) to try before giving up on a name.
const MAX_NAME_ATTEMPTS: u32 = 10_000;

/// How a verified download takes its final name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Replace whatever file has the name (an explicit `--out`).
    Replace,
    /// Never replace an existing file: fail if the name is taken.
    NoClobber,
}

/// The stored name when a sanitized name is somehow not a single plain path component.
const FALLBACK_NAME: &str = "unnamed";

/// The attachment `part` of an item body: part 0 of a file, or the mail attachment at index
/// `part`.
fn part_of(body: &ItemBody, part: u16) -> Option<&Attachment> {
    match body {
        ItemBody::File(file) if part == 0 => Some(file),
        ItemBody::Mail { attachments, .. } => attachments.get(usize::from(part)),
        _ => None,
    }
}

fn bad_value(field: &'static str, value: u64) -> ClientError {
    ClientError::Protocol(DecodeError::InvalidValue { field, value })
}

/// The error for a local write failure: a file error when the output has a path.
fn local_error(dest: Option<&Path>, e: io::Error) -> ClientError {
    match dest {
        Some(path) => ClientError::file(path, e),
        None => ClientError::Io(e),
    }
}

impl Client {
    /// Streams part `part` of item `id` into `out` (0 for a file, the attachment index for a
    /// mail), with a window of DOWNLOAD requests in flight, and verifies the blake3 digest
    /// reported by FETCH at the end ([`ClientError::DigestMismatch`] otherwise). Returns the
    /// number of bytes written.
    ///
    /// On a digest mismatch the bytes have already been written to `out`; to save to a file,
    /// use [`Client::download_to_file`], which never leaves an unverified file behind.
    pub async fn download<W: AsyncWrite + Unpin>(
        &mut self,
        id: u64,
        part: u16,
        out: W,
    ) -> Result<u64, ClientError> {
        let expected = self.expected_part(id, part).await?;
        self.download_part(id, part, &expected, out, None).await
    }

    /// Downloads part `part` of item `id` (see [`Client::download`]) to the file `dest`:
    /// into a hidden temporary file in the same directory, fsynced, which takes the name
    /// `dest` only once the digest matched. On any failure (digest mismatch included) the
    /// temporary file is removed and `dest` is left as it was. Returns the bytes written.
    pub async fn download_to_file(
        &mut self,
        id: u64,
        part: u16,
        dest: &Path,
        placement: Placement,
    ) -> Result<u64, ClientError> {
        let expected = self.expected_part(id, part).await?;
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let (tmp, written) = self.download_to_temp(id, part, &expected, dir).await?;
        let placed = match placement {
            Placement::Replace => tokio::fs::rename(&tmp, dest).await,
            Placement::NoClobber => link_new(&tmp, dest).await,
        };
        if let Err(e) = placed {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(ClientError::file(dest, e));
        }
        sync_dir(dir).await;
        Ok(written)
    }

    /// The size and digest of part `part` of item `id`, from FETCH.
    async fn expected_part(&mut self, id: u64, part: u16) -> Result<Attachment, ClientError> {
        let view = self.fetch(id).await?;
        let Some(expected) = part_of(&view.body, part).cloned() else {
            // The item has no such part: ask anyway, so the refusal is the server's own.
            let req = Request::Download {
                item_id: id,
                part,
                offset: 0,
                max_len: 0,
            };
            let reply = self.call(req).await?;
            return Err(unexpected("ERROR", &reply));
        };
        Ok(expected)
    }

    /// Downloads a part into a new hidden file in `dir`, verified and fsynced; removes the
    /// file on any failure. Returns its path and the bytes written.
    async fn download_to_temp(
        &mut self,
        id: u64,
        part: u16,
        expected: &Attachment,
        dir: &Path,
    ) -> Result<(PathBuf, u64), ClientError> {
        let (tmp, file) = create_temp(dir).await?;
        let mut out = BufWriter::new(file);
        let mut result = self
            .download_part(id, part, expected, &mut out, Some(&tmp))
            .await;
        if result.is_ok() {
            if let Err(e) = out.into_inner().sync_all().await {
                result = Err(ClientError::file(&tmp, e));
            }
        }
        match result {
            Ok(written) => Ok((tmp, written)),
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }

    /// Downloads part `part` of item `id` into memory (see [`Client::download`]).
    pub async fn download_bytes(&mut self, id: u64, part: u16) -> Result<Vec<u8>, ClientError> {
        let mut data = Vec::new();
        self.download(id, part, &mut data).await?;
        Ok(data)
    }

    /// Downloads a part whose size and digest are already known from FETCH.
    async fn download_part<W: AsyncWrite + Unpin>(
        &mut self,
        id: u64,
        part: u16,
        expected: &Attachment,
        mut out: W,
        dest: Option<&Path>,
    ) -> Result<u64, ClientError> {
        let total = expected.size;
        let window = self.opts.upload_window.max(1);
        // Never ask for more than this client will accept in one DATA reply.
        let max_len = u32::try_from(self.opts.chunk_size)
            .unwrap_or(u32::MAX)
            .clamp(1, self.opts.limits.max_chunk_bytes.max(1));
        let mut step = u64::from(max_len);
        let mut hasher = blake3::Hasher::new();
        // (request id, offset asked for)
        let mut requests: VecDeque<(u32, u64)> = VecDeque::with_capacity(window);
        let mut next = 0u64;
        let mut written = 0u64;
        // Misaligned replies in a row. A change of step leaves at most a window of them; more
        // means the server never answers the offset asked for, and the loop must end.
        let mut misaligned = 0usize;
        while written < total {
            if requests.is_empty() {
                next = written;
            }
            while requests.len() < window && next < total {
                let req = Request::Download {
                    item_id: id,
                    part,
                    offset: next,
                    max_len: u32::try_from(step).unwrap_or(max_len),
                };
                requests.push_back((self.send(&req).await?, next));
                next = next.saturating_add(step);
            }
            let Some((req_id, _)) = requests.pop_front() else {
                break;
            };
            let (offset, data) = match self.reply_to(req_id).await? {
                Reply::Data {
                    item_id,
                    part: got_part,
                    offset,
                    total: got_total,
                    data,
                } => {
                    if item_id != id {
                        return Err(bad_value("item_id", item_id));
                    }
                    if got_part != part {
                        return Err(bad_value("part", u64::from(got_part)));
                    }
                    if got_total != total {
                        return Err(bad_value("total", got_total));
                    }
                    (offset, data)
                }
                other => return Err(unexpected("DATA", &other)),
            };
            if offset != written {
                // Asked for before the step shrank; the range is requested again.
                misaligned += 1;
                if misaligned > 2 * window {
                    return Err(bad_value("offset", offset));
                }
                continue;
            }
            misaligned = 0;
            let len = data.len() as u64;
            if len == 0 || len > total - written {
                // No progress before the end, or bytes past the end: either would loop or
                // overrun, so the reply is refused.
                return Err(bad_value("data_len", len));
            }
            out.write_all(&data)
                .await
                .map_err(|e| local_error(dest, e))?;
            hasher.update(&data);
            written += len;
            if len < step && written < total {
                // The server caps chunks below what was asked: follow its step from here on.
                step = len;
                next = written;
            }
        }
        out.flush().await.map_err(|e| local_error(dest, e))?;
        let actual = hasher.finalize();
        if actual.as_bytes() != &expected.digest {
            return Err(ClientError::DigestMismatch {
                expected: hex(&expected.digest),
                actual: hex(actual.as_bytes()),
            });
        }
        Ok(written)
    }

    /// Saves every attachment of mail `id` (or the file of a file item; a chat message has
    /// none) into `dir`, under
    /// [`sanitize_file_name`] of its name. If the name repeats or the file already exists,
    /// " (1)", " (2)", ... is inserted before the extension; existing files are never
    /// overwritten and nothing is written outside `dir`. Returns the paths written, in
    /// attachment order.
    ///
    /// Each attachment is downloaded to a hidden temporary file and takes its name only once
    /// its digest matched (see [`Client::download_to_file`]). A download that fails
    /// (including a digest mismatch) leaves no file and stops; attachments saved before it
    /// stay.
    pub async fn save_attachments(
        &mut self,
        id: u64,
        dir: &Path,
    ) -> Result<Vec<PathBuf>, ClientError> {
        let view = self.fetch(id).await?;
        let parts: Vec<(u16, Attachment)> = match view.body {
            ItemBody::Mail { attachments, .. } => (0..=u16::MAX).zip(attachments).collect(),
            ItemBody::File(file) => vec![(0, file)],
            ItemBody::Message { .. } => Vec::new(),
        };
        let mut saved = Vec::with_capacity(parts.len());
        for (part, attachment) in parts {
            let name = sanitize_file_name(&attachment.name);
            let (tmp, _) = self.download_to_temp(id, part, &attachment, dir).await?;
            let placed = place_unique(dir, &name, &tmp).await;
            let _ = tokio::fs::remove_file(&tmp).await;
            saved.push(placed?);
        }
        sync_dir(dir).await;
        Ok(saved)
    }
}

/// True if `name` is exactly one ordinary path component (no separator, not `.` or `..`).
fn is_plain_component(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!(components.next(), Some(Component::Normal(_)))
        && components.next().is_none()
        && !name.contains(['/', '\\'])
}

/// `name` with " (n)" inserted before its extension, kept within [`MAX_FILE_NAME_BYTES`].
fn numbered(name: &str, n: u32) -> String {
    let suffix = format!(" ({n})");
    let (stem, ext) = match name.rfind('.') {
        Some(dot) if dot > 0 && name.len() - dot + suffix.len() < MAX_FILE_NAME_BYTES => {
            name.split_at(dot)
        }
        _ => (name, ""),
    };
    let room = MAX_FILE_NAME_BYTES.saturating_sub(suffix.len() + ext.len());
    let mut cut = stem.len().min(room);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}{ext}", &stem[..cut])
}

/// Gives the verified file `tmp` the name `name` in `dir`, or the first free numbered
/// variant, by hard-linking it there. A link never replaces an existing file or follows a
/// symlink planted under the name (like `O_EXCL`), so nothing is ever overwritten.
async fn place_unique(dir: &Path, name: &str, tmp: &Path) -> Result<PathBuf, ClientError> {
    let name = if is_plain_component(name) {
        name
    } else {
        FALLBACK_NAME
    };
    for n in 0..MAX_NAME_ATTEMPTS {
        let candidate = if n == 0 {
            name.to_string()
        } else {
            numbered(name, n)
        };
        let path = dir.join(candidate);
        match link_new(tmp, &path).await {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(ClientError::file(&path, e)),
        }
    }
    Err(ClientError::file(
        &dir.join(name),
        io::Error::new(
            io::ErrorKind::AlreadyExists,
            "every numbered variant of the name is taken",
        ),
    ))
}

/// Names `tmp` `dest` too, failing with `AlreadyExists` if `dest` exists, then drops the
/// temporary name.
async fn link_new(tmp: &Path, dest: &Path) -> io::Result<()> {
    tokio::fs::hard_link(tmp, dest).await?;
    let _ = tokio::fs::remove_file(tmp).await;
    Ok(())
}

/// Creates a new hidden file `.rampart-PID-N.part` in `dir` (exclusively, so nothing
/// existing is ever opened) for a download in progress. The name is short and fixed so it
/// always fits, whatever the destination's name.
async fn create_temp(dir: &Path) -> Result<(PathBuf, tokio::fs::File), ClientError> {
    let pid = std::process::id();
    for n in 0..MAX_NAME_ATTEMPTS {
        let path = dir.join(format!(".rampart-{pid}-{n}.part"));
        let opened = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await;
        match opened {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(ClientError::file(&path, e)),
        }
    }
    Err(ClientError::file(
        dir,
        io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free temporary name for the download",
        ),
    ))
}

/// Makes a rename or link in `dir` durable; best effort (a directory cannot be opened as a
/// file everywhere), since the file's own bytes are already fsynced.
async fn sync_dir(dir: &Path) {
    if let Ok(d) = tokio::fs::File::open(dir).await {
        let _ = d.sync_all().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, n: u32, expected: &str) {
        assert_eq!(numbered(name, n), expected);
    }

    #[test]
    fn numbering_goes_before_the_extension() {
        check("report.txt", 1, "report (1).txt");
        check("README", 2, "README (2)");
        check("archive.tar.gz", 1, "archive.tar (1).gz");
        check("a.b.", 3, "a.b (3).");
    }

    #[test]
    fn numbered_names_stay_within_the_limit() {
        let long = format!("{}.txt", "é".repeat(200));
        let out = numbered(&long, 12);
        assert!(out.len() <= MAX_FILE_NAME_BYTES, "{} bytes", out.len());
        assert!(out.ends_with(" (12).txt"));
        let long_ext = format!("a.{}", "x".repeat(254));
        assert!(numbered(&long_ext, 1).len() <= MAX_FILE_NAME_BYTES);
    }

    #[test]
    fn only_plain_components_are_used_as_names() {
        assert!(is_plain_component("passwd"));
        assert!(is_plain_component("a b.txt"));
        assert!(!is_plain_component(".."));
        assert!(!is_plain_component("."));
        assert!(!is_plain_component(""));
        assert!(!is_plain_component("a/b"));
        assert!(!is_plain_component("/etc"));
        assert!(!is_plain_component("a\\b"));
    }
}
