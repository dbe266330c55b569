//! raw-flood: `while True: socket.send(data)`. Each connection writes seeded random bytes in
//! chunks of `chunk_bytes` for as long as the server takes them, optionally capped at
//! `bytes_per_s` for the whole attack (shared evenly by its connections), and reconnects when
//! cut. The bytes come from a seeded pool read at random offsets. Replies (the server's ERROR
//! BAD_FRAME before it closes) are drained and counted.

use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, RngCore};
use tokio::time::Instant;

use super::canary::{Drain, Inbox};
use super::run::{run_slots, Env};

/// Random bytes drawn once per connection slot.
const POOL_BYTES: usize = 64 * 1024;

pub(crate) async fn run(env: Arc<Env>, bytes_per_s: Option<u64>, chunk_bytes: usize) {
    // Each slot's share of the cap, at least one byte a second.
    let per_slot = bytes_per_s.map(|r| (r / env.slots.max(1) as u64).max(1));
    run_slots(&env, move |env, slot| {
        slot_loop(env, slot, per_slot, chunk_bytes)
    })
    .await;
}

async fn slot_loop(env: Arc<Env>, slot: usize, per_slot: Option<u64>, chunk_bytes: usize) {
    let mut rng = env.rng(slot as u64);
    // A pool of random bytes made once; each write takes a chunk from a random offset, so the
    // stream stays random without spending the CPU the server should be fighting for.
    let mut pool = vec![0u8; POOL_BYTES + chunk_bytes];
    rng.fill_bytes(&mut pool);
    // Pacing state for the cap: bytes sent by this slot since `paced_from`.
    let paced_from = Instant::now();
    let mut paced_bytes = 0u64;
    while env.live() {
        let Some((stream, source)) = env.open_next(&mut rng).await else {
            break;
        };
        let opened = Instant::now();
        let (rd, mut wr) = stream.into_split();
        let drain = Drain::spawn(&env, rd, Inbox::new(source));
        while env.live() && !drain.closed.is_cancelled() {
            let len = match per_slot {
                // Small writes under a low cap, so the rate is smooth.
                Some(rate) => chunk_bytes.min((rate / 10).max(1) as usize),
                None => chunk_bytes,
            };
            let at = rng.gen_range(0..POOL_BYTES);
            let Some(piece) = pool.get(at..at + len) else {
                break;
            };
            let written = tokio::select! {
                r = env.write(&mut wr, piece, 0) => r.is_ok(),
                _ = drain.closed.cancelled() => false,
            };
            if !written {
                break;
            }
            if let Some(rate) = per_slot {
                paced_bytes += len as u64;
                let due = paced_from + Duration::from_secs_f64(paced_bytes as f64 / rate as f64);
                if !env.sleep_until(due).await {
                    break;
                }
            }
        }
        drop(wr);
        drain.finish(Duration::from_millis(300)).await;
        env.pace(opened, &mut rng).await;
    }
}

#[cfg(test)]
mod tests {
    use crate::attack::testing::{bench, config, TestResult};

    #[tokio::test]
    async fn raw_flood_sends_bytes_and_is_cut() -> TestResult {
        let mut cfg = config();
        // Keep the sources unblocked so the test sees repeated cuts, not refusals.
        cfg.firewall.enabled = false;
        let b = bench(cfg).await?;
        let (report, env) = b
            .run_env(
                "kind = \"raw-flood\"\nconnections = 2\nsources = \"127.0.4.0/30\"\n",
                1.0,
            )
            .await?;
        assert!(report.bytes_sent > 0, "{report:?}");
        assert_eq!(report.frames_sent, 0);
        assert!(report.connects >= 2, "{report:?}");
        assert!(env.count("bad_frame") >= 1, "{report:?}");
        assert!(env.count("conn cut: bad_frame") >= 1, "{report:?}");
        assert_eq!(report.canary_leaks, 0);
        b.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn raw_flood_respects_its_byte_cap() -> TestResult {
        let b = bench(config()).await?;
        let report = b
            .run(
                "kind = \"raw-flood\"\nbytes_per_s = 2000\nsources = \"127.0.4.8/32\"\n",
                1.0,
            )
            .await?;
        assert!(report.bytes_sent > 0, "{report:?}");
        // One second at 2000 B/s, in writes of 200 bytes: allow for the first write.
        assert!(report.bytes_sent <= 2600, "{report:?}");
        b.stop().await;
        Ok(())
    }
}
