//! Typed message bodies: what each frame kind carries, field by field.
//!
//! - [`request`]: the bodies a client sends ([`Request`]).
//! - [`reply`]: the bodies a server answers with ([`Reply`]), and the item views they carry.
//!
//! Decoding checks every field against [`Limits`](super::Limits); encoding checks the fixed
//! wire widths and hard caps, so a caller cannot build a frame the protocol cannot carry.

pub mod reply;
pub mod request;

pub use reply::{Attachment, InboxEntry, ItemBody, ItemKind, ItemView, Reply};
pub use request::{Password, Request};

/// Length of a blake3 digest in bytes.
pub const DIGEST_LEN: usize = 32;
