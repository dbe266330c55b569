//! Request bodies (client to server). See docs/PROTOCOL.md, "Requests".

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::error::{DecodeError, EncodeError};
use crate::protocol::frame::{Frame, Kind};
use crate::protocol::limits::{
    Limits, MAX_FILE_NAME, MAX_PASSWORD, MAX_SUBJECT, MAX_TICKET, MAX_USER_NAME,
};
use crate::protocol::wire::{self, Reader};

/// A password as sent in AUTH. Its `Debug` output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub Bytes);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Password(<{} bytes redacted>)", self.0.len())
    }
}

/// A decoded request. The sender's identity is never part of a request: it comes from the
/// authenticated session alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// AUTH: log in.
    Auth {
        /// The user name.
        user: String,
        /// The password bytes.
        password: Password,
    },
    /// PING: no body.
    Ping,
    /// SEND_MESSAGE: a chat message to one user.
    SendMessage {
        /// Recipient user name.
        to: String,
        /// Message text.
        text: String,
    },
    /// UPLOAD_BEGIN: stage an upload of `size` bytes.
    UploadBegin {
        /// The file name as the sender wants it shown (the server sanitizes it).
        name: String,
        /// Exact size in bytes.
        size: u64,
    },
    /// UPLOAD_CHUNK: bytes at `offset` of a staged upload.
    UploadChunk {
        /// The id from UPLOAD_READY.
        upload_id: u32,
        /// Offset of `data` in the file; must equal the bytes received so far.
        offset: u64,
        /// The chunk.
        data: Bytes,
    },
    /// UPLOAD_END: all bytes sent; `digest` is their blake3 hash.
    UploadEnd {
        /// The id from UPLOAD_READY.
        upload_id: u32,
        /// blake3 of the whole file.
        digest: [u8; 32],
    },
    /// SEND_FILE: deliver a finished upload as a file item.
    SendFile {
        /// Recipient user name.
        to: String,
        /// A finished upload of this session.
        upload_id: u32,
    },
    /// SEND_MAIL: a mail with finished uploads as attachments.
    SendMail {
        /// Recipient user name.
        to: String,
        /// Subject line.
        subject: String,
        /// Body text.
        body: String,
        /// Finished uploads of this session, in order.
        attachments: Vec<u32>,
    },
    /// LIST_INBOX: up to `limit` entries with ids above `after`.
    ListInbox {
        /// Only entries with a larger id are listed (0 for the first page).
        after: u64,
        /// Most entries wanted.
        limit: u16,
    },
    /// FETCH: one item's metadata and text.
    Fetch {
        /// The item id.
        item_id: u64,
    },
    /// DOWNLOAD: up to `max_len` bytes of a file or attachment from `offset`.
    Download {
        /// The item id.
        item_id: u64,
        /// 0 for a file item; the attachment index for a mail.
        part: u16,
        /// Start offset.
        offset: u64,
        /// Most bytes wanted (the server may send fewer).
        max_len: u32,
    },
    /// DELETE: remove one item from the inbox.
    Delete {
        /// The item id.
        item_id: u64,
    },
    /// BYE: the server answers OK and closes.
    Bye,
    /// TICKET: no body; asks for a resume ticket for the session's user.
    Ticket,
    /// RESUME: log in with a resume ticket from TICKET_OK.
    Resume {
        /// The user name the ticket was issued to.
        user: String,
        /// The ticket bytes, opaque to the client.
        ticket: Bytes,
    },
}

/// The largest payload a request of `kind` can have under `limits` (None for reply kinds).
pub(crate) fn max_body(kind: Kind, limits: &Limits) -> Option<u64> {
    let name = 1 + MAX_USER_NAME as u64;
    Some(match kind {
        Kind::Auth => name + 2 + MAX_PASSWORD as u64,
        Kind::Ping | Kind::Bye | Kind::Ticket => 0,
        Kind::Resume => name + 2 + MAX_TICKET as u64,
        Kind::SendMessage => name + 4 + u64::from(limits.max_text_bytes),
        Kind::UploadBegin => 2 + MAX_FILE_NAME as u64 + 8,
        Kind::UploadChunk => 4 + 8 + u64::from(limits.max_chunk_bytes),
        Kind::UploadEnd => 4 + 32,
        Kind::SendFile => name + 4,
        Kind::SendMail => {
            name + 2
                + MAX_SUBJECT as u64
                + 4
                + u64::from(limits.max_mail_body_bytes)
                + 1
                + 4 * u64::from(limits.max_attachments)
        }
        Kind::ListInbox => 8 + 2,
        Kind::Fetch | Kind::Delete => 8,
        Kind::Download => 8 + 2 + 8 + 4,
        _ => return None,
    })
}

impl Request {
    /// The frame kind that carries this request.
    pub fn kind(&self) -> Kind {
        match self {
            Request::Auth { .. } => Kind::Auth,
            Request::Ping => Kind::Ping,
            Request::SendMessage { .. } => Kind::SendMessage,
            Request::UploadBegin { .. } => Kind::UploadBegin,
            Request::UploadChunk { .. } => Kind::UploadChunk,
            Request::UploadEnd { .. } => Kind::UploadEnd,
            Request::SendFile { .. } => Kind::SendFile,
            Request::SendMail { .. } => Kind::SendMail,
            Request::ListInbox { .. } => Kind::ListInbox,
            Request::Fetch { .. } => Kind::Fetch,
            Request::Download { .. } => Kind::Download,
            Request::Delete { .. } => Kind::Delete,
            Request::Bye => Kind::Bye,
            Request::Ticket => Kind::Ticket,
            Request::Resume { .. } => Kind::Resume,
        }
    }

    /// The exact number of payload bytes [`Request::encode_body`] writes.
    pub fn body_len(&self) -> usize {
        let name = |s: &str| 1 + s.len();
        match self {
            Request::Auth { user, password } => name(user) + 2 + password.0.len(),
            Request::Ping | Request::Bye | Request::Ticket => 0,
            Request::Resume { user, ticket } => name(user) + 2 + ticket.len(),
            Request::SendMessage { to, text } => name(to) + 4 + text.len(),
            Request::UploadBegin { name: n, .. } => 2 + n.len() + 8,
            Request::UploadChunk { data, .. } => 4 + 8 + data.len(),
            Request::UploadEnd { .. } => 4 + 32,
            Request::SendFile { to, .. } => name(to) + 4,
            Request::SendMail {
                to,
                subject,
                body,
                attachments,
            } => name(to) + 2 + subject.len() + 4 + body.len() + 1 + 4 * attachments.len(),
            Request::ListInbox { .. } => 8 + 2,
            Request::Fetch { .. } | Request::Delete { .. } => 8,
            Request::Download { .. } => 8 + 2 + 8 + 4,
        }
    }

    /// Appends the body to `out`. Fails, writing nothing usable, if a field exceeds its wire
    /// width or hard cap.
    pub fn encode_body(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.reserve(self.body_len());
        match self {
            Request::Auth { user, password } => {
                wire::put_str8(out, "user", user, MAX_USER_NAME)?;
                wire::put_bytes16(out, "password", &password.0, MAX_PASSWORD)?;
            }
            Request::Ping | Request::Bye | Request::Ticket => {}
            Request::Resume { user, ticket } => {
                wire::put_str8(out, "user", user, MAX_USER_NAME)?;
                wire::put_bytes16(out, "ticket", ticket, MAX_TICKET)?;
            }
            Request::SendMessage { to, text } => {
                wire::put_str8(out, "to", to, MAX_USER_NAME)?;
                wire::put_bytes32(out, "text", text.as_bytes(), u32::MAX as usize)?;
            }
            Request::UploadBegin { name, size } => {
                wire::put_bytes16(out, "name", name.as_bytes(), MAX_FILE_NAME)?;
                out.put_u64(*size);
            }
            Request::UploadChunk {
                upload_id,
                offset,
                data,
            } => {
                out.put_u32(*upload_id);
                out.put_u64(*offset);
                out.put_slice(data);
            }
            Request::UploadEnd { upload_id, digest } => {
                out.put_u32(*upload_id);
                out.put_slice(digest);
            }
            Request::SendFile { to, upload_id } => {
                wire::put_str8(out, "to", to, MAX_USER_NAME)?;
                out.put_u32(*upload_id);
            }
            Request::SendMail {
                to,
                subject,
                body,
                attachments,
            } => {
                wire::put_str8(out, "to", to, MAX_USER_NAME)?;
                wire::put_bytes16(out, "subject", subject.as_bytes(), MAX_SUBJECT)?;
                wire::put_bytes32(out, "body", body.as_bytes(), u32::MAX as usize)?;
                let count =
                    u8::try_from(attachments.len()).map_err(|_| EncodeError::TooManyItems {
                        field: "attachments",
                        count: attachments.len() as u64,
                        max: u64::from(u8::MAX),
                    })?;
                out.put_u8(count);
                for id in attachments {
                    out.put_u32(*id);
                }
            }
            Request::ListInbox { after, limit } => {
                out.put_u64(*after);
                out.put_u16(*limit);
            }
            Request::Fetch { item_id } | Request::Delete { item_id } => out.put_u64(*item_id),
            Request::Download {
                item_id,
                part,
                offset,
                max_len,
            } => {
                out.put_u64(*item_id);
                out.put_u16(*part);
                out.put_u64(*offset);
                out.put_u32(*max_len);
            }
        }
        Ok(())
    }

    /// Decodes the body of a request frame, checking every field against `limits`.
    pub fn decode(frame: &Frame, limits: &Limits) -> Result<Request, DecodeError> {
        let kind = frame.kind;
        let mut r = Reader::new(kind, frame.payload.clone());
        let req = match kind {
            Kind::Auth => Request::Auth {
                user: r.str8("user", MAX_USER_NAME)?,
                password: Password(r.bytes16("password", MAX_PASSWORD)?),
            },
            Kind::Ping => Request::Ping,
            Kind::Bye => Request::Bye,
            Kind::Ticket => Request::Ticket,
            Kind::Resume => Request::Resume {
                user: r.str8("user", MAX_USER_NAME)?,
                ticket: r.bytes16("ticket", MAX_TICKET)?,
            },
            Kind::SendMessage => Request::SendMessage {
                to: r.str8("to", MAX_USER_NAME)?,
                text: r.str32("text", limits.max_text_bytes as usize)?,
            },
            Kind::UploadBegin => Request::UploadBegin {
                name: r.str16("name", MAX_FILE_NAME)?,
                size: r.u64("size")?,
            },
            Kind::UploadChunk => Request::UploadChunk {
                upload_id: r.u32("upload_id")?,
                offset: r.u64("offset")?,
                data: r.rest("data", limits.max_chunk_bytes as usize)?,
            },
            Kind::UploadEnd => Request::UploadEnd {
                upload_id: r.u32("upload_id")?,
                digest: r.array32("digest")?,
            },
            Kind::SendFile => Request::SendFile {
                to: r.str8("to", MAX_USER_NAME)?,
                upload_id: r.u32("upload_id")?,
            },
            Kind::SendMail => {
                let to = r.str8("to", MAX_USER_NAME)?;
                let subject = r.str16("subject", MAX_SUBJECT)?;
                let body = r.str32("body", limits.max_mail_body_bytes as usize)?;
                let count = r.u8("attachment_count")?;
                let n = Reader::count(
                    u64::from(count),
                    u64::from(limits.max_attachments),
                    "attachments",
                )?;
                let mut attachments = Vec::with_capacity(n);
                for _ in 0..n {
                    attachments.push(r.u32("attachment")?);
                }
                Request::SendMail {
                    to,
                    subject,
                    body,
                    attachments,
                }
            }
            Kind::ListInbox => Request::ListInbox {
                after: r.u64("after")?,
                limit: r.u16("limit")?,
            },
            Kind::Fetch => Request::Fetch {
                item_id: r.u64("item_id")?,
            },
            Kind::Delete => Request::Delete {
                item_id: r.u64("item_id")?,
            },
            Kind::Download => Request::Download {
                item_id: r.u64("item_id")?,
                part: r.u16("part")?,
                offset: r.u64("offset")?,
                max_len: r.u32("max_len")?,
            },
            other => return Err(DecodeError::UnexpectedKind { kind: other }),
        };
        r.finish()?;
        Ok(req)
    }
}
