//! flood: valid frames at full speed. Each connection logs in with the attack account, then
//! writes batches of `pipeline` frames back to back without waiting for a single reply; a
//! separate task drains the replies unread (only counting them), so the flood is limited by
//! the server alone and never turns into a slow read. With `frames_per_s`, each connection
//! keeps to that many frames a second (a flood kept under the server's rate limit).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::canary::{Drain, Got, Inbox};
use super::run::{bump, Env};
use super::spec::FloodFrame;
use super::wire::{encode_into, Ids};
use crate::protocol::{Kind, Password, Request};

/// Longest wait for the AUTH reply (argon2 on a busy pool can take a while).
const AUTH_WAIT: Duration = Duration::from_secs(5);

pub(crate) async fn run(
    env: Arc<Env>,
    pipeline: u32,
    frames: Vec<FloodFrame>,
    auth: bool,
    frames_per_s: Option<u64>,
) {
    let frames: Arc<[FloodFrame]> = frames.into();
    super::run::run_slots(&env, move |env, slot| {
        let frames = Arc::clone(&frames);
        slot_loop(env, slot, pipeline, frames, auth, frames_per_s)
    })
    .await;
}

async fn slot_loop(
    env: Arc<Env>,
    slot: usize,
    pipeline: u32,
    frames: Arc<[FloodFrame]>,
    auth: bool,
    frames_per_s: Option<u64>,
) {
    let mut rng = env.rng(slot as u64);
    while env.live() {
        let Some((stream, source)) = env.open_next(&mut rng).await else {
            break;
        };
        let opened = Instant::now();
        let (mut rd, mut wr) = stream.into_split();
        let mut inbox = Inbox::new(source);
        let mut ids = Ids::new();
        let mut authed = false;
        if auth {
            let (user, pw) = &env.account;
            let req = Request::Auth {
                user: user.clone(),
                password: Password(Bytes::copy_from_slice(pw.as_bytes())),
            };
            let mut out = BytesMut::new();
            encode_into(ids.next(), &req, &mut out);
            if env.write(&mut wr, &out, 1).await.is_err() {
                let end = Got::Reset;
                inbox.finish(&env, &end);
                env.pace(opened, &mut rng).await;
                continue;
            }
            match inbox.next(&mut rd, &env, AUTH_WAIT).await {
                Got::Frame(f) if f.kind == Kind::AuthOk => authed = true,
                Got::Frame(_) | Got::Timeout => {}
                end => {
                    inbox.finish(&env, &end);
                    env.pace(opened, &mut rng).await;
                    continue;
                }
            }
        }
        let drain = Drain::spawn(&env, rd, inbox);
        let batch = build_batch(&env, &mut ids, pipeline, &frames, authed);
        let mut batches = 0u64;
        let flooding = Instant::now();
        while env.live() && !drain.closed.is_cancelled() {
            if let Some(rate) = frames_per_s {
                // The next batch is due when the frames sent so far fill the rate.
                let sent = batches.saturating_mul(u64::from(pipeline));
                let due = flooding + Duration::from_secs_f64(sent as f64 / rate as f64);
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = drain.closed.cancelled() => break,
                }
            }
            // Rebuild now and then so request ids keep moving, as a real client's would.
            let bytes = if batches % 64 == 63 {
                build_batch(&env, &mut ids, pipeline, &frames, authed)
            } else {
                batch.clone()
            };
            batches += 1;
            tokio::select! {
                r = env.write(&mut wr, &bytes, u64::from(pipeline)) => if r.is_err() { break },
                _ = drain.closed.cancelled() => break,
            }
        }
        drop(wr);
        // The server closes once it has answered what it read; then the socket is dropped.
        drain.finish(Duration::from_millis(500)).await;
        let mut counts = super::run::Counts::new();
        bump(
            &mut counts,
            if authed {
                "sessions authenticated"
            } else {
                "sessions unauthenticated"
            },
        );
        env.merge(&counts);
        env.pace(opened, &mut rng).await;
    }
}

/// One batch of `pipeline` frames cycling through `frames`; unauthenticated, only PINGs.
fn build_batch(
    env: &Env,
    ids: &mut Ids,
    pipeline: u32,
    frames: &[FloodFrame],
    authed: bool,
) -> Bytes {
    let mut out = BytesMut::new();
    let me = env.account.0.clone();
    for i in 0..pipeline as usize {
        let kind = if authed {
            frames
                .get(i % frames.len().max(1))
                .copied()
                .unwrap_or(FloodFrame::Ping)
        } else {
            FloodFrame::Ping
        };
        let req = match kind {
            FloodFrame::Ping => Request::Ping,
            FloodFrame::ListInbox => Request::ListInbox { after: 0, limit: 1 },
            FloodFrame::SendMessage => Request::SendMessage {
                to: me.clone(),
                text: "flood".into(),
            },
            FloodFrame::Fetch => Request::Fetch { item_id: 1 },
        };
        encode_into(ids.next(), &req, &mut out);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use crate::attack::testing::{bench, config, TestResult};

    #[tokio::test]
    async fn flood_pipelines_valid_frames_and_hits_the_limits() -> TestResult {
        let mut cfg = config();
        cfg.firewall.enabled = false;
        let b = bench(cfg).await?;
        let (report, env) = b
            .run_env(
                "kind = \"flood\"\nconnections = 2\nsources = \"127.0.15.0/30\"\nframes = [\"ping\", \"list-inbox\"]\n",
                1.0,
            )
            .await?;
        assert!(env.count("sessions authenticated") >= 1, "{report:?}");
        assert!(report.frames_sent >= 1000, "{report:?}");
        assert!(env.count("PONG") >= 100, "{report:?}");
        assert!(env.count("INBOX") >= 100, "{report:?}");
        // Past the per-connection burst the server refuses, and strikes close the connection.
        assert!(env.count("rate_limited") >= 1, "{report:?}");
        assert_eq!(report.canary_leaks, 0);
        b.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn a_capped_flood_keeps_to_its_rate_and_under_the_limits() -> TestResult {
        let mut cfg = config();
        cfg.firewall.enabled = false;
        let b = bench(cfg).await?;
        let (report, env) = b
            .run_env(
                "kind = \"flood\"\nsources = \"127.0.15.12/32\"\nauth = false\npipeline = 10\nframes_per_s = 200\n",
                1.0,
            )
            .await?;
        // One second at 200 frames a second, in batches of 10: the first batch goes at once.
        // No login, so no password hash delays the start.
        assert!(
            (150..=260).contains(&report.frames_sent),
            "{} frames: {report:?}",
            report.frames_sent
        );
        assert_eq!(env.count("rate_limited"), 0, "{report:?}");
        b.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn flood_is_blocked_by_the_firewall() -> TestResult {
        let b = bench(config()).await?;
        let report = b
            .run(
                "kind = \"flood\"\nsources = \"127.0.15.9/32\"\nframes = [\"ping\"]\n",
                1.0,
            )
            .await?;
        assert!(report.refused >= 1, "{report:?}");
        b.stop().await;
        Ok(())
    }
}
