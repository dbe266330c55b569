//! The planted secrets ([`Canary`]) and the reply side of every attacker connection, which
//! looks for them: [`Inbox`] decodes and counts replies and scans every byte received for the
//! canary, also across reads; [`Drain`] does so on its own task while another writes.

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::sim::net::ConnRead;
use bytes::BytesMut;
use memchr::memmem;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::run::{bump, Counts, Env};
use super::wire::{error_code, reply_label, REPLY_LIMITS};
use crate::protocol::{decode_frame, ErrorCode, Frame, Kind, Role};

/// Secrets the runner planted. No byte of them may ever reach an attacker.
#[derive(Clone)]
pub struct Canary {
    /// The text of a private mail to the victim.
    pub secret: String,
    /// The victim's user name.
    pub victim: String,
    /// The victim's password.
    pub victim_password: String,
    /// Ids of the victim's private items, for the tamper attacker to go after.
    pub victim_item_ids: Vec<u64>,
}

impl fmt::Debug for Canary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Canary")
            .field(
                "secret",
                &format_args!("<{} bytes redacted>", self.secret.len()),
            )
            .field("victim", &self.victim)
            .field("victim_password", &format_args!("<redacted>"))
            .field("victim_item_ids", &self.victim_item_ids)
            .finish()
    }
}

/// Every stored password hash starts like this (PHC string format of argon2).
const HASH_MARKER: &[u8] = b"$argon2";

impl Canary {
    /// True if `bytes` contain the secret, the victim's password, or an argon2 hash marker.
    /// Empty secrets never match.
    pub fn leaked_in(&self, bytes: &[u8]) -> bool {
        Needles::new(self).found_in(bytes)
    }

    /// The byte strings looked for, skipping empty ones (memmem finds an empty needle
    /// everywhere).
    fn needles(&self) -> impl Iterator<Item = &[u8]> {
        [
            self.secret.as_bytes(),
            self.victim_password.as_bytes(),
            HASH_MARKER,
        ]
        .into_iter()
        .filter(|n| !n.is_empty())
    }
}

/// The canary's needles with a searcher built once for each, so the scan of every byte an
/// attacker receives does not redo that work per read.
pub(crate) struct Needles {
    finders: Vec<memmem::Finder<'static>>,
    /// The longest needle's length, so scans across read boundaries keep enough overlap.
    longest: usize,
}

/// Where [`Needles::scan`] found a needle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// Inside one read.
    InRead,
    /// Only across the boundary with the bytes read before.
    AcrossReads,
}

impl Needles {
    pub(crate) fn new(canary: &Canary) -> Needles {
        Needles {
            finders: canary
                .needles()
                .map(|n| memmem::Finder::new(n).into_owned())
                .collect(),
            longest: canary.needles().map(<[u8]>::len).max().unwrap_or(0),
        }
    }

    fn found_in(&self, hay: &[u8]) -> bool {
        self.finders.iter().any(|f| f.find(hay).is_some())
    }

    /// Looks for a needle in freshly received bytes and, failing that, across the boundary
    /// with the end of the reads before (`tail`); then keeps the last bytes in `tail` for
    /// the next read.
    fn scan(&self, tail: &mut Vec<u8>, fresh: &[u8]) -> Option<Found> {
        let keep = self.longest.saturating_sub(1);
        let mut found = None;
        if self.found_in(fresh) {
            found = Some(Found::InRead);
        } else if !tail.is_empty() {
            let mut joint = tail.clone();
            joint.extend_from_slice(fresh.get(..keep.min(fresh.len())).unwrap_or(&[]));
            if self.found_in(&joint) {
                found = Some(Found::AcrossReads);
            }
        }
        if keep == 0 {
            return found;
        }
        if fresh.len() >= keep {
            tail.clear();
            tail.extend_from_slice(fresh.get(fresh.len() - keep..).unwrap_or(&[]));
        } else {
            tail.extend_from_slice(fresh);
            let excess = tail.len().saturating_sub(keep);
            tail.drain(..excess);
        }
        found
    }
}

/// What one read of a reply gave.
#[derive(Debug)]
pub(crate) enum Got {
    /// A whole frame.
    Frame(Frame),
    /// The server closed the connection.
    Closed,
    /// The connection was reset or failed.
    Reset,
    /// The server sent bytes that are not a reply frame.
    Garbage,
    /// Nothing within the wait.
    Timeout,
    /// The attack is stopping.
    Halted,
}

/// The reply side of a connection: decodes frames, counts them, scans every byte for the
/// canary, and remembers how the server ended the connection.
pub(crate) struct Inbox {
    buf: BytesMut,
    /// The last bytes of the previous read, so a needle split across reads is still found.
    tail: Vec<u8>,
    /// Replies by label on this connection.
    pub(crate) counts: Counts,
    /// The code of an ERROR with request id 0, the server's reason for closing.
    pub(crate) last_conn_error: Option<ErrorCode>,
    /// The source the connection came from, for leak notes.
    source: IpAddr,
}

impl Inbox {
    pub(crate) fn new(source: IpAddr) -> Inbox {
        Inbox {
            buf: BytesMut::new(),
            tail: Vec::new(),
            counts: Counts::new(),
            last_conn_error: None,
            source,
        }
    }

    /// Reads the next reply, waiting at most `wait`.
    pub(crate) async fn next<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        env: &Env,
        wait: Duration,
    ) -> Got {
        let deadline = Instant::now() + wait;
        loop {
            match decode_frame(&mut self.buf, &REPLY_LIMITS, Role::Client) {
                Ok(Some(frame)) => {
                    env.obs.replies.fetch_add(1, Ordering::Relaxed);
                    let label = reply_label(&frame);
                    bump(&mut self.counts, label);
                    if frame.request_id == 0 && frame.kind == Kind::Error {
                        self.last_conn_error = error_code(&frame);
                    }
                    return Got::Frame(frame);
                }
                Ok(None) => {}
                Err(_) => return Got::Garbage,
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            let before = self.buf.len();
            let read = tokio::select! {
                r = tokio::time::timeout_at(deadline, rd.read_buf(&mut self.buf)) => r,
                _ = env.halt.cancelled() => return Got::Halted,
            };
            match read {
                Err(_) => return Got::Timeout,
                Ok(Ok(0)) => return Got::Closed,
                Ok(Ok(_)) => {
                    let fresh = self.buf.get(before..).unwrap_or(&[]);
                    match env.needles.scan(&mut self.tail, fresh) {
                        Some(Found::InRead) => env.leak(format!(
                            "canary bytes reached the attacker on a connection from {}",
                            self.source
                        )),
                        Some(Found::AcrossReads) => env.leak(format!(
                            "canary bytes reached the attacker, split across reads, on a \
                             connection from {}",
                            self.source
                        )),
                        None => {}
                    }
                }
                Ok(Err(_)) => return Got::Reset,
            }
        }
    }

    /// Reads and discards replies until the connection ends or the attack halts; returns how
    /// it ended.
    pub(crate) async fn drain<R: AsyncRead + Unpin>(&mut self, rd: &mut R, env: &Env) -> Got {
        loop {
            match self.next(rd, env, Duration::from_secs(3600)).await {
                Got::Frame(_) | Got::Timeout => continue,
                end => return end,
            }
        }
    }

    /// Records how the connection ended (`end`, from the last read) and merges this
    /// connection's counts into the run.
    pub(crate) fn finish(&mut self, env: &Env, end: &Got) {
        let label = match (end, self.last_conn_error) {
            (Got::Halted, _) => "conn ended: attack stopped",
            (_, Some(ErrorCode::Timeout)) => "conn cut: timeout",
            (_, Some(ErrorCode::BadFrame)) => "conn cut: bad_frame",
            (_, Some(ErrorCode::ShuttingDown)) => "conn cut: shutting_down",
            (_, Some(ErrorCode::Busy)) => "conn cut: busy",
            (_, Some(ErrorCode::Blocked)) => "conn cut: blocked",
            (Got::Closed, _) => "conn cut: closed without reason",
            (Got::Reset, _) => "conn cut: reset",
            (Got::Garbage, _) => "conn ended: undecodable reply",
            (Got::Frame(_), _) => "conn ended by attacker after a refusal",
            _ => "conn ended by attacker",
        };
        bump(&mut self.counts, label);
        env.merge(&self.counts);
        self.counts.clear();
    }
}

/// A task that reads and counts a connection's replies until the server closes it, while
/// another task writes.
pub(crate) struct Drain {
    handle: tokio::task::JoinHandle<()>,
    /// Cancelled once the server has closed the connection.
    pub(crate) closed: CancellationToken,
}

impl Drain {
    /// Starts draining `rd`.
    pub(crate) fn spawn(env: &Arc<Env>, mut rd: ConnRead, mut inbox: Inbox) -> Drain {
        let closed = CancellationToken::new();
        let env = Arc::clone(env);
        let done = closed.clone();
        let handle = tokio::spawn(async move {
            let end = inbox.drain(&mut rd, &env).await;
            inbox.finish(&env, &end);
            done.cancel();
        });
        Drain { handle, closed }
    }

    /// Waits up to `wait` for the server to close the connection, then stops draining.
    pub(crate) async fn finish(mut self, wait: Duration) {
        if tokio::time::timeout(wait, &mut self.handle).await.is_err() {
            self.handle.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::testing::canary;

    #[test]
    fn leaked_in_finds_each_needle_anywhere() {
        let c = canary();
        assert!(c.leaked_in(b"CANARY-7f3a9c"));
        assert!(c.leaked_in(b"xx CANARY-7f3a9c yy"));
        assert!(c.leaked_in(b"\x00\x01hunter2-victim"));
        assert!(c.leaked_in(b"$argon2id$v=19$m=64,t=1,p=1$..."));
        assert!(!c.leaked_in(b""));
        assert!(!c.leaked_in(b"CANARY-7f3a9"));
        assert!(!c.leaked_in(b"hunter2"));
        assert!(!c.leaked_in(b"victim"));
        assert!(!c.leaked_in(b"$argon"));
        let empty = Canary {
            secret: String::new(),
            victim: "v".into(),
            victim_password: String::new(),
            victim_item_ids: vec![],
        };
        assert!(!empty.leaked_in(b"anything at all"));
        assert!(empty.leaked_in(b"$argon2"));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let shown = format!("{:?}", canary());
        assert!(!shown.contains("CANARY-7f3a9c"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn a_needle_is_found_within_a_read_and_across_reads() {
        let needles = Needles::new(&canary());
        assert_eq!(needles.longest, 14);
        let scan_all = |reads: &[&[u8]]| {
            let mut tail = Vec::new();
            let found: Vec<_> = reads.iter().map(|r| needles.scan(&mut tail, r)).collect();
            (found, tail)
        };
        let (found, tail) = scan_all(&[b"xx hunter2-victim yy"]);
        assert_eq!(found, [Some(Found::InRead)]);
        // The overlap kept is one byte short of the longest needle.
        assert_eq!(tail, b"er2-victim yy");
        let (found, _) = scan_all(&[b"..hunter2", b"-victim.."]);
        assert_eq!(found, [None, Some(Found::AcrossReads)]);
        // Split three ways, the middle read shorter than the overlap kept.
        let (found, _) = scan_all(&[b"xxCANA", b"RY-7", b"f3a9c"]);
        assert_eq!(found, [None, None, Some(Found::AcrossReads)]);
        let (found, _) = scan_all(&[b"$argo", b"n", b"2"]);
        assert_eq!(found, [None, None, Some(Found::AcrossReads)]);
        let (found, _) = scan_all(&[b"CANARY-7f3a9", b"x", b"hunter2-", b"victi"]);
        assert_eq!(found, [None; 4]);
    }
}
