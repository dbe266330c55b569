//! Fleet scenarios (`servers` above 1): several in-process servers on one PostgreSQL
//! database, behind a TCP balancer, judged as one service (docs/FLEET.md).
//!
//! - **The database.** Each run gets a schema of its own in the database `--store-url`
//!   names (`rampart_scenario_<random>`, through the URL's `search_path`), dropped when the
//!   run ends, so runs never see each other's users, items or blocks.
//! - **The balancer.** One listener on 127.0.0.1 sends each new connection to the next
//!   server in turn, so every client, legit or attacker, moves between the servers as it
//!   reconnects. It connects to the server *from the client's own source address* (on
//!   loopback any 127.x address can be bound), as a transparent balancer or the PROXY
//!   protocol would: each server sees, limits and blocks the real source, not the balancer.
//! - **What is judged.** Everything a single-server run judges, over the fleet: the legit
//!   load goes through the balancer, every acknowledged item is read back through *each*
//!   server directly, the alive check asks each server, and
//!   `expect.fleet_block_spread_ms_max` bounds how long after the first server the last one
//!   refused each blocked attack source (the runner polls every server's guard every 100 ms,
//!   so a spread is measured to about 100 ms).
//!
//! A fleet run needs real sockets and a database: in a simulation (`--sim`), over TLS,
//! without `--store-url`, or in a build without the `postgres` feature the scenario is
//! skipped with the reason, not failed.

// Without the PostgreSQL store no fleet starts, and the balancer goes unused.
#![cfg_attr(not(feature = "postgres"), allow(dead_code))]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use super::metrics::round;
use super::runner::RunOptions;
use super::spec::Scenario;

/// Why `scenario` cannot run with `opts`, if it is a fleet scenario that cannot.
pub(super) fn skip_reason(scenario: &Scenario, opts: &RunOptions) -> Option<String> {
    if scenario.servers() <= 1 {
        return None;
    }
    let why = if !cfg!(feature = "postgres") {
        "this build has no PostgreSQL store (the `postgres` feature is off)"
    } else if opts.sim {
        "a fleet runs on real sockets and a real database, not in the simulation"
    } else if scenario.tls() {
        "a fleet scenario does not run over TLS yet"
    } else if opts.target.is_some() || opts.tcp_target.is_some() {
        "a fleet scenario runs its own in-process servers, not a --target"
    } else if opts.store_url.is_none() {
        "a fleet needs a PostgreSQL database: pass --store-url postgres://... \
         (or set RAMPART_STORE_URL)"
    } else {
        return None;
    };
    Some(format!("{why} (servers = {})", scenario.servers()))
}

/// A schema of its own for one run, in the database of `base`; dropped on drop.
#[cfg(feature = "postgres")]
pub(super) struct Schema {
    base: String,
    name: String,
    /// `base` with the schema as its `search_path`: the run's `store.url`.
    pub(super) url: String,
}

#[cfg(feature = "postgres")]
impl Schema {
    /// Creates it (a blocking call: run it off the runtime's workers).
    pub(super) fn create(base: &str) -> anyhow::Result<Schema> {
        let name = format!("rampart_scenario_{:016x}", rand::random::<u64>());
        let mut client = postgres::Client::connect(base, postgres::NoTls).map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the fleet's database {}: {e}",
                crate::store::postgres::redact_url(base)
            )
        })?;
        client.batch_execute(&format!("CREATE SCHEMA {name}"))?;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{name}");
        Ok(Schema {
            base: base.to_string(),
            name,
            url,
        })
    }
}

#[cfg(feature = "postgres")]
impl Drop for Schema {
    fn drop(&mut self) {
        // A thread of its own: the blocking client must not run on the runtime's workers.
        let (base, name) = (self.base.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&base, postgres::NoTls)?;
            c.batch_execute(&format!("DROP SCHEMA {name} CASCADE"))
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            tracing::warn!(
                schema = %self.name,
                "cannot drop a fleet run's schema; drop it by hand"
            );
        }
    }
}

/// The balancer in front of the fleet's servers.
pub(super) struct Balancer {
    addr: SocketAddr,
    stop: CancellationToken,
    /// Connections sent to each server, by server index.
    sent: Arc<Vec<AtomicU64>>,
    task: tokio::task::JoinHandle<()>,
}

/// How long the balancer waits after an accept error (out of descriptors, say) before it
/// accepts again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

impl Balancer {
    /// Listens on 127.0.0.1 and sends each new connection to the next of `servers`.
    pub(super) async fn start(servers: Vec<SocketAddr>) -> std::io::Result<Balancer> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let sent: Arc<Vec<AtomicU64>> =
            Arc::new(servers.iter().map(|_| AtomicU64::new(0)).collect());
        let next = AtomicUsize::new(0);
        let (s, counts) = (stop.clone(), Arc::clone(&sent));
        let task = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = s.cancelled() => return,
                    a = listener.accept() => a,
                };
                let (client, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!(error = %e, "balancer accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let i = next.fetch_add(1, Ordering::Relaxed) % servers.len();
                counts[i].fetch_add(1, Ordering::Relaxed);
                let (server, stop) = (servers[i], s.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = relay(client, peer.ip(), server) => {}
                    }
                });
            }
        });
        Ok(Balancer {
            addr,
            stop,
            sent,
            task,
        })
    }

    /// Where clients connect.
    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes every relayed connection, and returns the connections each
    /// server was sent.
    pub(super) async fn stop(self) -> Vec<u64> {
        self.stop.cancel();
        let _ = self.task.await;
        self.sent
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

/// Connects to `server` from `source` and copies both ways until both sides are done; a
/// connection the server refuses closes the client's.
async fn relay(mut client: TcpStream, source: IpAddr, server: SocketAddr) {
    let upstream = async {
        let socket = match source {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(source, 0))?;
        socket.connect(server).await
    };
    let mut upstream = match upstream.await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%source, %server, error = %e, "balancer cannot reach a server");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// What a fleet run measured, beyond a single server's metrics.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct FleetMetrics {
    /// Servers in the fleet.
    pub servers: u32,
    /// Connections the balancer sent to each server.
    pub connections: Vec<u64>,
    /// Blocks each server decided and shared with the others.
    pub blocks_shared: Vec<u64>,
    /// Other servers' blocks each server applied.
    pub blocks_applied: Vec<u64>,
    /// Attack sources some server blocked.
    pub sources_blocked: u64,
    /// Of those, the ones every server refused before the run ended.
    pub sources_blocked_everywhere: u64,
    /// Of the others, the ones first blocked too late in the run to be judged (within
    /// `fleet_block_spread_ms_max` of the last sample).
    pub sources_blocked_late: u64,
    /// Over the sources blocked everywhere: the longest time from the first server to the
    /// last one refusing a source, in milliseconds (to the 100 ms the guards are polled at).
    pub block_spread_ms_max: Option<f64>,
    /// The median of those spreads.
    pub block_spread_ms_p50: Option<f64>,
    /// Acknowledged items read back intact through each server.
    pub verified_per_server: Vec<u64>,
    /// Activity windows each server shared (`fleet_windows`).
    pub windows_shared: Vec<u64>,
    /// Activity windows each server dropped because its window queue was full.
    pub windows_dropped: Vec<u64>,
}

/// Sums up when each server first refused each attack source (`first[i]`: server `i`'s
/// map, in time since t0) into the spread metrics; `last_sample` is when the sampler
/// stopped, and `limit` the expectation (sources first blocked within it of the end are
/// counted late, not judged).
pub(super) fn spread(
    first: &[BTreeMap<IpAddr, Duration>],
    last_sample: Duration,
    limit: Option<Duration>,
) -> (u64, u64, u64, Option<f64>, Option<f64>) {
    let mut sources: BTreeMap<IpAddr, Vec<Duration>> = BTreeMap::new();
    for map in first {
        for (ip, t) in map {
            sources.entry(*ip).or_default().push(*t);
        }
    }
    let (mut everywhere, mut late) = (0u64, 0u64);
    let mut spreads: Vec<f64> = Vec::new();
    for times in sources.values() {
        let earliest = times.iter().min().copied().unwrap_or_default();
        if times.len() == first.len() {
            everywhere += 1;
            let latest = times.iter().max().copied().unwrap_or_default();
            spreads.push((latest - earliest).as_secs_f64() * 1000.0);
        } else if last_sample.saturating_sub(earliest) < limit.unwrap_or(Duration::ZERO) {
            late += 1;
        }
    }
    spreads.sort_by(f64::total_cmp);
    let max = spreads.last().map(|v| round(*v, 1));
    let p50 = spreads.get(spreads.len() / 2).map(|v| round(*v, 1));
    (sources.len() as u64, everywhere, late, max, p50)
}

/// The failures of a fleet run's own expectation.
pub(super) fn judge(m: &FleetMetrics, limit_ms: Option<f64>) -> Vec<String> {
    let Some(limit) = limit_ms else {
        return Vec::new();
    };
    let mut failures = Vec::new();
    let missing = m
        .sources_blocked
        .saturating_sub(m.sources_blocked_everywhere + m.sources_blocked_late);
    if missing > 0 {
        failures.push(format!(
            "fleet: {missing} of {} blocked attack sources were never refused by every server",
            m.sources_blocked
        ));
    }
    if let Some(spread) = m.block_spread_ms_max {
        if spread > limit {
            failures.push(format!(
                "fleet: a block reached the last server {spread} ms after the first (expected at most {limit} ms)"
            ));
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// The balancer sends connections to its servers in turn, from the client's own source
    /// address, and relays both ways.
    #[tokio::test]
    async fn the_balancer_keeps_the_source_and_takes_turns(
    ) -> Result<(), Box<dyn std::error::Error>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut servers = Vec::new();
        let mut addrs = Vec::new();
        for _ in 0..2 {
            let l = TcpListener::bind("127.0.0.1:0").await?;
            addrs.push(l.local_addr()?);
            servers.push(l);
        }
        let balancer = Balancer::start(addrs).await?;
        for (i, source) in ["127.0.0.77", "127.0.0.78", "127.0.0.79"]
            .iter()
            .enumerate()
        {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source.parse()?, 0))?;
            let mut client = socket.connect(balancer.addr()).await?;
            let (mut accepted, peer) = servers[i % 2].accept().await?;
            assert_eq!(peer.ip().to_string(), *source);
            client.write_all(b"ping").await?;
            let mut buf = [0u8; 4];
            accepted.read_exact(&mut buf).await?;
            assert_eq!(&buf, b"ping");
            accepted.write_all(b"pong").await?;
            client.read_exact(&mut buf).await?;
            assert_eq!(&buf, b"pong");
        }
        assert_eq!(balancer.stop().await, vec![2, 1]);
        Ok(())
    }

    #[test]
    fn the_spread_is_measured_over_sources_every_server_blocked() {
        let a: IpAddr = "127.0.1.1".parse().expect("an address");
        let b: IpAddr = "127.0.1.2".parse().expect("an address");
        let c: IpAddr = "127.0.1.3".parse().expect("an address");
        let first = vec![
            BTreeMap::from([(a, at(1000)), (b, at(2000)), (c, at(9900))]),
            BTreeMap::from([(a, at(1200)), (b, at(2100))]),
            BTreeMap::from([(a, at(1300)), (b, at(2050))]),
        ];
        // c was blocked 100 ms before the last sample: too late to judge.
        let (blocked, everywhere, late, max, p50) = spread(&first, at(10_000), Some(at(1000)));
        assert_eq!((blocked, everywhere, late), (3, 2, 1));
        assert_eq!(max, Some(300.0));
        assert_eq!(p50, Some(300.0));
        // Judged with no allowance for the end, c is a source that never got everywhere.
        let (blocked, everywhere, late, _, _) = spread(&first, at(10_000), None);
        let m = FleetMetrics {
            servers: 3,
            sources_blocked: blocked,
            sources_blocked_everywhere: everywhere,
            sources_blocked_late: late,
            block_spread_ms_max: max,
            ..FleetMetrics::default()
        };
        let failures = judge(&m, Some(250.0));
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(judge(&m, None).is_empty());
    }
}
