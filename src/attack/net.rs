//! Connecting from a source address, and telling a refusal at accept from an admitted
//! connection.
//!
//! A refusal at accept is one of: the connect itself refused or reset; the server closing
//! the connection before we sent anything without sending a byte (a blocked or denied
//! source past its share of notices); or exactly one ERROR BUSY or BLOCKED frame with
//! request id 0 (a connection cap or the accept rate; a blocked source). A fatal ERROR
//! BAD_FRAME after our garbage is not a refusal: attackers probe for refusal right after
//! connecting, before they misbehave.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::sim::net::NetStream;
use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::wire::{error_code, REPLY_LIMITS};
use crate::protocol::{decode_frame, ErrorCode, Frame, Role};

/// How long a fresh connection is watched for a refusal before the attacker misbehaves. A
/// refusal is written by the accept loop at once, so on loopback it arrives within a
/// millisecond or two; 50 ms leaves room for a busy server.
pub const PROBE_WAIT: Duration = Duration::from_millis(50);

/// Longest wait for the TCP handshake. A full accept backlog drops SYNs; the attacker then
/// moves on rather than wait for the kernel's retries.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to `target` from `source` (bound with port 0). Outside a simulation, refuses
/// any target or source that is not an IPv4 loopback address; gives up after
/// [`CONNECT_TIMEOUT`].
pub async fn connect_from(source: IpAddr, target: SocketAddr) -> io::Result<NetStream> {
    // A simulation's network is its own: nothing leaves the process.
    if !crate::sim::active() {
        if !target.ip().is_loopback() || !target.is_ipv4() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("attackers only connect to IPv4 loopback addresses, not {target}"),
            ));
        }
        if !source.is_loopback() || !source.is_ipv4() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "attackers only bind IPv4 loopback sources outside a simulation, not {source}"
                ),
            ));
        }
    }
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        crate::sim::net::connect(Some(source), target),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

/// How a fresh connection was received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Nothing arrived within the wait: the server is waiting for our first frame.
    Admitted,
    /// Refused at accept.
    Refused(RefusalSign),
    /// Bytes other than a BUSY or BLOCKED refusal arrived before we sent anything (a misconfigured or
    /// foreign server); the connection should be dropped.
    Unexpected,
    /// Reading failed for another reason.
    Failed(io::ErrorKind),
}

/// What showed that a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalSign {
    /// One ERROR BUSY frame with request id 0 (a connection cap or the accept rate).
    Busy,
    /// One ERROR BLOCKED frame with request id 0 (a blocked source, within its notices).
    Blocked,
    /// Closed without a byte (a denied source, or a blocked one past its notices).
    Silent,
    /// Reset, or the connect itself was refused or reset.
    Reset,
}

impl RefusalSign {
    /// The label a refusal is counted under.
    pub(crate) fn label(self) -> &'static str {
        match self {
            RefusalSign::Busy => "refused busy",
            RefusalSign::Blocked => "refused blocked",
            RefusalSign::Silent => "refused silently",
            RefusalSign::Reset => "refused by reset",
        }
    }
}

/// True for the errors a refusal by reset shows as.
pub(crate) fn is_reset(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Watches a fresh connection, on which nothing has been sent yet, for up to `wait`: a
/// refusal at accept arrives at once, an admitted connection stays silent.
pub async fn probe_admission(stream: &mut NetStream, wait: Duration) -> Admission {
    let deadline = Instant::now() + wait;
    let mut buf = BytesMut::with_capacity(256);
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await;
        match read {
            Err(_) if buf.is_empty() => return Admission::Admitted,
            Err(_) => return Admission::Unexpected,
            Ok(Ok(0)) if buf.is_empty() => return Admission::Refused(RefusalSign::Silent),
            Ok(Ok(0)) => return Admission::Unexpected,
            Ok(Ok(_)) => match decode_frame(&mut buf, &REPLY_LIMITS, Role::Client) {
                Ok(None) if buf.len() < 2048 => continue,
                Ok(Some(frame)) => match refusal_sign(&frame) {
                    Some(sign) => return Admission::Refused(sign),
                    None => return Admission::Unexpected,
                },
                _ => return Admission::Unexpected,
            },
            Ok(Err(e)) if is_reset(e.kind()) && buf.is_empty() => {
                return Admission::Refused(RefusalSign::Reset)
            }
            Ok(Err(e)) => return Admission::Failed(e.kind()),
        }
    }
}

/// True if a fresh connection was refused at accept ([`probe_admission`] with
/// [`PROBE_WAIT`]).
pub async fn probe_refused(stream: &mut NetStream) -> bool {
    matches!(
        probe_admission(stream, PROBE_WAIT).await,
        Admission::Refused(_)
    )
}

/// The refusal an ERROR frame with request id 0 announces at accept, if it is one.
fn refusal_sign(frame: &Frame) -> Option<RefusalSign> {
    if frame.request_id != 0 {
        return None;
    }
    match error_code(frame)? {
        ErrorCode::Busy => Some(RefusalSign::Busy),
        ErrorCode::Blocked => Some(RefusalSign::Blocked),
        _ => None,
    }
}

/// Closes a connection with a reset instead of a FIN, so the attacker keeps no TIME_WAIT
/// state (a churning attacker would otherwise run out of ports).
pub(crate) fn abort(stream: NetStream) {
    stream.abort();
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::protocol::Reply;

    #[tokio::test]
    async fn connect_from_refuses_non_loopback() {
        let target: SocketAddr = SocketAddr::from(([192, 0, 2, 1], 9));
        let err = connect_from(IpAddr::from([127, 0, 1, 1]), target)
            .await
            .err();
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::PermissionDenied));
    }

    #[tokio::test]
    async fn probe_tells_busy_silent_and_admitted_apart() -> io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            for i in 0..3 {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                match i {
                    0 => {
                        let mut out = BytesMut::new();
                        let busy = Reply::error(ErrorCode::Busy, "too many");
                        let _ = crate::protocol::encode_reply(0, &busy, &mut out);
                        let _ = s.write_all(&out).await;
                    }
                    1 => drop(s),
                    _ => held.push(s),
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        });
        let src = IpAddr::from([127, 0, 3, 1]);
        let mut a = connect_from(src, addr).await?;
        assert_eq!(
            probe_admission(&mut a, Duration::from_millis(500)).await,
            Admission::Refused(RefusalSign::Busy)
        );
        let mut b = connect_from(src, addr).await?;
        assert_eq!(
            probe_admission(&mut b, Duration::from_millis(500)).await,
            Admission::Refused(RefusalSign::Silent)
        );
        let mut c = connect_from(src, addr).await?;
        assert!(!probe_refused(&mut c).await);
        assert_eq!(c.local_addr()?.ip(), src);
        let _ = server.await;
        Ok(())
    }
}
