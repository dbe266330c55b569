//! Protocol limits: hard caps that no configuration can raise, and the configurable [`Limits`]
//! that a codec enforces.
//!
//! Every number a peer controls (a frame length, a string length, a list count) is compared
//! against one of these before anything is allocated for it.

/// Absolute ceiling on a frame payload, whatever the configuration says. 16 MiB keeps a
/// misconfigured server from accepting frames large enough to pin real memory per connection;
/// bulk data travels in chunks far below this.
pub const HARD_MAX_FRAME: u32 = 16 * 1024 * 1024;

/// Longest user name in bytes. Short, ASCII names keep logs and keys bounded.
pub const MAX_USER_NAME: usize = 32;

/// Longest password in bytes. argon2 accepts more, but nobody needs more and the cap bounds
/// the bytes an unauthenticated peer can make us hash.
pub const MAX_PASSWORD: usize = 1024;

/// Longest file or attachment name in bytes as sent (before sanitizing). Matches common
/// filesystem path limits (PATH_MAX is 4096, NAME_MAX 255) with room for non-ASCII names.
pub const MAX_FILE_NAME: usize = 1024;

/// Longest mail subject in bytes. RFC 5322 suggests 998 characters per line.
pub const MAX_SUBJECT: usize = 1024;

/// Longest resume ticket in bytes, as carried by TICKET_OK and RESUME. The server's tickets
/// are 73 bytes (docs/PROTOCOL.md, "Resume tickets"); the cap leaves room for a later layout
/// while keeping a RESUME far below the 512 bytes a blocked source may send.
pub const MAX_TICKET: usize = 128;

/// Longest error message text in bytes.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// Limits a codec enforces. They come from the server configuration and may only be lower
/// than the hard caps above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame payload accepted, in bytes (at most [`HARD_MAX_FRAME`]).
    pub max_frame_bytes: u32,
    /// Largest chat message text, in bytes.
    pub max_text_bytes: u32,
    /// Largest mail body, in bytes.
    pub max_mail_body_bytes: u32,
    /// Largest data chunk in an upload or download, in bytes.
    pub max_chunk_bytes: u32,
    /// Most attachments on one mail.
    pub max_attachments: u16,
    /// Most entries in one inbox page.
    pub max_inbox_page: u16,
}

impl Default for Limits {
    /// The defaults match `rampart.example.toml`.
    fn default() -> Self {
        Limits {
            max_frame_bytes: 1_114_112,
            max_text_bytes: 65_536,
            max_mail_body_bytes: 1_048_576,
            max_chunk_bytes: 262_144,
            max_attachments: 16,
            max_inbox_page: 256,
        }
    }
}

impl Limits {
    /// The effective frame ceiling: the configured one, never above the hard cap.
    pub fn frame_ceiling(&self) -> u32 {
        self.max_frame_bytes.min(HARD_MAX_FRAME)
    }
}
