//! What every attacker shares: connecting from a source address, telling a refusal at accept
//! from an admitted connection, reading replies while scanning them for the canary, and the
//! per-run bookkeeping (`Env`).
//!
//! A refusal at accept is one of: the connect itself refused or reset; the server closing
//! the connection before we sent anything without sending a byte (a blocked or denied
//! source past its share of notices); or exactly one ERROR BUSY or BLOCKED frame with
//! request id 0 (a connection cap or the accept rate; a blocked source). A fatal ERROR BAD_FRAME after our garbage is not a refusal: attackers probe for
//! refusal right after connecting, before they misbehave.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Attack, AttackContext, AttackKind, AttackReport, Canary, Observations};
use crate::protocol::limits::HARD_MAX_FRAME;
use crate::protocol::{
    decode_frame, encode_frame, encode_request, ErrorCode, Frame, Kind, Limits, Password, Reply,
    Request, Role,
};

/// How long a fresh connection is watched for a refusal before the attacker misbehaves. A
/// refusal is written by the accept loop at once, so on loopback it arrives within a
/// millisecond or two; 50 ms leaves room for a busy server.
pub const PROBE_WAIT: Duration = Duration::from_millis(50);

/// Longest wait for the TCP handshake. A full accept backlog drops SYNs; the attacker then
/// moves on rather than wait for the kernel's retries.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Back-off range after a refusal, so a refused slot retries a few times a second.
const REFUSED_BACKOFF_MS: (u64, u64) = (200, 500);

/// Connections shorter than this are followed by a short pause, so a server that cuts at
/// once cannot make a slot spin.
const MIN_CONN_LIFE: Duration = Duration::from_millis(100);

/// Most notes one report carries.
const MAX_NOTES: usize = 48;

/// Decoding limits for replies: as generous as the protocol allows, because an attacker does
/// not know the server's configuration. The receive buffer still grows only as bytes arrive.
pub(crate) const REPLY_LIMITS: Limits = Limits {
    max_frame_bytes: HARD_MAX_FRAME,
    max_text_bytes: HARD_MAX_FRAME,
    max_mail_body_bytes: HARD_MAX_FRAME,
    max_chunk_bytes: HARD_MAX_FRAME,
    max_attachments: u16::MAX,
    max_inbox_page: u16::MAX,
};

/// Connects to `target` from `source` (bound with port 0). Refuses any target that is not a
/// loopback address, and gives up after [`CONNECT_TIMEOUT`].
pub async fn connect_from(source: Ipv4Addr, target: SocketAddr) -> io::Result<TcpStream> {
    if !target.ip().is_loopback() || !target.is_ipv4() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("attackers only connect to IPv4 loopback addresses, not {target}"),
        ));
    }
    let socket = TcpSocket::new_v4()?;
    // Attackers open and close connections fast; let a port still in TIME_WAIT be reused.
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(target))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
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
    fn label(self) -> &'static str {
        match self {
            RefusalSign::Busy => "refused busy",
            RefusalSign::Blocked => "refused blocked",
            RefusalSign::Silent => "refused silently",
            RefusalSign::Reset => "refused by reset",
        }
    }
}

fn is_reset(kind: io::ErrorKind) -> bool {
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
pub async fn probe_admission(stream: &mut TcpStream, wait: Duration) -> Admission {
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
pub async fn probe_refused(stream: &mut TcpStream) -> bool {
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

/// The error code of an ERROR frame.
pub(crate) fn error_code(frame: &Frame) -> Option<ErrorCode> {
    match Reply::decode(frame, &REPLY_LIMITS) {
        Ok(Reply::Error { code, .. }) => Some(code),
        _ => None,
    }
}

/// A label for a reply: its error code's name for an ERROR, else its kind's wire name.
pub(crate) fn reply_label(frame: &Frame) -> &'static str {
    if frame.kind == Kind::Error {
        error_code(frame).map_or("ERROR(undecodable)", ErrorCode::name)
    } else {
        frame.kind.wire_name()
    }
}

/// True if `needle` occurs in `hay` (an empty needle never does).
pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return false;
    };
    let mut from = 0;
    while let Some(pos) = hay
        .get(from..)
        .and_then(|h| h.iter().position(|&b| b == first))
    {
        let at = from + pos;
        if hay.get(at + 1..at + 1 + rest.len()) == Some(rest) {
            return true;
        }
        from = at + 1;
    }
    false
}

/// Encodes one request. A request whose field is too long for its length prefix encodes to
/// nothing (the attackers' own requests never are).
pub(crate) fn request_bytes(id: u32, req: &Request) -> Bytes {
    let mut out = BytesMut::new();
    encode_into(id, req, &mut out);
    out.freeze()
}

/// Appends one encoded request to `out` (nothing if it cannot be encoded).
pub(crate) fn encode_into(id: u32, req: &Request, out: &mut BytesMut) {
    // encode_request restores `out` on failure.
    let _ = encode_request(id, req, out);
}

/// Encodes a raw frame with any kind, flags and payload.
pub(crate) fn raw_frame(kind: Kind, id: u32, flags: u16, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    let frame = Frame {
        kind,
        request_id: id,
        flags,
        payload: Bytes::copy_from_slice(payload),
    };
    if encode_frame(&frame, &mut out).is_err() {
        out.clear();
    }
    out.freeze()
}

/// Request ids from 1, never 0 (the server uses 0 for connection-level errors).
#[derive(Debug, Clone)]
pub(crate) struct Ids(u32);

impl Ids {
    pub(crate) fn new() -> Ids {
        Ids(1)
    }

    pub(crate) fn next(&mut self) -> u32 {
        let id = self.0;
        self.0 = match self.0.wrapping_add(1) {
            0 => 1,
            n => n,
        };
        id
    }
}

/// Counts by label, merged into the run's totals when a connection ends.
pub(crate) type Counts = BTreeMap<&'static str, u64>;

pub(crate) fn bump(counts: &mut Counts, label: &'static str) {
    *counts.entry(label).or_insert(0) += 1;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
    source: Ipv4Addr,
}

impl Inbox {
    pub(crate) fn new(source: Ipv4Addr) -> Inbox {
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
                    scan(&mut self.tail, self.source, fresh, env);
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

/// Scans freshly received bytes for the canary, keeping the last bytes in `tail` so a
/// needle split across reads is found too.
fn scan(tail: &mut Vec<u8>, source: Ipv4Addr, fresh: &[u8], env: &Env) {
    let keep = env.canary.longest().saturating_sub(1);
    if env.canary.leaked_in(fresh) {
        env.leak(format!(
            "canary bytes reached the attacker on a connection from {}",
            source
        ));
    } else if !tail.is_empty() {
        let mut joint = tail.clone();
        joint.extend_from_slice(fresh.get(..keep.min(fresh.len())).unwrap_or(&[]));
        if env.canary.leaked_in(&joint) {
            env.leak(format!(
                "canary bytes reached the attacker, split across reads, on a connection from {}",
                source
            ));
        }
    }
    if keep == 0 {
        return;
    }
    if fresh.len() >= keep {
        tail.clear();
        tail.extend_from_slice(fresh.get(fresh.len() - keep..).unwrap_or(&[]));
    } else {
        tail.extend_from_slice(fresh);
        let excess = tail.len().saturating_sub(keep);
        tail.drain(..excess);
    }
}

/// The run-wide state every attacker task shares.
pub(crate) struct Env {
    pub(crate) kind: AttackKind,
    pub(crate) target: SocketAddr,
    pub(crate) t0: Instant,
    pub(crate) stop_at: Instant,
    pub(crate) seed: u64,
    /// Cancelled at the stop time or when the runner cancels.
    pub(crate) halt: CancellationToken,
    pub(crate) account: (String, String),
    pub(crate) canary: Canary,
    pub(crate) obs: Arc<Observations>,
    pub(crate) sources: Vec<Ipv4Addr>,
    /// Connection slots (the `connections` key).
    pub(crate) slots: usize,
    next_source: AtomicUsize,
    /// Every source tried, with the time of its last connection attempt.
    used: Mutex<BTreeMap<Ipv4Addr, Instant>>,
    counts: Mutex<Counts>,
    notes: Mutex<Vec<String>>,
    /// Paces logins with the attack account.
    pub(crate) logins: LoginPacer,
}

impl Env {
    pub(crate) fn new(attack: &Attack, ctx: &AttackContext) -> Env {
        Env {
            kind: attack.kind(),
            target: ctx.target,
            t0: ctx.t0,
            stop_at: ctx.t0 + attack.stop(),
            seed: ctx.seed,
            halt: ctx.stop.child_token(),
            account: ctx.account.clone(),
            canary: ctx.canary.clone(),
            obs: Arc::clone(&ctx.observations),
            sources: attack.sources().to_vec(),
            slots: attack.connections() as usize,
            next_source: AtomicUsize::new(0),
            used: Mutex::new(BTreeMap::new()),
            counts: Mutex::new(Counts::new()),
            notes: Mutex::new(Vec::new()),
            logins: LoginPacer::new(),
        }
    }

    /// True while the attack window is open.
    pub(crate) fn live(&self) -> bool {
        !self.halt.is_cancelled()
    }

    /// The next source, round-robin over the whole attack.
    pub(crate) fn next_source(&self) -> Ipv4Addr {
        let i = self.next_source.fetch_add(1, Ordering::Relaxed);
        self.source(i)
    }

    /// Source number `i` (wrapping).
    pub(crate) fn source(&self, i: usize) -> Ipv4Addr {
        self.sources
            .get(i % self.sources.len().max(1))
            .copied()
            .unwrap_or(Ipv4Addr::LOCALHOST)
    }

    /// A generator for one task, derived from the run's seed.
    pub(crate) fn rng(&self, stream: u64) -> StdRng {
        StdRng::seed_from_u64(
            self.seed ^ stream.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        )
    }

    /// Sleeps for `d`; false if the attack halted first.
    pub(crate) async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.halt.cancelled() => false,
        }
    }

    /// Sleeps until `at`; false if the attack halted first.
    pub(crate) async fn sleep_until(&self, at: Instant) -> bool {
        tokio::select! {
            _ = tokio::time::sleep_until(at) => true,
            _ = self.halt.cancelled() => false,
        }
    }

    /// Counts bytes (and frames) written.
    pub(crate) fn sent(&self, frames: u64, bytes: usize) {
        if frames > 0 {
            self.obs.frames_sent.fetch_add(frames, Ordering::Relaxed);
        }
        self.obs
            .bytes_sent
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Writes `bytes` unless the attack halts first; counts what was written. Not
    /// cancel-safe by design: on halt the connection is dropped anyway.
    pub(crate) async fn write<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        wr: &mut W,
        bytes: &[u8],
        frames: u64,
    ) -> Result<(), WriteEnd> {
        let res = tokio::select! {
            r = wr.write_all(bytes) => r,
            _ = self.halt.cancelled() => return Err(WriteEnd::Halted),
        };
        match res {
            Ok(()) => {
                self.sent(frames, bytes.len());
                Ok(())
            }
            Err(_) => Err(WriteEnd::Failed),
        }
    }

    /// Records a refusal at accept of `source`.
    pub(crate) fn refused(&self, source: Ipv4Addr, sign: RefusalSign) {
        self.obs.refused.fetch_add(1, Ordering::Relaxed);
        let since = Instant::now().saturating_duration_since(self.t0);
        lock(&self.obs.first_refused).entry(source).or_insert(since);
        self.merge(&Counts::from([(sign.label(), 1)]));
    }

    /// Records a canary leak with its note.
    pub(crate) fn leak(&self, note: String) {
        self.obs.canary_leaks.fetch_add(1, Ordering::Relaxed);
        tracing::error!(kind = self.kind.as_str(), "{note}");
        self.note(format!("LEAK: {note}"));
    }

    /// Adds a note to the report (deduplicated, bounded).
    pub(crate) fn note(&self, note: impl Into<String>) {
        let note = note.into();
        let mut notes = lock(&self.notes);
        if notes.len() < MAX_NOTES && !notes.contains(&note) {
            notes.push(note);
        }
    }

    /// Merges counts into the run's totals.
    pub(crate) fn merge(&self, counts: &Counts) {
        let mut all = lock(&self.counts);
        for (k, v) in counts {
            *all.entry(k).or_insert(0) += v;
        }
    }

    /// One count of the run's totals.
    #[cfg(test)]
    pub(crate) fn count(&self, label: &str) -> u64 {
        lock(&self.counts).get(label).copied().unwrap_or(0)
    }

    /// Opens a connection from `source` and checks it was admitted. Records the connect and
    /// any refusal; on refusal or failure, backs off and returns `None` (also when halted).
    pub(crate) async fn open_from(&self, source: Ipv4Addr, rng: &mut StdRng) -> Option<TcpStream> {
        self.open_with(source, rng, PROBE_WAIT).await
    }

    /// [`Env::open_from`] with a chosen refusal wait.
    pub(crate) async fn open_with(
        &self,
        source: Ipv4Addr,
        rng: &mut StdRng,
        wait: Duration,
    ) -> Option<TcpStream> {
        if !self.live() {
            return None;
        }
        lock(&self.used).insert(source, Instant::now());
        let connected = tokio::select! {
            r = connect_from(source, self.target) => r,
            _ = self.halt.cancelled() => return None,
        };
        match connected {
            Ok(mut stream) => {
                self.obs.connects.fetch_add(1, Ordering::Relaxed);
                let admission = tokio::select! {
                    a = probe_admission(&mut stream, wait) => a,
                    _ = self.halt.cancelled() => return None,
                };
                match admission {
                    Admission::Admitted => return Some(stream),
                    Admission::Refused(sign) => {
                        self.refused(source, sign);
                        abort(stream);
                    }
                    Admission::Unexpected => {
                        self.merge(&Counts::from([(
                            "unexpected bytes before the first request",
                            1,
                        )]));
                    }
                    Admission::Failed(kind) => {
                        self.note(format!("reading a fresh connection failed: {kind:?}"));
                    }
                }
            }
            Err(e) if is_reset(e.kind()) => self.refused(source, RefusalSign::Reset),
            Err(e) => {
                let label = match e.kind() {
                    io::ErrorKind::TimedOut => "connect timed out",
                    io::ErrorKind::AddrInUse | io::ErrorKind::AddrNotAvailable => {
                        "no local port free for the source"
                    }
                    _ => "connect failed",
                };
                self.merge(&Counts::from([(label, 1)]));
                if label == "connect failed" {
                    self.note(format!("connect from {source} failed: {e}"));
                }
            }
        }
        let backoff = rng.gen_range(REFUSED_BACKOFF_MS.0..=REFUSED_BACKOFF_MS.1);
        self.sleep(Duration::from_millis(backoff)).await;
        None
    }

    /// Opens an admitted connection from the next sources in turn, retrying until one is
    /// admitted or the attack halts.
    pub(crate) async fn open_next(&self, rng: &mut StdRng) -> Option<(TcpStream, Ipv4Addr)> {
        while self.live() {
            let source = self.next_source();
            if let Some(stream) = self.open_from(source, rng).await {
                return Some((stream, source));
            }
        }
        None
    }

    /// After a connection that lived only since `opened`, pauses briefly so that a slot whose
    /// connections are cut at once does not spin.
    pub(crate) async fn pace(&self, opened: Instant, rng: &mut StdRng) {
        if opened.elapsed() < MIN_CONN_LIFE {
            let ms = rng.gen_range(50..=150);
            self.sleep(Duration::from_millis(ms)).await;
        }
    }

    /// Builds the report from the counter deltas and the notes.
    pub(crate) fn report(&self, totals: super::Totals) -> AttackReport {
        let mut notes = vec![format!(
            "seed {:#018x}; {} connection slot(s) over {} source(s)",
            self.seed,
            self.slots,
            self.sources.len()
        )];
        let counts = lock(&self.counts).clone();
        if !counts.is_empty() {
            let listed: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
            notes.push(format!("seen: {}", listed.join(", ")));
        }
        notes.extend(lock(&self.notes).iter().cloned());
        AttackReport {
            kind: self.kind,
            sources_used: lock(&self.used).keys().copied().collect(),
            connects: totals.connects,
            refused: totals.refused,
            frames_sent: totals.frames_sent,
            bytes_sent: totals.bytes_sent,
            canary_leaks: totals.canary_leaks,
            notes,
        }
    }
}

/// How a guarded write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteEnd {
    /// The attack is stopping.
    Halted,
    /// The connection failed (closed or reset by the server).
    Failed,
}

/// Closes a connection with a reset instead of a FIN, so the attacker keeps no TIME_WAIT
/// state (a churning attacker would otherwise run out of ports).
pub(crate) fn abort(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Runs `slot(env, i)` for every connection slot, staggering their starts over up to half a
/// second so thousands of slots do not connect in the same instant, and waits for all.
pub(crate) async fn run_slots<F, Fut>(env: &Arc<Env>, slot: F)
where
    F: Fn(Arc<Env>, usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut set = JoinSet::new();
    for i in 0..env.slots {
        let stagger = Duration::from_millis((i % 500) as u64);
        let env2 = Arc::clone(env);
        let fut = slot(Arc::clone(env), i);
        set.spawn(async move {
            if env2.sleep(stagger).await {
                fut.await;
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// How often the watcher looks for sources due a check.
const WATCH_TICK: Duration = Duration::from_millis(100);

/// A source not tried for this long is due a check.
pub(crate) const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Most refusal checks in flight at once.
const WATCH_CONCURRENCY: usize = 8;

/// Makes sure every source the attack has used, and that has not been seen refused yet, is
/// tried at least every [`WATCH_EVERY`], so a block at accept is observed promptly even when
/// the slots are busy elsewhere (a slot cut by a block reconnects from the next source, not
/// the blocked one). A check connects, watches for a refusal and resets the connection; it
/// sends nothing. Runs until the attack halts.
pub(crate) async fn watch_sources(env: Arc<Env>) {
    let mut rng = env.rng(u64::MAX - 1);
    let mut checks: JoinSet<()> = JoinSet::new();
    while env.sleep(WATCH_TICK).await {
        while checks.try_join_next().is_some() {}
        let refused: Vec<Ipv4Addr> = lock(&env.obs.first_refused).keys().copied().collect();
        let due: Vec<Ipv4Addr> = lock(&env.used)
            .iter()
            .filter(|(ip, at)| at.elapsed() >= WATCH_EVERY && refused.binary_search(ip).is_err())
            .map(|(ip, _)| *ip)
            .collect();
        for source in due {
            if checks.len() >= WATCH_CONCURRENCY {
                break;
            }
            let env = Arc::clone(&env);
            let mut rng = StdRng::seed_from_u64(rng.gen());
            checks.spawn(async move {
                if let Some(stream) = env.open_from(source, &mut rng).await {
                    abort(stream);
                }
            });
        }
    }
    checks.shutdown().await;
}

/// Paces the attack's logins with its account under the server's default per-user login
/// limit (10 a minute, burst 5), so connections that need a session do not earn
/// RATE_LIMITED refusals (and the firewall's points) for the login alone.
pub(crate) struct LoginPacer {
    state: Mutex<(f64, Instant)>,
}

/// Logins allowed at once.
const LOGIN_BURST: f64 = 4.0;
/// One more login allowed per this many seconds (a little slower than 10 a minute).
const LOGIN_EVERY_S: f64 = 6.5;

impl LoginPacer {
    pub(crate) fn new() -> LoginPacer {
        LoginPacer {
            state: Mutex::new((LOGIN_BURST, Instant::now())),
        }
    }

    /// Waits for a login slot; false if the attack halted first.
    pub(crate) async fn acquire(&self, env: &Env) -> bool {
        loop {
            let wait = {
                let mut st = lock(&self.state);
                let now = Instant::now();
                let refill = now.saturating_duration_since(st.1).as_secs_f64() / LOGIN_EVERY_S;
                st.0 = (st.0 + refill).min(LOGIN_BURST);
                st.1 = now;
                if st.0 >= 1.0 {
                    st.0 -= 1.0;
                    return true;
                }
                Duration::from_secs_f64((1.0 - st.0) * LOGIN_EVERY_S)
            };
            if !env.sleep(wait).await {
                return false;
            }
        }
    }
}

/// Longest wait for an AUTH reply (argon2 on a busy bounded pool can take a while).
pub(crate) const AUTH_WAIT: Duration = Duration::from_secs(10);

/// Logs in with the attack account on a fresh connection. On failure returns how the
/// connection stands: an error reply as a frame, or how it ended.
pub(crate) async fn login<R, W>(
    env: &Env,
    rd: &mut R,
    wr: &mut W,
    inbox: &mut Inbox,
    ids: &mut Ids,
) -> Result<(), Got>
where
    R: AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let (user, pw) = &env.account;
    let req = Request::Auth {
        user: user.clone(),
        password: Password(Bytes::copy_from_slice(pw.as_bytes())),
    };
    let bytes = request_bytes(ids.next(), &req);
    match env.write(wr, &bytes, 1).await {
        Ok(()) => {}
        Err(WriteEnd::Halted) => return Err(Got::Halted),
        Err(WriteEnd::Failed) => return Err(Got::Reset),
    }
    match inbox.next(rd, env, AUTH_WAIT).await {
        Got::Frame(f) if f.kind == Kind::AuthOk => Ok(()),
        other => Err(other),
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
    pub(crate) fn spawn(env: &Arc<Env>, mut rd: OwnedReadHalf, mut inbox: Inbox) -> Drain {
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

    #[tokio::test]
    async fn a_block_is_seen_even_when_no_slot_returns_to_the_source(
    ) -> crate::attack::testing::TestResult {
        use crate::attack::testing::{bench, config};
        let b = bench(config()).await?;
        let first = Ipv4Addr::new(127, 0, 16, 1);
        let guard = b.handle.guard();
        let blocker = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            guard.block(first.into(), Duration::from_secs(60), "test");
        });
        // One slot holds one connection at a time; once cut it moves on to the next source
        // and stays there, so only the checks go back to the first.
        let (report, env) = b
            .run_env(
                "kind = \"conn-exhaust\"\nsources = \"127.0.16.0/29\"\n",
                1.6,
            )
            .await?;
        blocker.await?;
        let seen = lock(&env.obs.first_refused).get(&first).copied();
        let seen = seen.ok_or_else(|| format!("never refused: {report:?}"))?;
        assert!(seen >= Duration::from_millis(600), "{seen:?}");
        assert!(seen <= Duration::from_millis(1300), "{seen:?} {report:?}");
        assert!(
            env.count("conn cut: closed without reason") >= 1,
            "{report:?}"
        );
        b.stop().await;
        Ok(())
    }

    #[test]
    fn contains_finds_needles() {
        assert!(contains(b"abcdef", b"cde"));
        assert!(contains(b"abcdef", b"abcdef"));
        assert!(contains(b"aaab", b"aab"));
        assert!(!contains(b"abcdef", b"cdf"));
        assert!(!contains(b"abc", b"abcd"));
        assert!(!contains(b"abc", b""));
        assert!(!contains(b"", b"a"));
    }

    #[test]
    fn ids_skip_zero() {
        let mut ids = Ids(u32::MAX);
        assert_eq!(ids.next(), u32::MAX);
        assert_eq!(ids.next(), 1);
    }

    #[tokio::test]
    async fn connect_from_refuses_non_loopback() {
        let target: SocketAddr = SocketAddr::from(([192, 0, 2, 1], 9));
        let err = connect_from(Ipv4Addr::new(127, 0, 1, 1), target)
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
        let src = Ipv4Addr::new(127, 0, 3, 1);
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
