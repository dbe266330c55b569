//! Runs one checked [`Scenario`]: sets up the server and accounts, plants the canary, runs
//! the legit load and the attacks concurrently for the scenario's duration while sampling
//! blocks and memory, reads back every acknowledged item, checks that the server still
//! answers, and has [`mod@super::judge`] measure and judge what it collected.
//!
//! The order of one run:
//!
//! 1. a fresh data directory (a temporary one, or `--record DIR/<name>`), unless `--target`;
//! 2. accounts: `legit0..`, `alice`, `victim`, `mallory` (the attackers' own ordinary account),
//!    `mallory0..` (one per evasion slot) and `runner` (the alive check), with seeded passwords, hashed with the scenario's argon2
//!    parameters and written straight into the store;
//! 3. the in-process server on 127.0.0.1:0 (or the external one); in a TLS run with a
//!    self-signed certificate made in the data directory, which every client then trusts;
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
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::faults::{self, with_server, FaultReport, Opener, Slot};
use super::judge::{judge, measure, refused_sources, Collected, Sampled, ServerStats};
use super::legit::{self, ClientPlan, ClientRun, LoadContext};
use super::metrics::{self, ms, round, LiveCounters, StallPoint};
use super::report::{ScenarioReport, SimReport};
use super::spec::{Scenario, ScenarioError, CONTROL_SOURCE};
use super::target::{resolve, Resolved, TargetSpec, TargetUrl};
use crate::attack::{self, AttackContext, AttackReport, Canary, Observations};
use crate::client::{Client, TlsOptions};
use crate::config::AuthConfig;
use crate::detect::Model;
use crate::firewall::{Action, Signal};
use crate::server::auth::hash_password;
use crate::server::{Server, ServerHandle};
use crate::store::{SqliteStore, Store, StoreError};
use crate::tls::{ClientTrust, MinVersion};

/// Where the in-process server listens, and the name its TLS certificate carries.
const LOOPBACK: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

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
pub(super) const ATTACK_GRACE: Duration = Duration::from_secs(10);
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
    /// Runs every scenario once per seed in this range, first to last, both included
    /// (`--seeds A..B`); wins over `seed`.
    pub seeds: Option<std::ops::RangeInclusive<u64>>,
    /// Keep each in-process server's data directory as `DIR/<scenario name>`.
    pub record_dir: Option<PathBuf>,
    /// Run only scenarios whose name contains this.
    pub filter: Option<String>,
    /// The detection model the in-process server scores windows with (none: rules only).
    pub model: Option<RunModel>,
    /// Run every scenario over TLS, as if each had `tls = true` (`--tls`).
    pub tls: bool,
    /// Run every scenario against this `tcp://` target (`--target tcp://...`) instead of
    /// the file's `[target] url` or the in-process server.
    pub tcp_target: Option<SocketAddr>,
    /// `[target]` keys from the command line (`--legit`, `--legit-opt`), over each file's.
    pub legit: Option<TargetSpec>,
    /// The target's process (`--target-pid`): its memory is sampled, and it must still run
    /// at the end for `server_alive`. Without it, the process listening on the target's
    /// port is looked up in `/proc`.
    pub target_pid: Option<u32>,
    /// Run each scenario in a deterministic simulation (`--sim`, [`crate::sim`]), as its
    /// `[sim]` table says.
    pub sim: bool,
    /// The PostgreSQL database fleet scenarios (`servers` above 1) run on, each run in a
    /// schema of its own (`--store-url`); without it they are skipped.
    pub store_url: Option<String>,
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
    /// Sets [`RunOptions::tcp_target`] and the legit driver's keys ([`RunOptions::legit`]).
    pub fn tcp_target(mut self, addr: SocketAddr, legit: TargetSpec) -> Self {
        self.tcp_target = Some(addr);
        self.legit = Some(legit);
        self
    }
    /// Sets [`RunOptions::target_pid`].
    pub fn target_pid(mut self, pid: u32) -> Self {
        self.target_pid = Some(pid);
        self
    }
    /// The command line's target, if any.
    pub fn target_url(&self) -> Option<TargetUrl> {
        self.tcp_target
            .map(TargetUrl::Tcp)
            .or(self.target.map(TargetUrl::Rampart))
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
    /// Sets [`RunOptions::tls`].
    pub fn tls(mut self) -> Self {
        self.tls = true;
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
        if let Some(addr) = self.tcp_target {
            return self.check_tcp(addr);
        }
        match (self.target, &self.target_data_dir) {
            (Some(addr), Some(_)) => {
                if !matches!(addr.ip(), IpAddr::V4(ip) if ip.is_loopback()) {
                    return Err(RunError::Options(format!(
                        "--target must be an address in 127.0.0.0/8 (sources are loopback addresses), got {addr}"
                    )));
                }
                if self.tls {
                    return Err(RunError::Options(
                        "--tls needs the in-process server, whose certificate the runner makes; it cannot be used with --target".into(),
                    ));
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

impl RunOptions {
    /// [`RunOptions::check`] for a `tcp://` target.
    fn check_tcp(&self, addr: SocketAddr) -> Result<(), RunError> {
        let refuse = |what: &str| {
            Err(RunError::Options(format!(
                "{what} cannot be used with a tcp:// target"
            )))
        };
        if !matches!(addr.ip(), IpAddr::V4(ip) if ip.is_loopback()) {
            return Err(RunError::Options(format!(
                "--target must be an address in 127.0.0.0/8 (sources are loopback addresses), got {addr}"
            )));
        }
        if self.target.is_some() {
            return refuse("a second --target");
        }
        if self.target_data_dir.is_some() {
            return refuse("--target-data-dir (it is a rampart server's)");
        }
        if self.tls {
            return refuse("--tls (the runner makes certificates for its in-process server only)");
        }
        if self.record_dir.is_some() {
            return refuse("--record (it keeps the in-process server's data)");
        }
        Ok(())
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
    /// A scenario cannot run against its target (an attack kind that needs rampart's
    /// protocol against a `tcp://` target, a missing legit driver, ...).
    #[error("{0}")]
    Target(String),
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
#[derive(Clone)]
struct Account {
    name: String,
    password: String,
}

/// Where the server runs.
enum Target {
    InProcess {
        /// The server; a crash fault takes it away and its restart puts it back.
        slot: Slot,
        /// Where it listens, before and after a restart.
        addr: SocketAddr,
        /// How it was opened, when the run has faults to inject.
        faults: Option<Arc<Opener>>,
        /// The data directory, kept when `tmp` is `None` (`--record`).
        dir: PathBuf,
        tmp: Option<tempfile::TempDir>,
        /// The other servers of a fleet run, and its balancer (whose address is `addr`).
        fleet: Option<Box<FleetServers>>,
    },
    External {
        addr: SocketAddr,
        pid: Option<u32>,
    },
}

impl Target {
    fn addr(&self) -> SocketAddr {
        match self {
            Target::InProcess { addr, .. } | Target::External { addr, .. } => *addr,
        }
    }

    fn in_process(&self) -> bool {
        matches!(self, Target::InProcess { .. })
    }

    /// What the report calls it: `in-process`, or the external server's address.
    fn name(&self) -> String {
        match self {
            Target::InProcess { .. } => "in-process".into(),
            Target::External { addr, .. } => addr.to_string(),
        }
    }

    /// The data directory the run keeps (`--record`), as the report names it.
    fn kept_dir(&self) -> Option<String> {
        match self {
            Target::InProcess { dir, tmp: None, .. } => Some(dir.display().to_string()),
            _ => None,
        }
    }

    /// Every server's own address: a fleet's, the first server's first; else the target.
    fn direct(&self) -> Vec<SocketAddr> {
        match self {
            Target::InProcess {
                fleet: Some(fleet), ..
            } => fleet.direct.clone(),
            _ => vec![self.addr()],
        }
    }

    /// In a fleet run, every server's guard, the first server's first (else empty).
    fn fleet_guards(&self) -> Vec<Arc<crate::guard::Guard>> {
        match self {
            Target::InProcess {
                slot,
                fleet: Some(fleet),
                ..
            } => with_server(slot, ServerHandle::guard)
                .into_iter()
                .chain(fleet.peers.iter().map(|(h, _)| h.guard()))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The in-process server, which the sampler reads.
    fn slot(&self) -> Option<Slot> {
        match self {
            Target::InProcess { slot, .. } => Some(Arc::clone(slot)),
            Target::External { .. } => None,
        }
    }
}

/// A fleet run's servers beyond the first, the balancer in front of them all, and the
/// database schema they share (see [`super::fleet`]).
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
struct FleetServers {
    /// Servers 1.. with their data directories (kept when `--record`).
    peers: Vec<(ServerHandle, Option<tempfile::TempDir>)>,
    /// Every server's own address, the first server's first.
    direct: Vec<SocketAddr>,
    balancer: super::fleet::Balancer,
    #[cfg(feature = "postgres")]
    schema: super::fleet::Schema,
    /// Without the PostgreSQL store no fleet starts.
    #[cfg(not(feature = "postgres"))]
    never: std::convert::Infallible,
}

/// Runs one scenario. Never fails: a setup error becomes a failed report.
pub async fn run_scenario(
    scenario: Scenario,
    opts: &RunOptions,
    progress: &dyn Progress,
) -> ScenarioReport {
    let wall = std::time::Instant::now();
    let scenario = Arc::new(scenario);
    let outcome = match resolve(&scenario, opts.target_url(), opts.legit.as_ref()) {
        Ok(Resolved::Tcp(target)) => super::generic::run(&scenario, &target, opts, progress).await,
        Ok(_) => run_inner(&scenario, opts, progress).await,
        Err(e) => Err(anyhow::anyhow!(e)),
    };
    let mut report = match outcome {
        Ok(report) => report,
        Err(e) => ScenarioReport::setup_failed(&scenario, format!("setup failed: {e:#}")),
    };
    report.wall_s = round(wall.elapsed().as_secs_f64(), 2);
    report
}

/// Runs one scenario inside a simulation on a thread of its own ([`crate::sim::run`]), and
/// waits for it: the simulation's runtime must not be nested in the caller's.
pub fn run_simulated(
    scenario: Scenario,
    opts: &RunOptions,
    progress: &dyn Progress,
) -> ScenarioReport {
    let shell = scenario.clone();
    let spec = scenario.sim().clone();
    let sim = crate::sim::SimOptions {
        seed: scenario.seed(),
        argon2: Duration::from_millis(spec.argon2_virtual_ms),
    };
    let auth = sim_auth(&scenario);
    let described = SimReport {
        argon2_memory_kib: auth.argon2_memory_kib,
        argon2_iterations: auth.argon2_iterations,
        argon2_parallelism: auth.argon2_parallelism,
        argon2_virtual_ms: spec.argon2_virtual_ms,
        network: spec.network,
        links: spec.link.clone(),
        replay: replay_command(&scenario, opts),
    };
    let outcome = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("rampart-sim".into())
            .spawn_scoped(scope, || {
                crate::sim::run(sim, || {
                    if let Some(ctx) = crate::sim::current() {
                        let conditions = spec.conditions();
                        ctx.net().change(|c| *c = conditions);
                    }
                    run_scenario(scenario, opts, progress)
                })
            })
            .map(|t| t.join())
    });
    let why = match outcome {
        Ok(Ok(Ok(mut report))) => {
            report.sim = Some(described);
            return report;
        }
        Ok(Ok(Err(e))) => format!("cannot start the simulation: {e}"),
        Ok(Err(_)) => "the simulation panicked".into(),
        Err(e) => format!("cannot start the simulation's thread: {e}"),
    };
    let mut report = ScenarioReport::setup_failed(&shell, why);
    report.sim = Some(described);
    report
}

/// The server's `[auth]` in a simulation: argon2's smallest parameters unless the
/// scenario's `[sim] argon2_small` is false (a hash costs virtual time, not its real work).
fn sim_auth(scenario: &Scenario) -> crate::config::AuthConfig {
    let mut auth = scenario.config().auth.clone();
    if scenario.sim().argon2_small {
        auth.argon2_memory_kib = crate::sim::SMALL_ARGON2_MEMORY_KIB;
        auth.argon2_iterations = 1;
        auth.argon2_parallelism = 1;
    }
    auth
}

/// The command that runs `scenario` again exactly as this run did.
fn replay_command(scenario: &Scenario, opts: &RunOptions) -> String {
    let mut cmd = format!(
        "rampart scenario run {} --sim --seed {}",
        shell_word(&scenario.file().display().to_string()),
        scenario.seed()
    );
    if opts.tls {
        cmd.push_str(" --tls");
    }
    if let Some(m) = &opts.model {
        if m.name != "default" {
            cmd.push_str(&format!(" --model {}", shell_word(&m.name)));
        }
    } else {
        cmd.push_str(" --no-model");
    }
    cmd
}

/// `s` quoted for a POSIX shell when it holds anything but safe characters.
fn shell_word(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+:=,@".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
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
    crate::sim::blocking(move || -> anyhow::Result<()> {
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
    .await
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
                .map(move |ip| (*ip, a.kind().as_str().to_string()))
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
        .filter(|(ip, _)| {
            !scenario
                .attacks()
                .iter()
                .any(|a| a.sources().contains(&IpAddr::V4(*ip)))
        })
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
    suffix: &str,
) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match &opts.record_dir {
        Some(root) => {
            let dir = root.join(format!("{}{suffix}", scenario.name()));
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
            let mut builder = tempfile::Builder::new();
            builder.prefix("rampart-scenario-");
            // A simulation's disk costs no virtual time but real time: on a memory file
            // system fsync returns at once, and the suite runs about four times faster.
            let tmp = match SIM_DATA_ROOT {
                Some(root) if crate::sim::active() && Path::new(root).is_dir() => {
                    builder.tempdir_in(root).or_else(|_| builder.tempdir())?
                }
                _ => builder.tempdir()?,
            };
            Ok((tmp.path().to_path_buf(), Some(tmp)))
        }
    }
}

/// Where a simulated run keeps its data directory when it can: a memory file system.
const SIM_DATA_ROOT: Option<&str> = if cfg!(target_os = "linux") {
    Some("/dev/shm")
} else {
    None
};

/// Everyone a run creates an account for, and the canary's secret; passwords and secret are
/// derived from the scenario's seed.
struct Cast {
    /// The legit clients, each with its account.
    plans: Vec<ClientPlan>,
    alice: Account,
    victim: Account,
    mallory: Account,
    monitor: Account,
    /// The evasion attackers' ordinary accounts, one per slot of the largest evasion attack
    /// ([`crate::attack::crowd_account`]).
    crowd: Vec<Account>,
    secret: String,
    /// In a TLS run, how the runner's own connections trust the server (the legit clients'
    /// plans carry it too).
    tls: Option<TlsOptions>,
}

impl Cast {
    fn new(scenario: &Scenario) -> Cast {
        let mut rng = StdRng::seed_from_u64(scenario.seed() ^ 0x6361_6e61_7279);
        let mut account = |name: &str, who: &str| Account {
            name: name.into(),
            password: format!("{who}-{:016x}", rng.gen::<u64>()),
        };
        let alice = account(CANARY_SENDER, "alice");
        let victim = account(VICTIM, "victim");
        let mallory = account(ATTACKER_ACCOUNT, "mallory");
        let monitor = account(MONITOR, "runner");
        let secret = format!("canary-{:032x}", rng.gen::<u128>());
        let slots = scenario
            .attacks()
            .iter()
            .filter(|a| a.kind() == crate::attack::AttackKind::Evasion)
            .map(|a| a.connections() as usize)
            .max()
            .unwrap_or(0);
        let own = (mallory.name.clone(), mallory.password.clone());
        let crowd = (0..slots)
            .map(|i| {
                let (name, password) = crate::attack::crowd_account(&own, i);
                Account { name, password }
            })
            .collect();
        Cast {
            plans: legit::plan(scenario),
            alice,
            victim,
            mallory,
            monitor,
            crowd,
            secret,
            tls: None,
        }
    }

    /// Makes every client of the cast connect through TLS with `tls`.
    fn use_tls(&mut self, tls: TlsOptions) {
        for p in &mut self.plans {
            p.tls = Some(tls.clone());
        }
        self.tls = Some(tls);
    }

    /// Every account to create: the legit clients', then alice, the victim, mallory and the
    /// monitor.
    fn accounts(&self) -> Vec<Account> {
        self.plans
            .iter()
            .map(|p| Account {
                name: p.user.clone(),
                password: p.password.clone(),
            })
            .chain(
                [&self.alice, &self.victim, &self.mallory, &self.monitor]
                    .into_iter()
                    .chain(&self.crowd)
                    .cloned(),
            )
            .collect()
    }
}

/// Logs how long after the start of setup each phase of a run ended.
struct Phases<'a> {
    scenario: &'a str,
    setup: std::time::Instant,
}

impl Phases<'_> {
    fn done(&self, what: &str) {
        tracing::info!(
            scenario = self.scenario,
            ms = self.setup.elapsed().as_millis() as u64,
            "{what}"
        )
    }
}

/// The run's clock and what every task of the load phase shares.
struct Clock {
    t0: Instant,
    duration: Duration,
    /// The latency SLO.
    slo: Duration,
    /// Cancelled at `t0 + duration`: the attacks stop.
    stop: CancellationToken,
    live: Arc<LiveCounters>,
}

impl Clock {
    fn new(scenario: &Scenario) -> Clock {
        Clock {
            t0: Instant::now() + START_DELAY,
            duration: scenario.duration(),
            slo: scenario.expect().latency_slo,
            stop: CancellationToken::new(),
            live: Arc::new(LiveCounters::default()),
        }
    }
}

/// The running attacks.
struct Attacks {
    /// What each attack saw, by attack index, live.
    observations: Vec<Arc<Observations>>,
    tasks: Vec<tokio::task::JoinHandle<AttackReport>>,
}

/// What the load phase returns once everything in it has ended.
struct Ended {
    sampled: Sampled,
    /// By attack index; `None` for an attack that was aborted or failed.
    attack_reports: Vec<Option<AttackReport>>,
    /// What each attack saw, by attack index.
    observations: Vec<Arc<Observations>>,
    runs: Vec<ClientRun>,
    /// `t0` in milliseconds since the Unix epoch, the clock of the activity database.
    t0_epoch_ms: i64,
}

/// One run, in the order of the module docs, each step one function; a setup failure is an
/// error.
async fn run_inner(
    scenario: &Arc<Scenario>,
    opts: &RunOptions,
    progress: &dyn Progress,
) -> anyhow::Result<ScenarioReport> {
    let phases = Phases {
        scenario: scenario.name(),
        setup: std::time::Instant::now(),
    };
    let mut cast = Cast::new(scenario);
    let (server, tls) = start_server(scenario, opts, &cast.accounts()).await?;
    let attacker_tls = match tls {
        Some(tls) => {
            cast.use_tls(tls);
            Some(crate::tls::attacker_client_config()?)
        }
        None => None,
    };
    phases.done("server ready, accounts created");
    let target = server.addr();
    let canary = plant_canary(target, &cast).await?;
    let logged_in = log_in_legit(target, &cast.plans).await?;
    phases.done("canary planted, legit clients logged in");

    let clock = Clock::new(scenario);
    let attacks = start_attacks(
        scenario,
        target,
        &clock,
        (&cast.mallory, attacker_tls),
        &canary,
    );
    let legit = start_legit(target, &clock, &cast.plans, logged_in);
    let faults = match &server {
        Target::InProcess {
            slot,
            addr,
            faults: Some(opener),
            ..
        } => Some(tokio::spawn(faults::run(
            scenario.sim().fault.clone(),
            clock.t0,
            clock.stop.clone(),
            Arc::clone(slot),
            Arc::clone(opener),
            *addr,
        ))),
        _ => None,
    };
    let ended = sample_until_the_end(
        scenario,
        &server,
        &clock,
        &cast.plans,
        attacks,
        legit,
        progress,
    )
    .await;
    // The load's end lifts every fault still in force, so this returns at once.
    let faults = match faults {
        Some(task) => task.await.unwrap_or_else(|_| {
            vec![FaultReport {
                kind: "crash".into(),
                at_s: 0.0,
                lasted_s: 0.0,
                writes_affected: 0,
                uploads_cut: 0,
                done: false,
                outcome: "the fault schedule panicked".into(),
            }]
        }),
        None => Vec::new(),
    };
    phases.done("load and attacks ended");
    // The scenario's network conditions last as long as the scenario: the read-back and
    // the alive check measure what the server kept, not the link.
    if let Some(ctx) = crate::sim::current() {
        ctx.net()
            .change(|c| *c = crate::sim::net::Conditions::default());
    }

    let (name, kept_dir) = (server.name(), server.kept_dir());
    let model = opts.model.as_ref().map(|m| m.name.clone());
    let collected = afterwards(scenario, &cast, server, ended, model, &phases).await;
    let (metrics, timeline) = measure(collected);
    let mut failures = judge(scenario, &metrics);
    failures.extend(faults.iter().filter_map(FaultReport::failure));
    phases.done("measured");
    let mut report = ScenarioReport::new(scenario, metrics, timeline, failures);
    report.faults = faults;
    report.target = name;
    report.data_dir = kept_dir;
    Ok(report)
}

/// The server: with `--target`, the external one, whose data directory gets the accounts;
/// otherwise an in-process one on 127.0.0.1:0 over a fresh data directory, its attack
/// sources labelled, its model's verdicts enforced. A TLS scenario's server gets a fresh
/// self-signed certificate in `tls/` of the data directory, and the returned options trust
/// exactly that certificate.
async fn start_server(
    scenario: &Scenario,
    opts: &RunOptions,
    accounts: &[Account],
) -> anyhow::Result<(Target, Option<TlsOptions>)> {
    if let (Some(addr), Some(dir)) = (opts.target, &opts.target_data_dir) {
        if scenario.tls() {
            anyhow::bail!(
                "a TLS scenario needs the in-process server, whose certificate the runner makes"
            );
        }
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir)?);
        provision(store, &scenario.config().auth, accounts).await?;
        return Ok((
            Target::External {
                addr,
                pid: opts.target_pid.or_else(|| metrics::find_listener_pid(addr)),
            },
            None,
        ));
    }
    let (dir, tmp) = data_dir(scenario, opts, "")?;
    let model = opts.model.as_ref().map(|m| Arc::clone(&m.model));
    // Scenarios judge what the model blocks, so its verdicts enforce here.
    let mut config = scenario.config().clone();
    config.firewall.model = crate::config::ModelMode::Enforce;
    if crate::sim::active() {
        config.auth = sim_auth(scenario);
    }
    let cert = if scenario.tls() {
        let cert = crate::tls::generate_self_signed(&[LOOPBACK.to_string()], &dir.join("tls"))?;
        config.tls.cert = Some(cert.cert.clone());
        config.tls.key = Some(cert.key);
        Some(cert.cert)
    } else {
        None
    };
    let config_auth = config.auth.clone();
    #[cfg(feature = "postgres")]
    let schema = match (&opts.store_url, scenario.servers() > 1) {
        (Some(url), true) => {
            let url = url.clone();
            let schema = crate::sim::blocking(move || super::fleet::Schema::create(&url)).await?;
            config.store.url = Some(schema.url.clone());
            Some(schema)
        }
        _ => None,
    };
    let fleet_config = config.clone();
    let faults = (crate::sim::active() && !scenario.sim().fault.is_empty()).then(|| {
        Arc::new(Opener {
            config: config.clone(),
            dir: dir.clone(),
            model: model.clone(),
            disk: Arc::default(),
        })
    });
    let server = match &faults {
        Some(opener) => opener.open()?,
        None => Server::open_with_model(config, &dir, model.clone())?,
    };
    label_attack_sources(scenario, &dir)?;
    provision(server.store(), &config_auth, accounts).await?;
    let handle = server.bind(SocketAddr::from((LOOPBACK, 0))).await?;
    let mut addr = handle.local_addr();
    #[cfg(feature = "postgres")]
    let fleet = match schema {
        Some(schema) => {
            let fleet = start_fleet(scenario, opts, fleet_config, model, addr, schema).await?;
            addr = fleet.balancer.addr();
            Some(Box::new(fleet))
        }
        None => None,
    };
    #[cfg(not(feature = "postgres"))]
    let fleet = {
        let _ = (fleet_config, &mut addr);
        None
    };
    let tls = match cert {
        Some(cert) => Some(TlsOptions::new(
            &ClientTrust::Ca(cert),
            &handle.local_addr().to_string(),
            MinVersion::Tls13,
        )?),
        None => None,
    };
    let target = Target::InProcess {
        slot: Arc::new(std::sync::Mutex::new(Some(handle))),
        addr,
        faults,
        dir,
        tmp,
        fleet,
    };
    Ok((target, tls))
}

/// Opens and binds servers 1.. of a fleet on `config` (whose `store.url` is the run's
/// schema), each over a data directory of its own, and starts the balancer in front of
/// them and of the first server, at `first`.
#[cfg(feature = "postgres")]
async fn start_fleet(
    scenario: &Scenario,
    opts: &RunOptions,
    config: crate::config::Config,
    model: Option<Arc<Model>>,
    first: SocketAddr,
    schema: super::fleet::Schema,
) -> anyhow::Result<FleetServers> {
    let mut peers = Vec::new();
    let mut direct = vec![first];
    for i in 1..scenario.servers() {
        let (dir, tmp) = data_dir(scenario, opts, &format!(".server{i}"))?;
        let server = Server::open_with_model(config.clone(), &dir, model.clone())?;
        label_attack_sources(scenario, &dir)?;
        let handle = server.bind(SocketAddr::from((LOOPBACK, 0))).await?;
        direct.push(handle.local_addr());
        peers.push((handle, tmp));
    }
    let balancer = super::fleet::Balancer::start(direct.clone()).await?;
    Ok(FleetServers {
        peers,
        direct,
        balancer,
        schema,
    })
}

/// Legit clients log in before the clock starts, so login cost is not load. A group that
/// makes login mistakes logs in during the run instead (`None` here): its wrong passwords
/// are part of the load.
async fn log_in_legit(
    target: SocketAddr,
    plans: &[ClientPlan],
) -> anyhow::Result<Vec<Option<Client>>> {
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
    let clients: Vec<anyhow::Result<Option<Client>>> =
        futures::stream::iter(logins).buffered(16).collect().await;
    clients.into_iter().collect()
}

/// Attacks: one task per attack, from its start until `clock.stop`, as mallory and with the
/// canary to look for.
fn start_attacks(
    scenario: &Arc<Scenario>,
    target: SocketAddr,
    clock: &Clock,
    (mallory, tls): (&Account, Option<Arc<rustls::ClientConfig>>),
    canary: &Canary,
) -> Attacks {
    let mut observations = Vec::new();
    let mut tasks = Vec::new();
    for (i, _) in scenario.attacks().iter().enumerate() {
        let obs = Arc::new(Observations::default());
        observations.push(Arc::clone(&obs));
        let ctx = AttackContext {
            target,
            t0: clock.t0,
            seed: scenario.seed() ^ i as u64,
            stop: clock.stop.child_token(),
            account: (mallory.name.clone(), mallory.password.clone()),
            canary: canary.clone(),
            observations: obs,
            tls: tls.clone(),
        };
        let s = Arc::clone(scenario);
        tasks.push(tokio::spawn(async move {
            attack::run(&s.attacks()[i], ctx).await
        }));
    }
    Attacks {
        observations,
        tasks,
    }
}

/// Legit load: one task per client, open loop from `t0`, ending by itself at the scenario's
/// end plus the SLO (and a hard end).
fn start_legit(
    target: SocketAddr,
    clock: &Clock,
    plans: &[ClientPlan],
    logged_in: Vec<Option<Client>>,
) -> Vec<tokio::task::JoinHandle<ClientRun>> {
    let ctx = Arc::new(LoadContext {
        target,
        t0: clock.t0,
        slo: clock.slo,
        users: Arc::new(plans.iter().map(|p| p.user.clone()).collect()),
        live: Arc::clone(&clock.live),
        hard_end: clock.t0 + clock.duration + clock.slo + LEGIT_GRACE,
    });
    plans
        .iter()
        .cloned()
        .zip(logged_in)
        .map(|(plan, client)| {
            let ctx = Arc::clone(&ctx);
            tokio::spawn(async move { legit::run_client(&plan, client, &ctx).await })
        })
        .collect()
}

/// Sampler: samples blocks and memory while the load runs; at the scenario's end stops the
/// attacks (aborting any still running [`ATTACK_GRACE`] later), waits for the legit
/// clients' last operations, then stops sampling.
async fn sample_until_the_end(
    scenario: &Scenario,
    server: &Target,
    clock: &Clock,
    plans: &[ClientPlan],
    attacks: Attacks,
    legit: Vec<tokio::task::JoinHandle<ClientRun>>,
    progress: &dyn Progress,
) -> Ended {
    let attack_sources: Vec<IpAddr> = scenario
        .attacks()
        .iter()
        .flat_map(|a| a.sources().iter().copied())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let input = SamplerInput {
        server: server.slot(),
        pid: match server {
            Target::External { pid, .. } => *pid,
            Target::InProcess { .. } => None,
        },
        in_process: server.in_process(),
        attack_sources,
        legit_sources: legit_sources(plans),
        observations: attacks.observations.clone(),
        live: Arc::clone(&clock.live),
        t0: clock.t0,
        duration: clock.duration,
        fleet: server.fleet_guards(),
    };
    let sampler_stop = CancellationToken::new();
    let sampling = sample(input, sampler_stop.clone(), progress);
    let end = end_load(
        clock.t0 + clock.duration,
        &clock.stop,
        attacks.tasks,
        legit,
        &sampler_stop,
    );
    let (sampled, (attack_reports, runs)) = tokio::join!(sampling, end);
    Ended {
        sampled,
        attack_reports,
        observations: attacks.observations,
        runs,
        t0_epoch_ms: epoch_ms_at(clock.t0),
    }
}

/// At `end`, stops the attacks (aborting any still running [`ATTACK_GRACE`] later), waits
/// for the legit clients' last operations, then stops the sampler. Returns the attack
/// reports (by attack index; `None` for one aborted or failed) and the legit results.
pub(super) async fn end_load<T>(
    end: Instant,
    stop: &CancellationToken,
    attacks: Vec<tokio::task::JoinHandle<AttackReport>>,
    legit: Vec<tokio::task::JoinHandle<T>>,
    sampler_stop: &CancellationToken,
) -> (Vec<Option<AttackReport>>, Vec<T>) {
    tokio::time::sleep_until(end).await;
    stop.cancel();
    let mut reports: Vec<Option<AttackReport>> = Vec::new();
    let attack_deadline = Instant::now() + ATTACK_GRACE;
    for mut task in attacks {
        match tokio::time::timeout_at(attack_deadline, &mut task).await {
            Ok(Ok(r)) => reports.push(Some(r)),
            Ok(Err(_)) => reports.push(None),
            Err(_) => {
                task.abort();
                reports.push(None);
            }
        }
    }
    let mut runs: Vec<T> = Vec::new();
    for task in legit {
        if let Ok(run) = task.await {
            runs.push(run);
        }
    }
    sampler_stop.cancel();
    (reports, runs)
}

/// `t` in milliseconds since the Unix epoch.
fn epoch_ms_at(t: Instant) -> i64 {
    let now = Instant::now();
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let wall = crate::activity::now_ms();
    if t >= now {
        wall.saturating_add(ms(t - now))
    } else {
        wall.saturating_sub(ms(now - t))
    }
}

/// Records in the activity database when each source of the kinds that behave like a user
/// first ([`crate::attack::AttackKind::reports_first_attack`]) sent its first attacking frame, so that
/// `rampart activity export` labels its earlier windows benign. A source of such a kind that
/// never attacked is benign throughout.
fn label_attack_starts(
    scenario: &Scenario,
    observations: &[Arc<Observations>],
    t0_epoch_ms: i64,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let mut since: Vec<(std::net::IpAddr, i64)> = Vec::new();
    for (attack, obs) in scenario.attacks().iter().zip(observations) {
        if !attack.kind().reports_first_attack() {
            continue;
        }
        let first = obs
            .first_attack
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for ip in attack.sources() {
            let ms = first.get(ip).map_or(i64::MAX, |d| {
                t0_epoch_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            });
            since.push((*ip, ms));
        }
    }
    if since.is_empty() {
        return Ok(());
    }
    let mut conn = crate::activity::db::open(dir)?;
    crate::activity::db::set_label_since(&mut conn, &since)?;
    Ok(())
}

/// The distinct sources of the legit clients, sorted.
fn legit_sources(plans: &[ClientPlan]) -> Vec<Ipv4Addr> {
    plans
        .iter()
        .map(|p| p.source)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Afterwards: what the legit clients saw, summed up; every acknowledged item read back
/// (within [`VERIFY_BUDGET`]); the alive check; and the in-process server's counters, taken
/// just before it shuts down.
async fn afterwards<'a>(
    scenario: &'a Scenario,
    cast: &Cast,
    server: Target,
    ended: Ended,
    model: Option<String>,
    phases: &Phases<'_>,
) -> Collected<'a> {
    let plans = &cast.plans;
    let runs = ended.runs;
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
    let shared_sources: BTreeSet<Ipv4Addr> = legit_sources(plans)
        .into_iter()
        .filter(|ip| {
            scenario
                .attacks()
                .iter()
                .any(|a| a.sources().contains(&IpAddr::V4(*ip)))
        })
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
    let target = server.addr();
    let read_rate = scenario.config().rates.frames_per_s_per_ip;
    // A fleet's items are read back through its servers directly, in turn: any server must
    // serve any item.
    let direct = server.direct();
    let (verification, verified_per_server) = read_back(plans, runs, &direct, read_rate).await;
    phases.done("items read back");
    let mut alive = alive_check(target, &cast.monitor, cast.tls.as_ref()).await;
    if direct.len() > 1 {
        for (i, addr) in direct.iter().enumerate() {
            if let Err(e) = alive_check(*addr, &cast.monitor, None).await {
                alive = Err(format!("server {i} ({addr}): {e}"));
            }
        }
    }
    phases.done("alive check done");
    let in_process = server.in_process();
    let mut fleet_metrics = None;
    let (snapshot, pid) = match server {
        Target::InProcess {
            slot,
            tmp,
            dir,
            fleet,
            ..
        } => {
            if tmp.is_none() {
                // A kept recording: its labels say when each attack began.
                if let Err(e) =
                    label_attack_starts(scenario, &ended.observations, ended.t0_epoch_ms, &dir)
                {
                    tracing::warn!(error = format!("{e:#}"), "cannot record when attacks began");
                }
            }
            // Down only if a restart after a crash failed, which the run reports.
            let handle = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(fleet) = fleet {
                let first = handle.as_ref().map(|h| h.server());
                fleet_metrics = Some(
                    stop_fleet(scenario, fleet, first, &ended.sampled, verified_per_server).await,
                );
            }
            let snap = match handle {
                Some(handle) => {
                    let snap = server_stats(&handle);
                    handle.shutdown().await;
                    Some(snap)
                }
                None => None,
            };
            phases.done("server shut down");
            // Removing a data directory can take a second on a slow disk; keep it off the
            // runtime's workers.
            if let Some(dir) = tmp {
                crate::sim::blocking(move || drop(dir)).await;
            }
            phases.done("data directory removed");
            (snap, None)
        }
        Target::External { pid, .. } => (None, pid),
    };
    Collected {
        scenario,
        records,
        acknowledged,
        logins,
        attack_reports: ended.attack_reports,
        observations: ended.observations,
        sampled: ended.sampled,
        verification,
        alive,
        snapshot,
        in_process,
        pid,
        refused_legit,
        shared_sources,
        locked_out,
        mistakes,
        model,
        fleet: fleet_metrics,
    }
}

/// Reads back every acknowledged item, each within [`VERIFY_BUDGET`] per target: through
/// one target on the clients' own connections; through several (a fleet), each item
/// through one of them in turn (the `k`-th item a client acknowledged through target
/// `k mod n`), logging in afresh, so every server serves items other servers took. Returns
/// the read-back summed over the targets (every server's losses listed) and the items each
/// target returned intact.
///
/// Reading every item through every server would triple the read-back, and the live model
/// blocks a legit source that fetches hundreds of items in a few seconds (docs/FLEET.md,
/// "The fleet scenario"): the check would then measure that, not what the servers kept.
async fn read_back(
    plans: &[ClientPlan],
    runs: Vec<ClientRun>,
    targets: &[SocketAddr],
    read_rate: u32,
) -> (legit::Verification, Vec<u64>) {
    let share = |runs: &[ClientRun], i: usize| -> Vec<ClientRun> {
        runs.iter()
            .map(|r| ClientRun {
                index: r.index,
                acked: r
                    .acked
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| k % targets.len() == i)
                    .map(|(_, a)| a.clone())
                    .collect(),
                ..ClientRun::default()
            })
            .collect()
    };
    let rounds: Vec<Vec<ClientRun>> = match targets {
        [_] => vec![runs],
        _ => (0..targets.len()).map(|i| share(&runs, i)).collect(),
    };
    let mut all = legit::Verification::default();
    let mut verified = Vec::new();
    for (i, (target, runs)) in targets.iter().zip(rounds).enumerate() {
        let share: u64 = runs.iter().map(|r| r.acked.len() as u64).sum();
        let read = legit::verify(plans, runs, *target, read_rate);
        let v = match tokio::time::timeout(VERIFY_BUDGET, read).await {
            Ok(v) => v,
            Err(_) => legit::Verification {
                verified: 0,
                lost: share,
                lost_items: vec![format!(
                    "read-back did not finish within {} s",
                    VERIFY_BUDGET.as_secs()
                )],
            },
        };
        verified.push(v.verified);
        let through = |item: String| match targets.len() {
            1 => item,
            _ => format!("through server {i} ({target}): {item}"),
        };
        all.verified += v.verified;
        all.lost += v.lost;
        all.lost_items.extend(v.lost_items.into_iter().map(through));
    }
    (all, verified)
}

/// Ends a fleet run: stops the balancer, takes every server's fleet counters (`first`: the
/// first server, still up unless a crash took it), shuts servers 1.. down, drops the run's
/// schema, and sums up what the sampler saw into the fleet's metrics.
#[cfg(feature = "postgres")]
async fn stop_fleet(
    scenario: &Scenario,
    fleet: Box<FleetServers>,
    first: Option<&Server>,
    sampled: &Sampled,
    verified_per_server: Vec<u64>,
) -> super::fleet::FleetMetrics {
    let connections = fleet.balancer.stop().await;
    let stats: Vec<crate::fleet::FleetStats> = first
        .into_iter()
        .chain(fleet.peers.iter().map(|(h, _)| h.server()))
        .map(|s| s.fleet().unwrap_or_default())
        .collect();
    for (handle, tmp) in fleet.peers {
        handle.shutdown().await;
        if let Some(dir) = tmp {
            crate::sim::blocking(move || drop(dir)).await;
        }
    }
    let schema = fleet.schema;
    crate::sim::blocking(move || drop(schema)).await;
    let limit = scenario
        .expect()
        .fleet_block_spread_ms_max
        .map(|ms| Duration::from_secs_f64(ms / 1000.0));
    let (blocked, everywhere, late, max, p50) =
        super::fleet::spread(&sampled.fleet_first_blocked, sampled.last_sample, limit);
    super::fleet::FleetMetrics {
        servers: scenario.servers(),
        connections,
        blocks_shared: stats.iter().map(|s| s.shared).collect(),
        blocks_applied: stats.iter().map(|s| s.applied).collect(),
        windows_shared: stats.iter().map(|s| s.windows_shared).collect(),
        windows_dropped: stats.iter().map(|s| s.windows_dropped).collect(),
        sources_blocked: blocked,
        sources_blocked_everywhere: everywhere,
        sources_blocked_late: late,
        block_spread_ms_max: max,
        block_spread_ms_p50: p50,
        verified_per_server,
    }
}

/// Without the PostgreSQL store there is no fleet to stop.
#[cfg(not(feature = "postgres"))]
async fn stop_fleet(
    _: &Scenario,
    fleet: Box<FleetServers>,
    _: Option<&Server>,
    _: &Sampled,
    _: Vec<u64>,
) -> super::fleet::FleetMetrics {
    match fleet.never {}
}

/// What an in-process server counted, taken just before it shuts down.
fn server_stats(handle: &ServerHandle) -> ServerStats {
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

/// Plants the canary: `alice` sends the victim a private mail and a message, both holding
/// the secret.
async fn plant_canary(target: SocketAddr, cast: &Cast) -> anyhow::Result<Canary> {
    let alice = &cast.alice;
    let secret = &cast.secret;
    let tls = cast.tls.as_ref();
    let mut client =
        legit::login_over(target, &alice.name, &alice.password, CONTROL_SOURCE, tls).await?;
    let mail = client
        .send_mail_with(
            &cast.victim.name,
            "private: account recovery",
            &format!("Your recovery code is {secret}. Do not share it."),
            &[],
        )
        .await?;
    let message = client
        .send_message(&cast.victim.name, &format!("psst, the code is {secret}"))
        .await?;
    let _ = client.bye().await;
    Ok(Canary {
        secret: secret.clone(),
        victim: cast.victim.name.clone(),
        victim_password: cast.victim.password.clone(),
        victim_item_ids: vec![mail, message],
    })
}

/// What the sampler watches.
pub(super) struct SamplerInput {
    /// The in-process server, read afresh at every sample: a crash fault replaces it.
    pub(super) server: Option<Slot>,
    pub(super) pid: Option<u32>,
    pub(super) in_process: bool,
    pub(super) attack_sources: Vec<IpAddr>,
    pub(super) legit_sources: Vec<Ipv4Addr>,
    pub(super) observations: Vec<Arc<Observations>>,
    pub(super) live: Arc<LiveCounters>,
    pub(super) t0: Instant,
    pub(super) duration: Duration,
    /// In a fleet run, every server's guard, the first server's first (else empty).
    pub(super) fleet: Vec<Arc<crate::guard::Guard>>,
}

/// Polls blocks every 100 ms and memory every 250 ms until `stop`, reporting progress.
pub(super) async fn sample(
    input: SamplerInput,
    stop: CancellationToken,
    progress: &dyn Progress,
) -> Sampled {
    let mut s = Sampled {
        fleet_first_blocked: vec![BTreeMap::new(); input.fleet.len()],
        ..Sampled::default()
    };
    let mut tick = tokio::time::interval(BLOCK_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_rss: Option<Instant> = None;
    let mut last_stall = input.t0;
    // The guard, the counters and the recorder of the server up now, if any.
    let probes = || {
        input.server.as_ref().and_then(|slot| {
            with_server(slot, |h| {
                (h.guard(), h.metrics(), h.server().recorder().clone())
            })
        })
    };
    if let Some((_, metrics, recorder)) = probes() {
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
        s.last_sample = since;
        for (guard, first) in input.fleet.iter().zip(&mut s.fleet_first_blocked) {
            for ip in &input.attack_sources {
                if !first.contains_key(ip) && guard.is_blocked(*ip) {
                    first.insert(*ip, since);
                }
            }
            for ip in &input.legit_sources {
                if guard.is_blocked(IpAddr::V4(*ip)) {
                    s.false_blocked.insert(*ip);
                }
            }
        }
        let probes = probes();
        if let Some((guard, _, _)) = &probes {
            for ip in &input.attack_sources {
                if !s.first_blocked.contains_key(ip) && guard.is_blocked(*ip) {
                    s.first_blocked.insert(*ip, since);
                }
            }
            for ip in &input.legit_sources {
                if guard.is_blocked(IpAddr::V4(*ip)) {
                    s.false_blocked.insert(*ip);
                }
            }
        }
        if let Some((_, metrics, recorder)) = &probes {
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
            // Counted as the report counts them (judge::measure): in-process the guard's.
            let blocked: BTreeSet<IpAddr> = if input.server.is_some() {
                s.first_blocked.keys().copied().collect()
            } else {
                refused_sources(&input.observations).into_keys().collect()
            };
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
async fn alive_check(
    target: SocketAddr,
    monitor: &Account,
    tls: Option<&TlsOptions>,
) -> Result<(), String> {
    let check = async {
        let mut c = legit::login_over(
            target,
            &monitor.name,
            &monitor.password,
            CONTROL_SOURCE,
            tls,
        )
        .await?;
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
    check_sources(&scenarios, opts)?;
    check_targets(&scenarios, opts)?;
    Ok(run_all(scenarios, opts, progress).await)
}

/// Refuses, before any runs, an attack whose sources only a simulation can carry (IPv6)
/// unless the run is simulated: real sockets bind loopback IPv4 sources only.
pub fn check_sources(scenarios: &[Scenario], opts: &RunOptions) -> Result<(), RunError> {
    if opts.sim {
        return Ok(());
    }
    for s in scenarios {
        if let Some(a) = s.attacks().iter().find(|a| a.needs_sim()) {
            return Err(RunError::Target(format!(
                "scenario {}: attack {} has IPv6 sources ({}), which only a simulation \
                 carries: run it with --sim (real sockets bind loopback IPv4 sources only, \
                 inside 127.0.0.0/8)",
                s.name(),
                a.kind().as_str(),
                a.source_net()
            )));
        }
    }
    Ok(())
}

/// Resolves every scenario's target before any runs, so a kind that cannot run against a
/// `tcp://` target, a missing driver, or an external target with [`RunOptions::sim`], fails
/// the suite at once.
pub fn check_targets(scenarios: &[Scenario], opts: &RunOptions) -> Result<(), RunError> {
    for s in scenarios {
        if !opts.sim && s.sim().needs_sim() {
            return Err(RunError::Target(format!(
                "scenario {} shapes the simulated network or injects faults ([sim.network], [[sim.link]], [[sim.fault]]): run it with --sim",
                s.name()
            )));
        }
        let resolved =
            resolve(s, opts.target_url(), opts.legit.as_ref()).map_err(RunError::Target)?;
        // A simulation's network holds only the in-process server: an external one (a file's
        // own tcp:// url, or a target set in the options) is out of its reach.
        if opts.sim {
            let external = match &resolved {
                Resolved::InProcess => None,
                Resolved::Rampart(addr) => Some(format!("rampart://{addr}")),
                Resolved::Tcp(t) => Some(format!("tcp://{}", t.addr)),
            };
            if let Some(url) = external {
                return Err(RunError::Target(format!(
                    "scenario {} runs against {url}, an external server: --sim runs only the in-process server, on a simulated network",
                    s.name()
                )));
            }
        }
        if resolved == Resolved::InProcess && opts.target_pid.is_some() {
            return Err(RunError::Target(format!(
                "scenario {} runs on the in-process server: --target-pid needs --target (or a [target] url)",
                s.name()
            )));
        }
        // A file's own tcp:// url meets the options the command line could not check.
        if let (Resolved::Tcp(t), true) = (&resolved, opts.tls || opts.record_dir.is_some()) {
            return Err(RunError::Target(format!(
                "scenario {} runs against tcp://{}: --tls and --record are for the in-process server",
                s.name(),
                t.addr
            )));
        }
    }
    Ok(())
}

/// Runs checked scenarios one after another.
pub async fn run_all(
    scenarios: Vec<Scenario>,
    opts: &RunOptions,
    progress: &dyn Progress,
) -> super::report::SuiteReport {
    let wall = std::time::Instant::now();
    let runs: Vec<Scenario> = match &opts.seeds {
        Some(seeds) => scenarios
            .into_iter()
            .flat_map(|s| seeds.clone().map(move |seed| s.clone().with_seed(seed)))
            .collect(),
        None => scenarios
            .into_iter()
            .map(|s| match opts.seed {
                Some(seed) => s.with_seed(seed),
                None => s,
            })
            .collect(),
    };
    let total = runs.len();
    let mut reports = Vec::with_capacity(total);
    for (i, s) in runs.into_iter().enumerate() {
        let s = if opts.tls { s.with_tls() } else { s };
        progress.scenario_started(i, total, &s);
        let report = if let Some(why) = super::fleet::skip_reason(&s, opts) {
            ScenarioReport::skipped(&s, why)
        } else if opts.sim {
            run_simulated(s, opts, progress)
        } else {
            run_scenario(s, opts, progress).await
        };
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

    #[test]
    fn tcp_target_options_are_checked() -> Result<(), std::net::AddrParseError> {
        let tcp = |addr: &str| -> Result<RunOptions, std::net::AddrParseError> {
            Ok(RunOptions::default().tcp_target(addr.parse()?, TargetSpec::default()))
        };
        assert!(tcp("127.0.0.1:6379")?.check().is_ok());
        assert!(tcp("127.0.0.1:6379")?.target_pid(7).check().is_ok());
        let err = |o: RunOptions| o.check().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(tcp("192.0.2.1:6379")?).contains("127.0.0.0/8"));
        assert!(err(tcp("127.0.0.1:6379")?.tls()).contains("--tls"));
        assert!(err(tcp("127.0.0.1:6379")?.record_dir("rec")).contains("--record"));
        let both = RunOptions {
            target: Some("127.0.0.1:7878".parse()?),
            ..tcp("127.0.0.1:6379")?
        };
        assert!(err(both).contains("second --target"));
        assert_eq!(
            tcp("127.0.0.1:6379")?.target_url(),
            Some(TargetUrl::Tcp("127.0.0.1:6379".parse()?))
        );
        Ok(())
    }

    #[test]
    fn sim_refuses_an_external_target() -> Result<(), Box<dyn std::error::Error>> {
        let path = Path::new("t.toml");
        let load = |text: &str| ScenarioSpec::from_toml_str(text, path)?.check(path);
        let base = "name = \"t\"\nduration_s = 1\n[[legit]]\n";
        let in_process = load(base)?;
        let in_file = load(&format!(
            "{base}[target]\nurl = \"tcp://127.0.0.1:6379\"\nlegit = \"resp\"\n"
        ))?;
        let sim = RunOptions {
            sim: true,
            ..RunOptions::default()
        };
        let err = |s: &Scenario, o: &RunOptions| {
            check_targets(std::slice::from_ref(s), o)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        // Without --sim a file's tcp:// url runs; with it, it is refused before anything runs.
        assert!(check_targets(std::slice::from_ref(&in_file), &RunOptions::default()).is_ok());
        let msg = err(&in_file, &sim);
        assert!(msg.contains("tcp://127.0.0.1:6379"), "{msg}");
        assert!(msg.contains("--sim"), "{msg}");
        // The in-process server runs in a simulation.
        assert!(check_targets(std::slice::from_ref(&in_process), &sim).is_ok());
        // An external target in the options is refused too (the command line already does).
        let resp = TargetSpec {
            legit: Some("resp".into()),
            ..TargetSpec::default()
        };
        let tcp_opts = RunOptions {
            sim: true,
            ..RunOptions::default().tcp_target("127.0.0.1:6379".parse()?, resp)
        };
        assert!(err(&in_process, &tcp_opts).contains("--sim"));
        let rampart_opts = RunOptions {
            sim: true,
            ..RunOptions::default().target("127.0.0.1:7878".parse()?, "data")
        };
        assert!(err(&in_process, &rampart_opts).contains("rampart://127.0.0.1:7878"));
        Ok(())
    }
}
