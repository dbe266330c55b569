//! The per-run bookkeeping every attacker shares: [`Env`] (the run's sources, clock, counts,
//! notes and connection opening), the slot runner, the source watcher, and logging in with
//! the attack account at a pace the server's login limit allows.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::sim::net::{Conn, NetStream};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::canary::{Got, Inbox, Needles};
use super::net::{
    abort, connect_from, is_reset, probe_admission, Admission, RefusalSign, PROBE_WAIT,
};
use super::wire::{request_bytes, Ids};
use super::{Attack, AttackContext, AttackKind, AttackReport, Canary, Observations};
use crate::config::RatesConfig;
use crate::protocol::{Kind, Password, Request};

/// Longest wait for the TLS handshake of an admitted connection: the server's default
/// handshake budget (`[tls] handshake_timeout_ms`), so a busy server is waited for as long
/// as it would wait for us.
const TLS_HANDSHAKE_WAIT: Duration = Duration::from_secs(5);

/// Back-off range after a refusal, so a refused slot retries a few times a second.
const REFUSED_BACKOFF_MS: (u64, u64) = (200, 500);

/// Connections shorter than this are followed by a short pause, so a server that cuts at
/// once cannot make a slot spin.
const MIN_CONN_LIFE: Duration = Duration::from_millis(100);

/// Most notes one report carries.
const MAX_NOTES: usize = 48;

/// Counts by label, merged into the run's totals when a connection ends.
pub(crate) type Counts = BTreeMap<&'static str, u64>;

pub(crate) fn bump(counts: &mut Counts, label: &'static str) {
    *counts.entry(label).or_insert(0) += 1;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The run-wide state every attacker task shares.
pub(crate) struct Env {
    pub(crate) kind: AttackKind,
    pub(crate) target: SocketAddr,
    pub(crate) t0: Instant,
    pub(crate) stop_at: Instant,
    pub(crate) seed: u64,
    /// Cancelled at the stop time or when the runner cancels.
    pub(crate) halt: CancellationToken,
    pub(crate) account: (String, String),
    pub(crate) canary: Canary,
    /// The canary's needles, for scanning every byte received.
    pub(crate) needles: Needles,
    pub(crate) obs: Arc<Observations>,
    pub(crate) sources: Vec<IpAddr>,
    /// Each connection from an IPv6 host binds a new address of the host's /64 (`rotate`).
    rotate: bool,
    /// Connection slots (the `connections` key).
    pub(crate) slots: usize,
    next_source: AtomicUsize,
    /// Every source tried, with the time of its last connection attempt.
    used: Mutex<BTreeMap<IpAddr, Instant>>,
    counts: Mutex<Counts>,
    notes: Mutex<Vec<String>>,
    /// Paces logins with the attack account.
    pub(crate) logins: LoginPacer,
    /// Set when the run is TLS: every admitted connection is wrapped in TLS.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

impl Env {
    pub(crate) fn new(attack: &Attack, ctx: &AttackContext) -> Env {
        Env {
            kind: attack.kind(),
            target: ctx.target,
            t0: ctx.t0,
            stop_at: ctx.t0 + attack.stop(),
            seed: ctx.seed,
            halt: ctx.stop.child_token(),
            account: ctx.account.clone(),
            canary: ctx.canary.clone(),
            needles: Needles::new(&ctx.canary),
            obs: Arc::clone(&ctx.observations),
            sources: attack.sources().to_vec(),
            rotate: attack.rotates(),
            slots: attack.connections() as usize,
            next_source: AtomicUsize::new(0),
            used: Mutex::new(BTreeMap::new()),
            counts: Mutex::new(Counts::new()),
            notes: Mutex::new(Vec::new()),
            logins: LoginPacer::new(),
            tls: ctx.tls.clone(),
        }
    }

    /// True while the attack window is open.
    pub(crate) fn live(&self) -> bool {
        !self.halt.is_cancelled()
    }

    /// The next source, round-robin over the whole attack.
    pub(crate) fn next_source(&self) -> IpAddr {
        let i = self.next_source.fetch_add(1, Ordering::Relaxed);
        self.source(i)
    }

    /// Source number `i` (wrapping).
    pub(crate) fn source(&self, i: usize) -> IpAddr {
        self.sources
            .get(i % self.sources.len().max(1))
            .copied()
            .unwrap_or(IpAddr::from([127, 0, 0, 1]))
    }

    /// The address a connection from `source` binds: the source itself, or with `rotate`
    /// a new address (drawn from `rng`) of the IPv6 host's /64.
    pub(crate) fn bind_address(&self, source: IpAddr, rng: &mut StdRng) -> IpAddr {
        match source {
            // Interface ids 0 and 1 are the subnet's anycast address and the host's own.
            IpAddr::V6(host) if self.rotate => {
                IpAddr::V6(super::spec::host_address(host, rng.gen::<u64>().max(2)))
            }
            other => other,
        }
    }

    /// A generator for one task, derived from the run's seed.
    pub(crate) fn rng(&self, stream: u64) -> StdRng {
        StdRng::seed_from_u64(
            self.seed ^ stream.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        )
    }

    /// Sleeps for `d`; false if the attack halted first.
    pub(crate) async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.halt.cancelled() => false,
        }
    }

    /// Sleeps until `at`; false if the attack halted first.
    pub(crate) async fn sleep_until(&self, at: Instant) -> bool {
        tokio::select! {
            _ = tokio::time::sleep_until(at) => true,
            _ = self.halt.cancelled() => false,
        }
    }

    /// Counts bytes (and frames) written.
    pub(crate) fn sent(&self, frames: u64, bytes: usize) {
        if frames > 0 {
            self.obs.frames_sent.fetch_add(frames, Ordering::Relaxed);
        }
        self.obs
            .bytes_sent
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Writes `bytes` unless the attack halts first; counts what was written. Not
    /// cancel-safe by design: on halt the connection is dropped anyway.
    pub(crate) async fn write<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        wr: &mut W,
        bytes: &[u8],
        frames: u64,
    ) -> Result<(), WriteEnd> {
        let res = tokio::select! {
            r = wr.write_all(bytes) => r,
            _ = self.halt.cancelled() => return Err(WriteEnd::Halted),
        };
        match res {
            Ok(()) => {
                self.sent(frames, bytes.len());
                Ok(())
            }
            Err(_) => Err(WriteEnd::Failed),
        }
    }

    /// Notes that `source` is used now, as [`Env::open_tcp`] does, for attackers that
    /// connect by other means (the generic forms).
    pub(crate) fn touch(&self, source: IpAddr) {
        self.use_source(source);
    }

    /// Notes that `source` is used now: its last use (for the watcher) and its first.
    fn use_source(&self, source: IpAddr) {
        let now = Instant::now();
        lock(&self.used).insert(source, now);
        let since = now.saturating_duration_since(self.t0);
        lock(&self.obs.first_used).entry(source).or_insert(since);
    }

    /// Records a refusal at accept of `source`.
    pub(crate) fn refused(&self, source: IpAddr, sign: RefusalSign) {
        self.obs.refused.fetch_add(1, Ordering::Relaxed);
        let since = Instant::now().saturating_duration_since(self.t0);
        lock(&self.obs.first_refused).entry(source).or_insert(since);
        if sign != RefusalSign::Busy {
            lock(&self.obs.first_block_seen)
                .entry(source)
                .or_insert(since);
        }
        self.merge(&Counts::from([(sign.label(), 1)]));
    }

    /// Records that `source` is about to send its first attacking frame (a no-op after the
    /// first call per source), for the kinds that look like a user until then.
    pub(crate) fn attacking(&self, source: IpAddr) {
        let since = Instant::now().saturating_duration_since(self.t0);
        lock(&self.obs.first_attack).entry(source).or_insert(since);
    }

    /// Records a canary leak with its note.
    pub(crate) fn leak(&self, note: String) {
        self.obs.canary_leaks.fetch_add(1, Ordering::Relaxed);
        tracing::error!(kind = self.kind.as_str(), "{note}");
        self.note(format!("LEAK: {note}"));
    }

    /// Adds a note to the report (deduplicated, bounded).
    pub(crate) fn note(&self, note: impl Into<String>) {
        let note = note.into();
        let mut notes = lock(&self.notes);
        if notes.len() < MAX_NOTES && !notes.contains(&note) {
            notes.push(note);
        }
    }

    /// Merges counts into the run's totals.
    pub(crate) fn merge(&self, counts: &Counts) {
        let mut all = lock(&self.counts);
        for (k, v) in counts {
            *all.entry(k).or_insert(0) += v;
        }
    }

    /// One count of the run's totals.
    pub(crate) fn count(&self, label: &str) -> u64 {
        lock(&self.counts).get(label).copied().unwrap_or(0)
    }

    /// Opens a connection from `source` and checks it was admitted; in a TLS run, then
    /// completes the TLS handshake. Records the connect and any refusal; on refusal or
    /// failure, backs off and returns `None` (also when halted).
    ///
    /// The refusal at accept is read on the plain socket in both cases (the server refuses
    /// before any cryptography), so only an admitted connection is wrapped. The server's
    /// certificate is not checked: see [`crate::tls::attacker_client_config`].
    pub(crate) async fn open_from(&self, source: IpAddr, rng: &mut StdRng) -> Option<Conn> {
        self.open_with(source, rng, PROBE_WAIT).await
    }

    /// [`Env::open_from`] with a chosen refusal wait.
    pub(crate) async fn open_with(
        &self,
        source: IpAddr,
        rng: &mut StdRng,
        wait: Duration,
    ) -> Option<Conn> {
        let stream = self.open_tcp(source, rng, wait).await?;
        let Some(config) = &self.tls else {
            return Some(Conn::Plain(stream));
        };
        match self.handshake(Arc::clone(config), stream).await {
            Ok(conn) => Some(Conn::Tls(Box::new(conn))),
            // The run ended mid-handshake: the attacker's own stop, not an outcome to count
            // (as a connect the halt interrupts is not counted either).
            Err(None) => None,
            Err(Some(label)) => {
                self.merge(&Counts::from([(label, 1)]));
                let backoff = rng.gen_range(REFUSED_BACKOFF_MS.0..=REFUSED_BACKOFF_MS.1);
                self.sleep(Duration::from_millis(backoff)).await;
                None
            }
        }
    }

    /// The client side of a TLS handshake on an admitted connection, bounded by
    /// [`TLS_HANDSHAKE_WAIT`]; on failure, the label it is counted under, or `None` if the
    /// run was halted during it.
    pub(crate) async fn handshake(
        &self,
        config: Arc<rustls::ClientConfig>,
        stream: NetStream,
    ) -> Result<tokio_rustls::client::TlsStream<NetStream>, Option<&'static str>> {
        let name = rustls::pki_types::ServerName::IpAddress(self.target.ip().into());
        let connect = tokio_rustls::TlsConnector::from(config).connect(name, stream);
        tokio::select! {
            r = tokio::time::timeout(TLS_HANDSHAKE_WAIT, connect) => match r {
                Ok(Ok(conn)) => Ok(conn),
                Ok(Err(_)) => Err(Some("TLS handshake cut")),
                Err(_) => Err(Some("TLS handshake timed out")),
            },
            _ = self.halt.cancelled() => Err(None),
        }
    }

    /// Opens a TCP connection from `source` and checks it was admitted (no TLS yet).
    pub(crate) async fn open_tcp(
        &self,
        source: IpAddr,
        rng: &mut StdRng,
        wait: Duration,
    ) -> Option<NetStream> {
        if !self.live() {
            return None;
        }
        self.use_source(source);
        let connected = tokio::select! {
            r = connect_from(self.bind_address(source, rng), self.target) => r,
            _ = self.halt.cancelled() => return None,
        };
        match connected {
            Ok(mut stream) => {
                self.obs.connects.fetch_add(1, Ordering::Relaxed);
                let admission = tokio::select! {
                    a = probe_admission(&mut stream, wait) => a,
                    _ = self.halt.cancelled() => return None,
                };
                match admission {
                    Admission::Admitted => return Some(stream),
                    Admission::Refused(sign) => {
                        self.refused(source, sign);
                        abort(stream);
                    }
                    Admission::Unexpected => {
                        self.merge(&Counts::from([(
                            "unexpected bytes before the first request",
                            1,
                        )]));
                    }
                    Admission::Failed(kind) => {
                        self.note(format!("reading a fresh connection failed: {kind:?}"));
                    }
                }
            }
            Err(e) if is_reset(e.kind()) => self.refused(source, RefusalSign::Reset),
            Err(e) => {
                let label = match e.kind() {
                    io::ErrorKind::TimedOut => "connect timed out",
                    io::ErrorKind::AddrInUse | io::ErrorKind::AddrNotAvailable => {
                        "no local port free for the source"
                    }
                    _ => "connect failed",
                };
                self.merge(&Counts::from([(label, 1)]));
                if label == "connect failed" {
                    self.note(format!("connect from {source} failed: {e}"));
                }
            }
        }
        let backoff = rng.gen_range(REFUSED_BACKOFF_MS.0..=REFUSED_BACKOFF_MS.1);
        self.sleep(Duration::from_millis(backoff)).await;
        None
    }

    /// Opens an admitted connection from the next sources in turn, retrying until one is
    /// admitted or the attack halts.
    pub(crate) async fn open_next(&self, rng: &mut StdRng) -> Option<(Conn, IpAddr)> {
        while self.live() {
            let source = self.next_source();
            if let Some(stream) = self.open_from(source, rng).await {
                return Some((stream, source));
            }
        }
        None
    }

    /// After a connection that lived only since `opened`, pauses briefly so that a slot whose
    /// connections are cut at once does not spin.
    pub(crate) async fn pace(&self, opened: Instant, rng: &mut StdRng) {
        if opened.elapsed() < MIN_CONN_LIFE {
            let ms = rng.gen_range(50..=150);
            self.sleep(Duration::from_millis(ms)).await;
        }
    }

    /// Builds the report from the counter deltas and the notes.
    pub(crate) fn report(&self, totals: super::Totals) -> AttackReport {
        let mut notes = vec![format!(
            "seed {:#018x}; {} connection slot(s) over {} source(s)",
            self.seed,
            self.slots,
            self.sources.len()
        )];
        let counts = lock(&self.counts).clone();
        if !counts.is_empty() {
            let listed: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
            notes.push(format!("seen: {}", listed.join(", ")));
        }
        notes.extend(lock(&self.notes).iter().cloned());
        AttackReport {
            kind: self.kind,
            sources_used: lock(&self.used).keys().copied().collect(),
            connects: totals.connects,
            refused: totals.refused,
            frames_sent: totals.frames_sent,
            bytes_sent: totals.bytes_sent,
            canary_leaks: totals.canary_leaks,
            notes,
        }
    }
}

/// How a guarded write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteEnd {
    /// The attack is stopping.
    Halted,
    /// The connection failed (closed or reset by the server).
    Failed,
}

/// Runs `slot(env, i)` for every connection slot, staggering their starts over up to half a
/// second so thousands of slots do not connect in the same instant, and waits for all.
pub(crate) async fn run_slots<F, Fut>(env: &Arc<Env>, slot: F)
where
    F: Fn(Arc<Env>, usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut set = JoinSet::new();
    for i in 0..env.slots {
        let stagger = Duration::from_millis((i % 500) as u64);
        let env2 = Arc::clone(env);
        let fut = slot(Arc::clone(env), i);
        set.spawn(async move {
            if env2.sleep(stagger).await {
                fut.await;
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// How often the watcher looks for sources due a check.
const WATCH_TICK: Duration = Duration::from_millis(100);

/// A source not tried for this long is due a check.
pub(crate) const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Most refusal checks in flight at once.
const WATCH_CONCURRENCY: usize = 8;

/// Makes sure every source the attack has used, and that has not been seen refused yet, is
/// tried at least every [`WATCH_EVERY`], so a block at accept is observed promptly even when
/// the slots are busy elsewhere (a slot cut by a block reconnects from the next source, not
/// the blocked one). A check connects, watches for a refusal and resets the connection; it
/// sends nothing. Runs until the attack halts.
pub(crate) async fn watch_sources(env: Arc<Env>) {
    let mut rng = env.rng(u64::MAX - 1);
    let mut checks: JoinSet<()> = JoinSet::new();
    while env.sleep(WATCH_TICK).await {
        while checks.try_join_next().is_some() {}
        let refused: Vec<IpAddr> = lock(&env.obs.first_refused).keys().copied().collect();
        let due: Vec<IpAddr> = lock(&env.used)
            .iter()
            .filter(|(ip, at)| at.elapsed() >= WATCH_EVERY && refused.binary_search(ip).is_err())
            .map(|(ip, _)| *ip)
            .collect();
        for source in due {
            if checks.len() >= WATCH_CONCURRENCY {
                break;
            }
            let env = Arc::clone(&env);
            let mut rng = StdRng::seed_from_u64(rng.gen());
            checks.spawn(async move {
                // The refusal shows before any TLS, so a check never costs a handshake.
                if let Some(stream) = env.open_tcp(source, &mut rng, PROBE_WAIT).await {
                    abort(stream);
                }
            });
        }
    }
    checks.shutdown().await;
}

/// Paces the attack's logins with its account under the server's default per-user login
/// limit (`[rates]` `logins_per_min_per_user` and `logins_burst_per_user`, read from
/// [`RatesConfig::default`]), so connections that need a session do not earn RATE_LIMITED
/// refusals (and the firewall's points) for the login alone.
pub(crate) struct LoginPacer {
    /// Logins allowed at once: one fewer than the server's burst, so a login the server
    /// counts a little early still finds room.
    burst: f64,
    /// One more login allowed per this many seconds: the server's refill, plus
    /// [`LOGIN_MARGIN_S`].
    every_s: f64,
    state: Mutex<(f64, Instant)>,
}

/// How much slower than the server's refill a login slot comes back, in seconds, so timing
/// jitter between attacker and server never meets an empty bucket.
const LOGIN_MARGIN_S: f64 = 0.5;

/// The shortest wait [`LoginPacer::acquire`] sleeps before it looks at the bucket again.
const MIN_PACER_WAIT: Duration = Duration::from_millis(1);

/// How long until a bucket holding `tokens` (under one) refilling one every `every_s` seconds
/// holds a whole one: at least [`MIN_PACER_WAIT`]. A bucket a rounding error short of a
/// token would otherwise ask for a zero sleep, which a virtual clock (`--sim`) never
/// advances past, and the caller would spin for ever at one instant.
fn slot_wait(tokens: f64, every_s: f64) -> Duration {
    Duration::from_secs_f64(((1.0 - tokens) * every_s).max(0.0)).max(MIN_PACER_WAIT)
}

impl LoginPacer {
    pub(crate) fn new() -> LoginPacer {
        let rates = RatesConfig::default();
        let burst = f64::from(rates.logins_burst_per_user.saturating_sub(1).max(1));
        let every_s = 60.0 / f64::from(rates.logins_per_min_per_user.max(1)) + LOGIN_MARGIN_S;
        LoginPacer {
            burst,
            every_s,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Waits for a login slot; false if the attack halted first.
    pub(crate) async fn acquire(&self, env: &Env) -> bool {
        loop {
            let wait = {
                let mut st = lock(&self.state);
                let now = Instant::now();
                let refill = now.saturating_duration_since(st.1).as_secs_f64() / self.every_s;
                st.0 = (st.0 + refill).min(self.burst);
                st.1 = now;
                if st.0 >= 1.0 {
                    st.0 -= 1.0;
                    return true;
                }
                slot_wait(st.0, self.every_s)
            };
            if !env.sleep(wait).await {
                return false;
            }
        }
    }
}

/// Longest wait for an AUTH reply (argon2 on a busy bounded pool can take a while).
pub(crate) const AUTH_WAIT: Duration = Duration::from_secs(10);

/// Logs in with the attack account on a fresh connection. On failure returns how the
/// connection stands: an error reply as a frame, or how it ended.
pub(crate) async fn login<R, W>(
    env: &Env,
    rd: &mut R,
    wr: &mut W,
    inbox: &mut Inbox,
    ids: &mut Ids,
) -> Result<(), Got>
where
    R: AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let (user, pw) = &env.account;
    let req = Request::Auth {
        user: user.clone(),
        password: Password(Bytes::copy_from_slice(pw.as_bytes())),
    };
    let bytes = request_bytes(ids.next(), &req);
    match env.write(wr, &bytes, 1).await {
        Ok(()) => {}
        Err(WriteEnd::Halted) => return Err(Got::Halted),
        Err(WriteEnd::Failed) => return Err(Got::Reset),
    }
    match inbox.next(rd, env, AUTH_WAIT).await {
        Got::Frame(f) if f.kind == Kind::AuthOk => Ok(()),
        other => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_pacing_follows_the_server_default_per_user_limit() {
        // Under today's defaults, 10 logins a minute per user and 5 at once, the attacker
        // keeps 4 at once and gets one more every 6.5 s.
        let pacer = LoginPacer::new();
        assert_eq!((pacer.burst, pacer.every_s), (4.0, 6.5));
    }

    #[test]
    fn a_bucket_a_rounding_error_short_of_a_slot_still_waits() {
        // A refill summed from fractions can leave the bucket 1e-16 short of a token: the
        // wait must still move a virtual clock on.
        assert_eq!(slot_wait(1.0 - 1e-16, 6.5), MIN_PACER_WAIT);
        assert_eq!(slot_wait(0.5, 6.5), Duration::from_secs_f64(3.25));
        assert_eq!(slot_wait(0.0, 6.5), Duration::from_secs_f64(6.5));
    }

    #[tokio::test]
    async fn a_block_is_seen_even_when_no_slot_returns_to_the_source(
    ) -> crate::attack::testing::TestResult {
        use crate::attack::testing::{bench, config};
        let b = bench(config()).await?;
        let first = IpAddr::from([127, 0, 16, 1]);
        let guard = b.handle.guard();
        let blocker = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            guard.block(first, Duration::from_secs(60), "test");
        });
        // One slot holds one connection at a time; once cut it moves on to the next source
        // and stays there, so only the checks go back to the first.
        let (report, env) = b
            .run_env(
                "kind = \"conn-exhaust\"\nsources = \"127.0.16.0/29\"\n",
                1.6,
            )
            .await?;
        blocker.await?;
        let seen = lock(&env.obs.first_refused).get(&first).copied();
        let seen = seen.ok_or_else(|| format!("never refused: {report:?}"))?;
        assert!(seen >= Duration::from_millis(600), "{seen:?}");
        assert!(seen <= Duration::from_millis(1300), "{seen:?} {report:?}");
        assert!(
            env.count("conn cut: closed without reason") >= 1,
            "{report:?}"
        );
        b.stop().await;
        Ok(())
    }
}
