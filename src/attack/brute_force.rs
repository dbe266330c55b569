//! brute-force: password guessing against one user (`target_user`, by default the victim).
//! Guesses come from a list of common passwords, then seeded variations of them; the attacker
//! never knows the real password. It makes `guesses` AUTH attempts in all, three per
//! connection, each connection from the next source in turn: from a single source when the
//! `sources` network is a /32, spread over all of them otherwise. Once the guesses are spent,
//! only the refusal checks of every attack go on until the window closes.
//!
//! A guess the server accepts is counted as a canary leak (the victim's account, and so the
//! secret, would be the attacker's), and the note says so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::canary::{Got, Inbox};
use super::run::{bump, run_slots, Counts, Env, AUTH_WAIT};
use super::wire::{request_bytes, Ids};
use crate::protocol::{Kind, Password, Request};

/// Guesses made on one connection before moving to the next source.
const GUESSES_PER_CONN: u32 = 3;

/// The most common passwords, tried first.
const COMMON: [&str; 32] = [
    "123456",
    "password",
    "123456789",
    "12345678",
    "12345",
    "qwerty",
    "abc123",
    "111111",
    "1234567",
    "password1",
    "iloveyou",
    "1q2w3e4r",
    "admin",
    "letmein",
    "welcome",
    "monkey",
    "dragon",
    "football",
    "sunshine",
    "princess",
    "qwerty123",
    "000000",
    "master",
    "shadow",
    "superman",
    "trustno1",
    "baseball",
    "hunter2",
    "changeme",
    "Passw0rd!",
    "secret",
    "root",
];

/// Guess number `i`: the common list first, then seeded variations of it.
pub(crate) fn guess(seed: u64, i: u64, user: &str) -> String {
    if let Some(word) = COMMON.get(i as usize) {
        return (*word).to_string();
    }
    let mut rng = StdRng::seed_from_u64(seed ^ i.wrapping_mul(0xA076_1D64_78BD_642F));
    let word = COMMON[rng.gen_range(0..COMMON.len())];
    match rng.gen_range(0..4) {
        0 => format!("{word}{}", rng.gen_range(0..10_000)),
        1 => format!("{user}{}", rng.gen_range(1950..2030)),
        2 => format!("{}{}!", capitalize(word), rng.gen_range(0..100)),
        _ => {
            let len = rng.gen_range(6..14);
            (0..len)
                .map(|_| char::from(rng.gen_range(b'!'..=b'~')))
                .collect()
        }
    }
}

fn capitalize(w: &str) -> String {
    let mut c = w.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

pub(crate) async fn run(env: Arc<Env>, guesses: u32, target_user: Option<String>) {
    let target: Arc<str> = target_user
        .unwrap_or_else(|| env.canary.victim.clone())
        .into();
    let taken = Arc::new(AtomicU64::new(0));
    let t = Arc::clone(&taken);
    run_slots(&env, move |env, slot| {
        slot_loop(
            env,
            slot,
            Arc::clone(&target),
            Arc::clone(&t),
            u64::from(guesses),
        )
    })
    .await;
    let made = taken.load(Ordering::Relaxed).min(u64::from(guesses));
    env.note(format!("made {made} of {guesses} guesses"));
}

async fn slot_loop(
    env: Arc<Env>,
    slot: usize,
    target: Arc<str>,
    taken: Arc<AtomicU64>,
    guesses: u64,
) {
    let mut rng = env.rng(slot as u64);
    while env.live() && taken.load(Ordering::Relaxed) < guesses {
        let Some((stream, source)) = env.open_next(&mut rng).await else {
            break;
        };
        let opened = Instant::now();
        let (mut rd, mut wr) = stream.into_split();
        let mut inbox = Inbox::new(source);
        let mut ids = Ids::new();
        let mut counts = Counts::new();
        let mut end = Got::Timeout;
        for _ in 0..GUESSES_PER_CONN {
            let i = taken.fetch_add(1, Ordering::Relaxed);
            if i >= guesses {
                break;
            }
            let password = guess(env.seed, i, &target);
            let req = Request::Auth {
                user: target.to_string(),
                password: Password(Bytes::from(password.into_bytes())),
            };
            if env
                .write(&mut wr, &request_bytes(ids.next(), &req), 1)
                .await
                .is_err()
            {
                end = Got::Reset;
                break;
            }
            bump(&mut counts, "guesses sent");
            match inbox.next(&mut rd, &env, AUTH_WAIT).await {
                Got::Frame(f) if f.kind == Kind::AuthOk => {
                    env.leak(format!(
                        "guess {i} logged in as {target} from {source}: the account is taken"
                    ));
                    break;
                }
                Got::Frame(_) => {}
                other => {
                    end = other;
                    break;
                }
            }
        }
        env.merge(&counts);
        inbox.finish(&env, &end);
        drop(wr);
        env.pace(opened, &mut rng).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::testing::{bench, config, TestResult};

    #[test]
    fn guesses_are_deterministic_and_varied() {
        assert_eq!(guess(1, 0, "victim"), "123456");
        assert_eq!(guess(1, 40, "victim"), guess(1, 40, "victim"));
        let distinct: std::collections::BTreeSet<String> =
            (0..200).map(|i| guess(9, i, "victim")).collect();
        assert!(distinct.len() > 150, "{}", distinct.len());
    }

    #[tokio::test]
    async fn brute_force_from_one_source_fails_and_is_blocked() -> TestResult {
        let b = bench(config()).await?;
        let (report, env) = b
            .run_env(
                "kind = \"brute-force\"\nsources = \"127.0.12.1/32\"\nguesses = 20\n",
                1.5,
            )
            .await?;
        assert!(env.count("guesses sent") >= 4, "{report:?}");
        assert!(env.count("auth_failed") >= 3, "{report:?}");
        assert_eq!(env.count("AUTH_OK"), 0, "{report:?}");
        assert_eq!(report.canary_leaks, 0, "{report:?}");
        // Four failures reach the default firewall threshold: the source is refused after.
        assert!(report.refused >= 1, "{report:?}");
        b.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn brute_force_spreads_over_its_sources() -> TestResult {
        let mut cfg = config();
        cfg.firewall.enabled = false;
        let b = bench(cfg).await?;
        let (report, env) = b
            .run_env(
                "kind = \"brute-force\"\nconnections = 4\nsources = \"127.0.12.128/25\"\nguesses = 24\n",
                1.0,
            )
            .await?;
        assert_eq!(env.count("guesses sent"), 24, "{report:?}");
        assert!(report.sources_used.len() >= 8, "{report:?}");
        assert!(
            report.notes.iter().any(|n| n == "made 24 of 24 guesses"),
            "{report:?}"
        );
        b.stop().await;
        Ok(())
    }
}
