//! The frame: a fixed 14-byte header followed by a payload.
//!
//! ```text
//! offset  size  field
//!      0     2  magic       0x52 0x4D ("RM")
//!      2     1  version     1
//!      3     1  kind        see [`Kind`]
//!      4     4  request id  u32, big-endian; a reply echoes its request's id
//!      8     2  flags       u16, big-endian; every bit is reserved in version 1 and must be 0
//!     10     4  length      u32, big-endian; payload bytes that follow the header
//! ```

use bytes::Bytes;

/// The two magic bytes that open every frame: "RM".
pub const MAGIC: [u8; 2] = *b"RM";

/// The protocol version this build speaks.
pub const VERSION: u8 = 1;

/// Header length in bytes.
pub const HEADER_LEN: usize = 14;

/// The 14 bytes of a header with this build's magic and any version, kind byte, request id,
/// flags and declared length, valid or not. Every header rampart writes is built here: the
/// encoder's, and the broken ones that attackers, the demo and tests send on purpose.
pub const fn raw_header(
    version: u8,
    kind: u8,
    request_id: u32,
    flags: u16,
    len: u32,
) -> [u8; HEADER_LEN] {
    let [m0, m1] = MAGIC;
    let [r0, r1, r2, r3] = request_id.to_be_bytes();
    let [f0, f1] = flags.to_be_bytes();
    let [l0, l1, l2, l3] = len.to_be_bytes();
    [
        m0, m1, version, kind, r0, r1, r2, r3, f0, f1, l0, l1, l2, l3,
    ]
}

/// A header's fields as they are on the wire, none of them checked yet: the reading side of
/// [`raw_header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawHeader {
    /// The first two bytes; [`MAGIC`] in a valid frame.
    pub magic: [u8; 2],
    /// The protocol version; [`VERSION`] in a valid frame.
    pub version: u8,
    /// The kind byte, which may name no [`Kind`].
    pub kind: u8,
    /// The request id.
    pub request_id: u32,
    /// The flags; 0 in a valid frame.
    pub flags: u16,
    /// The declared payload length.
    pub len: u32,
}

impl RawHeader {
    /// Splits 14 header bytes into their fields.
    #[inline]
    pub const fn parse(header: &[u8; HEADER_LEN]) -> RawHeader {
        let [m0, m1, version, kind, r0, r1, r2, r3, f0, f1, l0, l1, l2, l3] = *header;
        RawHeader {
            magic: [m0, m1],
            version,
            kind,
            request_id: u32::from_be_bytes([r0, r1, r2, r3]),
            flags: u16::from_be_bytes([f0, f1]),
            len: u32::from_be_bytes([l0, l1, l2, l3]),
        }
    }
}

macro_rules! kinds {
    ($( $(#[$doc:meta])* $name:ident = $val:expr; )*) => {
        /// Every frame kind. Requests (client to server) are below 0x80, replies at or above.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum Kind {
            $( $(#[$doc])* $name = $val, )*
        }

        impl Kind {
            /// Every kind, in wire order.
            pub const ALL: &'static [Kind] = &[$(Kind::$name,)*];

            /// The kind for a wire byte, if defined.
            pub fn from_u8(b: u8) -> Option<Kind> {
                match b {
                    $( $val => Some(Kind::$name), )*
                    _ => None,
                }
            }
        }
    };
}

kinds! {
    /// Log in with a user name and password.
    Auth = 0x01;
    /// Liveness check; answered by PONG.
    Ping = 0x02;
    /// Send a chat message.
    SendMessage = 0x03;
    /// Start staging an upload of a known size.
    UploadBegin = 0x04;
    /// Append a chunk to a staged upload.
    UploadChunk = 0x05;
    /// Finish a staged upload, verifying its digest.
    UploadEnd = 0x06;
    /// Deliver a finished upload as a file.
    SendFile = 0x07;
    /// Send a mail, optionally attaching finished uploads.
    SendMail = 0x08;
    /// List a page of the session user's inbox.
    ListInbox = 0x09;
    /// Fetch one item's metadata and text.
    Fetch = 0x0A;
    /// Read a range of a file's or attachment's bytes.
    Download = 0x0B;
    /// Delete an item from the session user's inbox.
    Delete = 0x0C;
    /// End the session politely.
    Bye = 0x0D;
    /// Ask for a resume ticket for the session's user (authenticated sessions only).
    Ticket = 0x0E;
    /// Log in with a resume ticket instead of a password (no argon2).
    Resume = 0x0F;
    /// Authentication succeeded.
    AuthOk = 0x81;
    /// Answer to PING.
    Pong = 0x82;
    /// An item was committed durably.
    Accepted = 0x83;
    /// An upload is staged and ready for chunks.
    UploadReady = 0x84;
    /// A chunk was appended.
    ChunkOk = 0x85;
    /// An upload is complete, verified and durable.
    UploadDone = 0x86;
    /// A page of inbox entries.
    Inbox = 0x87;
    /// One item's metadata and text.
    Item = 0x88;
    /// A range of file bytes.
    Data = 0x89;
    /// Success with nothing to return.
    Ok = 0x8A;
    /// A resume ticket and when it expires.
    TicketOk = 0x8B;
    /// The request failed; carries an error code and message.
    Error = 0xFF;
}

impl Kind {
    /// True for kinds a client sends to the server.
    pub fn is_request(self) -> bool {
        (self as u8) < 0x80
    }

    /// The upper-case wire name used in docs and logs (e.g. `SEND_MAIL`).
    pub fn wire_name(self) -> &'static str {
        match self {
            Kind::Auth => "AUTH",
            Kind::Ping => "PING",
            Kind::SendMessage => "SEND_MESSAGE",
            Kind::UploadBegin => "UPLOAD_BEGIN",
            Kind::UploadChunk => "UPLOAD_CHUNK",
            Kind::UploadEnd => "UPLOAD_END",
            Kind::SendFile => "SEND_FILE",
            Kind::SendMail => "SEND_MAIL",
            Kind::ListInbox => "LIST_INBOX",
            Kind::Fetch => "FETCH",
            Kind::Download => "DOWNLOAD",
            Kind::Delete => "DELETE",
            Kind::Bye => "BYE",
            Kind::Ticket => "TICKET",
            Kind::Resume => "RESUME",
            Kind::AuthOk => "AUTH_OK",
            Kind::Pong => "PONG",
            Kind::Accepted => "ACCEPTED",
            Kind::UploadReady => "UPLOAD_READY",
            Kind::ChunkOk => "CHUNK_OK",
            Kind::UploadDone => "UPLOAD_DONE",
            Kind::Inbox => "INBOX",
            Kind::Item => "ITEM",
            Kind::Data => "DATA",
            Kind::Ok => "OK",
            Kind::TicketOk => "TICKET_OK",
            Kind::Error => "ERROR",
        }
    }
}

/// One decoded frame: the header fields and the payload, which shares the receive buffer's
/// memory (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame kind.
    pub kind: Kind,
    /// The request id; replies echo the id of the request they answer.
    pub request_id: u32,
    /// Flags; always 0 in version 1.
    pub flags: u16,
    /// The payload bytes.
    pub payload: Bytes,
}

impl Frame {
    /// A frame with no flags.
    pub fn new(kind: Kind, request_id: u32, payload: impl Into<Bytes>) -> Frame {
        Frame {
            kind,
            request_id,
            flags: 0,
            payload: payload.into(),
        }
    }

    /// The number of bytes this frame occupies on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN.saturating_add(self.payload.len())
    }
}
