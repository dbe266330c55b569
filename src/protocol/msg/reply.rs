//! Reply bodies (server to client). See docs/PROTOCOL.md, "Replies".

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::error::{DecodeError, EncodeError, ErrorCode};
use crate::protocol::frame::{Frame, Kind};
use crate::protocol::limits::{
    Limits, MAX_ERROR_MESSAGE, MAX_FILE_NAME, MAX_SUBJECT, MAX_TICKET, MAX_USER_NAME,
};
use crate::protocol::wire::{self, Reader};

use super::DIGEST_LEN;

/// The kind of an inbox item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ItemKind {
    /// A chat message.
    Message = 1,
    /// A mail with optional attachments.
    Mail = 2,
    /// A file.
    File = 3,
}

impl ItemKind {
    /// The kind for a wire byte, if defined.
    pub fn from_u8(b: u8) -> Option<ItemKind> {
        match b {
            1 => Some(ItemKind::Message),
            2 => Some(ItemKind::Mail),
            3 => Some(ItemKind::File),
            _ => None,
        }
    }

    /// "message", "mail" or "file".
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Message => "message",
            ItemKind::Mail => "mail",
            ItemKind::File => "file",
        }
    }
}

/// One line of an inbox listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEntry {
    /// Item id.
    pub id: u64,
    /// Item kind.
    pub kind: ItemKind,
    /// Sender's user name.
    pub from: String,
    /// Size in bytes (text, or text plus attachments, or file bytes).
    pub size: u64,
    /// When the server committed it, in milliseconds since the Unix epoch.
    pub received_at_ms: i64,
    /// The mail subject or file name; empty for a chat message.
    pub title: String,
}

impl InboxEntry {
    /// Bytes of an entry besides its two strings: id, kind, the sender's length byte, size,
    /// commit time and the title's length. Also the least an entry can take on the wire.
    const FIXED_LEN: usize = 8 + 1 + 1 + 8 + 8 + 2;

    /// The largest entry: both strings at their caps.
    const MAX_LEN: u64 = (Self::FIXED_LEN + MAX_USER_NAME + MAX_FILE_NAME) as u64;

    fn wire_len(&self) -> usize {
        Self::FIXED_LEN + self.from.len() + self.title.len()
    }

    fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_u64(self.id);
        out.put_u8(self.kind as u8);
        wire::put_str8(out, "from", &self.from, MAX_USER_NAME)?;
        out.put_u64(self.size);
        out.put_i64(self.received_at_ms);
        wire::put_bytes16(out, "title", self.title.as_bytes(), MAX_FILE_NAME)
    }

    fn decode(r: &mut Reader) -> Result<InboxEntry, DecodeError> {
        Ok(InboxEntry {
            id: r.u64("id")?,
            kind: read_item_kind(r)?,
            from: r.str8("from", MAX_USER_NAME)?,
            size: r.u64("size")?,
            received_at_ms: r.i64("received_at_ms")?,
            title: r.str16("title", MAX_FILE_NAME)?,
        })
    }
}

/// A file or a mail attachment: its name, size and blake3 digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Sanitized file name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// blake3 of the bytes.
    pub digest: [u8; 32],
}

impl Attachment {
    /// Bytes of an attachment besides its name: the name's length, size and digest.
    const FIXED_LEN: usize = 2 + 8 + DIGEST_LEN;

    /// The largest attachment: its name at the cap.
    const MAX_LEN: u64 = (Self::FIXED_LEN + MAX_FILE_NAME) as u64;

    fn wire_len(&self) -> usize {
        Self::FIXED_LEN + self.name.len()
    }

    fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        wire::put_bytes16(out, "name", self.name.as_bytes(), MAX_FILE_NAME)?;
        out.put_u64(self.size);
        out.put_slice(&self.digest);
        Ok(())
    }

    fn decode(r: &mut Reader) -> Result<Attachment, DecodeError> {
        Ok(Attachment {
            name: r.str16("name", MAX_FILE_NAME)?,
            size: r.u64("size")?,
            digest: r.array32("digest")?,
        })
    }
}

/// The content of an item, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemBody {
    /// A chat message's text.
    Message {
        /// The text.
        text: String,
    },
    /// A mail.
    Mail {
        /// Subject line.
        subject: String,
        /// Body text.
        body: String,
        /// Attachments, addressed by index in DOWNLOAD.
        attachments: Vec<Attachment>,
    },
    /// A file; its bytes are read with DOWNLOAD part 0.
    File(Attachment),
}

impl ItemBody {
    /// The item kind of this body.
    pub fn kind(&self) -> ItemKind {
        match self {
            ItemBody::Message { .. } => ItemKind::Message,
            ItemBody::Mail { .. } => ItemKind::Mail,
            ItemBody::File(_) => ItemKind::File,
        }
    }
}

/// One item as FETCH returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemView {
    /// Item id.
    pub id: u64,
    /// Sender's user name.
    pub from: String,
    /// Commit time, milliseconds since the Unix epoch.
    pub received_at_ms: i64,
    /// The content.
    pub body: ItemBody,
}

/// A decoded reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// AUTH_OK: the session is now `user`'s.
    AuthOk {
        /// The authenticated user name.
        user: String,
    },
    /// PONG.
    Pong,
    /// ACCEPTED: an item was committed durably.
    Accepted {
        /// The new item's id (in the recipient's inbox).
        item_id: u64,
    },
    /// UPLOAD_READY: the upload is staged.
    UploadReady {
        /// Id to use in UPLOAD_CHUNK and UPLOAD_END.
        upload_id: u32,
        /// Largest chunk the server accepts.
        max_chunk: u32,
    },
    /// CHUNK_OK: a chunk was appended.
    ChunkOk {
        /// The upload.
        upload_id: u32,
        /// Bytes received so far.
        received: u64,
    },
    /// UPLOAD_DONE: the upload is complete, verified and fsynced.
    UploadDone {
        /// The upload.
        upload_id: u32,
        /// Its size.
        size: u64,
    },
    /// INBOX: a page of entries, in ascending id order.
    Inbox {
        /// The entries.
        entries: Vec<InboxEntry>,
    },
    /// ITEM: one item.
    Item(ItemView),
    /// DATA: a range of file bytes.
    Data {
        /// The item.
        item_id: u64,
        /// The part (0 for a file, attachment index for a mail).
        part: u16,
        /// Offset of `data`.
        offset: u64,
        /// Total size of the part.
        total: u64,
        /// The bytes (empty at or past the end).
        data: Bytes,
    },
    /// OK: success with nothing to return.
    Ok,
    /// TICKET_OK: a resume ticket for the session's user.
    TicketOk {
        /// When the ticket expires, in milliseconds since the Unix epoch.
        expires_at_ms: i64,
        /// The ticket bytes, to be sent back unchanged in RESUME.
        ticket: Bytes,
    },
    /// ERROR: the request failed and was not applied.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// A human-readable explanation, lower case.
        message: String,
    },
}

fn read_item_kind(r: &mut Reader) -> Result<ItemKind, DecodeError> {
    let b = r.u8("item_kind")?;
    ItemKind::from_u8(b).ok_or(DecodeError::InvalidValue {
        field: "item_kind",
        value: u64::from(b),
    })
}

/// The largest payload a reply of `kind` can have under `limits` (None for request kinds).
pub(crate) fn max_body(kind: Kind, limits: &Limits) -> Option<u64> {
    let name = 1 + MAX_USER_NAME as u64;
    let att = Attachment::MAX_LEN;
    Some(match kind {
        Kind::AuthOk => name,
        Kind::Pong | Kind::Ok => 0,
        Kind::Accepted => 8,
        Kind::UploadReady => 4 + 4,
        Kind::ChunkOk | Kind::UploadDone => 4 + 8,
        Kind::Inbox => 2 + u64::from(limits.max_inbox_page) * InboxEntry::MAX_LEN,
        Kind::Item => {
            let message = 4 + u64::from(limits.max_text_bytes);
            let mail = 2
                + MAX_SUBJECT as u64
                + 4
                + u64::from(limits.max_mail_body_bytes)
                + 1
                + u64::from(limits.max_attachments) * att;
            8 + name + 8 + 1 + message.max(mail).max(att)
        }
        Kind::Data => 8 + 2 + 8 + 8 + u64::from(limits.max_chunk_bytes),
        Kind::TicketOk => 8 + 2 + MAX_TICKET as u64,
        Kind::Error => 2 + 2 + MAX_ERROR_MESSAGE as u64,
        _ => return None,
    })
}

impl Reply {
    /// The frame kind that carries this reply.
    pub fn kind(&self) -> Kind {
        match self {
            Reply::AuthOk { .. } => Kind::AuthOk,
            Reply::Pong => Kind::Pong,
            Reply::Accepted { .. } => Kind::Accepted,
            Reply::UploadReady { .. } => Kind::UploadReady,
            Reply::ChunkOk { .. } => Kind::ChunkOk,
            Reply::UploadDone { .. } => Kind::UploadDone,
            Reply::Inbox { .. } => Kind::Inbox,
            Reply::Item(_) => Kind::Item,
            Reply::Data { .. } => Kind::Data,
            Reply::Ok => Kind::Ok,
            Reply::TicketOk { .. } => Kind::TicketOk,
            Reply::Error { .. } => Kind::Error,
        }
    }

    /// An ERROR reply. The message is cut to the protocol's limit on a character boundary.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
        let mut message: String = message.into();
        if message.len() > MAX_ERROR_MESSAGE {
            let mut end = MAX_ERROR_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Reply::Error { code, message }
    }

    /// The exact number of payload bytes [`Reply::encode_body`] writes.
    pub fn body_len(&self) -> usize {
        match self {
            Reply::AuthOk { user } => 1 + user.len(),
            Reply::Pong | Reply::Ok => 0,
            Reply::Accepted { .. } => 8,
            Reply::UploadReady { .. } => 8,
            Reply::ChunkOk { .. } | Reply::UploadDone { .. } => 12,
            Reply::Inbox { entries } => 2 + entries.iter().map(InboxEntry::wire_len).sum::<usize>(),
            Reply::Item(v) => {
                let body = match &v.body {
                    ItemBody::Message { text } => 4 + text.len(),
                    ItemBody::Mail {
                        subject,
                        body,
                        attachments,
                    } => {
                        2 + subject.len()
                            + 4
                            + body.len()
                            + 1
                            + attachments.iter().map(Attachment::wire_len).sum::<usize>()
                    }
                    ItemBody::File(a) => a.wire_len(),
                };
                8 + 1 + v.from.len() + 8 + 1 + body
            }
            Reply::Data { data, .. } => 8 + 2 + 8 + 8 + data.len(),
            Reply::TicketOk { ticket, .. } => 8 + 2 + ticket.len(),
            Reply::Error { message, .. } => 2 + 2 + message.len(),
        }
    }

    /// Appends the body to `out`; fails if a field exceeds its wire width or hard cap.
    pub fn encode_body(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.reserve(self.body_len());
        match self {
            Reply::AuthOk { user } => wire::put_str8(out, "user", user, MAX_USER_NAME)?,
            Reply::Pong | Reply::Ok => {}
            Reply::Accepted { item_id } => out.put_u64(*item_id),
            Reply::UploadReady {
                upload_id,
                max_chunk,
            } => {
                out.put_u32(*upload_id);
                out.put_u32(*max_chunk);
            }
            Reply::ChunkOk {
                upload_id,
                received: n,
            }
            | Reply::UploadDone { upload_id, size: n } => {
                out.put_u32(*upload_id);
                out.put_u64(*n);
            }
            Reply::Inbox { entries } => {
                let count =
                    u16::try_from(entries.len()).map_err(|_| EncodeError::TooManyItems {
                        field: "entries",
                        count: entries.len() as u64,
                        max: u64::from(u16::MAX),
                    })?;
                out.put_u16(count);
                for e in entries {
                    e.encode(out)?;
                }
            }
            Reply::Item(v) => {
                out.put_u64(v.id);
                wire::put_str8(out, "from", &v.from, MAX_USER_NAME)?;
                out.put_i64(v.received_at_ms);
                out.put_u8(v.body.kind() as u8);
                match &v.body {
                    ItemBody::Message { text } => {
                        wire::put_bytes32(out, "text", text.as_bytes(), u32::MAX as usize)?
                    }
                    ItemBody::Mail {
                        subject,
                        body,
                        attachments,
                    } => {
                        wire::put_bytes16(out, "subject", subject.as_bytes(), MAX_SUBJECT)?;
                        wire::put_bytes32(out, "body", body.as_bytes(), u32::MAX as usize)?;
                        let count = u8::try_from(attachments.len()).map_err(|_| {
                            EncodeError::TooManyItems {
                                field: "attachments",
                                count: attachments.len() as u64,
                                max: u64::from(u8::MAX),
                            }
                        })?;
                        out.put_u8(count);
                        for a in attachments {
                            a.encode(out)?;
                        }
                    }
                    ItemBody::File(a) => a.encode(out)?,
                }
            }
            Reply::Data {
                item_id,
                part,
                offset,
                total,
                data,
            } => {
                out.put_u64(*item_id);
                out.put_u16(*part);
                out.put_u64(*offset);
                out.put_u64(*total);
                out.put_slice(data);
            }
            Reply::TicketOk {
                expires_at_ms,
                ticket,
            } => {
                out.put_i64(*expires_at_ms);
                wire::put_bytes16(out, "ticket", ticket, MAX_TICKET)?;
            }
            Reply::Error { code, message } => {
                out.put_u16(*code as u16);
                wire::put_bytes16(out, "message", message.as_bytes(), MAX_ERROR_MESSAGE)?;
            }
        }
        Ok(())
    }

    /// Decodes the body of a reply frame, checking every field against `limits`.
    pub fn decode(frame: &Frame, limits: &Limits) -> Result<Reply, DecodeError> {
        let kind = frame.kind;
        let mut r = Reader::new(kind, frame.payload.clone());
        let reply = match kind {
            Kind::AuthOk => Reply::AuthOk {
                user: r.str8("user", MAX_USER_NAME)?,
            },
            Kind::Pong => Reply::Pong,
            Kind::Ok => Reply::Ok,
            Kind::Accepted => Reply::Accepted {
                item_id: r.u64("item_id")?,
            },
            Kind::UploadReady => Reply::UploadReady {
                upload_id: r.u32("upload_id")?,
                max_chunk: r.u32("max_chunk")?,
            },
            Kind::ChunkOk => Reply::ChunkOk {
                upload_id: r.u32("upload_id")?,
                received: r.u64("received")?,
            },
            Kind::UploadDone => Reply::UploadDone {
                upload_id: r.u32("upload_id")?,
                size: r.u64("size")?,
            },
            Kind::Inbox => {
                let count = r.u16("entry_count")?;
                let n = Reader::count(
                    u64::from(count),
                    u64::from(limits.max_inbox_page),
                    "entries",
                )?;
                // Every entry takes at least FIXED_LEN bytes, so a count is only trusted for
                // preallocation once the payload could hold it.
                let fit = frame.payload.len() / InboxEntry::FIXED_LEN;
                let mut entries = Vec::with_capacity(n.min(fit));
                for _ in 0..n {
                    entries.push(InboxEntry::decode(&mut r)?);
                }
                Reply::Inbox { entries }
            }
            Kind::Item => {
                let id = r.u64("id")?;
                let from = r.str8("from", MAX_USER_NAME)?;
                let received_at_ms = r.i64("received_at_ms")?;
                let body = match read_item_kind(&mut r)? {
                    ItemKind::Message => ItemBody::Message {
                        text: r.str32("text", limits.max_text_bytes as usize)?,
                    },
                    ItemKind::Mail => {
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
                            attachments.push(Attachment::decode(&mut r)?);
                        }
                        ItemBody::Mail {
                            subject,
                            body,
                            attachments,
                        }
                    }
                    ItemKind::File => ItemBody::File(Attachment::decode(&mut r)?),
                };
                Reply::Item(ItemView {
                    id,
                    from,
                    received_at_ms,
                    body,
                })
            }
            Kind::Data => Reply::Data {
                item_id: r.u64("item_id")?,
                part: r.u16("part")?,
                offset: r.u64("offset")?,
                total: r.u64("total")?,
                data: r.rest("data", limits.max_chunk_bytes as usize)?,
            },
            Kind::TicketOk => Reply::TicketOk {
                expires_at_ms: r.i64("expires_at_ms")?,
                ticket: r.bytes16("ticket", MAX_TICKET)?,
            },
            Kind::Error => {
                let raw = r.u16("code")?;
                let code = ErrorCode::from_u16(raw).ok_or(DecodeError::InvalidValue {
                    field: "code",
                    value: u64::from(raw),
                })?;
                Reply::Error {
                    code,
                    message: r.str16("message", MAX_ERROR_MESSAGE)?,
                }
            }
            other => return Err(DecodeError::UnexpectedKind { kind: other }),
        };
        r.finish()?;
        Ok(reply)
    }
}
