//! What a scenario run measures: legit operation records, live counters for the progress
//! display, the per-second timeline the HTML report plots, resident memory, and the final
//! [`ScenarioMetrics`] whose keys the JSON report promises.
//!
//! Latency is measured from each operation's *scheduled* time, not from when it was sent: a
//! client that falls behind because the server is slow reports that slowness instead of
//! hiding it (no coordinated omission).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The kinds of legit operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// SEND_MESSAGE.
    Message,
    /// SEND_MAIL, sometimes with one attachment.
    Mail,
    /// An upload and SEND_FILE.
    File,
    /// An inbox check: a LIST_INBOX page and a FETCH of its newest entry (`mix.read`).
    Read,
    /// A keepalive PING (`mix.ping`).
    Ping,
    /// A FETCH (the deliberate mistakes `stale_fetch_rate` and `wrong_id_rate`).
    Fetch,
    /// One exchange of a generic target's legit driver (`resp`, `http`, `line`, `script`).
    Request,
}

impl OpKind {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Message => "message",
            OpKind::Mail => "mail",
            OpKind::File => "file",
            OpKind::Read => "read",
            OpKind::Ping => "ping",
            OpKind::Fetch => "fetch",
            OpKind::Request => "request",
        }
    }
}

/// The outcome of one scheduled legit operation.
#[derive(Debug, Clone, PartialEq)]
pub struct OpRecord {
    /// What it was.
    pub kind: OpKind,
    /// When it was due, from the scenario start.
    pub scheduled: Duration,
    /// From `scheduled` to the acknowledgement; `None` if never acknowledged.
    pub latency: Option<Duration>,
    /// Why it failed (a server error code name, `timeout`, `closed`, `missed`...).
    pub error: Option<String>,
}

impl OpRecord {
    /// Acknowledged within `slo` of its scheduled time.
    pub fn delivered(&self, slo: Duration) -> bool {
        self.latency.is_some_and(|l| l <= slo)
    }

    /// Notes that the operation due at `due_at` was acknowledged now: its latency, and
    /// `late` if that is past `slo`.
    pub fn acknowledged(&mut self, due_at: tokio::time::Instant, slo: Duration) {
        let latency = tokio::time::Instant::now().saturating_duration_since(due_at);
        self.latency = Some(latency);
        if latency > slo {
            self.error = Some("late".into());
        }
    }
}

/// Counters shared by the runner's tasks and read by the progress display.
#[derive(Debug, Default)]
pub struct LiveCounters {
    /// Legit operations whose scheduled time has come.
    pub legit_attempted: AtomicU64,
    /// Legit operations acknowledged within the latency SLO.
    pub legit_delivered: AtomicU64,
    /// Legit operations that failed or were acknowledged late.
    pub legit_failed: AtomicU64,
}

impl LiveCounters {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Significant decimal digits [`Latencies`] keeps: every value within 0.1%.
const SIGNIFICANT_DIGITS: u8 = 3;

/// The longest duration [`Latencies`] tells apart, in microseconds (an hour); longer ones are
/// recorded as this. Bounds the histogram at about 190 KiB.
const MAX_RECORDED_US: u64 = 3_600_000_000;

/// Durations (latencies, times to block) and their quantiles, the one definition every
/// report uses: `rampart load` and the scenario reports, totals and timeline buckets alike.
///
/// Durations are recorded in whole microseconds in an HdrHistogram with three significant
/// digits. The quantile `q` is the nearest rank (the smallest recorded value with at least
/// `q` of all values at or below it, at least the first), read as the highest value of its
/// histogram bucket: exact below 2.048 ms, never below the exact value and at most 0.1%
/// above it. With no value recorded, every quantile is 0.
#[derive(Debug, Clone)]
pub struct Latencies {
    /// `None` only if hdrhistogram refused the bounds above, which it accepts (a test checks);
    /// nothing is recorded then.
    histogram: Option<Histogram<u64>>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            histogram: Histogram::new_with_max(MAX_RECORDED_US, SIGNIFICANT_DIGITS).ok(),
        }
    }
}

impl Latencies {
    /// No duration recorded yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `d`, in whole microseconds (longer than an hour counts as an hour).
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if let Some(h) = &mut self.histogram {
            h.saturating_record(us);
        }
    }

    /// How many durations were recorded.
    pub fn len(&self) -> u64 {
        self.histogram.as_ref().map_or(0, Histogram::len)
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The quantile `q` (0..=1), as defined above; `None` when nothing was recorded.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let h = self.histogram.as_ref().filter(|h| !h.is_empty())?;
        Some(Duration::from_micros(h.value_at_quantile(q)))
    }

    /// The quantile `q` (0..=1) in milliseconds; 0 when nothing was recorded.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        // Whole microseconds over 1000, so 500223 µs is exactly the float 500.223.
        self.quantile(q)
            .map_or(0.0, |d| d.as_micros() as f64 / 1000.0)
    }
}

impl FromIterator<Duration> for Latencies {
    fn from_iter<I: IntoIterator<Item = Duration>>(durations: I) -> Self {
        let mut latencies = Latencies::new();
        for d in durations {
            latencies.record(d);
        }
        latencies
    }
}

/// An attack's active window, for shading plots.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AttackWindow {
    /// The attack kind.
    pub kind: String,
    /// Start, seconds from the scenario start.
    pub start_s: f64,
    /// Stop, seconds from the scenario start.
    pub stop_s: f64,
}

/// Per-second series for the HTML report (index `i` covers `[i, i+1)` seconds).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Timeline {
    /// Bucket width in seconds (always 1).
    pub bucket_s: f64,
    /// Legit operations scheduled in the bucket.
    pub attempted: Vec<u64>,
    /// Of those, delivered within the SLO.
    pub delivered: Vec<u64>,
    /// delivered / attempted, 1 for an empty bucket.
    pub goodput: Vec<f64>,
    /// Median latency of the bucket's acknowledged operations, ms (0 if none).
    pub latency_p50_ms: Vec<f64>,
    /// 99th percentile latency of the bucket's acknowledged operations, ms (0 if none).
    pub latency_p99_ms: Vec<f64>,
    /// Resident memory samples: (seconds from the scenario start, MiB).
    pub rss_mb: Vec<(f64, f64)>,
    /// When each attack ran.
    pub attack_windows: Vec<AttackWindow>,
    /// Attack sources blocked so far, sampled: (seconds, count).
    pub blocked_sources: Vec<(f64, u64)>,
    /// The stall detector, once a second (in-process servers only; empty otherwise).
    pub stalls: Vec<StallPoint>,
}

/// The longest waits inside the server during the second before `t_s`: where a latency
/// spike came from (a starved event loop, a slow store commit, a slow activity commit).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct StallPoint {
    /// Seconds from the scenario start at which the sample was taken.
    pub t_s: f64,
    /// Longest event-loop lag past a 10 ms timer, ms.
    pub loop_lag_ms: f64,
    /// Longest store delivery a session waited for (group commit and fsync included), ms.
    pub delivery_ms: f64,
    /// Longest activity-database commit (with any checkpoint it ran), ms.
    pub activity_commit_ms: f64,
}

impl Timeline {
    /// Buckets `records` per second of scheduled time over `duration`.
    pub fn from_records(records: &[OpRecord], duration: Duration, slo: Duration) -> Timeline {
        let buckets = (duration.as_secs_f64().ceil() as usize).max(1);
        let mut attempted = vec![0u64; buckets];
        let mut delivered = vec![0u64; buckets];
        let mut latencies: Vec<Vec<Duration>> = vec![Vec::new(); buckets];
        for r in records {
            let i = (r.scheduled.as_secs_f64() as usize).min(buckets - 1);
            attempted[i] += 1;
            if r.delivered(slo) {
                delivered[i] += 1;
            }
            if let Some(l) = r.latency {
                latencies[i].push(l);
            }
        }
        let mut p50 = Vec::with_capacity(buckets);
        let mut p99 = Vec::with_capacity(buckets);
        // One histogram at a time: a run has a bucket per second.
        for l in latencies {
            let l: Latencies = l.into_iter().collect();
            p50.push(l.quantile_ms(0.50));
            p99.push(l.quantile_ms(0.99));
        }
        let goodput = attempted
            .iter()
            .zip(&delivered)
            .map(|(&a, &d)| if a == 0 { 1.0 } else { d as f64 / a as f64 })
            .collect();
        Timeline {
            bucket_s: 1.0,
            attempted,
            delivered,
            goodput,
            latency_p50_ms: p50,
            latency_p99_ms: p99,
            rss_mb: Vec::new(),
            attack_windows: Vec::new(),
            blocked_sources: Vec::new(),
            stalls: Vec::new(),
        }
    }
}

/// A duration in milliseconds as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Rounds to `digits` decimals, so reports do not print float noise.
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// One attack's measurements.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AttackMetrics {
    /// The kind.
    pub kind: String,
    /// Start of its window, seconds.
    pub start_s: f64,
    /// Distinct sources it connected from.
    pub sources_used: u64,
    /// Of those, refused at accept at some point.
    pub sources_blocked: u64,
    /// Slowest time to block among its blocked sources, seconds after `start_s` (or after a
    /// source's first use, if that came later).
    pub time_to_block_max_s: Option<f64>,
    /// Median time to block among its blocked sources.
    pub time_to_block_p50_s: Option<f64>,
    /// For the kinds that act as ordinary users before they attack (evasion, low-and-slow,
    /// tamper: [`crate::attack::AttackKind::reports_first_attack`]), how many of its sources
    /// were blocked before their first attacking frame, or without ever sending one: blocks
    /// earned by behaving like a user, which the datasets label benign. `None` for the
    /// other kinds, which attack from their first frame.
    pub sources_blocked_before_attacking: Option<u64>,
    /// Connection attempts.
    pub connects: u64,
    /// Connections refused at accept (closed with no byte, or one BUSY).
    pub refused: u64,
    /// Frames (or raw writes) sent.
    pub frames_sent: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Planted secrets seen in what the server sent this attacker.
    pub canary_leaks: u64,
    /// The attacker's own remarks.
    pub notes: Vec<String>,
}

/// The numbers of one scenario run. The first fourteen fields are the JSON report's
/// contract, the keys every report carries; the rest are extras.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct ScenarioMetrics {
    /// Legit operations scheduled during the run.
    pub legit_attempted: u64,
    /// Of those, acknowledged within `expect.latency_slo_ms` of their scheduled time.
    pub legit_delivered: u64,
    /// `legit_delivered / legit_attempted` (1 when nothing was attempted).
    pub legit_goodput: f64,
    /// Acknowledged items that could not be read back intact by their recipient afterwards.
    pub legit_lost: u64,
    /// Median latency of acknowledged legit operations, ms, from their scheduled time.
    pub latency_p50_ms: f64,
    /// 99th percentile of the same.
    pub latency_p99_ms: f64,
    /// Distinct sources the attacks connected from.
    pub attack_sources: u64,
    /// Of those, refused at accept (blocked, or turned away) at some point.
    pub blocked_sources: u64,
    /// Slowest time to block over the blocked attack sources, seconds after their attack's
    /// start (or after a source's first use, if that came later); `null` if none was blocked.
    pub time_to_block_s: Option<f64>,
    /// Legit sources that were ever blocked (those no attacker shares), plus legit users in
    /// good standing locked out at a source an attacker shares.
    pub false_blocks: u64,
    /// A fresh client could log in and PING after the run.
    pub server_alive: bool,
    /// Largest resident memory sampled, MiB; `null` if it could not be read (an external
    /// server whose process was not found).
    pub peak_rss_mb: Option<f64>,
    /// Connection tasks that panicked and were contained; `null` for an external server.
    pub panics_contained: Option<u64>,
    /// Planted secrets that reached an attacker.
    pub canary_leaks: u64,

    /// Resident memory when the load started, MiB (after setup and logins).
    pub rss_start_mb: Option<f64>,
    /// `peak_rss_mb - rss_start_mb`: what the run itself added, free of setup and of earlier
    /// scenarios in the same process.
    pub rss_growth_mb: Option<f64>,
    /// Legit operations acknowledged at all (late ones included).
    pub legit_acknowledged: u64,
    /// Logins of legit clients during the run (reconnections and `relogin_every_s`; the
    /// logins before the load starts are not counted).
    pub legit_logins: u64,
    /// Of those, the ones that did not end in AUTH_OK (refused, failed or cut).
    pub legit_login_refusals: u64,
    /// Legit failures by reason (server error code, `timeout`, `closed`, `late`, `missed`).
    pub legit_errors: BTreeMap<String, u64>,
    /// Legit operations per kind: (attempted, delivered).
    pub legit_by_kind: BTreeMap<String, (u64, u64)>,
    /// The first lost items, with why.
    pub lost_items: Vec<String>,
    /// Legit sources that were blocked (those no attacker shares).
    pub false_blocked_sources: Vec<String>,
    /// Legit users in good standing (logged in at least once) at a source an attacker
    /// shares, who were later told `blocked` (a reply, or a refused login).
    pub false_blocked_users: Vec<String>,
    /// Honest refusals of the legit clients' deliberate mistakes, by kind (`typo`,
    /// `stale_password`, `stale_fetch`, `wrong_id`, `unknown_recipient`): counted as
    /// delivered operations, never as errors or lost items.
    pub legit_mistakes: BTreeMap<String, u64>,
    /// What the peak RSS covers.
    pub rss_scope: String,
    /// Frames the server rejected, by reason (decode errors, rate limits, ...); `null` for
    /// an external server.
    pub frames_rejected: Option<BTreeMap<String, u64>>,
    /// Connections the server refused at accept; `null` for an external server.
    pub connections_refused: Option<u64>,
    /// Connections the server accepted; `null` for an external server.
    pub connections_accepted: Option<u64>,
    /// Why the server-alive check failed, if it did.
    pub server_alive_error: Option<String>,
    /// The detection model the server scored windows with (`default` for the one built
    /// from datasets/, a file name, `none`, or `external` for a server the runner did not
    /// start).
    pub model: String,
    /// Activity windows the model scored; `null` without an in-process model.
    pub model_windows: Option<u64>,
    /// Of those, windows it found anomalous.
    pub model_anomalies: Option<u64>,
    /// Of those, anomalies that never reached the firewall because the detector's queue was
    /// full; `null` without an in-process model.
    pub model_shed: Option<u64>,
    /// Of those, anomalies dropped before the queue because their source was already
    /// blocked (`enforce` mode); `null` without an in-process model.
    pub model_already_blocked: Option<u64>,
    /// Of those, anomalies dropped before the queue because the source sent nothing in the
    /// window and opened and held at most one connection (a health check); `null` without an
    /// in-process model.
    pub model_silent: Option<u64>,
    /// Blocks whose score included model anomalies (the model contributed to the decision);
    /// `null` without an in-process model.
    pub model_blocks: Option<u64>,
    /// Activity events the recorder committed; `null` for an external server.
    pub recorder_recorded: Option<u64>,
    /// Activity events the recorder shed because its channel was full; `null` for an
    /// external server.
    pub recorder_shed: Option<u64>,
    /// Per attack.
    pub attacks: Vec<AttackMetrics>,
    /// The target has no firewall to ask (a `tcp://` target): the block metrics
    /// (`blocked_sources`, `time_to_block_s`, `false_blocks` and each attack's
    /// `sources_blocked` and times to block) mean nothing. Reports print them as `n/a`, and
    /// the JSON report (through [`ScenarioMetrics::to_json_value`]) as `null`.
    #[serde(skip)]
    pub blocks_unknown: bool,
    /// A fleet run's own numbers (`servers` above 1); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<super::fleet::FleetMetrics>,
}

/// The block metrics [`ScenarioMetrics::to_json_value`] writes as `null` for a target
/// without a firewall, and the same keys of each attack.
const BLOCK_KEYS: [&str; 5] = [
    "blocked_sources",
    "time_to_block_s",
    "false_blocks",
    "false_blocked_sources",
    "false_blocked_users",
];
const ATTACK_BLOCK_KEYS: [&str; 3] = [
    "sources_blocked",
    "time_to_block_max_s",
    "time_to_block_p50_s",
];

impl ScenarioMetrics {
    /// The metrics as JSON: the serialized fields, with the block metrics `null` when
    /// [`ScenarioMetrics::blocks_unknown`].
    pub fn to_json_value(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if self.blocks_unknown {
            if let Some(map) = v.as_object_mut() {
                for k in BLOCK_KEYS {
                    map.insert(k.into(), serde_json::Value::Null);
                }
                if let Some(attacks) = map.get_mut("attacks").and_then(|a| a.as_array_mut()) {
                    for a in attacks.iter_mut().filter_map(|a| a.as_object_mut()) {
                        for k in ATTACK_BLOCK_KEYS {
                            a.insert(k.into(), serde_json::Value::Null);
                        }
                    }
                }
            }
        }
        v
    }

    /// `n/a` for a target without a firewall, else `shown`.
    pub fn block_text(&self, shown: impl FnOnce() -> String) -> String {
        if self.blocks_unknown {
            "n/a".into()
        } else {
            shown()
        }
    }
}

/// Serializes [`ScenarioMetrics`] through [`ScenarioMetrics::to_json_value`], for
/// `#[serde(serialize_with)]`.
pub fn serialize_metrics<S: serde::Serializer>(
    m: &ScenarioMetrics,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    m.to_json_value().serialize(serializer)
}

/// Resident memory of a process in MiB, from `/proc/<pid>/status` (VmRSS); `None` for this
/// process when `pid` is `None`. Linux only; `None` elsewhere or if unreadable.
pub fn rss_mb(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_string(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// The process that listens on `addr` (IPv4 loopback, Linux): the socket's inode from
/// `/proc/net/tcp`, then the process holding it among `/proc/*/fd`. Used to sample an
/// external server's memory; `None` if not found or not permitted.
pub fn find_listener_pid(addr: SocketAddr) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = format!("{:04X}", addr.port());
    let inode = table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let local = cols.get(1)?;
        let state = cols.get(3)?;
        let (_, p) = local.split_once(':')?;
        // 0A is TCP_LISTEN.
        (p == port && *state == "0A").then(|| cols.get(9).map(|s| s.to_string()))?
    })?;
    let needle = format!("socket:[{inode}]");
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids.into_iter().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| {
                fds.filter_map(Result::ok).any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == needle.as_str())
                })
            })
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(sched_ms: u64, latency_ms: Option<u64>) -> OpRecord {
        OpRecord {
            kind: OpKind::Message,
            scheduled: Duration::from_millis(sched_ms),
            latency: latency_ms.map(Duration::from_millis),
            error: None,
        }
    }

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn quantiles_are_nearest_rank_and_exact_below_2_ms() {
        let l: Latencies = (1..=1000).map(us).collect();
        assert_eq!(l.len(), 1000);
        assert_eq!(l.quantile(0.0), Some(us(1)));
        assert_eq!(l.quantile(0.5), Some(us(500)));
        assert_eq!(l.quantile(0.99), Some(us(990)));
        assert_eq!(l.quantile(0.999), Some(us(999)));
        assert_eq!(l.quantile(1.0), Some(us(1000)));
        assert_eq!(l.quantile_ms(0.5), 0.5);
        let one: Latencies = [us(700)].into_iter().collect();
        assert_eq!(one.quantile(0.99), Some(us(700)));
        let none = Latencies::new();
        assert!(none.is_empty());
        assert_eq!(none.quantile(0.5), None);
        assert_eq!(none.quantile_ms(0.5), 0.0);
    }

    #[test]
    fn quantiles_are_at_most_a_thousandth_above_the_value_and_never_below() {
        for v in [
            2_048,
            2_049,
            99_999,
            500_000,
            1_234_567,
            59_999_999,
            3_600_000_000,
        ] {
            let l: Latencies = [us(v)].into_iter().collect();
            let q = l.quantile(0.5).map_or(0, |d| d.as_micros() as u64);
            assert!(q >= v && q - v <= v / 1000, "{v} µs read as {q}");
        }
        // Beyond an hour counts as an hour.
        let l: Latencies = [Duration::from_secs(7200)].into_iter().collect();
        let q = l.quantile(1.0).map_or(0, |d| d.as_micros() as u64);
        assert!(
            q >= MAX_RECORDED_US && q - MAX_RECORDED_US <= MAX_RECORDED_US / 1000,
            "{q}"
        );
    }

    #[test]
    fn timeline_buckets_by_scheduled_time() {
        let slo = Duration::from_millis(100);
        let records = [
            rec(100, Some(10)),
            rec(900, Some(500)),
            rec(1500, None),
            rec(2999, Some(20)),
        ];
        let t = Timeline::from_records(&records, Duration::from_secs(3), slo);
        assert_eq!(t.attempted, vec![2, 1, 1]);
        assert_eq!(t.delivered, vec![1, 0, 1]);
        assert_eq!(t.goodput, vec![0.5, 0.0, 1.0]);
        // 500 ms and 20 ms read as the tops of their histogram buckets, 0.045% and 0.075%
        // above.
        assert_eq!(t.latency_p99_ms, vec![500.223, 0.0, 20.015]);
    }

    #[test]
    fn own_rss_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(rss_mb(None).is_some_and(|mb| mb > 0.0));
        }
    }

    #[test]
    fn finds_its_own_listener() -> std::io::Result<()> {
        if !cfg!(target_os = "linux") {
            return Ok(());
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let pid = find_listener_pid(listener.local_addr()?);
        assert_eq!(pid, Some(std::process::id()));
        Ok(())
    }
}
