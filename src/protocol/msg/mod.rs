//! Typed message bodies: what each frame kind carries, field by field.
//!
//! - [`request`]: the bodies a client sends ([`Request`]).
//! - [`reply`]: the bodies a server answers with ([`Reply`]), and the item views they carry.
//!
//! Each body's layout is written in its own file: encoding, decoding, the exact length of a
//! value (`body_len`) and the largest length under some [`Limits`] (`max_body`). Decoding
//! checks every field against [`Limits`]; encoding checks the fixed wire widths and hard caps,
//! so a caller cannot build a frame the protocol cannot carry.

pub mod reply;
pub mod request;

use super::frame::Kind;
use super::limits::Limits;

pub use reply::{Attachment, InboxEntry, ItemBody, ItemKind, ItemView, Reply};
pub use request::{Password, Request};

/// Length of a blake3 digest in bytes.
pub const DIGEST_LEN: usize = 32;

/// The largest body a frame of `kind` can carry under `limits`: its layout with every field
/// at its limit.
pub(crate) fn max_body(kind: Kind, limits: &Limits) -> u64 {
    request::max_body(kind, limits)
        .or_else(|| reply::max_body(kind, limits))
        .unwrap_or(0)
}

// Defined here rather than in `limits`, which then needs nothing from the body layouts.
impl Limits {
    /// The largest body any frame kind can need under these limits, ignoring the frame
    /// ceiling, with that kind. A configuration whose `max_frame_bytes` is below this would
    /// accept requests whose replies it cannot send.
    pub fn largest_body(&self) -> (Kind, u64) {
        Kind::ALL
            .iter()
            .map(|&k| (k, max_body(k, self)))
            .max_by_key(|(_, b)| *b)
            .unwrap_or((Kind::Ping, 0))
    }
}
