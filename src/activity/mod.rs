//! Activity recording: what every client does, kept in the data directory's activity
//! database, and the features computed from it.
//!
//! - [`Event`]: one thing a connection did or had done to it (accept, frame in or out, decode
//!   error, login, limit hit, denial, timeout, close).
//! - [`Recorder`]: a bounded channel to one writer thread that commits events in batches
//!   (prepared statements, WAL). It never blocks the server: when the channel is full the
//!   event is shed and counted, and the count is reported.
//! - [`db`]: the activity database (`DATA/activity.db`): schema, batch inserts, queries.
//! - `fold`: frame events of anonymous connections past 256 per second are counted, not
//!   stored, before both the database and the live sink see them.
//!
//! Invariant: recording never slows the hot path by more than one non-blocking channel send,
//! and nothing is dropped silently.

pub mod db;
pub mod export;
pub mod features;
mod fold;
mod recorder;

use std::net::IpAddr;

use serde::Serialize;

pub use recorder::{DecisionRecord, Recorder, RecorderStats, Retention, UnblockHook, WindowSink};

/// What happened. Sizes are bytes; kinds and reasons are the protocol's stable names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum EventKind {
    /// A connection was admitted.
    Accept,
    /// A connection was refused at accept (`reason` from the guard's refusal).
    Refused {
        /// Why.
        reason: &'static str,
    },
    /// A request frame arrived.
    FrameIn {
        /// Frame kind byte.
        kind: u8,
        /// Payload size.
        size: u32,
        /// Milliseconds from the frame's first byte to its last (time spent inside a partial
        /// frame).
        assemble_ms: u32,
    },
    /// A reply frame was queued.
    FrameOut {
        /// Frame kind byte.
        kind: u8,
        /// Payload size.
        size: u32,
    },
    /// A frame or body was rejected.
    DecodeError {
        /// `DecodeError::reason()`.
        reason: &'static str,
    },
    /// A login succeeded.
    AuthOk {
        /// Earlier failed logins of this source on this account that this success showed to
        /// be typos (the guard's memory of them, `Guard::login_succeeded`); 0 for a resumed
        /// session.
        forgiven: u32,
    },
    /// A login failed.
    AuthFailed {
        /// A new guess: a wrong password this source had not already tried on this account,
        /// or a forged resume ticket. False for a retry of the same wrong password and for an
        /// expired or revoked ticket, which tell nothing new about the password.
        guess: bool,
    },
    /// A request was refused by a rate limiter (`reason` from `Limited::reason()`).
    RateLimited {
        /// Which limiter.
        reason: &'static str,
    },
    /// A request asked for another user's item.
    PermissionDenied,
    /// A session timer expired (`reason` from `CloseReason::as_str()`).
    Timeout {
        /// Which timer.
        reason: &'static str,
    },
    /// The connection closed.
    Close {
        /// `CloseReason::as_str()`.
        reason: &'static str,
        /// Reply bytes the client had not read when the connection closed.
        unread_bytes: u32,
    },
}

impl EventKind {
    /// The event's name as stored in the `event` column.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Accept => "accept",
            EventKind::Refused { .. } => "refused",
            EventKind::FrameIn { .. } => "frame_in",
            EventKind::FrameOut { .. } => "frame_out",
            EventKind::DecodeError { .. } => "decode_error",
            EventKind::AuthOk { .. } => "auth_ok",
            EventKind::AuthFailed { .. } => "auth_failed",
            EventKind::RateLimited { .. } => "rate_limited",
            EventKind::PermissionDenied => "permission_denied",
            EventKind::Timeout { .. } => "timeout",
            EventKind::Close { .. } => "close",
        }
    }
}

/// One recorded event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub t_ms: i64,
    /// The connection's id (0 for refusals, which never became connections).
    pub conn: u64,
    /// The peer's address.
    pub ip: IpAddr,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Every reason string an event can carry, so that events read back from the database get
/// the same `&'static str` values the server recorded.
fn known_reasons() -> impl Iterator<Item = &'static str> {
    // Refusal, limiter and close reasons, spelled out here because `activity` sits below
    // `server` and `guard` in the layering; tests in those modules check the lists agree.
    const OTHER: &[&str] = &[
        "denied",
        "blocked",
        "accept_rate",
        "max_connections",
        "max_connections_per_ip",
        "frame_rate_ip",
        "frame_rate_user",
        "frame_rate_connection",
        "login_rate_ip",
        "login_rate_user",
        "eof",
        "bye",
        "bad_frame",
        "strikes",
        "frame_budget",
        "slow_frame",
        "idle",
        "auth_timeout",
        "write_timeout",
        "shutdown",
        "io",
        "panic",
    ];
    crate::protocol::DecodeError::REASONS
        .iter()
        .copied()
        .chain(OTHER.iter().copied())
}

/// The `&'static str` equal to `s` among the known reasons, or "other".
pub fn intern_reason(s: &str) -> &'static str {
    known_reasons().find(|r| *r == s).unwrap_or("other")
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// One event of every kind, in declaration order, with reasons a server records (tests).
#[cfg(test)]
pub(crate) fn one_of_each_kind() -> [EventKind; 11] {
    [
        EventKind::Accept,
        EventKind::Refused { reason: "blocked" },
        EventKind::FrameIn {
            kind: 3,
            size: 70_000,
            assemble_ms: 12,
        },
        EventKind::FrameOut {
            kind: 0x82,
            size: 8,
        },
        EventKind::DecodeError {
            reason: crate::protocol::DecodeError::REASONS[0],
        },
        EventKind::AuthOk { forgiven: 2 },
        EventKind::AuthFailed { guess: false },
        EventKind::RateLimited {
            reason: "login_rate_ip",
        },
        EventKind::PermissionDenied,
        EventKind::Timeout { reason: "idle" },
        EventKind::Close {
            reason: "eof",
            unread_bytes: 9,
        },
    ]
}
