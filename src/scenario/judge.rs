//! From what a run collected to its verdict: `measure` sums the records, samples and
//! counters up into [`ScenarioMetrics`] and a [`Timeline`], and [`judge`] turns every broken
//! expectation into one line. Both are pure: no socket, no clock, no server, so they are
//! tested on made-up data.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::legit;
use super::metrics::{
    round, AttackMetrics, AttackWindow, Latencies, OpRecord, ScenarioMetrics, StallPoint, Timeline,
};
use super::runner::ATTACK_GRACE;
use super::spec::Scenario;
use crate::activity::RecorderStats;
use crate::attack::{AttackReport, Observations};
use crate::server::{DetectionStats, MetricsSnapshot};

/// State the sampler collects while the scenario runs.
#[derive(Default)]
pub(super) struct Sampled {
    /// First time (since t0) the guard reported each attack source blocked.
    pub(super) first_blocked: BTreeMap<IpAddr, Duration>,
    /// In a fleet run, the same for each server's guard, by server index.
    pub(super) fleet_first_blocked: Vec<BTreeMap<IpAddr, Duration>>,
    /// When the sampler took its last sample, since t0.
    pub(super) last_sample: Duration,
    /// Legit sources the guard ever reported blocked.
    pub(super) false_blocked: BTreeSet<Ipv4Addr>,
    /// Resident memory samples: (seconds since t0, MiB).
    pub(super) rss: Vec<(f64, f64)>,
    /// Attack sources blocked or refused so far: (seconds since t0, count).
    pub(super) blocked_series: Vec<(f64, u64)>,
    /// The stall detector's maxima, once a second.
    pub(super) stalls: Vec<StallPoint>,
}

/// The first refusal at accept that showed a block (not a BUSY: see
/// [`Observations::first_block_seen`]) of each source, over all attacks.
pub(super) fn refused_sources(observations: &[Arc<Observations>]) -> BTreeMap<IpAddr, Duration> {
    let mut all = BTreeMap::new();
    for o in observations {
        let map = o
            .first_block_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (ip, t) in map.iter() {
            let e = all.entry(*ip).or_insert(*t);
            if *t < *e {
                *e = *t;
            }
        }
    }
    all
}

/// What an in-process server counted, taken just before it shuts down.
pub(super) struct ServerStats {
    pub(super) metrics: MetricsSnapshot,
    pub(super) detection: Option<DetectionStats>,
    /// Block decisions the model's anomalies contributed to.
    pub(super) model_blocks: u64,
    pub(super) recorder: RecorderStats,
}

/// Everything a run collected, before it is summed up.
pub(super) struct Collected<'a> {
    pub(super) scenario: &'a Scenario,
    pub(super) records: Vec<OpRecord>,
    pub(super) acknowledged: u64,
    /// Legit logins during the run, and how many of them were refused.
    pub(super) logins: (u64, u64),
    pub(super) attack_reports: Vec<Option<AttackReport>>,
    pub(super) observations: Vec<Arc<Observations>>,
    pub(super) sampled: Sampled,
    pub(super) verification: legit::Verification,
    pub(super) alive: Result<(), String>,
    pub(super) snapshot: Option<ServerStats>,
    pub(super) in_process: bool,
    pub(super) pid: Option<u32>,
    pub(super) refused_legit: BTreeSet<Ipv4Addr>,
    /// Legit sources an attack also uses.
    pub(super) shared_sources: BTreeSet<Ipv4Addr>,
    /// Legit users in good standing who were told `blocked`, with their source.
    pub(super) locked_out: Vec<(String, Ipv4Addr)>,
    /// Honest refusals of deliberate mistakes, by kind.
    pub(super) mistakes: BTreeMap<String, u64>,
    /// The in-process server's model, by name.
    pub(super) model: Option<String>,
    /// A fleet run's own numbers (`servers` above 1).
    pub(super) fleet: Option<super::fleet::FleetMetrics>,
}

/// Sums up what a run collected into the report's numbers and its timeline.
pub(super) fn measure(j: Collected<'_>) -> (ScenarioMetrics, Timeline) {
    let s = j.scenario;
    let slo = s.expect().latency_slo;
    let mut m = ScenarioMetrics {
        legit_attempted: j.records.len() as u64,
        legit_delivered: j.records.iter().filter(|r| r.delivered(slo)).count() as u64,
        legit_acknowledged: j.acknowledged,
        legit_logins: j.logins.0,
        legit_login_refusals: j.logins.1,
        ..ScenarioMetrics::default()
    };
    m.legit_goodput = if m.legit_attempted == 0 {
        1.0
    } else {
        round(m.legit_delivered as f64 / m.legit_attempted as f64, 4)
    };
    let latencies: Latencies = j.records.iter().filter_map(|r| r.latency).collect();
    m.latency_p50_ms = round(latencies.quantile_ms(0.50), 2);
    m.latency_p99_ms = round(latencies.quantile_ms(0.99), 2);
    for r in &j.records {
        if let Some(e) = &r.error {
            *m.legit_errors.entry(e.clone()).or_insert(0) += 1;
        }
        let e = m
            .legit_by_kind
            .entry(r.kind.as_str().to_string())
            .or_insert((0, 0));
        e.0 += 1;
        if r.delivered(slo) {
            e.1 += 1;
        }
    }
    m.legit_lost = j.verification.lost;
    m.lost_items = j.verification.lost_items;
    m.fleet = j.fleet;

    // Blocks: in-process, the sources the guard reported blocked, from the earlier of that
    // report and the attacker's first refusal showing a block; against an external server,
    // the attacker's refusals showing a block. A BUSY refusal (a connection cap, the
    // accept rate) is no block.
    let mut used_all = BTreeSet::new();
    let mut blocked_all = BTreeSet::new();
    let mut slowest: Option<f64> = None;
    for (i, attack) in s.attacks().iter().enumerate() {
        let obs = j.observations.get(i);
        let refused = obs
            .map(|o| refused_sources(std::slice::from_ref(o)))
            .unwrap_or_default();
        let report = j.attack_reports.get(i).cloned().flatten();
        let used: BTreeSet<IpAddr> = report
            .as_ref()
            .map(|r| r.sources_used.iter().copied().collect())
            .unwrap_or_default();
        // A source first used after the attack started (more sources than connections: it
        // waits for a slot that a blocked source gives up) counts from its first use.
        let first_used = obs
            .map(|o| {
                o.first_used
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
            })
            .unwrap_or_default();
        // For the kinds that act as users first: when each source began to attack.
        let first_attack = obs
            .filter(|_| attack.kind().reports_first_attack())
            .map(|o| {
                o.first_attack
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
            });
        let mut before_attacking = 0u64;
        let mut times = Vec::new();
        for ip in &used {
            let guard = j.sampled.first_blocked.get(ip);
            let first = if j.in_process && guard.is_none() {
                None
            } else {
                [guard, refused.get(ip)].into_iter().flatten().min()
            };
            if let (Some(t), Some(attacked)) = (first, &first_attack) {
                if attacked.get(ip).map_or(true, |a| t < a) {
                    before_attacking += 1;
                }
            }
            if let Some(t) = first {
                let from = first_used
                    .get(ip)
                    .map_or(attack.start(), |u| attack.start().max(*u));
                times.push(t.saturating_sub(from));
                blocked_all.insert(*ip);
            }
        }
        used_all.extend(used.iter().copied());
        // Exact, since it is judged against `blocked_within_s`.
        let max = times.iter().max().map(Duration::as_secs_f64);
        if let Some(t) = max {
            slowest = Some(slowest.map_or(t, |s: f64| s.max(t)));
        }
        let load = |f: fn(&Observations) -> u64| obs.map(|o| f(o)).unwrap_or(0);
        let mut notes = report.as_ref().map(|r| r.notes.clone()).unwrap_or_default();
        if report.is_none() {
            notes.push(format!(
                "did not return within {} s of the end and was aborted",
                ATTACK_GRACE.as_secs()
            ));
        }
        let leaks = report
            .as_ref()
            .map_or(0, |r| r.canary_leaks)
            .max(load(|o| o.canary_leaks.load(Ordering::Relaxed)));
        m.canary_leaks += leaks;
        m.attacks.push(AttackMetrics {
            kind: attack.kind().as_str().to_string(),
            start_s: round(attack.start().as_secs_f64(), 3),
            sources_used: used.len() as u64,
            sources_blocked: times.len() as u64,
            time_to_block_max_s: max.map(|t| round(t, 3)),
            time_to_block_p50_s: times
                .iter()
                .copied()
                .collect::<Latencies>()
                .quantile(0.5)
                .map(|t| round(t.as_secs_f64(), 3)),
            sources_blocked_before_attacking: first_attack.as_ref().map(|_| before_attacking),
            connects: report
                .as_ref()
                .map_or(0, |r| r.connects)
                .max(load(|o| o.connects.load(Ordering::Relaxed))),
            refused: report
                .as_ref()
                .map_or(0, |r| r.refused)
                .max(load(|o| o.refused.load(Ordering::Relaxed))),
            frames_sent: report
                .as_ref()
                .map_or(0, |r| r.frames_sent)
                .max(load(|o| o.frames_sent.load(Ordering::Relaxed))),
            bytes_sent: report
                .as_ref()
                .map_or(0, |r| r.bytes_sent)
                .max(load(|o| o.bytes_sent.load(Ordering::Relaxed))),
            canary_leaks: leaks,
            notes,
        });
    }
    m.attack_sources = used_all.len() as u64;
    m.blocked_sources = blocked_all.len() as u64;
    m.time_to_block_s = slowest.map(|t| round(t, 3));

    m.legit_mistakes = j.mistakes;
    let (false_blocked, false_users) = false_blocks(
        &j.sampled.false_blocked,
        if j.in_process {
            None
        } else {
            Some(&j.refused_legit)
        },
        &j.shared_sources,
        &j.locked_out,
    );
    m.false_blocks = (false_blocked.len() + false_users.len()) as u64;
    m.false_blocked_sources = false_blocked.iter().map(Ipv4Addr::to_string).collect();
    m.false_blocked_users = false_users;

    m.server_alive = j.alive.is_ok();
    m.server_alive_error = j.alive.err();

    // Only the samples taken while the scenario ran: afterwards the server is shut down.
    let rss = j.sampled.rss.clone();
    m.peak_rss_mb = rss.iter().map(|(_, mb)| *mb).reduce(f64::max);
    m.rss_start_mb = rss.first().map(|(_, mb)| *mb);
    m.rss_growth_mb = m
        .peak_rss_mb
        .zip(m.rss_start_mb)
        .map(|(peak, start)| round(peak - start, 2));
    m.rss_scope = match (j.in_process, j.pid) {
        (true, _) => {
            "runner process: in-process server, legit clients and attackers together".into()
        }
        (false, Some(pid)) => format!("external server process {pid}"),
        (false, None) => "unavailable: the external server's process was not found".into(),
    };

    m.model = match (&j.snapshot, &j.model) {
        (None, _) => "external".into(),
        (Some(_), None) => "none".into(),
        (Some(_), Some(name)) => name.clone(),
    };
    if let Some(stats) = &j.snapshot {
        m.model_windows = stats.detection.map(|d| d.windows);
        m.model_anomalies = stats.detection.map(|d| d.anomalies);
        m.model_shed = stats.detection.map(|d| d.shed);
        m.model_already_blocked = stats.detection.map(|d| d.already_blocked);
        m.model_silent = stats.detection.map(|d| d.silent);
        m.model_blocks = stats.detection.map(|_| stats.model_blocks);
        m.recorder_recorded = Some(stats.recorder.recorded);
        m.recorder_shed = Some(stats.recorder.shed);
    }
    if let Some(snap) = j.snapshot.as_ref().map(|s| &s.metrics) {
        let mut rejected: BTreeMap<String, u64> = snap
            .decode_errors
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (k.to_string(), *n))
            .collect();
        for (k, n) in [
            ("rate_limited", snap.rate_limited),
            ("permission_denied", snap.permission_denied),
            ("auth_failed", snap.auth_failed),
            ("timeouts", snap.timeouts),
        ] {
            if n > 0 {
                rejected.insert(k.to_string(), n);
            }
        }
        m.frames_rejected = Some(rejected);
        m.connections_refused = Some(snap.connections_refused);
        m.connections_accepted = Some(snap.connections_accepted);
        m.panics_contained = Some(snap.panics);
    }

    let mut timeline = Timeline::from_records(&j.records, s.duration(), slo);
    timeline.rss_mb = rss;
    timeline.blocked_sources = j.sampled.blocked_series;
    timeline.stalls = j.sampled.stalls;
    timeline.attack_windows = s
        .attacks()
        .iter()
        .map(|a| AttackWindow {
            kind: a.kind().as_str().to_string(),
            start_s: round(a.start().as_secs_f64(), 3),
            stop_s: round(a.stop().min(s.duration()).as_secs_f64(), 3),
        })
        .collect();
    (m, timeline)
}

/// False blocks: a blocked legit source no attacker shares (seen blocked by the guard, or,
/// for an external server, refused at accept) is one; at a source an attacker shares, the
/// block is earned, and each legit user in good standing who was locked out there is one
/// instead. Returns the falsely blocked sources and users, sorted.
fn false_blocks(
    seen_blocked: &BTreeSet<Ipv4Addr>,
    refused: Option<&BTreeSet<Ipv4Addr>>,
    shared: &BTreeSet<Ipv4Addr>,
    locked_out: &[(String, Ipv4Addr)],
) -> (BTreeSet<Ipv4Addr>, Vec<String>) {
    let sources: BTreeSet<Ipv4Addr> = seen_blocked
        .iter()
        .chain(refused.into_iter().flatten())
        .filter(|ip| !shared.contains(ip))
        .copied()
        .collect();
    let mut users: Vec<String> = locked_out
        .iter()
        .filter(|(_, ip)| shared.contains(ip))
        .map(|(user, _)| user.clone())
        .collect();
    users.sort();
    users.dedup();
    (sources, users)
}

/// Turns every broken expectation into one line, e.g.
/// `legit_goodput 0.91 < legit_goodput_min 0.95`.
pub fn judge(scenario: &Scenario, m: &ScenarioMetrics) -> Vec<String> {
    let e = scenario.expect();
    let mut f = Vec::new();
    if e.server_alive && !m.server_alive {
        f.push(format!(
            "server_alive false, expected true ({})",
            m.server_alive_error.as_deref().unwrap_or("no answer")
        ));
    }
    if let Some(min) = e.legit_goodput_min {
        if m.legit_attempted == 0 {
            f.push(format!("legit_goodput cannot be judged: no legit operation was attempted (legit_goodput_min {min})"));
        } else if m.legit_goodput < min {
            f.push(format!(
                "legit_goodput {} < legit_goodput_min {min}",
                m.legit_goodput
            ));
        }
    }
    if let Some(max) = e.latency_p99_ms_max {
        if m.latency_p99_ms > max {
            f.push(format!(
                "latency_p99_ms {} > latency_p99_ms_max {max}",
                m.latency_p99_ms
            ));
        }
    }
    if m.legit_lost > e.legit_lost_max {
        let first = m
            .lost_items
            .first()
            .map(|s| format!(" (first: {s})"))
            .unwrap_or_default();
        f.push(format!(
            "legit_lost {} > legit_lost_max {}{first}",
            m.legit_lost, e.legit_lost_max
        ));
    }
    if let (Some(within), true) = (e.blocked_within_s, m.blocks_unknown) {
        f.push(format!(
            "blocked_within_s {within} cannot be judged: the target has no firewall to ask"
        ));
    } else if let Some(within) = e.blocked_within_s {
        for a in &m.attacks {
            let Some(kind) = scenario
                .attacks()
                .iter()
                .map(|x| x.kind())
                .find(|k| k.as_str() == a.kind)
            else {
                continue;
            };
            if !e.blocked_kinds.contains(&kind) {
                continue;
            }
            if a.sources_used == 0 {
                f.push(format!(
                    "{}: used no source, so blocked_within_s {within} cannot be judged",
                    a.kind
                ));
            } else if a.sources_blocked < a.sources_used {
                f.push(format!(
                    "{}: {} of {} sources never blocked (blocked_within_s {within})",
                    a.kind,
                    a.sources_used - a.sources_blocked,
                    a.sources_used
                ));
            } else if let Some(t) = a.time_to_block_max_s.filter(|t| *t > within) {
                f.push(format!(
                    "{}: time_to_block {t} s > blocked_within_s {within}",
                    a.kind
                ));
            }
        }
    }
    if let Some(max) = e.legit_login_refusals_max {
        if m.legit_login_refusals > max {
            f.push(format!(
                "legit_login_refusals {} > legit_login_refusals_max {max} (of {} logins)",
                m.legit_login_refusals, m.legit_logins
            ));
        }
    }
    if m.false_blocks > e.false_blocks_max {
        let who: Vec<&str> = m
            .false_blocked_sources
            .iter()
            .chain(&m.false_blocked_users)
            .map(String::as_str)
            .collect();
        f.push(format!(
            "false_blocks {} > false_blocks_max {} ({})",
            m.false_blocks,
            e.false_blocks_max,
            who.join(", ")
        ));
    }
    if let Some(max) = e.blocked_before_attacking_max {
        let early: Vec<(&str, u64)> = m
            .attacks
            .iter()
            .filter_map(|a| {
                let n = a.sources_blocked_before_attacking.filter(|n| *n > 0)?;
                Some((a.kind.as_str(), n))
            })
            .collect();
        let total: u64 = early.iter().map(|(_, n)| n).sum();
        if total > max {
            let who: Vec<String> = early.iter().map(|(k, n)| format!("{k} {n}")).collect();
            f.push(format!(
                "blocked_before_attacking {total} > blocked_before_attacking_max {max} ({})",
                who.join(", ")
            ));
        }
    }
    if let Some(max) = e.peak_rss_mb_max {
        match m.peak_rss_mb {
            Some(peak) if peak > max => {
                f.push(format!("peak_rss_mb {peak} > peak_rss_mb_max {max}"))
            }
            Some(_) => {}
            None => f.push(format!(
                "peak_rss_mb unavailable, cannot check peak_rss_mb_max {max}"
            )),
        }
    }
    if let Some(max) = e.rss_growth_mb_max {
        match m.rss_growth_mb {
            Some(growth) if growth > max => {
                f.push(format!("rss_growth_mb {growth} > rss_growth_mb_max {max}"))
            }
            Some(_) => {}
            None => f.push(format!(
                "rss_growth_mb unavailable, cannot check rss_growth_mb_max {max}"
            )),
        }
    }
    if let Some(p) = m.panics_contained.filter(|p| *p > e.max_panics) {
        f.push(format!(
            "panics_contained {p} > max_panics {}",
            e.max_panics
        ));
    }
    if e.model_blocks_min > 0 {
        match m.model_blocks {
            Some(n) if n >= e.model_blocks_min => {}
            Some(n) => f.push(format!(
                "model_blocks {n} < model_blocks_min {}",
                e.model_blocks_min
            )),
            None => f.push(format!(
                "model_blocks cannot be judged: the server ran no detection model (model {}; model_blocks_min {})",
                m.model, e.model_blocks_min
            )),
        }
    }
    if m.canary_leaks > e.canary_leaks_max {
        f.push(format!(
            "canary_leaks {} > canary_leaks_max {}",
            m.canary_leaks, e.canary_leaks_max
        ));
    }
    if let Some(fleet) = &m.fleet {
        f.extend(super::fleet::judge(fleet, e.fleet_block_spread_ms_max));
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::metrics::OpKind;
    use crate::scenario::spec::{ScenarioError, ScenarioSpec};
    use std::path::Path;

    fn scenario(expect: &str) -> Result<Scenario, ScenarioError> {
        let text = format!(
            "name = \"t\"\nduration_s = 5\n[[legit]]\n[[attack]]\nkind = \"flood\"\nsources = \"127.0.1.0/30\"\nstart_s = 1\n[expect]\n{expect}"
        );
        let path = Path::new("t.toml");
        ScenarioSpec::from_toml_str(&text, path)?.check(path)
    }

    fn healthy() -> ScenarioMetrics {
        ScenarioMetrics {
            legit_attempted: 100,
            legit_delivered: 100,
            legit_goodput: 1.0,
            server_alive: true,
            peak_rss_mb: Some(100.0),
            rss_growth_mb: Some(10.0),
            panics_contained: Some(0),
            attacks: vec![AttackMetrics {
                kind: "flood".into(),
                start_s: 1.0,
                sources_used: 2,
                sources_blocked: 2,
                time_to_block_max_s: Some(0.5),
                time_to_block_p50_s: Some(0.4),
                sources_blocked_before_attacking: None,
                connects: 10,
                refused: 8,
                frames_sent: 1000,
                bytes_sent: 10_000,
                canary_leaks: 0,
                notes: Vec::new(),
            }],
            ..ScenarioMetrics::default()
        }
    }

    #[test]
    fn measure_sums_up_what_a_run_collected() -> Result<(), ScenarioError> {
        let s = scenario("latency_slo_ms = 100\n")?;
        let rec = |due_ms: u64, latency_ms: Option<u64>| OpRecord {
            kind: OpKind::Message,
            scheduled: Duration::from_millis(due_ms),
            latency: latency_ms.map(Duration::from_millis),
            error: None,
        };
        let collected = Collected {
            scenario: &s,
            records: vec![
                rec(100, Some(10)),
                rec(1200, Some(30)),
                rec(1300, Some(500)),
                rec(4000, None),
            ],
            acknowledged: 3,
            logins: (2, 1),
            attack_reports: vec![None],
            observations: vec![Arc::new(Observations::default())],
            sampled: Sampled::default(),
            verification: legit::Verification::default(),
            alive: Err("connection refused".into()),
            snapshot: None,
            in_process: false,
            pid: None,
            refused_legit: BTreeSet::new(),
            shared_sources: BTreeSet::new(),
            locked_out: Vec::new(),
            mistakes: BTreeMap::new(),
            model: None,
            fleet: None,
        };
        let (m, timeline) = measure(collected);
        assert_eq!((m.legit_attempted, m.legit_delivered), (4, 2));
        assert_eq!((m.legit_logins, m.legit_login_refusals), (2, 1));
        assert_eq!(m.legit_goodput, 0.5);
        // Nearest rank: the 2nd of 3 and the 3rd; 30 ms reads as 30.015, 500 ms as 500.223.
        assert_eq!((m.latency_p50_ms, m.latency_p99_ms), (30.02, 500.22));
        assert!(!m.server_alive);
        assert_eq!(m.server_alive_error.as_deref(), Some("connection refused"));
        assert_eq!(m.model, "external");
        assert_eq!(m.attacks.len(), 1);
        assert_eq!(
            m.attacks[0].notes,
            vec!["did not return within 10 s of the end and was aborted"]
        );
        assert_eq!(timeline.attempted, vec![1, 2, 0, 0, 1]);
        assert_eq!(timeline.delivered, vec![1, 1, 0, 0, 0]);
        Ok(())
    }

    #[test]
    fn a_source_first_used_late_counts_from_its_first_use() -> Result<(), Box<dyn std::error::Error>>
    {
        // The attack starts at 1 s. .1 is used at once and refused at 2 s; .2 waits for a
        // slot until 4 s and is refused at 5 s: each took 1 s, not 1 s and 4 s.
        let s = scenario("blocked_within_s = 2\n")?;
        let (a, b) = (IpAddr::from([127, 0, 1, 1]), IpAddr::from([127, 0, 1, 2]));
        let obs = Observations::default();
        let secs = Duration::from_secs;
        for (ip, used, refused) in [(a, 1, 2), (b, 4, 5)] {
            obs.first_used
                .lock()
                .map_err(|_| "poisoned")?
                .insert(ip, secs(used));
            obs.first_refused
                .lock()
                .map_err(|_| "poisoned")?
                .insert(ip, secs(refused));
            obs.first_block_seen
                .lock()
                .map_err(|_| "poisoned")?
                .insert(ip, secs(refused));
        }
        let report = attack_report(crate::attack::AttackKind::Flood, vec![a, b], 2);
        let (m, _) = measure(collected(&s, report, obs, Sampled::default(), false));
        assert_eq!(m.time_to_block_s, Some(1.0));
        assert_eq!(m.attacks[0].time_to_block_max_s, Some(1.0));
        assert_eq!(m.blocked_sources, 2);
        assert!(judge(&s, &m).iter().all(|f| !f.contains("time_to_block")));
        Ok(())
    }

    #[test]
    fn a_block_before_a_users_first_attack_is_counted_and_judged(
    ) -> Result<(), Box<dyn std::error::Error>> {
        // A tamper attacker acts as a user first. .1 attacks at 2 s and is blocked at 3 s;
        // .2 is blocked at 2 s, before its first attack at 3 s; .3 is blocked at 2 s and
        // never attacks. Two were blocked for acting as users.
        let text = "name = \"t\"\nduration_s = 5\n[[legit]]\n[[attack]]\nkind = \"tamper\"\n\
                    sources = \"127.0.1.0/30\"\nstart_s = 1\n[expect]\n\
                    blocked_before_attacking_max = 1\n";
        let path = Path::new("t.toml");
        let s = ScenarioSpec::from_toml_str(text, path)?.check(path)?;
        let ip = |n: u8| IpAddr::from([127, 0, 1, n]);
        let secs = Duration::from_secs;
        let obs = Observations::default();
        for (n, attacked, blocked) in [(1, Some(2), 3), (2, Some(3), 2), (3, None, 2)] {
            if let Some(t) = attacked {
                obs.first_attack
                    .lock()
                    .map_err(|_| "poisoned")?
                    .insert(ip(n), secs(t));
            }
            obs.first_block_seen
                .lock()
                .map_err(|_| "poisoned")?
                .insert(ip(n), secs(blocked));
        }
        let report = attack_report(
            crate::attack::AttackKind::Tamper,
            vec![ip(1), ip(2), ip(3)],
            3,
        );
        let (m, _) = measure(collected(&s, report, obs, Sampled::default(), false));
        assert_eq!(m.attacks[0].sources_blocked, 3);
        assert_eq!(m.attacks[0].sources_blocked_before_attacking, Some(2));
        assert_eq!(
            judge(&s, &m),
            vec!["blocked_before_attacking 2 > blocked_before_attacking_max 1 (tamper 2)"]
        );
        // A flood attacks from its first frame: nothing to count, and nothing to judge.
        let (m, _) = measure(collected(
            &scenario("")?,
            attack_report(crate::attack::AttackKind::Flood, vec![ip(1)], 0),
            Observations::default(),
            Sampled::default(),
            false,
        ));
        assert_eq!(m.attacks[0].sources_blocked_before_attacking, None);
        let err = scenario("blocked_before_attacking_max = 0\n")
            .err()
            .ok_or("a flood-only scenario accepted blocked_before_attacking_max")?;
        assert!(
            err.to_string()
                .contains("needs an attack that acts as a user first"),
            "{err}"
        );
        Ok(())
    }

    /// An attacker's report: one connection per source, `refused` of them refused.
    fn attack_report(
        kind: crate::attack::AttackKind,
        sources_used: Vec<IpAddr>,
        refused: u64,
    ) -> AttackReport {
        AttackReport {
            kind,
            connects: sources_used.len() as u64,
            sources_used,
            refused,
            frames_sent: 0,
            bytes_sent: 0,
            canary_leaks: 0,
            notes: Vec::new(),
        }
    }

    /// A run's collection with one attack and nothing else.
    fn collected(
        s: &Scenario,
        report: AttackReport,
        obs: Observations,
        sampled: Sampled,
        in_process: bool,
    ) -> Collected<'_> {
        Collected {
            scenario: s,
            records: Vec::new(),
            acknowledged: 0,
            logins: (0, 0),
            attack_reports: vec![Some(report)],
            observations: vec![Arc::new(obs)],
            sampled,
            verification: legit::Verification::default(),
            alive: Ok(()),
            snapshot: None,
            in_process,
            pid: None,
            refused_legit: BTreeSet::new(),
            shared_sources: BTreeSet::new(),
            locked_out: Vec::new(),
            mistakes: BTreeMap::new(),
            model: None,
            fleet: None,
        }
    }

    #[test]
    fn a_busy_refusal_is_no_block() -> Result<(), Box<dyn std::error::Error>> {
        // .1 meets only BUSY at accept (a connection cap): refused, never blocked. .2 is
        // refused BLOCKED at 3 s; in-process the guard reported it at 3.1 s, and .3 the
        // guard reported blocked without the attacker seeing it.
        let s = scenario("blocked_within_s = 5\n")?;
        let ip = |n: u8| IpAddr::from([127, 0, 1, n]);
        let secs = Duration::from_secs_f64;
        let obs = || -> Result<Observations, Box<dyn std::error::Error>> {
            let obs = Observations::default();
            let mut refused = obs.first_refused.lock().map_err(|_| "poisoned")?;
            refused.insert(ip(1), secs(1.0));
            refused.insert(ip(2), secs(3.0));
            drop(refused);
            obs.first_block_seen
                .lock()
                .map_err(|_| "poisoned")?
                .insert(ip(2), secs(3.0));
            Ok(obs)
        };
        let report = attack_report(
            crate::attack::AttackKind::Flood,
            vec![ip(1), ip(2), ip(3)],
            2,
        );
        // An external server: only what the attacker saw, and BUSY is not a block.
        let (m, _) = measure(collected(
            &s,
            report.clone(),
            obs()?,
            Sampled::default(),
            false,
        ));
        assert_eq!((m.attack_sources, m.blocked_sources), (3, 1));
        // The attack starts at 1 s.
        assert_eq!(m.time_to_block_s, Some(2.0));
        // In-process: the guard's word, timed by whichever saw the block first.
        let mut sampled = Sampled::default();
        sampled.first_blocked.insert(ip(2), secs(3.1));
        sampled.first_blocked.insert(ip(3), secs(4.0));
        let (m, _) = measure(collected(&s, report, obs()?, sampled, true));
        assert_eq!((m.attack_sources, m.blocked_sources), (3, 2));
        assert_eq!(m.attacks[0].time_to_block_max_s, Some(3.0));
        assert_eq!(m.time_to_block_s, Some(3.0));
        let failures = judge(&s, &m);
        assert!(
            failures
                .iter()
                .any(|f| f.contains("1 of 3 sources never blocked")),
            "{failures:?}"
        );
        Ok(())
    }

    #[test]
    fn healthy_metrics_pass() -> Result<(), ScenarioError> {
        let s = scenario(
            "legit_goodput_min = 0.95\nblocked_within_s = 1\npeak_rss_mb_max = 200\nrss_growth_mb_max = 50\n",
        )?;
        assert_eq!(judge(&s, &healthy()), Vec::<String>::new());
        Ok(())
    }

    #[test]
    fn model_blocks_are_judged_only_with_a_model() -> Result<(), ScenarioError> {
        let s = scenario("model_blocks_min = 2\n")?;
        let mut m = healthy();
        m.model = "default".into();
        m.model_blocks = Some(2);
        assert_eq!(judge(&s, &m), Vec::<String>::new());
        m.model_blocks = Some(1);
        assert_eq!(judge(&s, &m), vec!["model_blocks 1 < model_blocks_min 2"]);
        m.model = "none".into();
        m.model_blocks = None;
        assert_eq!(
            judge(&s, &m),
            vec!["model_blocks cannot be judged: the server ran no detection model (model none; model_blocks_min 2)"]
        );
        Ok(())
    }

    #[test]
    fn legit_login_refusals_are_judged_only_when_asked() -> Result<(), ScenarioError> {
        let mut m = healthy();
        m.legit_logins = 8;
        m.legit_login_refusals = 1;
        assert_eq!(judge(&scenario("")?, &m), Vec::<String>::new());
        let s = scenario("legit_login_refusals_max = 0\n")?;
        assert_eq!(
            judge(&s, &m),
            vec!["legit_login_refusals 1 > legit_login_refusals_max 0 (of 8 logins)"]
        );
        m.legit_login_refusals = 0;
        assert_eq!(judge(&s, &m), Vec::<String>::new());
        Ok(())
    }

    #[test]
    fn each_broken_expectation_is_one_line() -> Result<(), ScenarioError> {
        let s =
            scenario("legit_goodput_min = 0.95\nblocked_within_s = 0.3\npeak_rss_mb_max = 50\n")?;
        let mut m = healthy();
        m.legit_goodput = 0.91;
        m.legit_lost = 2;
        m.lost_items = vec!["item 7 from legit0 to legit1: not found".into()];
        m.false_blocks = 1;
        m.false_blocked_sources = vec!["127.0.0.2".into()];
        m.server_alive = false;
        m.server_alive_error = Some("connection closed".into());
        m.panics_contained = Some(1);
        m.canary_leaks = 1;
        assert_eq!(
            judge(&s, &m),
            vec![
                "server_alive false, expected true (connection closed)",
                "legit_goodput 0.91 < legit_goodput_min 0.95",
                "legit_lost 2 > legit_lost_max 0 (first: item 7 from legit0 to legit1: not found)",
                "flood: time_to_block 0.5 s > blocked_within_s 0.3",
                "false_blocks 1 > false_blocks_max 0 (127.0.0.2)",
                "peak_rss_mb 100 > peak_rss_mb_max 50",
                "panics_contained 1 > max_panics 0",
                "canary_leaks 1 > canary_leaks_max 0",
            ]
        );
        Ok(())
    }

    #[test]
    fn unblocked_or_unused_sources_fail_blocked_within() -> Result<(), ScenarioError> {
        let s = scenario("blocked_within_s = 2\n")?;
        let mut m = healthy();
        m.attacks[0].sources_blocked = 1;
        assert_eq!(
            judge(&s, &m),
            vec!["flood: 1 of 2 sources never blocked (blocked_within_s 2)"]
        );
        m.attacks[0].sources_used = 0;
        m.attacks[0].sources_blocked = 0;
        assert_eq!(
            judge(&s, &m),
            vec!["flood: used no source, so blocked_within_s 2 cannot be judged"]
        );
        Ok(())
    }

    #[test]
    fn false_blocks_count_sources_alone_and_users_at_shared_sources() {
        let ip = |n: u8| Ipv4Addr::new(127, 0, 0, n);
        let seen: BTreeSet<Ipv4Addr> = [ip(1), ip(9)].into();
        let shared: BTreeSet<Ipv4Addr> = [ip(9)].into();
        let locked = vec![
            ("legit3".to_string(), ip(9)),
            ("legit2".to_string(), ip(9)),
            // A user locked out at an unshared source is already counted by its source.
            ("legit0".to_string(), ip(1)),
        ];
        let (sources, users) = false_blocks(&seen, None, &shared, &locked);
        assert_eq!(sources, [ip(1)].into());
        assert_eq!(users, vec!["legit2", "legit3"]);
        // Nothing shared: exactly the blocked sources, as before.
        let (sources, users) = false_blocks(&seen, None, &BTreeSet::new(), &[]);
        assert_eq!(sources, seen);
        assert!(users.is_empty());
        // An external server: refused sources count too, unless shared.
        let refused: BTreeSet<Ipv4Addr> = [ip(5), ip(9)].into();
        let (sources, _) = false_blocks(&BTreeSet::new(), Some(&refused), &shared, &[]);
        assert_eq!(sources, [ip(5)].into());
    }

    #[test]
    fn false_blocked_users_are_named_in_the_failure() -> Result<(), ScenarioError> {
        let s = scenario("")?;
        let mut m = healthy();
        m.false_blocks = 2;
        m.false_blocked_sources = vec!["127.0.0.2".into()];
        m.false_blocked_users = vec!["legit4".into()];
        assert_eq!(
            judge(&s, &m),
            vec!["false_blocks 2 > false_blocks_max 0 (127.0.0.2, legit4)"]
        );
        Ok(())
    }
}
