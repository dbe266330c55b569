//! The connection-level attacks.
//!
//! - conn-churn: a connect/disconnect storm. Slots take sources round-robin, each source at
//!   most `per_source_rate` times a second, and cycle through three ways of leaving: a reset
//!   right after connecting, a FIN with no bytes, and a partial header ("RM\x01") then FIN.
//! - conn-exhaust: holds as many connections as it is allowed. Every slot opens a connection
//!   and keeps it, sending nothing, until the server cuts it (the authentication timeout, a
//!   block); a refused slot retries after 200 to 500 ms, so the attack sits at the server's
//!   caps and notices when it is blocked.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::canary::{Got, Inbox};
use super::run::{bump, run_slots, Counts, Env};
use crate::protocol::{raw_header, VERSION};

/// Bytes of the partial header a churned connection may send before leaving: the magic and
/// version that open every header.
const PARTIAL_HEADER: [u8; 3] = {
    let [m0, m1, version, ..] = raw_header(VERSION, 0, 0, 0, 0);
    [m0, m1, version]
};

pub(crate) async fn churn(env: Arc<Env>, per_source_rate: f64) {
    let interval = Duration::from_secs_f64(1.0 / per_source_rate);
    let schedule = Arc::new(Schedule {
        next: Mutex::new(vec![Instant::now(); env.sources.len().max(1)]),
        turn: AtomicUsize::new(0),
        interval,
    });
    run_slots(&env, move |env, slot| {
        let schedule = Arc::clone(&schedule);
        churn_slot(env, slot, schedule)
    })
    .await;
}

/// When each source may connect next.
struct Schedule {
    next: Mutex<Vec<Instant>>,
    turn: AtomicUsize,
    interval: Duration,
}

impl Schedule {
    /// Claims the next source in turn and the instant it may connect.
    fn claim(&self) -> (usize, Instant) {
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        let len = next.len().max(1);
        let i = self.turn.fetch_add(1, Ordering::Relaxed) % len;
        let now = Instant::now();
        let at = next.get(i).copied().unwrap_or(now).max(now);
        if let Some(slot) = next.get_mut(i) {
            *slot = at + self.interval;
        }
        (i, at)
    }
}

async fn churn_slot(env: Arc<Env>, slot: usize, schedule: Arc<Schedule>) {
    let mut rng = env.rng(slot as u64);
    let mut n = slot;
    while env.live() {
        let (i, at) = schedule.claim();
        if !env.sleep_until(at).await {
            break;
        }
        let source = env.source(i);
        let Some(mut stream) = env.open_from(source, &mut rng).await else {
            continue;
        };
        let mut counts = Counts::new();
        match n % 3 {
            0 => {
                bump(&mut counts, "churn: reset at once");
                stream.abort();
            }
            1 => {
                bump(&mut counts, "churn: closed with no bytes");
                let _ = stream.shutdown().await;
                drop(stream);
            }
            _ => {
                bump(&mut counts, "churn: partial header then close");
                if stream.write_all(&PARTIAL_HEADER).await.is_ok() {
                    env.sent(0, PARTIAL_HEADER.len());
                }
                let _ = stream.shutdown().await;
                drop(stream);
            }
        }
        n = n.wrapping_add(1);
        env.merge(&counts);
    }
}

pub(crate) async fn exhaust(env: Arc<Env>) {
    let held = Arc::new(Held::default());
    let h = Arc::clone(&held);
    run_slots(&env, move |env, slot| {
        exhaust_slot(env, slot, Arc::clone(&h))
    })
    .await;
    env.note(format!(
        "held at most {} connections at once",
        held.peak.load(Ordering::Relaxed)
    ));
}

/// Connections held now, and the most at once.
#[derive(Default)]
struct Held {
    now: AtomicUsize,
    peak: AtomicUsize,
}

async fn exhaust_slot(env: Arc<Env>, slot: usize, held: Arc<Held>) {
    let mut rng = env.rng(slot as u64);
    while env.live() {
        let Some((stream, source)) = env.open_next(&mut rng).await else {
            break;
        };
        let opened = Instant::now();
        let now = held.now.fetch_add(1, Ordering::Relaxed) + 1;
        held.peak.fetch_max(now, Ordering::Relaxed);
        let (mut rd, wr) = stream.into_split();
        let mut inbox = Inbox::new(source);
        // Send nothing; wait for the server to give up on us.
        let end = loop {
            match inbox.next(&mut rd, &env, Duration::from_secs(3600)).await {
                Got::Frame(_) | Got::Timeout => continue,
                end => break end,
            }
        };
        held.now.fetch_sub(1, Ordering::Relaxed);
        let mut counts = Counts::new();
        bump(&mut counts, "exhaust: connections held");
        env.merge(&counts);
        inbox.finish(&env, &end);
        drop(wr);
        env.pace(opened, &mut rng).await;
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use crate::attack::testing::{bench, config, TestResult};

    #[tokio::test]
    async fn exhaust_sits_at_the_per_ip_cap_and_sees_refusals() -> TestResult {
        let mut cfg = config();
        cfg.limits.max_connections_per_ip = 4;
        cfg.firewall.enabled = false;
        let b = bench(cfg).await?;
        let attack = "kind = \"conn-exhaust\"\nconnections = 8\nsources = \"127.0.8.1/32\"\n";
        let (report, env) = b.run_env(attack, 1.0).await?;
        assert!(report.refused >= 4, "{report:?}");
        assert!(env.count("refused busy") >= 4, "{report:?}");
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.contains("held at most 4 connections")),
            "{report:?}"
        );
        let first = env
            .obs
            .first_refused
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        assert!(
            first.contains_key(&IpAddr::V4(Ipv4Addr::new(127, 0, 8, 1))),
            "{first:?}"
        );
        assert_eq!(
            report.sources_used,
            vec![IpAddr::V4(Ipv4Addr::new(127, 0, 8, 1))]
        );
        b.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn churn_storms_from_many_sources() -> TestResult {
        let b = bench(config()).await?;
        let attack =
            "kind = \"conn-churn\"\nconnections = 8\nsources = \"127.0.9.0/28\"\nper_source_rate = 10\n";
        let (report, env) = b.run_env(attack, 1.0).await?;
        assert!(report.connects >= 30, "{report:?}");
        assert_eq!(report.sources_used.len(), 14, "{report:?}");
        assert!(env.count("churn: reset at once") >= 5, "{report:?}");
        assert!(
            env.count("churn: partial header then close") >= 5,
            "{report:?}"
        );
        // 14 sources at 10/s each for a second: the per-source rate bounds the storm.
        assert!(report.connects <= 14 * 11 + 8, "{report:?}");
        b.stop().await;
        Ok(())
    }
}
