//! The kinds that push bytes at a generic target: flood (valid requests, pipelined),
//! raw-flood (random bytes), oversized (one huge request) and malformed (mutated requests).

use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, RngCore};
use tokio::time::Instant;

use super::super::run::{bump, Counts, Env};
use super::{mutate, run_drained, Wire};

/// How long a flooding connection gives the server to close once the writing stops.
const LINGER: Duration = Duration::from_millis(300);

/// Random bytes drawn once per raw-flood slot.
const POOL_BYTES: usize = 64 * 1024;

/// Most requests one flood write carries, whatever `pipeline` says, so a write stays small.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Mutated requests per malformed connection.
const MALFORMED_PER_CONN: u32 = 4;

/// How long a malformed or probe connection waits for an answer or a close.
const ANSWER_WAIT: Duration = Duration::from_millis(500);

/// Writes of an oversized body.
const OVERSIZED_CHUNK: usize = 64 * 1024;

pub(super) async fn flood(env: Arc<Env>, wire: Arc<Wire>, pipeline: u32) {
    run_drained(&env, move |env, mut slot| {
        let wire = Arc::clone(&wire);
        async move {
            let mut k = 0u64;
            while env.live() {
                let Some(mut conn) = slot.open().await else {
                    break;
                };
                while env.live() && conn.is_open() {
                    let mut batch = Vec::new();
                    let mut n = 0u64;
                    while n < u64::from(pipeline) && batch.len() < MAX_BATCH_BYTES {
                        batch.extend_from_slice(&wire.request(k));
                        k = k.wrapping_add(1);
                        n += 1;
                    }
                    if !conn.write(&env, &batch, n).await {
                        break;
                    }
                }
                slot.close(conn, LINGER).await;
            }
        }
    })
    .await;
}

pub(super) async fn raw_flood(env: Arc<Env>, bytes_per_s: Option<u64>, chunk_bytes: usize) {
    // Each slot's share of the cap, at least one byte a second.
    let per_slot = bytes_per_s.map(|r| (r / env.slots.max(1) as u64).max(1));
    run_drained(&env, move |env, mut slot| async move {
        // One pool per slot, read at random offsets: random enough, and cheap.
        let mut pool = vec![0u8; POOL_BYTES + chunk_bytes];
        slot.rng.fill_bytes(&mut pool);
        let started = Instant::now();
        let mut paced = 0u64;
        while env.live() {
            let Some(mut conn) = slot.open().await else {
                break;
            };
            while env.live() && conn.is_open() {
                let len = match per_slot {
                    // Small writes under a low cap, so the rate is smooth.
                    Some(rate) => chunk_bytes.min((rate / 10).max(1) as usize),
                    None => chunk_bytes,
                };
                let at = slot.rng.gen_range(0..POOL_BYTES);
                let Some(piece) = pool.get(at..at + len) else {
                    break;
                };
                if !conn.write(&env, piece, 0).await {
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
            slot.close(conn, LINGER).await;
        }
    })
    .await;
}

pub(super) async fn oversized(env: Arc<Env>, wire: Arc<Wire>, declared_len: u32, body_bytes: u64) {
    let (head, fill, tail) = wire.oversized(declared_len);
    let (head, tail) = (Arc::new(head), Arc::new(tail));
    run_drained(&env, move |env, mut slot| {
        let (head, tail) = (Arc::clone(&head), Arc::clone(&tail));
        async move {
            let chunk = vec![fill; OVERSIZED_CHUNK];
            while env.live() {
                let Some(mut conn) = slot.open().await else {
                    break;
                };
                let mut ok = conn.write(&env, &head, 1).await;
                let mut left = body_bytes;
                while ok && left > 0 {
                    let n = left.min(OVERSIZED_CHUNK as u64) as usize;
                    ok = conn
                        .write(&env, chunk.get(..n).unwrap_or_default(), 0)
                        .await;
                    left -= n as u64;
                }
                if ok {
                    ok = conn.write(&env, &tail, 0).await;
                }
                let label = if ok {
                    "oversized request sent whole"
                } else {
                    "oversized request cut before its end"
                };
                env.merge(&Counts::from([(label, 1)]));
                slot.close(conn, ANSWER_WAIT).await;
            }
        }
    })
    .await;
}

pub(super) async fn malformed(env: Arc<Env>, wire: Arc<Wire>) {
    run_drained(&env, move |env, mut slot| {
        let wire = Arc::clone(&wire);
        async move {
            let mut k = 0u64;
            while env.live() {
                let Some(mut conn) = slot.open().await else {
                    break;
                };
                let mut counts = Counts::new();
                for _ in 0..MALFORMED_PER_CONN {
                    let (bytes, label) = mutate(&mut slot.rng, &wire.request(k));
                    k = k.wrapping_add(1);
                    bump(&mut counts, label);
                    if !conn.write(&env, &bytes, 1).await {
                        break;
                    }
                }
                conn.wait(&env, Some(ANSWER_WAIT)).await;
                let outcome = match (conn.received() > 0, conn.is_open()) {
                    (true, false) => "answered, then closed",
                    (true, true) => "answered, kept open",
                    (false, false) => "closed without an answer",
                    (false, true) => "no answer",
                };
                bump(&mut counts, outcome);
                env.merge(&counts);
                slot.close(conn, Duration::from_millis(50)).await;
            }
        }
    })
    .await;
}
