//! slowloris: many connections, each sending one byte every `interval_ms`. Every connection
//! drips a SEND_MAIL header that declares `declared_len` bytes (a size the server must wait
//! for); half of them then keep dripping the body one byte at a time ("drip"), the other half
//! stop sending altogether once the header is out ("stall"). A connection the server cuts
//! (ERROR TIMEOUT, request id 0) is reopened at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::canary::{Got, Inbox};
use super::run::{bump, run_slots, Counts, Env};
use crate::protocol::{raw_header, Kind, VERSION};

pub(crate) async fn run(env: Arc<Env>, interval: Duration, declared_len: u32) {
    run_slots(&env, move |env, slot| {
        slot_loop(env, slot, interval, declared_len)
    })
    .await;
}

async fn slot_loop(env: Arc<Env>, slot: usize, interval: Duration, declared_len: u32) {
    let mut rng = env.rng(slot as u64);
    let mut n = slot;
    let head = raw_header(VERSION, Kind::SendMail as u8, 1, 0, declared_len);
    while env.live() {
        let stall = n % 2 == 1;
        n = n.wrapping_add(1);
        let Some((stream, source)) = env.open_next(&mut rng).await else {
            break;
        };
        let opened = Instant::now();
        let (mut rd, mut wr) = stream.into_split();
        let mut inbox = Inbox::new(source);
        let mut counts = Counts::new();
        bump(
            &mut counts,
            if stall {
                "stall connections"
            } else {
                "drip connections"
            },
        );
        let mut sent = 0usize;
        let mut next_byte = Instant::now();
        let end = loop {
            let dripping = !stall || sent < head.len();
            tokio::select! {
                got = inbox.next(&mut rd, &env, Duration::from_secs(3600)) => match got {
                    // Anything the server says ends the game for this connection: a timeout
                    // error comes right before the close.
                    Got::Frame(_) => continue,
                    end => break end,
                },
                _ = tokio::time::sleep_until(next_byte), if dripping => {
                    // Past the header, the body is zeros.
                    let byte = [head.get(sent).copied().unwrap_or(0)];
                    if env.write(&mut wr, &byte, u64::from(sent == head.len() - 1)).await.is_err() {
                        break Got::Reset;
                    }
                    sent += 1;
                    next_byte += interval;
                }
            }
        };
        *counts.entry("bytes dripped").or_insert(0) += sent as u64;
        env.merge(&counts);
        inbox.finish(&env, &end);
        env.pace(opened, &mut rng).await;
    }
}

#[cfg(test)]
mod tests {
    use crate::attack::testing::{bench, config, TestResult};

    #[tokio::test]
    async fn slowloris_connections_are_cut_by_the_budgets() -> TestResult {
        let mut cfg = config();
        cfg.firewall.enabled = false;
        cfg.timeouts.frame_grace_ms = 300;
        // The server checks a frame's rate when no byte has arrived for 250 ms, so the drip
        // is slower than that.
        let b = bench(cfg).await?;
        let (report, env) = b
            .run_env(
                "kind = \"slowloris\"\nconnections = 4\ninterval_ms = 400\nsources = \"127.0.6.0/30\"\n",
                2.0,
            )
            .await?;
        assert!(env.count("drip connections") >= 2, "{report:?}");
        assert!(env.count("stall connections") >= 2, "{report:?}");
        // Cut by the minimum-rate rule after the grace period, with ERROR TIMEOUT (id 0).
        assert!(env.count("conn cut: timeout") >= 4, "{report:?}");
        assert!(
            report.bytes_sent > 0 && report.bytes_sent < 200,
            "{report:?}"
        );
        b.stop().await;
        Ok(())
    }
}
