//! The simulated network, and [`NetStream`]: a connection that is either a real TCP socket
//! or a simulated one, so the server, the client library and the attackers run unchanged on
//! both. [`Conn`] is a client's connection: a [`NetStream`], plain or with TLS over it; the
//! client library and the attackers both use it.
//!
//! A simulated connection is a pair of in-memory pipes ([`tokio::io::duplex`]) of
//! [`SOCKET_BUFFER`] bytes each way, standing for the two sockets' buffers: a peer that stops
//! reading fills them, and the writer then waits, as over TCP. A connect names any source
//! address (the listener sees it as the peer), so a simulation can put thousands of hosts,
//! IPv6 among them, in front of one server. Closing or dropping one end reads as end of
//! stream at the other, and writing to a closed peer fails with `BrokenPipe`.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf, ReadHalf, WriteHalf,
};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;

/// Bytes each direction of a simulated connection holds before its writer waits: about what
/// a loopback socket pair buffers by default.
pub const SOCKET_BUFFER: usize = 256 * 1024;

/// Connections a simulated listener queues before a connect is refused, like a listen
/// backlog.
pub const BACKLOG: usize = 4096;

/// First port handed out for a listener or connection bound to port 0.
const FIRST_EPHEMERAL: u16 = 32768;

/// A simulated connection as its listener receives it.
type Incoming = (SimStream, SocketAddr);

/// One end of a simulated connection.
#[derive(Debug)]
pub struct SimStream {
    pipe: DuplexStream,
    local: SocketAddr,
    peer: SocketAddr,
    /// Bytes [`SimStream::peek`] read, served before the pipe's.
    peeked: Vec<u8>,
}

impl SimStream {
    /// This end's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The other end's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Waits for at least one byte and copies what arrived into `buf` without consuming it,
    /// like `TcpStream::peek`; 0 at end of stream.
    pub async fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.peeked.is_empty() {
            let mut first = [0u8; 1024];
            let n = self.pipe.read(&mut first).await?;
            self.peeked
                .extend_from_slice(first.get(..n).unwrap_or_default());
        }
        let n = buf.len().min(self.peeked.len());
        if let (Some(to), Some(from)) = (buf.get_mut(..n), self.peeked.get(..n)) {
            to.copy_from_slice(from);
        }
        Ok(n)
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.peeked.is_empty() {
            let n = buf.remaining().min(this.peeked.len());
            buf.put_slice(this.peeked.get(..n).unwrap_or_default());
            this.peeked.drain(..n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.pipe).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().pipe).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().pipe).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().pipe).poll_shutdown(cx)
    }
}

/// How every link of a simulated network carries bytes. The default is an ideal link: no
/// delay, and each write arrives as written.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkProfile {
    /// One-way delay of every segment.
    pub latency: Duration,
    /// Extra one-way delay, uniform from zero to this, per segment. Segments still arrive in
    /// order, as TCP delivers them.
    pub jitter: Duration,
    /// Chance that a segment is lost once: it then arrives [`RETRANSMIT`] later, as after a
    /// retransmission timeout, holding back what follows it.
    pub loss: f64,
    /// Bytes per second each way on one connection (0: unlimited).
    pub bandwidth: u64,
    /// Split each write into random pieces, each delivered on its own, as a network with a
    /// small MSS or a busy receiver shows them.
    pub segment: bool,
}

impl LinkProfile {
    fn is_ideal(&self) -> bool {
        *self == LinkProfile::default()
    }
}

/// How the network's links behave now: one profile for every link, profiles of their own
/// for the hosts of some networks, and the networks cut off by a partition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conditions {
    /// The profile of every link whose source no host rule names.
    pub default: LinkProfile,
    /// Profiles by source network: a link takes the first whose network holds its source.
    pub hosts: Vec<(ipnet::IpNet, LinkProfile)>,
    /// Source networks cut off: their bytes wait, both ways, and their connects hang, until
    /// the partition heals. Nothing is lost, as over TCP, which retransmits.
    pub partitioned: Vec<ipnet::IpNet>,
    /// Carry every new connection through a link, ideal or not, so that a partition or a
    /// profile that starts later reaches it too.
    pub always_carry: bool,
}

impl Conditions {
    /// The profile of a link from `source`.
    pub fn profile_for(&self, source: IpAddr) -> LinkProfile {
        self.hosts
            .iter()
            .find(|(net, _)| net.contains(&source))
            .map_or(self.default, |(_, p)| *p)
    }

    /// Whether `source` is cut off now.
    pub fn is_cut(&self, source: IpAddr) -> bool {
        self.partitioned.iter().any(|net| net.contains(&source))
    }

    /// Whether a new link from `source` needs no link task: ideal, and nothing can change
    /// that later.
    fn direct(&self, source: IpAddr) -> bool {
        !self.always_carry && self.profile_for(source).is_ideal() && !self.is_cut(source)
    }
}

/// How often a link, or a connect, cut off by a partition looks whether it has healed.
const PARTITION_POLL: Duration = Duration::from_millis(10);

/// How much later a lost segment arrives: TCP's minimum retransmission timeout.
pub const RETRANSMIT: Duration = Duration::from_millis(200);

/// Largest piece a link reads from its sender at once.
const LINK_CHUNK: usize = 16 * 1024;

/// Chunks a link holds in flight (read from the sender, not yet delivered): with
/// [`LINK_CHUNK`], at most 1 MiB more than the two sockets' buffers.
const LINK_IN_FLIGHT: usize = 64;

/// The network of one simulation: its listeners by address, and how its links behave.
#[derive(Debug, Default)]
pub struct SimNet {
    listeners: Mutex<HashMap<SocketAddr, mpsc::Sender<Incoming>>>,
    next_port: AtomicU16,
    /// Shared with every link, which reads it for each piece it carries.
    conditions: Arc<Mutex<Conditions>>,
    /// Seeds each link's random choices: the simulation's seed and the connection's number.
    seed: u64,
    links: AtomicU64,
}

impl SimNet {
    /// A network whose links draw their random choices from `seed`.
    pub fn seeded(seed: u64) -> SimNet {
        SimNet {
            seed,
            ..SimNet::default()
        }
    }

    /// Sets how every link behaves from now on, those already open included (host rules
    /// still win for their hosts).
    pub fn set_profile(&self, profile: LinkProfile) {
        self.change(|c| c.default = profile);
    }

    /// How links behave by default.
    pub fn profile(&self) -> LinkProfile {
        self.conditions().default
    }

    /// The network's conditions now.
    pub fn conditions(&self) -> Conditions {
        self.conditions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes the conditions; open links see the change at their next piece.
    pub fn change(&self, f: impl FnOnce(&mut Conditions)) {
        f(&mut self
            .conditions
            .lock()
            .unwrap_or_else(PoisonError::into_inner));
    }

    /// Whether `source` is cut off by a partition now.
    pub fn is_cut(&self, source: IpAddr) -> bool {
        self.conditions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_cut(source)
    }

    fn ephemeral(&self) -> u16 {
        let n = self.next_port.fetch_add(1, Ordering::Relaxed);
        FIRST_EPHEMERAL.wrapping_add(n % (u16::MAX - FIRST_EPHEMERAL))
    }

    /// Listens on `addr` (port 0: a free port). Fails with `AddrInUse` if another listener
    /// has it.
    pub fn listen(&self, addr: SocketAddr) -> io::Result<SimListener> {
        let mut listeners = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        listeners.retain(|_, tx| !tx.is_closed());
        let mut local = addr;
        if local.port() == 0 {
            loop {
                local.set_port(self.ephemeral());
                if !listeners.contains_key(&local) {
                    break;
                }
            }
        } else if listeners.contains_key(&local) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{local} is already listening in this simulation"),
            ));
        }
        let (tx, rx) = mpsc::channel(BACKLOG);
        listeners.insert(local, tx);
        Ok(SimListener { rx, local })
    }

    /// Connects from `source` (a fresh port) to `target`. Refused at once if nothing listens
    /// there or its backlog is full.
    pub fn connect(&self, source: IpAddr, target: SocketAddr) -> io::Result<SimStream> {
        let tx = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&target)
            .cloned();
        let refused = || {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("nothing accepts connections at {target} in this simulation"),
            )
        };
        let tx = tx.ok_or_else(refused)?;
        let local = SocketAddr::new(source, self.ephemeral());
        let direct = self
            .conditions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .direct(source);
        let (ours, theirs) = if direct {
            tokio::io::duplex(SOCKET_BUFFER)
        } else {
            // Each end has its own socket buffer; a link task pair carries bytes between
            // them with the profile's delays.
            let (ours, our_net) = tokio::io::duplex(SOCKET_BUFFER);
            let (theirs, their_net) = tokio::io::duplex(SOCKET_BUFFER);
            let n = self.links.fetch_add(1, Ordering::Relaxed);
            let rng = |dir: u64| StdRng::seed_from_u64(self.seed ^ n.rotate_left(17) ^ dir);
            let (our_rx, our_tx) = tokio::io::split(our_net);
            let (their_rx, their_tx) = tokio::io::split(their_net);
            let link = |dir: u64| Link {
                conditions: Arc::clone(&self.conditions),
                source,
                rng: rng(dir),
            };
            tokio::spawn(carry(our_rx, their_tx, link(0)));
            tokio::spawn(carry(their_rx, our_tx, link(1 << 63)));
            (ours, theirs)
        };
        let server_end = SimStream {
            pipe: theirs,
            local: target,
            peer: local,
            peeked: Vec::new(),
        };
        tx.try_send((server_end, local)).map_err(|_| refused())?;
        Ok(SimStream {
            pipe: ours,
            local,
            peer: target,
            peeked: Vec::new(),
        })
    }
}

/// One direction of a link: the network's conditions, the host it serves, and its own
/// random choices.
struct Link {
    conditions: Arc<Mutex<Conditions>>,
    source: IpAddr,
    rng: StdRng,
}

impl Link {
    /// The profile to carry the next piece with, once the link's host is not cut off (it
    /// waits, holding what it read, while it is).
    async fn profile(&self) -> LinkProfile {
        loop {
            let (profile, cut) = {
                let c = self
                    .conditions
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                (c.profile_for(self.source), c.is_cut(self.source))
            };
            if !cut {
                return profile;
            }
            tokio::time::sleep(PARTITION_POLL).await;
        }
    }
}

/// Carries one direction of a link: reads what the sender's socket buffer holds, and
/// delivers it to the receiver's after the profile's delays, in order. While its host is
/// cut off it holds what it read. Ends when either side is gone, closing the receiver's
/// side for writing.
async fn carry(mut from: ReadHalf<DuplexStream>, mut to: WriteHalf<DuplexStream>, link: Link) {
    let mut link = link;
    let (tx, mut rx) = mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(LINK_IN_FLIGHT);
    let read = async move {
        let mut buf = vec![0u8; LINK_CHUNK];
        // When the link is free to send the next byte, and when the last segment arrives.
        let mut free = tokio::time::Instant::now();
        let mut last = free;
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let profile = link.profile().await;
            let rng = &mut link.rng;
            let mut rest = buf.get(..n).unwrap_or_default();
            while !rest.is_empty() {
                let take = if profile.segment {
                    rng.gen_range(1..=rest.len())
                } else {
                    rest.len()
                };
                let (piece, tail) = rest.split_at(take);
                rest = tail;
                let now = tokio::time::Instant::now();
                free = free.max(now);
                if profile.bandwidth > 0 {
                    free += Duration::from_secs_f64(piece.len() as f64 / profile.bandwidth as f64);
                }
                let mut at = free + profile.latency;
                if !profile.jitter.is_zero() {
                    at += profile.jitter.mul_f64(rng.gen::<f64>());
                }
                if profile.loss > 0.0 && rng.gen_bool(profile.loss.min(1.0)) {
                    at += RETRANSMIT;
                }
                at = at.max(last);
                last = at;
                if tx.send((at, piece.to_vec())).await.is_err() {
                    return;
                }
            }
        }
    };
    let write = async move {
        while let Some((at, piece)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&piece).await.is_err() {
                return;
            }
            // Let the receiver read this piece before the next lands on it, so split
            // pieces due at the same instant still arrive as separate reads.
            tokio::task::yield_now().await;
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// A simulated listening socket.
#[derive(Debug)]
pub struct SimListener {
    rx: mpsc::Receiver<Incoming>,
    local: SocketAddr,
}

impl SimListener {
    /// Waits for the next connection.
    pub async fn accept(&mut self) -> io::Result<Incoming> {
        self.rx
            .recv()
            .await
            .ok_or_else(|| io::Error::other("the simulated network is gone"))
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// Connects from `source` (or an unspecified address of `target`'s family) to `target`:
/// over the simulated network in a simulation, over TCP otherwise. Without a source the
/// simulated connection comes from 127.0.0.1 (or ::1).
pub async fn connect(source: Option<IpAddr>, target: SocketAddr) -> io::Result<NetStream> {
    if let Some(ctx) = super::current() {
        let source = source.unwrap_or(match target {
            SocketAddr::V4(_) => IpAddr::from([127, 0, 0, 1]),
            SocketAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        });
        // A host cut off by a partition gets no answer until it heals: its connect hangs
        // (the caller's own timeout applies), as a SYN into a black hole does.
        while ctx.net().is_cut(source) {
            tokio::time::sleep(PARTITION_POLL).await;
        }
        return ctx.net().connect(source, target).map(NetStream::Sim);
    }
    let socket = if target.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        // Attackers open and close connections fast; let a port in TIME_WAIT be reused.
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::new(ip, 0)).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot bind source address {ip}: {e}"))
        })?;
    }
    let stream = socket.connect(target).await?;
    // Requests are small and latency matters more than packet count.
    stream.set_nodelay(true)?;
    Ok(NetStream::Tcp(stream))
}

/// A listening socket: TCP, or simulated in a simulation.
#[derive(Debug)]
pub enum NetListener {
    /// A TCP listener.
    Tcp(tokio::net::TcpListener),
    /// A simulated listener.
    Sim(SimListener),
}

impl NetListener {
    /// Binds `addr`: on the simulated network in a simulation, over TCP otherwise.
    pub async fn bind(addr: SocketAddr) -> io::Result<NetListener> {
        match super::current() {
            Some(ctx) => ctx.net().listen(addr).map(NetListener::Sim),
            None => tokio::net::TcpListener::bind(addr)
                .await
                .map(NetListener::Tcp),
        }
    }

    /// Waits for the next connection and its peer's address.
    pub async fn accept(&mut self) -> io::Result<(NetStream, SocketAddr)> {
        match self {
            NetListener::Tcp(l) => l.accept().await.map(|(s, a)| (NetStream::Tcp(s), a)),
            NetListener::Sim(l) => l.accept().await.map(|(s, a)| (NetStream::Sim(s), a)),
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            NetListener::Tcp(l) => l.local_addr(),
            NetListener::Sim(l) => Ok(l.local_addr()),
        }
    }
}

/// A connection: a TCP socket, or one end of a simulated connection.
#[derive(Debug)]
pub enum NetStream {
    /// A TCP socket.
    Tcp(TcpStream),
    /// A simulated connection.
    Sim(SimStream),
}

/// The reading half of a [`NetStream`].
#[derive(Debug)]
pub enum NetRead {
    /// TCP's lock-free owned half.
    Tcp(OwnedReadHalf),
    /// A simulated connection's half.
    Sim(ReadHalf<SimStream>),
}

/// The writing half of a [`NetStream`].
#[derive(Debug)]
pub enum NetWrite {
    /// TCP's lock-free owned half.
    Tcp(OwnedWriteHalf),
    /// A simulated connection's half.
    Sim(WriteHalf<SimStream>),
}

/// A waker that does nothing, for one non-blocking attempt.
struct NoWake;

impl Wake for NoWake {
    fn wake(self: Arc<Self>) {}
}

impl NetStream {
    /// Splits the stream so one task can read while another writes.
    pub fn into_split(self) -> (NetRead, NetWrite) {
        match self {
            NetStream::Tcp(s) => {
                let (r, w) = s.into_split();
                (NetRead::Tcp(r), NetWrite::Tcp(w))
            }
            NetStream::Sim(s) => {
                let (r, w) = tokio::io::split(s);
                (NetRead::Sim(r), NetWrite::Sim(w))
            }
        }
    }

    /// Turns off Nagle's algorithm (nothing to do on a simulated connection).
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match self {
            NetStream::Tcp(s) => s.set_nodelay(on),
            NetStream::Sim(_) => Ok(()),
        }
    }

    /// Waits for at least one byte and copies what arrived into `buf` without consuming it;
    /// 0 at end of stream.
    pub async fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            NetStream::Tcp(s) => s.peek(buf).await,
            NetStream::Sim(s) => s.peek(buf).await,
        }
    }

    /// Writes what fits without waiting; `WouldBlock` if nothing does.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            NetStream::Tcp(s) => s.try_write(buf),
            NetStream::Sim(s) => {
                let waker = Waker::from(Arc::new(NoWake));
                let mut cx = Context::from_waker(&waker);
                match Pin::new(s).poll_write(&mut cx, buf) {
                    Poll::Ready(r) => r,
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }

    /// Closes at once: over TCP with a reset instead of a FIN (no TIME_WAIT is kept); a
    /// simulated connection is simply dropped.
    pub fn abort(self) {
        match self {
            NetStream::Tcp(s) => {
                let _ = s.set_zero_linger();
                drop(s);
            }
            NetStream::Sim(s) => drop(s),
        }
    }

    /// This end's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            NetStream::Tcp(s) => s.local_addr(),
            NetStream::Sim(s) => Ok(s.local_addr()),
        }
    }

    /// The other end's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            NetStream::Tcp(s) => s.peer_addr(),
            NetStream::Sim(s) => Ok(s.peer_addr()),
        }
    }
}

/// A client's connection: a [`NetStream`], plain or with TLS over it.
///
/// Whether a TLS connection checked the server's certificate depends on the connector that
/// made it: the client library checks it, attackers do not.
#[derive(Debug)]
pub enum Conn {
    /// No TLS.
    Plain(NetStream),
    /// TLS over the stream.
    Tls(Box<TlsStream<NetStream>>),
}

/// The reading half of a [`Conn`].
#[derive(Debug)]
pub enum ConnRead {
    /// A plain connection's half.
    Plain(NetRead),
    /// A TLS connection's half.
    Tls(ReadHalf<TlsStream<NetStream>>),
}

/// The writing half of a [`Conn`].
#[derive(Debug)]
pub enum ConnWrite {
    /// A plain connection's half.
    Plain(NetWrite),
    /// A TLS connection's half.
    Tls(WriteHalf<TlsStream<NetStream>>),
}

impl Conn {
    /// The stream under any TLS.
    fn stream(&self) -> &NetStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        }
    }

    /// Splits the connection so one task can read while another writes. A plain connection
    /// keeps [`NetStream::into_split`]'s halves (lock-free over TCP).
    pub fn into_split(self) -> (ConnRead, ConnWrite) {
        match self {
            Conn::Plain(s) => {
                let (r, w) = s.into_split();
                (ConnRead::Plain(r), ConnWrite::Plain(w))
            }
            Conn::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ConnRead::Tls(r), ConnWrite::Tls(w))
            }
        }
    }

    /// Closes at once, as [`NetStream::abort`] does (under TLS, without a close_notify).
    pub fn abort(self) {
        match self {
            Conn::Plain(s) => s.abort(),
            Conn::Tls(s) => s.into_inner().0.abort(),
        }
    }

    /// This end's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream().local_addr()
    }

    /// The other end's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream().peer_addr()
    }
}

/// Forwards an `AsyncRead`/`AsyncWrite` call to whichever of the two variants `$a` and `$b`
/// is present.
macro_rules! either {
    ($target:expr, $a:ident | $b:ident, $inner:ident => $call:expr) => {
        match $target {
            Self::$a($inner) => $call,
            Self::$b($inner) => $call,
        }
    };
}

/// `AsyncRead` for an enum of two readers, by forwarding.
macro_rules! impl_read {
    ($t:ty, $a:ident | $b:ident) => {
        impl AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                either!(self.get_mut(), $a | $b, s => Pin::new(s).poll_read(cx, buf))
            }
        }
    };
}

/// `AsyncWrite` for an enum of two writers, by forwarding.
macro_rules! impl_write {
    ($t:ty, $a:ident | $b:ident) => {
        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                either!(self.get_mut(), $a | $b, s => Pin::new(s).poll_write(cx, buf))
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                either!(self.get_mut(), $a | $b, s => Pin::new(s).poll_write_vectored(cx, bufs))
            }

            fn is_write_vectored(&self) -> bool {
                either!(self, $a | $b, s => s.is_write_vectored())
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                either!(self.get_mut(), $a | $b, s => Pin::new(s).poll_flush(cx))
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                either!(self.get_mut(), $a | $b, s => Pin::new(s).poll_shutdown(cx))
            }
        }
    };
}

impl_read!(NetStream, Tcp | Sim);
impl_read!(NetRead, Tcp | Sim);
impl_write!(NetStream, Tcp | Sim);
impl_write!(NetWrite, Tcp | Sim);
impl_read!(Conn, Plain | Tls);
impl_read!(ConnRead, Plain | Tls);
impl_write!(Conn, Plain | Tls);
impl_write!(ConnWrite, Plain | Tls);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{run, SimOptions};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_simulated_connection_carries_bytes_and_the_chosen_source() -> io::Result<()> {
        run(SimOptions::default(), || async {
            let mut listener = NetListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
            let addr = listener.local_addr()?;
            let source = IpAddr::from([10, 9, 8, 7]);
            let mut client = connect(Some(source), addr).await?;
            let (mut server, peer) = listener.accept().await?;
            assert_eq!(peer.ip(), source);
            assert_eq!(server.peer_addr()?, client.local_addr()?);
            client.write_all(b"ping").await?;
            let mut got = [0u8; 4];
            server.read_exact(&mut got).await?;
            assert_eq!(&got, b"ping");
            drop(server);
            // The peer is gone: end of stream, then a failed write.
            assert_eq!(client.read(&mut got).await?, 0);
            assert!(client.write_all(b"x").await.is_err());
            Ok(())
        })?
    }

    #[test]
    fn nothing_listening_is_a_refusal() -> io::Result<()> {
        run(SimOptions::default(), || async {
            let target = SocketAddr::from(([127, 0, 0, 1], 9));
            let err = connect(None, target).await.err().map(|e| e.kind());
            assert_eq!(err, Some(io::ErrorKind::ConnectionRefused));
            Ok(())
        })?
    }

    #[test]
    fn a_reader_that_stops_fills_the_buffer_and_try_write_says_so() -> io::Result<()> {
        run(SimOptions::default(), || async {
            let mut listener = NetListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
            let addr = listener.local_addr()?;
            let _client = connect(None, addr).await?;
            let (mut server, _) = listener.accept().await?;
            let chunk = vec![0u8; 64 * 1024];
            let mut sent = 0;
            loop {
                match server.try_write(&chunk) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            assert_eq!(sent, SOCKET_BUFFER);
            Ok(())
        })?
    }

    /// A shaped link: `(client, server)` connected through it.
    async fn shaped(profile: LinkProfile) -> io::Result<(NetStream, NetStream)> {
        let ctx = crate::sim::current().ok_or_else(|| io::Error::other("no simulation"))?;
        ctx.net().set_profile(profile);
        let mut listener = NetListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let client = connect(None, listener.local_addr()?).await?;
        let (server, _) = listener.accept().await?;
        Ok((client, server))
    }

    #[test]
    fn latency_delays_every_byte_and_keeps_their_order() -> io::Result<()> {
        run(SimOptions::default(), || async {
            let profile = LinkProfile {
                latency: Duration::from_millis(40),
                jitter: Duration::from_millis(20),
                ..LinkProfile::default()
            };
            let (mut client, mut server) = shaped(profile).await?;
            let sent = tokio::time::Instant::now();
            let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            client.write_all(&data).await?;
            let mut got = vec![0u8; data.len()];
            server.read_exact(&mut got).await?;
            let took = sent.elapsed();
            assert_eq!(got, data);
            assert!(took >= Duration::from_millis(40), "{took:?}");
            assert!(took <= Duration::from_millis(61), "{took:?}");
            Ok(())
        })?
    }

    /// Virtual time one 3-byte round trip from `source` takes.
    async fn round_trip(listener: &mut NetListener, source: [u8; 4]) -> io::Result<Duration> {
        let mut client = connect(Some(IpAddr::from(source)), listener.local_addr()?).await?;
        let (mut server, _) = listener.accept().await?;
        let sent = tokio::time::Instant::now();
        client.write_all(b"abc").await?;
        let mut got = [0u8; 3];
        server.read_exact(&mut got).await?;
        server.write_all(&got).await?;
        client.read_exact(&mut got).await?;
        assert_eq!(&got, b"abc");
        Ok(sent.elapsed())
    }

    #[test]
    fn a_host_rule_gives_its_hosts_their_own_link() -> io::Result<()> {
        run(SimOptions::default(), || async {
            let ctx = crate::sim::current().ok_or_else(|| io::Error::other("no simulation"))?;
            let slow = LinkProfile {
                latency: Duration::from_millis(100),
                ..LinkProfile::default()
            };
            let net: ipnet::IpNet = "127.0.3.0/28"
                .parse()
                .map_err(|_| io::Error::other("bad network"))?;
            ctx.net().change(|c| c.hosts.push((net, slow)));
            let mut listener = NetListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
            let inside = round_trip(&mut listener, [127, 0, 3, 5]).await?;
            let outside = round_trip(&mut listener, [127, 0, 4, 5]).await?;
            assert_eq!(inside, Duration::from_millis(200));
            assert_eq!(outside, Duration::ZERO);
            Ok(())
        })?
    }

    #[test]
    fn a_partition_holds_bytes_and_connects_until_it_heals() -> io::Result<()> {
        run(SimOptions::default(), || async {
            let ctx = crate::sim::current().ok_or_else(|| io::Error::other("no simulation"))?;
            let net: ipnet::IpNet = "127.0.2.0/28"
                .parse()
                .map_err(|_| io::Error::other("bad network"))?;
            ctx.net().change(|c| c.always_carry = true);
            let mut listener = NetListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
            let target = listener.local_addr()?;
            let source = IpAddr::from([127, 0, 2, 3]);
            let mut open = connect(Some(source), target).await?;
            let (mut server, _) = listener.accept().await?;
            ctx.net().change(|c| c.partitioned.push(net));
            let heal = {
                let ctx = Arc::clone(&ctx);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    ctx.net().change(|c| c.partitioned.clear());
                })
            };
            let start = tokio::time::Instant::now();
            open.write_all(b"held").await?;
            let mut got = [0u8; 4];
            server.read_exact(&mut got).await?;
            assert_eq!(&got, b"held");
            assert_eq!(
                start.elapsed(),
                Duration::from_secs(3),
                "bytes waited for the heal"
            );
            // A connect during a partition waits for the heal too; afterwards it is at once.
            ctx.net().change(|c| c.partitioned.push(net));
            let again = tokio::time::Instant::now();
            let waiting = tokio::spawn(connect(Some(source), target));
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert!(!waiting.is_finished(), "a connect got through a partition");
            ctx.net().change(|c| c.partitioned.clear());
            let _late = waiting.await.map_err(io::Error::other)??;
            assert!(again.elapsed() < Duration::from_millis(2100));
            let _ = heal.await;
            Ok(())
        })?
    }

    #[test]
    fn segmentation_splits_one_write_into_many_reads() -> io::Result<()> {
        run(SimOptions::default(), || async {
            let profile = LinkProfile {
                latency: Duration::from_millis(1),
                segment: true,
                ..LinkProfile::default()
            };
            let (mut client, mut server) = shaped(profile).await?;
            client.write_all(&[7u8; 4096]).await?;
            client.shutdown().await?;
            let mut reads = 0;
            let mut total = 0;
            let mut buf = [0u8; 8192];
            loop {
                let n = server.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                reads += 1;
                total += n;
            }
            assert_eq!(total, 4096);
            assert!(reads > 1, "one write arrived in {reads} read");
            Ok(())
        })?
    }

    #[test]
    fn bandwidth_and_loss_cost_time() -> io::Result<()> {
        run(SimOptions::default(), || async {
            // 100 KB at 1 MB/s: 100 ms on the wire.
            let (mut client, mut server) = shaped(LinkProfile {
                bandwidth: 1_000_000,
                ..LinkProfile::default()
            })
            .await?;
            let sent = tokio::time::Instant::now();
            client.write_all(&[1u8; 100_000]).await?;
            let mut got = vec![0u8; 100_000];
            server.read_exact(&mut got).await?;
            let took = sent.elapsed();
            assert!((99..=102).contains(&took.as_millis()), "{took:?}");
            // Every segment lost once: each arrives a retransmission timeout late.
            let (mut client, mut server) = shaped(LinkProfile {
                loss: 1.0,
                ..LinkProfile::default()
            })
            .await?;
            let sent = tokio::time::Instant::now();
            client.write_all(b"x").await?;
            server.read_exact(&mut [0u8; 1]).await?;
            assert_eq!(sent.elapsed(), RETRANSMIT);
            Ok(())
        })?
    }
}
