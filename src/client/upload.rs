//! Uploads (UPLOAD_BEGIN, a window of UPLOAD_CHUNKs, UPLOAD_END) and the requests that deliver
//! finished uploads: SEND_FILE and SEND_MAIL.
//!
//! Chunks are pipelined: up to [`ClientOptions::upload_window`](super::ClientOptions) chunks
//! are on the wire before the client waits for the oldest CHUNK_OK, so a high-latency link
//! stays busy while the server's reply queue stays bounded. The blake3 digest is computed as
//! the bytes are read, so a file is read once.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::session::unexpected;
use super::{Client, ClientError};
use crate::protocol::{DecodeError, Reply, Request};

/// The error for a local read failure: a file error when the input has a path, an I/O error
/// for an anonymous reader.
fn local_error(origin: Option<&Path>, e: io::Error) -> ClientError {
    match origin {
        Some(path) => ClientError::file(path, e),
        None => ClientError::Io(e),
    }
}

impl Client {
    /// Uploads `size` bytes from `reader`: UPLOAD_BEGIN, then chunks with up to
    /// `upload_window` CHUNK_OKs outstanding (pipelined, reading acks as the window fills),
    /// hashing with blake3 as it goes, then UPLOAD_END. Returns the upload id, which SEND_FILE
    /// or SEND_MAIL can use once in this session.
    ///
    /// If `reader` ends before `size` bytes, the upload fails with an
    /// [`io::ErrorKind::UnexpectedEof`] error (the server discards the staged bytes).
    pub async fn upload<R: AsyncRead + Unpin>(
        &mut self,
        name: &str,
        size: u64,
        reader: R,
    ) -> Result<u32, ClientError> {
        self.upload_from(name, size, reader, None).await
    }

    async fn upload_from<R: AsyncRead + Unpin>(
        &mut self,
        name: &str,
        size: u64,
        mut reader: R,
        origin: Option<&Path>,
    ) -> Result<u32, ClientError> {
        let begin = Request::UploadBegin {
            name: name.to_string(),
            size,
        };
        let (upload_id, max_chunk) = match self.call(begin).await? {
            Reply::UploadReady {
                upload_id,
                max_chunk,
            } => (upload_id, max_chunk),
            other => return Err(unexpected("UPLOAD_READY", &other)),
        };
        if max_chunk == 0 {
            return Err(ClientError::Protocol(DecodeError::InvalidValue {
                field: "max_chunk",
                value: 0,
            }));
        }
        let chunk = self
            .opts
            .chunk_size
            .clamp(1, usize::try_from(max_chunk).unwrap_or(usize::MAX));
        let window = self.opts.upload_window.max(1);

        let mut hasher = blake3::Hasher::new();
        // (request id, bytes the server should report received after that chunk)
        let mut acks: VecDeque<(u32, u64)> = VecDeque::with_capacity(window);
        let mut offset = 0u64;
        while offset < size {
            let len = usize::try_from(size - offset).map_or(chunk, |left| left.min(chunk));
            let mut data = BytesMut::zeroed(len);
            if let Err(e) = reader.read_exact(&mut data).await {
                let e = if e.kind() == io::ErrorKind::UnexpectedEof {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("input ended after {offset} of {size} bytes"),
                    )
                } else {
                    e
                };
                return Err(local_error(origin, e));
            }
            hasher.update(&data);
            if acks.len() >= window {
                if let Some((id, end)) = acks.pop_front() {
                    self.chunk_ok(id, upload_id, end).await?;
                }
            }
            let req = Request::UploadChunk {
                upload_id,
                offset,
                data: data.freeze(),
            };
            let id = self.send(&req).await?;
            offset += len as u64;
            acks.push_back((id, offset));
        }
        while let Some((id, end)) = acks.pop_front() {
            self.chunk_ok(id, upload_id, end).await?;
        }

        let end = Request::UploadEnd {
            upload_id,
            digest: *hasher.finalize().as_bytes(),
        };
        match self.call(end).await? {
            Reply::UploadDone {
                upload_id: done,
                size: stored,
            } => {
                if done != upload_id {
                    return Err(ClientError::Protocol(DecodeError::InvalidValue {
                        field: "upload_id",
                        value: u64::from(done),
                    }));
                }
                if stored != size {
                    return Err(ClientError::Protocol(DecodeError::InvalidValue {
                        field: "size",
                        value: stored,
                    }));
                }
                Ok(upload_id)
            }
            other => Err(unexpected("UPLOAD_DONE", &other)),
        }
    }

    /// Waits for the CHUNK_OK of request `id` and checks that the server counted `end` bytes.
    async fn chunk_ok(&mut self, id: u32, upload_id: u32, end: u64) -> Result<(), ClientError> {
        match self.reply_to(id).await? {
            Reply::ChunkOk {
                upload_id: got,
                received,
            } => {
                if got != upload_id {
                    return Err(ClientError::Protocol(DecodeError::InvalidValue {
                        field: "upload_id",
                        value: u64::from(got),
                    }));
                }
                if received != end {
                    return Err(ClientError::Protocol(DecodeError::InvalidValue {
                        field: "received",
                        value: received,
                    }));
                }
                Ok(())
            }
            other => Err(unexpected("CHUNK_OK", &other)),
        }
    }

    /// Uploads an in-memory buffer under `name`.
    pub async fn upload_bytes(&mut self, name: &str, data: &[u8]) -> Result<u32, ClientError> {
        self.upload_from(name, data.len() as u64, data, None).await
    }

    /// Uploads a local file under its file name. A missing or unreadable file is a
    /// [`ClientError::File`], reported before anything is sent.
    pub async fn upload_path(&mut self, path: &Path) -> Result<u32, ClientError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| {
                ClientError::file(
                    path,
                    io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
                )
            })?;
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| ClientError::file(path, e))?;
        let meta = file
            .metadata()
            .await
            .map_err(|e| ClientError::file(path, e))?;
        if !meta.is_file() {
            return Err(ClientError::file(
                path,
                io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            ));
        }
        self.upload_from(&name, meta.len(), file, Some(path)).await
    }

    /// Uploads a local file and delivers it to `to` (SEND_FILE); returns the item id.
    pub async fn send_file(&mut self, to: &str, path: &Path) -> Result<u64, ClientError> {
        let upload_id = self.upload_path(path).await?;
        self.deliver_file(to, upload_id).await
    }

    /// Uploads `data` as a file called `name` and delivers it to `to`; returns the item id.
    pub async fn send_file_bytes(
        &mut self,
        to: &str,
        name: &str,
        data: &[u8],
    ) -> Result<u64, ClientError> {
        let upload_id = self.upload_bytes(name, data).await?;
        self.deliver_file(to, upload_id).await
    }

    async fn deliver_file(&mut self, to: &str, upload_id: u32) -> Result<u64, ClientError> {
        self.accepted(Request::SendFile {
            to: to.to_string(),
            upload_id,
        })
        .await
    }

    /// Sends a mail, uploading each local file in `attachments` first; returns the item id.
    pub async fn send_mail(
        &mut self,
        to: &str,
        subject: &str,
        body: &str,
        attachments: &[PathBuf],
    ) -> Result<u64, ClientError> {
        let mut ids = Vec::with_capacity(attachments.len());
        for path in attachments {
            ids.push(self.upload_path(path).await?);
        }
        self.deliver_mail(to, subject, body, ids).await
    }

    /// Sends a mail with in-memory attachments given as (name, bytes); returns the item id.
    pub async fn send_mail_with(
        &mut self,
        to: &str,
        subject: &str,
        body: &str,
        attachments: &[(String, Vec<u8>)],
    ) -> Result<u64, ClientError> {
        let mut ids = Vec::with_capacity(attachments.len());
        for (name, data) in attachments {
            ids.push(self.upload_bytes(name, data).await?);
        }
        self.deliver_mail(to, subject, body, ids).await
    }

    async fn deliver_mail(
        &mut self,
        to: &str,
        subject: &str,
        body: &str,
        attachments: Vec<u32>,
    ) -> Result<u64, ClientError> {
        self.accepted(Request::SendMail {
            to: to.to_string(),
            subject: subject.to_string(),
            body: body.to_string(),
            attachments,
        })
        .await
    }
}
