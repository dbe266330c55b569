//! Admission: who may connect, how many at once, how fast they may talk, and who is blocked.
//!
//! The server shares one [`Guard`] (as `Arc<Guard>`) between the accept loop and every
//! connection task:
//!
//! - [`Guard::admit`] right after accept, before a byte is read: static deny list, runtime
//!   blocklist, per-source accept rate, total and per-source connection caps. It returns a
//!   [`ConnTicket`] that holds the slot until it is dropped.
//! - [`Guard::check_frame`] and a per-connection [`ConnLimiter`] for every frame;
//!   [`Guard::check_login`] before any password is verified (argon2 is slow on purpose, so a
//!   login flood must be refused before it costs CPU), and [`Guard::login_failed`] /
//!   [`Guard::login_succeeded`] after: an account's failure backoff counts failures only and
//!   holds back only sources whose own failures would get them blocked (see [`login`]).
//!   A source's failed and successful logins have separate allowances (`budget`), and a
//!   wrong password retried from the same source counts once (`retries`).
//! - [`Guard::block`] (an operator) refuses a source at accept and cuts its open connections
//!   through their tickets' cancellation tokens; [`Guard::block_offence`] (the firewall) cuts
//!   only those that have not logged in or have offended ([`Guard::offended`]): a session in
//!   good standing outlives a block brought about by someone else behind its address.
//! - [`Guard::purge`], every second, keeps keyed state bounded.
//! - A blocked source may still present a resume ticket, within a [`ResumeBudget`]; a valid
//!   one is let in by [`Guard::admit_resumed`] (see `resume`).
//!
//! Files: [`source`] ([`SourceKey`]), [`clock`] ([`GuardClock`]), `rate` (limiters),
//! [`login`] (account failure backoff and sources' standing), `budget` (per-source login
//! allowances), `retries` (recent failed passwords, [`PasswordDigest`]), `conns` (connection
//! table, [`ConnTicket`]), `blocklist` ([`BlockEntry`]).
//!
//! Invariant: no decision here depends on hash-map iteration order, and no keyed state grows
//! past `limits.max_tracked_sources` for longer than one purge interval.
//!
//! Lock order: the blocklist mutex before the connection table mutex. `admit` holds both
//! while it checks and inserts, and `block` holds both while it blocks and cuts, so a
//! connection cannot be admitted between a block and its cut and escape it. The login
//! history's mutex is never held together with either.

mod blocklist;
mod budget;
pub mod clock;
mod conns;
pub mod login;
mod rate;
mod resume;
pub mod retries;
pub mod source;

use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use governor::Quota;
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;

use crate::config::reload::Live;
use crate::config::{Config, FirewallConfig, RatesConfig, MAX_BLOCK_SECS};
use crate::protocol::BlockedNotice;

pub use blocklist::BlockEntry;
pub use clock::GuardClock;
pub use conns::ConnTicket;
pub use rate::ConnLimiter;
pub use resume::{
    ResumeBudget, ResumePermit, RESUME_FIRST_FRAME_BYTES, RESUME_FIRST_FRAME_WAIT,
    RESUME_PENDING_PER_SOURCE, RESUME_PENDING_TOTAL,
};
pub use retries::PasswordDigest;
pub use source::{ParseSourceError, SourceKey};

use blocklist::Blocklist;
use budget::{LoginBudgets, Outcome, Spent};
use conns::{ConnTable, OpenConn};
use login::LoginHistory;
pub use login::Standing;
use rate::KeyedLimiter;
use retries::Retries;

/// How many `blocked` notices a blocked source gets per second, after a burst of
/// [`NOTICES_BURST_PER_SOURCE`]. A person retrying by hand sees why every time; a flood from
/// the source gets a bare close past this share, so telling costs it nothing more than not
/// telling did (one non-blocking write of a frame under 300 bytes, a few times a second).
pub const NOTICES_PER_S_PER_SOURCE: u32 = 1;

/// The burst of `blocked` notices a source may get at once (see
/// [`NOTICES_PER_S_PER_SOURCE`]): enough for a client that retries a couple of times.
pub const NOTICES_BURST_PER_SOURCE: u32 = 3;

/// Why a new connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The address is on the static deny list.
    #[error("address is on the deny list")]
    Denied,
    /// The source is blocked at runtime until `until`.
    #[error("source is blocked")]
    Blocked {
        /// When the block ends.
        until: SystemTime,
    },
    /// The source opens connections faster than `rates.accepts_per_s_per_ip`.
    #[error("source connects too fast")]
    AcceptRate,
    /// `limits.max_connections` are open.
    #[error("too many connections")]
    TooManyConnections,
    /// `limits.max_connections_per_ip` are open from this source.
    #[error("too many connections from this source")]
    TooManyFromSource,
}

impl Refusal {
    /// A stable snake_case name for logs, metrics and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Denied => "denied",
            Refusal::Blocked { .. } => "blocked",
            Refusal::AcceptRate => "accept_rate",
            Refusal::TooManyConnections => "max_connections",
            Refusal::TooManyFromSource => "max_connections_per_ip",
        }
    }
}

/// Which rate limit a frame or login attempt hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Limited {
    /// The source sends frames faster than `rates.frames_per_s_per_ip`.
    #[error("source sends frames too fast")]
    Ip,
    /// The user sends frames faster than `rates.frames_per_s_per_user`.
    #[error("user sends frames too fast")]
    User,
    /// The connection sends frames faster than `rates.frames_per_s_per_conn`.
    #[error("connection sends frames too fast")]
    Connection,
    /// The source has failed more logins than `rates.logins_per_min_per_ip` allows.
    #[error("source tries to log in too often")]
    LoginIp,
    /// The account has failed more often than `rates.logins_per_min_per_user` allows (its
    /// failure backoff), and this source has not logged in to the account recently and has
    /// failed as many logins of its own as the firewall needs to block a source. An
    /// account-wide refusal: it never refuses a source with fewer failures, and says nothing
    /// about the source to the firewall.
    #[error("too many failed logins for this user name")]
    LoginUser,
    /// The source has logged in successfully more often than `rates.logins_ok_per_min_per_ip`
    /// allows (its failure allowance is not spent): a script running the client once per
    /// command, not a guesser.
    #[error("source logs in too often")]
    LoginOkIp,
}

impl Limited {
    /// A stable snake_case name for logs, metrics and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Limited::Ip => "frame_rate_ip",
            Limited::User => "frame_rate_user",
            Limited::Connection => "frame_rate_connection",
            Limited::LoginIp => "login_rate_ip",
            Limited::LoginUser => "login_rate_user",
            Limited::LoginOkIp => "login_ok_rate_ip",
        }
    }

    /// Whether the refusal is the source's own doing and may count against it in the
    /// firewall. An account-wide refusal is not: others' guesses brought it about, and
    /// scoring it would let guessers get an account's owner blocked.
    pub fn blames_source(&self) -> bool {
        !matches!(self, Limited::LoginUser)
    }
}

/// A snapshot of the guard's state, for reports and scenario expectations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct GuardStats {
    /// Open connections.
    pub connections: u32,
    /// Of those, connections that have not logged in yet.
    pub unauthenticated: u32,
    /// Sources with at least one open connection.
    pub sources_connected: u32,
    /// Keys held by all keyed rate limiters and the login history together.
    pub tracked_keys: usize,
    /// Runtime blocks held (expired ones are dropped by the next purge).
    pub blocked: usize,
}

/// What [`Guard::reload`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuardReload {
    /// Rate limiters rebuilt because their quota changed (their per-source state starts
    /// afresh: every source has its full burst again). The per-connection limiter counts
    /// once; each connection's is replaced at its next frame.
    pub limiters_rebuilt: u32,
    /// Open connections cut because their address is now on the deny list.
    pub cut: u32,
}

/// The guard's reloadable settings, swapped whole by [`Guard::reload`].
struct Policy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    max_connections: u32,
    max_connections_per_ip: u32,
    max_unauthenticated: u32,
    max_unauthenticated_per_ip: u32,
    conn_quota: Quota,
    accepts: Arc<KeyedLimiter<SourceKey>>,
    frames_ip: Arc<KeyedLimiter<SourceKey>>,
    frames_user: Arc<KeyedLimiter<i64>>,
}

impl Policy {
    /// The policy of `cfg`. A keyed limiter whose quota `old` already has is kept, with its
    /// per-source state; only a changed quota starts a limiter afresh.
    fn new(cfg: &Config, old: Option<&Policy>, clock: &GuardClock) -> Policy {
        fn keep_or_new<K: std::hash::Hash + Eq + Clone>(
            quota: Quota,
            old: Option<&Arc<KeyedLimiter<K>>>,
            clock: &GuardClock,
        ) -> Arc<KeyedLimiter<K>> {
            match old {
                Some(l) if l.quota() == quota => Arc::clone(l),
                _ => Arc::new(KeyedLimiter::new(quota, clock)),
            }
        }
        let r = &cfg.rates;
        Policy {
            allow: cfg.ip.allow.clone(),
            deny: cfg.ip.deny.clone(),
            max_connections: cfg.limits.max_connections,
            max_connections_per_ip: cfg.limits.max_connections_per_ip,
            max_unauthenticated: cfg.limits.preauth_connections,
            max_unauthenticated_per_ip: cfg.limits.preauth_connections_per_ip,
            conn_quota: rate::per_second(r.frames_per_s_per_conn, r.frames_burst_per_conn),
            accepts: keep_or_new(
                rate::per_second(r.accepts_per_s_per_ip, r.accepts_burst_per_ip),
                old.map(|p| &p.accepts),
                clock,
            ),
            frames_ip: keep_or_new(
                rate::per_second(r.frames_per_s_per_ip, r.frames_burst_per_ip),
                old.map(|p| &p.frames_ip),
                clock,
            ),
            frames_user: keep_or_new(
                rate::per_second(r.frames_per_s_per_user, r.frames_burst_per_user),
                old.map(|p| &p.frames_user),
                clock,
            ),
        }
    }

    /// How many of this policy's limiters are not `old`'s.
    fn rebuilt_since(&self, old: &Policy) -> u32 {
        [
            !Arc::ptr_eq(&self.accepts, &old.accepts),
            !Arc::ptr_eq(&self.frames_ip, &old.frames_ip),
            !Arc::ptr_eq(&self.frames_user, &old.frames_user),
            self.conn_quota != old.conn_quota,
        ]
        .into_iter()
        .map(u32::from)
        .sum()
    }
}

/// A source's allowance of failed logins: (per minute, burst).
fn failure_allowance(r: &RatesConfig) -> (u32, u32) {
    (r.logins_per_min_per_ip, r.logins_burst_per_ip)
}

/// A source's allowance of successful logins. Never less than its failures': a config that
/// raises the failures' allowance (a benchmark, a test logging in thousands of times) raises
/// the successes' with it.
fn success_allowance(r: &RatesConfig) -> (u32, u32) {
    (
        r.logins_ok_per_min_per_ip.max(r.logins_per_min_per_ip),
        r.logins_ok_burst_per_ip.max(r.logins_burst_per_ip),
    )
}

/// Admission control shared by the accept loop and every connection. See the module docs.
pub struct Guard {
    clock: GuardClock,
    ipv6_prefix: u8,
    max_tracked: usize,
    /// What a reload may change ([`Guard::reload`]); read once per decision.
    policy: Live<Policy>,
    /// `blocked` notices written at accept, per source ([`Guard::blocked_notice`]).
    notices: KeyedLimiter<SourceKey>,
    /// Accounts are keyed by a hash of the name, so a key costs 8 bytes however long the
    /// name is. Never held with `blocks` or `conns`.
    logins: Mutex<Logins>,
    next_id: AtomicU64,
    /// Taken before `conns` (see the module docs).
    blocks: Mutex<Blocklist>,
    conns: Arc<Mutex<ConnTable>>,
}

impl Guard {
    /// A guard with the limits of `cfg` on the monotonic clock. `cfg` should be checked;
    /// an unchecked zero rate counts as one rather than panic.
    pub fn new(cfg: &Config) -> Guard {
        Guard::with_clock(cfg, GuardClock::monotonic())
    }

    /// A guard on the given clock; tests pass [`GuardClock::manual`] and advance it.
    pub fn with_clock(cfg: &Config, clock: GuardClock) -> Guard {
        let r = &cfg.rates;
        let max_tracked = usize::try_from(cfg.limits.max_tracked_sources).unwrap_or(usize::MAX);
        Guard {
            ipv6_prefix: cfg.ip.ipv6_prefix,
            max_tracked,
            policy: Live::new(Policy::new(cfg, None, &clock)),
            notices: KeyedLimiter::new(
                rate::per_second(NOTICES_PER_S_PER_SOURCE, NOTICES_BURST_PER_SOURCE),
                &clock,
            ),
            logins: Mutex::new(Logins {
                history: LoginHistory::new(
                    r.logins_per_min_per_user,
                    r.logins_burst_per_user,
                    failures_to_block(&cfg.firewall),
                ),
                budgets: LoginBudgets::new(failure_allowance(r), success_allowance(r)),
                retries: Retries::new(),
            }),
            next_id: AtomicU64::new(1),
            blocks: Mutex::new(Blocklist::new(max_tracked)),
            conns: Arc::new(Mutex::new(ConnTable::default())),
            clock,
        }
    }

    /// Applies the reloadable settings of `cfg` (a checked configuration): the allow and
    /// deny lists, the connection caps, the frame, accept and login rates, and the failures
    /// that hold a source back from an account in backoff. The IPv6 prefix and
    /// `limits.max_tracked_sources` stay as they were (they size state that exists).
    ///
    /// A limiter whose quota changed starts afresh; the others, the login history and
    /// every runtime block keep their state. Open connections from an address now on the
    /// deny list are cut: the deny list is absolute, and a session that outlived it would
    /// be a hole the operator did not ask for.
    pub fn reload(&self, cfg: &Config) -> GuardReload {
        let blocks = self.lock_blocks();
        let old = self.policy.load();
        let policy = Policy::new(cfg, Some(&old), &self.clock);
        let limiters_rebuilt = policy.rebuilt_since(&old);
        let deny = policy.deny.clone();
        self.policy.store(policy);
        let cut = conns::lock(&self.conns).cut_where(|c| listed(&deny, c.ip));
        drop(blocks);
        let r = &cfg.rates;
        let mut logins = self.lock_logins();
        logins.history.set_limits(
            r.logins_per_min_per_user,
            r.logins_burst_per_user,
            failures_to_block(&cfg.firewall),
        );
        logins
            .budgets
            .set_allowances(failure_allowance(r), success_allowance(r));
        GuardReload {
            limiters_rebuilt,
            cut,
        }
    }

    /// The guard's clock (tests advance it).
    pub fn clock(&self) -> &GuardClock {
        &self.clock
    }

    /// The source `ip` is counted against, with this guard's IPv6 prefix.
    pub fn source_of(&self, ip: IpAddr) -> SourceKey {
        SourceKey::from_ip(ip, self.ipv6_prefix)
    }

    /// Decides whether a just-accepted connection from `peer` may proceed, and if so counts
    /// it until the returned ticket is dropped. Checks, in order: static deny list, runtime
    /// blocklist (skipped for allow-listed addresses), per-source accept rate, total cap,
    /// per-source cap, then the same two caps for connections that have not logged in yet
    /// (`limits.preauth_connections*`, refused with the same reasons): a new connection has
    /// not logged in, and strangers get only their own, smaller share of the server.
    pub fn admit(&self, peer: IpAddr) -> Result<ConnTicket, Refusal> {
        let source = self.source_of(peer);
        // The policy is read under the blocklist lock, which a reload also holds while it
        // swaps the policy and cuts newly denied connections: a connection is either
        // admitted under the new policy or in the table when the reload looks.
        let blocks = self.lock_blocks();
        let policy = self.policy.load();
        if listed(&policy.deny, peer) {
            return Err(Refusal::Denied);
        }
        if !listed(&policy.allow, peer) {
            if let Some(b) = blocks.active(&source, self.clock.elapsed()) {
                return Err(Refusal::Blocked {
                    until: self.clock.wall(b.until),
                });
            }
        }
        if !policy.accepts.check(&source) {
            return Err(Refusal::AcceptRate);
        }
        let mut conns = conns::lock(&self.conns);
        if conns.total() >= policy.max_connections {
            return Err(Refusal::TooManyConnections);
        }
        if conns.count_of(&source) >= policy.max_connections_per_ip {
            return Err(Refusal::TooManyFromSource);
        }
        if conns.unauthenticated() >= policy.max_unauthenticated {
            return Err(Refusal::TooManyConnections);
        }
        if conns.unauthenticated_of(&source) >= policy.max_unauthenticated_per_ip {
            return Err(Refusal::TooManyFromSource);
        }
        Ok(self.register(&mut conns, source, peer, false))
    }

    /// Enters a connection admitted from `peer` in the table (under the table's lock, held
    /// by the caller since its admission checks) and returns its ticket.
    fn register(
        &self,
        conns: &mut conns::ConnTable,
        source: SourceKey,
        peer: IpAddr,
        authenticated: bool,
    ) -> ConnTicket {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cut = CancellationToken::new();
        conns.insert(
            source,
            id,
            OpenConn {
                ip: peer,
                cut: cut.clone(),
                authenticated,
                offended: false,
            },
        );
        ConnTicket {
            source,
            id,
            cut,
            table: Arc::clone(&self.conns),
        }
    }

    /// Takes one frame from the source's allowance and, for an authenticated session, from
    /// the user's (`user` is the store's user id).
    pub fn check_frame(&self, source: SourceKey, user: Option<i64>) -> Result<(), Limited> {
        let policy = self.policy.load();
        if !policy.frames_ip.check(&source) {
            return Err(Limited::Ip);
        }
        if let Some(user) = user {
            if !policy.frames_user.check(&user) {
                return Err(Limited::User);
            }
        }
        Ok(())
    }

    /// The whole per-frame admission, in the server's order: the connection's own limiter,
    /// then [`Guard::check_frame`]. Every limiter judges the frame at one instant, read from
    /// the clock once (see [`GuardClock`]); the result is the same as calling
    /// [`ConnLimiter::check`] and then [`Guard::check_frame`].
    pub fn admit_frame(
        &self,
        conn: &ConnLimiter,
        source: SourceKey,
        user: Option<i64>,
    ) -> Result<(), Limited> {
        self.clock
            .pinned(|| conn.check().and_then(|()| self.check_frame(source, user)))
    }

    /// A fresh frame limiter for one connection (`rates.frames_per_s_per_conn`).
    pub fn connection_limiter(&self) -> ConnLimiter {
        ConnLimiter::new(self.policy.load().conn_quota, &self.clock)
    }

    /// Replaces `conn` with a fresh limiter if a reload changed
    /// `rates.frames_*_per_conn` since it was made (its allowance starts full again);
    /// otherwise leaves it alone. Call it before [`Guard::admit_frame`].
    pub fn refresh_limiter(&self, conn: &mut ConnLimiter) {
        let quota = self.policy.load().conn_quota;
        if conn.quota() != quota {
            *conn = ConnLimiter::new(quota, &self.clock);
        }
    }

    /// Decides whether a login to `user_name` from `source` may be verified. Call it before
    /// verifying any password, and report the outcome with [`Guard::login_failed`] (or
    /// [`Guard::login_failed_with`]) or [`Guard::login_succeeded`]; the name need not exist
    /// (unknown names are tracked the same way, so probing for names costs the same).
    ///
    /// It checks that neither of the source's allowances is spent, failed logins
    /// (`rates.logins_per_min_per_ip`) and successful ones (`rates.logins_ok_per_min_per_ip`),
    /// and holds one failure for the attempt until its outcome is reported (see `budget`);
    /// then asks the account's failure backoff, which refuses only a source that has not
    /// logged in to this account recently and has failed as many logins of its own as the
    /// firewall needs to block it. Any other source is verified, so the right password is
    /// never refused because others guessed wrong.
    ///
    /// On success it returns the source's standing for the account: a proven source's
    /// verification goes first (`server::auth::Lane`).
    pub fn check_login(&self, source: SourceKey, user_name: &str) -> Result<Standing, Limited> {
        let now = self.clock.elapsed();
        let mut logins = self.lock_logins();
        match logins.budgets.reserve(source, now) {
            Ok(()) => {}
            Err(Spent::Failures) => return Err(Limited::LoginIp),
            Err(Spent::Successes) => return Err(Limited::LoginOkIp),
        }
        match logins.history.standing(name_key(user_name), source, now) {
            Standing::HeldBack => Err(Limited::LoginUser),
            standing => Ok(standing),
        }
    }

    /// The keyed hash of a password being tried, for [`Guard::login_failed_with`]. Take it
    /// before the password goes to verification, so no copy of the password is kept.
    pub fn password_digest(&self, password: &[u8]) -> PasswordDigest {
        self.lock_logins().retries.digest(password)
    }

    /// Records a failed login to `user_name` from `source` with a password not tried before:
    /// it counts against the account's failure backoff and the source's failure allowance,
    /// and the source now has a failure of its own.
    pub fn login_failed(&self, source: SourceKey, user_name: &str) {
        let now = self.clock.elapsed();
        let mut logins = self.lock_logins();
        logins.history.failed(name_key(user_name), source, now);
        logins.budgets.settle(source, Outcome::Failed, now);
    }

    /// Records a failed login to `user_name` from `source` with the password whose digest is
    /// `digest`. Returns true if it counted, as [`Guard::login_failed`]; false if the same
    /// password failed from this source for this name within `retries::RETRY_MEMORY` (a
    /// client retrying a stale password), which counts for nothing: it was counted once
    /// already, and the caller should not report it to the firewall either.
    pub fn login_failed_with(
        &self,
        source: SourceKey,
        user_name: &str,
        digest: PasswordDigest,
    ) -> bool {
        let now = self.clock.elapsed();
        let account = name_key(user_name);
        let mut logins = self.lock_logins();
        if !logins.retries.failed(account, source, digest, now) {
            logins.budgets.settle(source, Outcome::Repeated, now);
            return false;
        }
        logins.history.failed(account, source, now);
        logins.budgets.settle(source, Outcome::Failed, now);
        true
    }

    /// Gives back the attempt [`Guard::check_login`] reserved for `source` when the server
    /// could not judge it (its store unreachable; its verifier full, for a source in good
    /// standing): an outage of the server's must not use up an honest script's allowance
    /// and get it blocked.
    pub fn login_unjudged(&self, source: SourceKey) {
        let now = self.clock.elapsed();
        self.lock_logins()
            .budgets
            .settle(source, Outcome::Unjudged, now);
    }

    /// Records a successful login to `user_name` from `source`: the source is in good
    /// standing for that account, so the account's failure backoff never holds it back, and
    /// the attempt counts against its allowance of successful logins, not of failures.
    ///
    /// Returns how long ago each of this source's recent failed logins to this account (the
    /// ones reported with [`Guard::login_failed_with`]) was counted: they were typos, and the
    /// caller forgives them in the firewall (`Firewall::forgive`).
    pub fn login_succeeded(&self, source: SourceKey, user_name: &str) -> Vec<Duration> {
        let now = self.clock.elapsed();
        let account = name_key(user_name);
        let mut logins = self.lock_logins();
        logins.history.succeeded(account, source, now);
        logins.budgets.settle(source, Outcome::Succeeded, now);
        logins.retries.succeeded(account, source, now)
    }

    /// Blocks the source of `ip` for `for_` (at most a year) and cuts every open connection
    /// from it, except allow-listed peers': an operator's block. Returns false, and does
    /// nothing, if `ip` itself is allow-listed. Blocking an already blocked source extends
    /// its block, never shortens it.
    pub fn block(&self, ip: IpAddr, for_: Duration, reason: &str) -> bool {
        self.block_cutting(ip, for_, reason, false)
    }

    /// Blocks the source of `ip` as [`Guard::block`] does, for an offence the firewall
    /// scored, and cuts only its open connections that have not logged in or have offended
    /// (see [`Guard::offended`]). A logged-in session that has not offended stays: its user
    /// is in good standing, and the offence is someone else's behind the same address; if
    /// it offends later, [`Guard::offended`] cuts it then.
    pub fn block_offence(&self, ip: IpAddr, for_: Duration, reason: &str) -> bool {
        self.block_cutting(ip, for_, reason, true)
    }

    fn block_cutting(&self, ip: IpAddr, for_: Duration, reason: &str, spare: bool) -> bool {
        let policy = self.policy.load();
        if listed(&policy.allow, ip) {
            tracing::info!(%ip, reason, "not blocking an allow-listed address");
            return false;
        }
        let source = self.source_of(ip);
        let now = self.clock.elapsed();
        let until = now.saturating_add(for_.min(Duration::from_secs(MAX_BLOCK_SECS)));
        let mut blocks = self.lock_blocks();
        blocks.insert(source, until, reason, now);
        let conns = conns::lock(&self.conns);
        let mut cut = 0u32;
        let mut spared = 0u32;
        for conn in conns.of_source(&source) {
            if listed(&policy.allow, conn.ip) {
                continue;
            }
            if spare && conn.authenticated && !conn.offended {
                spared += 1;
            } else {
                conn.cut.cancel();
                cut += 1;
            }
        }
        tracing::info!(%source, ?for_, reason, cut, spared, "source blocked");
        true
    }

    /// Records that connection `id` from `ip` did something the firewall counts against its
    /// source. Call it before reporting the signal to the firewall, so that a block the
    /// signal brings about cuts this connection too. If the source is blocked already (the
    /// connection is a session that outlived the block), the connection is cut now. Id 0
    /// (no connection, a refusal at accept) is ignored.
    pub fn offended(&self, ip: IpAddr, id: u64) {
        if id == 0 {
            return;
        }
        let source = self.source_of(ip);
        let blocks = self.lock_blocks();
        let mut conns = conns::lock(&self.conns);
        let blocked = blocks.active(&source, self.clock.elapsed()).is_some();
        if let Some(conn) = conns.offend(&source, id) {
            if blocked && !listed(&self.policy.load().allow, conn.ip) {
                conn.cut.cancel();
                tracing::info!(%source, id, "session offended while its source is blocked, cut");
            }
        }
    }

    /// What to tell a connection from `ip` that [`Guard::admit`] refused as
    /// [`Refusal::Blocked`]: the seconds left (rounded up) and the block's reason, or `None`
    /// when the source has had its share of notices (`NOTICES_PER_S_PER_SOURCE`, burst
    /// `NOTICES_BURST_PER_SOURCE`) or the block has ended meanwhile. The limiter is asked
    /// first, so a flood from a blocked source costs one limiter check per connection beyond
    /// its share, and gets the bare close it got before notices existed.
    pub fn blocked_notice(&self, ip: IpAddr) -> Option<BlockedNotice> {
        let source = self.source_of(ip);
        if !self.notices.check(&source) {
            return None;
        }
        self.block_notice(ip)
    }

    /// The `blocked` notice for `ip` if its source is blocked, outside the per-source share
    /// of notices: for the few connections of a blocked source that hold a place in the
    /// resume budget, which bounds them already.
    pub fn block_notice(&self, ip: IpAddr) -> Option<BlockedNotice> {
        let source = self.source_of(ip);
        let now = self.clock.elapsed();
        let blocks = self.lock_blocks();
        let block = blocks.active(&source, now)?;
        let left = block.until.saturating_sub(now);
        // Rounded up: a block in force never reads as 0 s.
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        Some(BlockedNotice::new(secs, &block.reason))
    }

    /// Lifts the runtime block on the source of `ip`; true if one was in force.
    pub fn unblock(&self, ip: IpAddr) -> bool {
        let source = self.source_of(ip);
        self.lock_blocks().remove(&source, self.clock.elapsed())
    }

    /// Whether `admit` would refuse `ip` for a runtime block (allow-listed: never).
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        if listed(&self.policy.load().allow, ip) {
            return false;
        }
        let source = self.source_of(ip);
        self.lock_blocks()
            .active(&source, self.clock.elapsed())
            .is_some()
    }

    /// The runtime blocks in force, sorted by source.
    pub fn blocked(&self) -> Vec<BlockEntry> {
        let now = self.clock.elapsed();
        self.lock_blocks()
            .iter_active(now)
            .map(|(source, b)| BlockEntry {
                source: *source,
                until: self.clock.wall(b.until),
                reason: b.reason.clone(),
            })
            .collect()
    }

    /// Keeps keyed state bounded; the server calls it every second. Each keyed limiter
    /// drops the keys that are back to a fresh state and releases spare capacity; one that
    /// still holds more than `limits.max_tracked_sources` keys is cleared. Clearing only
    /// forgives (every source gets its full burst again), it never lets memory grow. The
    /// login history drops what is past its memory and is capped the same way. Expired
    /// blocks are dropped.
    pub fn purge(&self) {
        let cap = self.max_tracked;
        let policy = self.policy.load();
        policy.accepts.purge(cap);
        policy.frames_ip.purge(cap);
        policy.frames_user.purge(cap);
        self.notices.purge(cap);
        let now = self.clock.elapsed();
        let mut logins = self.lock_logins();
        logins.history.purge(now, cap);
        let dropped = logins.budgets.purge(now, cap) + logins.retries.purge(now, cap);
        if dropped > 0 {
            tracing::warn!(cap, dropped, "login allowances over their key cap, cleared");
        }
        drop(logins);
        self.lock_blocks().expire(self.clock.elapsed());
    }

    /// A snapshot of connection counts, tracked keys and blocks.
    pub fn stats(&self) -> GuardStats {
        let blocked = self.lock_blocks().len();
        let (connections, unauthenticated, sources_connected) = {
            let conns = conns::lock(&self.conns);
            (conns.total(), conns.unauthenticated(), conns.sources())
        };
        let policy = self.policy.load();
        GuardStats {
            connections,
            unauthenticated,
            sources_connected,
            tracked_keys: policy.accepts.len()
                + policy.frames_ip.len()
                + policy.frames_user.len()
                + self.notices.len()
                + self.lock_logins().len(),
            blocked,
        }
    }

    /// Locks the blocklist. A poisoned lock is recovered: every blocklist operation leaves
    /// the map valid, so a panic elsewhere cannot have left it half-changed.
    fn lock_blocks(&self) -> MutexGuard<'_, Blocklist> {
        self.blocks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks the login state, recovering a poisoned lock for the same reason: each of its
    /// operations leaves every map valid.
    fn lock_logins(&self) -> MutexGuard<'_, Logins> {
        self.logins.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("clock", &self.clock)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// What the guard remembers of logins, under one lock: logins are rare next to frames (each
/// costs an argon2 verification).
#[derive(Debug)]
struct Logins {
    history: LoginHistory,
    budgets: LoginBudgets,
    retries: Retries,
}

impl Logins {
    /// Entries held in all of its maps.
    fn len(&self) -> usize {
        self.history.len() + self.budgets.len() + self.retries.len()
    }
}

/// Whether `ip` (or its IPv4 form, for an IPv4-mapped address) is in one of `nets`.
fn listed(nets: &[IpNet], ip: IpAddr) -> bool {
    let canonical = ip.to_canonical();
    nets.iter()
        .any(|n| n.contains(&ip) || n.contains(&canonical))
}

/// Most failed logins of its own a source may have and still be verified while an
/// account is in backoff, whatever the firewall's weights: a firewall that never blocks for
/// failures must not turn the backoff off.
const MAX_SOURCE_FAILURES: u32 = 16;

/// The failed logins after which the firewall blocks a source (`threshold` over
/// `weight_auth_failed`, rounded up; 4 by default), at most [`MAX_SOURCE_FAILURES`]. An
/// account's backoff holds back only sources with this many failures of their own, so it
/// never refuses an address that its own failures would not already have got blocked, and
/// the firewall still sees every guess a guesser makes until it blocks.
fn failures_to_block(fw: &FirewallConfig) -> u32 {
    if fw.weight_auth_failed == 0 {
        return MAX_SOURCE_FAILURES;
    }
    fw.threshold
        .div_ceil(fw.weight_auth_failed)
        .clamp(1, MAX_SOURCE_FAILURES)
}

/// The login limiter's key for a user name: SipHash with fixed keys, so keys are the same on
/// every run. Two names colliding (odds 2^-64 per pair) would merely share an allowance.
fn name_key(name: &str) -> u64 {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests;
