//! evasion: a distributed password guesser dressed as the crowd. Each slot is one user on
//! its own source, with an ordinary account of its own ([`crowd_account`]), and does what a
//! user does at a user's pace: one session, a request every `1 / rate_per_s` seconds
//! (jittered by 20%), picked from lists, messages to itself and pings. Now and then (on
//! average `guesses_per_hour` times an hour per source, at seeded random moments, the first
//! one anywhere in the first period) it ends that session and opens a new one that first
//! tries one password on the target account, as a user who typed the wrong name would, then
//! logs in to its own account and carries on.
//!
//! Spread over many addresses, that is a handful of guesses per hour per address: no rate
//! limit and no rule threshold is near, and every guess window looks like a typo. The
//! attack has no expectation to meet; it measures what the detection model and the rules
//! catch (docs/DETECTION.md, "Evasion"). A guess the server accepts is a canary leak.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::Rng;
use tokio::time::Instant;

use super::brute_force::guess;
use super::canary::{Got, Inbox};
use super::run::{bump, Counts, Env, AUTH_WAIT};
use super::wire::{request_bytes, Ids, REPLY_LIMITS};
use crate::protocol::{Kind, Password, Reply, Request};
use crate::sim::net::{ConnRead, ConnWrite};

/// Longest wait for a reply to an ordinary request.
const REPLY_WAIT: Duration = Duration::from_secs(10);

/// The ordinary account of evasion slot `slot`, derived from the attacker's own account:
/// (user, password). The scenario runner creates one per slot before the run.
pub fn crowd_account(account: &(String, String), slot: usize) -> (String, String) {
    (
        format!("{}{slot}", account.0),
        format!("{}-crowd-{slot}", account.1),
    )
}

pub(crate) async fn run(
    env: Arc<Env>,
    rate_per_s: f64,
    guesses_per_hour: f64,
    target_user: Option<String>,
) {
    let target: Arc<str> = target_user
        .unwrap_or_else(|| env.canary.victim.clone())
        .into();
    let interval = Duration::from_secs_f64(1.0 / rate_per_s);
    let period_s = 3600.0 / guesses_per_hour;
    // One guess list for the whole crowd, as one attacker shares it out.
    let taken = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for slot in 0..env.slots {
        let env = Arc::clone(&env);
        let target = Arc::clone(&target);
        let taken = Arc::clone(&taken);
        set.spawn(async move {
            // Staggered like every attack's slots, so they do not all log in at once.
            if env
                .sleep(Duration::from_millis((slot % 500) as u64 * 4))
                .await
            {
                slot_loop(&env, slot, &target, &taken, interval, period_s).await;
            }
        });
    }
    while set.join_next().await.is_some() {}
    let made = env.count("guesses sent");
    env.note(format!(
        "made {made} guesses from {} sources",
        env.slots.min(env.sources.len())
    ));
}

/// A logged-in session of one slot.
struct Session {
    rd: ConnRead,
    wr: ConnWrite,
    inbox: Inbox,
    ids: Ids,
}

impl Session {
    async fn call(&mut self, env: &Env, req: &Request, wait: Duration) -> Result<Reply, Got> {
        let bytes = request_bytes(self.ids.next(), req);
        if env.write(&mut self.wr, &bytes, 1).await.is_err() {
            return Err(Got::Reset);
        }
        match self.inbox.next(&mut self.rd, env, wait).await {
            Got::Frame(f) => Reply::decode(&f, &REPLY_LIMITS).map_err(|_| Got::Garbage),
            end => Err(end),
        }
    }
}

/// When the next guess is due: an exponential wait with mean `period_s` (a Poisson
/// process, so the guesses of many sources do not line up).
fn next_guess(rng: &mut StdRng, period_s: f64) -> Duration {
    let u: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    Duration::from_secs_f64((-u.ln() * period_s).min(1.0e6))
}

async fn slot_loop(
    env: &Env,
    slot: usize,
    target: &str,
    taken: &AtomicU64,
    interval: Duration,
    period_s: f64,
) {
    let mut rng = env.rng(slot as u64);
    let source = env.source(slot);
    let (user, password) = crowd_account(&env.account, slot);
    let mut guess_at = Instant::now() + next_guess(&mut rng, period_s);
    let mut guess_now = false;
    while env.live() {
        let mut counts = Counts::new();
        let guess_n = guess_now.then(|| taken.fetch_add(1, Ordering::Relaxed));
        let opened = open(
            env,
            source,
            (&user, &password),
            target,
            guess_n,
            &mut counts,
        )
        .await;
        env.merge(&counts);
        let Some(mut s) = opened else {
            // Refused, cut or failed: a user would try again a little later.
            if !env.sleep(Duration::from_secs(1)).await {
                return;
            }
            continue;
        };
        if guess_now {
            guess_at = Instant::now() + next_guess(&mut rng, period_s);
            guess_now = false;
        }
        let mut counts = Counts::new();
        let mut next_at = Instant::now();
        let end = loop {
            next_at += interval.mul_f64(rng.gen_range(0.8..1.2));
            if next_at >= guess_at {
                guess_now = true;
                break Got::Timeout;
            }
            if !env.sleep_until(next_at).await {
                break Got::Halted;
            }
            let (label, req) = match rng.gen_range(0..10) {
                0..=3 => (
                    "list",
                    Request::ListInbox {
                        after: 0,
                        limit: 20,
                    },
                ),
                4..=6 => (
                    "message",
                    Request::SendMessage {
                        to: user.clone(),
                        text: format!("note to self {}", rng.gen_range(0..1_000_000)),
                    },
                ),
                _ => ("ping", Request::Ping),
            };
            bump(&mut counts, label);
            if let Err(end) = s.call(env, &req, REPLY_WAIT).await {
                break end;
            }
        };
        env.merge(&counts);
        s.inbox.finish(env, &end);
        if matches!(end, Got::Halted) {
            return;
        }
    }
}

/// Opens a session for `(user, password)` from `source`; with `Some(n)`, first tries guess
/// number `n` on `target` on the same connection.
async fn open(
    env: &Env,
    source: IpAddr,
    (user, password): (&str, &str),
    target: &str,
    guess_n: Option<u64>,
    counts: &mut Counts,
) -> Option<Session> {
    let id = match source {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        // The high half of the address: the host's /64.
        IpAddr::V6(v6) => (u128::from(v6) >> 64) as u64,
    };
    let mut rng = env.rng(id << 8);
    let stream = env.open_from(source, &mut rng).await?;
    let (rd, wr) = stream.into_split();
    let mut s = Session {
        rd,
        wr,
        inbox: Inbox::new(source),
        ids: Ids::new(),
    };
    if let Some(n) = guess_n {
        let req = Request::Auth {
            user: target.to_string(),
            password: Password(Bytes::from(guess(env.seed, n, target).into_bytes())),
        };
        env.attacking(source);
        bump(counts, "guesses sent");
        match s.call(env, &req, AUTH_WAIT).await {
            Ok(Reply::AuthOk { .. }) => {
                env.leak(format!(
                    "guess {n} logged in as {target} from {source}: the account is taken"
                ));
                return None;
            }
            Ok(_) => {}
            Err(end) => {
                s.inbox.finish(env, &end);
                return None;
            }
        }
    }
    let req = Request::Auth {
        user: user.to_string(),
        password: Password(Bytes::copy_from_slice(password.as_bytes())),
    };
    let bytes = request_bytes(s.ids.next(), &req);
    if env.write(&mut s.wr, &bytes, 1).await.is_err() {
        s.inbox.finish(env, &Got::Reset);
        return None;
    }
    match s.inbox.next(&mut s.rd, env, AUTH_WAIT).await {
        Got::Frame(f) if f.kind == Kind::AuthOk => Some(s),
        Got::Frame(_) => {
            bump(counts, "own login refused");
            s.inbox.finish(env, &Got::Timeout);
            None
        }
        end => {
            s.inbox.finish(env, &end);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::testing::{bench, config, TestResult, EVASION_SLOTS};

    #[test]
    fn guesses_come_at_random_moments_around_the_period() {
        let mut rng = rand::SeedableRng::seed_from_u64(3);
        let waits: Vec<f64> = (0..2000)
            .map(|_| next_guess(&mut rng, 10.0).as_secs_f64())
            .collect();
        let mean = waits.iter().sum::<f64>() / waits.len() as f64;
        assert!((9.0..11.0).contains(&mean), "{mean}");
        assert!(waits.iter().any(|w| *w < 1.0) && waits.iter().any(|w| *w > 30.0));
    }

    #[tokio::test]
    async fn evasion_looks_like_users_and_guesses_now_and_then() -> TestResult {
        let b = bench(config()).await?;
        // One guess a second per slot, so a short test sees several.
        let toml = format!(
            "kind = \"evasion\"\nconnections = {EVASION_SLOTS}\nsources = \"127.0.30.0/29\"\n\
             rate_per_s = 5\nguesses_per_hour = 3600\n"
        );
        let (report, env) = b.run_env(&toml, 3.0).await?;
        assert!(env.count("guesses sent") >= 3, "{report:?}");
        assert!(
            env.count("list") + env.count("message") + env.count("ping") >= 20,
            "{report:?}"
        );
        assert_eq!(env.count("own login refused"), 0, "{report:?}");
        assert_eq!(report.canary_leaks, 0, "{report:?}");
        // Each slot keeps to its own source, and says when it first guessed.
        assert_eq!(report.sources_used.len(), EVASION_SLOTS, "{report:?}");
        let first = env
            .obs
            .first_attack
            .lock()
            .map_err(|e| e.to_string())?
            .len();
        assert!(first >= 2, "{first} {report:?}");
        b.stop().await;
        Ok(())
    }
}
