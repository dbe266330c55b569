//! The Prometheus endpoint of `[metrics] listen`: `GET /metrics` answers the server's
//! counters in the Prometheus text format (version 0.0.4).
//!
//! The counters themselves live where they are bumped ([`Metrics`](super::metrics::Metrics), the firewall, the
//! recorder, the detector); a scrape reads them once through a [`Collector`], and
//! `prometheus-client` writes the exposition, so no line of the format is written here.
//!
//! The HTTP side is a deliberately tiny server on its own port, hardened like the protocol
//! port: at most [`MAX_CONNECTIONS`] connections at once, a request head of at most
//! [`MAX_REQUEST_BYTES`] read within [`READ_TIMEOUT`], one answer per connection, then
//! close.
//!
//! When every slot is taken, a new connection takes the slot of the oldest one still waiting
//! for its request head, which is closed; only when every slot is busy answering is the new
//! one closed unread. So idle connections cannot hold scrapes off: a scraper sends its GET as
//! soon as it connects, and is evicted only if [`MAX_CONNECTIONS`] newer connections arrive
//! before its head does.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::metrics::{LatencySnapshot, MetricsSnapshot};
use super::Shared;

/// Most connections served at once. Prometheus scrapes one at a time; a few more leave room
/// for an operator's curl. Past them a new connection evicts the oldest one still waiting
/// for its request head, or is closed unread if none is waiting.
pub const MAX_CONNECTIONS: usize = 4;

/// Longest request head read: a scraper's GET with its headers is a few hundred bytes.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// The whole request head must arrive within this, and the answer be written within it.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `listener` until the server shuts down. Holds the server weakly, so an endpoint
/// never keeps a dropped server alive.
pub(crate) async fn serve(listener: TcpListener, shared: Weak<Shared>) {
    let Some(shutdown) = shared.upgrade().map(|s| s.shutdown.clone()) else {
        return;
    };
    let mut registry = Registry::with_prefix("rampart");
    registry.register_collector(Box::new(Scrape(shared)));
    let registry = Arc::new(registry);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let waiting = Arc::new(Mutex::new(Waiting::default()));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            res = listener.accept() => res,
        };
        let Ok((stream, _)) = accepted else {
            // Out of descriptors, most likely: the protocol port matters more; wait.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let permit = Arc::clone(&slots).try_acquire_owned().ok();
        // Every slot taken: the oldest connection still waiting for its head gives its slot
        // up (its task ends and drops its permit at once); with none waiting, this one is
        // closed unread. Each eviction ends one task, so tasks stay bounded by the slots.
        if permit.is_none() && !lock(&waiting).evict_oldest() {
            continue;
        }
        let cancel = shutdown.child_token();
        let reading = Reading::enter(&waiting, cancel.clone());
        let registry = Arc::clone(&registry);
        let slots = Arc::clone(&slots);
        tokio::spawn(async move {
            let served = async {
                let _permit = match permit {
                    Some(permit) => permit,
                    None => slots.acquire_owned().await.map_err(std::io::Error::other)?,
                };
                answer(stream, &registry, &reading).await
            };
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::timeout(READ_TIMEOUT, served) => {}
            }
        });
    }
}

/// The connections still waiting for their request head, oldest first: the ones a new
/// connection may evict when every slot is taken.
#[derive(Default)]
struct Waiting {
    next: u64,
    queue: VecDeque<(u64, CancellationToken)>,
}

impl Waiting {
    /// Cancels the oldest waiting connection; false if none is waiting.
    fn evict_oldest(&mut self) -> bool {
        match self.queue.pop_front() {
            Some((_, cancel)) => {
                cancel.cancel();
                true
            }
            None => false,
        }
    }
}

/// The waiting list; a panic while it was held leaves it usable (every change is one step).
fn lock(waiting: &Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    waiting.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One connection's place in [`Waiting`], left once its head is in (or it ends).
struct Reading {
    waiting: Arc<Mutex<Waiting>>,
    id: u64,
}

impl Reading {
    fn enter(waiting: &Arc<Mutex<Waiting>>, cancel: CancellationToken) -> Reading {
        let mut w = lock(waiting);
        let id = w.next;
        w.next = w.next.wrapping_add(1);
        w.queue.push_back((id, cancel));
        Reading {
            waiting: Arc::clone(waiting),
            id,
        }
    }

    /// The head is in: from now on this connection is answered, not evicted.
    fn leave(&self) {
        lock(&self.waiting).queue.retain(|(id, _)| *id != self.id);
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Reads one request head and answers it.
async fn answer(
    mut stream: TcpStream,
    registry: &Registry,
    reading: &Reading,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    // The head ends at an empty line; bare LF line endings are accepted as well as CRLF.
    let ended =
        |h: &[u8]| h.windows(4).any(|w| w == b"\r\n\r\n") || h.windows(2).any(|w| w == b"\n\n");
    while !ended(&head) {
        if head.len() >= MAX_REQUEST_BYTES {
            return respond(&mut stream, "431 Request Header Fields Too Large", "").await;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    reading.leave();
    let first = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = first.strip_suffix(b"\r").unwrap_or(first);
    let mut parts = line.split(|b| *b == b' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    // A request line is METHOD TARGET HTTP/x.y; anything else is not HTTP.
    if !version.is_some_and(|v| v.starts_with(b"HTTP/")) || parts.next().is_some() {
        return respond(&mut stream, "400 Bad Request", "").await;
    }
    // The query string, if any, selects nothing: /metrics?name[]=... is /metrics.
    let path = target.map(|t| t.split(|b| *b == b'?').next().unwrap_or_default());
    match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => {
            let mut body = String::new();
            match prometheus_client::encoding::prometheus_text::encode(&mut body, registry) {
                Ok(()) => respond(&mut stream, "200 OK", &body).await,
                Err(_) => respond(&mut stream, "500 Internal Server Error", "").await,
            }
        }
        (Some(b"GET"), _) => respond(&mut stream, "404 Not Found", "").await,
        _ => respond(&mut stream, "405 Method Not Allowed", "").await,
    }
}

/// Writes a whole HTTP/1.1 answer and closes.
async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads every counter at scrape time.
struct Scrape(Weak<Shared>);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

/// One metric family's name (after the `rampart_` prefix; counters get `_total`) and help.
type Family = (&'static str, &'static str);

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(shared) = self.0.upgrade() else {
            return Ok(());
        };
        let m = shared.metrics.snapshot();
        plain_counters(&mut e, &m)?;
        for (family, label, values) in [
            (
                (
                    "connections_refused_by_reason",
                    "Connections refused at accept, by refusal.",
                ),
                "reason",
                &m.refused_by,
            ),
            (
                (
                    "connections_closed_by_reason",
                    "Connections closed, by close reason.",
                ),
                "reason",
                &m.closed_by,
            ),
            (
                (
                    "decode_errors",
                    "Frames rejected by the decoder, by reason.",
                ),
                "reason",
                &m.decode_errors,
            ),
            (
                (
                    "rate_limited_by_limit",
                    "Requests and logins refused by a rate limiter, by limit.",
                ),
                "limit",
                &m.limited_by,
            ),
            (
                ("frames_in_by_kind", "Frames received and decoded, by kind."),
                "kind",
                &m.frames_in_by,
            ),
            (
                ("frames_out_by_kind", "Reply frames queued, by kind."),
                "kind",
                &m.frames_out_by,
            ),
        ] {
            labelled(&mut e, family, label, values)?;
        }
        let mut fm = e.encode_descriptor(
            "firewall_decisions",
            "Firewall decisions, by action (block, shadow_block, allowed, unblock) and the \
             signal that triggered them (operator for an unblock).",
            None,
            MetricType::Counter,
        )?;
        for (action, trigger, n) in shared.firewall.decision_counts() {
            // No trigger: an operator's unblock, or a block another server of the fleet
            // decided.
            let untriggered = if action.as_str() == "block" {
                "fleet"
            } else {
                "operator"
            };
            let labels = [
                ("action", action.as_str()),
                ("trigger", trigger.map_or(untriggered, |s| s.as_str())),
            ];
            ConstCounter::new(n).encode(fm.encode_family(&labels)?)?;
        }
        #[cfg(feature = "postgres")]
        if let Some(f) = shared.fleet.get().map(crate::fleet::FleetLink::stats) {
            for ((name, help), n) in [
                (
                    (
                        "fleet_shared",
                        "This server's blocks written for the other servers of the fleet.",
                    ),
                    f.shared,
                ),
                (
                    ("fleet_applied", "Other servers' blocks applied here."),
                    f.applied,
                ),
                (
                    (
                        "fleet_unblocked",
                        "Operators' fleet-wide unblocks applied here.",
                    ),
                    f.unblocked,
                ),
                (
                    (
                        "fleet_dropped",
                        "This server's blocks dropped because the fleet outbox was full.",
                    ),
                    f.dropped,
                ),
                (
                    (
                        "fleet_sync_failures",
                        "Polls of the fleet's decisions that failed (database unreachable).",
                    ),
                    f.failures,
                ),
                (
                    (
                        "fleet_evidence_shared",
                        "Evidence rows (a source's signal points per poll) written for the other servers.",
                    ),
                    f.evidence_shared,
                ),
                (
                    (
                        "fleet_evidence_applied",
                        "Other servers' evidence rows scored here.",
                    ),
                    f.evidence_applied,
                ),
                (
                    (
                        "fleet_evidence_dropped",
                        "Signals not shared because the fleet's evidence queue was full.",
                    ),
                    f.evidence_dropped,
                ),
                (
                    (
                        "fleet_windows_shared",
                        "Activity windows written to the fleet's database.",
                    ),
                    f.windows_shared,
                ),
                (
                    (
                        "fleet_windows_dropped",
                        "Activity windows not shared because the fleet's window queue was full.",
                    ),
                    f.windows_dropped,
                ),
            ] {
                counter(&mut e, (name, help), n)?;
            }
        }
        let r = shared.recorder.stats();
        for ((name, help), n) in [
            (("recorder_events", "Activity events recorded."), r.recorded),
            (
                (
                    "recorder_shed",
                    "Activity events shed (full channel or disk).",
                ),
                r.shed,
            ),
        ] {
            counter(&mut e, (name, help), n)?;
        }
        if let Some(d) = shared
            .detection
            .as_ref()
            .map(super::detector::Detection::stats)
        {
            for ((name, help), n) in [
                (
                    ("model_windows", "Activity windows the model scored."),
                    d.windows,
                ),
                (
                    ("model_anomalies", "Windows the model found anomalous."),
                    d.anomalies,
                ),
                (
                    ("model_shed", "Anomalies shed because the relay was full."),
                    d.shed,
                ),
                (
                    (
                        "model_already_blocked",
                        "Anomalies not queued because their source was already blocked.",
                    ),
                    d.already_blocked,
                ),
                (
                    (
                        "model_silent",
                        "Anomalies not queued because the source sent nothing in the window.",
                    ),
                    d.silent,
                ),
            ] {
                counter(&mut e, (name, help), n)?;
            }
        }
        histogram(
            &mut e,
            (
                "store_commit_seconds",
                "How long each store delivery kept its session waiting (group commit and fsync).",
            ),
            &shared.metrics.store_commit.snapshot(),
        )?;
        histogram(
            &mut e,
            (
                "event_loop_lag_seconds",
                "How late the event loop ran a timer due every 10 ms.",
            ),
            &shared.metrics.loop_lag.snapshot(),
        )?;
        gauge(
            &mut e,
            ("open_uploads", "Uploads staged and not yet finished."),
            i64::try_from(m.open_uploads).unwrap_or(i64::MAX),
        )?;
        if let Some(bytes) = resident_bytes() {
            gauge(
                &mut e,
                ("resident_memory_bytes", "Resident set size of the process."),
                i64::try_from(bytes).unwrap_or(i64::MAX),
            )?;
        }
        Ok(())
    }
}

/// The unlabelled counters of [`MetricsSnapshot`].
fn plain_counters(e: &mut DescriptorEncoder, m: &MetricsSnapshot) -> Result<(), std::fmt::Error> {
    for (family, n) in [
        (
            ("connections_accepted", "Connections admitted."),
            m.connections_accepted,
        ),
        (
            ("connections_refused", "Connections refused at accept."),
            m.connections_refused,
        ),
        (
            ("connections_closed", "Connections closed, for any reason."),
            m.connections_closed,
        ),
        (("frames_in", "Frames received and decoded."), m.frames_in),
        (("frames_out", "Reply frames queued."), m.frames_out),
        (("bytes_in", "Bytes read from clients."), m.bytes_in),
        (("bytes_out", "Bytes written to clients."), m.bytes_out),
        (
            ("rate_limited", "Requests refused by a rate limiter."),
            m.rate_limited,
        ),
        (("auth_ok", "Successful logins."), m.auth_ok),
        (("auth_failed", "Failed logins."), m.auth_failed),
        (
            ("permission_denied", "Requests for another user's item."),
            m.permission_denied,
        ),
        (
            (
                "unknown_ids",
                "Requests for an item id no item ever had (an enumeration past the end).",
            ),
            m.unknown_ids,
        ),
        (("timeouts", "Sessions ended by a time limit."), m.timeouts),
        (
            ("panics", "Connection tasks that panicked (contained)."),
            m.panics,
        ),
        (
            ("internal_errors", "Requests answered INTERNAL."),
            m.internal_errors,
        ),
        (
            ("items_delivered", "Items durably committed."),
            m.items_delivered,
        ),
        (
            ("accept_errors", "Errors from accept() itself."),
            m.accept_errors,
        ),
        (
            ("tls_handshakes", "TLS handshakes completed."),
            m.tls_handshakes,
        ),
        (
            ("tls_handshake_failures", "TLS handshakes that failed."),
            m.tls_handshake_failures,
        ),
        (
            (
                "tls_handshake_timeouts",
                "TLS handshakes cut at their time budget.",
            ),
            m.tls_handshake_timeouts,
        ),
        (
            (
                "tls_handshakes_capped",
                "Connections closed because the handshake caps were full.",
            ),
            m.tls_handshakes_capped,
        ),
        (
            (
                "tls_not_tls",
                "Connections to the TLS port that did not speak TLS.",
            ),
            m.tls_not_tls,
        ),
    ] {
        counter(e, family, n)?;
    }
    Ok(())
}

fn counter(e: &mut DescriptorEncoder, (name, help): Family, n: u64) -> Result<(), std::fmt::Error> {
    ConstCounter::new(n).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(e: &mut DescriptorEncoder, (name, help): Family, n: i64) -> Result<(), std::fmt::Error> {
    ConstGauge::new(n).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// A counter family with one label, one series per name of its vocabulary.
fn labelled(
    e: &mut DescriptorEncoder,
    (name, help): Family,
    label: &'static str,
    values: &std::collections::BTreeMap<&'static str, u64>,
) -> Result<(), std::fmt::Error> {
    let mut fm = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        ConstCounter::new(*n).encode(fm.encode_family(&[(label, *value)])?)?;
    }
    Ok(())
}

/// A latency histogram, in seconds as Prometheus names them.
fn histogram(
    e: &mut DescriptorEncoder,
    (name, help): Family,
    h: &LatencySnapshot,
) -> Result<(), std::fmt::Error> {
    let buckets: Vec<(f64, u64)> = h
        .buckets
        .iter()
        .map(|(bound, n)| (bound.map_or(f64::INFINITY, |us| us as f64 / 1e6), *n))
        .collect();
    let sum = h.sum_us as f64 / 1e6;
    e.encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, h.count, &buckets, None)
}

/// The process's resident set size from `/proc/self/statm` (pages, times the page size);
/// `None` where there is no such file (not Linux).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = rustix::param::page_size() as u64;
    pages.checked_mul(page)
}
