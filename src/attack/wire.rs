//! The attacker's side of the wire: encoding its requests and the raw frames it sends on
//! purpose, numbering requests, and reading the error codes of replies.

use bytes::{Bytes, BytesMut};

use crate::protocol::limits::HARD_MAX_FRAME;
use crate::protocol::{
    encode_frame, encode_request, ErrorCode, Frame, Kind, Limits, Reply, Request,
};

/// Decoding limits for replies: as generous as the protocol allows, because an attacker does
/// not know the server's configuration. The receive buffer still grows only as bytes arrive.
pub(crate) const REPLY_LIMITS: Limits = Limits {
    max_frame_bytes: HARD_MAX_FRAME,
    max_text_bytes: HARD_MAX_FRAME,
    max_mail_body_bytes: HARD_MAX_FRAME,
    max_chunk_bytes: HARD_MAX_FRAME,
    max_attachments: u16::MAX,
    max_inbox_page: u16::MAX,
};

/// The error code of an ERROR frame.
pub(crate) fn error_code(frame: &Frame) -> Option<ErrorCode> {
    match Reply::decode(frame, &REPLY_LIMITS) {
        Ok(Reply::Error { code, .. }) => Some(code),
        _ => None,
    }
}

/// A label for a reply: its error code's name for an ERROR, else its kind's wire name.
pub(crate) fn reply_label(frame: &Frame) -> &'static str {
    if frame.kind == Kind::Error {
        error_code(frame).map_or("ERROR(undecodable)", ErrorCode::name)
    } else {
        frame.kind.wire_name()
    }
}

/// Encodes one request. A request whose field is too long for its length prefix encodes to
/// nothing (the attackers' own requests never are).
pub(crate) fn request_bytes(id: u32, req: &Request) -> Bytes {
    let mut out = BytesMut::new();
    encode_into(id, req, &mut out);
    out.freeze()
}

/// Appends one encoded request to `out` (nothing if it cannot be encoded).
pub(crate) fn encode_into(id: u32, req: &Request, out: &mut BytesMut) {
    // encode_request restores `out` on failure.
    let _ = encode_request(id, req, out);
}

/// Encodes a raw frame with any kind, flags and payload.
pub(crate) fn raw_frame(kind: Kind, id: u32, flags: u16, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    let frame = Frame {
        kind,
        request_id: id,
        flags,
        payload: Bytes::copy_from_slice(payload),
    };
    if encode_frame(&frame, &mut out).is_err() {
        out.clear();
    }
    out.freeze()
}

/// Request ids from 1, never 0 (the server uses 0 for connection-level errors).
#[derive(Debug, Clone)]
pub(crate) struct Ids(u32);

impl Ids {
    pub(crate) fn new() -> Ids {
        Ids(1)
    }

    pub(crate) fn next(&mut self) -> u32 {
        let id = self.0;
        self.0 = match self.0.wrapping_add(1) {
            0 => 1,
            n => n,
        };
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_skip_zero() {
        let mut ids = Ids(u32::MAX);
        assert_eq!(ids.next(), u32::MAX);
        assert_eq!(ids.next(), 1);
    }
}
