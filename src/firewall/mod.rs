//! The firewall: turns what sources do into decisions to block them.
//!
//! The server reports suspicious events as [`Signal`]s. Each signal adds its configured weight
//! to the source's score, which decays exponentially (half-life `firewall.half_life_s`); when a
//! score reaches `firewall.threshold` the firewall blocks the source in the [`Guard`], which
//! refuses it at accept and cuts its open sessions, except, when rule signals tipped it,
//! logged-in ones that did not offend (`Guard::block_offence`). Repeat offenders are blocked for longer
//! (`ip.block_secs` times `firewall.escalation` per earlier block, up to
//! `firewall.max_block_secs`). One offence makes one decision: signals that arrive while the
//! source is blocked belong to the burst already decided, so only a new offence after the
//! block ended escalates. Allow-listed sources are never blocked (the guard refuses),
//! and in shadow mode decisions are logged and recorded but not enforced.
//!
//! Proportion: no weight exceeds half the threshold (`FirewallConfig::check` refuses one that
//! does), so no single event blocks a source, and an honest mistake is taken back:
//! [`Firewall::forgive`] removes the points of failed logins that the same source then
//! followed with the right password.
//!
//! Invariant: per-source state is bounded by `limits.max_tracked_sources`; [`Firewall::purge`]
//! drops scores that have decayed to nothing.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use serde::Serialize;

use crate::activity::{now_ms, DecisionRecord, Recorder};
use crate::config::reload::Live;
use crate::config::{Config, FirewallConfig};
use crate::guard::{Guard, SourceKey};
use crate::protocol::error::vocabulary;

/// Most decisions kept in memory for listing.
const DECISION_LOG: usize = 10_000;

/// Share of the threshold that decay may take off a score and still count as reaching it,
/// so that weights adding up to the threshold block when they arrive within a few seconds of
/// each other (5% is about 4 s of decay at the default one-minute half-life).
const THRESHOLD_TOLERANCE: f64 = 0.05;

/// A score below this, in points, is forgotten at the next purge.
const FORGET_BELOW: f64 = 0.5;

/// Scores up to this many times the model's threshold earn the firewall nothing: the band
/// just past the threshold is where honest windows land when a user does something the
/// model was not trained on (a mistyped id, four command-line users behind one address),
/// and a trickle of such windows added up to a block where no single one was strong.
pub const WEAK_ANOMALY: f64 = 1.25;

/// How much of `weight_model_anomaly` a window scoring `score` against `threshold` earns:
/// 0 up to [`WEAK_ANOMALY`] times the threshold, rising linearly to 1 at twice the
/// threshold, 1 beyond. A threshold that is not positive gives every anomalous window the
/// full weight.
pub fn anomaly_strength(score: f64, threshold: f64) -> f64 {
    // NaN compares false everywhere: a NaN score earns nothing.
    if score.is_nan() || score <= threshold {
        return 0.0;
    }
    if threshold.is_nan() || threshold <= 0.0 {
        return 1.0;
    }
    ((score / threshold - WEAK_ANOMALY) / (2.0 - WEAK_ANOMALY)).clamp(0.0, 1.0)
}

vocabulary! {
    /// A suspicious event attributed to one source.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Signal {
        /// A broken frame header.
        FatalFrame => "fatal_frame",
        /// A malformed body in a well-framed request.
        BadBody => "bad_body",
        /// A request refused by a frame rate limiter.
        RateLimited => "rate_limited",
        /// A login refused by a login rate limiter.
        LoginRateLimited => "login_rate_limited",
        /// A failed login.
        AuthFailed => "auth_failed",
        /// A request for another user's item.
        PermissionDenied => "permission_denied",
        /// A request for an item id that no item ever had (past the highest handed out).
        UnknownId => "unknown_id",
        /// A frame cut by its time budget or minimum rate.
        SlowFrame => "slow_frame",
        /// No authentication within the time limit.
        AuthTimeout => "auth_timeout",
        /// A connection cut because it did not read its replies.
        WriteTimeout => "write_timeout",
        /// A connection refused at accept by a per-source cap or the accept rate.
        Refused => "refused",
        /// The detection model found one of the source's activity windows anomalous.
        ModelAnomaly => "model_anomaly",
        /// A logged-in session sent a well-formed request over its kind's maximum (a mail
        /// too large for the server's limit): a user's mistake more often than an attack.
        TooLarge => "too_large",
    }
    /// A stable snake_case name.
    fn as_str;
}

impl Signal {
    fn weight(self, cfg: &FirewallConfig) -> u32 {
        match self {
            Signal::FatalFrame => cfg.weight_fatal_frame,
            Signal::BadBody => cfg.weight_bad_body,
            Signal::RateLimited => cfg.weight_rate_limited,
            Signal::LoginRateLimited => cfg.weight_login_rate_limited,
            Signal::AuthFailed => cfg.weight_auth_failed,
            Signal::PermissionDenied => cfg.weight_permission_denied,
            Signal::UnknownId => cfg.weight_unknown_id,
            Signal::SlowFrame => cfg.weight_slow_frame,
            Signal::AuthTimeout => cfg.weight_auth_timeout,
            Signal::WriteTimeout => cfg.weight_write_timeout,
            Signal::Refused => cfg.weight_refused,
            Signal::ModelAnomaly => cfg.weight_model_anomaly,
            Signal::TooLarge => cfg.weight_too_large,
        }
    }
}

vocabulary! {
    /// What the firewall decided.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Action {
        /// The source was blocked.
        Block => "block",
        /// Shadow mode: the source would have been blocked.
        ShadowBlock => "shadow_block",
        /// The source is allow-listed, so it was not blocked.
        Allowed => "allowed",
        /// An operator lifted the source's block.
        Unblock => "unblock",
    }
    /// The stored name.
    fn as_str;
}

/// One decision, with its reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// When it was taken.
    pub at: SystemTime,
    /// The source it concerns.
    pub source: SourceKey,
    /// What was done.
    pub action: Action,
    /// How long the block lasts.
    pub duration_s: u64,
    /// The score that crossed the threshold.
    pub score: f64,
    /// Why: the signal that tipped the score and the signals seen, by name.
    pub reason: String,
    /// The signal that tipped the score (`None` for an operator's unblock, or a block another
    /// server of the fleet decided).
    pub trigger: Option<Signal>,
    /// The signals that added up to the score, by kind, with how often each came.
    pub signals: Vec<(Signal, u32)>,
}

#[derive(Debug)]
struct Score {
    points: f64,
    updated: Instant,
    /// Earlier blocks of this source, for escalation.
    blocks: u32,
    /// Signals counted since the last decision, by kind, in first-seen order.
    recent: Vec<(Signal, u32)>,
    /// Until when the last decision stands where the guard does not hold it (shadow mode, an
    /// allow-listed source): signals until then belong to the offence already decided.
    decided_until: Option<Instant>,
    /// Other servers of the fleet added evidence since the last decision.
    from_peers: bool,
}

impl Score {
    fn decayed(&self, now: Instant, half_life: Duration) -> f64 {
        let dt = now.saturating_duration_since(self.updated).as_secs_f64();
        self.points * 0.5f64.powf(dt / half_life.as_secs_f64())
    }
}

/// The firewall's reloadable settings, swapped whole by [`Firewall::reload`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    fw: FirewallConfig,
    /// `ip.block_secs`, the first block's length.
    block_secs: u64,
}

impl Settings {
    fn of(config: &Config) -> Settings {
        Settings {
            fw: config.firewall.clone(),
            block_secs: config.ip.block_secs,
        }
    }

    fn half_life(&self) -> Duration {
        Duration::from_secs(self.fw.half_life_s)
    }
}

/// The rule-based firewall, shared by every connection.
pub struct Firewall {
    /// Shared with the [`Firewall::shadow_board`], so a reload reaches both.
    settings: Arc<Live<Settings>>,
    /// Set on a shadow board: every decision is `shadow_block`, whatever `firewall.shadow`.
    force_shadow: bool,
    max_sources: usize,
    ipv6_prefix: u8,
    guard: Arc<Guard>,
    scores: Mutex<HashMap<SourceKey, Score>>,
    decisions: Mutex<VecDeque<Decision>>,
    recorder: Recorder,
    /// Decisions taken, by action and trigger ([`Firewall::decision_counts`]).
    counts: DecisionCounts,
    /// Where this firewall's own blocks go for the other servers of a fleet
    /// ([`Firewall::share_blocks`]); unset on a server of its own.
    peers: std::sync::OnceLock<std::sync::mpsc::SyncSender<SharedBlock>>,
    /// Where the evidence this firewall scores goes for the other servers of a fleet
    /// ([`Firewall::share_evidence`]); unset on a server of its own.
    evidence: std::sync::OnceLock<std::sync::mpsc::SyncSender<SharedEvidence>>,
}

/// Evidence against a source this firewall scored (or, with negative points, took back:
/// [`Firewall::forgive`]), for the other servers of a fleet, so that a source's score sums
/// what every server saw (`crate::fleet`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SharedEvidence {
    /// The source.
    pub source: SourceKey,
    /// The signal.
    pub signal: Signal,
    /// Points added (taken back, when negative), as scored at the time.
    pub points: f64,
}

/// A block this firewall decided, for the other servers of a fleet (`crate::fleet`).
#[derive(Debug, Clone, PartialEq)]
pub struct SharedBlock {
    /// The blocked source.
    pub source: SourceKey,
    /// How long the block lasts.
    pub duration_s: u64,
    /// Why, as the decision says.
    pub reason: String,
}

/// How many triggers a decision can have: every signal, and none (an operator's unblock).
const TRIGGERS: usize = Signal::ALL.len() + 1;

/// Decisions counted by [`Action`] and trigger position (a [`Signal`]'s, or the last for
/// none).
#[derive(Debug)]
struct DecisionCounts([[std::sync::atomic::AtomicU64; TRIGGERS]; Action::ALL.len()]);

impl Default for DecisionCounts {
    fn default() -> Self {
        DecisionCounts(std::array::from_fn(|_| {
            std::array::from_fn(|_| std::sync::atomic::AtomicU64::new(0))
        }))
    }
}

impl DecisionCounts {
    fn bump(&self, action: Action, trigger: Option<Signal>) {
        let a = Action::ALL.iter().position(|x| *x == action);
        let t = match trigger {
            Some(s) => Signal::ALL.iter().position(|x| *x == s),
            None => Some(Signal::ALL.len()),
        };
        if let Some(c) = a
            .and_then(|a| self.0.get(a))
            .zip(t)
            .and_then(|(row, t)| row.get(t))
        {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for Firewall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Firewall")
            .field("settings", &self.settings.load())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Firewall {
    /// The guard this firewall blocks through.
    pub(crate) fn guard(&self) -> &Arc<Guard> {
        &self.guard
    }

    /// A firewall that blocks through `guard`, configured by `config.firewall`.
    pub fn new(config: &Config, guard: Arc<Guard>) -> Firewall {
        Firewall {
            settings: Arc::new(Live::new(Settings::of(config))),
            force_shadow: false,
            max_sources: config.limits.max_tracked_sources as usize,
            ipv6_prefix: config.ip.ipv6_prefix,
            guard,
            scores: Mutex::new(HashMap::new()),
            decisions: Mutex::new(VecDeque::new()),
            recorder: Recorder::disabled(),
            counts: DecisionCounts::default(),
            peers: std::sync::OnceLock::new(),
            evidence: std::sync::OnceLock::new(),
        }
    }

    /// Hands every block this firewall decides from now on to `peers` (the fleet link,
    /// which shares it with the other servers); a full queue drops it, and the other
    /// servers then judge the source by what they see themselves. Set once.
    pub fn share_blocks(&self, peers: std::sync::mpsc::SyncSender<SharedBlock>) {
        let _ = self.peers.set(peers);
    }

    /// Hands every signal this firewall scores from now on that does not decide by itself,
    /// and every signal it forgives, to `peers` (the fleet link), so that each server's
    /// score for a source sums the evidence of all; a full queue drops it. Set once.
    pub fn share_evidence(&self, peers: std::sync::mpsc::SyncSender<SharedEvidence>) {
        let _ = self.evidence.set(peers);
    }

    /// Scores evidence another server of the fleet saw against `source`, `age` ago (so
    /// decayed by then): positive points count as that server's signal would have here (not
    /// shared again) and may decide a block, which says the score held other servers'
    /// evidence; negative points take back what that server forgave.
    pub fn apply_peer_evidence(
        &self,
        source: SourceKey,
        signal: Signal,
        points: f64,
        age: Duration,
    ) -> Option<Decision> {
        let settings = self.settings.load();
        if !settings.fw.enabled || !points.is_finite() {
            return None;
        }
        let half_life = settings.half_life().as_secs_f64();
        let points = points * 0.5f64.powf(age.as_secs_f64() / half_life.max(f64::MIN_POSITIVE));
        let ip = source.net().network();
        if points > 0.0 {
            return self.signal_with(ip, signal, points, None, false);
        }
        let now = Instant::now();
        let mut scores = lock(&self.scores);
        if let Some(s) = scores.get_mut(&source) {
            s.points = (s.decayed(now, settings.half_life()) + points).max(0.0);
            s.updated = now;
        }
        None
    }

    /// Applies a block another server of the fleet decided: the source is refused here too
    /// until it ends, its next offence here escalates as if this server had blocked it,
    /// and the decision is logged with the others (not shared again). Open sessions that
    /// logged in and did not offend stay, as for any offence. Returns whether it blocked
    /// (an allow-listed source is not).
    pub fn apply_peer_block(&self, source: SourceKey, for_: Duration, reason: &str) -> bool {
        let ip = source.net().network();
        let reason = format!("{reason} (decided by another server of the fleet)");
        let blocked = {
            let mut scores = lock(&self.scores);
            let blocked = self.guard.block_offence(ip, for_, &reason);
            if blocked && (scores.contains_key(&source) || scores.len() < self.max_sources) {
                let s = scores.entry(source).or_insert(Score {
                    points: 0.0,
                    updated: Instant::now(),
                    blocks: 0,
                    recent: Vec::new(),
                    decided_until: None,
                    from_peers: false,
                });
                s.blocks = s.blocks.saturating_add(1);
                s.points = 0.0;
            }
            blocked
        };
        if blocked {
            self.log(Decision {
                at: crate::sim::wall_now(),
                source,
                action: Action::Block,
                duration_s: for_.as_secs(),
                score: 0.0,
                reason,
                trigger: None,
                signals: Vec::new(),
            });
        }
        blocked
    }

    /// Stores every decision in the activity database through `recorder`.
    pub fn with_recorder(mut self, recorder: Recorder) -> Firewall {
        self.recorder = recorder;
        self
    }

    /// Reports a model verdict: an anomalous window of `ip`'s activity, its score, the
    /// model's threshold, and the model's explanation.
    ///
    /// The window adds `weight_model_anomaly` points in proportion to how far past the
    /// threshold it scored ([`anomaly_strength`]), the full weight from twice the threshold
    /// on and nothing up to [`WEAK_ANOMALY`] times it: a window just past it is weak
    /// evidence (the benign windows nearest the threshold are the model's false positives),
    /// one far past it is not. A source that is blocked already is left alone:
    /// its windows while blocked hold little but refused connections, which would otherwise
    /// keep re-blocking it for ever longer.
    pub fn model_anomaly(
        &self,
        ip: IpAddr,
        score: f64,
        threshold: f64,
        explanation: &str,
    ) -> Option<Decision> {
        if self.guard.is_blocked(ip) {
            return None;
        }
        let strength = anomaly_strength(score, threshold);
        if strength <= 0.0 {
            return None;
        }
        let points = f64::from(self.settings.load().fw.weight_model_anomaly) * strength;
        self.signal_with(ip, Signal::ModelAnomaly, points, Some(explanation), true)
    }

    /// Takes back `signal`s reported from `ip` that turned out to be honest mistakes (failed
    /// logins that the same source followed with the right password), one per entry of
    /// `ages`, each the time since that signal was reported. Each takes away what its weight
    /// has decayed to by now, so the score is what it would be had the signal never come, and
    /// one of the signal's count in the next decision's reason. A decision already taken
    /// stands.
    pub fn forgive(&self, ip: IpAddr, signal: Signal, ages: &[Duration]) {
        let settings = self.settings.load();
        if !settings.fw.enabled || ages.is_empty() {
            return;
        }
        let source = SourceKey::from_ip(ip, self.ipv6_prefix);
        let now = Instant::now();
        let half_life = settings.half_life();
        let weight = f64::from(signal.weight(&settings.fw));
        let mut scores = lock(&self.scores);
        let Some(s) = scores.get_mut(&source) else {
            return;
        };
        let taken: f64 = ages
            .iter()
            .map(|age| weight * 0.5f64.powf(age.as_secs_f64() / half_life.as_secs_f64()))
            .sum();
        s.points = (s.decayed(now, half_life) - taken).max(0.0);
        s.updated = now;
        // The other servers of a fleet scored these signals too: they take them back.
        if let Some(peers) = self.evidence.get() {
            let _ = peers.try_send(SharedEvidence {
                source,
                signal,
                points: -taken,
            });
        }
        let n = u32::try_from(ages.len()).unwrap_or(u32::MAX);
        if let Some((_, count)) = s.recent.iter_mut().find(|(k, _)| *k == signal) {
            *count = count.saturating_sub(n);
        }
        s.recent.retain(|(_, count)| *count > 0);
    }

    /// A model-only score board beside this firewall, for `firewall.model = "shadow"`: the
    /// same configuration and guard, but every decision it takes is `shadow_block`, so it
    /// never blocks, and it stores nothing itself (hand its decisions to
    /// [`Firewall::record_decision`]). Rule signals never reach it, so its score is what
    /// the model alone would have done.
    ///
    /// It holds no recorder on purpose: the detector's relay thread owns it, and a
    /// recorder there would keep the recorder's writer thread, and so the relay, alive.
    pub fn shadow_board(&self) -> Firewall {
        Firewall {
            settings: Arc::clone(&self.settings),
            force_shadow: true,
            max_sources: self.max_sources,
            ipv6_prefix: self.ipv6_prefix,
            guard: Arc::clone(&self.guard),
            scores: Mutex::new(HashMap::new()),
            decisions: Mutex::new(VecDeque::new()),
            recorder: Recorder::disabled(),
            counts: DecisionCounts::default(),
            peers: std::sync::OnceLock::new(),
            evidence: std::sync::OnceLock::new(),
        }
    }

    /// Stores a decision taken elsewhere (a [`Firewall::shadow_board`]'s) with this
    /// firewall's own: in the activity database and the in-memory list.
    pub fn record_decision(&self, decision: Decision) {
        self.log(decision);
    }

    /// Lifts a block (operator action) and records it.
    pub fn unblock(&self, ip: IpAddr) -> bool {
        let lifted = self.guard.unblock(ip);
        let decision = Decision {
            at: crate::sim::wall_now(),
            source: SourceKey::from_ip(ip, self.ipv6_prefix),
            action: Action::Unblock,
            duration_s: 0,
            score: 0.0,
            reason: "unblocked by an operator".into(),
            trigger: None,
            signals: Vec::new(),
        };
        self.log(decision);
        lifted
    }

    /// Decisions taken since start, by action and trigger (`None`: an operator's unblock, or a
    /// block another server of the fleet decided),
    /// every pair listed, in vocabulary order.
    pub fn decision_counts(&self) -> Vec<(Action, Option<Signal>, u64)> {
        let triggers = Signal::ALL.into_iter().map(Some).chain([None]);
        Action::ALL
            .into_iter()
            .zip(self.counts.0.iter())
            .flat_map(|(a, row)| {
                triggers
                    .clone()
                    .zip(row.iter())
                    .map(move |(t, c)| (a, t, c.load(std::sync::atomic::Ordering::Relaxed)))
            })
            .collect()
    }

    /// Counts an unblock an operator made outside this firewall (through the activity
    /// database, which lifts the block in the guard directly).
    pub fn count_operator_unblock(&self) {
        self.counts.bump(Action::Unblock, None);
    }

    fn log(&self, decision: Decision) {
        self.counts.bump(decision.action, decision.trigger);
        self.recorder.decision(DecisionRecord {
            t_ms: now_ms(),
            source: decision.source.to_string(),
            action: decision.action.as_str(),
            duration_s: decision.duration_s,
            score: decision.score,
            reason: decision.reason.clone(),
        });
        let mut log = lock(&self.decisions);
        if log.len() >= DECISION_LOG {
            log.pop_front();
        }
        log.push_back(decision);
    }

    fn half_life(&self) -> Duration {
        self.settings.load().half_life()
    }

    /// Applies the reloadable settings of `config` (a checked configuration): whether the
    /// firewall is on or in shadow mode, its threshold, half-life, escalation, longest block,
    /// every weight, and `ip.block_secs`. Scores, escalation counts and blocks in force keep
    /// their state; the next signal is weighed and judged under the new settings. The
    /// model mode and the tracked-source cap stay as they were. Returns whether anything
    /// changed.
    pub fn reload(&self, config: &Config) -> bool {
        let next = Settings::of(config);
        let changed = *self.settings.load() != next;
        if changed {
            self.settings.store(next);
        }
        changed
    }

    /// Reports a signal from `ip`. Returns the decision if this signal tipped the source over
    /// the threshold.
    pub fn signal(&self, ip: IpAddr, signal: Signal) -> Option<Decision> {
        let weight = signal.weight(&self.settings.load().fw);
        self.signal_with(ip, signal, f64::from(weight), None, true)
    }

    /// Scores `points` of `signal` against `ip`'s source; with `share`, hands them to the
    /// fleet's other servers unless they decide a block (which is shared as a block).
    fn signal_with(
        &self,
        ip: IpAddr,
        signal: Signal,
        points: f64,
        detail: Option<&str>,
        share: bool,
    ) -> Option<Decision> {
        let settings = self.settings.load();
        if !settings.fw.enabled || points <= 0.0 {
            return None;
        }
        let source = SourceKey::from_ip(ip, self.ipv6_prefix);
        let now = Instant::now();
        let (score, reason, signals, duration_s, action) = {
            let mut scores = lock(&self.scores);
            if !scores.contains_key(&source) && scores.len() >= self.max_sources {
                // Full: forget what has decayed before admitting a newcomer; if nothing has,
                // the newcomer is not tracked (its signals still count once it fits).
                let half_life = settings.half_life();
                scores.retain(|_, s| s.decayed(now, half_life) >= FORGET_BELOW);
                if scores.len() >= self.max_sources {
                    return None;
                }
            }
            // One offence, one decision: while the source is blocked (or, in shadow mode
            // and for allow-listed sources, while the last decision stands), further signals
            // are the same burst arriving, not a new offence, and neither decide again nor
            // escalate. A new offence after the block ends escalates. The guard's state is
            // read under this lock, and a decision's block is applied under it too, so
            // signals racing on other connections cannot slip in between.
            if self.guard.is_blocked(ip) {
                return None;
            }
            let s = scores.entry(source).or_insert(Score {
                points: 0.0,
                updated: now,
                blocks: 0,
                recent: Vec::new(),
                decided_until: None,
                from_peers: false,
            });
            if s.decided_until.is_some_and(|t| now < t) {
                return None;
            }
            s.points = s.decayed(now, settings.half_life()) + points;
            s.updated = now;
            s.from_peers |= !share;
            match s.recent.iter_mut().find(|(k, _)| *k == signal) {
                Some((_, n)) => *n = n.saturating_add(1),
                None => s.recent.push((signal, 1)),
            }
            // The tolerance absorbs the decay between signals a few seconds apart, so that
            // weights that add up to the threshold reach it.
            let threshold = f64::from(settings.fw.threshold);
            if s.points < threshold * (1.0 - THRESHOLD_TOLERANCE) {
                if let Some(peers) = self.evidence.get().filter(|_| share) {
                    let _ = peers.try_send(SharedEvidence {
                        source,
                        signal,
                        points,
                    });
                }
                return None;
            }
            // Within the tolerance a score may sit just under the threshold; say so rather
            // than print a score below the threshold as if it had reached it.
            let reached = if s.points >= threshold {
                format!(
                    "tipped the score to {:.0} (threshold {})",
                    s.points, threshold
                )
            } else {
                format!(
                    "tipped the score to {:.1}, within the {:.0}% decay tolerance of the \
                     threshold {}",
                    s.points,
                    THRESHOLD_TOLERANCE * 100.0,
                    threshold
                )
            };
            let mut reason = format!(
                "{} {reached}: {}",
                signal.as_str(),
                s.recent
                    .iter()
                    .map(|(k, n)| format!("{} x{n}", k.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            match detail {
                Some(d) => {
                    reason.push_str("; ");
                    reason.push_str(d);
                }
                None if s.from_peers => {
                    reason.push_str("; the score holds evidence other servers of the fleet saw")
                }
                None => {}
            }
            s.from_peers = false;
            let score = s.points;
            let blocks = s.blocks;
            s.points = 0.0;
            let signals = std::mem::take(&mut s.recent);
            let factor = u64::from(settings.fw.escalation).saturating_pow(blocks);
            let duration_s = settings
                .block_secs
                .saturating_mul(factor)
                .min(settings.fw.max_block_secs);
            // Rule signals name their connection, so a block they tip spares logged-in
            // sessions that sent none; the model judges the source's whole window and cannot
            // tell its sessions apart, so a block it tips cuts them all.
            let for_ = Duration::from_secs(duration_s);
            let blocked = || {
                if signal == Signal::ModelAnomaly {
                    self.guard.block(ip, for_, &reason)
                } else {
                    self.guard.block_offence(ip, for_, &reason)
                }
            };
            let action = if settings.fw.shadow || self.force_shadow {
                Action::ShadowBlock
            } else if blocked() {
                Action::Block
            } else {
                Action::Allowed
            };
            // An allow-listed source is never blocked, so its offences do not escalate; it
            // is decided on (and logged) once per block length, not at every burst.
            if action != Action::Allowed {
                s.blocks = s.blocks.saturating_add(1);
            }
            s.decided_until =
                (action != Action::Block).then(|| now + Duration::from_secs(duration_s));
            (score, reason, signals, duration_s, action)
        };
        let decision = Decision {
            at: crate::sim::wall_now(),
            source,
            action,
            duration_s,
            score,
            reason,
            trigger: Some(signal),
            signals,
        };
        // Info, not warn: under attack there is one per attacking source, and every
        // decision is stored in the activity database for `rampart firewall list`.
        tracing::info!(
            source = %decision.source,
            action = ?decision.action,
            duration_s,
            reason = %decision.reason,
            "firewall decision"
        );
        if decision.action == Action::Block {
            if let Some(peers) = self.peers.get() {
                let _ = peers.try_send(SharedBlock {
                    source,
                    duration_s,
                    reason: decision.reason.clone(),
                });
            }
        }
        self.log(decision.clone());
        Some(decision)
    }

    /// The most recent decisions, oldest first.
    pub fn decisions(&self) -> Vec<Decision> {
        lock(&self.decisions).iter().cloned().collect()
    }

    /// The current decayed score of the source `ip` belongs to.
    pub fn score(&self, ip: IpAddr) -> f64 {
        let source = SourceKey::from_ip(ip, self.ipv6_prefix);
        lock(&self.scores)
            .get(&source)
            .map_or(0.0, |s| s.decayed(Instant::now(), self.half_life()))
    }

    /// Forgets scores that decayed to nothing and were never blocked (a blocked source keeps
    /// its entry so that its next block escalates, until the cap forces it out).
    pub fn purge(&self) {
        let now = Instant::now();
        let half_life = self.half_life();
        let mut scores = lock(&self.scores);
        scores.retain(|_, s| s.blocks > 0 || s.decayed(now, half_life) >= FORGET_BELOW);
        if scores.len() > self.max_sources {
            scores.retain(|_, s| s.decayed(now, half_life) >= FORGET_BELOW);
        }
    }

    /// How many sources have state.
    pub fn tracked(&self) -> usize {
        lock(&self.scores).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firewall(adjust: impl FnOnce(&mut Config)) -> (Firewall, Arc<Guard>) {
        let mut cfg = Config::default();
        adjust(&mut cfg);
        let guard = Arc::new(Guard::new(&cfg));
        (Firewall::new(&cfg, Arc::clone(&guard)), guard)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    const ALL_SIGNALS: [Signal; 13] = [
        Signal::FatalFrame,
        Signal::BadBody,
        Signal::RateLimited,
        Signal::LoginRateLimited,
        Signal::AuthFailed,
        Signal::PermissionDenied,
        Signal::UnknownId,
        Signal::SlowFrame,
        Signal::AuthTimeout,
        Signal::WriteTimeout,
        Signal::Refused,
        Signal::ModelAnomaly,
        Signal::TooLarge,
    ];

    #[test]
    fn one_fatal_frame_does_not_block_but_two_connections_do() {
        // One broken header is a client of another version as often as an attacker: the
        // weight is half the threshold, so it takes a second connection's to block.
        let (fw, guard) = firewall(|_| {});
        assert!(fw.signal(ip("127.0.9.1"), Signal::FatalFrame).is_none());
        assert!(!guard.is_blocked(ip("127.0.9.1")));
        let d = fw
            .signal(ip("127.0.9.1"), Signal::FatalFrame)
            .expect("the second fatal frame decides");
        assert_eq!(d.action, Action::Block);
        assert!(d.reason.contains("fatal_frame x2"), "{}", d.reason);
        assert!(guard.is_blocked(ip("127.0.9.1")));
        assert!(!guard.is_blocked(ip("127.0.9.2")));
    }

    #[test]
    fn no_single_signal_blocks_with_the_default_weights() {
        for signal in ALL_SIGNALS {
            let (fw, guard) = firewall(|_| {});
            assert!(fw.signal(ip("127.0.9.1"), signal).is_none(), "{signal:?}");
            assert!(!guard.is_blocked(ip("127.0.9.1")));
        }
        let (fw, _) = firewall(|_| {});
        assert!(fw
            .model_anomaly(ip("127.0.9.2"), 99.0, 1.0, "far out")
            .is_none());
    }

    #[test]
    fn an_allow_listed_source_is_decided_once_per_block_length_and_never_escalates() {
        // The issue: an allow-listed source whose every 2 s window the model flagged got an
        // "allowed" row per window and escalated to the day-long cap.
        let (fw, guard) = firewall(|c| c.ip.allow = vec!["127.0.9.0/24".parse().expect("net")]);
        let who = ip("127.0.9.7");
        let block_secs = Config::default().ip.block_secs;
        let mut decided = Vec::new();
        for round in 0..3 {
            for _window in 0..20 {
                decided.extend(fw.model_anomaly(who, 9.0, 1.0, "anomalous window"));
            }
            assert_eq!(decided.len(), round + 1, "{decided:?}");
            // The decision's time runs out, as if `block_secs` had passed.
            let mut scores = lock(&fw.scores);
            for s in scores.values_mut() {
                s.decided_until = Some(Instant::now());
            }
        }
        assert!(decided.iter().all(|d| d.action == Action::Allowed));
        assert!(
            decided.iter().all(|d| d.duration_s == block_secs),
            "no escalation: {decided:?}"
        );
        assert!(!guard.is_blocked(who));
    }

    #[test]
    fn a_typo_a_wrong_id_and_one_more_mistake_never_block() {
        for other in ALL_SIGNALS {
            let (fw, guard) = firewall(|_| {});
            let who = ip("127.0.9.1");
            assert!(fw.signal(who, Signal::AuthFailed).is_none());
            assert!(fw.signal(who, Signal::PermissionDenied).is_none());
            assert!(fw.signal(who, other).is_none(), "typo, wrong id, {other:?}");
            assert!(!guard.is_blocked(who));
        }
        // A tamperer asking for others' ids fast is blocked all the same.
        let (fw, guard) = firewall(|_| {});
        let who = ip("127.0.9.3");
        let denials = (0..10)
            .position(|_| fw.signal(who, Signal::PermissionDenied).is_some())
            .map(|i| i + 1);
        assert_eq!(denials, Some(6), "five come to 95 points less decay");
        assert!(guard.is_blocked(who));
    }

    #[test]
    fn forgiven_failures_leave_no_points_and_no_count() {
        let (fw, guard) = firewall(|_| {});
        let who = ip("127.0.9.1");
        // Alice mistypes twice, then logs in: both failures are taken back.
        fw.signal(who, Signal::AuthFailed);
        fw.signal(who, Signal::AuthFailed);
        fw.forgive(who, Signal::AuthFailed, &[Duration::ZERO, Duration::ZERO]);
        assert!(fw.score(who) < 0.01, "{}", fw.score(who));
        // Bob's two typos from the same address then do not add up with hers to a block.
        fw.signal(who, Signal::AuthFailed);
        fw.signal(who, Signal::AuthFailed);
        assert!(!guard.is_blocked(who));
        fw.signal(who, Signal::AuthFailed);
        let d = fw
            .signal(who, Signal::AuthFailed)
            .expect("four unforgiven failures block");
        assert!(d.reason.contains("auth_failed x4"), "{}", d.reason);
        // Forgiving what decayed takes back only what is left of it, never below zero.
        let (fw, _) = firewall(|_| {});
        fw.signal(who, Signal::PermissionDenied);
        fw.forgive(who, Signal::AuthFailed, &[Duration::from_secs(60)]);
        assert!((fw.score(who) - 6.5).abs() < 0.1, "{}", fw.score(who));
        fw.forgive(who, Signal::AuthFailed, &[Duration::ZERO; 3]);
        assert_eq!(fw.score(who), 0.0);
    }

    #[test]
    fn model_anomalies_add_up_and_name_themselves() {
        let (fw, guard) = firewall(|_| {});
        let who = ip("127.0.9.4");
        assert!(fw.signal(who, Signal::PermissionDenied).is_none());
        assert!(fw
            .model_anomaly(who, 3.1, 1.0, "anomalous score 3.1")
            .is_none());
        let d = fw
            .model_anomaly(who, 2.5, 1.0, "anomalous score 2.5")
            .expect("19 + 50 + 50 points block");
        assert_eq!(d.action, Action::Block);
        assert_eq!(d.trigger, Some(Signal::ModelAnomaly));
        assert_eq!(
            d.signals,
            vec![(Signal::PermissionDenied, 1), (Signal::ModelAnomaly, 2)]
        );
        assert!(d.reason.ends_with("; anomalous score 2.5"), "{}", d.reason);
        assert!(guard.is_blocked(who));
        // While blocked, further anomalies decide nothing (no ever-longer re-blocks).
        for _ in 0..4 {
            assert!(fw.model_anomaly(who, 9.0, 1.0, "anomalous").is_none());
        }
        assert_eq!(fw.decisions().len(), 1);
    }

    #[test]
    fn anomalies_just_past_the_threshold_weigh_little() {
        assert_eq!(anomaly_strength(0.9, 1.0), 0.0);
        assert_eq!(anomaly_strength(1.0, 1.0), 0.0);
        // The weak band earns nothing: a trickle of such windows must not add up to a block.
        assert_eq!(anomaly_strength(1.1, 1.0), 0.0);
        assert_eq!(anomaly_strength(WEAK_ANOMALY, 1.0), 0.0);
        assert!((anomaly_strength(1.625, 1.0) - 0.5).abs() < 1e-12);
        assert!((anomaly_strength(3.25, 2.0) - 0.5).abs() < 1e-12);
        assert_eq!(anomaly_strength(2.0, 1.0), 1.0);
        assert_eq!(anomaly_strength(40.0, 1.0), 1.0);
        assert_eq!(anomaly_strength(f64::NAN, 1.0), 0.0);
        assert_eq!(anomaly_strength(1.0, 0.0), 1.0);

        let (fw, guard) = firewall(|_| {});
        let who = ip("127.0.9.5");
        // Twenty windows barely past the threshold add nothing, however many there are.
        for _ in 0..20 {
            assert!(fw.model_anomaly(who, 1.1, 1.0, "borderline").is_none());
        }
        assert!(!guard.is_blocked(who));
        assert!(fw.score(who) < 0.01, "{}", fw.score(who));
        // Windows halfway into the weighted band: 25 points each, so the fourth blocks
        // (within the 5% decay tolerance).
        for _ in 0..3 {
            assert!(fw.model_anomaly(who, 1.625, 1.0, "anomalous").is_none());
        }
        assert!((fw.score(who) - 75.0).abs() < 1.0, "{}", fw.score(who));
        assert!(fw.model_anomaly(who, 1.625, 1.0, "anomalous").is_some());
        assert!(guard.is_blocked(who));
        // A window scored below the threshold adds nothing.
        let other = ip("127.0.9.6");
        assert!(fw.model_anomaly(other, 0.5, 1.0, "normal").is_none());
        assert!(fw.score(other) < 0.01);
    }

    #[test]
    fn weights_add_up_to_the_threshold() {
        let (fw, guard) = firewall(|_| {});
        for _ in 0..3 {
            assert!(fw.signal(ip("127.0.9.1"), Signal::AuthFailed).is_none());
        }
        assert!(!guard.is_blocked(ip("127.0.9.1")));
        let d = fw
            .signal(ip("127.0.9.1"), Signal::AuthFailed)
            .expect("fourth failure");
        assert!(d.reason.contains("auth_failed x4"), "{}", d.reason);
        assert!(guard.is_blocked(ip("127.0.9.1")));
    }

    #[test]
    fn four_failures_seconds_apart_still_block() {
        let (fw, guard) = firewall(|_| {});
        let who = ip("127.0.9.3");
        for _ in 0..3 {
            fw.signal(who, Signal::AuthFailed);
        }
        // Age the score as if the failures came two seconds before the fourth.
        {
            let mut scores = lock(&fw.scores);
            for s in scores.values_mut() {
                s.updated -= Duration::from_secs(2);
            }
        }
        assert!(fw.signal(who, Signal::AuthFailed).is_some());
        assert!(guard.is_blocked(who));
    }

    #[test]
    fn repeat_offenders_are_blocked_longer_up_to_the_cap() {
        let mut cfg = Config::default();
        cfg.ip.block_secs = 10;
        cfg.firewall.max_block_secs = 35;
        let guard = Arc::new(Guard::with_clock(&cfg, crate::guard::GuardClock::manual()));
        let fw = Firewall::new(&cfg, Arc::clone(&guard));
        let mut durations = Vec::new();
        for _ in 0..4 {
            // A new offence once the last block has run out (two broken headers: one
            // alone never blocks).
            assert!(fw.signal(ip("127.0.9.1"), Signal::FatalFrame).is_none());
            let d = fw
                .signal(ip("127.0.9.1"), Signal::FatalFrame)
                .expect("a new offence after the block ended is decided");
            durations.push(d.duration_s);
            guard.clock().advance(Duration::from_secs(d.duration_s + 1));
        }
        assert_eq!(durations, vec![10, 20, 35, 35]);
    }

    #[test]
    fn one_burst_makes_one_decision() {
        // 70 bad frames at once (the collateral-damage issue's burst) used to give 12
        // decisions in the same millisecond and escalate the block to the cap.
        for shadow in [false, true] {
            let (fw, _) = firewall(|c| c.firewall.shadow = shadow);
            let decided: Vec<Decision> = (0..70)
                .filter_map(|_| fw.signal(ip("127.0.9.1"), Signal::FatalFrame))
                .collect();
            assert_eq!(decided.len(), 1, "shadow {shadow}: {decided:?}");
            assert_eq!(decided[0].duration_s, Config::default().ip.block_secs);
        }
        let (fw, _) = firewall(|c| c.ip.allow = vec!["127.0.9.0/24".parse().expect("net")]);
        let decided = (0..70)
            .filter_map(|_| fw.signal(ip("127.0.9.1"), Signal::FatalFrame))
            .count();
        assert_eq!(
            decided, 1,
            "an allow-listed source is logged once per block length"
        );
    }

    #[test]
    fn a_score_within_the_tolerance_is_not_shown_as_reaching_the_threshold() {
        let (fw, _) = firewall(|_| {});
        let threshold = f64::from(Config::default().firewall.threshold);
        let d = fw
            .signal_with(
                ip("127.0.9.2"),
                Signal::AuthFailed,
                threshold * 0.97,
                None,
                true,
            )
            .expect("within the tolerance, a decision");
        assert!(
            d.reason.contains("within the 5% decay tolerance"),
            "{}",
            d.reason
        );
        let d = fw
            .signal_with(ip("127.0.9.3"), Signal::AuthFailed, threshold, None, true)
            .expect("a decision");
        assert!(d.reason.contains("(threshold "), "{}", d.reason);
    }

    #[test]
    fn shadow_mode_records_without_blocking() {
        let (fw, guard) = firewall(|c| c.firewall.shadow = true);
        assert!(fw.signal(ip("127.0.9.1"), Signal::FatalFrame).is_none());
        let d = fw
            .signal(ip("127.0.9.1"), Signal::FatalFrame)
            .expect("decision");
        assert_eq!(d.action, Action::ShadowBlock);
        assert!(!guard.is_blocked(ip("127.0.9.1")));
        assert_eq!(fw.decisions().len(), 1);
    }

    #[test]
    fn allow_listed_sources_are_never_blocked() {
        let (fw, guard) = firewall(|c| c.ip.allow = vec!["127.0.9.0/24".parse().expect("net")]);
        assert!(fw.signal(ip("127.0.9.1"), Signal::FatalFrame).is_none());
        let d = fw
            .signal(ip("127.0.9.1"), Signal::FatalFrame)
            .expect("decision");
        assert_eq!(d.action, Action::Allowed);
        assert!(!guard.is_blocked(ip("127.0.9.1")));
    }

    #[test]
    fn disabled_firewall_decides_nothing() {
        let (fw, _) = firewall(|c| c.firewall.enabled = false);
        assert!(fw.signal(ip("127.0.9.1"), Signal::FatalFrame).is_none());
        assert_eq!(fw.tracked(), 0);
    }

    #[test]
    fn state_is_capped() {
        let (fw, _) = firewall(|c| {
            c.limits.max_connections = 10;
            c.limits.max_connections_per_ip = 10;
            c.limits.max_tracked_sources = 10;
        });
        for i in 0..50u8 {
            fw.signal(IpAddr::from([127, 0, 10, i]), Signal::RateLimited);
        }
        assert!(fw.tracked() <= 10);
        fw.purge();
        assert!(fw.tracked() <= 10);
    }

    #[test]
    fn ipv6_sources_share_their_prefix() {
        let (fw, _) = firewall(|_| {});
        for i in 0..3u16 {
            fw.signal(
                IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, i]),
                Signal::AuthFailed,
            );
        }
        let d = fw.signal(ip("2001:db8::99"), Signal::AuthFailed);
        assert!(d.is_some(), "four failures across one /64 add up");
    }
}
