//! slow-read: asks for big files and never reads the replies. First, one session uploads a
//! file of `file_bytes` seeded random bytes to the attack account itself (within its own
//! quota) and remembers its item id; if the server will not take the file, a long message to
//! itself stands in. Then every connection logs in, pipelines `requests_per_conn` DOWNLOADs
//! (or FETCHes) of it and never reads another byte. A PING is written every 250 ms: the
//! server, no longer reading, leaves them unread, so when it cuts the connection its kernel
//! answers with a reset that the next write sees.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rand::RngCore;
use tokio::time::Instant;

use super::canary::{Got, Inbox};
use super::run::{bump, login, run_slots, Counts, Env};
use super::wire::{encode_into, Ids};
use crate::client::{Client, ClientOptions};
use crate::protocol::{ErrorCode, Request};

/// Between the PINGs that detect the cut.
const TRICKLE: Duration = Duration::from_millis(250);

/// What the connections ask for.
#[derive(Debug, Clone, Copy)]
enum Big {
    /// A file item and its size.
    File { item_id: u64, total: u64 },
    /// A long message item.
    Message { item_id: u64 },
}

pub(crate) async fn run(env: Arc<Env>, file_bytes: u64, requests_per_conn: u32, max_len: u32) {
    let Some(big) = setup(&env, file_bytes).await else {
        return;
    };
    env.note(match big {
        Big::File { item_id, total } => {
            format!("uploaded a {total}-byte file to itself as item {item_id}")
        }
        Big::Message { item_id } => {
            format!("the file was refused; pipelining FETCHes of message item {item_id} instead")
        }
    });
    run_slots(&env, move |env, slot| {
        slot_loop(env, slot, big, requests_per_conn, max_len)
    })
    .await;
}

/// Uploads the big item, retrying from the next source every half second until it works or
/// the attack halts.
async fn setup(env: &Env, file_bytes: u64) -> Option<Big> {
    let mut rng = env.rng(u64::MAX);
    let mut data = vec![0u8; file_bytes as usize];
    rng.fill_bytes(&mut data);
    let (user, pw) = env.account.clone();
    while env.live() {
        let source = env.next_source();
        if !env.logins.acquire(env).await {
            return None;
        }
        let opts = ClientOptions::default()
            .source(env.bind_address(source, &mut rng))
            .request_timeout(Duration::from_secs(30));
        let attempt = async {
            let mut client = Client::login(env.target, &user, pw.as_bytes(), opts).await?;
            env.obs
                .connects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match client.send_file_bytes(&user, "slow-read.bin", &data).await {
                Ok(item_id) => {
                    env.sent(file_bytes.div_ceil(256 * 1024) + 3, data.len());
                    Ok(Big::File {
                        item_id,
                        total: file_bytes,
                    })
                }
                Err(e)
                    if matches!(
                        e.code(),
                        Some(ErrorCode::TooLarge | ErrorCode::QuotaExceeded)
                    ) =>
                {
                    let mut last = e;
                    for len in [60_000usize, 4_000] {
                        match client.send_message(&user, &"s".repeat(len)).await {
                            Ok(item_id) => {
                                env.sent(1, len);
                                return Ok(Big::Message { item_id });
                            }
                            Err(e) => last = e,
                        }
                    }
                    Err(last)
                }
                Err(e) => Err(e),
            }
        };
        let result = tokio::select! {
            r = attempt => r,
            _ = env.halt.cancelled() => return None,
        };
        match result {
            Ok(big) => return Some(big),
            Err(e) => {
                env.note(format!("setup upload failed: {e}"));
                // Was the source refused at accept? Record it (and back off) if so.
                if let Some(stream) = env.open_from(source, &mut rng).await {
                    stream.abort();
                    env.sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
    None
}

fn big_requests(big: Big, count: u32, max_len: u32) -> Vec<Request> {
    (0..u64::from(count))
        .map(|i| match big {
            Big::File { item_id, total } => Request::Download {
                item_id,
                part: 0,
                offset: (i * u64::from(max_len)) % total.max(1),
                max_len,
            },
            Big::Message { item_id } => Request::Fetch { item_id },
        })
        .collect()
}

async fn slot_loop(env: Arc<Env>, slot: usize, big: Big, requests_per_conn: u32, max_len: u32) {
    let mut rng = env.rng(slot as u64);
    let requests = big_requests(big, requests_per_conn, max_len);
    while env.live() {
        if !env.logins.acquire(&env).await {
            break;
        }
        let Some((stream, source)) = env.open_next(&mut rng).await else {
            break;
        };
        let opened = Instant::now();
        let (mut rd, mut wr) = stream.into_split();
        let mut inbox = Inbox::new(source);
        let mut ids = Ids::new();
        let mut counts = Counts::new();
        if let Err(end) = login(&env, &mut rd, &mut wr, &mut inbox, &mut ids).await {
            inbox.finish(&env, &end);
            env.pace(opened, &mut rng).await;
            continue;
        }
        let mut out = BytesMut::new();
        for req in &requests {
            encode_into(ids.next(), req, &mut out);
        }
        bump(&mut counts, "sessions pipelining unread requests");
        let mut ping = BytesMut::new();
        let end = if env
            .write(&mut wr, &out, u64::from(requests_per_conn))
            .await
            .is_ok()
        {
            // Never read again; a PING now and then shows when the server has cut us.
            loop {
                if !env.sleep(TRICKLE).await {
                    break Got::Halted;
                }
                ping.clear();
                encode_into(ids.next(), &Request::Ping, &mut ping);
                if env.write(&mut wr, &ping, 1).await.is_err() {
                    break Got::Reset;
                }
            }
        } else {
            Got::Reset
        };
        if matches!(end, Got::Reset) {
            bump(&mut counts, "cut while not reading");
            let held = opened.elapsed().as_millis() as u64;
            *counts.entry("ms held before the cut (sum)").or_insert(0) += held;
        }
        env.merge(&counts);
        inbox.finish(&env, &end);
        drop(rd);
        env.pace(opened, &mut rng).await;
    }
}

#[cfg(test)]
mod tests {
    use crate::attack::testing::{bench, config, TestResult};

    #[tokio::test]
    async fn slow_read_is_cut_by_the_write_deadline() -> TestResult {
        let mut cfg = config();
        cfg.timeouts.write_ms = 300;
        let b = bench(cfg).await?;
        let (report, env) = b
            .run_env(
                "kind = \"slow-read\"\nsources = \"127.0.7.1/32\"\nfile_bytes = 1048576\nrequests_per_conn = 128\n",
                2.5,
            )
            .await?;
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.contains("uploaded a 1048576-byte file")),
            "{report:?}"
        );
        assert!(
            env.count("sessions pipelining unread requests") >= 1,
            "{report:?}"
        );
        assert!(env.count("cut while not reading") >= 1, "{report:?}");
        // The write timeout is a strong signal: the source is blocked and then refused.
        assert!(report.refused >= 1, "{report:?}");
        assert_eq!(report.canary_leaks, 0);
        b.stop().await;
        Ok(())
    }
}
