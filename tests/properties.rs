//! Property tests for the guard, the file-name sanitizer and the store, over random
//! schedules and inputs. (The protocol's own properties, round trips, chunking and
//! never-panic, live in `src/protocol/tests.rs`.)
//!
//! - The rate limiters never admit more than their quota over any schedule of checks,
//!   clock advances and purges, for every limiter the guard has (for the per-user login
//!   limit, a quota of failures), and a source without failures is never held back by an
//!   account's failure backoff.
//! - A sanitized file name joined onto a directory always names a direct child of it.
//! - The store never lets a user read, list or delete another user's items, whatever
//!   sequence of deliveries, reads and deletes three users perform.
//!
//! Case counts are kept low enough for the whole file to run in a few seconds.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Component, Path};
use std::time::Duration;

use proptest::prelude::*;
use rampart::config::Config;
use rampart::guard::{Guard, GuardClock};
use rampart::store::{sanitize_file_name, NewItem, SqliteStore, Store};

// ---------------------------------------------------------------------------------------
// Rate limiters

/// One step of a schedule: move the clock, then try some checks from one of three sources
/// (or user ids), or purge keyed state as the server does every second.
#[derive(Debug, Clone)]
enum Step {
    Check {
        advance_us: u64,
        key: usize,
        tries: u32,
    },
    Purge,
}

fn schedule() -> impl Strategy<Value = Vec<Step>> {
    let check = (
        prop_oneof![Just(0u64), 0u64..2_000, 0u64..3_000_000],
        0usize..3,
        1u32..8,
    )
        .prop_map(|(advance_us, key, tries)| Step::Check {
            advance_us,
            key,
            tries,
        });
    proptest::collection::vec(prop_oneof![9 => check, 1 => Just(Step::Purge)], 1..60)
}

/// Which of the guard's limiters a case exercises; every other limit is set far out of
/// the way so only this one can refuse.
#[derive(Debug, Clone, Copy)]
enum Limiter {
    FramesPerIp,
    FramesPerUser,
    FramesPerConnection,
    LoginsPerIp,
    LoginsPerUser,
}

const UNLIMITED: u32 = 1_000_000_000;

fn config_for(limiter: Limiter, rate: u32, burst: u32) -> Config {
    let mut c = Config::default();
    let r = &mut c.rates;
    for (per, b) in [
        (&mut r.frames_per_s_per_ip, &mut r.frames_burst_per_ip),
        (&mut r.frames_per_s_per_user, &mut r.frames_burst_per_user),
        (&mut r.frames_per_s_per_conn, &mut r.frames_burst_per_conn),
        (&mut r.logins_per_min_per_ip, &mut r.logins_burst_per_ip),
        (&mut r.logins_per_min_per_user, &mut r.logins_burst_per_user),
    ] {
        *per = UNLIMITED;
        *b = UNLIMITED;
    }
    let (per, b) = match limiter {
        Limiter::FramesPerIp => (&mut r.frames_per_s_per_ip, &mut r.frames_burst_per_ip),
        Limiter::FramesPerUser => (&mut r.frames_per_s_per_user, &mut r.frames_burst_per_user),
        Limiter::FramesPerConnection => {
            (&mut r.frames_per_s_per_conn, &mut r.frames_burst_per_conn)
        }
        Limiter::LoginsPerIp => (&mut r.logins_per_min_per_ip, &mut r.logins_burst_per_ip),
        Limiter::LoginsPerUser => (&mut r.logins_per_min_per_user, &mut r.logins_burst_per_user),
    };
    *per = rate;
    *b = burst;
    // One failure of its own holds a source back from an account in backoff (the firewall
    // blocks for one), so the per-user limit is exactly a quota of failures.
    c.firewall.weight_auth_failed = c.firewall.threshold;
    c
}

/// The replenish interval governor derives from a quota: the period divided by the rate,
/// rounded down to whole nanoseconds (`Quota::per_second` / `per_minute`).
fn interval_ns(limiter: Limiter, rate: u32) -> u64 {
    let period: u64 = match limiter {
        Limiter::LoginsPerIp | Limiter::LoginsPerUser => 60_000_000_000,
        _ => 1_000_000_000,
    };
    period / u64::from(rate)
}

/// GCRA's guarantee: in any window from one admission to a later one, at most
/// `burst + elapsed / interval` checks were admitted.
fn assert_within_quota(times: &[u64], burst: u32, interval: u64) -> Result<(), TestCaseError> {
    for (i, &start) in times.iter().enumerate() {
        for (j, &end) in times.iter().enumerate().skip(i) {
            let admitted = (j - i + 1) as u64;
            let allowed = u64::from(burst) + (end - start) / interval;
            prop_assert!(
                admitted <= allowed,
                "{admitted} admitted within {} ns; quota allows {allowed}",
                end - start
            );
        }
    }
    Ok(())
}

fn check_limiter(
    limiter: Limiter,
    rate: u32,
    burst: u32,
    steps: &[Step],
) -> Result<(), TestCaseError> {
    let clock = GuardClock::manual();
    let guard = Guard::with_clock(&config_for(limiter, rate, burst), clock.clone());
    let ips: Vec<IpAddr> = (1..=3)
        .map(|i| IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)))
        .collect();
    let sources: Vec<_> = ips.iter().map(|&ip| guard.source_of(ip)).collect();
    let names = ["alice", "bob", "carol"];
    let conns: Vec<_> = (0..3).map(|_| guard.connection_limiter()).collect();
    let mut admitted: [Vec<u64>; 3] = Default::default();
    for step in steps {
        let (advance_us, key, tries) = match *step {
            Step::Purge => {
                guard.purge();
                continue;
            }
            Step::Check {
                advance_us,
                key,
                tries,
            } => (advance_us, key, tries),
        };
        clock.advance(Duration::from_micros(advance_us));
        for _ in 0..tries {
            let ok = match limiter {
                Limiter::FramesPerIp => guard.check_frame(sources[key], None).is_ok(),
                // Every user on one source, so only the user's allowance separates them.
                Limiter::FramesPerUser => guard.check_frame(sources[0], Some(key as i64)).is_ok(),
                Limiter::FramesPerConnection => conns[key].check().is_ok(),
                Limiter::LoginsPerIp => guard.check_login(sources[key], "alice").is_ok(),
                // Every attempt from one source, and every admitted attempt fails: the
                // per-user limit is a failure backoff, and successes never count.
                Limiter::LoginsPerUser => {
                    let ok = guard.check_login(sources[0], names[key]).is_ok();
                    if ok {
                        guard.login_failed(sources[0], names[key]);
                    }
                    // A source without failures of its own is never held back by it.
                    prop_assert!(guard.check_login(sources[2], names[key]).is_ok());
                    ok
                }
            };
            if ok {
                admitted[key].push(clock.elapsed().as_nanos() as u64);
            }
        }
    }
    let interval = interval_ns(limiter, rate);
    for times in &admitted {
        assert_within_quota(times, burst, interval)?;
    }
    // And it is a limiter, not a wall: the first `burst` checks of a fresh key all pass.
    let first: u32 = steps
        .iter()
        .filter_map(|s| match s {
            Step::Check { key: 0, tries, .. } => Some(*tries),
            _ => None,
        })
        .sum();
    prop_assert!(admitted[0].len() as u64 >= u64::from(first.min(burst)));
    Ok(())
}

fn limiter() -> impl Strategy<Value = Limiter> {
    prop_oneof![
        Just(Limiter::FramesPerIp),
        Just(Limiter::FramesPerUser),
        Just(Limiter::FramesPerConnection),
        Just(Limiter::LoginsPerIp),
        Just(Limiter::LoginsPerUser),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    /// No schedule of checks, clock advances and purges gets more through any limiter than
    /// its burst plus what its rate replenished.
    #[test]
    fn rate_limiters_never_admit_more_than_their_quota(
        limiter in limiter(),
        rate in prop_oneof![1u32..10, 1u32..2_000],
        burst in prop_oneof![1u32..5, 1u32..100],
        steps in schedule(),
    ) {
        check_limiter(limiter, rate, burst, &steps)?;
    }
}

// ---------------------------------------------------------------------------------------
// File names

/// Strings built from the pieces path attacks are made of.
fn hostile_name() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("..".to_string()),
        Just(".".to_string()),
        Just("/".to_string()),
        Just("\\".to_string()),
        Just("\0".to_string()),
        Just("C:".to_string()),
        Just("~".to_string()),
        Just(" ".to_string()),
        Just("\u{202E}".to_string()),
        Just("%2e%2e%2f".to_string()),
        Just("CON".to_string()),
        "[a-z]{1,12}",
        any::<char>().prop_map(String::from),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

/// Joins the sanitized name onto `dir` and checks, lexically and on the real file system,
/// that the result is a direct child of `dir`.
fn check_stays_inside(dir: &Path, input: &str) -> Result<(), TestCaseError> {
    let name = sanitize_file_name(input);
    let path = dir.join(&name);
    prop_assert_eq!(path.parent(), Some(dir), "{:?} -> {:?}", input, name);
    let mut components = Path::new(&name).components();
    prop_assert!(
        matches!(components.next(), Some(Component::Normal(c)) if c == name.as_str()),
        "{:?} -> {:?} is not one normal component",
        input,
        name
    );
    prop_assert!(components.next().is_none());
    prop_assert!(path
        .components()
        .all(|c| !matches!(c, Component::ParentDir | Component::CurDir)));
    // On disk: writing it creates exactly one entry, directly in `dir`.
    std::fs::write(&path, b"x").map_err(|e| TestCaseError::fail(format!("{name:?}: {e}")))?;
    let entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(entries.len(), 1, "{:?} did not land in the directory", name);
    prop_assert_eq!(entries[0].file_name(), std::ffi::OsString::from(&name));
    std::fs::remove_file(&path).map_err(|e| TestCaseError::fail(e.to_string()))?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Whatever a client calls its file, the sanitized name stays in the blob directory.
    #[test]
    fn sanitized_file_names_never_escape_the_directory(
        input in prop_oneof![hostile_name(), any::<String>()],
    ) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_stays_inside(dir.path(), &input)?;
    }
}

// ---------------------------------------------------------------------------------------
// Store ownership

/// One operation by one of three users; `pick` chooses an item id from every id issued so
/// far (or, past their count, an id that never existed).
#[derive(Debug, Clone)]
enum Op {
    Deliver { from: usize, to: usize },
    Item { who: usize, pick: usize },
    Delete { who: usize, pick: usize },
    Inbox { who: usize },
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        3 => (0usize..3, 0usize..3).prop_map(|(from, to)| Op::Deliver { from, to }),
        3 => (0usize..3, 0usize..40).prop_map(|(who, pick)| Op::Item { who, pick }),
        2 => (0usize..3, 0usize..40).prop_map(|(who, pick)| Op::Delete { who, pick }),
        1 => (0usize..3).prop_map(|who| Op::Inbox { who }),
    ];
    proptest::collection::vec(op, 1..40)
}

/// A temporary directory, on tmpfs when there is one (every delivery fsyncs).
fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new()
            .prefix("rampart-prop-")
            .tempdir_in(shm)
        {
            return Ok(dir);
        }
    }
    tempfile::tempdir()
}

fn check_ownership(ops: &[Op]) -> Result<(), TestCaseError> {
    let fail = |e: &dyn std::fmt::Display| TestCaseError::fail(e.to_string());
    let dir = scratch_dir().map_err(|e| fail(&e))?;
    let store = SqliteStore::open(dir.path()).map_err(|e| fail(&e))?;
    let users: Vec<i64> = ["alice", "bob", "carol"]
        .iter()
        .map(|n| store.add_user(n, "$argon2id$not-a-real-hash"))
        .collect::<Result<_, _>>()
        .map_err(|e| fail(&e))?;
    // The model: every live item's owner and text; every id ever issued.
    let mut live: BTreeMap<u64, (usize, String)> = BTreeMap::new();
    let mut issued: Vec<u64> = Vec::new();
    let pick_id = |issued: &[u64], pick: usize| -> u64 {
        issued
            .get(pick)
            .copied()
            .unwrap_or_else(|| [0, u64::MAX, i64::MAX as u64 + 1][pick % 3])
    };
    for (n, op) in ops.iter().enumerate() {
        match *op {
            Op::Deliver { from, to } => {
                let text = format!("op {n} from {from} to {to}");
                let id = store
                    .deliver(
                        users[from],
                        users[to],
                        NewItem::Message { text: text.clone() },
                        u64::MAX >> 1,
                    )
                    .map_err(|e| fail(&e))?;
                prop_assert!(
                    issued.iter().all(|&old| old < id),
                    "item id {} reused or out of order",
                    id
                );
                issued.push(id);
                live.insert(id, (to, text));
            }
            Op::Item { who, pick } => {
                let id = pick_id(&issued, pick);
                let got = store.item(users[who], id).map_err(|e| fail(&e))?;
                match live.get(&id) {
                    Some((owner, text)) if *owner == who => {
                        let item = got.ok_or_else(|| fail(&"own item not found"))?;
                        prop_assert_eq!(item.entry.id, id);
                        prop_assert_eq!(
                            item.content,
                            rampart::store::ItemContent::Message { text: text.clone() }
                        );
                    }
                    _ => prop_assert!(got.is_none(), "user {} read item {} of another", who, id),
                }
                let owner = store.item_owner(id).map_err(|e| fail(&e))?;
                prop_assert_eq!(owner, live.get(&id).map(|(o, _)| users[*o]));
            }
            Op::Delete { who, pick } => {
                let id = pick_id(&issued, pick);
                let res = store.delete(users[who], id).map_err(|e| fail(&e))?;
                let mine = live.get(&id).is_some_and(|(owner, _)| *owner == who);
                prop_assert_eq!(res.is_some(), mine, "delete of item {} by user {}", id, who);
                if mine {
                    live.remove(&id);
                }
            }
            Op::Inbox { who } => {
                let got: Vec<u64> = store
                    .inbox(users[who], 0, u32::MAX)
                    .map_err(|e| fail(&e))?
                    .iter()
                    .map(|e| e.id)
                    .collect();
                let want: Vec<u64> = live
                    .iter()
                    .filter(|(_, (owner, _))| *owner == who)
                    .map(|(id, _)| *id)
                    .collect();
                prop_assert_eq!(got, want, "inbox of user {}", who);
            }
        }
    }
    // Finally every user sees exactly their own items, and none of anyone else's.
    for (who, &user) in users.iter().enumerate() {
        for &id in &issued {
            let visible = store.item(user, id).map_err(|e| fail(&e))?.is_some();
            let own = live.get(&id).is_some_and(|(owner, _)| *owner == who);
            prop_assert_eq!(visible, own, "user {} and item {}", who, id);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Item ids never let one user read, list or delete another user's items.
    #[test]
    fn item_ids_never_reach_another_users_items(ops in ops()) {
        check_ownership(&ops)?;
    }
}

/// A burst just before a second boundary and another right after it: a fixed-window
/// counter would admit both, GCRA only what replenished in between.
#[test]
fn burst_at_a_boundary_is_within_quota() -> Result<(), TestCaseError> {
    let steps = vec![
        Step::Check {
            advance_us: 999_000,
            key: 0,
            tries: 10,
        },
        Step::Check {
            advance_us: 2_000,
            key: 0,
            tries: 10,
        },
        Step::Purge,
        Step::Check {
            advance_us: 0,
            key: 0,
            tries: 10,
        },
    ];
    for limiter in [
        Limiter::FramesPerIp,
        Limiter::FramesPerUser,
        Limiter::FramesPerConnection,
        Limiter::LoginsPerIp,
        Limiter::LoginsPerUser,
    ] {
        check_limiter(limiter, 5, 5, &steps)?;
    }
    Ok(())
}
