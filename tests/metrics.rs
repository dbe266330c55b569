//! The Prometheus endpoint of `[metrics] listen`: it serves the text exposition on its own
//! loopback port, its counters move with real traffic and say what the server's own
//! `MetricsSnapshot` says, and its HTTP side is as bounded as the protocol port.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{
    drain, eventually, firewall_config, raw_connect, send_raw, start_server_with, test_config,
    within, TestResult,
};
use rampart::client::{Client, ClientOptions};
use rampart::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A scraper's request.
const GET_METRICS: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

/// Sends `request` to the endpoint and returns the status line and body.
async fn http(addr: SocketAddr, request: &[u8]) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await??;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    Ok((status, body.to_owned()))
}

/// A scrape, parsed: every sample by its name and labels as written (`name{a="b"}`).
/// Fails on any line that is neither a `# HELP`/`# TYPE` comment nor `series value`, on a
/// value that is not a number, and on a sample whose family has no `# TYPE`.
async fn scrape(addr: SocketAddr) -> Result<BTreeMap<String, f64>, String> {
    let (status, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    if status != "HTTP/1.1 200 OK" {
        return Err(format!("status {status:?}"));
    }
    let mut typed: Vec<String> = Vec::new();
    let mut samples = BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or(format!("bad TYPE {line:?}"))?;
            if !["counter", "gauge", "histogram"].contains(&kind) {
                return Err(format!("unexpected type in {line:?}"));
            }
            typed.push(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or(format!("not a sample: {line:?}"))?;
        let value: f64 = value
            .parse()
            .map_err(|_| format!("bad value in {line:?}"))?;
        let name = series.split('{').next().unwrap_or_default();
        let family_typed = typed.iter().any(|t| {
            name == t
                || name
                    .strip_prefix(t.as_str())
                    .is_some_and(|suffix| ["_total", "_bucket", "_sum", "_count"].contains(&suffix))
        });
        if !name.starts_with("rampart_") || !family_typed {
            return Err(format!("sample without its family's TYPE: {line:?}"));
        }
        if samples.insert(series.to_owned(), value).is_some() {
            return Err(format!("series twice: {series}"));
        }
    }
    Ok(samples)
}

fn metrics_on(mut config: Config) -> Config {
    config.metrics.listen = Some("127.0.0.1:0".parse().expect("an address"));
    config
}

fn get(samples: &BTreeMap<String, f64>, series: &str) -> Result<u64, String> {
    samples
        .get(series)
        .map(|v| *v as u64)
        .ok_or_else(|| format!("no series {series}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_with_traffic_and_match_the_snapshot() -> TestResult {
    within(async {
        let server = start_server_with(metrics_on(firewall_config())).await;
        let addr = server.handle.metrics_addr().ok_or("no metrics address")?;
        assert_ne!(addr.port(), server.addr.port());
        let before = scrape(addr).await?;
        assert_eq!(get(&before, "rampart_auth_ok_total")?, 0);

        // A typo, then the right password, some frames, and a polite goodbye.
        let opts = ClientOptions::default();
        let wrong = Client::login(&server.target(), "alice", b"nope", opts.clone()).await;
        assert!(wrong.is_err(), "a wrong password logged in");
        let mut alice = server.login("alice").await;
        alice.ping().await?;
        alice.send_message("bob", "hello").await?;
        alice.bye().await?;

        // A source that sends broken headers twice is blocked, then refused at accept.
        let attacker: IpAddr = "127.0.7.1".parse()?;
        for _ in 0..2 {
            let mut s = raw_connect(server.addr, Some(attacker)).await?;
            send_raw(&mut s, b"GET / HTTP/1.1\r\n\r\n").await;
            drain(&mut s, Duration::from_secs(2)).await;
        }
        assert!(server.handle.guard().is_blocked(attacker));
        let mut refused = raw_connect(server.addr, Some(attacker)).await?;
        drain(&mut refused, Duration::from_secs(2)).await;

        let metrics = server.handle.metrics();
        assert!(
            eventually(Duration::from_secs(5), || {
                let m = metrics.snapshot();
                m.connections_closed == m.connections_accepted && m.connections_refused >= 1
            })
            .await,
            "connections did not all close"
        );
        let m = metrics.snapshot();
        let s = scrape(addr).await?;

        for (series, want) in [
            ("rampart_connections_accepted_total", m.connections_accepted),
            ("rampart_connections_refused_total", m.connections_refused),
            ("rampart_connections_closed_total", m.connections_closed),
            ("rampart_auth_ok_total", m.auth_ok),
            ("rampart_auth_failed_total", m.auth_failed),
            ("rampart_frames_in_total", m.frames_in),
            ("rampart_frames_out_total", m.frames_out),
            ("rampart_items_delivered_total", m.items_delivered),
            ("rampart_open_uploads", m.open_uploads),
        ] {
            assert_eq!(get(&s, series)?, want, "{series}");
        }
        assert_eq!(m.auth_ok, 1);
        assert_eq!(m.auth_failed, 1);
        for (kind, n) in &m.frames_in_by {
            let series = format!("rampart_frames_in_by_kind_total{{kind=\"{kind}\"}}");
            assert_eq!(get(&s, &series)?, *n, "{series}");
        }
        for kind in ["AUTH", "PING", "SEND_MESSAGE", "BYE"] {
            let series = format!("rampart_frames_in_by_kind_total{{kind=\"{kind}\"}}");
            assert!(get(&s, &series)? >= 1, "{series}");
        }
        let frames_out: u64 = m.frames_out_by.values().sum();
        assert_eq!(frames_out, m.frames_out, "every reply counted by its kind");
        for (reason, n) in &m.decode_errors {
            let series = format!("rampart_decode_errors_total{{reason=\"{reason}\"}}");
            assert_eq!(get(&s, &series)?, *n, "{series}");
        }
        assert_eq!(
            get(&s, "rampart_decode_errors_total{reason=\"bad_magic\"}")?,
            2
        );
        assert_eq!(
            get(
                &s,
                "rampart_connections_refused_by_reason_total{reason=\"blocked\"}"
            )?,
            m.refused_by.get("blocked").copied().unwrap_or(0)
        );
        assert!(m.refused_by.get("blocked").copied().unwrap_or(0) >= 1);
        let closed_by: u64 = m.closed_by.values().sum();
        assert_eq!(closed_by, m.connections_closed);
        assert_eq!(
            get(
                &s,
                "rampart_connections_closed_by_reason_total{reason=\"bye\"}"
            )?,
            1
        );
        assert_eq!(
            get(
                &s,
                "rampart_firewall_decisions_total{action=\"block\",trigger=\"fatal_frame\"}"
            )?,
            1
        );
        let decisions = server.handle.firewall().decisions();
        let blocks = s
            .iter()
            .filter(|(k, _)| k.starts_with("rampart_firewall_decisions_total{action=\"block\""))
            .map(|(_, v)| *v as usize)
            .sum::<usize>();
        assert_eq!(blocks, decisions.len());
        assert!(get(&s, "rampart_store_commit_seconds_count")? >= 1);
        assert_eq!(
            get(&s, "rampart_store_commit_seconds_bucket{le=\"+Inf\"}")?,
            get(&s, "rampart_store_commit_seconds_count")?
        );
        assert!(get(&s, "rampart_event_loop_lag_seconds_count")? >= 1);
        if cfg!(target_os = "linux") {
            assert!(get(&s, "rampart_resident_memory_bytes")? > 1 << 20);
        }
        server.handle.shutdown().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_answers_only_get_metrics_and_is_bounded() -> TestResult {
    within(async {
        let server = start_server_with(metrics_on(test_config())).await;
        let addr = server.handle.metrics_addr().ok_or("no metrics address")?;
        let (status, _) = http(addr, b"GET / HTTP/1.1\r\n\r\n").await?;
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        let (status, _) = http(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await?;
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        // A query string selects nothing, and bare LF line endings are a request too.
        let (status, body) = http(addr, b"GET /metrics?name[]=x HTTP/1.1\r\n\r\n").await?;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.contains("rampart_"), "{body}");
        let (status, _) = http(addr, b"GET /metrics HTTP/1.0\nHost: x\n\n").await?;
        assert_eq!(status, "HTTP/1.1 200 OK");
        // What is not an HTTP request line is a bad request.
        let (status, _) = http(addr, b"\x16\x03\x01 garbage\r\n\r\n").await?;
        assert_eq!(status, "HTTP/1.1 400 Bad Request");
        // A head that never ends is cut at the size bound, not buffered.
        let huge = vec![b'a'; 64 * 1024];
        let mut s = TcpStream::connect(addr).await?;
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nX: ").await;
        let _ = s.write_all(&huge).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await?;
        assert!(
            out.is_empty() || out.starts_with(b"HTTP/1.1 431"),
            "{}",
            String::from_utf8_lossy(&out)
        );

        // Idle connections fill the cap. They cannot hold scrapes off: each new connection
        // takes the slot of the oldest one still waiting for its head, which is closed at
        // once, long before the read timeout.
        let mut idle = Vec::new();
        for _ in 0..rampart::server::prom::MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await?);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let prompt = Duration::from_secs(2);
        assert!(prompt < rampart::server::prom::READ_TIMEOUT);
        let mut buf = [0u8; 16];
        let (status, body) = tokio::time::timeout(prompt, http(addr, GET_METRICS)).await??;
        assert_eq!(status, "HTTP/1.1 200 OK", "a scrape with every slot taken");
        assert!(body.contains("rampart_"), "{body}");
        let n = tokio::time::timeout(prompt, idle[0].read(&mut buf)).await??;
        assert_eq!(n, 0, "the oldest idle connection is evicted");
        // Oldest first, and a half-sent head is still waiting: with the slots full again
        // (a slow sender in the freed one), the next scrape evicts idle connection 1.
        let mut slow = TcpStream::connect(addr).await?;
        slow.write_all(b"GET /metrics HTTP/1.1\r\n").await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, _) = tokio::time::timeout(prompt, http(addr, GET_METRICS)).await??;
        assert_eq!(status, "HTTP/1.1 200 OK");
        let n = tokio::time::timeout(prompt, idle[1].read(&mut buf)).await??;
        assert_eq!(n, 0, "the next oldest is evicted");
        let mut idle = idle.split_off(2);
        idle.push(slow);
        // The rest still time out on their own.
        for s in &mut idle {
            let n = tokio::time::timeout(
                rampart::server::prom::READ_TIMEOUT + Duration::from_secs(3),
                s.read(&mut buf),
            )
            .await??;
            assert_eq!(n, 0, "an idle connection is closed at the read timeout");
        }
        scrape(addr).await?;
        server.handle.shutdown().await;
        Ok(())
    })
    .await
}

#[test]
fn a_non_loopback_listen_needs_allow_remote() {
    let err = Config::from_toml_str("[metrics]\nlisten = \"0.0.0.0:9100\"\n")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("metrics.listen"), "{err}");
    assert!(err.contains("allow_remote"), "{err}");
    let ok = Config::from_toml_str("[metrics]\nlisten = \"0.0.0.0:9100\"\nallow_remote = true\n");
    assert!(ok.is_ok(), "{ok:?}");
    let off = Config::from_toml_str("").map(|c| c.metrics.listen);
    assert_eq!(off.ok(), Some(None), "metrics are off by default");
}

/// A loopback port free a moment ago: the scenario runner starts its own server, so the test
/// must name the metrics port in the scenario before the server exists.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_during_a_scenario_agrees_with_its_report() -> TestResult {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let text = format!(
        "name = \"metrics-probe\"\nduration_s = 3\nseed = 5\n\
         [server.auth]\nargon2_memory_kib = 64\nargon2_iterations = 1\n\
         [server.metrics]\nlisten = \"{addr}\"\n\
         [[legit]]\nclients = 3\nrate_per_s = 5\n\
         [[attack]]\nkind = \"probe\"\nconnections = 2\nsources = \"127.0.43.0/30\"\nstart_s = 1\n\
         [expect]\nlegit_goodput_min = 0.9\nlatency_slo_ms = 1000\nblocked_within_s = 2\n"
    );
    let path = dir.path().join("probe.toml");
    std::fs::write(&path, text)?;

    // Scrape every 100 ms for as long as the scenario runs; keep the last good scrape.
    let done = tokio_util::sync::CancellationToken::new();
    let scraper = tokio::spawn({
        let done = done.clone();
        async move {
            let mut last = None;
            let mut good = 0u32;
            while !done.is_cancelled() {
                if let Ok(s) = scrape(addr).await {
                    last = Some(s);
                    good += 1;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (last, good)
        }
    });
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        rampart::scenario::run_files(
            &[path],
            &rampart::scenario::RunOptions::default(),
            &rampart::scenario::Silent,
        ),
    )
    .await??;
    done.cancel();
    let (last, good) = scraper.await?;
    let s = last.ok_or("the endpoint was never scraped during the scenario")?;
    assert!(good >= 5, "only {good} scrapes succeeded");
    let r = report.scenarios.first().ok_or("no scenario ran")?;
    assert!(r.passed, "{}", report.summary_table());
    let m = &r.metrics;
    assert_eq!(m.blocked_sources, 2);

    // Both probe sources were blocked for their broken frames and refused unread after, so
    // the last scrape, taken well after the blocks, counts what the report counts.
    let blocks: u64 = s
        .iter()
        .filter(|(k, _)| k.starts_with("rampart_firewall_decisions_total{action=\"block\""))
        .map(|(_, v)| *v as u64)
        .sum();
    assert_eq!(blocks, m.blocked_sources, "{s:?}");
    let rejected = m.frames_rejected.clone().unwrap_or_default();
    assert!(!rejected.is_empty(), "the probe sent no broken frame");
    for (reason, n) in rejected {
        let series = format!("rampart_decode_errors_total{{reason=\"{reason}\"}}");
        assert_eq!(get(&s, &series)?, n, "{series}");
    }
    assert_eq!(
        get(&s, "rampart_panics_total")?,
        m.panics_contained.unwrap_or(0)
    );
    assert!(
        get(&s, "rampart_auth_ok_total")? >= 3,
        "the legit clients log in"
    );
    Ok(())
}
