//! [`ClientError`]: one variant per way a client operation can fail, so callers (the CLI,
//! tests, attack scenarios) match on what happened instead of comparing strings.

use std::io;
use std::path::{Path, PathBuf};

use crate::protocol::{BlockedNotice, DecodeError, EncodeError, ErrorCode, Kind};

/// Why a client operation failed.
#[derive(thiserror::Error, Debug)]
pub enum ClientError {
    /// The server could not be reached (resolution, bind of the source address, handshake or
    /// connect timeout).
    #[error("cannot reach server at {addr}: {source}")]
    Connect {
        /// The address as given by the caller.
        addr: String,
        /// What failed.
        source: io::Error,
    },
    /// The TLS handshake failed: an untrusted or changed certificate, no shared version, or
    /// a server that does not speak TLS.
    #[error("TLS with {addr} failed: {source}")]
    Tls {
        /// The address as given by the caller.
        addr: String,
        /// What failed (rustls's reason, inside an I/O error).
        source: io::Error,
    },
    /// A socket error other than the peer closing, or an error from the caller's own reader
    /// (uploads) or writer (downloads).
    #[error("i/o error: {0}")]
    Io(#[source] io::Error),
    /// The server sent a frame or body this client cannot decode.
    #[error("bad reply from server: {0}")]
    Protocol(#[source] DecodeError),
    /// The request cannot be put on the wire (a field is too long for its length prefix).
    #[error("cannot encode request: {0}")]
    Encode(#[source] EncodeError),
    /// The server answered with an ERROR reply; the request was not applied. A `blocked`
    /// refusal reads `your address is blocked for N s (REASON)`; see [`ClientError::blocked`].
    #[error("{}", describe_server_error(*.code, .message))]
    Server {
        /// The error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The server answered with a reply of the wrong kind for the request.
    #[error("expected {expected} reply, got {}", got.wire_name())]
    UnexpectedReply {
        /// The reply kind (or kinds) that would have made sense.
        expected: &'static str,
        /// The kind that arrived.
        got: Kind,
    },
    /// A reply carried a request id other than the one being waited for; the stream is out of
    /// step, so the connection is treated as closed afterwards.
    #[error("reply id {got} does not match request id {expected}")]
    ReplyIdMismatch {
        /// The id of the oldest request without a reply.
        expected: u32,
        /// The id the reply carried.
        got: u32,
    },
    /// The connection is closed: the server closed it, or an earlier error left it unusable.
    #[error("connection closed")]
    Closed,
    /// No reply (or no write progress) within the request timeout.
    #[error("no reply from server within the request timeout")]
    Timeout,
    /// Downloaded bytes do not hash to the digest the server reported.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest from FETCH, in hex.
        expected: String,
        /// The digest of the bytes received, in hex.
        actual: String,
    },
    /// A local file could not be read or written.
    #[error("{}", describe_file_error(.path, .source))]
    File {
        /// The local path.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

impl ClientError {
    /// The server's error code, if the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// How long the source stays blocked and why, if the server refused the connection
    /// because the source address is blocked (ERROR `blocked` with a message of the
    /// documented form).
    pub fn blocked(&self) -> Option<BlockedNotice> {
        match self {
            ClientError::Server {
                code: ErrorCode::Blocked,
                message,
            } => BlockedNotice::parse(message),
            _ => None,
        }
    }

    /// A [`ClientError::File`] for `path`.
    pub(crate) fn file(path: &Path, source: io::Error) -> ClientError {
        ClientError::File {
            path: path.to_path_buf(),
            source,
        }
    }
}

fn describe_server_error(code: ErrorCode, message: &str) -> String {
    // A blocked user is told plainly what happened and for how long, in the notice's own
    // words; a message of another form (a foreign server) falls back to the generic text.
    match (code, BlockedNotice::parse(message)) {
        (ErrorCode::Blocked, Some(notice)) => notice.to_string(),
        _ => format!("server refused: {message} ({})", code.name()),
    }
}

fn describe_file_error(path: &Path, source: &io::Error) -> String {
    match source.kind() {
        io::ErrorKind::NotFound => format!("file not found: {}", path.display()),
        _ => format!("cannot use file {}: {source}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(err: ClientError, expected: &str) {
        assert_eq!(err.to_string(), expected);
    }

    #[test]
    fn messages_are_lower_case_without_period() {
        check(
            ClientError::Server {
                code: ErrorCode::NotFound,
                message: "no such item".into(),
            },
            "server refused: no such item (not_found)",
        );
        check(
            ClientError::file(
                Path::new("/nope/a.txt"),
                io::Error::from(io::ErrorKind::NotFound),
            ),
            "file not found: /nope/a.txt",
        );
        check(
            ClientError::UnexpectedReply {
                expected: "PONG",
                got: Kind::Ok,
            },
            "expected PONG reply, got OK",
        );
        check(ClientError::Closed, "connection closed");
        check(
            ClientError::Server {
                code: ErrorCode::Blocked,
                message: "your address is blocked for 287 s (auth_failed x4)".into(),
            },
            "your address is blocked for 287 s (auth_failed x4)",
        );
        check(
            ClientError::Server {
                code: ErrorCode::Blocked,
                message: "go away".into(),
            },
            "server refused: go away (blocked)",
        );
        check(
            ClientError::Connect {
                addr: "127.0.0.1:1".into(),
                source: io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused"),
            },
            "cannot reach server at 127.0.0.1:1: connection refused",
        );
    }

    #[test]
    fn code_only_for_server_errors() {
        let refused = ClientError::Server {
            code: ErrorCode::Busy,
            message: String::new(),
        };
        assert_eq!(refused.code(), Some(ErrorCode::Busy));
        assert_eq!(ClientError::Timeout.code(), None);
    }

    #[test]
    fn blocked_reads_the_notice_only_from_a_blocked_error() {
        let blocked = ClientError::Server {
            code: ErrorCode::Blocked,
            message: BlockedNotice::new(42, "fatal_frame x3").to_string(),
        };
        assert_eq!(
            blocked.blocked(),
            Some(BlockedNotice::new(42, "fatal_frame x3"))
        );
        let busy = ClientError::Server {
            code: ErrorCode::Busy,
            message: BlockedNotice::new(42, "x").to_string(),
        };
        assert_eq!(busy.blocked(), None);
        assert_eq!(ClientError::Closed.blocked(), None);
    }
}
