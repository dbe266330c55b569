//! Runs one checked [`Scenario`]: sets up the server and accounts, plants the canary, runs
//! the legit load and the attacks concurrently for the scenario's duration while sampling
//! blocks and memory, reads back every acknowledged item, checks that the server still
//! answers, and judges the expectations.
//!
//! The order of one run:
//!
//! 1. a fresh data directory (a temporary one, or `--record DIR/<name>`), unless `--target`;
//! 2. accounts: `legit0..`, `alice`, `victim`, `mallory` (the attackers' own ordinary account)
//!    and `runner` (the alive check), with seeded passwords, hashed with the scenario's argon2
//!    parameters and written straight into the store;
//! 3. the in-process server on 127.0.0.1:0 (or the external one);
//! 4. the canary: `alice` sends `victim` a private mail and a message holding a random secret;
//! 5. legit clients log in (before the clock starts, so login cost is not load);
//! 6. `t0`: legit clients, attacks and the sampler run until `t0 + duration_s`;
//! 7. attacks are stopped, legit clients finish their last operation (bounded);
//! 8. read-back of every acknowledged item, the alive check, the server's counters;
//! 9. expectations become failure texts.
//!
//! Every wait is bounded: the load by its hard end, attacks by a grace period after they are
//! cancelled (then aborted), the read-back by a deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::legit::{self, ClientRun, LoadContext};
use super::metrics::{
    self, ms, percentile, round, AttackMetrics, AttackWindow, LiveCounters, ScenarioMetrics,
    StallPoint, Timeline,
};
use super::report::ScenarioReport;
use super::spec::{Scenario, ScenarioError, CONTROL_SOURCE};
use crate::activity::{Recorder, RecorderStats};
use crate::attack::{self, AttackContext, AttackReport, Canary, Observations};
use crate::config::AuthConfig;
use crate::detect::Model;
use crate::firewall::{Action, Signal};
use crate::guard::Guard;
use crate::server::auth::hash_password;
use crate::server::{DetectionStats, Metrics, MetricsSnapshot, Server, ServerHandle};
use crate::store::{SqliteStore, Store, StoreError};

/// The planted victim.
pub const VICTIM: &str = "victim";
/// The account that writes the canary mail.
pub const CANARY_SENDER: &str = "alice";
/// The attackers' ordinary account.
pub const ATTACKER_ACCOUNT: &str = "mallory";
/// The account of the server-alive check.
pub const MONITOR: &str = "runner";

/// Time between the end of setup and `t0`, so every task is spawned before the clock starts.
const START_DELAY: Duration = Duration::from_millis(200);
/// How often blocks are polled.
const BLOCK_POLL: Duration = Duration::from_millis(100);
/// How often memory is sampled.
const RSS_SAMPLE: Duration = Duration::from_millis(250);
/// How often the stall detector's maxima are taken (one point per timeline bucket).
const STALL_SAMPLE: Duration = Duration::from_secs(1);
/// Time attacks get to return after being cancelled, before they are aborted.
const ATTACK_GRACE: Duration = Duration::from_secs(10);
/// Extra time legit operations in flight at the end get, beyond the latency SLO.
const LEGIT_GRACE: Duration = Duration::from_secs(5);
/// Longest read-back.
const VERIFY_BUDGET: Duration = Duration::from_secs(90);
/// Longest alive check.
const ALIVE_BUDGET: Duration = Duration::from_secs(15);

/// How the runner runs: where the server is and what to keep.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run against an external server at this loopback address instead of an in-process
    /// one.
    pub target: Option<SocketAddr>,
    /// With `target`: the external server's data directory, where the runner writes its
    /// accounts (SQLite in WAL mode allows this while the server runs).
    pub target_data_dir: Option<PathBuf>,
    /// Replaces every scenario's seed.
    pub seed: Option<u64>,
    /// Keep each in-process server's data directory as `DIR/<scenario name>`.
    pub record_dir: Option<PathBuf>,
    /// Run only scenarios whose name contains this.
    pub filter: Option<String>,
    /// The detection model the in-process server scores windows with (none: rules only).
    pub model: Option<RunModel>,
}

/// A detection model for the in-process server, with the name reports give it.
#[derive(Debug, Clone)]
pub struct RunModel {
    /// `default` for the built-in model, or the file it was read from.
    pub name: String,
    /// The model.
    pub model: Arc<Model>,
}

impl RunOptions {
    /// Sets [`RunOptions::target`] and [`RunOptions::target_data_dir`].
    pub fn target(mut self, addr: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        self.target = Some(addr);
        self.target_data_dir = Some(data_dir.into());
        self
    }
    /// Sets [`RunOptions::seed`].
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
    /// Sets [`RunOptions::record_dir`].
    pub fn record_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.record_dir = Some(dir.into());
        self
    }
    /// Sets [`RunOptions::filter`].
    pub fn filter(mut self, name: impl Into<String>) -> Self {
        self.filter = Some(name.into());
        self
    }
    /// Sets [`RunOptions::model`].
    pub fn model(mut self, name: impl Into<String>, model: Arc<Model>) -> Self {
        self.model = Some(RunModel {
            name: name.into(),
            model,
        });
        self
    }

    /// Checks the combination: an external target is IPv4 loopback (attack sources are
    /// 127.x addresses, which reach only the local host) and comes with its data directory.
    pub fn check(&self) -> Result<(), RunError> {
        match (self.target, &self.target_data_dir) {
            (Some(addr), Some(_)) => {
                if !matches!(addr.ip(), IpAddr::V4(ip) if ip.is_loopback()) {
                    return Err(RunError::Options(format!(
                        "--target must be an address in 127.0.0.0/8 (sources are loopback addresses), got {addr}"
                    )));
                }
                if self.record_dir.is_some() {
                    return Err(RunError::Options(
                        "--record keeps the in-process server's data; it cannot be used with --target".into(),
                    ));
                }
                Ok(())
            }
            (Some(_), None) => Err(RunError::Options(
                "--target needs --target-data-dir DIR, the external server's data directory, where the runner creates its accounts".into(),
            )),
            (None, Some(_)) => Err(RunError::Options("--target-data-dir needs --target".into())),
            (None, None) => Ok(()),
        }
    }
}

/// Why a suite could not run at all (a failing scenario is not an error: it is a report).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A scenario file is invalid.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// The options contradict each other.
    #[error("{0}")]
    Options(String),
    /// `--filter` matched no scenario.
    #[error("no scenario name contains `{0}`")]
    NoMatch(String),
}

/// Live numbers for a progress display, sent about four times a second.
#[derive(Debug, Clone, Default)]
pub struct LiveStats {
    /// Time since the scenario started.
    pub elapsed: Duration,
    /// The scenario's duration.
    pub duration: Duration,
    /// Legit operations done so far.
    pub legit_attempted: u64,
    /// Of those, delivered within the SLO.
    pub legit_delivered: u64,
    /// Frames sent by all attackers.
    pub attack_frames: u64,
    /// Connection attempts by all attackers.
    pub attack_connects: u64,
    /// Attack sources refused at accept so far.
    pub blocked_sources: u64,
    /// Current resident memory, MiB.
    pub rss_mb: Option<f64>,
}

/// Receives the runner's progress; every method has an empty default.
pub trait Progress: Send + Sync {
    /// Scenario `index` (from 0) of `total` starts.
    fn scenario_started(&self, _index: usize, _total: usize, _scenario: &Scenario) {}
    /// Live numbers of the running scenario.
    fn scenario_tick(&self, _stats: &LiveStats) {}
    /// The scenario ended.
    fn scenario_finished(&self, _report: &ScenarioReport) {}
}

/// A [`Progress`] that shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;
impl Progress for Silent {}

/// An account the runner creates.
struct Account {
    name: String,
    password: String,
}

/// Where the server runs.
enum Target {
    InProcess {
        handle: ServerHandle,
        tmp: Option<tempfile::TempDir>,
    },
    External {
        pid: Option<u32>,
    },
}

impl Target {
    fn guard(&self) -> Option<Arc<Guard>> {
        match self {
            Target::InProcess { handle, .. } => Some(handle.guard()),
            Target::External { .. } => None,
        }
    }

    /// What the stall detector reads: the server's counters and its recorder.
    fn stall_probes(&self) -> Option<(Arc<Metrics>, Recorder)> {
        match self {
            Target::InProcess { handle, .. } => {
                Some((handle.metrics(), handle.server().recorder().clone()))
            }
            Target::External { .. } => None,
        }
    }
}

/// Runs one scenario. Never fails: a setup error becomes a failed report.
pub async fn run_scenario(
    scenario: Scenario,
    opts: &RunOptions,
    progress: &dyn Progress,
) -> ScenarioReport {
    let wall = std::time::Instant::now();
    let scenario = Arc::new(scenario);
    let mut report = match run_inner(&scenario, opts, progress).await {
        Ok(report) => report,
        Err(e) => ScenarioReport::setup_failed(&scenario, format!("setup failed: {e:#}")),
    };
    report.wall_s = round(wall.elapsed().as_secs_f64(), 2);
    report
}

/// Hashes each account's password and writes it into `store`, replacing the password of an
/// existing account.
///
/// The hashes are computed one after another on one blocking thread: argon2 allocates its
/// whole memory cost (19 MiB by default) per hash, and with glibc every thread that does so
/// may keep that much in its own malloc arena afterwards, which would show up as the
/// in-process server's memory.
async fn provision(
    store: Arc<dyn Store>,
    auth: &AuthConfig,
    accounts: &[Account],
) -> anyhow::Result<()> {
    let auth = auth.clone();
    let accounts: Vec<(String, String)> = accounts
        .iter()
        .map(|a| (a.name.clone(), a.password.clone()))
        .collect();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for (name, password) in accounts {
            let hash = hash_password(&auth, password.as_bytes())?;
            match store.add_user(&name, &hash) {
                Ok(_) => {}
                Err(StoreError::UserExists(_)) => store.set_password(&name, &hash)?,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    })
    .await?
}

/// Labels every attacking source with its attack kind in the activity database, so that
/// `rampart activity export` of a recorded run carries the ground truth (every other source,
/// the legit clients' included, exports as `benign`), and gives every legit source its
/// behaviour family, the `group` column (see [`legit_groups`]).
fn label_attack_sources(scenario: &Scenario, dir: &std::path::Path) -> anyhow::Result<()> {
    let labels: Vec<(std::net::IpAddr, String)> = scenario
        .attacks()
        .iter()
        .flat_map(|a| {
            a.sources()
                .iter()
                .map(move |ip| (std::net::IpAddr::V4(*ip), a.kind().as_str().to_string()))
        })
        .collect();
    let groups = legit_groups(scenario);
    if labels.is_empty() && groups.is_empty() {
        return Ok(());
    }
    let mut conn = crate::activity::db::open(dir)?;
    crate::activity::db::set_labels(&mut conn, &labels)?;
    crate::activity::db::set_groups(&mut conn, &groups)?;
    Ok(())
}

/// The behaviour family of every legit source no attack uses: the `[[legit]] name`s of the
/// clients behind it, sorted, unique, joined with `+` (an attacking source's group is its
/// attack kind, which the labels already give).
pub fn legit_groups(scenario: &Scenario) -> Vec<(std::net::IpAddr, String)> {
    let mut names: BTreeMap<Ipv4Addr, BTreeSet<String>> = BTreeMap::new();
    for p in legit::plan(scenario) {
        names
            .entry(p.source)
            .or_default()
            .insert(p.load.name.clone());
    }
    names
        .into_iter()
        .filter(|(ip, _)| !scenario.attacks().iter().any(|a| a.sources().contains(ip)))
        .map(|(ip, n)| {
            (
                std::net::IpAddr::V4(ip),
                n.into_iter().collect::<Vec<_>>().join("+"),
            )
        })
        .collect()
}

/// A fresh, empty data directory: `record/<name>` or a temporary one.
fn data_dir(
    scenario: &Scenario,
    opts: &RunOptions,
) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match &opts.record_dir {
        Some(root) => {
            let dir = root.join(scenario.name());
            if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
                anyhow::bail!(
                    "record directory {} is not empty; remove it or choose another --record DIR",
                    dir.display()
                );
            }
            std::fs::create_dir_all(&dir)?;
            Ok((dir, None))
        }
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("rampart-scenario-")
                .tempdir()?;
            Ok((tmp.path().to_path_buf(), Some(tmp)))
        }
    }
}

/// Plants the canary: a private mail and a message from alice to the victim holding the
/// secret. Returns the victim's item ids.
async fn plant_canary(
    target: SocketAddr,
    alice: &Account,
    secret: &str,
) -> anyhow::Result<Vec<u64>> {
    let mut client = legit::login(target, &alice.name, &alice.password, CONTROL_SOURCE).await?;
    let mail = client
        .send_mail_with(
            VICTIM,
            "private: account recovery",
            &format!("Your recovery code is {secret}. Do not share it."),
            &[],
        )
        .await?;
    let message = client
        .send_message(VICTIM, &format!("psst, the code is {secret}"))
        .await?;
    let _ = client.bye().await;
    Ok(vec![mail, message])
}

/// State the sampler collects while the scenario runs.
#[derive(Default)]
struct Sampled {
    /// First time (since t0) the guard reported each attack source blocked.
    first_blocked: BTreeMap<Ipv4Addr, Duration>,
    /// Legit sources the guard ever reported blocked.
    false_blocked: BTreeSet<Ipv4Addr>,
    rss: Vec<(f64, f64)>,
    blocked_series: Vec<(f64, u64)>,
    stalls: Vec<StallPoint>,
}

struct SamplerInput {
    guard: Option<Arc<Guard>>,
    stall_probes: Option<(Arc<Metrics>, Recorder)>,
    pid: Option<u32>,
    in_process: bool,
    attack_sources: Vec<Ipv4Addr>,
    legit_sources: Vec<Ipv4Addr>,
    observations: Vec<Arc<Observations>>,
    live: Arc<LiveCounters>,
    t0: Instant,
    duration: Duration,
}

fn refused_sources(observations: &[Arc<Observations>]) -> BTreeMap<Ipv4Addr, Duration> {
    let mut all = BTreeMap::new();
    for o in observations {
        let map = o
            .first_refused
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

/// Polls blocks every 100 ms and memory every 250 ms until `stop`, reporting progress.
async fn sample(input: SamplerInput, stop: CancellationToken, progress: &dyn Progress) -> Sampled {
    let mut s = Sampled::default();
    let mut tick = tokio::time::interval(BLOCK_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_rss: Option<Instant> = None;
    let mut last_stall = input.t0;
    if let Some((metrics, recorder)) = &input.stall_probes {
        // What happened before the scenario started is not the scenario's.
        metrics.stalls.take();
        recorder.take_longest_commit();
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let since = now.saturating_duration_since(input.t0);
        if let Some(guard) = &input.guard {
            for ip in &input.attack_sources {
                if !s.first_blocked.contains_key(ip) && guard.is_blocked(IpAddr::V4(*ip)) {
                    s.first_blocked.insert(*ip, since);
                }
            }
            for ip in &input.legit_sources {
                if guard.is_blocked(IpAddr::V4(*ip)) {
                    s.false_blocked.insert(*ip);
                }
            }
        }
        if let Some((metrics, recorder)) = &input.stall_probes {
            if now.saturating_duration_since(last_stall) >= STALL_SAMPLE {
                last_stall = now;
                let taken = metrics.stalls.take();
                s.stalls.push(StallPoint {
                    t_s: round(since.as_secs_f64(), 3),
                    loop_lag_ms: round(taken.loop_lag_us as f64 / 1000.0, 3),
                    delivery_ms: round(taken.delivery_us as f64 / 1000.0, 3),
                    activity_commit_ms: round(ms(recorder.take_longest_commit()), 3),
                });
            }
        }
        if last_rss.is_none_or_elapsed(now, RSS_SAMPLE) {
            last_rss = Some(now);
            let rss = if input.in_process || input.pid.is_some() {
                metrics::rss_mb(input.pid)
            } else {
                None
            };
            let t = round(since.as_secs_f64(), 3);
            if let Some(mb) = rss {
                s.rss.push((t, round(mb, 2)));
            }
            let mut blocked: BTreeSet<Ipv4Addr> =
                refused_sources(&input.observations).into_keys().collect();
            blocked.extend(s.first_blocked.keys().copied());
            s.blocked_series.push((t, blocked.len() as u64));
            let sum =
                |f: fn(&Observations) -> u64| input.observations.iter().map(|o| f(o)).sum::<u64>();
            progress.scenario_tick(&LiveStats {
                elapsed: since.min(input.duration),
                duration: input.duration,
                legit_attempted: input.live.legit_attempted.load(Ordering::Relaxed),
                legit_delivered: input.live.legit_delivered.load(Ordering::Relaxed),
                attack_frames: sum(|o| o.frames_sent.load(Ordering::Relaxed)),
                attack_connects: sum(|o| o.connects.load(Ordering::Relaxed)),
                blocked_sources: blocked.len() as u64,
                rss_mb: rss,
            });
        }
    }
    s
}

/// `Option<Instant>` as "last time": true if never, or at least `every` ago.
trait LastTime {
    fn is_none_or_elapsed(&self, now: Instant, every: Duration) -> bool;
}
impl LastTime for Option<Instant> {
    fn is_none_or_elapsed(&self, now: Instant, every: Duration) -> bool {
        match self {
            None => true,
            Some(t) => now.saturating_duration_since(*t) >= every,
        }
    }
}

/// Logs in as the monitor account from the control address and PINGs.
async fn alive_check(target: SocketAddr, monitor: &Account) -> Result<(), String> {
    let check = async {
        let mut c = legit::login(target, &monitor.name, &monitor.password, CONTROL_SOURCE).await?;
        c.ping().await?;
        let _ = c.bye().await;
        Ok::<(), crate::client::ClientError>(())
    };
    match tokio::time::timeout(ALIVE_BUDGET, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", ALIVE_BUDGET.as_secs())),
    }
}

async fn run_inner(
    scenario: &Arc<Scenario>,
    opts: &RunOptions,
    progress: &dyn Progress,
) -> anyhow::Result<ScenarioReport> {
    let setup = std::time::Instant::now();
    let phase = |what: &str| {
        tracing::info!(
            scenario = scenario.name(),
            ms = setup.elapsed().as_millis() as u64,
            "{what}"
        )
    };
    let seed = scenario.seed();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6361_6e61_7279);
    let mut password = |who: &str| format!("{who}-{:016x}", rng.gen::<u64>());
    let alice = Account {
        name: CANARY_SENDER.into(),
        password: password("alice"),
    };
    let victim = Account {
        name: VICTIM.into(),
        password: password("victim"),
    };
    let mallory = Account {
        name: ATTACKER_ACCOUNT.into(),
        password: password("mallory"),
    };
    let monitor = Account {
        name: MONITOR.into(),
        password: password("runner"),
    };
    let secret = format!("canary-{:032x}", rng.gen::<u128>());
    let plans = legit::plan(scenario);
    let mut accounts: Vec<Account> = plans
        .iter()
        .map(|p| Account {
            name: p.user.clone(),
            password: p.password.clone(),
        })
        .collect();
    for a in [&alice, &victim, &mallory, &monitor] {
        accounts.push(Account {
            name: a.name.clone(),
            password: a.password.clone(),
        });
    }

    // The server.
    let mut kept_dir = None;
    let (target, server) = match (opts.target, &opts.target_data_dir) {
        (Some(addr), Some(dir)) => {
            let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir)?);
            provision(store, &scenario.config().auth, &accounts).await?;
            (
                addr,
                Target::External {
                    pid: metrics::find_listener_pid(addr),
                },
            )
        }
        _ => {
            let (dir, tmp) = data_dir(scenario, opts)?;
            if tmp.is_none() {
                kept_dir = Some(dir.display().to_string());
            }
            let model = opts.model.as_ref().map(|m| Arc::clone(&m.model));
            // Scenarios judge what the model blocks, so its verdicts enforce here.
            let mut config = scenario.config().clone();
            config.firewall.model = crate::config::ModelMode::Enforce;
            let server = Server::open_with_model(config, &dir, model)?;
            label_attack_sources(scenario, &dir)?;
            provision(server.store(), &scenario.config().auth, &accounts).await?;
            let handle = server.bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
            (handle.local_addr(), Target::InProcess { handle, tmp })
        }
    };
    let in_process = matches!(server, Target::InProcess { .. });

    phase("server ready, accounts created");
    let victim_item_ids = plant_canary(target, &alice, &secret).await?;
    let canary = Canary {
        secret: secret.clone(),
        victim: victim.name.clone(),
        victim_password: victim.password.clone(),
        victim_item_ids,
    };

    // Legit clients log in before the clock starts.
    // A group that makes login mistakes logs in during the run instead: its wrong
    // passwords are part of the load.
    let logins = plans.iter().map(|p| async move {
        if p.load.makes_login_mistakes() {
            return Ok(None);
        }
        legit::login_with(target, &p.user, &p.password, legit::client_options(p))
            .await
            .map(Some)
            .map_err(|e| {
                anyhow::anyhow!(
                    "legit client {} cannot log in from {}: {e}",
                    p.user,
                    p.source
                )
            })
    });
    let clients: Vec<anyhow::Result<Option<crate::client::Client>>> =
        futures::stream::iter(logins).buffered(16).collect().await;
    let mut logged_in = Vec::with_capacity(clients.len());
    for c in clients {
        logged_in.push(c?);
    }
    phase("canary planted, legit clients logged in");

    let duration = scenario.duration();
    let slo = scenario.expect().latency_slo;
    let t0 = Instant::now() + START_DELAY;
    let stop = CancellationToken::new();
    let live = Arc::new(LiveCounters::default());

    // Attacks.
    let mut observations = Vec::new();
    let mut attack_tasks = Vec::new();
    for (i, _) in scenario.attacks().iter().enumerate() {
        let obs = Arc::new(Observations::default());
        observations.push(Arc::clone(&obs));
        let ctx = AttackContext {
            target,
            t0,
            seed: seed ^ i as u64,
            stop: stop.child_token(),
            account: (mallory.name.clone(), mallory.password.clone()),
            canary: canary.clone(),
            observations: obs,
        };
        let s = Arc::clone(scenario);
        attack_tasks.push(tokio::spawn(async move {
            attack::run(&s.attacks()[i], ctx).await
        }));
    }

    // Legit load.
    let ctx = Arc::new(LoadContext {
        target,
        t0,
        slo,
        users: Arc::new(plans.iter().map(|p| p.user.clone()).collect()),
        live: Arc::clone(&live),
        hard_end: t0 + duration + slo + LEGIT_GRACE,
    });
    let legit_tasks: Vec<_> = plans
        .iter()
        .cloned()
        .zip(logged_in)
        .map(|(plan, client)| {
            let ctx = Arc::clone(&ctx);
            tokio::spawn(async move { legit::run_client(&plan, client, &ctx).await })
        })
        .collect();

    // Sampler.
    let attack_sources: Vec<Ipv4Addr> = scenario
        .attacks()
        .iter()
        .flat_map(|a| a.sources().iter().copied())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let legit_sources: Vec<Ipv4Addr> = plans
        .iter()
        .map(|p| p.source)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let sampler_stop = CancellationToken::new();
    let input = SamplerInput {
        guard: server.guard(),
        stall_probes: server.stall_probes(),
        pid: match &server {
            Target::External { pid } => *pid,
            Target::InProcess { .. } => None,
        },
        in_process,
        attack_sources,
        legit_sources: legit_sources.clone(),
        observations: observations.clone(),
        live: Arc::clone(&live),
        t0,
        duration,
    };
    let sampling = sample(input, sampler_stop.clone(), progress);
    let main = async {
        tokio::time::sleep_until(t0 + duration).await;
        stop.cancel();
        let mut reports: Vec<Option<AttackReport>> = Vec::new();
        let attack_deadline = Instant::now() + ATTACK_GRACE;
        for mut task in attack_tasks {
            match tokio::time::timeout_at(attack_deadline, &mut task).await {
                Ok(Ok(r)) => reports.push(Some(r)),
                Ok(Err(_)) => reports.push(None),
                Err(_) => {
                    task.abort();
                    reports.push(None);
                }
            }
        }
        let mut runs: Vec<ClientRun> = Vec::new();
        for task in legit_tasks {
            if let Ok(run) = task.await {
                runs.push(run);
            }
        }
        sampler_stop.cancel();
        (reports, runs)
    };
    let (sampled, (attack_reports, runs)) = tokio::join!(sampling, main);
    phase("load and attacks ended");

    // Afterwards: read back, alive check, counters.
    let records: Vec<_> = runs
        .iter()
        .flat_map(|r| r.records.iter().cloned())
        .collect();
    let acknowledged: u64 = runs.iter().map(|r| r.acked.len() as u64).sum();
    let logins = (
        runs.iter().map(|r| r.logins).sum(),
        runs.iter().map(|r| r.login_refusals).sum(),
    );
    let refused_legit: BTreeSet<Ipv4Addr> = runs
        .iter()
        .filter(|r| r.refused_at_accept)
        .filter_map(|r| plans.get(r.index).map(|p| p.source))
        .collect();
    let shared_sources: BTreeSet<Ipv4Addr> = legit_sources
        .iter()
        .copied()
        .filter(|ip| scenario.attacks().iter().any(|a| a.sources().contains(ip)))
        .collect();
    let locked_out: Vec<(String, Ipv4Addr)> = runs
        .iter()
        .filter(|r| r.good_standing && r.locked_out)
        .filter_map(|r| plans.get(r.index).map(|p| (p.user.clone(), p.source)))
        .collect();
    let mut mistakes: BTreeMap<String, u64> = BTreeMap::new();
    for r in &runs {
        for (m, n) in &r.mistakes {
            *mistakes.entry(m.as_str().to_string()).or_insert(0) += n;
        }
    }
    let verification =
        match tokio::time::timeout(VERIFY_BUDGET, legit::verify(&plans, runs, target)).await {
            Ok(v) => v,
            Err(_) => legit::Verification {
                verified: 0,
                lost: acknowledged,
                lost_items: vec![format!(
                    "read-back did not finish within {} s",
                    VERIFY_BUDGET.as_secs()
                )],
            },
        };
    phase("items read back");
    let alive = alive_check(target, &monitor).await;
    phase("alive check done");
    let (snapshot, pid) = match server {
        Target::InProcess { handle, tmp } => {
            let snap = ServerStats::of(&handle);
            handle.shutdown().await;
            phase("server shut down");
            // Removing a data directory can take a second on a slow disk; keep it off the
            // runtime's workers.
            if let Some(dir) = tmp {
                let _ = tokio::task::spawn_blocking(move || drop(dir)).await;
            }
            phase("data directory removed");
            (Some(snap), None)
        }
        Target::External { pid } => (None, pid),
    };

    let input = Judged {
        scenario,
        records,
        acknowledged,
        logins,
        attack_reports,
        observations: &observations,
        sampled,
        verification,
        alive,
        snapshot,
        in_process,
        pid,
        refused_legit,
        shared_sources,
        locked_out,
        mistakes,
        model: opts.model.as_ref().map(|m| m.name.clone()),
    };
    let (metrics, timeline) = measure(input);
    let failures = judge(scenario, &metrics);
    phase("measured");
    let mut report = ScenarioReport::new(scenario, metrics, timeline, failures);
    report.target = if in_process {
        "in-process".into()
    } else {
        target.to_string()
    };
    report.data_dir = kept_dir;
    Ok(report)
}

/// What an in-process server counted, taken just before it shuts down.
struct ServerStats {
    metrics: MetricsSnapshot,
    detection: Option<DetectionStats>,
    /// Block decisions the model's anomalies contributed to.
    model_blocks: u64,
    recorder: RecorderStats,
}

impl ServerStats {
    fn of(handle: &ServerHandle) -> ServerStats {
        let server = handle.server();
        let model_blocks = handle
            .firewall()
            .decisions()
            .iter()
            .filter(|d| matches!(d.action, Action::Block | Action::ShadowBlock))
            .filter(|d| d.signals.iter().any(|(s, _)| *s == Signal::ModelAnomaly))
            .count() as u64;
        ServerStats {
            metrics: handle.metrics().snapshot(),
            detection: server.detection(),
            model_blocks,
            recorder: server.recorder().stats(),
        }
    }
}

/// Everything measured, before it is summed up.
struct Judged<'a> {
    scenario: &'a Scenario,
    records: Vec<metrics::OpRecord>,
    acknowledged: u64,
    /// Legit logins during the run, and how many of them were refused.
    logins: (u64, u64),
    attack_reports: Vec<Option<AttackReport>>,
    observations: &'a [Arc<Observations>],
    sampled: Sampled,
    verification: legit::Verification,
    alive: Result<(), String>,
    snapshot: Option<ServerStats>,
    in_process: bool,
    pid: Option<u32>,
    refused_legit: BTreeSet<Ipv4Addr>,
    /// Legit sources an attack also uses.
    shared_sources: BTreeSet<Ipv4Addr>,
    /// Legit users in good standing who were told `blocked`, with their source.
    locked_out: Vec<(String, Ipv4Addr)>,
    /// Honest refusals of deliberate mistakes, by kind.
    mistakes: BTreeMap<String, u64>,
    /// The in-process server's model, by name.
    model: Option<String>,
}

fn measure(j: Judged<'_>) -> (ScenarioMetrics, Timeline) {
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
    let mut lat: Vec<f64> = j
        .records
        .iter()
        .filter_map(|r| r.latency.map(metrics::ms))
        .collect();
    lat.sort_by(f64::total_cmp);
    m.latency_p50_ms = round(percentile(&lat, 0.50), 2);
    m.latency_p99_ms = round(percentile(&lat, 0.99), 2);
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

    // Blocks: the guard's first block (in-process) or the attacker's first refusal.
    let mut used_all = BTreeSet::new();
    let mut blocked_all = BTreeSet::new();
    let mut slowest: Option<f64> = None;
    for (i, attack) in s.attacks().iter().enumerate() {
        let obs = j.observations.get(i);
        let refused = obs
            .map(|o| refused_sources(std::slice::from_ref(o)))
            .unwrap_or_default();
        let report = j.attack_reports.get(i).cloned().flatten();
        let used: BTreeSet<Ipv4Addr> = report
            .as_ref()
            .map(|r| r.sources_used.iter().copied().collect())
            .unwrap_or_default();
        let mut times = Vec::new();
        for ip in &used {
            let first = [j.sampled.first_blocked.get(ip), refused.get(ip)]
                .into_iter()
                .flatten()
                .min();
            if let Some(t) = first {
                times.push(t.saturating_sub(attack.start()).as_secs_f64());
                blocked_all.insert(*ip);
            }
        }
        used_all.extend(used.iter().copied());
        times.sort_by(f64::total_cmp);
        let max = times.last().copied();
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
            time_to_block_p50_s: (!times.is_empty()).then(|| round(percentile(&times, 0.5), 3)),
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
    if let Some(within) = e.blocked_within_s {
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
    f
}

/// The scenario files named by `paths`: a directory contributes its `*.toml` files sorted by
/// name; a file is taken as given.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ScenarioError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|source| ScenarioError::Io {
                    path: path.clone(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
                .collect();
            if found.is_empty() {
                return Err(ScenarioError::NoScenarios { path: path.clone() });
            }
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// Loads and checks every file (all before any runs, so a typo fails fast), rejecting
/// duplicate names.
pub fn load_all(files: &[PathBuf]) -> Result<Vec<Scenario>, ScenarioError> {
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let s = Scenario::load(f)?;
        if let Some(other) = seen.get(s.name()) {
            return Err(ScenarioError::DuplicateName {
                path: f.clone(),
                name: s.name().to_string(),
                other: other.clone(),
            });
        }
        seen.insert(s.name().to_string(), f.clone());
        out.push(s);
    }
    Ok(out)
}

/// Runs the scenarios in `paths` (directories and files) one after another.
pub async fn run_files(
    paths: &[PathBuf],
    opts: &RunOptions,
    progress: &dyn Progress,
) -> Result<super::report::SuiteReport, RunError> {
    opts.check()?;
    let files = collect_files(paths)?;
    let mut scenarios = load_all(&files)?;
    if let Some(filter) = &opts.filter {
        scenarios.retain(|s| s.name().contains(filter.as_str()));
        if scenarios.is_empty() {
            return Err(RunError::NoMatch(filter.clone()));
        }
    }
    Ok(run_all(scenarios, opts, progress).await)
}

/// Runs checked scenarios one after another.
pub async fn run_all(
    scenarios: Vec<Scenario>,
    opts: &RunOptions,
    progress: &dyn Progress,
) -> super::report::SuiteReport {
    let wall = std::time::Instant::now();
    let total = scenarios.len();
    let mut reports = Vec::with_capacity(total);
    for (i, s) in scenarios.into_iter().enumerate() {
        let s = match opts.seed {
            Some(seed) => s.with_seed(seed),
            None => s,
        };
        progress.scenario_started(i, total, &s);
        let report = run_scenario(s, opts, progress).await;
        progress.scenario_finished(&report);
        reports.push(report);
    }
    super::report::SuiteReport::new(reports, wall.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::spec::ScenarioSpec;
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

    #[test]
    fn legit_groups_join_names_per_source_and_skip_attack_sources() -> Result<(), ScenarioError> {
        let text = "name = \"t\"\nduration_s = 5\n\
            [[legit]]\nclients = 2\nsources = \"127.0.0.1\"\nname = \"typos\"\n\
            [[legit]]\nclients = 2\nsources = \"127.0.0.1\"\nname = \"nat\"\n\
            [[legit]]\nclients = 2\nsources = \"127.0.0.2\"\n\
            [[legit]]\nclients = 1\nsources = \"127.0.1.1\"\nname = \"mobile\"\n\
            [[attack]]\nkind = \"flood\"\nsources = \"127.0.1.0/30\"\n";
        let path = Path::new("t.toml");
        let s = ScenarioSpec::from_toml_str(text, path)?.check(path)?;
        let v4 = |n: u8| IpAddr::V4(Ipv4Addr::new(127, 0, 0, n));
        assert_eq!(
            legit_groups(&s),
            vec![
                (v4(1), "nat+typos".to_string()),
                (v4(2), "benign".to_string())
            ]
        );
        Ok(())
    }

    #[test]
    fn external_target_options_are_checked() -> Result<(), std::net::AddrParseError> {
        assert!(RunOptions::default().check().is_ok());
        let local = RunOptions::default().target("127.0.0.1:7878".parse()?, "data");
        assert!(local.check().is_ok());
        let remote = RunOptions::default().target("192.0.2.1:7878".parse()?, "data");
        assert!(remote.check().is_err());
        let recorded = local.record_dir("rec");
        assert!(recorded.check().is_err());
        Ok(())
    }
}
