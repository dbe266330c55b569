//! Activity events per second into SQLite, through the recorder the server uses.
//!
//! `recorder/record_and_commit`: a [`Recorder`] started exactly as the server starts it
//! (`Recorder::start` on a data directory, the default channel capacity of 65,536 events and
//! the default 20 ms flush interval, WAL with `synchronous = NORMAL`). One iteration records a
//! channel's worth of events with [`Recorder::record`] (the server's non-blocking call) and
//! then waits with [`Recorder::flush`] until the writer thread has committed them all. The
//! time per event is therefore send plus batch insert plus commit. The events imitate the
//! server's mix for small messages: for each request a FRAME_IN and a FRAME_OUT, with an
//! accept, a login and a close now and then, from 64 peers, timestamps rising.
//!
//! `recorder/db_insert`: the same events written with `activity::db::insert` in batches of
//! 8,192 (the writer's largest batch) on the calling thread, without the channel: what SQLite
//! itself costs. It is timed in the thread's CPU time, so other work on a shared machine does
//! not inflate it (`record_and_commit` spans two threads and is wall time).
//!
//! The database keeps growing over the iterations, as a server's does, and timestamps keep
//! rising across iterations too: each iteration's events are the same mix shifted past the
//! previous iteration's last millisecond. (Repeating the same timestamps every iteration
//! would insert every new row in the middle of the time index instead of at its end, which a
//! server never does.) The bench fails if any event was shed, so what is measured is always
//! events that reached the database.
//! docs/PERFORMANCE.md records the results and how they were taken.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use rampart::activity::{db, Event, EventKind, Recorder};
use rampart::config::Config;

mod common;
use common::timed;

/// Events per iteration: one full channel at the default capacity.
fn per_iteration() -> usize {
    Config::default().activity.channel_capacity as usize
}

/// The `i`-th event of the imitation traffic.
fn event(i: u64) -> Event {
    let peer = (i / 2) % 64;
    let kind = match i % 200 {
        0 => EventKind::Accept,
        1 => EventKind::AuthOk { forgiven: 0 },
        199 => EventKind::Close {
            reason: "bye",
            unread_bytes: 0,
        },
        n if n % 2 == 0 => EventKind::FrameIn {
            kind: 0x03,
            size: 78,
            assemble_ms: 0,
        },
        _ => EventKind::FrameOut {
            kind: 0x82,
            size: 8,
        },
    };
    Event {
        t_ms: 1_800_000_000_000 + (i / 64) as i64,
        conn: peer + 1,
        ip: IpAddr::V4(Ipv4Addr::new(127, 0, 1, peer as u8 + 1)),
        kind,
    }
}

/// Milliseconds one iteration's events span, so the next iteration starts after them.
fn span_ms(events: &[Event]) -> i64 {
    events.last().map_or(0, |e| e.t_ms) - events.first().map_or(0, |e| e.t_ms) + 1
}

/// `e`, `shift` milliseconds later.
fn later(e: &Event, shift: i64) -> Event {
    Event {
        t_ms: e.t_ms + shift,
        ..*e
    }
}

fn recorder(c: &mut Criterion) {
    let n = per_iteration();
    let events: Vec<Event> = (0..n as u64).map(event).collect();
    let span = span_ms(&events);
    let mut group = c.benchmark_group("recorder");
    group.throughput(Throughput::Elements(n as u64));
    // An iteration takes tens of milliseconds; ten samples fit a short measurement time.
    group.sample_size(10);

    let dir = tempfile::tempdir().expect("temporary directory");
    let cfg = Config::default();
    let rec = Recorder::start(
        dir.path(),
        cfg.activity.channel_capacity as usize,
        cfg.activity.flush(),
        None,
    )
    .expect("recorder starts");
    let mut shift = 0;
    group.bench_function("record_and_commit", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                for e in &events {
                    rec.record(later(e, shift));
                }
                shift += span;
                rec.flush();
                total += started.elapsed();
            }
            total
        })
    });
    let stats = rec.stats();
    assert_eq!(stats.shed, 0, "events were shed: {stats:?}");
    assert_eq!(stats.failed_batches, 0, "batches failed: {stats:?}");
    rec.close();

    let dir2 = tempfile::tempdir().expect("temporary directory");
    let mut conn = db::open(dir2.path()).expect("activity database opens");
    // Shifting the timestamps is done before the clock starts: one copy per iteration.
    let mut shifted = events.clone();
    let mut shift = 0;
    group.bench_function("db_insert", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                for (s, e) in shifted.iter_mut().zip(&events) {
                    *s = later(e, shift);
                }
                shift += span;
                total += timed(1, || {
                    for batch in shifted.chunks(8192) {
                        db::insert(&mut conn, batch).expect("insert commits");
                    }
                });
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, recorder);
criterion_main!(benches);
