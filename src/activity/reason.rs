//! The reasons events carry: why a session ended ([`CloseReason`], defined here because
//! `activity` is the lowest layer that needs it; the server records it), why a connection was
//! refused at accept ([`Refusal`]) and which rate limit a request hit ([`Limited`]), both named
//! by the guard, and why a frame was rejected ([`DecodeErrorKind`], named by the protocol).
//!
//! Events hold a reason as the `&'static str` of its stable name, and the activity database
//! stores that name as text; [`intern_reason`] turns a stored name back into the same
//! `&'static str`, from these vocabularies and no copy of them.

use crate::guard::{Limited, Refusal};
use crate::protocol::error::{vocabulary, DecodeErrorKind};

vocabulary! {
    /// Why a session ended. Recorded in logs, metrics and the activity database (`close` and
    /// `timeout` events).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum CloseReason {
        /// The peer closed its side.
        Eof => "eof",
        /// The peer sent BYE.
        Bye => "bye",
        /// A frame header was invalid; the stream cannot be resynchronized.
        BadFrame => "bad_frame",
        /// Too many rate-limited or malformed requests.
        Strikes => "strikes",
        /// A frame did not complete within its time budget.
        FrameBudget => "frame_budget",
        /// A frame arrived slower than the minimum rate.
        SlowFrame => "slow_frame",
        /// No complete frame for the idle timeout.
        Idle => "idle",
        /// No successful AUTH within the authentication timeout.
        AuthTimeout => "auth_timeout",
        /// A write made no progress within the write timeout (the peer does not read).
        WriteTimeout => "write_timeout",
        /// The source was blocked while the session was open.
        Blocked => "blocked",
        /// The server is shutting down.
        Shutdown => "shutdown",
        /// The transport failed.
        Io => "io",
        /// The connection task panicked (contained).
        Panic => "panic",
    }
    /// A stable snake_case label.
    fn as_str;
}

impl CloseReason {
    /// True when the peer chose to end the session (EOF or BYE); every other close is the
    /// server's decision.
    pub const fn by_peer(self) -> bool {
        matches!(self, CloseReason::Eof | CloseReason::Bye)
    }
}

/// One refusal of every kind, in the guard's declaration order (the time of a block does not
/// change its name). The guard sits beside `activity` and keeps no list of its refusals; the
/// exhaustive match in [`refusal_position`] stops the build when it gains one, so that it is
/// added here too.
pub(crate) const REFUSALS: [Refusal; 5] = [
    Refusal::Denied,
    Refusal::Blocked {
        until: std::time::SystemTime::UNIX_EPOCH,
    },
    Refusal::AcceptRate,
    Refusal::TooManyConnections,
    Refusal::TooManyFromSource,
];

/// Every rate limit, in the guard's declaration order (see [`REFUSALS`] and
/// [`limit_position`]).
pub(crate) const LIMITS: [Limited; 6] = [
    Limited::Ip,
    Limited::User,
    Limited::Connection,
    Limited::LoginIp,
    Limited::LoginUser,
    Limited::LoginOkIp,
];

/// The position of a refusal's kind in [`REFUSALS`].
pub(crate) const fn refusal_position(r: &Refusal) -> usize {
    match r {
        Refusal::Denied => 0,
        Refusal::Blocked { .. } => 1,
        Refusal::AcceptRate => 2,
        Refusal::TooManyConnections => 3,
        Refusal::TooManyFromSource => 4,
    }
}

/// The position of a rate limit in [`LIMITS`].
pub(crate) const fn limit_position(l: Limited) -> usize {
    match l {
        Limited::Ip => 0,
        Limited::User => 1,
        Limited::Connection => 2,
        Limited::LoginIp => 3,
        Limited::LoginUser => 4,
        Limited::LoginOkIp => 5,
    }
}

// Each list holds each kind once, in declaration order: checked when the crate builds.
const _: () = {
    let mut i = 0;
    while i < REFUSALS.len() {
        assert!(refusal_position(&REFUSALS[i]) == i);
        i += 1;
    }
    let mut i = 0;
    while i < LIMITS.len() {
        assert!(limit_position(LIMITS[i]) == i);
        i += 1;
    }
};

/// Every reason an event can carry: decode errors, refusals, rate limits and close reasons, in
/// that order (a name that two of them share, `blocked`, comes twice).
fn known_reasons() -> impl Iterator<Item = &'static str> {
    DecodeErrorKind::NAMES
        .into_iter()
        .chain(REFUSALS.iter().map(Refusal::reason))
        .chain(LIMITS.iter().map(Limited::reason))
        .chain(CloseReason::NAMES)
}

/// The `&'static str` equal to `s` among the reasons events carry (so that events read back
/// from the database get the same values the server recorded), or "other".
pub fn intern_reason(s: &str) -> &'static str {
    known_reasons().find(|r| *r == s).unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::error::check_vocabulary;

    #[test]
    fn close_reasons_are_the_stored_ones() {
        // As logs, metrics and recorded activity spell them: pinned.
        let pinned = [
            "eof",
            "bye",
            "bad_frame",
            "strikes",
            "frame_budget",
            "slow_frame",
            "idle",
            "auth_timeout",
            "write_timeout",
            "blocked",
            "shutdown",
            "io",
            "panic",
        ];
        check_vocabulary(
            &CloseReason::ALL,
            &CloseReason::NAMES,
            CloseReason::as_str,
            CloseReason::from_name,
            &pinned,
        );
        let by_peer: Vec<&str> = CloseReason::ALL
            .into_iter()
            .filter(|r| r.by_peer())
            .map(CloseReason::as_str)
            .collect();
        assert_eq!(by_peer, ["eof", "bye"]);
    }

    /// The reasons as this module spelled them out before they were derived (after the
    /// decode error reasons, pinned in `protocol::error`): the contract with every activity
    /// database already recorded.
    #[test]
    fn known_reasons_are_the_stored_ones() {
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
            "login_ok_rate_ip",
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
        let pinned: Vec<&str> = crate::protocol::DecodeError::REASONS
            .into_iter()
            .chain(OTHER.iter().copied())
            .collect();
        let mut derived: Vec<&str> = Vec::new();
        for r in known_reasons() {
            if !derived.contains(&r) {
                derived.push(r);
            }
        }
        assert_eq!(derived, pinned);
        for r in pinned {
            assert_eq!(intern_reason(r), r);
        }
        for r in ["", "other", "nope", "EOF", "eof "] {
            assert_eq!(intern_reason(r), "other", "{r:?}");
        }
    }
}
