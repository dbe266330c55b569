//! The attackers: clients that misbehave on purpose, one kind per file, so scenarios can
//! show with numbers that the server holds.
//!
//! A scenario file's `[[attack]]` table is an [`AttackSpec`]; [`AttackSpec::check`] turns it
//! into an [`Attack`], and [`run`] drives it against a target with an [`AttackContext`] until
//! its stop time, recording what it saw in shared [`Observations`] and returning an
//! [`AttackReport`].
//!
//! - [`spec`]: the table, its checking and [`AttackKind`].
//! - [`net`]: connecting from a source address and spotting a refusal at accept.
//! - `wire`: encoding requests and deliberately broken frames, reading reply codes.
//! - `canary`: the planted secrets ([`Canary`]) and the reply side of a connection, which
//!   scans every byte received for them.
//! - `run`: the per-run bookkeeping (`Env`), the slot runner, the source watcher and login
//!   pacing; it opens each connection as a [`crate::sim::net::Conn`], plain or TLS: in a run
//!   with [`AttackContext::tls`] set, every admitted connection completes a TLS handshake
//!   before it misbehaves.
//! - one file per kind or family: `flood`, `raw_flood`, `oversized`, `slowloris`, `preauth_buffer`,
//!   `slow_read`, `conn` (churn and exhaust), `malformed`, `tamper`, `brute_force`, `probe`,
//!   `low_and_slow`, and `tls_handshake` (tls-handshake-flood, tls-slow-handshake,
//!   plaintext-on-tls).
//! - `generic`: the kinds that have a form for any TCP server ([`run_generic`]), in the
//!   target protocol's bytes ([`Wire`]).
//!
//! Every attacker sleeps until `t0 + start`, runs until `t0 + stop` or until the context's
//! stop token is cancelled, holds at most `connections` connections at once, and reconnects
//! from its sources (round-robin) when cut, backing off 200 to 500 ms after a refusal so that
//! a block at accept is seen promptly without spinning. Beside its slots, every attack but
//! low-and-slow checks each source it has used and not yet seen refused at least every
//! 500 ms: a connection that sends nothing, watched 50 ms for a refusal, then reset (at most
//! 8 such checks at once, on top of `connections`).
//!
//! Invariant: an attacker only ever sends to a loopback address; [`run`] refuses any other
//! target before opening a socket. Nothing the server sends can make an attacker panic or
//! allocate by a length the server declared; every received byte is scanned for what
//! [`Canary::leaked_in`] looks for, also across reads.

mod brute_force;
mod canary;
mod conn;
mod evasion;
mod flood;
mod generic;
mod low_and_slow;
mod malformed;
pub mod net;
mod oversized;
mod preauth_buffer;
mod probe;
mod raw_flood;
mod run;
mod slow_read;
mod slowloris;
pub mod spec;
mod tamper;
mod tls_handshake;
mod wire;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use canary::Canary;
pub use evasion::crowd_account;
pub use generic::{mutate, resp_command, run as run_generic, Wire};
pub use spec::{Attack, AttackError, AttackKind, AttackSpec};

use run::Env;
use spec::Params;

/// Live counters shared with the runner while an attack runs.
#[derive(Debug, Default)]
pub struct Observations {
    /// TCP connections established (including ones the server then refused at accept).
    pub connects: AtomicU64,
    /// Refusals at accept: closed with no bytes, one ERROR BUSY or BLOCKED, or the connect itself
    /// refused or reset.
    pub refused: AtomicU64,
    /// Frames written (well-formed or deliberately broken; raw bytes count none).
    pub frames_sent: AtomicU64,
    /// Bytes written.
    pub bytes_sent: AtomicU64,
    /// Frames received from the server.
    pub replies: AtomicU64,
    /// Times a canary byte string (or victim data) reached the attacker.
    pub canary_leaks: AtomicU64,
    /// The first time (since `t0`) each source saw a refusal at accept.
    pub first_refused: Mutex<BTreeMap<IpAddr, Duration>>,
    /// The first time (since `t0`) each source saw a refusal at accept that shows a block:
    /// one ERROR BLOCKED, a close without a byte, or a reset. Not ERROR BUSY, which a
    /// connection cap or the accept rate sends to anyone.
    pub first_block_seen: Mutex<BTreeMap<IpAddr, Duration>>,
    /// The first time (since `t0`) each source was used. An attack with more sources than
    /// connections uses some only once others are blocked; the time to block such a source
    /// counts from here, not from the attack's start.
    pub first_used: Mutex<BTreeMap<IpAddr, Duration>>,
    /// For the kinds that behave like a user before they attack (tamper, low-and-slow): the
    /// time (since `t0`) each source sent its first attacking frame. The runner labels a
    /// recorded source's windows before that as benign (`rampart activity export`). The other
    /// kinds attack from their first frame and leave this empty.
    pub first_attack: Mutex<BTreeMap<IpAddr, Duration>>,
}

/// What every attacker gets from the runner.
#[derive(Clone)]
pub struct AttackContext {
    /// The server; must be a loopback address ([`run`] refuses anything else).
    pub target: SocketAddr,
    /// The scenario start: the attacker sleeps until `t0 + start` and stops at `t0 + stop`.
    pub t0: Instant,
    /// The seed of every random choice (scenario seed ^ attack index); reported in the notes.
    pub seed: u64,
    /// Cancelled by the runner at the end; every loop observes it.
    pub stop: CancellationToken,
    /// An ordinary account the attacker may log in with: (user, password).
    pub account: (String, String),
    /// The planted secrets, to scan every received byte for.
    pub canary: Canary,
    /// Live counters, shared with the runner.
    pub observations: Arc<Observations>,
    /// In a TLS run, the attackers' client configuration
    /// ([`crate::tls::attacker_client_config`]): every admitted connection does the TLS
    /// handshake before it misbehaves. `None`: plain TCP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for AttackContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttackContext")
            .field("target", &self.target)
            .field("seed", &self.seed)
            .field("account", &self.account.0)
            .field("canary", &self.canary)
            .finish_non_exhaustive()
    }
}

/// What an attack did, when it ended.
#[derive(Debug, Clone, Serialize)]
pub struct AttackReport {
    /// The kind of attack.
    pub kind: AttackKind,
    /// The source addresses it connected from (or tried to), ascending.
    pub sources_used: Vec<IpAddr>,
    /// TCP connections established.
    pub connects: u64,
    /// Refusals at accept.
    pub refused: u64,
    /// Frames written.
    pub frames_sent: u64,
    /// Bytes written.
    pub bytes_sent: u64,
    /// Canary leaks seen.
    pub canary_leaks: u64,
    /// Human-readable findings: the seed, replies by kind and error code, how connections
    /// ended, kind-specific results, and any leak.
    pub notes: Vec<String>,
}

/// How long the attack's tasks get, after the stop time, to notice and end before they are
/// aborted.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Runs `attack` until its stop time or until `ctx.stop` is cancelled. Never panics; bounded
/// in connections, time and memory. A non-loopback target is refused without sending
/// anything.
pub async fn run(attack: &Attack, ctx: AttackContext) -> AttackReport {
    let params = attack.params.clone();
    drive(attack, ctx, move |env| run_kind(env, params)).await
}

/// The frame of every attack run: refuses a non-loopback target, waits for the start time,
/// runs `work` until the stop time (aborting it a grace period after), and reports.
async fn drive<F, Fut>(attack: &Attack, ctx: AttackContext, work: F) -> AttackReport
where
    F: FnOnce(Arc<Env>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let obs = Arc::clone(&ctx.observations);
    if !ctx.target.ip().is_loopback() {
        return AttackReport {
            kind: attack.kind(),
            sources_used: Vec::new(),
            connects: 0,
            refused: 0,
            frames_sent: 0,
            bytes_sent: 0,
            canary_leaks: 0,
            notes: vec![format!(
                "refused to attack {}: attackers only send to loopback addresses",
                ctx.target
            )],
        };
    }
    // Counters are reported as this attack's share, in case the runner shares one
    // Observations between attacks.
    let before = Totals::read(&obs);
    let env = Arc::new(Env::new(attack, &ctx));
    tracing::info!(
        kind = attack.kind().as_str(),
        seed = ctx.seed,
        "attack starting"
    );
    let start_at = ctx.t0 + attack.start();
    let started = tokio::select! {
        _ = tokio::time::sleep_until(start_at) => true,
        _ = env.halt.cancelled() => false,
    };
    if started {
        let timer = {
            let halt = env.halt.clone();
            let stop_at = env.stop_at;
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep_until(stop_at) => halt.cancel(),
                    _ = halt.cancelled() => {}
                }
            })
        };
        let work = work(Arc::clone(&env));
        let halt = env.halt.clone();
        tokio::select! {
            _ = work => {}
            _ = async { halt.cancelled().await; tokio::time::sleep(STOP_GRACE).await } => {
                env.note("some tasks were still running at the stop time and were aborted");
            }
        }
        timer.abort();
    } else {
        env.note("stopped before its start time");
    }
    env.halt.cancel();
    let after = Totals::read(&obs);
    let report = env.report(before.delta(&after));
    tracing::info!(
        kind = attack.kind().as_str(),
        connects = report.connects,
        refused = report.refused,
        frames = report.frames_sent,
        bytes = report.bytes_sent,
        leaks = report.canary_leaks,
        "attack ended"
    );
    report
}

/// Runs the kind's slots and, beside them, the refusal checks of its sources (except for
/// low-and-slow and evasion, whose slots each keep to one source and whose stealth the
/// checks would spoil).
async fn run_kind(env: Arc<Env>, params: Params) {
    if matches!(params, Params::LowAndSlow { .. } | Params::Evasion { .. }) {
        return run_params(env, params).await;
    }
    let watcher = tokio::spawn(run::watch_sources(Arc::clone(&env)));
    run_params(Arc::clone(&env), params).await;
    // The watcher keeps checking until the attack halts, even after the slots are done.
    let _ = watcher.await;
}

async fn run_params(env: Arc<Env>, params: Params) {
    match params {
        Params::Flood {
            pipeline,
            frames,
            auth,
            frames_per_s,
        } => flood::run(env, pipeline, frames, auth, frames_per_s).await,
        Params::RawFlood {
            bytes_per_s,
            chunk_bytes,
        } => raw_flood::run(env, bytes_per_s, chunk_bytes).await,
        Params::Oversized {
            declared_len,
            body_bytes,
        } => oversized::run(env, declared_len, body_bytes).await,
        Params::Slowloris {
            interval,
            declared_len,
        } => slowloris::run(env, interval, declared_len).await,
        Params::PreauthBuffer {
            kind,
            declared_len,
            body_bytes,
        } => preauth_buffer::run(env, kind, declared_len, body_bytes).await,
        Params::SlowRead {
            file_bytes,
            requests_per_conn,
            max_len,
        } => slow_read::run(env, file_bytes, requests_per_conn, max_len).await,
        Params::ConnChurn { per_source_rate } => conn::churn(env, per_source_rate).await,
        Params::ConnExhaust => conn::exhaust(env).await,
        Params::Malformed { cases } => malformed::run(env, cases).await,
        Params::Tamper => tamper::run(env).await,
        Params::BruteForce {
            guesses,
            target_user,
        } => brute_force::run(env, guesses, target_user).await,
        Params::Probe { interval } => probe::run(env, interval).await,
        Params::LowAndSlow { rate_per_s, mix } => low_and_slow::run(env, rate_per_s, mix).await,
        Params::TlsHandshakeFlood => tls_handshake::flood(env).await,
        Params::TlsSlowHandshake {
            interval,
            bytes_per_write,
        } => tls_handshake::slow(env, interval, bytes_per_write).await,
        Params::PlaintextOnTls { interval } => tls_handshake::plaintext(env, interval).await,
        Params::Evasion {
            rate_per_s,
            guesses_per_hour,
            target_user,
        } => evasion::run(env, rate_per_s, guesses_per_hour, target_user).await,
    }
}

/// A snapshot of the counters the report carries.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Totals {
    connects: u64,
    refused: u64,
    frames_sent: u64,
    bytes_sent: u64,
    canary_leaks: u64,
}

impl Totals {
    pub(crate) fn read(obs: &Observations) -> Totals {
        Totals {
            connects: obs.connects.load(Ordering::Relaxed),
            refused: obs.refused.load(Ordering::Relaxed),
            frames_sent: obs.frames_sent.load(Ordering::Relaxed),
            bytes_sent: obs.bytes_sent.load(Ordering::Relaxed),
            canary_leaks: obs.canary_leaks.load(Ordering::Relaxed),
        }
    }

    fn delta(&self, after: &Totals) -> Totals {
        Totals {
            connects: after.connects.saturating_sub(self.connects),
            refused: after.refused.saturating_sub(self.refused),
            frames_sent: after.frames_sent.saturating_sub(self.frames_sent),
            bytes_sent: after.bytes_sent.saturating_sub(self.bytes_sent),
            canary_leaks: after.canary_leaks.saturating_sub(self.canary_leaks),
        }
    }
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::testing::canary;

    #[test]
    fn run_is_send() -> Result<(), Box<dyn std::error::Error>> {
        fn assert_send<T: Send>(_: &T) {}
        let attack: AttackSpec = toml::from_str("kind = \"tamper\"")?;
        let attack = attack.check(1.0)?;
        let ctx = AttackContext {
            target: "127.0.0.1:9".parse()?,
            t0: Instant::now(),
            seed: 1,
            stop: CancellationToken::new(),
            account: ("mallory".into(), "pw".into()),
            canary: canary(),
            observations: Arc::new(Observations::default()),
            tls: None,
        };
        let fut = run(&attack, ctx);
        assert_send(&fut);
        Ok(())
    }

    #[tokio::test]
    async fn refuses_non_loopback_targets() -> Result<(), Box<dyn std::error::Error>> {
        let attack: AttackSpec = toml::from_str("kind = \"raw-flood\"")?;
        let attack = attack.check(1.0)?;
        let obs = Arc::new(Observations::default());
        let ctx = AttackContext {
            target: "192.0.2.1:7070".parse()?,
            t0: Instant::now(),
            seed: 1,
            stop: CancellationToken::new(),
            account: ("mallory".into(), "pw".into()),
            canary: canary(),
            observations: Arc::clone(&obs),
            tls: None,
        };
        let report = run(&attack, ctx).await;
        assert_eq!(report.connects, 0);
        assert_eq!(report.bytes_sent, 0);
        assert!(report.notes[0].contains("loopback"), "{:?}", report.notes);
        assert_eq!(obs.connects.load(Ordering::Relaxed), 0);
        Ok(())
    }
}
