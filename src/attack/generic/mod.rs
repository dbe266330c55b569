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
//! `wire` holds [`Wire`] and the seeded mutations; `floods` the kinds that push bytes
//! (flood, raw-flood, oversized, malformed), `slow` the ones that hold the server up
//! (slowloris, slow-read), `conn` the connection-level ones (conn-churn, conn-exhaust, probe).
//!
//! Sources, slots, start and stop work as for every attack ([`super::run`]'s `Env`); there
//! is no refusal watcher, since a server without a firewall blocks nobody. A connect that is
//! refused or reset still counts as a refusal.

mod conn;
mod floods;
mod slow;
mod wire;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use tokio::io::AsyncReadExt;

use crate::sim::net::NetStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::net::{connect_from, is_reset, RefusalSign};
use super::run::{run_slots, Counts, Env};
use super::spec::Params;
use super::{Attack, AttackContext, AttackReport};

pub use wire::{mutate, resp_command, Wire};

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
            Params::Flood { pipeline, .. } => floods::flood(env, wire, pipeline).await,
            Params::RawFlood {
                bytes_per_s,
                chunk_bytes,
            } => floods::raw_flood(env, bytes_per_s, chunk_bytes).await,
            Params::Oversized {
                declared_len,
                body_bytes,
            } => floods::oversized(env, wire, declared_len, body_bytes).await,
            Params::Slowloris {
                interval,
                declared_len,
            } => slow::slowloris(env, wire, interval, declared_len).await,
            Params::SlowRead {
                file_bytes,
                requests_per_conn,
                ..
            } => slow::slow_read(env, wire, file_bytes, requests_per_conn).await,
            Params::ConnChurn { per_source_rate } => conn::churn(env, wire, per_source_rate).await,
            Params::ConnExhaust => conn::exhaust(env).await,
            Params::Malformed { .. } => floods::malformed(env, wire).await,
            Params::Probe { interval } => conn::probe(env, interval).await,
            _ => env.note(format!("{kind} has no generic form: nothing was sent")),
        }
    })
    .await
}

/// Opens a connection from the next source in turn, retrying until one connects or the
/// attack halts. No admission check: any server may speak first.
async fn open(env: &Env, rng: &mut StdRng) -> Option<(NetStream, IpAddr)> {
    while env.live() {
        let source = env.next_source();
        env.touch(source);
        let connected = tokio::select! {
            r = connect_from(env.bind_address(source, rng), env.target) => r,
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

/// One connection slot of a generic attack: its generator, and the connections it opens one
/// after another, each drained of what the server sends.
struct Slot {
    env: Arc<Env>,
    rng: StdRng,
    /// Reply bytes of the whole attack.
    received: Arc<AtomicU64>,
}

impl Slot {
    fn new(env: &Arc<Env>, slot: usize, received: &Arc<AtomicU64>) -> Slot {
        Slot {
            env: Arc::clone(env),
            rng: env.rng(slot as u64),
            received: Arc::clone(received),
        }
    }

    /// Opens the next connection and starts draining it; `None` once the attack halts.
    async fn open(&mut self) -> Option<Drained> {
        let (stream, _) = open(&self.env, &mut self.rng).await?;
        let (rd, wr) = stream.into_split();
        let received = Arc::new(AtomicU64::new(0));
        Some(Drained {
            wr,
            sink: Sink::spawn(&self.env, rd, Arc::clone(&received)),
            opened: Instant::now(),
            received,
        })
    }

    /// Ends `conn`: stops writing, gives the server up to `linger` to close, adds its reply
    /// bytes to the attack's, and pauses briefly if it lived briefly (so a server that cuts
    /// at once cannot make the slot spin).
    async fn close(&mut self, conn: Drained, linger: Duration) {
        drop(conn.wr);
        conn.sink.finish(linger).await;
        self.received
            .fetch_add(conn.received.load(Ordering::Relaxed), Ordering::Relaxed);
        self.env.pace(conn.opened, &mut self.rng).await;
    }
}

/// An open connection whose replies a task drains and counts.
struct Drained {
    wr: crate::sim::net::NetWrite,
    sink: Sink,
    opened: Instant,
    received: Arc<AtomicU64>,
}

impl Drained {
    /// False once the server closed the connection.
    fn is_open(&self) -> bool {
        !self.sink.closed.is_cancelled()
    }

    /// Writes `bytes` (counted as `frames`) unless the server closes or the attack halts
    /// first; false if it did not.
    async fn write(&mut self, env: &Env, bytes: &[u8], frames: u64) -> bool {
        tokio::select! {
            r = env.write(&mut self.wr, bytes, frames) => r.is_ok(),
            _ = self.sink.closed.cancelled() => false,
        }
    }

    /// Waits until the server closes the connection, the attack halts, or `limit` passes
    /// (`None`: no limit).
    async fn wait(&self, env: &Env, limit: Option<Duration>) {
        let limit = async {
            match limit {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.sink.closed.cancelled() => {}
            _ = env.halt.cancelled() => {}
            _ = limit => {}
        }
    }

    /// Reply bytes so far.
    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// Reads and discards what the server sends until it closes, counting the bytes.
struct Sink {
    handle: tokio::task::JoinHandle<()>,
    /// Cancelled once the server closed (or reset) the connection.
    closed: CancellationToken,
}

impl Sink {
    fn spawn(env: &Arc<Env>, mut rd: crate::sim::net::NetRead, received: Arc<AtomicU64>) -> Sink {
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

/// Runs `slot_loop` on every connection slot with its [`Slot`], then notes the reply bytes
/// of the whole attack.
async fn run_drained<F, Fut>(env: &Arc<Env>, slot_loop: F)
where
    F: Fn(Arc<Env>, Slot) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let received = Arc::new(AtomicU64::new(0));
    let r = Arc::clone(&received);
    run_slots(env, move |env, i| {
        let slot = Slot::new(&env, i, &r);
        slot_loop(env, slot)
    })
    .await;
    env.note(format!(
        "received {} bytes of replies",
        received.load(Ordering::Relaxed)
    ));
}
