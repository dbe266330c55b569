//! The guard's per-frame admission cost with 100,000 tracked sources.
//!
//! For every frame the server calls [`Guard::admit_frame`]: the connection's own limiter, then
//! the per-source limiter, then the per-user one for an authenticated session, all judged at
//! one clock reading. Blocked sources are cut through their connection's cancellation token
//! rather than looked up per frame, but the blocklist is checked at every accept, so
//! `frame_admission` adds one [`Guard::is_blocked`] lookup to give the cost of "rate limiters
//! plus blocklist" per frame.
//!
//! Two access patterns: `admit_frame` and `frame_admission` take every frame from the next of
//! the 100,000 sources in an order that jumps around, the worst case (almost every check
//! misses the caches); the `_active` variants take frames from 64 busy connections, each from
//! its own source, while the limiter still tracks 100,000 (the map's size, not the pattern, is
//! what the target names).
//!
//! Set-up, outside the measurement: a guard on the real monotonic clock with the default
//! configuration except for higher rates (see below); 100,000 sources (127.1.x.y upwards) that
//! have each sent one frame, so the per-source limiter holds 100,000 keys; 64 authenticated
//! users; 10,000 blocked sources in another range; 64 connections, each with its own limiter.
//! Each iteration takes the next source in a fixed order that jumps around the 100,000 (so the
//! keyed map is hit all over, cache misses included) and the next connection and user in turn,
//! as 64 busy connections would.
//!
//! Why higher rates: a check costs the same whatever the quota numbers are (GCRA compares one
//! stored instant with the clock), but at tens of millions of checks per second the default
//! 2,000 frames per second per connection would refuse almost every measured check, and the
//! refusing path skips the store. The rates are raised so that every measured check is the
//! accepting path, the common and more expensive one; the bench counts refusals and fails if
//! there was any.
//!
//! Time is the bench thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time: on a
//! shared machine the wall time of a 100 ns operation mostly measures how often other work
//! preempts the bench.
//!
//! `separate_checks` is the same work as `admit_frame` done the way the server did it before
//! (`ConnLimiter::check`, then `Guard::check_frame`, each limiter reading the clock itself),
//! kept for comparison. The other functions time the parts on their own.
//!
//! docs/PERFORMANCE.md records the results and how they were taken.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    black_box, criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput,
};

use rampart::config::Config;

mod common;
use common::timed;
use rampart::guard::{ConnLimiter, Guard, SourceKey};

/// Sources tracked by the per-source frame limiter.
const SOURCES: u32 = 100_000;
/// Busy connections, each with its own limiter and user.
const CONNS: usize = 64;
/// Blocked sources in the runtime blocklist.
const BLOCKED: u32 = 10_000;

/// The `i`-th tracked source: 127.1.0.0 upwards.
fn source_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x7F01_0000u32 + i))
}

/// The `i`-th blocked source: 127.200.0.0 upwards, disjoint from the tracked ones.
fn blocked_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x7FC8_0000u32 + i))
}

/// A fixed walk over `0..n` that jumps around: steps of a prime that divides none of the
/// sizes used, so every index is visited once per `n` steps.
struct Walk {
    i: usize,
    n: usize,
}

impl Walk {
    fn new(n: usize) -> Walk {
        Walk { i: 0, n }
    }

    fn next(&mut self) -> usize {
        self.i = (self.i + 7919) % self.n;
        self.i
    }
}

struct Bench {
    guard: Guard,
    sources: Vec<SourceKey>,
    ips: Vec<IpAddr>,
    limiters: Vec<ConnLimiter>,
}

fn setup() -> Bench {
    let mut cfg = Config::default();
    let r = &mut cfg.rates;
    (r.frames_per_s_per_conn, r.frames_burst_per_conn) = (1_000_000_000, 1_000_000);
    (r.frames_per_s_per_user, r.frames_burst_per_user) = (1_000_000_000, 1_000_000);
    (r.frames_per_s_per_ip, r.frames_burst_per_ip) = (1_000_000_000, 1_000_000);
    cfg.check().expect("bench config is valid");
    let guard = Guard::new(&cfg);
    let ips: Vec<IpAddr> = (0..SOURCES).map(source_ip).collect();
    let sources: Vec<SourceKey> = ips.iter().map(|ip| guard.source_of(*ip)).collect();
    for (i, s) in sources.iter().enumerate() {
        guard
            .check_frame(*s, Some((i % CONNS) as i64))
            .expect("a first frame is within every allowance");
    }
    for i in 0..BLOCKED {
        assert!(guard.block(blocked_ip(i), Duration::from_secs(300), "bench"));
    }
    let limiters: Vec<ConnLimiter> = (0..CONNS).map(|_| guard.connection_limiter()).collect();
    let stats = guard.stats();
    assert!(stats.tracked_keys >= SOURCES as usize, "{stats:?}");
    assert_eq!(stats.blocked, BLOCKED as usize);
    Bench {
        guard,
        sources,
        ips,
        limiters,
    }
}

/// Benchmarks `check` (true when the frame was admitted) as `name`, counting refusals.
fn case(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    refused: &mut u64,
    mut check: impl FnMut() -> bool,
) {
    group.bench_function(name, |bench| {
        bench.iter_custom(|iters| {
            timed(iters, || {
                let ok = check();
                *refused += u64::from(!ok);
                ok
            })
        })
    });
}

fn guard(c: &mut Criterion) {
    let b = setup();
    let mut group = c.benchmark_group("guard");
    group.throughput(Throughput::Elements(1));
    let mut refused = 0u64;
    // The server's per-frame call, for frame `n` of a run: which source, connection and user.
    let admit = |i: usize, k: usize| {
        b.guard
            .admit_frame(&b.limiters[k], black_box(b.sources[i]), Some(k as i64))
            .is_ok()
    };
    let blocked = |i: usize| b.guard.is_blocked(black_box(b.ips[i]));
    // Sources: jumping over all 100,000 (`cold`), or one per busy connection (`active`).
    let mut cold = Walk::new(SOURCES as usize);
    let mut k = 0usize;
    let mut next_conn = move || {
        k = (k + 1) % CONNS;
        k
    };
    let active = |k: usize| k * (SOURCES as usize / CONNS);

    case(&mut group, "admit_frame", &mut refused, || {
        admit(cold.next(), next_conn())
    });
    case(&mut group, "frame_admission", &mut refused, || {
        let i = cold.next();
        !blocked(i) && admit(i, next_conn())
    });
    case(&mut group, "admit_frame_active", &mut refused, || {
        let k = next_conn();
        admit(active(k), k)
    });
    case(&mut group, "frame_admission_active", &mut refused, || {
        let k = next_conn();
        !blocked(active(k)) && admit(active(k), k)
    });
    case(&mut group, "separate_checks", &mut refused, || {
        let (i, k) = (cold.next(), next_conn());
        b.limiters[k]
            .check()
            .and_then(|()| b.guard.check_frame(black_box(b.sources[i]), Some(k as i64)))
            .is_ok()
    });
    case(&mut group, "source_limiter", &mut refused, || {
        b.guard
            .check_frame(black_box(b.sources[cold.next()]), None)
            .is_ok()
    });
    case(&mut group, "connection_limiter", &mut refused, || {
        b.limiters[next_conn()].check().is_ok()
    });
    case(&mut group, "blocklist_lookup", &mut 0, || {
        !blocked(cold.next())
    });
    group.finish();
    assert_eq!(
        refused, 0,
        "a check was refused: the bench must measure the accepting path"
    );
}

criterion_group!(benches, guard);
criterion_main!(benches);
