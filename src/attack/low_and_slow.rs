//! low-and-slow: an attacker that looks almost like a user. Each slot keeps one logged-in
//! session from its own source (slot `i` uses source `i`, wrapping) and makes one request
//! every `1 / rate_per_s` seconds (jittered by 20%), picked by the `mix` weights:
//!
//! - `fetch` / `download`: the next item id of an enumeration that walks from 1 to a little
//!   past the highest id it has seen, then wraps;
//! - `missing`: a FETCH of an id that no item has, counting up from 2^32 (a NOT_FOUND each
//!   time, which the rules score lightly as an id past the highest in use: the quietest
//!   enumeration there is);
//! - `list`, `message` (to itself), `ping`: ordinary traffic;
//! - `login-fail`: the session is closed and a new one first fails a login as the victim,
//!   then logs in properly, as a user who mistyped would.
//!
//! It stays under the frame and login rate limits by construction, and under the
//! rule-based firewall by modelling it: it keeps an estimate, per source, of the score the
//! default `[firewall]` weights would give it (19 points per permission denial, 25 per failed
//! login, 5 per NOT_FOUND, which it cannot tell from an id past the highest in use; halving
//! every 60 s, blocking at 100) and only takes a risky step while the estimate stays at or
//! below half the threshold, doing something harmless otherwise. Only behaviour analysis can
//! catch it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::sim::net::{ConnRead, ConnWrite};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::Rng;
use tokio::time::Instant;

use super::canary::{Got, Inbox};
use super::run::{bump, login, run_slots, Counts, Env};
use super::spec::LowAndSlowOp as Op;
use super::wire::{request_bytes, Ids, REPLY_LIMITS};
use crate::config::FirewallConfig;
use crate::protocol::{ErrorCode, Password, Reply, Request};

/// The share of the firewall threshold the attacker allows its estimated score to reach.
const SCORE_CEILING: f64 = 0.5;

/// Ids enumerated past the highest id seen before wrapping to 1.
const ENUM_PAST_MAX: u64 = 16;

/// The first id the `missing` operation fetches: far above any id the store hands out in
/// a run.
const MISSING_BASE: u64 = 1 << 32;

/// Longest wait for a reply.
const REPLY_WAIT: Duration = Duration::from_secs(10);

/// The attacker's model of the rule-based firewall: the default weights and half-life.
struct Model {
    threshold: f64,
    half_life_s: f64,
    weight_denied: f64,
    weight_auth_failed: f64,
    weight_unknown_id: f64,
    scores: Mutex<BTreeMap<IpAddr, (f64, Instant)>>,
}

impl Model {
    fn new() -> Model {
        let fw = FirewallConfig::default();
        Model {
            threshold: f64::from(fw.threshold),
            half_life_s: fw.half_life_s.max(1) as f64,
            weight_denied: f64::from(fw.weight_permission_denied),
            weight_auth_failed: f64::from(fw.weight_auth_failed),
            weight_unknown_id: f64::from(fw.weight_unknown_id),
            scores: Mutex::new(BTreeMap::new()),
        }
    }

    /// The decayed estimate for `source` now.
    fn score(&self, source: IpAddr) -> f64 {
        let scores = self.scores.lock().unwrap_or_else(PoisonError::into_inner);
        scores.get(&source).map_or(0.0, |(s, at)| {
            s * 0.5f64.powf(at.elapsed().as_secs_f64() / self.half_life_s)
        })
    }

    /// True if a step worth `weight` keeps the estimate under the ceiling.
    fn allows(&self, source: IpAddr, weight: f64) -> bool {
        self.score(source) + weight <= self.threshold * SCORE_CEILING
    }

    fn add(&self, source: IpAddr, weight: f64) {
        let now_score = self.score(source) + weight;
        let mut scores = self.scores.lock().unwrap_or_else(PoisonError::into_inner);
        scores.insert(source, (now_score, Instant::now()));
    }
}

/// Shared enumeration state.
struct Walk {
    next: AtomicU64,
    max_seen: AtomicU64,
    /// The next id of the `missing` operation.
    missing: AtomicU64,
}

impl Walk {
    fn next_id(&self) -> u64 {
        let limit = self.max_seen.load(Ordering::Relaxed).max(16) + ENUM_PAST_MAX;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if id > limit {
            self.next.store(2, Ordering::Relaxed);
            1
        } else {
            id
        }
    }

    fn next_missing(&self) -> u64 {
        self.missing.fetch_add(1, Ordering::Relaxed)
    }

    fn saw(&self, id: u64) {
        self.max_seen.fetch_max(id, Ordering::Relaxed);
    }
}

pub(crate) async fn run(env: Arc<Env>, rate_per_s: f64, mix: Vec<(Op, f64)>) {
    let shared = Arc::new(Shared {
        model: Model::new(),
        walk: Walk {
            next: AtomicU64::new(1),
            max_seen: AtomicU64::new(0),
            missing: AtomicU64::new(MISSING_BASE),
        },
        mix,
        interval: Duration::from_secs_f64(1.0 / rate_per_s),
    });
    run_slots(&env, move |env, slot| {
        slot_loop(env, slot, Arc::clone(&shared))
    })
    .await;
}

struct Shared {
    model: Model,
    walk: Walk,
    mix: Vec<(Op, f64)>,
    interval: Duration,
}

impl Shared {
    fn pick(&self, rng: &mut StdRng) -> Op {
        let total: f64 = self.mix.iter().map(|(_, w)| w).sum();
        let mut x = rng.gen_range(0.0..total.max(f64::MIN_POSITIVE));
        for (op, w) in &self.mix {
            if x < *w {
                return *op;
            }
            x -= w;
        }
        Op::Ping
    }
}

/// A logged-in session.
struct Session {
    rd: ConnRead,
    wr: ConnWrite,
    inbox: Inbox,
    ids: Ids,
}

impl Session {
    async fn call(&mut self, env: &Env, req: &Request) -> Result<Reply, Got> {
        let bytes = request_bytes(self.ids.next(), req);
        if env.write(&mut self.wr, &bytes, 1).await.is_err() {
            return Err(Got::Reset);
        }
        match self.inbox.next(&mut self.rd, env, REPLY_WAIT).await {
            Got::Frame(f) => Reply::decode(&f, &REPLY_LIMITS).map_err(|_| Got::Garbage),
            end => Err(end),
        }
    }
}

/// Opens a session from `source`; if `fail_first`, fails a login as the victim before
/// logging in.
async fn open(
    env: &Env,
    shared: &Shared,
    source: IpAddr,
    rng: &mut StdRng,
    fail_first: bool,
) -> Option<Session> {
    while env.live() {
        if !env.logins.acquire(env).await {
            return None;
        }
        // Retry the same source (each refusal backs off 200 to 500 ms) until admitted.
        let stream = loop {
            if !env.live() {
                return None;
            }
            if let Some(stream) = env.open_from(source, rng).await {
                break stream;
            }
        };
        let (rd, wr) = stream.into_split();
        let mut s = Session {
            rd,
            wr,
            inbox: Inbox::new(source),
            ids: Ids::new(),
        };
        if fail_first {
            let wrong = format!("{}{}", env.canary.victim, rng.gen_range(1000..10_000));
            let req = Request::Auth {
                user: env.canary.victim.clone(),
                password: Password(Bytes::from(wrong.into_bytes())),
            };
            shared.model.add(source, shared.model.weight_auth_failed);
            env.attacking(source);
            match s.call(env, &req).await {
                Ok(_) => env.merge(&Counts::from([("failed logins", 1)])),
                Err(end) => {
                    s.inbox.finish(env, &end);
                    continue;
                }
            }
        }
        match login(env, &mut s.rd, &mut s.wr, &mut s.inbox, &mut s.ids).await {
            Ok(()) => return Some(s),
            Err(end) => {
                s.inbox.finish(env, &end);
                env.sleep(Duration::from_secs(1)).await;
            }
        }
    }
    None
}

async fn slot_loop(env: Arc<Env>, slot: usize, shared: Arc<Shared>) {
    let mut rng = env.rng(slot as u64);
    let source = env.source(slot);
    let me = env.account.0.clone();
    let mut fail_first = false;
    while env.live() {
        let Some(mut s) = open(&env, &shared, source, &mut rng, fail_first).await else {
            break;
        };
        fail_first = false;
        let mut counts = Counts::new();
        let mut next_at = Instant::now();
        let end = loop {
            let jitter = rng.gen_range(0.8..1.2);
            next_at += shared.interval.mul_f64(jitter);
            if !env.sleep_until(next_at).await {
                break Got::Halted;
            }
            let mut op = shared.pick(&mut rng);
            let risky = matches!(op, Op::Fetch | Op::Download | Op::Missing | Op::LoginFail);
            let weight = match op {
                Op::LoginFail => shared.model.weight_auth_failed,
                Op::Missing => shared.model.weight_unknown_id,
                _ => shared.model.weight_denied,
            };
            if risky && !shared.model.allows(source, weight) {
                bump(&mut counts, "risky steps deferred");
                op = if rng.gen_bool(0.5) {
                    Op::List
                } else {
                    Op::Ping
                };
            }
            if op == Op::LoginFail {
                fail_first = true;
                break Got::Timeout;
            }
            let req = match op {
                Op::Fetch => Request::Fetch {
                    item_id: shared.walk.next_id(),
                },
                Op::Missing => Request::Fetch {
                    item_id: shared.walk.next_missing(),
                },
                Op::Download => Request::Download {
                    item_id: shared.walk.next_id(),
                    part: 0,
                    offset: 0,
                    max_len: 4096,
                },
                Op::List => Request::ListInbox {
                    after: 0,
                    limit: 20,
                },
                Op::Message => Request::SendMessage {
                    to: me.clone(),
                    text: format!("note to self {}", rng.gen_range(0..1_000_000)),
                },
                // A failed login left the loop above.
                Op::Ping | Op::LoginFail => Request::Ping,
            };
            bump(&mut counts, op.as_str());
            if matches!(op, Op::Fetch | Op::Download | Op::Missing) {
                // The enumeration: every walked id is part of the attack, owned or not.
                env.attacking(source);
            }
            match s.call(&env, &req).await {
                Ok(Reply::Error {
                    code: ErrorCode::PermissionDenied,
                    ..
                }) => shared.model.add(source, shared.model.weight_denied),
                Ok(Reply::Error {
                    code: ErrorCode::NotFound,
                    ..
                }) => shared.model.add(source, shared.model.weight_unknown_id),
                Ok(Reply::Accepted { item_id }) => shared.walk.saw(item_id),
                Ok(Reply::Item(view)) => shared.walk.saw(view.id),
                Ok(Reply::Inbox { entries }) => {
                    for e in entries {
                        shared.walk.saw(e.id);
                    }
                }
                Ok(_) => {}
                Err(end) => break end,
            }
        };
        env.merge(&counts);
        let mut inbox = s.inbox;
        inbox.finish(&env, &end);
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::attack::testing::{bench, config, TestResult};

    #[test]
    fn the_model_defers_risky_steps() {
        let m = Model::new();
        let ip = IpAddr::from([127, 0, 14, 1]);
        assert!(m.allows(ip, 25.0));
        m.add(ip, 25.0);
        assert!(m.allows(ip, 25.0));
        m.add(ip, 25.0);
        assert!(!m.allows(ip, 25.0));
        assert!(m.score(ip) <= 50.0 + 1e-9);
    }

    #[tokio::test]
    async fn missing_ids_earn_not_found_and_are_paced_under_the_rules() -> TestResult {
        let b = bench(config()).await?;
        let (report, env) = b
            .run_env(
                "kind = \"low-and-slow\"\nconnections = 1\nrate_per_s = 20\nsources = \"127.0.14.8/32\"\nmix = { missing = 1 }\n",
                3.0,
            )
            .await?;
        let fetched = env.count("missing");
        // Every answer is a NOT_FOUND: no item has those ids.
        assert!(
            env.count("not_found") >= fetched.saturating_sub(1),
            "{report:?}"
        );
        assert_eq!(env.count("permission_denied"), 0, "{report:?}");
        assert_eq!(env.count("item"), 0, "{report:?}");
        // Each earns the rules' weight for a missing id, and the attacker, which models the
        // rules, stops asking once another would take its estimate past half the threshold.
        let fw = FirewallConfig::default();
        let per = f64::from(fw.weight_unknown_id);
        let ceiling = f64::from(fw.threshold) * SCORE_CEILING;
        assert!(env.count("risky steps deferred") >= 1, "{report:?}");
        let source: IpAddr = "127.0.14.8".parse()?;
        let score = b.handle.firewall().score(source);
        assert!(
            score > ceiling - 2.0 * per && score <= ceiling,
            "{score} {report:?}"
        );
        assert!(!b.handle.guard().is_blocked(source));
        b.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn low_and_slow_stays_under_the_rules() -> TestResult {
        let b = bench(config()).await?;
        let (report, env) = b
            .run_env(
                "kind = \"low-and-slow\"\nconnections = 2\nrate_per_s = 10\nsources = \"127.0.14.0/30\"\nmix = { fetch = 0.6, login-fail = 0.2, message = 0.2 }\n",
                2.0,
            )
            .await?;
        assert!(report.frames_sent >= 20, "{report:?}");
        assert_eq!(report.refused, 0, "{report:?}");
        assert!(env.count("risky steps deferred") >= 1, "{report:?}");
        // At most two denials fit under half the threshold per source.
        assert!(env.count("permission_denied") <= 4, "{report:?}");
        assert_eq!(env.count("rate_limited"), 0, "{report:?}");
        // Each slot logs in, then walks ids or fails a login: its source starts attacking
        // after its first login, not at its first frame.
        let first = env.obs.first_attack.lock().map_err(|_| "poisoned")?.clone();
        assert!(!first.is_empty(), "{report:?}");
        for at in first.values() {
            assert!(*at > Duration::ZERO, "{first:?}");
        }
        for ip in &report.sources_used {
            assert!(!b.handle.guard().is_blocked(*ip), "{ip} blocked");
        }
        b.stop().await;
        Ok(())
    }
}
