//! The socket under a [`Client`](super::Client), split into an inbound half that decodes
//! replies and an outbound half that writes encoded requests, each with its deadline.
//!
//! Splitting lets a pipeline write its requests while it already reads replies, so a long
//! pipeline cannot deadlock against a server that stops reading once its reply queue is full.
//! The inbound half remembers which request ids still await a reply, in order; replies to
//! requests whose caller gave up (a timeout, an error in the middle of an upload window) are
//! read and discarded later, so the stream stays in step.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::{lookup_host, ToSocketAddrs};
use tokio_util::codec::{Decoder, FramedRead};

use super::{ClientError, ClientOptions, SEGMENT_MAX_BYTES, SEGMENT_MAX_PAUSE};
use crate::protocol::{CodecError, ErrorCode, Frame, FrameCodec, Kind, Limits, Reply, Role};
use crate::sim::net::{Conn, ConnRead, ConnWrite, NetStream};

/// Resolves `addr` and connects to the first address that answers, from `opts.source` if set,
/// all within `opts.connect_timeout`.
pub(super) async fn open<A>(addr: A, opts: &ClientOptions) -> Result<Conn, ClientError>
where
    A: ToSocketAddrs + fmt::Display,
{
    let shown = addr.to_string();
    let deadline = tokio::time::Instant::now() + opts.connect_timeout;
    let attempt = async {
        let mut last = None;
        for target in lookup_host(addr).await? {
            // A source address of the other family could never reach this target.
            if opts
                .source
                .is_some_and(|ip| ip.is_ipv4() != target.is_ipv4())
            {
                continue;
            }
            match connect_one(target, opts).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "no address of a usable family",
            )
        }))
    };
    let stream = match tokio::time::timeout_at(deadline, attempt).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => {
            return Err(ClientError::Connect {
                addr: shown,
                source,
            })
        }
        Err(_) => return Err(connect_timed_out(shown, opts)),
    };
    let Some(tls) = &opts.tls else {
        return Ok(Conn::Plain(stream));
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
    let name = ServerName::try_from(tls.server_name.clone()).map_err(|e| ClientError::Connect {
        addr: shown.clone(),
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad TLS server name: {e}"),
        ),
    })?;
    match tokio::time::timeout_at(deadline, connector.connect(name, stream)).await {
        Ok(Ok(stream)) => {
            if let Some(v) = &tls.first_use {
                match v.confirm() {
                    Ok(Some(fp)) => {
                        tracing::warn!(server = %shown, fingerprint = %fp, "first connection to this server: its certificate is now trusted (trust on first use)")
                    }
                    Ok(None) => {}
                    // Like ssh: the session goes on, but the next connection will ask again.
                    Err(e) => {
                        tracing::warn!(server = %shown, "could not record the server's certificate, so it will be trusted on first use again next time: {e}")
                    }
                }
            }
            Ok(Conn::Tls(Box::new(stream)))
        }
        Ok(Err(source)) => Err(ClientError::Tls {
            addr: shown,
            source,
        }),
        Err(_) => Err(connect_timed_out(shown, opts)),
    }
}

fn connect_timed_out(addr: String, opts: &ClientOptions) -> ClientError {
    ClientError::Connect {
        addr,
        source: io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no connection within {} ms",
                opts.connect_timeout.as_millis()
            ),
        ),
    }
}

async fn connect_one(target: SocketAddr, opts: &ClientOptions) -> io::Result<NetStream> {
    crate::sim::net::connect(opts.source, target).await
}

/// Splits a connected stream into the two halves.
pub(super) fn split(stream: Conn, opts: &ClientOptions) -> (Inbound, Outbound) {
    let addrs = (stream.local_addr(), stream.peer_addr());
    let (read, write) = stream.into_split();
    let codec = ReplyCodec(FrameCodec::new(opts.limits, Role::Client));
    let inbound = Inbound {
        frames: FramedRead::new(read, codec),
        addrs,
        limits: opts.limits,
        timeout: opts.request_timeout,
        in_flight: VecDeque::new(),
        broken: false,
        skip_blocked_notice: false,
    };
    let outbound = Outbound {
        half: write,
        timeout: opts.request_timeout,
        broken: false,
        segments: opts.segmented.map(StdRng::seed_from_u64),
    };
    (inbound, outbound)
}

fn clone_addr(a: &io::Result<SocketAddr>) -> io::Result<SocketAddr> {
    match a {
        Ok(a) => Ok(*a),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    }
}

/// The client's frame decoder. It differs from [`FrameCodec`] only at end of stream: a
/// partial frame left when the server closes is just a close, not an error.
#[derive(Debug)]
struct ReplyCodec(FrameCodec);

impl Decoder for ReplyCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        self.0.decode(src)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        self.0.decode(src)
    }
}

/// Maps a socket error: the ways a peer's close shows up become [`ClientError::Closed`].
fn net_error(e: io::Error) -> ClientError {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::NotConnected => ClientError::Closed,
        _ => ClientError::Io(e),
    }
}

/// The reading half: decodes reply frames and matches them to outstanding request ids.
#[derive(Debug)]
pub(super) struct Inbound {
    frames: FramedRead<ConnRead, ReplyCodec>,
    /// The socket's local and peer addresses, as read when it connected.
    addrs: (io::Result<SocketAddr>, io::Result<SocketAddr>),
    limits: Limits,
    timeout: Duration,
    /// Ids of requests written (or being written) whose reply has not been read, oldest first.
    in_flight: VecDeque<u32>,
    /// Set once the stream can no longer be trusted (closed, out of step, broken header).
    pub(super) broken: bool,
    /// Set by a RESUME sent on a fresh connection: a blocked source's connection gets the
    /// `blocked` notice (ERROR, request id 0) before the server reads its first frame, and
    /// a client presenting a ticket reads past that one notice to the RESUME's reply.
    pub(super) skip_blocked_notice: bool,
}

impl Inbound {
    /// The local address of the socket.
    pub(super) fn local_addr(&self) -> io::Result<SocketAddr> {
        clone_addr(&self.addrs.0)
    }

    /// The server's address.
    pub(super) fn peer_addr(&self) -> io::Result<SocketAddr> {
        clone_addr(&self.addrs.1)
    }

    /// Records that a request with `id` is about to be written.
    pub(super) fn expect(&mut self, id: u32) {
        self.in_flight.push_back(id);
    }

    /// How many requests still await their reply.
    pub(super) fn outstanding(&self) -> usize {
        self.in_flight.len()
    }

    /// The next frame, within the request timeout.
    async fn next_frame(&mut self) -> Result<Frame, ClientError> {
        if self.broken {
            return Err(ClientError::Closed);
        }
        let next = match tokio::time::timeout(self.timeout, self.frames.next()).await {
            Err(_) => return Err(ClientError::Timeout),
            Ok(next) => next,
        };
        let err = match next {
            Some(Ok(frame)) => return Ok(frame),
            None => ClientError::Closed,
            // Header errors: the frame boundary is lost, nothing after can be trusted.
            Some(Err(CodecError::Decode(e))) => ClientError::Protocol(e),
            Some(Err(CodecError::Io(e))) => net_error(e),
            Some(Err(CodecError::Encode(e))) => ClientError::Encode(e),
        };
        self.broken = true;
        Err(err)
    }

    /// Reads the reply to the oldest outstanding request and returns it with its id.
    ///
    /// An ERROR with request id 0 is the server's connection-level verdict (BUSY, TIMEOUT,
    /// SHUTTING_DOWN, a fatal BAD_FRAME); it comes back as [`ClientError::Server`] and the
    /// connection is done, since the server closes after sending it.
    pub(super) async fn recv(&mut self) -> Result<(u32, Reply), ClientError> {
        let mut frame = self.next_frame().await?;
        if std::mem::take(&mut self.skip_blocked_notice)
            && frame.request_id == 0
            && frame.kind == Kind::Error
            && matches!(
                Reply::decode(&frame, &self.limits),
                Ok(Reply::Error {
                    code: ErrorCode::Blocked,
                    ..
                })
            )
        {
            frame = self.next_frame().await?;
        }
        let expected = self.in_flight.front().copied();
        if frame.request_id == 0 && frame.kind == Kind::Error {
            self.broken = true;
            return Err(match Reply::decode(&frame, &self.limits) {
                Ok(Reply::Error { code, message }) => ClientError::Server { code, message },
                Ok(other) => ClientError::UnexpectedReply {
                    expected: "ERROR",
                    got: other.kind(),
                },
                Err(e) => ClientError::Protocol(e),
            });
        }
        if expected != Some(frame.request_id) {
            self.broken = true;
            return Err(ClientError::ReplyIdMismatch {
                expected: expected.unwrap_or(0),
                got: frame.request_id,
            });
        }
        self.in_flight.pop_front();
        // A body that does not decode was still a whole frame: the stream stays in step.
        let reply = Reply::decode(&frame, &self.limits).map_err(ClientError::Protocol)?;
        Ok((frame.request_id, reply))
    }

    /// Reads replies until the one for `id`, discarding replies to earlier requests whose
    /// callers stopped waiting. ERROR replies for `id` are returned as replies.
    pub(super) async fn wait_for(&mut self, id: u32) -> Result<Reply, ClientError> {
        loop {
            let (got, reply) = self.recv().await?;
            if got == id {
                return Ok(reply);
            }
        }
    }
}

/// The writing half: writes encoded requests, each write bounded by the request timeout.
#[derive(Debug)]
pub(super) struct Outbound {
    half: ConnWrite,
    timeout: Duration,
    /// Set once a write failed or was abandoned part way: a partial frame may be on the wire.
    pub(super) broken: bool,
    /// With [`ClientOptions::segmented`]: draws the size of each piece and the pauses.
    segments: Option<StdRng>,
}

impl Outbound {
    /// Writes all of `bytes`. The deadline bounds each step of progress, not the whole
    /// buffer, so a large pipeline on a slow but live link still goes through.
    pub(super) async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        if self.broken {
            return Err(ClientError::Closed);
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let piece = match self.segments.as_mut() {
                None => rest,
                Some(rng) => {
                    // One pause in four, before a piece that is not the first.
                    if rest.len() < bytes.len() && rng.gen_ratio(1, 4) {
                        let pause = rng.gen_range(Duration::ZERO..=SEGMENT_MAX_PAUSE);
                        tokio::time::sleep(pause).await;
                    }
                    let n = rng.gen_range(1..=SEGMENT_MAX_BYTES).min(rest.len());
                    rest.get(..n).unwrap_or(rest)
                }
            };
            let step = tokio::time::timeout(self.timeout, self.half.write(piece)).await;
            let n = match step {
                Ok(Ok(0)) => Err(ClientError::Closed),
                Ok(Ok(n)) => Ok(n),
                Ok(Err(e)) => Err(net_error(e)),
                Err(_) => Err(ClientError::Timeout),
            };
            match n {
                Ok(n) => rest = rest.get(n..).unwrap_or_default(),
                Err(e) => {
                    self.broken = true;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Half-closes the connection (sends FIN), within the request timeout.
    pub(super) async fn shutdown(&mut self) -> Result<(), ClientError> {
        match tokio::time::timeout(self.timeout, self.half.shutdown()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(net_error(e)),
            Err(_) => Err(ClientError::Timeout),
        }
    }
}
