//! preauth-buffer: strangers that start a large frame and stall, never logging in. Each
//! connection sends one header (a SEND_MAIL declaring about 1 MiB by default, or the largest
//! AUTH a stranger may send) and `body_bytes` of its body (all but its last byte by default),
//! then waits. A server that buffers
//! towards the declared length for a stranger holds that memory for every connection until
//! its frame budget runs out; rampart refuses such a header before login and closes. A
//! connection the server closes is reopened at once (after a short pause if it lived briefly).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::canary::{Got, Inbox};
use super::run::{bump, run_slots, Counts, Env};
use crate::protocol::{raw_header, VERSION};

pub(crate) async fn run(env: Arc<Env>, kind: u8, declared_len: u32, body_bytes: u32) {
    run_slots(&env, move |env, slot| {
        slot_loop(env, slot, kind, declared_len, body_bytes)
    })
    .await;
}

async fn slot_loop(env: Arc<Env>, slot: usize, kind: u8, declared_len: u32, body_bytes: u32) {
    let mut rng = env.rng(slot as u64);
    let head = raw_header(VERSION, kind, 1, 0, declared_len);
    while env.live() {
        let Some((stream, source)) = env.open_next(&mut rng).await else {
            break;
        };
        let opened = Instant::now();
        let (mut rd, mut wr) = stream.into_split();
        let mut inbox = Inbox::new(source);
        let mut counts = Counts::new();
        bump(&mut counts, "stalled frames started");
        let end = if send(&env, &mut wr, &head, body_bytes).await.is_err() {
            Got::Reset
        } else {
            // Then nothing more: wait for whatever the server does about it.
            loop {
                match inbox.next(&mut rd, &env, Duration::from_secs(3600)).await {
                    Got::Frame(_) => continue,
                    end => break end,
                }
            }
        };
        if opened.elapsed() < Duration::from_secs(1) {
            bump(&mut counts, "closed within 1 s");
        }
        env.merge(&counts);
        inbox.finish(&env, &end);
        env.pace(opened, &mut rng).await;
    }
}

/// Zeros the body is written from: every slot shares them, so the attacker's own memory
/// stays small and the runner's resident memory shows the server's.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Writes the header, then `body_bytes` of zeros.
async fn send(
    env: &Env,
    wr: &mut crate::sim::net::ConnWrite,
    head: &[u8],
    body_bytes: u32,
) -> Result<(), super::run::WriteEnd> {
    env.write(wr, head, 1).await?;
    let mut left = body_bytes as usize;
    while left > 0 {
        let n = left.min(ZEROS.len());
        env.write(wr, &ZEROS[..n], 0).await?;
        left -= n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::attack::testing::{bench, config, TestResult};

    #[tokio::test]
    async fn a_stalled_frame_before_login_is_refused_at_once() -> TestResult {
        let mut cfg = config();
        cfg.firewall.enabled = false;
        let b = bench(cfg).await?;
        let (report, env) = b
            .run_env(
                "kind = \"preauth-buffer\"\nconnections = 4\nsources = \"127.0.7.0/30\"\n",
                1.5,
            )
            .await?;
        // Every connection is refused from its header and closed right away, so each slot
        // goes round many times instead of holding one stalled connection.
        assert!(env.count("stalled frames started") >= 8, "{report:?}");
        assert!(env.count("closed within 1 s") >= 8, "{report:?}");
        b.stop().await;
        Ok(())
    }
}
