//! File descriptors: raising the process's limit at start and fitting `max_connections` to
//! what it leaves.
//!
//! Every connection is a socket, and an authenticated one may also hold its staged uploads
//! open and read a blob. Without a cap derived from the descriptor limit, a connection flood
//! under a low `ulimit -n` took every descriptor, and a legitimate upload then failed with
//! `internal` because its staging file could not be opened. So at start the soft limit is
//! raised to the hard one, a fixed reserve is set aside for what the server itself opens, and
//! `max_connections` is lowered, with a warning, until the worst case of every connection
//! fits in the rest.

use std::io;

/// Descriptors set aside for the server itself, beyond its connections: stdin, stdout and
/// stderr; the runtime (epoll, its wake-up eventfd, the signal pipe); the listener; SQLite's
/// `rampart.db` with its `-wal` and `-shm` on each of the store's connections, and the same
/// for `activity.db`; directory handles for fsyncs; the connection accepted only to be
/// refused as `busy`; and the libraries' own. About 30 are in use at any time; four times
/// that leaves room for what we did not count.
pub const RESERVED_FDS: u64 = 128;

/// The process's descriptor limit, before and after [`raise_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit found at start (`None`: unlimited).
    pub before: Option<u64>,
    /// The soft limit now in force (`None`: unlimited).
    pub soft: Option<u64>,
    /// The hard limit, which an unprivileged process cannot raise (`None`: unlimited).
    pub hard: Option<u64>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, where the system allows it, and reports
/// both. A refused raise is not an error: the server then fits itself to the soft limit.
pub fn raise_limit() -> FdLimit {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let found = getrlimit(Resource::Nofile);
    let mut limit = FdLimit {
        before: found.current,
        soft: found.current,
        hard: found.maximum,
    };
    if found.current != found.maximum {
        let raised = rustix::process::Rlimit {
            current: found.maximum,
            maximum: found.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit.soft = getrlimit(Resource::Nofile).current,
            Err(e) => tracing::warn!(
                error = %io::Error::from(e),
                "cannot raise the file descriptor limit to the hard limit"
            ),
        }
    }
    limit
}

/// The most connections `soft` descriptors can serve when each connection may hold
/// `1 + max_open_uploads + 1` of them (its socket, its staged uploads, one blob being read or
/// committed), after [`RESERVED_FDS`]; `None` when the limit leaves room for none, and
/// `u32::MAX` when it is unlimited.
pub fn connection_cap(soft: Option<u64>, max_open_uploads: u16) -> Option<u32> {
    let Some(soft) = soft else {
        return Some(u32::MAX);
    };
    let per_connection = 2 + u64::from(max_open_uploads);
    let cap = soft.saturating_sub(RESERVED_FDS) / per_connection;
    (cap >= 1).then(|| u32::try_from(cap).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_the_reserve_and_each_connections_worst_case() {
        // 512 descriptors, 4 uploads per session: (512 - 128) / 6.
        assert_eq!(connection_cap(Some(512), 4), Some(64));
        assert_eq!(connection_cap(Some(1_048_576), 4), Some(174_741));
        assert_eq!(connection_cap(Some(128 + 6), 4), Some(1));
        assert_eq!(connection_cap(Some(128 + 5), 4), None);
        assert_eq!(connection_cap(Some(0), 4), None);
        assert_eq!(connection_cap(None, 4), Some(u32::MAX));
        assert_eq!(connection_cap(Some(u64::MAX), 1), Some(u32::MAX));
    }

    #[test]
    fn raising_never_lowers_the_limit() {
        let limit = raise_limit();
        if let (Some(before), Some(soft)) = (limit.before, limit.soft) {
            assert!(soft >= before, "{limit:?}");
        }
        if let (Some(soft), Some(hard)) = (limit.soft, limit.hard) {
            assert!(soft <= hard, "{limit:?}");
        }
    }
}
