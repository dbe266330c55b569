//! The server's side of TLS: each admitted connection's handshake, after admission and
//! before the session, within the handshake caps and time budget of [`crate::tls`].
//!
//! A connection on a TLS port whose first byte is not a TLS handshake record is refused at
//! that byte, before any cryptography; one that starts like rampart's plaintext frames (a
//! client that forgot `--tls`) is first told so in a plaintext ERROR it can read. A handshake
//! that outlives its budget is a slowloris of the handshake and is scored as a slow frame;
//! bytes that are not TLS at all as a broken frame header. A client that forgot `--tls`, or
//! a TLS client with nothing in common with the server, draws no signal: both are honest
//! mistakes, and each costs the server one peeked byte or one failed handshake.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::sim::net::NetStream;
use tokio::io::AsyncWriteExt;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::metrics::Metrics;
use super::session::CloseReason;
use super::Shared;
use crate::activity::EventKind;
use crate::config::TlsConfig;
use crate::firewall::Signal;
use crate::guard::SourceKey;
use crate::protocol::{self, ErrorCode, Reply};
use crate::tls::{HandshakeCap, HandshakeGuard, MinVersion, Sniffed, TlsError};

/// The acceptor and the handshakes in progress.
pub(crate) struct TlsState {
    acceptor: TlsAcceptor,
    handshakes: Arc<HandshakeGuard>,
}

/// Why a handshake did not produce a TLS session.
#[derive(Debug)]
pub(crate) enum HandshakeFailure {
    /// A cap on concurrent handshakes was full.
    Capped(HandshakeCap),
    /// The first bytes were rampart's plaintext frames.
    Plaintext,
    /// The first bytes were not TLS.
    NotTls,
    /// The handshake outlived its budget.
    Timeout,
    /// The peer closed before sending anything.
    Closed,
    /// The handshake failed (bad records, no shared version or cipher).
    Failed(std::io::Error),
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeFailure::Capped(cap) => write!(f, "handshake cap full ({})", cap.reason()),
            HandshakeFailure::Plaintext => f.write_str("plaintext rampart frames on the TLS port"),
            HandshakeFailure::NotTls => f.write_str("first bytes are not TLS"),
            HandshakeFailure::Timeout => f.write_str("handshake outlived its time budget"),
            HandshakeFailure::Closed => f.write_str("closed before the handshake"),
            HandshakeFailure::Failed(e) => write!(f, "handshake failed: {e}"),
        }
    }
}

impl HandshakeFailure {
    /// The close reason recorded for it.
    fn close_reason(&self) -> CloseReason {
        match self {
            HandshakeFailure::Timeout => CloseReason::SlowFrame,
            HandshakeFailure::Closed | HandshakeFailure::Capped(_) => CloseReason::Eof,
            HandshakeFailure::Plaintext
            | HandshakeFailure::NotTls
            | HandshakeFailure::Failed(_) => CloseReason::BadFrame,
        }
    }

    /// The firewall signal it draws, if any. A slow handshake is a slowloris and bytes that
    /// are not TLS at all are a broken frame, as they would be on a plaintext port. The rest
    /// are what honest clients do: one of rampart's own that forgot `--tls` (it is told
    /// why), a TLS client with no version or cipher in common, a peer that closes at once,
    /// and a cap that is the server's own limit.
    fn signal(&self) -> Option<Signal> {
        match self {
            HandshakeFailure::Timeout => Some(Signal::SlowFrame),
            HandshakeFailure::NotTls => Some(Signal::FatalFrame),
            HandshakeFailure::Plaintext
            | HandshakeFailure::Failed(_)
            | HandshakeFailure::Closed
            | HandshakeFailure::Capped(_) => None,
        }
    }
}

impl TlsState {
    /// The state for `config`, or `None` when TLS is off.
    pub(crate) fn from_config(config: &TlsConfig) -> Result<Option<Arc<TlsState>>, TlsError> {
        let (Some(cert), Some(key)) = (&config.cert, &config.key) else {
            return Ok(None);
        };
        let min = MinVersion::parse(&config.min_version)?;
        let server_config = crate::tls::server_config(cert, key, min)?;
        Ok(Some(Arc::new(TlsState {
            acceptor: TlsAcceptor::from(server_config),
            handshakes: Arc::new(HandshakeGuard::new(config.handshake_limits())),
        })))
    }

    /// Runs the handshake of an admitted connection from `source` (the guard's source of
    /// its peer), within the caps and the time budget. On failure the connection is told
    /// why when it spoke plaintext rampart, and dropped.
    pub(crate) async fn handshake(
        &self,
        mut stream: NetStream,
        source: SourceKey,
    ) -> Result<TlsStream<NetStream>, HandshakeFailure> {
        let limits = self.handshakes.limits();
        // Past a cap, wait for a place (honest users behind one address reconnecting at
        // once), within the same budget a handshake gets; refused only if none comes free.
        // The per-source cap counts by the guard's source, so an IPv6 host rotating through
        // its /64 shares one cap, as it shares every other limit.
        let _permit = self
            .handshakes
            .acquire(source.net().network(), limits.timeout)
            .await
            .map_err(HandshakeFailure::Capped)?;
        let run = async {
            let mut first = [0u8; 3];
            let n = stream
                .peek(&mut first)
                .await
                .map_err(HandshakeFailure::Failed)?;
            match crate::tls::sniff(first.get(..n).unwrap_or_default()) {
                Sniffed::Tls => {}
                Sniffed::NeedMore => return Err(HandshakeFailure::Closed),
                Sniffed::PlaintextRampart => {
                    tell_plaintext(stream).await;
                    return Err(HandshakeFailure::Plaintext);
                }
                Sniffed::Other => return Err(HandshakeFailure::NotTls),
            }
            self.acceptor
                .accept(stream)
                .await
                .map_err(HandshakeFailure::Failed)
        };
        match tokio::time::timeout(limits.timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(HandshakeFailure::Timeout),
        }
    }
}

/// Tells a plaintext rampart client on the TLS port what to do, in a reply it can decode.
async fn tell_plaintext(mut stream: NetStream) {
    let reply = Reply::error(
        ErrorCode::BadFrame,
        "this port speaks TLS: connect with TLS (rampart client --tls)".to_string(),
    );
    let mut buf = bytes::BytesMut::new();
    if protocol::encode_reply(0, &reply, &mut buf).is_ok() {
        let _ = stream.try_write(&buf);
        let _ = stream.shutdown().await;
    }
}

/// Accounts for a failed handshake of connection `conn`: counters, the activity events a
/// connection that opened and closed leaves, and the firewall signal.
pub(crate) fn failed(shared: &Shared, conn: u64, peer: SocketAddr, failure: &HandshakeFailure) {
    let m = &shared.metrics;
    Metrics::bump(match failure {
        HandshakeFailure::Capped(_) => &m.tls_handshakes_capped,
        HandshakeFailure::Timeout => &m.tls_handshake_timeouts,
        HandshakeFailure::Plaintext | HandshakeFailure::NotTls => &m.tls_not_tls,
        HandshakeFailure::Closed | HandshakeFailure::Failed(_) => &m.tls_handshake_failures,
    });
    let reason = failure.close_reason();
    m.closed(reason);
    shared.record(conn, peer, EventKind::Accept);
    shared.record(
        conn,
        peer,
        EventKind::Close {
            reason: reason.as_str(),
            unread_bytes: 0,
        },
    );
    if let Some(signal) = failure.signal() {
        shared.signal(peer, conn, signal);
    }
    tracing::debug!(peer = %peer, %failure, "TLS connection closed before its session");
}
