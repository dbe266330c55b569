//! `arbitrary` builders for rampart's typed requests and replies.
//!
//! rampart's protocol types do not implement `Arbitrary` (the library does not depend on
//! it), so these wrappers build them from fuzzer bytes. Every value respects the limits it
//! is built for, so it must encode, and must decode back to itself under those limits.
//! Names are biased towards the fuzzing server's users and item ids towards small numbers,
//! so the session target reaches real recipients and real items.

use arbitrary::{Arbitrary, Result, Unstructured};
use bytes::Bytes;
use rampart::protocol::limits::{MAX_ERROR_MESSAGE, MAX_FILE_NAME, MAX_SUBJECT, MAX_USER_NAME};
use rampart::protocol::{
    Attachment, ErrorCode, InboxEntry, ItemBody, ItemKind, ItemView, Limits, Password, Reply,
    Request, DIGEST_LEN,
};

/// The users of the fuzzing server, which names are drawn from three times in four.
pub const USER_NAMES: [&str; 3] = ["mallory", "bob", "alice"];

/// `s` cut to at most `max` bytes, on a character boundary.
fn cap(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// A string of at most `max` bytes.
fn text(u: &mut Unstructured, max: usize) -> Result<String> {
    Ok(cap(String::arbitrary(u)?, max))
}

/// Up to `max` raw bytes.
fn data(u: &mut Unstructured, max: usize) -> Result<Bytes> {
    let n = u.int_in_range(0..=max.min(u.len()))?;
    Ok(Bytes::copy_from_slice(u.bytes(n)?))
}

/// A user name: one of [`USER_NAMES`] mostly, else any string that fits the wire.
fn name(u: &mut Unstructured) -> Result<String> {
    if u.ratio(3, 4)? {
        Ok((*u.choose(&USER_NAMES)?).to_string())
    } else {
        text(u, MAX_USER_NAME)
    }
}

/// An item id: small (where the real items are) mostly, else any.
fn item_id(u: &mut Unstructured) -> Result<u64> {
    if u.ratio(7, 8)? {
        u.int_in_range(0..=64)
    } else {
        u64::arbitrary(u)
    }
}

/// An upload id: the first few (as the server hands them out) mostly, else any.
fn upload_id(u: &mut Unstructured) -> Result<u32> {
    if u.ratio(7, 8)? {
        u.int_in_range(0..=6)
    } else {
        u32::arbitrary(u)
    }
}

fn digest(u: &mut Unstructured) -> Result<[u8; DIGEST_LEN]> {
    <[u8; DIGEST_LEN]>::arbitrary(u)
}

/// Builds a request valid under `limits`.
pub fn request(u: &mut Unstructured, limits: &Limits) -> Result<Request> {
    Ok(match u.choose_index(13)? {
        0 => Request::Auth {
            user: name(u)?,
            password: Password(data(u, 64)?),
        },
        1 => Request::Ping,
        2 => Request::SendMessage {
            to: name(u)?,
            text: text(u, limits.max_text_bytes as usize)?,
        },
        3 => Request::UploadBegin {
            name: text(u, MAX_FILE_NAME)?,
            size: if u.ratio(3, 4)? {
                u.int_in_range(0..=4096)?
            } else {
                u64::arbitrary(u)?
            },
        },
        4 => Request::UploadChunk {
            upload_id: upload_id(u)?,
            offset: if u.ratio(3, 4)? {
                u.int_in_range(0..=4096)?
            } else {
                u64::arbitrary(u)?
            },
            data: data(u, limits.max_chunk_bytes as usize)?,
        },
        5 => Request::UploadEnd {
            upload_id: upload_id(u)?,
            digest: digest(u)?,
        },
        6 => Request::SendFile {
            to: name(u)?,
            upload_id: upload_id(u)?,
        },
        7 => {
            let n = u.int_in_range(0..=usize::from(limits.max_attachments))?;
            let mut attachments = Vec::with_capacity(n);
            for _ in 0..n {
                attachments.push(upload_id(u)?);
            }
            Request::SendMail {
                to: name(u)?,
                subject: text(u, MAX_SUBJECT)?,
                body: text(u, limits.max_mail_body_bytes as usize)?,
                attachments,
            }
        }
        8 => Request::ListInbox {
            after: item_id(u)?,
            limit: u16::arbitrary(u)?,
        },
        9 => Request::Fetch {
            item_id: item_id(u)?,
        },
        10 => Request::Download {
            item_id: item_id(u)?,
            part: if u.ratio(3, 4)? {
                u.int_in_range(0..=3)?
            } else {
                u16::arbitrary(u)?
            },
            offset: if u.ratio(3, 4)? {
                u.int_in_range(0..=4096)?
            } else {
                u64::arbitrary(u)?
            },
            max_len: u32::arbitrary(u)?,
        },
        11 => Request::Delete {
            item_id: item_id(u)?,
        },
        _ => Request::Bye,
    })
}

fn item_kind(u: &mut Unstructured) -> Result<ItemKind> {
    u.choose(&[ItemKind::Message, ItemKind::Mail, ItemKind::File])
        .copied()
}

fn attachment(u: &mut Unstructured) -> Result<Attachment> {
    Ok(Attachment {
        name: text(u, MAX_FILE_NAME)?,
        size: u64::arbitrary(u)?,
        digest: digest(u)?,
    })
}

/// Builds a reply valid under `limits`.
pub fn reply(u: &mut Unstructured, limits: &Limits) -> Result<Reply> {
    Ok(match u.choose_index(11)? {
        0 => Reply::AuthOk { user: name(u)? },
        1 => Reply::Pong,
        2 => Reply::Accepted {
            item_id: u64::arbitrary(u)?,
        },
        3 => Reply::UploadReady {
            upload_id: u32::arbitrary(u)?,
            max_chunk: u32::arbitrary(u)?,
        },
        4 => Reply::ChunkOk {
            upload_id: u32::arbitrary(u)?,
            received: u64::arbitrary(u)?,
        },
        5 => Reply::UploadDone {
            upload_id: u32::arbitrary(u)?,
            size: u64::arbitrary(u)?,
        },
        6 => {
            let n = u.int_in_range(0..=usize::from(limits.max_inbox_page))?;
            let mut entries = Vec::new();
            for _ in 0..n {
                if u.is_empty() {
                    break;
                }
                entries.push(InboxEntry {
                    id: u64::arbitrary(u)?,
                    kind: item_kind(u)?,
                    from: name(u)?,
                    size: u64::arbitrary(u)?,
                    received_at_ms: i64::arbitrary(u)?,
                    title: text(u, MAX_FILE_NAME)?,
                });
            }
            Reply::Inbox { entries }
        }
        7 => {
            let body = match item_kind(u)? {
                ItemKind::Message => ItemBody::Message {
                    text: text(u, limits.max_text_bytes as usize)?,
                },
                ItemKind::Mail => {
                    let n = u.int_in_range(0..=usize::from(limits.max_attachments))?;
                    let mut attachments = Vec::with_capacity(n);
                    for _ in 0..n {
                        attachments.push(attachment(u)?);
                    }
                    ItemBody::Mail {
                        subject: text(u, MAX_SUBJECT)?,
                        body: text(u, limits.max_mail_body_bytes as usize)?,
                        attachments,
                    }
                }
                ItemKind::File => ItemBody::File(attachment(u)?),
            };
            Reply::Item(ItemView {
                id: u64::arbitrary(u)?,
                from: name(u)?,
                received_at_ms: i64::arbitrary(u)?,
                body,
            })
        }
        8 => Reply::Data {
            item_id: u64::arbitrary(u)?,
            part: u16::arbitrary(u)?,
            offset: u64::arbitrary(u)?,
            total: u64::arbitrary(u)?,
            data: data(u, limits.max_chunk_bytes as usize)?,
        },
        9 => Reply::Ok,
        _ => Reply::Error {
            code: *u.choose(&ErrorCode::ALL)?,
            message: text(u, MAX_ERROR_MESSAGE)?,
        },
    })
}

/// A request id and a request, for targets that take one frame at a time.
#[derive(Debug)]
pub struct ArbRequest(pub u32, pub Request);

impl<'a> Arbitrary<'a> for ArbRequest {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(ArbRequest(
            u32::arbitrary(u)?,
            request(u, &Limits::default())?,
        ))
    }
}

/// A request id and a reply.
#[derive(Debug)]
pub struct ArbReply(pub u32, pub Reply);

impl<'a> Arbitrary<'a> for ArbReply {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(ArbReply(u32::arbitrary(u)?, reply(u, &Limits::default())?))
    }
}

/// A request or a reply.
#[derive(Debug, Arbitrary)]
pub enum ArbFrame {
    /// A request frame.
    Request(ArbRequest),
    /// A reply frame.
    Reply(ArbReply),
}
