//! Errors: what a peer can get wrong on the wire, what a caller can get wrong when encoding,
//! and the numeric error codes carried by ERROR replies.

use super::frame::Kind;

/// Defines a closed vocabulary from one table: an enum whose variants each carry a stable
/// snake_case name, and on it `ALL` (every value, in declaration order), `NAMES` (their names,
/// in the same order), the name accessor (called as the caller says, with the caller's doc
/// comment) and `from_name`. The names are what metrics, logs, the activity database and
/// exported data store, so every list of them is derived from this one table and never kept
/// by hand.
///
/// ```text
/// vocabulary! {
///     /// The enum's doc.
///     #[derive(Debug, Clone, Copy, PartialEq, Eq)]
///     pub enum Color {
///         /// A variant's doc.
///         Red => "red",
///         Green = 7 => "green",
///     }
///     /// The accessor's doc.
///     fn as_str;
/// }
/// ```
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident $(= $value:expr)? => $text:literal, )*
        }
        $(#[$gmeta:meta])*
        fn $get:ident;
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[$vmeta])* $variant $(= $value)?, )*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: [$name; [$($text),*].len()] = [$($name::$variant),*];

            /// Every value's name, in declaration order (the name of `ALL[i]` is `NAMES[i]`).
            pub const NAMES: [&'static str; [$($text),*].len()] = [$($text),*];

            $(#[$gmeta])*
            pub const fn $get(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )*
                }
            }

            /// The value whose name is `name`, if there is one.
            pub fn from_name(name: &str) -> Option<$name> {
                $name::ALL.into_iter().find(|v| v.$get() == name)
            }
        }
    };
}
pub(crate) use vocabulary;

/// Why a frame or body was rejected. One variant per rejection reason, so that callers match
/// on the reason and never compare strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A header byte differs from the protocol magic `RM` (checked as soon as it arrives).
    #[error("bad magic byte 0x{byte:02x} at offset {offset}")]
    BadMagic {
        /// The byte that arrived.
        byte: u8,
        /// Its offset in the header (0 or 1).
        offset: u8,
    },
    /// The version byte is not one this build speaks.
    #[error("unsupported protocol version {version}")]
    UnsupportedVersion {
        /// The version the peer sent.
        version: u8,
    },
    /// The kind byte names no frame kind.
    #[error("unknown frame kind 0x{kind:02x}")]
    UnknownKind {
        /// The kind byte the peer sent.
        kind: u8,
    },
    /// A known kind that this side must not receive (a reply sent to the server, or a request
    /// sent to the client).
    #[error("frame kind {kind:?} is not allowed in this direction")]
    UnexpectedKind {
        /// The kind that arrived.
        kind: Kind,
    },
    /// Flag bits that version 1 reserves were set.
    #[error("reserved flag bits set: 0x{flags:04x}")]
    ReservedFlags {
        /// The flags field as sent.
        flags: u16,
    },
    /// The declared payload length exceeds the limit for this kind.
    #[error("{kind:?} frame declares {len} bytes, limit is {max}")]
    FrameTooLarge {
        /// The frame kind.
        kind: Kind,
        /// The declared payload length.
        len: u32,
        /// The limit that applies.
        max: u32,
    },
    /// The payload ended inside a field.
    #[error("payload ends inside field {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// The payload has bytes after the last field.
    #[error("{extra} unexpected bytes after the body of {kind:?}")]
    TrailingBytes {
        /// The frame kind.
        kind: Kind,
        /// How many bytes were left over.
        extra: usize,
    },
    /// A text field is not valid UTF-8.
    #[error("field {field} is not valid utf-8")]
    InvalidUtf8 {
        /// The field.
        field: &'static str,
    },
    /// A length-prefixed field declares more bytes than its limit.
    #[error("field {field} is {len} bytes, limit is {max}")]
    FieldTooLong {
        /// The field.
        field: &'static str,
        /// Its declared length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A list declares more entries than its limit.
    #[error("field {field} has {count} entries, limit is {max}")]
    TooManyItems {
        /// The list field.
        field: &'static str,
        /// Its declared count.
        count: u64,
        /// The limit.
        max: u64,
    },
    /// A field holds a value outside its defined range (an unknown enum byte, say).
    #[error("field {field} has invalid value {value}")]
    InvalidValue {
        /// The field.
        field: &'static str,
        /// The value found.
        value: u64,
    },
}

vocabulary! {
    /// What kind of rejection a [`DecodeError`] is, without its details: one value per
    /// variant, each with the stable label that metrics count and the activity database
    /// records ([`DecodeError::reason`]).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum DecodeErrorKind {
        /// [`DecodeError::BadMagic`].
        BadMagic => "bad_magic",
        /// [`DecodeError::UnsupportedVersion`].
        UnsupportedVersion => "unsupported_version",
        /// [`DecodeError::UnknownKind`].
        UnknownKind => "unknown_kind",
        /// [`DecodeError::UnexpectedKind`].
        UnexpectedKind => "unexpected_kind",
        /// [`DecodeError::ReservedFlags`].
        ReservedFlags => "reserved_flags",
        /// [`DecodeError::FrameTooLarge`].
        FrameTooLarge => "frame_too_large",
        /// [`DecodeError::Truncated`].
        Truncated => "truncated",
        /// [`DecodeError::TrailingBytes`].
        TrailingBytes => "trailing_bytes",
        /// [`DecodeError::InvalidUtf8`].
        InvalidUtf8 => "invalid_utf8",
        /// [`DecodeError::FieldTooLong`].
        FieldTooLong => "field_too_long",
        /// [`DecodeError::TooManyItems`].
        TooManyItems => "too_many_items",
        /// [`DecodeError::InvalidValue`].
        InvalidValue => "invalid_value",
    }
    /// A stable snake_case label for counting and recording rejections by reason.
    fn as_str;
}

impl DecodeErrorKind {
    /// True when the framing itself is broken (header errors): the byte stream cannot be
    /// resynchronized and the connection must close. Body errors leave the stream intact.
    pub const fn is_fatal(self) -> bool {
        matches!(
            self,
            DecodeErrorKind::BadMagic
                | DecodeErrorKind::UnsupportedVersion
                | DecodeErrorKind::UnknownKind
                | DecodeErrorKind::UnexpectedKind
                | DecodeErrorKind::ReservedFlags
                | DecodeErrorKind::FrameTooLarge
        )
    }
}

impl DecodeError {
    /// The kind of rejection, without its details.
    pub fn kind(&self) -> DecodeErrorKind {
        match self {
            DecodeError::BadMagic { .. } => DecodeErrorKind::BadMagic,
            DecodeError::UnsupportedVersion { .. } => DecodeErrorKind::UnsupportedVersion,
            DecodeError::UnknownKind { .. } => DecodeErrorKind::UnknownKind,
            DecodeError::UnexpectedKind { .. } => DecodeErrorKind::UnexpectedKind,
            DecodeError::ReservedFlags { .. } => DecodeErrorKind::ReservedFlags,
            DecodeError::FrameTooLarge { .. } => DecodeErrorKind::FrameTooLarge,
            DecodeError::Truncated { .. } => DecodeErrorKind::Truncated,
            DecodeError::TrailingBytes { .. } => DecodeErrorKind::TrailingBytes,
            DecodeError::InvalidUtf8 { .. } => DecodeErrorKind::InvalidUtf8,
            DecodeError::FieldTooLong { .. } => DecodeErrorKind::FieldTooLong,
            DecodeError::TooManyItems { .. } => DecodeErrorKind::TooManyItems,
            DecodeError::InvalidValue { .. } => DecodeErrorKind::InvalidValue,
        }
    }

    /// A stable snake_case label for counting and recording rejections by reason (the
    /// [`kind`](DecodeError::kind)'s name).
    pub fn reason(&self) -> &'static str {
        self.kind().as_str()
    }

    /// Every reason label, in declaration order (for metrics tables and docs).
    pub const REASONS: [&'static str; DecodeErrorKind::ALL.len()] = DecodeErrorKind::NAMES;

    /// True when the framing itself is broken ([`DecodeErrorKind::is_fatal`]).
    pub fn is_fatal(&self) -> bool {
        self.kind().is_fatal()
    }
}

/// The caller asked to encode something the protocol cannot carry. This is a programming or
/// usage error on the sending side, kept apart from [`DecodeError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A field is longer than its length prefix or its limit allows.
    #[error("field {field} is {len} bytes, limit is {max}")]
    FieldTooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A list is longer than its count prefix or limit allows.
    #[error("field {field} has {count} entries, limit is {max}")]
    TooManyItems {
        /// The list field.
        field: &'static str,
        /// Its length.
        count: u64,
        /// The limit.
        max: u64,
    },
    /// The whole payload is longer than the frame limit.
    #[error("payload of {len} bytes exceeds the frame limit of {max}")]
    FrameTooLarge {
        /// The payload length.
        len: u64,
        /// The limit.
        max: u32,
    },
}

vocabulary! {
    /// Numeric codes carried by ERROR replies (see docs/PROTOCOL.md, "Error codes"), declared
    /// in numeric order, each with its stable name.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    #[repr(u16)]
    pub enum ErrorCode {
        /// The request frame or body could not be decoded.
        BadFrame = 1 => "bad_frame",
        /// The request needs an authenticated session.
        NotAuthenticated = 2 => "not_authenticated",
        /// Wrong user name or password (one code for both: no user enumeration).
        AuthFailed = 3 => "auth_failed",
        /// A rate limit refused the request; it was not applied.
        RateLimited = 4 => "rate_limited",
        /// The item exists but does not belong to this session's user.
        PermissionDenied = 5 => "permission_denied",
        /// No such item, upload or part.
        NotFound = 6 => "not_found",
        /// The recipient user does not exist.
        UnknownRecipient = 7 => "unknown_recipient",
        /// A size limit was exceeded (file size, text length, open uploads).
        TooLarge = 8 => "too_large",
        /// The sender's storage quota would be exceeded.
        QuotaExceeded = 9 => "quota_exceeded",
        /// An upload's digest does not match its bytes.
        DigestMismatch = 10 => "digest_mismatch",
        /// The request is well-formed but invalid in this state (wrong offset, repeated AUTH).
        BadRequest = 11 => "bad_request",
        /// The server failed internally; the request was not applied.
        Internal = 12 => "internal",
        /// The server is shutting down.
        ShuttingDown = 13 => "shutting_down",
        /// A session timeout expired; the server closes after this reply.
        Timeout = 14 => "timeout",
        /// The server refuses new connections (a connection cap was reached).
        Busy = 15 => "busy",
        /// The server's disk is full (or below its free-space floor): nothing new was stored.
        /// Reading and deleting still work; retry after deleting items or later.
        StorageFull = 16 => "storage_full",
        /// The source address is blocked: sent once at accept, then the connection is closed.
        /// The message has the exact form of [`BlockedNotice`] (seconds left and the offence).
        Blocked = 17 => "blocked",
    }
    /// A stable snake_case name.
    fn name;
}

impl ErrorCode {
    /// The code for a wire value, if it is defined.
    pub fn from_u16(v: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| *c as u16 == v)
    }
}

/// The message of an ERROR `blocked`: how long the source stays blocked and why. Its text
/// form is fixed (docs/PROTOCOL.md, "The `blocked` message"), so clients can read the
/// seconds left without a new body layout: `your address is blocked for N s (REASON)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedNotice {
    /// Whole seconds until the block ends, rounded up (at least 1 while it is in force).
    pub secs_left: u64,
    /// The offence, as recorded with the block; at most [`MAX_BLOCKED_REASON`] bytes.
    pub reason: String,
}

/// Longest reason carried in a `blocked` message, in bytes. A firewall reason lists the
/// signals behind a block and can run long; 200 bytes keep the one frame written at accept
/// small (well under one TCP segment) and far below `MAX_ERROR_MESSAGE`.
pub const MAX_BLOCKED_REASON: usize = 200;

const BLOCKED_PREFIX: &str = "your address is blocked for ";
const BLOCKED_UNIT: &str = " s (";

impl BlockedNotice {
    /// A notice for `secs_left` seconds and `reason`, the reason cut to
    /// [`MAX_BLOCKED_REASON`] bytes at a character boundary (an empty one reads
    /// "no reason given").
    pub fn new(secs_left: u64, reason: &str) -> BlockedNotice {
        let reason = if reason.is_empty() {
            "no reason given"
        } else {
            reason
        };
        let mut end = reason.len().min(MAX_BLOCKED_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        BlockedNotice {
            secs_left,
            reason: reason.get(..end).unwrap_or_default().to_string(),
        }
    }

    /// Reads a `blocked` message back; `None` if it does not have the documented form.
    pub fn parse(message: &str) -> Option<BlockedNotice> {
        let rest = message.strip_prefix(BLOCKED_PREFIX)?;
        let (secs, rest) = rest.split_once(BLOCKED_UNIT)?;
        if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let reason = rest.strip_suffix(')')?;
        Some(BlockedNotice {
            secs_left: secs.parse().ok()?,
            reason: reason.to_string(),
        })
    }
}

impl std::fmt::Display for BlockedNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{BLOCKED_PREFIX}{}{BLOCKED_UNIT}{})",
            self.secs_left, self.reason
        )
    }
}

/// Checks a [`vocabulary!`] both ways against `pinned`, the names as data already stored
/// spells them: `all` names exactly the pinned names in order (so none is renamed, added
/// or lost unnoticed), each name is unique snake_case, and every name reads back as its value.
#[cfg(test)]
pub(crate) fn check_vocabulary<T: Copy + PartialEq + std::fmt::Debug>(
    all: &[T],
    names: &[&str],
    name: fn(T) -> &'static str,
    from_name: fn(&str) -> Option<T>,
    pinned: &[&str],
) {
    let derived: Vec<&str> = all.iter().map(|v| name(*v)).collect();
    assert_eq!(derived, pinned);
    assert_eq!(names, pinned);
    let mut seen = std::collections::BTreeSet::new();
    for v in all {
        let n = name(*v);
        assert!(seen.insert(n), "duplicate name {n}");
        assert!(
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()),
            "{n} is not snake_case"
        );
        assert_eq!(from_name(n), Some(*v), "{n}");
    }
    for unknown in ["", "other", "Eof", " eof"] {
        if !pinned.contains(&unknown) {
            assert_eq!(from_name(unknown), None, "{unknown:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_error_reasons_are_the_stored_ones() {
        // As metrics tables, docs and recorded activity spell them: pinned.
        let pinned = [
            "bad_magic",
            "unsupported_version",
            "unknown_kind",
            "unexpected_kind",
            "reserved_flags",
            "frame_too_large",
            "truncated",
            "trailing_bytes",
            "invalid_utf8",
            "field_too_long",
            "too_many_items",
            "invalid_value",
        ];
        check_vocabulary(
            &DecodeErrorKind::ALL,
            &DecodeErrorKind::NAMES,
            DecodeErrorKind::as_str,
            DecodeErrorKind::from_name,
            &pinned,
        );
        assert_eq!(DecodeError::REASONS, pinned);
        let fatal: Vec<&str> = DecodeErrorKind::ALL
            .into_iter()
            .filter(|k| k.is_fatal())
            .map(DecodeErrorKind::as_str)
            .collect();
        assert_eq!(fatal, pinned[..6]);
    }

    #[test]
    fn every_decode_error_has_its_kind() {
        let field = "f";
        let errors = [
            DecodeError::BadMagic { byte: 0, offset: 0 },
            DecodeError::UnsupportedVersion { version: 9 },
            DecodeError::UnknownKind { kind: 0x7f },
            DecodeError::UnexpectedKind { kind: Kind::Pong },
            DecodeError::ReservedFlags { flags: 1 },
            DecodeError::FrameTooLarge {
                kind: Kind::Ping,
                len: 2,
                max: 1,
            },
            DecodeError::Truncated { field },
            DecodeError::TrailingBytes {
                kind: Kind::Ping,
                extra: 1,
            },
            DecodeError::InvalidUtf8 { field },
            DecodeError::FieldTooLong {
                field,
                len: 2,
                max: 1,
            },
            DecodeError::TooManyItems {
                field,
                count: 2,
                max: 1,
            },
            DecodeError::InvalidValue { field, value: 9 },
        ];
        let kinds: Vec<DecodeErrorKind> = errors.iter().map(DecodeError::kind).collect();
        assert_eq!(kinds, DecodeErrorKind::ALL);
        for e in &errors {
            assert_eq!(e.reason(), e.kind().as_str());
            assert_eq!(e.is_fatal(), e.kind().is_fatal());
        }
    }

    #[test]
    fn error_codes_are_the_documented_ones() {
        let pinned = [
            "bad_frame",
            "not_authenticated",
            "auth_failed",
            "rate_limited",
            "permission_denied",
            "not_found",
            "unknown_recipient",
            "too_large",
            "quota_exceeded",
            "digest_mismatch",
            "bad_request",
            "internal",
            "shutting_down",
            "timeout",
            "busy",
            "storage_full",
            "blocked",
        ];
        check_vocabulary(
            &ErrorCode::ALL,
            &ErrorCode::NAMES,
            ErrorCode::name,
            ErrorCode::from_name,
            &pinned,
        );
        // Wire values 1..=17, in declaration order.
        for (i, code) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(code as u16), i + 1);
            assert_eq!(ErrorCode::from_u16(code as u16), Some(code));
        }
        assert_eq!(ErrorCode::from_u16(0), None);
        assert_eq!(ErrorCode::from_u16(18), None);
    }

    fn check(secs: u64, reason: &str, text: &str) {
        let notice = BlockedNotice::new(secs, reason);
        assert_eq!(notice.to_string(), text);
        assert_eq!(BlockedNotice::parse(text), Some(notice));
    }

    #[test]
    fn blocked_message_has_the_documented_form_and_parses_back() {
        check(
            287,
            "auth_failed x4",
            "your address is blocked for 287 s (auth_failed x4)",
        );
        check(1, "", "your address is blocked for 1 s (no reason given)");
        check(9, "a (b) c)", "your address is blocked for 9 s (a (b) c))");
        check(
            u64::MAX,
            "x",
            &format!("your address is blocked for {} s (x)", u64::MAX),
        );
    }

    #[test]
    fn blocked_reason_is_capped_at_a_char_boundary() {
        let long = "é".repeat(MAX_BLOCKED_REASON);
        let notice = BlockedNotice::new(5, &long);
        assert_eq!(notice.reason.len(), MAX_BLOCKED_REASON);
        assert!(notice.to_string().len() < super::super::limits::MAX_ERROR_MESSAGE);
    }

    #[test]
    fn other_messages_are_not_blocked_notices() {
        for text in [
            "",
            "connection refused: blocked",
            "your address is blocked for  s (x)",
            "your address is blocked for -1 s (x)",
            "your address is blocked for 1e3 s (x)",
            "your address is blocked for 5 s x",
            "your address is blocked for 99999999999999999999999 s (x)",
        ] {
            assert_eq!(BlockedNotice::parse(text), None, "{text:?}");
        }
    }
}
