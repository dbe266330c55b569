//! One scenario against any TCP server (a `tcp://` target): the same clock, attacks,
//! sampler, metrics and expectations as against rampart, with a legit [`driver`] instead of
//! rampart's client.
//!
//! The order of one run:
//!
//! 1. every legit client connects from its source (before the clock starts, as rampart's
//!    clients log in before it);
//! 2. `t0`: legit clients (open loop, the same schedules as rampart's), the attacks in their
//!    generic form ([`crate::attack::run_generic`]) and the sampler (the target process's
//!    memory) run until `t0 + duration_s`;
//! 3. attacks are stopped, legit clients finish their last operation (bounded);
//! 4. the alive check: one driver operation from the control address, and the target
//!    process (`--target-pid`, or the one listening on the port) still running.
//!
//! There are no accounts, no canary and no read-back: each driver checks every reply as it
//! comes (`legit_lost` is 0). There is no firewall to ask, so block metrics are n/a
//! ([`crate::scenario::ScenarioMetrics::blocks_unknown`]).

pub mod driver;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::driver::{Conn, OpError};
use super::judge::{judge, measure, Collected};
use super::legit::{Schedule, LEGIT_REQUEST_TIMEOUT};
use super::metrics::{self, LiveCounters, OpKind, OpRecord};
use super::report::ScenarioReport;
use super::runner::{end_load, sample, Progress, RunOptions, SamplerInput};
use super::spec::{Legit, Scenario, CONTROL_SOURCE};
use super::target::{Driver, GenericTarget};
use crate::attack::{self, AttackContext, Canary, Observations};

/// Time between the end of setup and `t0`, so every task is spawned before the clock starts.
const START_DELAY: Duration = Duration::from_millis(200);
/// Extra time legit operations in flight at the end get, beyond the latency SLO.
const LEGIT_GRACE: Duration = Duration::from_secs(5);
/// Longest alive check.
const ALIVE_BUDGET: Duration = Duration::from_secs(15);
/// Pause between reconnection attempts of one client, as rampart's legit clients pause.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
/// Mixed into the scenario seed for the clients' generators.
const CLIENT_SEED: u64 = 0x0067_656e_6572_6963;
/// Legit clients connecting at once during setup.
const CONNECT_CONCURRENCY: usize = 16;

/// One legit client.
#[derive(Clone)]
struct Plan {
    index: usize,
    source: Ipv4Addr,
    load: Legit,
    seed: u64,
}

/// What one client did.
#[derive(Default)]
struct Run {
    records: Vec<OpRecord>,
    acknowledged: u64,
    /// Reconnections during the run, and how many failed.
    connects: (u64, u64),
}

/// What every legit client shares.
struct Shared {
    target: GenericTarget,
    t0: Instant,
    slo: Duration,
    hard_end: Instant,
    live: Arc<LiveCounters>,
}

fn plans(scenario: &Scenario) -> Vec<Plan> {
    let mut rng = StdRng::seed_from_u64(scenario.seed() ^ CLIENT_SEED);
    let mut out = Vec::new();
    for group in scenario.legit() {
        for i in 0..group.clients as usize {
            out.push(Plan {
                index: out.len(),
                source: group.source_of(i),
                load: group.clone(),
                seed: rng.gen(),
            });
        }
    }
    out
}

/// Runs `scenario` against `target`; a setup failure (a legit client that cannot connect)
/// is an error.
pub async fn run(
    scenario: &Arc<Scenario>,
    target: &GenericTarget,
    opts: &RunOptions,
    progress: &dyn Progress,
) -> anyhow::Result<ScenarioReport> {
    let addr = target.addr;
    let pid = opts.target_pid.or_else(|| metrics::find_listener_pid(addr));
    let plans = plans(scenario);
    let conns = connect_all(&target.driver, addr, &plans).await?;

    let t0 = Instant::now() + START_DELAY;
    let duration = scenario.duration();
    let slo = scenario.expect().latency_slo;
    let stop = CancellationToken::new();
    let live = Arc::new(LiveCounters::default());
    let wire = Arc::new(target.driver.wire(addr));

    let mut observations = Vec::new();
    let mut attack_tasks = Vec::new();
    for (i, _) in scenario.attacks().iter().enumerate() {
        let obs = Arc::new(Observations::default());
        observations.push(Arc::clone(&obs));
        let ctx = AttackContext {
            target: addr,
            t0,
            seed: scenario.seed() ^ i as u64,
            stop: stop.child_token(),
            // No account and no secret: a generic attacker logs in nowhere and reads nothing.
            account: (String::new(), String::new()),
            canary: Canary {
                secret: String::new(),
                victim: String::new(),
                victim_password: String::new(),
                victim_item_ids: Vec::new(),
            },
            observations: obs,
            tls: None,
        };
        let (s, wire) = (Arc::clone(scenario), Arc::clone(&wire));
        attack_tasks.push(tokio::spawn(async move {
            attack::run_generic(&s.attacks()[i], ctx, wire).await
        }));
    }

    let shared = Arc::new(Shared {
        target: target.clone(),
        t0,
        slo,
        hard_end: t0 + duration + slo + LEGIT_GRACE,
        live: Arc::clone(&live),
    });
    let legit: Vec<_> = plans
        .iter()
        .cloned()
        .zip(conns)
        .map(|(plan, conn)| {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move { run_client(plan, Some(conn), &shared).await })
        })
        .collect();

    let input = SamplerInput {
        server: None,
        pid,
        in_process: false,
        attack_sources: scenario
            .attacks()
            .iter()
            .flat_map(|a| a.sources().iter().copied())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        legit_sources: plans
            .iter()
            .map(|p| p.source)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        observations: observations.clone(),
        live,
        t0,
        duration,
        fleet: Vec::new(),
    };
    let sampler_stop = CancellationToken::new();
    let (sampled, (attack_reports, runs)) = tokio::join!(
        sample(input, sampler_stop.clone(), progress),
        end_load(t0 + duration, &stop, attack_tasks, legit, &sampler_stop)
    );

    let alive = alive_check(target, pid).await;
    let records: Vec<OpRecord> = runs.iter().flat_map(|r| r.records.clone()).collect();
    let collected = Collected {
        scenario,
        acknowledged: runs.iter().map(|r| r.acknowledged).sum(),
        logins: (
            runs.iter().map(|r| r.connects.0).sum(),
            runs.iter().map(|r| r.connects.1).sum(),
        ),
        records,
        attack_reports,
        observations,
        sampled,
        verification: super::legit::Verification::default(),
        alive,
        snapshot: None,
        in_process: false,
        pid,
        refused_legit: BTreeSet::new(),
        shared_sources: BTreeSet::new(),
        locked_out: Vec::new(),
        mistakes: BTreeMap::new(),
        model: None,
        fleet: None,
    };
    let (mut m, timeline) = measure(collected);
    m.blocks_unknown = true;
    m.model = "n/a".into();
    m.rss_scope = match pid {
        Some(pid) => format!("target process {pid}"),
        None => "unavailable: no --target-pid, and no process found listening on the target's port"
            .into(),
    };
    let failures = judge(scenario, &m);
    let mut report = ScenarioReport::new(scenario, m, timeline, failures);
    report.target = target.name();
    Ok(report)
}

/// Connects every legit client before the clock starts.
async fn connect_all(
    driver: &Driver,
    addr: SocketAddr,
    plans: &[Plan],
) -> anyhow::Result<Vec<Conn>> {
    use futures::StreamExt;
    let connects = plans.iter().map(|p| async move {
        Conn::open(addr, p.source, driver).await.map_err(|e| {
            anyhow::anyhow!(
                "legit client {} cannot reach tcp://{addr} from {}: {e}",
                p.index,
                p.source
            )
        })
    });
    let conns: Vec<anyhow::Result<Conn>> = futures::stream::iter(connects)
        .buffered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    conns.into_iter().collect()
}

/// One client's open-loop schedule, as rampart's legit clients keep it: latency from each
/// operation's due time, `missed` for one that could not start before the group's stop
/// plus the SLO, a new connection (after a pause) when the last one failed.
async fn run_client(plan: Plan, conn: Option<Conn>, ctx: &Shared) -> Run {
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let phase: f64 = rng.gen();
    let schedule = Schedule::new(&plan.load, phase, plan.seed);
    let last_start = (ctx.t0 + plan.load.stop + ctx.slo).min(ctx.hard_end);
    let addr = ctx.target.addr;
    let driver = &ctx.target.driver;
    let mut conn = conn;
    let mut run = Run::default();
    let mut next_connect = Instant::now();
    for (n, due) in (0u64..).zip(schedule) {
        let due_at = ctx.t0 + due;
        tokio::time::sleep_until(due_at).await;
        let mut rec = OpRecord {
            kind: OpKind::Request,
            scheduled: due,
            latency: None,
            error: None,
        };
        if Instant::now() >= last_start {
            rec.error = Some("missed".into());
            finish(ctx, &mut run, rec);
            continue;
        }
        if conn.as_ref().map_or(true, |c| !c.usable()) {
            conn = None;
            if Instant::now() < next_connect {
                tokio::time::sleep_until(next_connect.min(last_start)).await;
            }
            next_connect = Instant::now() + RECONNECT_PAUSE;
            run.connects.0 += 1;
            match tokio::time::timeout_at(ctx.hard_end, Conn::open(addr, plan.source, driver)).await
            {
                Ok(Ok(c)) => conn = Some(c),
                Ok(Err(e)) => {
                    run.connects.1 += 1;
                    rec.error = Some(e.label());
                }
                Err(_) => {
                    run.connects.1 += 1;
                    rec.error = Some("timeout".into());
                }
            }
        }
        if let Some(c) = conn.as_mut() {
            let op = tokio::time::timeout(
                LEGIT_REQUEST_TIMEOUT,
                c.exchange(driver, addr, plan.index, n, &mut rng),
            );
            match tokio::time::timeout_at(ctx.hard_end, op).await {
                Ok(Ok(Ok(()))) => {
                    rec.acknowledged(due_at, ctx.slo);
                    run.acknowledged += 1;
                }
                Ok(Ok(Err(e))) => {
                    // The connection's state after a wrong reply is unknown: start afresh.
                    conn = None;
                    rec.error = Some(e.label());
                }
                Ok(Err(_)) | Err(_) => {
                    conn = None;
                    rec.error = Some("timeout".into());
                }
            }
        }
        finish(ctx, &mut run, rec);
    }
    run
}

fn finish(ctx: &Shared, run: &mut Run, rec: OpRecord) {
    LiveCounters::bump(&ctx.live.legit_attempted);
    if rec.delivered(ctx.slo) {
        LiveCounters::bump(&ctx.live.legit_delivered);
    } else {
        LiveCounters::bump(&ctx.live.legit_failed);
    }
    run.records.push(rec);
}

/// The target answers one driver operation from the control address within
/// [`ALIVE_BUDGET`], and its process (if known) still runs.
async fn alive_check(target: &GenericTarget, pid: Option<u32>) -> Result<(), String> {
    let check = async {
        let mut c = Conn::open(target.addr, CONTROL_SOURCE, &target.driver).await?;
        let mut rng = StdRng::seed_from_u64(0);
        c.exchange(&target.driver, target.addr, usize::MAX, 0, &mut rng)
            .await?;
        Ok::<(), OpError>(())
    };
    let answered = match tokio::time::timeout(ALIVE_BUDGET, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", ALIVE_BUDGET.as_secs())),
    };
    match pid {
        Some(pid) if !process_alive(pid) => Err(format!(
            "process {pid} is gone{}",
            answered
                .err()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        )),
        _ => answered,
    }
}

/// Whether process `pid` exists and is not a zombie (Linux `/proc/PID/stat`).
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may hold spaces.
    let state = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 1..))
        .and_then(|rest| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_free_pid_is_not() {
        if cfg!(target_os = "linux") {
            assert!(process_alive(std::process::id()));
            assert!(!process_alive(u32::MAX - 1));
        }
    }
}
