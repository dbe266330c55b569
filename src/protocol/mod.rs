//! The rampart wire protocol: frames, message bodies, limits and errors.
//!
//! This module is pure: no IO, no tokio, no clocks. It turns bytes into typed values and back,
//! and every length or count that a peer controls is checked against a named limit before
//! anything is allocated for it. docs/PROTOCOL.md is the normative description; this code
//! follows it field by field.
//!
//! - [`frame`]: the 14-byte header and [`Frame`] (kind, request id, flags, payload).
//! - [`codec`]: incremental decoding from partial input and encoding; plugs into
//!   tokio-util's `Decoder`/`Encoder`.
//! - [`msg`]: typed request and reply bodies ([`Request`], [`Reply`]).
//! - [`limits`]: hard protocol caps and the configurable [`Limits`].
//! - [`error`]: [`DecodeError`] (the peer sent something wrong), [`EncodeError`] (the caller
//!   built something that cannot be sent) and the wire [`ErrorCode`]s.
//!
//! Invariant: nothing in here panics on any input, and no buffer is reserved for a length the
//! peer declared before those bytes have arrived.

// The no-panic invariant, enforced: no unwrap, expect, panic or unchecked indexing outside
// tests (where a panic is a failed test, not a crashed server).
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod codec;
pub mod error;
pub mod frame;
pub mod limits;
pub mod msg;
mod wire;

pub use codec::{
    bytes_wanted, decode_frame, encode_frame, encode_reply, encode_request, max_payload,
    CodecError, FrameCodec, FrameDecoder, Role,
};
pub use error::{BlockedNotice, DecodeError, EncodeError, ErrorCode, MAX_BLOCKED_REASON};
pub use frame::{raw_header, Frame, Kind, RawHeader, HEADER_LEN, MAGIC, VERSION};
pub use limits::Limits;
pub use msg::{
    Attachment, InboxEntry, ItemBody, ItemKind, ItemView, Password, Reply, Request, DIGEST_LEN,
};

#[cfg(test)]
mod tests;
