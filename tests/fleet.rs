//! Fleet mode end to end: three servers on one PostgreSQL database (`store.url`) share users,
//! items and the resume-ticket key, and a block one of them decides is enforced by all of
//! them; an operator's unblock lifts it everywhere, and the next offence escalates
//! fleet-wide.
//!
//! Needs a PostgreSQL server: set `RAMPART_TEST_POSTGRES` to a URL of a user that may create
//! schemas (`.ci/run` starts one). Without it the tests are skipped with a note.
#![cfg(feature = "postgres")]

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{add_users, drain, eventually, firewall_config, raw_connect, send_raw, TestResult};
use postgres::{Client, NoTls};
use rampart::config::Config;
use rampart::detect::Model;
use rampart::guard::SourceKey;
use rampart::protocol::{BlockedNotice, ErrorCode, Reply};
use rampart::server::{Server, ServerHandle};

const URL_VAR: &str = "RAMPART_TEST_POSTGRES";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// A schema of its own in the test database, dropped at the end.
struct Schema {
    base: String,
    name: String,
    url: String,
}

impl Schema {
    fn create() -> Result<Option<Schema>, Box<dyn std::error::Error + Send + Sync>> {
        let Ok(base) = std::env::var(URL_VAR) else {
            eprintln!("skipped: set {URL_VAR} to a PostgreSQL URL to run the fleet tests");
            return Ok(None);
        };
        let name = format!("rampart_fleet_{:016x}", rand::random::<u64>());
        Client::connect(&base, NoTls)?.batch_execute(&format!("CREATE SCHEMA {name}"))?;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{name}");
        Ok(Some(Schema { base, name, url }))
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        // A thread of its own: the blocking client cannot run on the test's runtime.
        let (base, name) = (self.base.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(mut c) = Client::connect(&base, NoTls) {
                let _ = c.batch_execute(&format!("DROP SCHEMA {name} CASCADE"));
            }
        })
        .join();
    }
}

struct Member {
    handle: ServerHandle,
    _dir: tempfile::TempDir,
}

/// Starts `n` servers on the schema's database, each with a data directory of its own; the
/// first adds the test users, whom every server then knows.
async fn fleet(config: &Config, n: usize) -> Vec<Member> {
    fleet_with_model(config, n, None).await
}

/// [`fleet`], each server's detector running `model`.
async fn fleet_with_model(config: &Config, n: usize, model: Option<Arc<Model>>) -> Vec<Member> {
    let mut members = Vec::new();
    for i in 0..n {
        let dir = tempfile::tempdir().expect("tempdir");
        // Opening migrates and reads the store: off the runtime's threads.
        let (c, path, m) = (config.clone(), dir.path().to_path_buf(), model.clone());
        let server = tokio::task::spawn_blocking(move || Server::open_with_model(c, &path, m))
            .await
            .expect("open task")
            .expect("server opens");
        if i == 0 {
            let store = server.store();
            let c = config.clone();
            tokio::task::spawn_blocking(move || add_users(&*store, &c))
                .await
                .expect("add users");
        }
        let handle = server
            .bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        members.push(Member { handle, _dir: dir });
    }
    members
}

/// Two broken headers from `attacker` to `member`: enough to be blocked (tests/firewall.rs).
async fn offend(member: &Member, attacker: IpAddr) {
    for _ in 0..2 {
        let mut s = raw_connect(member.handle.local_addr(), Some(attacker))
            .await
            .expect("connect");
        send_raw(&mut s, b"GET / HTTP/1.1\r\n\r\n").await;
        drain(&mut s, Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_on_one_server_is_enforced_by_all_and_lifted_by_all() -> TestResult {
    let Some(schema) = tokio::task::spawn_blocking(Schema::create).await?? else {
        return Ok(());
    };
    let mut config = firewall_config();
    config.store.url = Some(schema.url.clone());
    let members = fleet(&config, 3).await;
    let attacker = ip("127.0.6.1");

    offend(&members[0], attacker).await;
    assert!(members[0].handle.guard().is_blocked(attacker));
    let blocked_at = Instant::now();
    for (i, m) in members.iter().enumerate().skip(1) {
        assert!(
            eventually(Duration::from_secs(10), || m
                .handle
                .guard()
                .is_blocked(attacker))
            .await,
            "server {i} never enforced the block"
        );
    }
    // Measured, not asserted (shared machines are noisy); the design bound is one poll
    // (200 ms) and a round trip.
    eprintln!(
        "every server enforced the block {} ms after the first decided it",
        blocked_at.elapsed().as_millis()
    );

    // Refused at accept by a server that never saw the offence, which says why.
    let mut again = raw_connect(members[2].handle.local_addr(), Some(attacker)).await?;
    let seen = drain(&mut again, Duration::from_secs(2)).await;
    match seen.replies.as_slice() {
        [(0, Reply::Error { code, message })] => {
            assert_eq!(*code, ErrorCode::Blocked);
            let notice = BlockedNotice::parse(message).ok_or("a blocked notice")?;
            assert!(notice.reason.contains("fatal_frame"), "{message}");
            assert!(notice.reason.contains("another server"), "{message}");
        }
        other => panic!("expected one ERROR blocked, got {other:?}"),
    }

    // Users are shared: a message sent through one server is read through another, and the
    // honest neighbour of the attacker is served.
    let opts = rampart::client::ClientOptions {
        source: Some(ip("127.0.6.2")),
        request_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let login = |m: &Member, user: &'static str, pw: &'static str| {
        let addr = m.handle.local_addr().to_string();
        let opts = opts.clone();
        async move { rampart::client::Client::login(addr, user, pw.as_bytes(), opts).await }
    };
    let mut alice = login(&members[1], "alice", "alice-pw").await?;
    let sent = alice.send_message("bob", "across the fleet").await?;
    let mut bob = login(&members[2], "bob", "bob-pw").await?;
    let inbox = bob.inbox().await?;
    assert!(inbox.iter().any(|e| e.id == sent), "{inbox:?}");
    // A resume ticket one server issued is honoured by another: the fleet shares the key.
    let ticket = alice.request_ticket().await?;
    let mut again = rampart::client::Client::resume(
        members[0].handle.local_addr().to_string(),
        "alice",
        &ticket.ticket,
        opts.clone(),
    )
    .await?;
    again.ping().await?;

    // An operator's unblock reaches every server.
    let source = SourceKey::from_ip(attacker, config.ip.ipv6_prefix);
    let url = schema.url.clone();
    tokio::task::spawn_blocking(move || rampart::fleet::unblock(&url, source)).await??;
    for (i, m) in members.iter().enumerate() {
        assert!(
            eventually(Duration::from_secs(10), || !m
                .handle
                .guard()
                .is_blocked(attacker))
            .await,
            "server {i} kept the block"
        );
    }

    // The next offence, on another server, escalates: the first block counts there too.
    offend(&members[1], attacker).await;
    let decisions = members[1].handle.firewall().decisions();
    let last = decisions.last().ok_or("no decision on server 1")?;
    assert_eq!(
        last.duration_s,
        config.ip.block_secs * u64::from(config.firewall.escalation),
        "{decisions:?}"
    );
    for (i, m) in members.iter().enumerate() {
        assert!(
            eventually(Duration::from_secs(10), || m
                .handle
                .guard()
                .is_blocked(attacker))
            .await,
            "server {i} did not enforce the second block: {:#?}",
            m.handle.firewall().decisions()
        );
    }
    for m in members {
        m.handle.shutdown().await;
    }
    Ok(())
}

/// Evidence is fleet-wide: one broken header on each of two servers (half the threshold
/// each) blocks the source, which neither server alone would; and a failed login that the
/// same source follows with the right password is taken back on every server, so an honest
/// typo leaves no score anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_sum_every_servers_evidence_and_forgiveness_reaches_all() -> TestResult {
    let Some(schema) = tokio::task::spawn_blocking(Schema::create).await?? else {
        return Ok(());
    };
    let mut config = firewall_config();
    config.store.url = Some(schema.url.clone());
    let members = fleet(&config, 3).await;

    let spread = ip("127.0.6.11");
    for m in &members[..2] {
        let mut s = raw_connect(m.handle.local_addr(), Some(spread)).await?;
        send_raw(&mut s, b"GET / HTTP/1.1\r\n\r\n").await;
        drain(&mut s, Duration::from_secs(2)).await;
        // Let the first server's evidence reach the second before the second offence.
        assert!(
            eventually(Duration::from_secs(10), || members[2]
                .handle
                .firewall()
                .score(spread)
                > 0.0)
            .await,
            "the evidence never reached server 2"
        );
    }
    for (i, m) in members.iter().enumerate() {
        assert!(
            eventually(Duration::from_secs(10), || m
                .handle
                .guard()
                .is_blocked(spread))
            .await,
            "server {i} never blocked a source whose evidence was spread over two servers"
        );
    }
    let decided: Vec<_> = members
        .iter()
        .flat_map(|m| m.handle.firewall().decisions())
        .filter(|d| d.trigger.is_some())
        .collect();
    assert!(
        decided
            .iter()
            .any(|d| d.reason.contains("evidence other servers")),
        "{decided:#?}"
    );

    // An honest typo: a wrong password, then the right one, from one source.
    let typist = ip("127.0.6.12");
    let opts = rampart::client::ClientOptions {
        source: Some(typist),
        request_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let addr = members[0].handle.local_addr().to_string();
    let wrong = rampart::client::Client::login(addr.clone(), "alice", b"typo", opts.clone()).await;
    assert!(wrong.is_err(), "a wrong password was accepted");
    assert!(
        eventually(Duration::from_secs(10), || members[1]
            .handle
            .firewall()
            .score(typist)
            > 0.0)
        .await,
        "the failed login's evidence never reached server 1"
    );
    let mut alice = rampart::client::Client::login(addr, "alice", b"alice-pw", opts).await?;
    alice.ping().await?;
    for (i, m) in members.iter().enumerate() {
        assert!(
            eventually(Duration::from_secs(10), || m
                .handle
                .firewall()
                .score(typist)
                < 1.0)
            .await,
            "server {i} kept the forgiven typo's score: {}",
            m.handle.firewall().score(typist)
        );
    }
    for m in members {
        m.handle.shutdown().await;
    }
    Ok(())
}

/// Each server's detector ships the windows it closes to the fleet's database, and
/// `rampart activity export --store-url` writes them as one CSV: a user who logs in on two
/// servers has a row from each, with the login in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_servers_windows_reach_the_fleet_export() -> TestResult {
    let Some(schema) = tokio::task::spawn_blocking(Schema::create).await?? else {
        return Ok(());
    };
    let mut config = firewall_config();
    config.store.url = Some(schema.url.clone());
    let model = Arc::new(rampart::detect::default_model()?);
    let members = fleet_with_model(&config, 2, Some(model)).await;
    let user = ip("127.0.6.21");
    let opts = rampart::client::ClientOptions {
        source: Some(user),
        request_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    for m in &members {
        let addr = m.handle.local_addr().to_string();
        let mut alice =
            rampart::client::Client::login(addr, "alice", b"alice-pw", opts.clone()).await?;
        alice.ping().await?;
    }
    // A window is written once it closed (its end, the detector's lag) and a poll came.
    for (i, m) in members.iter().enumerate() {
        assert!(
            eventually(Duration::from_secs(15), || m
                .handle
                .server()
                .fleet()
                .is_some_and(|f| f.windows_shared > 0))
            .await,
            "server {i} shared no window: {:?}",
            m.handle.server().fleet()
        );
    }
    // A window is shipped once it closed, and the user's connect, login and ping on one
    // server can span two windows (a second boundary between them, or a login answered
    // late by a busy verifier): one shipped window does not mean the login's was. Export
    // until both logins are in, or the deadline passes.
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("fleet.csv");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let (export, rows, logins) = loop {
        let (url, path) = (schema.url.clone(), out.clone());
        let export = tokio::task::spawn_blocking(move || {
            rampart::fleet::export_windows(&url, &path, Duration::from_secs(1))
        })
        .await??;
        let mut csv = csv::Reader::from_path(&out)?;
        let header = csv.headers()?.clone();
        let col = |name: &str| header.iter().position(|h| h == name).expect(name);
        let (source, auth_ok, label) = (col("source"), col("auth_ok"), col("label"));
        let mut logins = 0.0;
        let mut rows = 0;
        for record in csv.records() {
            let record = record?;
            if &record[source] == "127.0.6.21" {
                rows += 1;
                logins += record[auth_ok].parse::<f64>()?;
                assert_eq!(&record[label], "benign");
            }
        }
        if logins >= 2.0 || std::time::Instant::now() >= deadline {
            break (export, rows, logins);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(export.servers, 2, "{export:?}");
    assert_eq!((export.other_window, export.other_schema), (0, 0));
    assert!(
        rows >= 2,
        "{rows} rows for the user, one per server at least"
    );
    assert_eq!(logins, 2.0, "one login through each server");
    assert_eq!(export.summary.rows, export.summary.events);
    for m in members {
        m.handle.shutdown().await;
    }
    Ok(())
}
