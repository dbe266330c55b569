//! The load generator behind `rampart load`: many clients, each sending acknowledged
//! operations as fast as the server answers, optionally pipelined.
//!
//! Every operation counted was acknowledged by the server (an ACCEPTED reply, which the
//! server sends only after a durable commit). Latency is measured per operation from the
//! moment its request (or, pipelined, its batch) is written to the moment its reply arrives.
//! The run's clock starts once every client has logged in and built its payload, so
//! operations per second and MB/s count operations only.
//!
//! [`hold_idle`] is the other mode: it opens many authenticated connections from several
//! source addresses and keeps them open and silent (one PING per keep-alive interval, so the
//! server's idle timeout does not end them), to measure what an idle session costs the server.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use crate::client::{Client, ClientError, ClientOptions, TlsOptions};
use crate::protocol::{Reply, Request};
use crate::scenario::metrics::Latencies;

/// What each operation sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadKind {
    /// A chat message of `size` bytes.
    Message,
    /// A file of `size` bytes (upload in chunks, then SEND_FILE).
    File,
}

/// Why a load run did not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A chat message travels in one frame, and no frame is this large.
    #[error(
        "a message of {size} bytes cannot be sent: a message travels in one frame, and no frame \
         is over {max} bytes (send a file for more)"
    )]
    MessageTooLarge {
        /// The payload size asked for.
        size: usize,
        /// The protocol's largest frame.
        max: u32,
    },
    /// The payload could not be allocated.
    #[error("cannot allocate a payload of {0} bytes on this machine")]
    NoMemory(usize),
}

/// The one payload every client sends: built once, before any client starts, and shared.
#[derive(Clone)]
struct Payload {
    text: String,
    data: Bytes,
}

impl Payload {
    fn new(kind: LoadKind, size: usize) -> Result<Payload, LoadError> {
        let max = crate::protocol::limits::HARD_MAX_FRAME;
        if kind == LoadKind::Message && size > max as usize {
            return Err(LoadError::MessageTooLarge { size, max });
        }
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(size)
            .map_err(|_| LoadError::NoMemory(size))?;
        Ok(match kind {
            LoadKind::Message => {
                bytes.resize(size, b'x');
                Payload {
                    text: String::from_utf8(bytes).unwrap_or_default(),
                    data: Bytes::new(),
                }
            }
            LoadKind::File => {
                bytes.resize(size, 0x5A);
                Payload {
                    text: String::new(),
                    data: Bytes::from(bytes),
                }
            }
        })
    }
}

/// A checked load run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Server address.
    pub server: String,
    /// User to log in as (every client uses it).
    pub user: String,
    /// Its password.
    pub password: String,
    /// Recipient of every operation (defaults to the user itself).
    pub to: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Total operations, spread over the clients.
    pub ops: u64,
    /// Payload bytes per operation.
    pub size: usize,
    /// What to send.
    pub kind: LoadKind,
    /// Requests in flight per client (1 = no pipelining).
    pub pipeline: usize,
    /// Source addresses the clients bind, round-robin (empty = the system's choice).
    pub sources: Vec<IpAddr>,
    /// Speak TLS with these options; `None`: plaintext.
    pub tls: Option<TlsOptions>,
}

/// The result of a load run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Operations acknowledged.
    pub ops: u64,
    /// Operations that failed (an error reply or a broken connection).
    pub errors: u64,
    /// Wall time in seconds, from the moment every client had logged in to the last reply.
    pub elapsed_s: f64,
    /// Acknowledged operations per second.
    pub ops_per_s: f64,
    /// Payload megabytes (10^6 bytes) acknowledged per second.
    pub mb_per_s: f64,
    /// Median latency in milliseconds ([`Latencies`] says how quantiles are read).
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// 99.9th percentile latency.
    pub p999_ms: f64,
    /// Clients, pipeline depth, size and kind, for the record.
    pub clients: usize,
    /// Pipeline depth.
    pub pipeline: usize,
    /// Payload bytes per operation.
    pub size: usize,
    /// What was sent.
    pub kind: LoadKind,
    /// The first error seen, if any.
    pub first_error: Option<String>,
}

struct ClientResult {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

/// The start line: every client logs in and prepares its payload, says so, and waits for the
/// go, so the measured time covers operations only, not logins (each costs the server a
/// password verification) or building a large payload.
#[derive(Default)]
struct StartLine {
    ready: AtomicU64,
    go: tokio_util::sync::CancellationToken,
}

impl StartLine {
    async fn wait(&self) {
        self.ready.fetch_add(1, Ordering::Relaxed);
        self.go.cancelled().await;
    }
}

async fn one_client(
    spec: Arc<LoadSpec>,
    payload: Payload,
    index: usize,
    ops: u64,
    done: Arc<AtomicU64>,
    start: Arc<StartLine>,
) -> ClientResult {
    let mut out = ClientResult {
        latencies: Vec::with_capacity(usize::try_from(ops).unwrap_or(0)),
        errors: 0,
        first_error: None,
    };
    let opts = ClientOptions {
        source: spec.sources.get(index % spec.sources.len().max(1)).copied(),
        tls: spec.tls.clone(),
        ..ClientOptions::default()
    };
    let login = Client::login(
        spec.server.as_str(),
        &spec.user,
        spec.password.as_bytes(),
        opts,
    )
    .await;
    let Payload {
        text: payload,
        data,
    } = payload;
    start.wait().await;
    let mut client = match login {
        Ok(c) => c,
        Err(e) => {
            out.errors = ops;
            out.first_error = Some(e.to_string());
            return out;
        }
    };
    let mut remaining = ops;
    while remaining > 0 {
        let batch = remaining.min(spec.pipeline.max(1) as u64);
        let started = Instant::now();
        let result: Result<u64, ClientError> = match spec.kind {
            LoadKind::Message => {
                let reqs = (0..batch)
                    .map(|_| Request::SendMessage {
                        to: spec.to.clone(),
                        text: payload.clone(),
                    })
                    .collect();
                client.pipeline(reqs).await.map(|replies| {
                    replies
                        .iter()
                        .filter(|r| matches!(r, Reply::Accepted { .. }))
                        .count() as u64
                })
            }
            LoadKind::File => client
                .send_file_bytes(&spec.to, "load.bin", &data)
                .await
                .map(|_| 1),
        };
        let sent = if spec.kind == LoadKind::File {
            1
        } else {
            batch
        };
        let elapsed = started.elapsed();
        match result {
            Ok(acked) => {
                for _ in 0..acked {
                    out.latencies.push(elapsed);
                }
                out.errors += sent - acked;
                done.fetch_add(acked, Ordering::Relaxed);
            }
            Err(e) => {
                out.errors += remaining;
                out.first_error.get_or_insert_with(|| e.to_string());
                return out;
            }
        }
        remaining -= sent;
    }
    let _ = client.bye().await;
    out
}

/// Runs the load; `progress` is called about ten times a second with operations done so far.
/// Fails before connecting if the payload cannot be sent or built.
pub async fn run(spec: LoadSpec, mut progress: impl FnMut(u64)) -> Result<LoadReport, LoadError> {
    let payload = Payload::new(spec.kind, spec.size)?;
    let spec = Arc::new(spec);
    let done = Arc::new(AtomicU64::new(0));
    let clients = spec.clients.max(1);
    let start = Arc::new(StartLine::default());
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        // Spread the operations evenly; the first clients take the remainder.
        let share = spec.ops / clients as u64 + u64::from((i as u64) < spec.ops % clients as u64);
        tasks.push(tokio::spawn(one_client(
            Arc::clone(&spec),
            payload.clone(),
            i,
            share,
            Arc::clone(&done),
            Arc::clone(&start),
        )));
    }
    // Every client waits at the start line until the go, so a task that finished before it
    // can only have panicked; do not wait for those.
    loop {
        let finished = tasks.iter().filter(|t| t.is_finished()).count() as u64;
        if start.ready.load(Ordering::Relaxed) + finished >= clients as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = Instant::now();
    start.go.cancel();
    let mut all = Box::pin(futures::future::join_all(tasks));
    let results = loop {
        tokio::select! {
            r = &mut all => break r,
            _ = tokio::time::sleep(Duration::from_millis(100)) => progress(done.load(Ordering::Relaxed)),
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    progress(done.load(Ordering::Relaxed));
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for r in results {
        match r {
            Ok(c) => {
                latencies.extend(c.latencies);
                errors += c.errors;
                if first_error.is_none() {
                    first_error = c.first_error;
                }
            }
            Err(e) => first_error = Some(format!("client task failed: {e}")),
        }
    }
    let ops = latencies.len() as u64;
    let latencies: Latencies = latencies.into_iter().collect();
    let secs = elapsed.max(1e-9);
    Ok(LoadReport {
        ops,
        errors,
        elapsed_s: elapsed,
        ops_per_s: ops as f64 / secs,
        mb_per_s: (ops as f64 * spec.size as f64) / 1e6 / secs,
        p50_ms: latencies.quantile_ms(0.50),
        p99_ms: latencies.quantile_ms(0.99),
        p999_ms: latencies.quantile_ms(0.999),
        clients,
        pipeline: spec.pipeline.max(1),
        size: spec.size,
        kind: spec.kind,
        first_error,
    })
}

/// A checked idle run: authenticated connections opened and then held silent.
#[derive(Debug, Clone)]
pub struct IdleSpec {
    /// Server address.
    pub server: String,
    /// User every connection logs in as.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Connections to open and hold.
    pub connections: usize,
    /// Source addresses the connections bind, round-robin (empty = the system's choice).
    pub sources: Vec<IpAddr>,
    /// Logins in progress at once (each costs the server one password verification).
    pub concurrency: usize,
    /// How long to hold the connections once every one is open (or has failed).
    pub hold: Duration,
    /// Each held connection sends one PING this often; must be below the server's idle
    /// timeout for the connections to survive the hold.
    pub keepalive: Duration,
    /// Speak TLS with these options; `None`: plaintext.
    pub tls: Option<TlsOptions>,
}

/// The result of an idle run.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// Connections asked for.
    pub requested: usize,
    /// Connections that logged in and were held.
    pub open: usize,
    /// Connections that could not connect or log in.
    pub failed: usize,
    /// Held connections that broke during the hold (a failed keep-alive PING).
    pub lost: usize,
    /// Distinct source addresses used.
    pub sources: usize,
    /// Seconds from the first connect until every connection was open or had failed.
    pub open_s: f64,
    /// Seconds the connections were held.
    pub held_s: f64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
}

/// What one idle connection did.
enum IdleEnd {
    /// It could not log in.
    Failed(String),
    /// It was held to the end (`Ok`) or broke during the hold.
    Held(Result<(), String>),
}

async fn one_idle(
    spec: Arc<IdleSpec>,
    index: usize,
    logins: Arc<tokio::sync::Semaphore>,
    opened: Arc<AtomicU64>,
    release: tokio_util::sync::CancellationToken,
) -> IdleEnd {
    let opts = ClientOptions {
        source: spec.sources.get(index % spec.sources.len().max(1)).copied(),
        tls: spec.tls.clone(),
        ..ClientOptions::default()
    };
    let login = {
        // The semaphore is never closed, so acquiring only fails if it were; then go ahead.
        let _permit = logins.acquire().await.ok();
        Client::login(
            spec.server.as_str(),
            &spec.user,
            spec.password.as_bytes(),
            opts,
        )
        .await
    };
    opened.fetch_add(1, Ordering::Relaxed);
    let mut client = match login {
        Ok(c) => c,
        Err(e) => return IdleEnd::Failed(e.to_string()),
    };
    let keepalive = spec.keepalive.max(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = release.cancelled() => break,
            _ = tokio::time::sleep(keepalive) => {
                if let Err(e) = client.ping().await {
                    return IdleEnd::Held(Err(e.to_string()));
                }
            }
        }
    }
    let _ = client.bye().await;
    IdleEnd::Held(Ok(()))
}

/// Opens `spec.connections` authenticated connections, calls `progress` about ten times a
/// second with how many have finished trying, calls `held` once with the number open when
/// every connection is open or has failed, holds them for `spec.hold`, then closes them.
pub async fn hold_idle(
    spec: IdleSpec,
    mut progress: impl FnMut(u64),
    held: impl FnOnce(usize),
) -> IdleReport {
    let spec = Arc::new(spec);
    let logins = Arc::new(tokio::sync::Semaphore::new(spec.concurrency.max(1)));
    let opened = Arc::new(AtomicU64::new(0));
    let release = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let tasks: Vec<_> = (0..spec.connections)
        .map(|i| {
            tokio::spawn(one_idle(
                Arc::clone(&spec),
                i,
                Arc::clone(&logins),
                Arc::clone(&opened),
                release.clone(),
            ))
        })
        .collect();
    let target = spec.connections as u64;
    while opened.load(Ordering::Relaxed) < target {
        progress(opened.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress(target);
    let open_s = started.elapsed().as_secs_f64();
    // Connections that failed have already returned; the rest are held.
    let failed_so_far = tasks.iter().filter(|t| t.is_finished()).count();
    held(spec.connections.saturating_sub(failed_so_far));
    let hold_started = Instant::now();
    tokio::time::sleep(spec.hold).await;
    let held_s = hold_started.elapsed().as_secs_f64();
    release.cancel();
    let mut report = IdleReport {
        requested: spec.connections,
        open: 0,
        failed: 0,
        lost: 0,
        sources: spec.sources.len().min(spec.connections).max(1),
        open_s,
        held_s,
        first_error: None,
    };
    for r in futures::future::join_all(tasks).await {
        match r {
            Ok(IdleEnd::Failed(e)) => {
                report.failed += 1;
                report.first_error.get_or_insert(e);
            }
            Ok(IdleEnd::Held(Ok(()))) => report.open += 1,
            Ok(IdleEnd::Held(Err(e))) => {
                report.open += 1;
                report.lost += 1;
                report.first_error.get_or_insert(e);
            }
            Err(e) => {
                report.failed += 1;
                report
                    .first_error
                    .get_or_insert_with(|| format!("connection task failed: {e}"));
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use crate::scenario::metrics::Latencies;
    use std::time::Duration;

    #[test]
    fn quantiles_of_known_latencies() {
        // Nearest rank, read as the top of the value's histogram bucket (see `Latencies`).
        let ms: Latencies = (1..=1000).map(Duration::from_millis).collect();
        assert_eq!(ms.quantile_ms(0.5), 500.223);
        assert_eq!(ms.quantile_ms(0.99), 990.207);
        assert_eq!(ms.quantile_ms(0.999), 999.423);
        assert_eq!(Latencies::new().quantile_ms(0.5), 0.0);
    }

    #[test]
    fn a_payload_that_cannot_be_sent_or_built_is_refused_before_any_client_starts() {
        use super::{LoadError, LoadKind, Payload};
        let max = crate::protocol::limits::HARD_MAX_FRAME as usize;
        assert!(matches!(
            Payload::new(LoadKind::Message, max + 1),
            Err(LoadError::MessageTooLarge { size, .. }) if size == max + 1
        ));
        // More than any machine can hold: an error, not an abort.
        assert!(matches!(
            Payload::new(LoadKind::File, usize::MAX),
            Err(LoadError::NoMemory(usize::MAX))
        ));
        let p = Payload::new(LoadKind::File, 3).map_err(|e| e.to_string());
        assert_eq!(p.map(|p| p.data.to_vec()), Ok(vec![0x5A; 3]));
        let p = Payload::new(LoadKind::Message, 2).map_err(|e| e.to_string());
        assert_eq!(p.map(|p| p.text), Ok("xx".to_owned()));
    }
}
