//! Scenario files: [`ScenarioSpec`] is what serde reads from TOML; [`ScenarioSpec::check`]
//! turns it into a [`Scenario`], and only a `Scenario` can run.
//!
//! Every table is `deny_unknown_fields`, so a misspelt key is an error naming the file and the
//! key instead of a silently ignored setting. Range and cross-field rules are checked in
//! `check`, which names the offending key (`legit[0].rate_per_s`, `expect.blocked_kinds`,
//! `server.limits.max_chunk_bytes`, ...). docs/SCENARIOS.md describes every key.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Deserializer, Serialize};

use super::target::TargetSpec;
use crate::attack::{Attack, AttackKind, AttackSpec};
use crate::config::{Config, ConfigError};

/// Source network of legit clients when a `[[legit]]` table names none: six addresses
/// (127.0.0.1 to 127.0.0.6), apart from the attackers' default 127.0.1.0/24.
pub const DEFAULT_LEGIT_SOURCES: &str = "127.0.0.0/29";

/// The runner's own address: planting the canary, the server-alive check and the fallback
/// for read-back verification. No legit or attack network may contain it.
pub const CONTROL_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 100);

/// Longest scenario: every loop in the runner is bounded by the scenario's duration, and an
/// hour is far beyond a CI suite (a larger number is usually milliseconds typed as seconds).
pub const MAX_DURATION_S: f64 = 3600.0;

/// Most legit clients in one scenario: each is a user, a login and a connection.
pub const MAX_LEGIT_CLIENTS: u32 = 1000;

/// Highest open-loop rate of one legit client, operations per second.
pub const MAX_LEGIT_RATE_PER_S: f64 = 1000.0;

/// Shortest `relogin_every_s`: legit clients pause a second between reconnections anyway
/// (`legit::RECONNECT_PAUSE`), and faster logins would be a login flood, not legit load.
pub const MIN_RELOGIN_S: f64 = 1.0;

/// Most wrong passwords a client sends before the right one: more is a guesser, not a user
/// who forgot which password is current.
pub const MAX_STALE_PASSWORD_RETRIES: u32 = 10;

/// Longest `stall_read_s`: a reader that stalls longer is a slow-read attack, and the stall
/// comes back about every 10 s.
pub const MAX_STALL_READ_S: f64 = 30.0;

/// The behaviour family of a `[[legit]]` group without a `name`.
pub const DEFAULT_GROUP_NAME: &str = "benign";

/// Longest `[[legit]] name`.
pub const MAX_GROUP_NAME_LEN: usize = 32;

/// Most addresses taken from one source network (a /20), so a `/8` cannot make a huge list.
pub const MAX_SOURCES_PER_NET: usize = 4096;

/// Largest legit file or attachment: legit files are "small seeded sizes", and the runner
/// keeps no copy of them, only digests, but generates each one in memory.
pub const MAX_LEGIT_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Longest accepted `expect.latency_slo_ms`: a minute.
pub const MAX_LATENCY_SLO_MS: u64 = 60_000;

/// Why a scenario file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The text is not valid TOML or does not fit the schema (unknown key, wrong type). The
    /// message is toml's own, which names the key and shows the line.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message.
        message: String,
    },
    /// A value is out of range or contradicts another one.
    #[error("{}: key {key}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Dotted key, e.g. `legit[0].rate_per_s` or `server.limits.max_chunk_bytes`.
        key: String,
        /// What is wrong, including the value given.
        reason: String,
    },
    /// A path given on the command line holds no scenario file.
    #[error("no scenario files (*.toml) in {}", path.display())]
    NoScenarios {
        /// The directory.
        path: PathBuf,
    },
    /// Two files use the same scenario name (names key reports and record directories).
    #[error("{}: scenario name `{name}` is also used by {}", path.display(), other.display())]
    DuplicateName {
        /// The second file.
        path: PathBuf,
        /// The name.
        name: String,
        /// The first file.
        other: PathBuf,
    },
}

impl ScenarioError {
    /// The dotted key an [`ScenarioError::Invalid`] names.
    pub fn key(&self) -> Option<&str> {
        match self {
            ScenarioError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// One scenario file as read from TOML, unchecked. See docs/SCENARIOS.md.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSpec {
    /// Short name, used in reports and file names: letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// One line on what the scenario shows.
    #[serde(default)]
    pub description: String,
    /// How long the legit load and the attacks run, in seconds.
    pub duration_s: f64,
    /// Seed for every random choice (passwords, contents, schedules, attackers).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Serve TLS: the runner makes a self-signed certificate for the run, and every client,
    /// legit, control and attacker, connects through TLS.
    #[serde(default)]
    pub tls: bool,
    /// How many in-process servers share one PostgreSQL database (fleet mode,
    /// docs/FLEET.md), behind a TCP balancer that sends each new connection to the next
    /// server. Above 1 the run needs a database (`scenario run --store-url`) and real
    /// sockets; without them the scenario is skipped, not failed.
    #[serde(default = "one_server")]
    pub servers: u32,
    /// Overrides for any server configuration key, e.g. `[server.limits]`.
    #[serde(default)]
    pub server: toml::Table,
    /// Well-behaved load; several `[[legit]]` tables are allowed.
    #[serde(default)]
    pub legit: Vec<LegitSpec>,
    /// Attacks; several `[[attack]]` tables are allowed.
    #[serde(default)]
    pub attack: Vec<AttackSpec>,
    /// What must hold for the scenario to pass.
    #[serde(default)]
    pub expect: ExpectSpec,
    /// Where the scenario runs and how its legit clients talk to a server that is not
    /// rampart (`url`, `legit` and the driver's keys); the command line overrides it.
    #[serde(default)]
    pub target: Option<TargetSpec>,
    /// How the scenario runs in a simulation (`--sim`); ignored on real sockets.
    #[serde(default)]
    pub sim: SimSpec,
}

fn default_seed() -> u64 {
    1
}

fn one_server() -> u32 {
    1
}

/// Most servers a fleet scenario may run.
pub const MAX_SERVERS: u32 = 8;

/// The `[sim]` table: settings that apply only when the scenario runs in a simulation.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SimSpec {
    /// How every link of the simulated network behaves (`[sim.network]`); the default is
    /// an ideal link. A scenario that sets it runs only with `--sim`.
    pub network: NetworkSpec,
    /// Virtual milliseconds one argon2 verification takes per login worker (0 to 10,000):
    /// the hash costs no virtual time of its own.
    pub argon2_virtual_ms: u64,
    /// Hash passwords with argon2's smallest parameters (8 KiB, 1 pass, 1 lane) instead of
    /// the server configuration's, so that logins cost little real time. The report shows
    /// the parameters used.
    pub argon2_small: bool,
    /// Faults, each at its time into the run (`[[sim.fault]]`). A scenario with faults
    /// runs only with `--sim`.
    pub fault: Vec<FaultSpec>,
    /// Links of their own for the hosts of some networks (`[[sim.link]]`), over
    /// `[sim.network]`. A scenario with one runs only with `--sim`.
    pub link: Vec<LinkSpec>,
}

impl SimSpec {
    /// Whether the scenario needs a simulation: it shapes the network, names links of
    /// their own, or injects faults.
    pub fn needs_sim(&self) -> bool {
        !self.network.is_ideal() || !self.fault.is_empty() || !self.link.is_empty()
    }

    /// The simulated network's conditions at the start: `[sim.network]` for every link,
    /// each `[[sim.link]]` for its hosts, and link tasks for every connection when a
    /// partition is scheduled (so that it reaches connections opened before it).
    pub fn conditions(&self) -> crate::sim::net::Conditions {
        crate::sim::net::Conditions {
            default: self.network.profile(),
            hosts: self
                .link
                .iter()
                .filter_map(|l| Some((l.net().ok()?, l.network().profile())))
                .collect(),
            partitioned: Vec::new(),
            always_carry: self.fault.iter().any(|f| f.kind == FaultKind::Partition),
        }
    }
}

/// One `[[sim.link]]`: how the links of the hosts in `sources` behave, instead of
/// `[sim.network]`. The first table whose `sources` holds a host wins.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// The hosts: a network or one address, IPv4 or IPv6.
    pub sources: String,
    /// One-way delay, milliseconds (0 to 10,000).
    #[serde(default)]
    pub latency_ms: f64,
    /// Extra one-way delay per segment, uniform from 0 to this, milliseconds.
    #[serde(default)]
    pub jitter_ms: f64,
    /// Chance a segment is lost once and arrives 200 ms later (0 to 0.5).
    #[serde(default)]
    pub loss: f64,
    /// Each direction's bandwidth per connection, Mbit/s (0: unlimited).
    #[serde(default)]
    pub bandwidth_mbit_s: f64,
    /// Split every write into random pieces.
    #[serde(default)]
    pub segment: bool,
}

impl LinkSpec {
    /// The hosts it applies to.
    pub fn net(&self) -> Result<ipnet::IpNet, String> {
        parse_any_net(&self.sources)
    }

    /// Its link, as a `[sim.network]` table would give it.
    pub fn network(&self) -> NetworkSpec {
        NetworkSpec {
            latency_ms: self.latency_ms,
            jitter_ms: self.jitter_ms,
            loss: self.loss,
            bandwidth_mbit_s: self.bandwidth_mbit_s,
            segment: self.segment,
        }
    }
}

/// Reads a network or one address, IPv4 or IPv6 (`"127.0.5.0/28"`, `"2001:db8::/64"`,
/// `"127.0.0.9"`).
fn parse_any_net(raw: &str) -> Result<ipnet::IpNet, String> {
    let raw = raw.trim();
    raw.parse::<ipnet::IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| raw.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("invalid network or address `{raw}`"))
}

/// What a `[[sim.fault]]` does.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// The server dies: every connection drops without a reply, nothing in memory survives,
    /// and after `duration_s` a new server starts on the same data directory and address.
    Crash,
    /// Every commit fails as if fsync returned EIO, for `duration_s`: nothing is stored.
    FsyncFail,
    /// The disk is full (ENOSPC) for `duration_s`: every write is refused.
    DiskFull,
    /// Every delivery's commit takes `delay_ms` longer, for `duration_s`.
    SlowDisk,
    /// The activity recorder's writer takes nothing from its queue for `duration_s`, as
    /// one stuck on its disk would: events fill the queue and are then shed.
    RecorderStall,
    /// The hosts in `sources` are cut off from the server for `duration_s`: their bytes
    /// wait, both ways, and their connects hang, until it heals.
    Partition,
    /// The wall clock jumps by `jump_s` seconds (negative: backwards); timers and the
    /// monotonic clock do not.
    ClockJump,
}

impl FaultKind {
    /// The name scenario files use.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Crash => "crash",
            FaultKind::FsyncFail => "fsync-fail",
            FaultKind::DiskFull => "disk-full",
            FaultKind::SlowDisk => "slow-disk",
            FaultKind::RecorderStall => "recorder-stall",
            FaultKind::Partition => "partition",
            FaultKind::ClockJump => "clock-jump",
        }
    }
}

/// One `[[sim.fault]]`: a fault injected `at_s` seconds into the run.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// What happens.
    pub kind: FaultKind,
    /// When, seconds after the load starts (within the scenario's duration).
    pub at_s: f64,
    /// How long it lasts, seconds: a crashed server's time down, a disk fault's or a
    /// recorder stall's length. Not used by `clock-jump`.
    #[serde(default)]
    pub duration_s: f64,
    /// `slow-disk`: extra milliseconds per commit (1 to 10,000).
    #[serde(default)]
    pub delay_ms: u64,
    /// `clock-jump`: how far the wall clock jumps, seconds (-86,400 to 86,400, not 0).
    #[serde(default)]
    pub jump_s: f64,
    /// `partition`: the hosts cut off, a network or one address.
    #[serde(default)]
    pub sources: Option<String>,
}

/// Longest `[[sim.fault]]` `duration_s`, seconds.
pub const MAX_FAULT_S: f64 = 3600.0;

impl FaultSpec {
    /// `partition`: the hosts it cuts off (checked when the scenario was).
    pub fn hosts(&self) -> Option<ipnet::IpNet> {
        self.sources.as_deref().and_then(|r| parse_any_net(r).ok())
    }

    /// Checks one fault against a run of `duration_s` seconds.
    fn check(&self, duration_s: f64) -> Result<(), (String, String)> {
        let kind = self.kind.as_str();
        if !(self.at_s.is_finite() && self.at_s >= 0.0 && self.at_s < duration_s) {
            return Err((
                "at_s".into(),
                format!(
                    "{kind}: must be 0 or more and before the scenario ends ({duration_s} s), got {}",
                    self.at_s
                ),
            ));
        }
        let lasts = !matches!(self.kind, FaultKind::ClockJump);
        if lasts
            && !(self.duration_s.is_finite()
                && self.duration_s > 0.0
                && self.duration_s <= MAX_FAULT_S)
        {
            return Err((
                "duration_s".into(),
                format!(
                    "{kind}: must be above 0 and at most {MAX_FAULT_S}, got {}",
                    self.duration_s
                ),
            ));
        }
        if !lasts && self.duration_s != 0.0 {
            return Err((
                "duration_s".into(),
                "clock-jump: a jump has no duration".into(),
            ));
        }
        let slow = self.kind == FaultKind::SlowDisk;
        if slow && !(1..=10_000).contains(&self.delay_ms) {
            return Err((
                "delay_ms".into(),
                format!("slow-disk: must be 1 to 10000, got {}", self.delay_ms),
            ));
        }
        if !slow && self.delay_ms != 0 {
            return Err((
                "delay_ms".into(),
                format!("{kind}: only slow-disk takes it"),
            ));
        }
        let jump = self.kind == FaultKind::ClockJump;
        if jump && !(self.jump_s.is_finite() && self.jump_s != 0.0 && self.jump_s.abs() <= 86_400.0)
        {
            return Err((
                "jump_s".into(),
                format!(
                    "clock-jump: must be -86400 to 86400 and not 0, got {}",
                    self.jump_s
                ),
            ));
        }
        if !jump && self.jump_s != 0.0 {
            return Err(("jump_s".into(), format!("{kind}: only clock-jump takes it")));
        }
        match (&self.sources, self.kind == FaultKind::Partition) {
            (Some(raw), true) => {
                parse_any_net(raw).map_err(|e| ("sources".into(), format!("{kind}: {e}")))?;
            }
            (None, true) => {
                return Err(("sources".into(), "partition: name the hosts cut off".into()))
            }
            (Some(_), false) => {
                return Err(("sources".into(), format!("{kind}: only partition takes it")))
            }
            (None, false) => {}
        }
        Ok(())
    }
}

/// The `[sim.network]` table: every link's delays, loss and segmentation.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSpec {
    /// One-way delay, milliseconds (0 to 10,000).
    pub latency_ms: f64,
    /// Extra one-way delay per segment, uniform from 0 to this, milliseconds (0 to 10,000).
    pub jitter_ms: f64,
    /// Chance a segment is lost once and arrives 200 ms later (0 to 0.5).
    pub loss: f64,
    /// Each direction's bandwidth per connection, Mbit/s (0: unlimited).
    pub bandwidth_mbit_s: f64,
    /// Split every write into random pieces, each delivered on its own.
    pub segment: bool,
}

/// Largest `[sim.network]` latency or jitter, milliseconds.
pub const MAX_SIM_DELAY_MS: f64 = 10_000.0;

impl NetworkSpec {
    /// True when it changes nothing: the scenario also runs on real sockets.
    pub fn is_ideal(&self) -> bool {
        *self == NetworkSpec::default()
    }

    /// The simulated network's profile.
    pub fn profile(&self) -> crate::sim::net::LinkProfile {
        crate::sim::net::LinkProfile {
            latency: Duration::from_secs_f64(self.latency_ms / 1000.0),
            jitter: Duration::from_secs_f64(self.jitter_ms / 1000.0),
            loss: self.loss,
            // Cannot overflow: checked finite and at most 10^6 Mbit/s.
            bandwidth: (self.bandwidth_mbit_s * 125_000.0) as u64,
            segment: self.segment,
        }
    }

    fn check(&self) -> Result<(), (String, String)> {
        for (key, v) in [
            ("latency_ms", self.latency_ms),
            ("jitter_ms", self.jitter_ms),
        ] {
            if !(v.is_finite() && (0.0..=MAX_SIM_DELAY_MS).contains(&v)) {
                return Err((
                    key.into(),
                    format!("must be 0 to {MAX_SIM_DELAY_MS}, got {v}"),
                ));
            }
        }
        if !(self.loss.is_finite() && (0.0..=0.5).contains(&self.loss)) {
            return Err((
                "loss".into(),
                format!("must be 0 to 0.5, got {}", self.loss),
            ));
        }
        let b = self.bandwidth_mbit_s;
        if !(b.is_finite() && (0.0..=1_000_000.0).contains(&b)) {
            return Err((
                "bandwidth_mbit_s".into(),
                format!("must be 0 (unlimited) to 1000000, got {b}"),
            ));
        }
        Ok(())
    }
}

impl Default for SimSpec {
    fn default() -> Self {
        SimSpec {
            network: NetworkSpec::default(),
            argon2_virtual_ms: crate::sim::DEFAULT_ARGON2_MS,
            argon2_small: true,
            fault: Vec::new(),
            link: Vec::new(),
        }
    }
}

/// Largest `sim.argon2_virtual_ms`.
pub const MAX_SIM_ARGON2_MS: u64 = 10_000;

/// One `[[legit]]` table: a group of well-behaved clients.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LegitSpec {
    /// Clients (each its own user and connection).
    #[serde(default = "default_clients")]
    pub clients: u32,
    /// Operations per second per client, open loop.
    #[serde(default = "default_rate")]
    pub rate_per_s: f64,
    /// Relative weights of the operation kinds.
    #[serde(default)]
    pub mix: MixSpec,
    /// Source addresses the clients bind, a network or one address inside 127.0.0.0/8.
    #[serde(default, deserialize_with = "optional_net")]
    pub sources: Option<Ipv4Net>,
    /// Largest chat message text in bytes (a mail body is up to four times this).
    #[serde(default = "default_message_bytes")]
    pub message_bytes: u32,
    /// Largest file or mail attachment in bytes.
    #[serde(default = "default_file_bytes")]
    pub file_bytes: u64,
    /// When the group starts, seconds after the scenario start.
    #[serde(default)]
    pub start_s: f64,
    /// When the group stops; the scenario's end by default.
    #[serde(default)]
    pub stop_s: Option<f64>,
    /// Each client closes its connection and logs in again on a new one this often, in
    /// seconds (a script running the command line client once per command); by default a
    /// client keeps one connection.
    #[serde(default)]
    pub relogin_every_s: Option<f64>,
    /// Share of logins that first send a mistyped password, then the right one (0..=1).
    #[serde(default)]
    pub typo_rate: f64,
    /// The client's first login sends a stale (old, wrong) password this many times before
    /// the user fixes it and sends the right one.
    #[serde(default)]
    pub stale_password_retries: u32,
    /// Share of operations that fetch one of the client's own items it deleted earlier
    /// (expects NOT_FOUND).
    #[serde(default)]
    pub stale_fetch_rate: f64,
    /// Share of operations that fetch a mistyped item id, one that is not the user's
    /// (expects NOT_FOUND or PERMISSION_DENIED).
    #[serde(default)]
    pub wrong_id_rate: f64,
    /// Share of operations that send a message to a user name that does not exist (expects
    /// UNKNOWN_RECIPIENT).
    #[serde(default)]
    pub unknown_recipient_rate: f64,
    /// Mobile clients: the connection drops (no BYE) and the client logs in again on a new
    /// one this often, in seconds.
    #[serde(default)]
    pub reconnect_every_s: Option<f64>,
    /// Command line usage: a new connection and login for every operation, BYE after it.
    #[serde(default)]
    pub per_command_login: bool,
    /// How many users share each source address: client `i` of the group binds source
    /// `i / behind_nat` of the group's sources (wrapping).
    #[serde(default = "default_behind_nat")]
    pub behind_nat: u32,
    /// Now and then (about every 10 s, seeded) the client stops reading its replies for
    /// this many seconds.
    #[serde(default)]
    pub stall_read_s: Option<f64>,
    /// When operations are due: `steady`, `bursty` or `diurnal`, all at the same mean rate.
    #[serde(default)]
    pub pace: Pace,
    /// Which client implementation speaks the protocol: `rampart` or `segmented`.
    #[serde(default)]
    pub client: ClientKind,
    /// The behaviour family of this group, written as the `group` column of recorded
    /// datasets.
    #[serde(default = "default_group_name")]
    pub name: String,
}

/// When a legit client's operations are due; every pace has the group's mean rate.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Pace {
    /// One operation every `1 / rate_per_s` seconds.
    #[default]
    Steady,
    /// Bursts of two to six operations close together (think time between bursts).
    Bursty,
    /// The rate ramps up from a fifth of the mean to nearly twice it at mid-run and back.
    Diurnal,
}

impl Pace {
    /// The name used in scenario files.
    pub fn as_str(self) -> &'static str {
        match self {
            Pace::Steady => "steady",
            Pace::Bursty => "bursty",
            Pace::Diurnal => "diurnal",
        }
    }
}

/// Which client implementation a legit group uses.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    /// rampart's own client library, as it is.
    #[default]
    Rampart,
    /// The same protocol written the way another implementation might: every frame in
    /// small seeded pieces with short pauses, and a smaller upload window.
    Segmented,
}

impl ClientKind {
    /// The name used in scenario files.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientKind::Rampart => "rampart",
            ClientKind::Segmented => "segmented",
        }
    }
}

fn default_clients() -> u32 {
    4
}
fn default_rate() -> f64 {
    5.0
}
fn default_message_bytes() -> u32 {
    256
}
fn default_file_bytes() -> u64 {
    16 * 1024
}
fn default_behind_nat() -> u32 {
    1
}
fn default_group_name() -> String {
    DEFAULT_GROUP_NAME.to_string()
}

/// Reads a network (`"127.0.0.0/30"`) or a bare address (`"127.0.0.9"`, one address).
fn optional_net<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Net>, D::Error> {
    let raw = String::deserialize(d)?;
    parse_net(&raw).map(Some).map_err(serde::de::Error::custom)
}

fn parse_net(raw: &str) -> Result<Ipv4Net, String> {
    if let Ok(net) = raw.parse::<Ipv4Net>() {
        return Ok(net);
    }
    raw.parse::<Ipv4Addr>()
        .map(Ipv4Net::from)
        .map_err(|_| format!("invalid IPv4 network or address `{raw}`"))
}

/// toml's error on one line: line, column, message, and the text of the offending line.
fn one_line(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or("");
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            // The line itself names the key when the message does not ("invalid type").
            let text_line = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line} column {column}: {message} (at `{text_line}`)")
        }
        None => message,
    }
}

/// The operation mix of a legit group: relative weights, normalized by `check`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MixSpec {
    /// Chat messages.
    #[serde(default)]
    pub message: f64,
    /// Mails; half of them carry one attachment.
    #[serde(default)]
    pub mail: f64,
    /// Files.
    #[serde(default)]
    pub file: f64,
    /// Inbox checks: one LIST_INBOX page of what arrived since the last check, and a FETCH
    /// of the newest entry on it, as a user reading new mail does. Nothing is written, so
    /// nothing is read back after the run. 0 by default (a group that only writes).
    #[serde(default)]
    pub read: f64,
    /// Keepalives: one PING, as a client that keeps an idle session open (through a NAT or
    /// a proxy with an idle timer) sends. Nothing is written. 0 by default.
    #[serde(default)]
    pub ping: f64,
}

impl Default for MixSpec {
    fn default() -> Self {
        MixSpec {
            message: 0.6,
            mail: 0.3,
            file: 0.1,
            read: 0.0,
            ping: 0.0,
        }
    }
}

/// The `[expect]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectSpec {
    /// A fresh client can log in and PING after the run.
    #[serde(default = "yes")]
    pub server_alive: bool,
    /// Smallest delivered / attempted ratio of legit operations.
    #[serde(default)]
    pub legit_goodput_min: Option<f64>,
    /// A legit operation counts as delivered if acknowledged within this many ms of its
    /// scheduled time.
    #[serde(default = "default_slo_ms")]
    pub latency_slo_ms: u64,
    /// Largest p99 latency of acknowledged legit operations, in ms.
    #[serde(default)]
    pub latency_p99_ms_max: Option<f64>,
    /// Most acknowledged legit items that cannot be read back afterwards.
    #[serde(default)]
    pub legit_lost_max: u64,
    /// Every source an attack used must be refused at accept within this many seconds of
    /// the attack's `start_s`.
    #[serde(default)]
    pub blocked_within_s: Option<f64>,
    /// Restricts `blocked_within_s` to these attack kinds (all attacks by default).
    #[serde(default)]
    pub blocked_kinds: Option<Vec<String>>,
    /// Most legit sources ever blocked.
    #[serde(default)]
    pub false_blocks_max: u64,
    /// Largest resident memory in MiB (in-process: server, runner and clients together).
    #[serde(default)]
    pub peak_rss_mb_max: Option<f64>,
    /// Largest growth of resident memory during the run, MiB (peak minus the value when the
    /// load started).
    #[serde(default)]
    pub rss_growth_mb_max: Option<f64>,
    /// Most panics contained by the server (each closed one connection).
    #[serde(default)]
    pub max_panics: u64,
    /// Most canary leaks (any byte of a planted secret reaching an attacker).
    #[serde(default)]
    pub canary_leaks_max: u64,
    /// Most logins of legit clients during the run that did not end in AUTH_OK (refused,
    /// failed or cut); not checked by default.
    #[serde(default)]
    pub legit_login_refusals_max: Option<u64>,
    /// Fewest blocks the detection model must have contributed to (in-process server with a
    /// model only): proves that behaviour analysis, not the rules alone, made the block.
    #[serde(default)]
    pub model_blocks_min: u64,
    /// Fleet scenarios (`servers` above 1): the most milliseconds between the first server
    /// and the last one refusing an attack source (each server's guard polled every
    /// 100 ms), over every source some server blocked. Unset: not judged.
    #[serde(default)]
    pub fleet_block_spread_ms_max: Option<f64>,
    /// Most attack sources blocked before their first attacking frame, or without ever
    /// sending one, summed over the attacks of the kinds that act as ordinary users first
    /// (evasion, low-and-slow, tamper, probe). Such a block was earned by behaving like a
    /// user. Unset: reported, not judged.
    #[serde(default)]
    pub blocked_before_attacking_max: Option<u64>,
}

fn yes() -> bool {
    true
}
fn default_slo_ms() -> u64 {
    1000
}

impl Default for ExpectSpec {
    fn default() -> Self {
        ExpectSpec {
            server_alive: true,
            legit_goodput_min: None,
            latency_slo_ms: default_slo_ms(),
            latency_p99_ms_max: None,
            legit_lost_max: 0,
            blocked_within_s: None,
            blocked_kinds: None,
            false_blocks_max: 0,
            peak_rss_mb_max: None,
            rss_growth_mb_max: None,
            max_panics: 0,
            canary_leaks_max: 0,
            legit_login_refusals_max: None,
            model_blocks_min: 0,
            fleet_block_spread_ms_max: None,
            blocked_before_attacking_max: None,
        }
    }
}

/// A checked legit group.
#[derive(Debug, Clone)]
pub struct Legit {
    /// Clients in this group.
    pub clients: u32,
    /// Operations per second per client.
    pub rate_per_s: f64,
    /// Normalized weights: message, mail, file, read, ping (they add up to 1).
    pub mix: [f64; 5],
    /// The addresses the clients bind, client `i` using `sources[i % len]`.
    pub sources: Vec<Ipv4Addr>,
    /// The network they came from, for reports.
    pub net: Ipv4Net,
    /// Largest message text.
    pub message_bytes: u32,
    /// Largest file or attachment.
    pub file_bytes: u64,
    /// Start, from the scenario start.
    pub start: Duration,
    /// Stop, from the scenario start.
    pub stop: Duration,
    /// See [`LegitSpec::relogin_every_s`].
    pub relogin_every: Option<Duration>,
    /// See [`LegitSpec::typo_rate`].
    pub typo_rate: f64,
    /// See [`LegitSpec::stale_password_retries`].
    pub stale_password_retries: u32,
    /// See [`LegitSpec::stale_fetch_rate`].
    pub stale_fetch_rate: f64,
    /// See [`LegitSpec::wrong_id_rate`].
    pub wrong_id_rate: f64,
    /// See [`LegitSpec::unknown_recipient_rate`].
    pub unknown_recipient_rate: f64,
    /// See [`LegitSpec::reconnect_every_s`].
    pub reconnect_every: Option<Duration>,
    /// See [`LegitSpec::per_command_login`].
    pub per_command_login: bool,
    /// See [`LegitSpec::behind_nat`].
    pub behind_nat: u32,
    /// See [`LegitSpec::stall_read_s`].
    pub stall_read: Option<Duration>,
    /// See [`LegitSpec::pace`].
    pub pace: Pace,
    /// See [`LegitSpec::client`].
    pub client: ClientKind,
    /// See [`LegitSpec::name`].
    pub name: String,
}

impl Legit {
    /// The source address client `i` of this group binds: `behind_nat` clients share each
    /// address, wrapping around the group's sources.
    pub fn source_of(&self, i: usize) -> Ipv4Addr {
        let per = self.behind_nat.max(1) as usize;
        let n = self.sources.len().max(1);
        self.sources
            .get((i / per) % n)
            .copied()
            .unwrap_or(CONTROL_SOURCE)
    }

    /// Whether this group makes login mistakes (typos or stale passwords): such clients log
    /// in during the run, where the mistakes are part of the load, not before it.
    pub fn makes_login_mistakes(&self) -> bool {
        self.typo_rate > 0.0 || self.stale_password_retries > 0
    }
}

/// The checked `[expect]` table (see [`ExpectSpec`] for the meaning of each field).
#[derive(Debug, Clone)]
pub struct Expect {
    /// See [`ExpectSpec::server_alive`].
    pub server_alive: bool,
    /// See [`ExpectSpec::legit_goodput_min`].
    pub legit_goodput_min: Option<f64>,
    /// See [`ExpectSpec::latency_slo_ms`].
    pub latency_slo: Duration,
    /// See [`ExpectSpec::latency_p99_ms_max`].
    pub latency_p99_ms_max: Option<f64>,
    /// See [`ExpectSpec::legit_lost_max`].
    pub legit_lost_max: u64,
    /// See [`ExpectSpec::blocked_within_s`].
    pub blocked_within_s: Option<f64>,
    /// The attack kinds `blocked_within_s` applies to.
    pub blocked_kinds: BTreeSet<AttackKind>,
    /// See [`ExpectSpec::false_blocks_max`].
    pub false_blocks_max: u64,
    /// See [`ExpectSpec::peak_rss_mb_max`].
    pub peak_rss_mb_max: Option<f64>,
    /// See [`ExpectSpec::rss_growth_mb_max`].
    pub rss_growth_mb_max: Option<f64>,
    /// See [`ExpectSpec::max_panics`].
    pub max_panics: u64,
    /// See [`ExpectSpec::canary_leaks_max`].
    pub canary_leaks_max: u64,
    /// See [`ExpectSpec::legit_login_refusals_max`].
    pub legit_login_refusals_max: Option<u64>,
    /// See [`ExpectSpec::model_blocks_min`].
    pub model_blocks_min: u64,
    /// See [`ExpectSpec::fleet_block_spread_ms_max`].
    pub fleet_block_spread_ms_max: Option<f64>,
    /// See [`ExpectSpec::blocked_before_attacking_max`].
    pub blocked_before_attacking_max: Option<u64>,
}

/// A checked scenario, ready to run. Only [`ScenarioSpec::check`] makes one.
#[derive(Clone)]
pub struct Scenario {
    name: String,
    description: String,
    file: PathBuf,
    duration: Duration,
    seed: u64,
    tls: bool,
    servers: u32,
    config: Config,
    server_overrides: toml::Table,
    legit: Vec<Legit>,
    attacks: Vec<Attack>,
    expect: Expect,
    target: Option<TargetSpec>,
    sim: SimSpec,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario")
            .field("name", &self.name)
            .field("file", &self.file)
            .field("duration", &self.duration)
            .field("seed", &self.seed)
            .field("tls", &self.tls)
            .field("legit", &self.legit)
            .field("attacks", &self.attack_kinds())
            .field("expect", &self.expect)
            .finish_non_exhaustive()
    }
}

impl Scenario {
    /// Reads, parses and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        ScenarioSpec::from_toml_str(&text, path)?.check(path)
    }

    /// The scenario's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its description.
    pub fn description(&self) -> &str {
        &self.description
    }
    /// The file it came from.
    pub fn file(&self) -> &Path {
        &self.file
    }
    /// How long the load runs.
    pub fn duration(&self) -> Duration {
        self.duration
    }
    /// The seed of every random choice.
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// True if the scenario runs over TLS (the `tls` key, or the runner's `--tls`).
    pub fn tls(&self) -> bool {
        self.tls
    }
    /// How many servers share one database (the `servers` key; 1 unless a fleet).
    pub fn servers(&self) -> u32 {
        self.servers
    }
    /// The server configuration: defaults with the `[server]` overrides applied, checked.
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// The `[server]` table as written (an external server ignores it).
    pub fn server_overrides(&self) -> &toml::Table {
        &self.server_overrides
    }
    /// The legit groups.
    pub fn legit(&self) -> &[Legit] {
        &self.legit
    }
    /// The attacks, in file order.
    pub fn attacks(&self) -> &[Attack] {
        &self.attacks
    }
    /// The attack kinds, in file order.
    pub fn attack_kinds(&self) -> Vec<AttackKind> {
        self.attacks.iter().map(Attack::kind).collect()
    }
    /// The expectations.
    pub fn expect(&self) -> &Expect {
        &self.expect
    }
    /// Turns TLS on (the runner's `--tls`).
    pub fn with_tls(mut self) -> Scenario {
        self.tls = true;
        self
    }
    /// The `[sim]` table: how the scenario runs in a simulation.
    pub fn sim(&self) -> &SimSpec {
        &self.sim
    }
    /// Replaces the seed (the runner's `--seed` override).
    pub fn with_seed(mut self, seed: u64) -> Scenario {
        self.seed = seed;
        self
    }
    /// The file's `[target]` table, checked key by key; the runner merges it with the
    /// command line ([`super::target::resolve`]).
    pub fn target(&self) -> Option<&TargetSpec> {
        self.target.as_ref()
    }

    /// Replaces the duration (tests shorten scenarios). Attack and legit windows are clipped
    /// to the new end; an attack that would start after it is dropped.
    pub fn with_duration(mut self, duration: Duration) -> Scenario {
        self.duration = duration;
        for legit in &mut self.legit {
            legit.stop = legit.stop.min(duration);
            legit.start = legit.start.min(legit.stop);
        }
        self.attacks.retain(|a| a.start() < duration);
        self
    }
}

impl ScenarioSpec {
    /// Parses TOML text; `path` only names the file in errors.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<ScenarioSpec, ScenarioError> {
        toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: path.to_path_buf(),
            message: one_line(text, &e),
        })
    }

    /// Checks every value and builds the [`Scenario`]. Errors name `path` and the key.
    pub fn check(self, path: &Path) -> Result<Scenario, ScenarioError> {
        let invalid = |key: String, reason: String| ScenarioError::Invalid {
            path: path.to_path_buf(),
            key,
            reason,
        };
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(invalid(
                "name".into(),
                format!(
                    "must be 1-64 characters of a-z, A-Z, 0-9, '-', '_', '.', got {:?}",
                    self.name
                ),
            ));
        }
        let d = self.duration_s;
        if !(d.is_finite() && d > 0.0 && d <= MAX_DURATION_S) {
            return Err(invalid(
                "duration_s".into(),
                format!("must be more than 0 and at most {MAX_DURATION_S}, got {d}"),
            ));
        }
        let config = server_config(&self.server).map_err(|(key, reason)| invalid(key, reason))?;
        if !(1..=MAX_SERVERS).contains(&self.servers) {
            return Err(invalid(
                "servers".into(),
                format!("must be 1 to {MAX_SERVERS}, got {}", self.servers),
            ));
        }
        if self.servers > 1 {
            let clash = if self.tls {
                Some("tls = true")
            } else if self.target.is_some() {
                Some("a [target]")
            } else if config.store.url.is_some() {
                Some("server.store.url (the runner gives each run a schema of its own)")
            } else {
                None
            };
            if let Some(clash) = clash {
                return Err(invalid(
                    "servers".into(),
                    format!("a fleet scenario (servers above 1) cannot have {clash}"),
                ));
            }
        }
        if config.tls.cert.is_some() || config.tls.key.is_some() {
            return Err(invalid(
                "server.tls.cert".into(),
                "a scenario's certificate is made by the runner: set `tls = true` instead".into(),
            ));
        }

        let mut attacks = Vec::with_capacity(self.attack.len());
        for (i, spec) in self.attack.iter().enumerate() {
            let attack = spec
                .check(d)
                .map_err(|e| invalid(format!("attack[{i}].{}", e.key), e.message))?;
            if attack.kind().needs_tls() && !self.tls {
                return Err(invalid(
                    format!("attack[{i}].kind"),
                    format!(
                        "{} attacks the TLS handshake: the scenario needs `tls = true`",
                        attack.kind().as_str()
                    ),
                ));
            }
            if attack.sources().contains(&CONTROL_SOURCE.into()) {
                return Err(invalid(
                    format!("attack[{i}].sources"),
                    format!("must not contain the runner's control address {CONTROL_SOURCE}"),
                ));
            }
            attacks.push(attack);
        }

        let mut legit = Vec::with_capacity(self.legit.len());
        let mut total_clients = 0u32;
        for (i, spec) in self.legit.iter().enumerate() {
            let group = check_legit(spec, d, &config)
                .map_err(|(k, r)| invalid(format!("legit[{i}].{k}"), r))?;
            total_clients = total_clients.saturating_add(group.clients);
            if total_clients > MAX_LEGIT_CLIENTS {
                return Err(invalid(
                    format!("legit[{i}].clients"),
                    format!("all groups together may have at most {MAX_LEGIT_CLIENTS} clients, got {total_clients}"),
                ));
            }
            if group.sources.contains(&CONTROL_SOURCE) {
                return Err(invalid(
                    format!("legit[{i}].sources"),
                    format!("must not contain the runner's control address {CONTROL_SOURCE}"),
                ));
            }
            // A legit source may also be an attack source (users behind the same address as
            // an attacker): its block is then rightly earned, and the runner judges false
            // blocks by the users in good standing locked out there instead.
            legit.push(group);
        }

        let expect = check_expect(&self.expect, &attacks)
            .map_err(|(k, r)| invalid(format!("expect.{k}"), r))?;
        if let Some(target) = &self.target {
            target
                .check()
                .map_err(|(k, r)| invalid(format!("target.{k}"), r))?;
        }
        self.sim
            .network
            .check()
            .map_err(|(k, r)| invalid(format!("sim.network.{k}"), r))?;
        if self.sim.argon2_virtual_ms > MAX_SIM_ARGON2_MS {
            return Err(invalid(
                "sim.argon2_virtual_ms".into(),
                format!(
                    "must be at most {MAX_SIM_ARGON2_MS}, got {}",
                    self.sim.argon2_virtual_ms
                ),
            ));
        }
        for (i, l) in self.sim.link.iter().enumerate() {
            l.net()
                .map_err(|r| invalid(format!("sim.link[{i}].sources"), r))?;
            l.network()
                .check()
                .map_err(|(k, r)| invalid(format!("sim.link[{i}].{k}"), r))?;
        }
        for (i, f) in self.sim.fault.iter().enumerate() {
            f.check(d)
                .map_err(|(k, r)| invalid(format!("sim.fault[{i}].{k}"), r))?;
        }
        let mut sim = self.sim;
        sim.fault.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        if let Some(w) = sim
            .fault
            .windows(2)
            .find(|w| w[1].at_s < w[0].at_s + w[0].duration_s)
        {
            return Err(invalid(
                "sim.fault".into(),
                format!(
                    "faults must not overlap: {} at {} s starts before {} at {} s ends",
                    w[1].kind.as_str(),
                    w[1].at_s,
                    w[0].kind.as_str(),
                    w[0].at_s
                ),
            ));
        }

        Ok(Scenario {
            name: self.name,
            description: self.description,
            file: path.to_path_buf(),
            duration: Duration::from_secs_f64(d),
            seed: self.seed,
            tls: self.tls,
            servers: self.servers,
            config,
            server_overrides: self.server,
            legit,
            attacks,
            expect,
            target: self.target,
            sim,
        })
    }
}

/// The server configuration: defaults with the `[server]` table applied, checked by the
/// configuration's own parser. On error: the dotted key (prefixed `server.`) and why.
fn server_config(overrides: &toml::Table) -> Result<Config, (String, String)> {
    let text = toml::to_string(overrides).map_err(|e| ("server".to_string(), e.to_string()))?;
    match Config::from_toml_str(&text) {
        Ok(config) => Ok(config),
        Err(ConfigError::Invalid { key, reason }) => Err((format!("server.{key}"), reason)),
        Err(e) => {
            // toml's message names the field but not the table it sits in: find the first
            // key the defaults do not have, to name it with its full path.
            let key = unknown_key(overrides).unwrap_or_else(|| "server".to_string());
            // The message's line and column refer to the re-serialized table, not to the
            // scenario file: keep only what follows them.
            let message = e.to_string();
            let reason = match message.find(" column ") {
                Some(i) => message[i..]
                    .split_once(": ")
                    .map_or(message.as_str(), |(_, rest)| rest),
                None => message.as_str(),
            }
            .trim()
            .to_string();
            Err((key, reason))
        }
    }
}

/// The first key of `overrides` (dotted, from `server.`) that the serialized default
/// configuration lacks.
fn unknown_key(overrides: &toml::Table) -> Option<String> {
    let defaults = toml::Table::try_from(Config::default()).ok()?;
    fn walk(given: &toml::Table, known: &toml::Table, prefix: &str) -> Option<String> {
        for (k, v) in given {
            let path = format!("{prefix}.{k}");
            match (v, known.get(k)) {
                (_, None) => return Some(path),
                (toml::Value::Table(g), Some(toml::Value::Table(kn))) => {
                    if let Some(p) = walk(g, kn, &path) {
                        return Some(p);
                    }
                }
                _ => {}
            }
        }
        None
    }
    walk(overrides, &defaults, "server")
}

/// Expands a network into the addresses clients bind: its hosts (no network or broadcast
/// address for prefixes up to /30), at most [`MAX_SOURCES_PER_NET`].
pub fn net_addresses(net: Ipv4Net) -> Vec<Ipv4Addr> {
    net.hosts().take(MAX_SOURCES_PER_NET).collect()
}

fn check_legit(spec: &LegitSpec, d: f64, config: &Config) -> Result<Legit, (String, String)> {
    let err = |k: &str, r: String| (k.to_string(), r);
    if spec.clients < 1 || spec.clients > MAX_LEGIT_CLIENTS {
        return Err(err(
            "clients",
            format!(
                "must be between 1 and {MAX_LEGIT_CLIENTS}, got {}",
                spec.clients
            ),
        ));
    }
    let r = spec.rate_per_s;
    if !(r.is_finite() && r > 0.0 && r <= MAX_LEGIT_RATE_PER_S) {
        return Err(err(
            "rate_per_s",
            format!("must be more than 0 and at most {MAX_LEGIT_RATE_PER_S}, got {r}"),
        ));
    }
    let m = spec.mix;
    for (key, w) in [
        ("mix.message", m.message),
        ("mix.mail", m.mail),
        ("mix.file", m.file),
        ("mix.read", m.read),
        ("mix.ping", m.ping),
    ] {
        if !(w.is_finite() && w >= 0.0) {
            return Err(err(key, format!("must be a number of at least 0, got {w}")));
        }
    }
    let sum = m.message + m.mail + m.file + m.read + m.ping;
    if sum <= 0.0 {
        return Err(err("mix", "the weights must not all be 0".into()));
    }
    let net = match spec.sources {
        Some(net) => net,
        None => parse_net(DEFAULT_LEGIT_SOURCES).map_err(|e| err("sources", e))?,
    };
    let loopback: Ipv4Net =
        Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).map_err(|e| err("sources", e.to_string()))?;
    if !loopback.contains(&net) {
        return Err(err(
            "sources",
            format!("must lie inside 127.0.0.0/8 (loopback, so every address is local), got {net}"),
        ));
    }
    let sources = net_addresses(net);
    if sources.is_empty() {
        return Err(err("sources", format!("{net} has no usable address")));
    }
    let max_text = config
        .limits
        .max_message_bytes
        .min(config.limits.max_mail_body_bytes / 4);
    if spec.message_bytes < 16 || spec.message_bytes > max_text {
        return Err(err(
            "message_bytes",
            format!(
                "must be between 16 and {max_text} (the server's max_message_bytes, and a quarter of max_mail_body_bytes), got {}",
                spec.message_bytes
            ),
        ));
    }
    let max_file = config.limits.max_file_bytes.min(MAX_LEGIT_FILE_BYTES);
    if spec.file_bytes < 1 || spec.file_bytes > max_file {
        return Err(err(
            "file_bytes",
            format!("must be between 1 and {max_file}, got {}", spec.file_bytes),
        ));
    }
    let start = spec.start_s;
    if !(start.is_finite() && start >= 0.0 && start < d) {
        return Err(err(
            "start_s",
            format!("must be at least 0 and less than duration_s ({d}), got {start}"),
        ));
    }
    let stop = spec.stop_s.unwrap_or(d);
    if !(stop.is_finite() && stop > start && stop <= d) {
        return Err(err(
            "stop_s",
            format!("must be more than start_s ({start}) and at most duration_s ({d}), got {stop}"),
        ));
    }
    let relogin_every = match spec.relogin_every_s {
        None => None,
        Some(r) if r.is_finite() && r >= MIN_RELOGIN_S && r <= d => {
            Some(Duration::from_secs_f64(r))
        }
        Some(r) => {
            return Err(err(
                "relogin_every_s",
                format!("must be at least {MIN_RELOGIN_S} and at most duration_s ({d}), got {r}"),
            ))
        }
    };
    let reconnect_every = match spec.reconnect_every_s {
        None => None,
        Some(r) if r.is_finite() && r >= MIN_RELOGIN_S && r <= d => {
            Some(Duration::from_secs_f64(r))
        }
        Some(r) => {
            return Err(err(
                "reconnect_every_s",
                format!("must be at least {MIN_RELOGIN_S} and at most duration_s ({d}), got {r}"),
            ))
        }
    };
    for (key, v) in [
        ("typo_rate", spec.typo_rate),
        ("stale_fetch_rate", spec.stale_fetch_rate),
        ("wrong_id_rate", spec.wrong_id_rate),
        ("unknown_recipient_rate", spec.unknown_recipient_rate),
    ] {
        if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
            return Err(err(key, format!("must be between 0 and 1, got {v}")));
        }
    }
    let mistakes = spec.stale_fetch_rate + spec.wrong_id_rate + spec.unknown_recipient_rate;
    if mistakes > 1.0 {
        return Err(err(
            "unknown_recipient_rate",
            format!("stale_fetch_rate + wrong_id_rate + unknown_recipient_rate must be at most 1 (they are shares of the same operations), got {mistakes}"),
        ));
    }
    if spec.stale_password_retries > MAX_STALE_PASSWORD_RETRIES {
        return Err(err(
            "stale_password_retries",
            format!(
                "must be at most {MAX_STALE_PASSWORD_RETRIES}, got {}",
                spec.stale_password_retries
            ),
        ));
    }
    if spec.per_command_login {
        if spec.relogin_every_s.is_some() || spec.reconnect_every_s.is_some() {
            return Err(err(
                "per_command_login",
                "logs in for every operation already; it cannot be combined with relogin_every_s or reconnect_every_s".into(),
            ));
        }
        // A login per operation: the rate is a login rate, held to relogin_every_s's floor.
        if r > 1.0 / MIN_RELOGIN_S {
            return Err(err(
                "per_command_login",
                format!("needs rate_per_s of at most {} (one login per operation; faster is a login flood), got {r}", 1.0 / MIN_RELOGIN_S),
            ));
        }
    }
    if spec.behind_nat < 1 || spec.behind_nat > MAX_LEGIT_CLIENTS {
        return Err(err(
            "behind_nat",
            format!(
                "must be between 1 and {MAX_LEGIT_CLIENTS}, got {}",
                spec.behind_nat
            ),
        ));
    }
    let stall_read = match spec.stall_read_s {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 && s <= MAX_STALL_READ_S && s < d => {
            Some(Duration::from_secs_f64(s))
        }
        Some(s) => {
            return Err(err(
                "stall_read_s",
                format!("must be more than 0, at most {MAX_STALL_READ_S} and less than duration_s ({d}), got {s}"),
            ))
        }
    };
    check_group_name(&spec.name).map_err(|r| err("name", r))?;
    Ok(Legit {
        clients: spec.clients,
        rate_per_s: r,
        mix: [
            m.message / sum,
            m.mail / sum,
            m.file / sum,
            m.read / sum,
            m.ping / sum,
        ],
        sources,
        net,
        message_bytes: spec.message_bytes,
        file_bytes: spec.file_bytes,
        start: Duration::from_secs_f64(start),
        stop: Duration::from_secs_f64(stop),
        relogin_every,
        typo_rate: spec.typo_rate,
        stale_password_retries: spec.stale_password_retries,
        stale_fetch_rate: spec.stale_fetch_rate,
        wrong_id_rate: spec.wrong_id_rate,
        unknown_recipient_rate: spec.unknown_recipient_rate,
        reconnect_every,
        per_command_login: spec.per_command_login,
        behind_nat: spec.behind_nat,
        stall_read,
        pace: spec.pace,
        client: spec.client,
        name: spec.name.clone(),
    })
}

/// A group name is a dataset's `group` value: short, plain, never `+` (which joins the names
/// of groups sharing a source) and never an attack kind (which names attacking sources).
fn check_group_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_GROUP_NAME_LEN
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'))
    {
        return Err(format!(
            "must be 1-{MAX_GROUP_NAME_LEN} characters of a-z, 0-9, '-', '_', got {name:?}"
        ));
    }
    if AttackKind::ALL.iter().any(|k| k.as_str() == name) {
        return Err(format!(
            "`{name}` is an attack kind, which names attacking sources in datasets"
        ));
    }
    Ok(())
}

fn check_expect(spec: &ExpectSpec, attacks: &[Attack]) -> Result<Expect, (String, String)> {
    let err = |k: &str, r: String| (k.to_string(), r);
    if let Some(g) = spec.legit_goodput_min {
        if !(0.0..=1.0).contains(&g) {
            return Err(err(
                "legit_goodput_min",
                format!("must be between 0 and 1, got {g}"),
            ));
        }
    }
    if spec.latency_slo_ms < 1 || spec.latency_slo_ms > MAX_LATENCY_SLO_MS {
        return Err(err(
            "latency_slo_ms",
            format!(
                "must be between 1 and {MAX_LATENCY_SLO_MS}, got {}",
                spec.latency_slo_ms
            ),
        ));
    }
    for (key, value) in [
        ("latency_p99_ms_max", spec.latency_p99_ms_max),
        ("blocked_within_s", spec.blocked_within_s),
        ("peak_rss_mb_max", spec.peak_rss_mb_max),
        ("rss_growth_mb_max", spec.rss_growth_mb_max),
        ("fleet_block_spread_ms_max", spec.fleet_block_spread_ms_max),
    ] {
        if let Some(v) = value {
            if !(v.is_finite() && v > 0.0) {
                return Err(err(key, format!("must be a number above 0, got {v}")));
            }
        }
    }
    let present: BTreeSet<AttackKind> = attacks.iter().map(Attack::kind).collect();
    let blocked_kinds = match &spec.blocked_kinds {
        None => present.clone(),
        Some(names) => {
            if spec.blocked_within_s.is_none() {
                return Err(err("blocked_kinds", "needs expect.blocked_within_s".into()));
            }
            let mut kinds = BTreeSet::new();
            for name in names {
                let kind = AttackKind::ALL
                    .iter()
                    .copied()
                    .find(|k| k.as_str() == name)
                    .ok_or_else(|| err("blocked_kinds", format!("unknown attack kind `{name}`")))?;
                if !present.contains(&kind) {
                    return Err(err(
                        "blocked_kinds",
                        format!("`{name}` is not one of this scenario's attacks"),
                    ));
                }
                kinds.insert(kind);
            }
            kinds
        }
    };
    if spec.blocked_within_s.is_some() && attacks.is_empty() {
        return Err(err(
            "blocked_within_s",
            "the scenario has no [[attack]]".into(),
        ));
    }
    if spec.blocked_before_attacking_max.is_some()
        && !present.iter().any(|k| k.reports_first_attack())
    {
        let kinds: Vec<&str> = AttackKind::ALL
            .iter()
            .filter(|k| k.reports_first_attack())
            .map(|k| k.as_str())
            .collect();
        return Err(err(
            "blocked_before_attacking_max",
            format!(
                "needs an attack that acts as a user first ({})",
                kinds.join(", ")
            ),
        ));
    }
    Ok(Expect {
        server_alive: spec.server_alive,
        legit_goodput_min: spec.legit_goodput_min,
        latency_slo: Duration::from_millis(spec.latency_slo_ms),
        latency_p99_ms_max: spec.latency_p99_ms_max,
        legit_lost_max: spec.legit_lost_max,
        blocked_within_s: spec.blocked_within_s,
        blocked_kinds,
        false_blocks_max: spec.false_blocks_max,
        peak_rss_mb_max: spec.peak_rss_mb_max,
        rss_growth_mb_max: spec.rss_growth_mb_max,
        max_panics: spec.max_panics,
        canary_leaks_max: spec.canary_leaks_max,
        legit_login_refusals_max: spec.legit_login_refusals_max,
        model_blocks_min: spec.model_blocks_min,
        fleet_block_spread_ms_max: spec.fleet_block_spread_ms_max,
        blocked_before_attacking_max: spec.blocked_before_attacking_max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "name = \"t\"\nduration_s = 3\n";

    fn check(text: &str) -> Result<Scenario, ScenarioError> {
        let path = Path::new("scenarios/t.toml");
        ScenarioSpec::from_toml_str(text, path)?.check(path)
    }

    /// Expects `text` to be rejected naming `key` (a dotted key, or for parse errors a
    /// fragment of toml's message).
    fn rejected(text: &str, key: &str) {
        match check(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.starts_with("scenarios/t.toml: "), "{msg}");
                assert!(msg.contains(key), "expected {key} in: {msg}");
            }
        }
    }

    #[test]
    fn minimal_file_gets_defaults() -> Result<(), ScenarioError> {
        let s = check(&format!("{BASE}[[legit]]\n"))?;
        assert_eq!(s.seed(), 1);
        assert_eq!(s.legit()[0].clients, 4);
        assert_eq!(s.legit()[0].sources.len(), 6);
        assert_eq!(s.legit()[0].relogin_every, None);
        assert_eq!(s.expect().latency_slo, Duration::from_millis(1000));
        assert_eq!(*s.config(), Config::default());
        Ok(())
    }

    #[test]
    fn the_mix_is_normalized_and_reads_are_off_by_default() -> Result<(), ScenarioError> {
        let s = check(&format!("{BASE}[[legit]]\n"))?;
        let mix = s.legit()[0].mix;
        for (got, want) in mix.iter().zip([0.6, 0.3, 0.1, 0.0]) {
            assert!((got - want).abs() < 1e-12, "{mix:?}");
        }
        let s = check(&format!(
            "{BASE}[[legit]]\nmix = {{ message = 1, read = 3 }}\n"
        ))?;
        assert_eq!(s.legit()[0].mix, [0.25, 0.0, 0.0, 0.75, 0.0]);
        rejected(
            &format!("{BASE}[[legit]]\nmix = {{ read = -1, mail = 1 }}\n"),
            "legit[0].mix.read",
        );
        Ok(())
    }

    #[test]
    fn faults_are_checked_and_sorted() -> Result<(), ScenarioError> {
        let f = |body: &str| format!("name = \"t\"\nduration_s = 20\n{body}");
        let s = check(&f(
            "[[sim.fault]]\nkind = \"clock-jump\"\nat_s = 9\njump_s = -60\n\
             [[sim.fault]]\nkind = \"crash\"\nat_s = 2\nduration_s = 1\n\
             [[sim.fault]]\nkind = \"slow-disk\"\nat_s = 5\nduration_s = 2\ndelay_ms = 300\n",
        ))?;
        let kinds: Vec<FaultKind> = s.sim().fault.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [FaultKind::Crash, FaultKind::SlowDisk, FaultKind::ClockJump]
        );
        for (body, key) in [
            ("kind = \"crash\"\nat_s = 2\n", "sim.fault[0].duration_s"),
            (
                "kind = \"crash\"\nat_s = 20\nduration_s = 1\n",
                "sim.fault[0].at_s",
            ),
            (
                "kind = \"crash\"\nat_s = -1\nduration_s = 1\n",
                "sim.fault[0].at_s",
            ),
            (
                "kind = \"disk-full\"\nat_s = 1\nduration_s = 1\ndelay_ms = 5\n",
                "sim.fault[0].delay_ms",
            ),
            (
                "kind = \"slow-disk\"\nat_s = 1\nduration_s = 1\n",
                "sim.fault[0].delay_ms",
            ),
            ("kind = \"clock-jump\"\nat_s = 1\n", "sim.fault[0].jump_s"),
            (
                "kind = \"clock-jump\"\nat_s = 1\njump_s = 5\nduration_s = 1\n",
                "sim.fault[0].duration_s",
            ),
            (
                "kind = \"crash\"\nat_s = 1\nduration_s = 1\njump_s = 5\n",
                "sim.fault[0].jump_s",
            ),
            ("kind = \"meteor\"\nat_s = 1\n", "meteor"),
            (
                "kind = \"partition\"\nat_s = 1\nduration_s = 1\n",
                "sim.fault[0].sources",
            ),
            (
                "kind = \"partition\"\nat_s = 1\nduration_s = 1\nsources = \"10.0.0.300\"\n",
                "sim.fault[0].sources",
            ),
            (
                "kind = \"crash\"\nat_s = 1\nduration_s = 1\nsources = \"127.0.0.2\"\n",
                "sim.fault[0].sources",
            ),
        ] {
            rejected(&f(&format!("[[sim.fault]]\n{body}")), key);
        }
        let s = check(&f("[[sim.link]]\nsources = \"2001:db8::/64\"\nlatency_ms = 30\n\
             [[sim.fault]]\nkind = \"partition\"\nat_s = 1\nduration_s = 2\nsources = \"127.0.2.0/28\"\n"))?;
        assert!(s.sim().needs_sim());
        let c = s.sim().conditions();
        assert!(c.always_carry, "a partition reaches every connection");
        assert_eq!(c.hosts.len(), 1);
        let inside = std::net::IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 7]);
        assert_eq!(c.profile_for(inside).latency, Duration::from_millis(30));
        rejected(
            &f("[[sim.link]]\nsources = \"nowhere\"\n"),
            "sim.link[0].sources",
        );
        rejected(
            &f("[[sim.link]]\nsources = \"127.0.0.2\"\nloss = 0.9\n"),
            "sim.link[0].loss",
        );
        rejected(
            &f(
                "[[sim.fault]]\nkind = \"fsync-fail\"\nat_s = 1\nduration_s = 5\n\
                [[sim.fault]]\nkind = \"crash\"\nat_s = 4\nduration_s = 1\n",
            ),
            "must not overlap",
        );
        Ok(())
    }

    #[test]
    fn server_overrides_apply() -> Result<(), ScenarioError> {
        let s = check(&format!("{BASE}[server.auth]\nargon2_memory_kib = 64\n[server.limits]\nmax_connections_per_ip = 8\n"))?;
        assert_eq!(s.config().auth.argon2_memory_kib, 64);
        assert_eq!(s.config().limits.max_connections_per_ip, 8);
        assert_eq!(s.config().rates, Config::default().rates);
        Ok(())
    }

    #[test]
    fn each_rule_names_its_key() {
        let cases: &[(&str, &str)] = &[
            ("name = \"a b\"\nduration_s = 3\n", "key name"),
            ("name = \"t\"\nduration_s = 0\n", "key duration_s"),
            ("name = \"t\"\nduration_s = 5000\n", "key duration_s"),
            ("name = \"t\"\ndration_s = 3\n", "dration_s"),
            ("name = \"t\"\nduration_s = \"3\"\n", "duration_s"),
            ("duration_s = 3\n", "missing field `name`"),
            (&format!("{BASE}[[legit]]\nclients = 3\nclent = 3\n"), "clent"),
            (&format!("{BASE}[[legit]]\nclient = 3\n"), "client"),
            (
                &format!("{BASE}[[legit]]\nclients = 0\n"),
                "legit[0].clients",
            ),
            (
                &format!("{BASE}[[legit]]\nrate_per_s = -1\n"),
                "legit[0].rate_per_s",
            ),
            (
                &format!("{BASE}[[legit]]\nmix = {{ message = 1, chat = 1 }}\n"),
                "chat",
            ),
            (
                &format!("{BASE}[[legit]]\nmix = {{ message = 0 }}\n"),
                "legit[0].mix",
            ),
            (
                &format!("{BASE}[[legit]]\nmix = {{ file = -1, mail = 1 }}\n"),
                "legit[0].mix.file",
            ),
            (
                &format!("{BASE}[[legit]]\nsources = \"10.0.0.0/24\"\n"),
                "legit[0].sources",
            ),
            (
                &format!("{BASE}[[legit]]\nsources = \"127.0.0.300/24\"\n"),
                "127.0.0.300",
            ),
            (
                &format!("{BASE}[[legit]]\nsources = \"127.0.0.100\"\n"),
                "legit[0].sources",
            ),
            (
                &format!("{BASE}[[legit]]\nmessage_bytes = 1\n"),
                "legit[0].message_bytes",
            ),
            (
                &format!("{BASE}[[legit]]\nfile_bytes = 0\n"),
                "legit[0].file_bytes",
            ),
            (
                &format!("{BASE}[[legit]]\nstart_s = 3\n"),
                "legit[0].start_s",
            ),
            (&format!("{BASE}[[legit]]\nstop_s = 4\n"), "legit[0].stop_s"),
            (
                &format!("{BASE}[[legit]]\nrelogin_every_s = 0.5\n"),
                "legit[0].relogin_every_s",
            ),
            (
                &format!("{BASE}[[legit]]\nrelogin_every_s = 4\n"),
                "legit[0].relogin_every_s",
            ),
            (
                &format!("{BASE}[expect]\nlegit_goodput_min = 1.5\n"),
                "expect.legit_goodput_min",
            ),
            (
                &format!("{BASE}[expect]\nlatency_slo_ms = 0\n"),
                "expect.latency_slo_ms",
            ),
            (
                &format!("{BASE}[expect]\nblocked_within_s = 3\n"),
                "expect.blocked_within_s",
            ),
            (
                &format!("{BASE}[expect]\nblocked_within = 3\n"),
                "blocked_within",
            ),
            (
                &format!("{BASE}[expect]\npeak_rss_mb_max = 0\n"),
                "expect.peak_rss_mb_max",
            ),
            (
                &format!("{BASE}[expect]\nblocked_kinds = [\"flood\"]\n"),
                "expect.blocked_kinds",
            ),
            (
                &format!("{BASE}[server.limits]\nmax_frme_bytes = 5000\n"),
                "server.limits.max_frme_bytes",
            ),
            (&format!("{BASE}[server.limitz]\n"), "server.limitz"),
            (
                &format!("{BASE}[server.limits]\nmax_chunk_bytes = 0\n"),
                "server.limits.max_chunk_bytes",
            ),
            (
                &format!("{BASE}[server.limits]\nmax_chunk_bytes = \"big\"\n"),
                "invalid type",
            ),
            (
                &format!("{BASE}[[attack]]\nkind = \"flood\"\nstart_s = 10\n"),
                "attack[0].start_s",
            ),
            (
                &format!("{BASE}[[attack]]\nkind = \"teleport\"\n"),
                "teleport",
            ),
            (
                &format!("{BASE}[[legit]]\ntypo_rate = 1.5\n"),
                "legit[0].typo_rate",
            ),
            (
                &format!("{BASE}[[legit]]\ntypo_rate = -0.1\n"),
                "legit[0].typo_rate",
            ),
            (
                &format!("{BASE}[[legit]]\nstale_password_retries = 11\n"),
                "legit[0].stale_password_retries",
            ),
            (
                &format!("{BASE}[[legit]]\nstale_password_retries = -1\n"),
                "stale_password_retries",
            ),
            (
                &format!("{BASE}[[legit]]\nstale_fetch_rate = 2\n"),
                "legit[0].stale_fetch_rate",
            ),
            (
                &format!("{BASE}[[legit]]\nwrong_id_rate = nan\n"),
                "legit[0].wrong_id_rate",
            ),
            (
                &format!("{BASE}[[legit]]\nunknown_recipient_rate = 1.01\n"),
                "legit[0].unknown_recipient_rate",
            ),
            (
                &format!("{BASE}[[legit]]\nwrong_id_rate = 0.6\nunknown_recipient_rate = 0.6\n"),
                "legit[0].unknown_recipient_rate",
            ),
            (
                &format!("{BASE}[[legit]]\nreconnect_every_s = 0.5\n"),
                "legit[0].reconnect_every_s",
            ),
            (
                &format!("{BASE}[[legit]]\nreconnect_every_s = 4\n"),
                "legit[0].reconnect_every_s",
            ),
            (
                &format!("{BASE}[[legit]]\nper_command_login = true\n"),
                "legit[0].per_command_login",
            ),
            (
                &format!("{BASE}[[legit]]\nper_command_login = true\nrate_per_s = 1\nrelogin_every_s = 2\n"),
                "legit[0].per_command_login",
            ),
            (
                &format!("{BASE}[[legit]]\nper_command_login = \"yes\"\n"),
                "per_command_login",
            ),
            (
                &format!("{BASE}[[legit]]\nbehind_nat = 0\n"),
                "legit[0].behind_nat",
            ),
            (
                &format!("{BASE}[[legit]]\nstall_read_s = 0\n"),
                "legit[0].stall_read_s",
            ),
            (
                &format!("{BASE}[[legit]]\nstall_read_s = 3\n"),
                "legit[0].stall_read_s",
            ),
            (
                &format!("{BASE}[[legit]]\npace = \"random\"\n"),
                "random",
            ),
            (
                &format!("{BASE}[[legit]]\nclient = \"netcat\"\n"),
                "netcat",
            ),
            (&format!("{BASE}[[legit]]\nname = \"\"\n"), "legit[0].name"),
            (
                &format!("{BASE}[[legit]]\nname = \"a+b\"\n"),
                "legit[0].name",
            ),
            (
                &format!("{BASE}[[legit]]\nname = \"Typos\"\n"),
                "legit[0].name",
            ),
            (
                &format!("{BASE}[[legit]]\nname = \"flood\"\n"),
                "legit[0].name",
            ),
        ];
        for (text, key) in cases {
            rejected(text, key);
        }
    }

    #[test]
    fn new_legit_keys_default_to_todays_behaviour() -> Result<(), ScenarioError> {
        let s = check(&format!("{BASE}[[legit]]\n"))?;
        let g = &s.legit()[0];
        assert_eq!(g.typo_rate, 0.0);
        assert_eq!(g.stale_password_retries, 0);
        assert_eq!(
            (
                g.stale_fetch_rate,
                g.wrong_id_rate,
                g.unknown_recipient_rate
            ),
            (0.0, 0.0, 0.0)
        );
        assert_eq!(g.reconnect_every, None);
        assert!(!g.per_command_login);
        assert_eq!(g.behind_nat, 1);
        assert_eq!(g.stall_read, None);
        assert_eq!(g.pace, Pace::Steady);
        assert_eq!(g.client, ClientKind::Rampart);
        assert_eq!(g.name, "benign");
        assert!(!g.makes_login_mistakes());
        // Client i binds source i (wrapping), as before behind_nat existed.
        let sources: Vec<Ipv4Addr> = (0..8).map(|i| g.source_of(i)).collect();
        assert_eq!(sources[..6], g.sources[..]);
        assert_eq!(sources[6..], g.sources[..2]);
        Ok(())
    }

    #[test]
    fn new_legit_keys_are_read() -> Result<(), ScenarioError> {
        let s = check(&format!(
            "{BASE}[[legit]]\nclients = 6\nrate_per_s = 1\nsources = \"127.0.0.0/30\"\ntypo_rate = 0.25\nstale_password_retries = 2\nstale_fetch_rate = 0.1\nwrong_id_rate = 0.2\nunknown_recipient_rate = 0.3\nper_command_login = true\nbehind_nat = 3\nstall_read_s = 1.5\npace = \"bursty\"\nclient = \"segmented\"\nname = \"cli-typos\"\n[[legit]]\nreconnect_every_s = 2\npace = \"diurnal\"\n"
        ))?;
        let g = &s.legit()[0];
        assert_eq!(g.typo_rate, 0.25);
        assert_eq!(g.stale_password_retries, 2);
        assert_eq!(
            (
                g.stale_fetch_rate,
                g.wrong_id_rate,
                g.unknown_recipient_rate
            ),
            (0.1, 0.2, 0.3)
        );
        assert!(g.per_command_login);
        assert!(g.makes_login_mistakes());
        assert_eq!(g.stall_read, Some(Duration::from_millis(1500)));
        assert_eq!((g.pace, g.client), (Pace::Bursty, ClientKind::Segmented));
        assert_eq!(g.name, "cli-typos");
        // Three users per address: 0-2 on the first, 3-5 on the second.
        let a = Ipv4Addr::new(127, 0, 0, 1);
        let b = Ipv4Addr::new(127, 0, 0, 2);
        let sources: Vec<Ipv4Addr> = (0..6).map(|i| g.source_of(i)).collect();
        assert_eq!(sources, vec![a, a, a, b, b, b]);
        let h = &s.legit()[1];
        assert_eq!(h.reconnect_every, Some(Duration::from_secs(2)));
        assert_eq!(h.pace, Pace::Diurnal);
        Ok(())
    }

    #[test]
    fn legit_users_may_share_an_attackers_address() -> Result<(), ScenarioError> {
        let s = check(&format!(
            "{BASE}[[legit]]\nsources = \"127.0.1.1\"\n[[attack]]\nkind = \"flood\"\nsources = \"127.0.1.0/30\"\n"
        ))?;
        assert_eq!(s.legit()[0].sources, vec![Ipv4Addr::new(127, 0, 1, 1)]);
        Ok(())
    }

    #[test]
    fn blocked_kinds_restricts_the_check() -> Result<(), ScenarioError> {
        let s = check(&format!(
            "{BASE}[[attack]]\nkind = \"flood\"\n[[attack]]\nkind = \"probe\"\nsources = \"127.0.2.0/24\"\n[expect]\nblocked_within_s = 2\nblocked_kinds = [\"probe\"]\n"
        ))?;
        assert_eq!(
            s.expect().blocked_kinds.iter().copied().collect::<Vec<_>>(),
            vec![AttackKind::Probe]
        );
        Ok(())
    }

    #[test]
    fn with_duration_clips_windows() -> Result<(), ScenarioError> {
        let s = check(
            "name = \"t\"\nduration_s = 8\n[[legit]]\n[[attack]]\nkind = \"flood\"\nstart_s = 5\n",
        )?
        .with_duration(Duration::from_secs(3));
        assert_eq!(s.legit()[0].stop, Duration::from_secs(3));
        assert!(s.attacks().is_empty());
        Ok(())
    }
}
