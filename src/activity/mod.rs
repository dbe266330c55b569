//! Activity recording: what every client does, kept in the data directory's activity
//! database, and the features computed from it.
//!
//! - [`Event`]: one thing a connection did or had done to it (accept, frame in or out, decode
//!   error, login, limit hit, denial, timeout, close).
//! - [`Recorder`]: a bounded channel to one writer thread that commits events in batches
//!   (prepared statements, WAL). It never blocks the server: when the channel is full the
//!   event is shed and counted, and the count is reported.
//! - [`db`]: the activity database (`DATA/activity.db`): schema, batch inserts, queries.
//! - [`EventName`] and `reason`: the names events are stored under, and the reasons they
//!   carry ([`CloseReason`] among them), each list written once.
//! - `fold`: frame events of anonymous connections past 256 per second are counted, not
//!   stored, before both the database and the live sink see them.
//!
//! Invariant: recording never slows the hot path by more than one non-blocking channel send,
//! and nothing is dropped silently.

pub mod db;
pub mod export;
pub mod features;
mod fold;
mod reason;
mod recorder;

use std::net::IpAddr;

use serde::Serialize;

use crate::protocol::error::vocabulary;
pub use reason::{intern_reason, CloseReason};
// The server's metrics count refusals and rate limits by these positions.
pub(crate) use reason::{limit_position, refusal_position, LIMITS, REFUSALS};
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

vocabulary! {
    /// The name of each kind of event, in [`EventKind`] declaration order: the `event` of
    /// its JSON form, of `rampart activity stats` and of the activity database (whose `event`
    /// column holds the position in [`EventName::ALL`], so this list is append only).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum EventName {
        /// [`EventKind::Accept`].
        Accept => "accept",
        /// [`EventKind::Refused`].
        Refused => "refused",
        /// [`EventKind::FrameIn`].
        FrameIn => "frame_in",
        /// [`EventKind::FrameOut`].
        FrameOut => "frame_out",
        /// [`EventKind::DecodeError`].
        DecodeError => "decode_error",
        /// [`EventKind::AuthOk`].
        AuthOk => "auth_ok",
        /// [`EventKind::AuthFailed`].
        AuthFailed => "auth_failed",
        /// [`EventKind::RateLimited`].
        RateLimited => "rate_limited",
        /// [`EventKind::PermissionDenied`].
        PermissionDenied => "permission_denied",
        /// [`EventKind::Timeout`].
        Timeout => "timeout",
        /// [`EventKind::Close`].
        Close => "close",
    }
    /// The name as stored in the `event` column and shown by `rampart activity stats`.
    fn as_str;
}

impl EventKind {
    /// Which kind of event this is, without its details.
    pub fn event_name(&self) -> EventName {
        match self {
            EventKind::Accept => EventName::Accept,
            EventKind::Refused { .. } => EventName::Refused,
            EventKind::FrameIn { .. } => EventName::FrameIn,
            EventKind::FrameOut { .. } => EventName::FrameOut,
            EventKind::DecodeError { .. } => EventName::DecodeError,
            EventKind::AuthOk { .. } => EventName::AuthOk,
            EventKind::AuthFailed { .. } => EventName::AuthFailed,
            EventKind::RateLimited { .. } => EventName::RateLimited,
            EventKind::PermissionDenied => EventName::PermissionDenied,
            EventKind::Timeout { .. } => EventName::Timeout,
            EventKind::Close { .. } => EventName::Close,
        }
    }

    /// The event's name as stored in the `event` column.
    pub fn name(&self) -> &'static str {
        self.event_name().as_str()
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

/// Milliseconds since the Unix epoch, now, on the steady clock the defences keep time
/// with ([`crate::sim::steady_ms`]): the wall clock as it was when the process started, plus
/// the monotonic time since. A step of the system clock (NTP, `date -s`) does not move it,
/// so activity windows, tickets and block expiries never jump with it.
pub fn now_ms() -> i64 {
    crate::sim::steady_ms()
}

/// One event of every kind, in declaration order, with reasons a server records (tests).
#[cfg(test)]
pub(crate) fn one_of_each_kind() -> [EventKind; EventName::ALL.len()] {
    use crate::guard::{Limited, Refusal};
    use crate::protocol::error::DecodeErrorKind;
    [
        EventKind::Accept,
        EventKind::Refused {
            reason: Refusal::Blocked {
                until: std::time::UNIX_EPOCH,
            }
            .reason(),
        },
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
            reason: DecodeErrorKind::BadMagic.as_str(),
        },
        EventKind::AuthOk { forgiven: 2 },
        EventKind::AuthFailed { guess: false },
        EventKind::RateLimited {
            reason: Limited::LoginIp.reason(),
        },
        EventKind::PermissionDenied,
        EventKind::Timeout {
            reason: CloseReason::Idle.as_str(),
        },
        EventKind::Close {
            reason: CloseReason::Eof.as_str(),
            unread_bytes: 9,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::error::check_vocabulary;

    /// The names as the activity database, `activity stats` and the JSON form of events
    /// spell them, in the order whose positions the `event` column stores: pinned.
    const STORED_EVENT_NAMES: [&str; 11] = [
        "accept",
        "refused",
        "frame_in",
        "frame_out",
        "decode_error",
        "auth_ok",
        "auth_failed",
        "rate_limited",
        "permission_denied",
        "timeout",
        "close",
    ];

    #[test]
    fn event_names_are_the_stored_ones() {
        check_vocabulary(
            &EventName::ALL,
            &EventName::NAMES,
            EventName::as_str,
            EventName::from_name,
            &STORED_EVENT_NAMES,
        );
    }

    /// Every kind has its own name, in declaration order, and its JSON form is tagged with
    /// that name.
    #[test]
    fn every_kind_is_named_by_its_event_name() -> Result<(), serde_json::Error> {
        let kinds = one_of_each_kind();
        let names: Vec<EventName> = kinds.iter().map(EventKind::event_name).collect();
        assert_eq!(names, EventName::ALL);
        for kind in kinds {
            let json = serde_json::to_value(kind)?;
            assert_eq!(json["event"], kind.name());
        }
        Ok(())
    }
}
