//! The connection-level kinds against a generic target: conn-churn, conn-exhaust and probe.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::super::net::abort;
use super::super::probe::{http_get, tls_client_hello, SSH_BANNER};
use super::super::run::{bump, run_slots, Counts, Env};
use super::{open, run_drained, Wire};

/// A probe waits this long for the server to answer and close.
const PROBE_ANSWER_WAIT: Duration = Duration::from_secs(1);

pub(super) async fn churn(env: Arc<Env>, wire: Arc<Wire>, per_source_rate: f64) {
    // The whole attack's rate, shared by the slots.
    let total_rate = per_source_rate * env.sources.len().max(1) as f64;
    let every = Duration::from_secs_f64(env.slots.max(1) as f64 / total_rate);
    let (partial, _) = wire.partial(1_000_000);
    let partial = Arc::new(partial);
    let turn = Arc::new(AtomicUsize::new(0));
    run_slots(&env, move |env, slot| {
        let (partial, turn) = (Arc::clone(&partial), Arc::clone(&turn));
        async move {
            let mut rng = env.rng(slot as u64);
            let mut next = Instant::now();
            while env.live() {
                if !env.sleep_until(next).await {
                    break;
                }
                // A slot that fell behind does not make up for it in a burst.
                let now = Instant::now();
                next = next.max(now.checked_sub(every).unwrap_or(now)) + every;
                let Some((mut stream, _)) = open(&env, &mut rng).await else {
                    continue;
                };
                let label = match turn.fetch_add(1, Ordering::Relaxed) % 3 {
                    0 => {
                        abort(stream);
                        "churn: reset at once"
                    }
                    1 => {
                        let _ = stream.shutdown().await;
                        "churn: closed with no bytes"
                    }
                    _ => {
                        if stream.write_all(&partial).await.is_ok() {
                            env.sent(0, partial.len());
                        }
                        let _ = stream.shutdown().await;
                        "churn: partial request then close"
                    }
                };
                env.merge(&Counts::from([(label, 1)]));
            }
        }
    })
    .await;
}

pub(super) async fn exhaust(env: Arc<Env>) {
    let held = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (h, p) = (Arc::clone(&held), Arc::clone(&peak));
    run_drained(&env, move |env, mut slot| {
        let (held, peak) = (Arc::clone(&h), Arc::clone(&p));
        async move {
            while env.live() {
                let Some(conn) = slot.open().await else {
                    break;
                };
                let now = held.fetch_add(1, Ordering::Relaxed) + 1;
                peak.fetch_max(now, Ordering::Relaxed);
                // Send nothing; hold until the server gives up on us.
                conn.wait(&env, None).await;
                held.fetch_sub(1, Ordering::Relaxed);
                slot.close(conn, Duration::from_millis(50)).await;
            }
        }
    })
    .await;
    env.note(format!(
        "held at most {} connections at once",
        peak.load(Ordering::Relaxed)
    ));
}

pub(super) async fn probe(env: Arc<Env>, interval: Duration) {
    let host = env.target.ip().to_string();
    run_drained(&env, move |env, mut slot| {
        let host = host.clone();
        async move {
            let mut n = 0usize;
            while env.live() {
                let Some(mut conn) = slot.open().await else {
                    break;
                };
                let (bytes, label) = match n % 3 {
                    0 => (http_get(&host), "probe: http"),
                    1 => (tls_client_hello(&host, &mut slot.rng), "probe: tls"),
                    _ => (SSH_BANNER.to_vec(), "probe: ssh"),
                };
                n = n.wrapping_add(1);
                let mut counts = Counts::new();
                bump(&mut counts, label);
                if conn.write(&env, &bytes, 1).await {
                    conn.wait(&env, Some(PROBE_ANSWER_WAIT)).await;
                }
                if conn.received() > 0 {
                    bump(&mut counts, "probe answered");
                }
                env.merge(&counts);
                slot.close(conn, Duration::from_millis(50)).await;
                if !env.sleep(interval).await {
                    break;
                }
            }
        }
    })
    .await;
}
