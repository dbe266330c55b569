//! The kinds that push bytes at a generic target: flood (valid requests, pipelined),
//! raw-flood (random bytes), oversized (one huge request) and malformed (mutated requests).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, RngCore};
use tokio::time::Instant;

use super::super::run::{bump, run_slots, Counts, Env};
use super::{mutate, note_received, open, write_or_closed, Sink, Wire};

/// Most requests one flood write carries, whatever `pipeline` says, so a write stays small.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Mutated requests per malformed connection.
const MALFORMED_PER_CONN: u32 = 4;

/// How long a malformed or probe connection waits for an answer or a close.
const ANSWER_WAIT: Duration = Duration::from_millis(500);

/// Writes of an oversized body.
const OVERSIZED_CHUNK: usize = 64 * 1024;

pub(super) async fn flood(env: Arc<Env>, wire: Arc<Wire>, pipeline: u32) {
    let received = Arc::new(AtomicU64::new(0));
    let r = Arc::clone(&received);
    run_slots(&env, move |env, slot| {
        let wire = Arc::clone(&wire);
        let received = Arc::clone(&r);
        async move {
            let mut rng = env.rng(slot as u64);
            let mut k = slot as u64 * 1_000_000;
            while env.live() {
                let Some((stream, _)) = open(&env, &mut rng).await else {
                    break;
                };
                let opened = Instant::now();
                let (rd, mut wr) = stream.into_split();
                let sink = Sink::spawn(&env, rd, Arc::clone(&received));
                while env.live() && !sink.closed.is_cancelled() {
                    let mut batch = Vec::new();
                    let mut n = 0u64;
                    while n < u64::from(pipeline) && batch.len() < MAX_BATCH_BYTES {
                        batch.extend_from_slice(&wire.request(k));
                        k = k.wrapping_add(1);
                        n += 1;
                    }
                    if !write_or_closed(&env, &mut wr, &batch, n, &sink.closed).await {
                        break;
                    }
                }
                drop(wr);
                sink.finish(Duration::from_millis(300)).await;
                env.pace(opened, &mut rng).await;
            }
        }
    })
    .await;
    note_received(&env, &received);
}

pub(super) async fn raw_flood(env: Arc<Env>, bytes_per_s: Option<u64>, chunk_bytes: usize) {
    // Each slot's share of the cap, at least one byte a second.
    let per_slot = bytes_per_s.map(|r| (r / env.slots.max(1) as u64).max(1));
    let received = Arc::new(AtomicU64::new(0));
    let r = Arc::clone(&received);
    run_slots(&env, move |env, slot| {
        let received = Arc::clone(&r);
        async move {
            let mut rng = env.rng(slot as u64);
            // One pool per slot, read at random offsets: random enough, and cheap.
            let mut pool = vec![0u8; 64 * 1024 + chunk_bytes];
            rng.fill_bytes(&mut pool);
            let started = Instant::now();
            let mut paced = 0u64;
            while env.live() {
                let Some((stream, _)) = open(&env, &mut rng).await else {
                    break;
                };
                let opened = Instant::now();
                let (rd, mut wr) = stream.into_split();
                let sink = Sink::spawn(&env, rd, Arc::clone(&received));
                while env.live() && !sink.closed.is_cancelled() {
                    let len = match per_slot {
                        Some(rate) => chunk_bytes.min((rate / 10).max(1) as usize),
                        None => chunk_bytes,
                    };
                    let at = rng.gen_range(0..64 * 1024);
                    let Some(piece) = pool.get(at..at + len) else {
                        break;
                    };
                    if !write_or_closed(&env, &mut wr, piece, 0, &sink.closed).await {
                        break;
                    }
                    if let Some(rate) = per_slot {
                        paced += len as u64;
                        let due = started + Duration::from_secs_f64(paced as f64 / rate as f64);
                        if !env.sleep_until(due).await {
                            break;
                        }
                    }
                }
                drop(wr);
                sink.finish(Duration::from_millis(300)).await;
                env.pace(opened, &mut rng).await;
            }
        }
    })
    .await;
    note_received(&env, &received);
}

pub(super) async fn oversized(env: Arc<Env>, wire: Arc<Wire>, declared_len: u32, body_bytes: u64) {
    let received = Arc::new(AtomicU64::new(0));
    let r = Arc::clone(&received);
    run_slots(&env, move |env, slot| {
        let wire = Arc::clone(&wire);
        let received = Arc::clone(&r);
        async move {
            let mut rng = env.rng(slot as u64);
            let (head, fill, tail) = wire.oversized(declared_len);
            let chunk = vec![fill; OVERSIZED_CHUNK];
            while env.live() {
                let Some((stream, _)) = open(&env, &mut rng).await else {
                    break;
                };
                let opened = Instant::now();
                let (rd, mut wr) = stream.into_split();
                let sink = Sink::spawn(&env, rd, Arc::clone(&received));
                let mut counts = Counts::new();
                let mut ok = write_or_closed(&env, &mut wr, &head, 1, &sink.closed).await;
                let mut left = body_bytes;
                while ok && left > 0 {
                    let n = left.min(OVERSIZED_CHUNK as u64) as usize;
                    ok = write_or_closed(
                        &env,
                        &mut wr,
                        chunk.get(..n).unwrap_or_default(),
                        0,
                        &sink.closed,
                    )
                    .await;
                    left -= n as u64;
                }
                if ok {
                    ok = write_or_closed(&env, &mut wr, &tail, 0, &sink.closed).await;
                }
                bump(
                    &mut counts,
                    if ok {
                        "oversized request sent whole"
                    } else {
                        "oversized request cut before its end"
                    },
                );
                env.merge(&counts);
                drop(wr);
                sink.finish(ANSWER_WAIT).await;
                env.pace(opened, &mut rng).await;
            }
        }
    })
    .await;
    note_received(&env, &received);
}

pub(super) async fn malformed(env: Arc<Env>, wire: Arc<Wire>) {
    run_slots(&env, move |env, slot| {
        let wire = Arc::clone(&wire);
        async move {
            let mut rng = env.rng(slot as u64);
            let mut k = slot as u64 * 1_000_000;
            while env.live() {
                let Some((stream, _)) = open(&env, &mut rng).await else {
                    break;
                };
                let opened = Instant::now();
                let received = Arc::new(AtomicU64::new(0));
                let (rd, mut wr) = stream.into_split();
                let sink = Sink::spawn(&env, rd, Arc::clone(&received));
                let mut counts = Counts::new();
                for _ in 0..MALFORMED_PER_CONN {
                    let (bytes, label) = mutate(&mut rng, &wire.request(k));
                    k = k.wrapping_add(1);
                    bump(&mut counts, label);
                    if !write_or_closed(&env, &mut wr, &bytes, 1, &sink.closed).await {
                        break;
                    }
                }
                tokio::select! {
                    _ = sink.closed.cancelled() => {}
                    _ = tokio::time::sleep(ANSWER_WAIT) => {}
                    _ = env.halt.cancelled() => {}
                }
                bump(
                    &mut counts,
                    match (
                        received.load(Ordering::Relaxed) > 0,
                        sink.closed.is_cancelled(),
                    ) {
                        (true, true) => "answered, then closed",
                        (true, false) => "answered, kept open",
                        (false, true) => "closed without an answer",
                        (false, false) => "no answer",
                    },
                );
                env.merge(&counts);
                drop(wr);
                sink.finish(Duration::from_millis(50)).await;
                env.pace(opened, &mut rng).await;
            }
        }
    })
    .await;
}
