//! The scenario runner end to end: scenario files rejected with the file and key named, a
//! short in-process run whose JSON report carries every contract key, an attack that gets
//! blocked, and the same runner against an external `rampart serve` process.
//!
//! Scenarios here use cheap argon2 parameters through `[server.auth]` (the runner hashes the
//! accounts with the scenario's parameters) and last two to three seconds.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rampart::scenario::{run_files, RunError, RunOptions, Scenario, ScenarioError, Silent};

type TestResult = Result<(), Box<dyn std::error::Error>>;

mod scenario_util;
use scenario_util::{write, CHEAP_AUTH};

/// Expects `text` to be rejected with a message that names the file and `key`.
fn check_rejected(text: &str, key: &str) -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = write(dir.path(), "bad.toml", text)?;
    let err = Scenario::load(&path).err().ok_or("accepted")?;
    let msg = err.to_string();
    assert!(msg.contains("bad.toml"), "file not named: {msg}");
    assert!(msg.contains(key), "{key} not named: {msg}");
    Ok(())
}

#[test]
fn typo_in_a_key_names_file_and_key() -> TestResult {
    let base = "name = \"t\"\nduration_s = 3\n";
    check_rejected("name = \"t\"\nduraton_s = 3\n", "unknown field `duraton_s`")?;
    check_rejected(
        // (`client` is a key of its own, the client implementation.)
        &format!("{base}[[legit]]\nclents = 2\n"),
        "unknown field `clents`",
    )?;
    check_rejected(
        &format!("{base}[expect]\nlegit_goodput = 0.9\n"),
        "legit_goodput",
    )?;
    check_rejected(
        &format!("{base}[[attack]]\nkind = \"flood\"\npipelin = 4\n"),
        "pipelin",
    )?;
    check_rejected(
        &format!("{base}[server.limits]\nmax_conections = 5\n"),
        "server.limits.max_conections",
    )?;
    Ok(())
}

#[test]
fn bad_value_names_file_and_key() -> TestResult {
    let base = "name = \"t\"\nduration_s = 3\n";
    check_rejected(
        &format!("{base}[[legit]]\nrate_per_s = 0\n"),
        "legit[0].rate_per_s",
    )?;
    check_rejected(
        "name = \"t\"\nduration_s = \"ten\"\n",
        "duration_s = \"ten\"",
    )?;
    check_rejected(
        &format!("{base}[expect]\nlegit_goodput_min = 2\n"),
        "expect.legit_goodput_min",
    )?;
    check_rejected(
        &format!("{base}[server.limits]\nmax_chunk_bytes = 0\n"),
        "server.limits.max_chunk_bytes",
    )?;
    check_rejected(
        &format!("{base}[[attack]]\nkind = \"flood\"\nconnections = 0\n"),
        "attack[0].connections",
    )?;
    check_rejected(
        &format!("{base}[[attack]]\nkind = \"probe\"\nsources = \"10.1.0.0/24\"\n"),
        "attack[0].sources",
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_stops_the_suite_before_anything_runs() -> TestResult {
    let dir = tempfile::tempdir()?;
    write(
        dir.path(),
        "a.toml",
        "name = \"a\"\nduration_s = 60\n[[legit]]\n",
    )?;
    write(dir.path(), "b.toml", "name = \"b\"\nduration_s = -1\n")?;
    let started = std::time::Instant::now();
    let err = run_files(&[dir.path().to_path_buf()], &RunOptions::default(), &Silent)
        .await
        .err()
        .ok_or("ran")?;
    assert!(
        matches!(err, RunError::Scenario(ScenarioError::Invalid { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("b.toml: key duration_s"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "scenario a ran first"
    );
    Ok(())
}

#[test]
fn the_shipped_scenarios_parse_and_cover_every_kind() -> TestResult {
    // The suite, the detection scenarios beside it (evasion has no expectation to meet, so
    // it is not in the suite), and the simulation-only ones.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let files = rampart::scenario::collect_files(&[
        root.clone(),
        root.join("detection"),
        root.join("sim"),
    ])?;
    let scenarios = rampart::scenario::load_all(&files)?;
    assert!(scenarios.len() >= 14, "only {} scenarios", scenarios.len());
    for kind in rampart::attack::AttackKind::ALL {
        assert!(
            scenarios.iter().any(|s| s.attack_kinds().contains(&kind)),
            "no scenario runs {}",
            kind.as_str()
        );
    }
    assert!(
        scenarios.iter().any(|s| s.attacks().is_empty()),
        "no baseline"
    );
    Ok(())
}

/// Every key the issue promises in the JSON report.
const CONTRACT_METRICS: [&str; 14] = [
    "legit_attempted",
    "legit_delivered",
    "legit_goodput",
    "legit_lost",
    "latency_p50_ms",
    "latency_p99_ms",
    "attack_sources",
    "blocked_sources",
    "time_to_block_s",
    "false_blocks",
    "server_alive",
    "peak_rss_mb",
    "panics_contained",
    "canary_leaks",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_run_reports_every_contract_key() -> TestResult {
    let dir = tempfile::tempdir()?;
    let text = format!(
        "name = \"mini-baseline\"\ndescription = \"short\"\nduration_s = 2.5\nseed = 3\n{CHEAP_AUTH}\
         [[legit]]\nclients = 4\nrate_per_s = 10\nfile_bytes = 4096\n\
         [expect]\nlegit_goodput_min = 0.9\nlatency_slo_ms = 1000\n"
    );
    let path = write(dir.path(), "mini.toml", &text)?;
    let report = run_files(&[path], &RunOptions::default(), &Silent).await?;
    let json: serde_json::Value = serde_json::from_str(&report.to_json())?;
    assert_eq!(
        json["passed"],
        serde_json::Value::Bool(true),
        "{}",
        report.summary_table()
    );
    let s = &json["scenarios"][0];
    for key in ["name", "file", "attacks", "passed", "failures", "metrics"] {
        assert!(s.get(key).is_some(), "scenario lacks {key}");
    }
    assert_eq!(s["name"], "mini-baseline");
    assert!(s["file"].as_str().is_some_and(|f| f.ends_with("mini.toml")));
    assert_eq!(s["attacks"], serde_json::json!([]));
    let m = &s["metrics"];
    for key in CONTRACT_METRICS {
        assert!(m.get(key).is_some(), "metrics lack {key}");
    }
    // 4 clients at 10/s for 2.5 s.
    assert_eq!(m["legit_attempted"], 100);
    assert_eq!(m["legit_lost"], 0);
    assert_eq!(m["server_alive"], true);
    assert_eq!(m["panics_contained"], 0);
    assert!(m["peak_rss_mb"].as_f64().is_some_and(|mb| mb > 0.0));
    assert_eq!(
        json["scenarios"][0]["timeline"]["attempted"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );

    let junit = report.to_junit();
    assert_eq!(junit.matches("<testcase ").count(), 1);
    let html = report.to_html();
    assert!(html.contains("<svg ") && !html.contains("<script"));
    Ok(())
}

/// A legit user whose account is guessed from many addresses keeps logging in: each of its
/// logins during the attack gets in, and its address is never blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guessed_account_keeps_logging_in() -> TestResult {
    let dir = tempfile::tempdir()?;
    let text = format!(
        "name = \"guessed\"\nduration_s = 4\nseed = 5\n{CHEAP_AUTH}\
         [[legit]]\nclients = 1\nrate_per_s = 5\nsources = \"127.0.0.16\"\nrelogin_every_s = 1\n\
         [[legit]]\nclients = 2\nrate_per_s = 5\n\
         [[attack]]\nkind = \"brute-force\"\nconnections = 8\nsources = \"127.0.13.0/28\"\n\
         start_s = 0.5\nguesses = 200\ntarget_user = \"legit0\"\n\
         [expect]\nlegit_goodput_min = 0.9\nlegit_login_refusals_max = 0\nfalse_blocks_max = 0\n"
    );
    let path = write(dir.path(), "guessed.toml", &text)?;
    let report = run_files(&[path], &RunOptions::default(), &Silent).await?;
    let json: serde_json::Value = serde_json::from_str(&report.to_json())?;
    let m = &json["scenarios"][0]["metrics"];
    assert_eq!(
        json["passed"],
        serde_json::Value::Bool(true),
        "{}\n{m}",
        report.summary_table()
    );
    assert!(m["legit_logins"].as_u64().is_some_and(|n| n >= 2), "{m}");
    assert_eq!(m["legit_login_refusals"], 0);
    Ok(())
}

/// The read-back counts an acknowledged item as lost when it is gone or differs, and only
/// then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_back_finds_lost_and_altered_items() -> TestResult {
    use rampart::scenario::legit::{self, Acked, ClientPlan, ClientRun, Expected};
    use rampart::server::auth::hash_password;

    let mut config = rampart::config::Config::default();
    config.auth.argon2_memory_kib = 64;
    config.auth.argon2_iterations = 1;
    let dir = tempfile::tempdir()?;
    let server = rampart::server::Server::open(config.clone(), dir.path())?;
    for user in ["legit0", "legit1"] {
        server
            .store()
            .add_user(user, &hash_password(&config.auth, b"pw")?)?;
    }
    let handle = server.bind("127.0.0.1:0".parse()?).await?;
    let target = handle.local_addr();
    let source = std::net::Ipv4Addr::new(127, 0, 0, 1);
    let mut sender = legit::login(target, "legit0", "pw", source).await?;
    let kept = sender.send_message("legit1", "kept").await?;
    let deleted = sender.send_message("legit1", "deleted").await?;
    let file = sender
        .send_file_bytes("legit1", "f.bin", b"file bytes")
        .await?;
    let mut recipient = legit::login(target, "legit1", "pw", source).await?;
    recipient.delete(deleted).await?;

    let digest = |b: &[u8]| *blake3::hash(b).as_bytes();
    let acked = |item_id, expected| Acked {
        from: "legit0".into(),
        to: 1,
        item_id,
        expected,
    };
    let scenario = Scenario::load(&write(
        dir.path(),
        "s.toml",
        "name = \"s\"\nduration_s = 1\n[[legit]]\nclients = 2\n",
    )?)?;
    let plans: Vec<ClientPlan> = legit::plan(&scenario)
        .into_iter()
        .map(|p| ClientPlan {
            password: "pw".into(),
            ..p
        })
        .collect();
    let run = ClientRun {
        index: 0,
        records: Vec::new(),
        acked: vec![
            acked(
                kept,
                Expected::Message {
                    text: digest(b"kept"),
                },
            ),
            acked(
                deleted,
                Expected::Message {
                    text: digest(b"deleted"),
                },
            ),
            acked(
                file,
                Expected::File {
                    size: 10,
                    digest: digest(b"file bytez"),
                },
            ),
            acked(
                file + 100,
                Expected::Message {
                    text: digest(b"never sent"),
                },
            ),
        ],
        client: Some(sender),
        ..ClientRun::default()
    };
    let recipient_run = ClientRun {
        index: 1,
        records: Vec::new(),
        acked: Vec::new(),
        client: Some(recipient),
        ..ClientRun::default()
    };
    let v = legit::verify(&plans, vec![run, recipient_run], target, 4_000).await;
    assert_eq!(v.verified, 1);
    assert_eq!(v.lost, 3, "{:?}", v.lost_items);
    assert!(
        v.lost_items
            .iter()
            .any(|l| l.contains("file size or digest differs")),
        "{:?}",
        v.lost_items
    );
    handle.shutdown().await;
    Ok(())
}

/// A short scenario with a probe attack that the firewall blocks at the first byte.
fn probe_scenario(name: &str, blocked_within_s: f64) -> String {
    format!(
        "name = \"{name}\"\nduration_s = 3\nseed = 5\n{CHEAP_AUTH}\
         [[legit]]\nclients = 3\nrate_per_s = 5\n\
         [[attack]]\nkind = \"probe\"\nconnections = 2\nsources = \"127.0.42.0/30\"\nstart_s = 1\n\
         [expect]\nlegit_goodput_min = 0.9\nlatency_slo_ms = 1000\nblocked_within_s = {blocked_within_s}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attack_is_measured_and_blocked() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = write(dir.path(), "probe.toml", &probe_scenario("mini-probe", 2.0))?;
    let report = run_files(&[path], &RunOptions::default(), &Silent).await?;
    let s = &report.scenarios[0];
    assert!(s.passed, "{}", report.summary_table());
    assert_eq!(s.attacks, vec!["probe".to_string()]);
    let m = &s.metrics;
    assert_eq!(m.attack_sources, 2);
    assert_eq!(m.blocked_sources, 2);
    assert!(
        m.time_to_block_s.is_some_and(|t| t <= 2.0),
        "{:?}",
        m.time_to_block_s
    );
    assert!(
        m.frames_rejected
            .as_ref()
            .is_some_and(|r| r.get("bad_magic").is_some()),
        "{:?}",
        m.frames_rejected
    );
    assert_eq!(m.canary_leaks, 0);
    assert_eq!(m.false_blocks, 0);
    Ok(())
}

/// A `rampart serve` child process, killed when dropped.
struct ExternalServer {
    child: Child,
    addr: SocketAddr,
    data: tempfile::TempDir,
}

impl Drop for ExternalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server() -> Result<ExternalServer, Box<dyn std::error::Error>> {
    let data = tempfile::tempdir()?;
    let config = write(
        data.path(),
        "rampart.toml",
        "[auth]\nargon2_memory_kib = 64\nargon2_iterations = 1\n",
    )?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data.path().join("data"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first)?;
    let addr: SocketAddr = first
        .trim()
        .strip_prefix("listening on ")
        .ok_or(first.clone())?
        .parse()?;
    Ok(ExternalServer { child, addr, data })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_against_an_external_server() -> TestResult {
    let server = spawn_server()?;
    let dir = tempfile::tempdir()?;
    let path = write(
        dir.path(),
        "probe.toml",
        &probe_scenario("external-probe", 2.0),
    )?;
    let opts = RunOptions::default().target(server.addr, server.data.path().join("data"));
    let report = run_files(&[path], &opts, &Silent).await?;
    let s = &report.scenarios[0];
    assert!(s.passed, "{}", report.summary_table());
    assert_eq!(s.target, server.addr.to_string());
    let m = &s.metrics;
    assert!(m.legit_delivered > 0 && m.legit_lost == 0);
    assert!(m.server_alive);
    // Blocks seen from outside: the attackers' refusals at accept.
    assert_eq!(m.blocked_sources, 2);
    // The server's own counters are not reachable from another process...
    assert_eq!(m.panics_contained, None);
    assert_eq!(m.frames_rejected, None);
    // ...but its memory is, through /proc, on Linux.
    if cfg!(target_os = "linux") {
        assert!(m.peak_rss_mb.is_some_and(|mb| mb > 0.0), "{}", m.rss_scope);
        assert!(
            m.rss_scope.contains("external server process"),
            "{}",
            m.rss_scope
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_target_needs_its_data_dir() -> TestResult {
    let opts = RunOptions {
        target: Some("127.0.0.1:9".parse()?),
        ..RunOptions::default()
    };
    let err = run_files(&[PathBuf::from("scenarios")], &opts, &Silent)
        .await
        .err()
        .ok_or("ran")?;
    assert!(err.to_string().contains("--target-data-dir"), "{err}");
    let opts = RunOptions::default().target("10.0.0.1:7878".parse()?, "data");
    let err = run_files(&[PathBuf::from("scenarios")], &opts, &Silent)
        .await
        .err()
        .ok_or("ran")?;
    assert!(err.to_string().contains("127.0.0.0/8"), "{err}");
    Ok(())
}

/// A fleet scenario needs real sockets and a database: in a simulation, or without
/// `--store-url`, it is skipped with the reason (and counted as skipped in JUnit), not failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_scenario_without_a_database_is_skipped_not_failed() -> TestResult {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/fleet.toml");
    for (opts, why) in [
        (RunOptions::default(), "--store-url"),
        (
            RunOptions {
                sim: true,
                store_url: Some("postgres://postgres@127.0.0.1:9/postgres".into()),
                ..RunOptions::default()
            },
            "simulation",
        ),
    ] {
        let started = std::time::Instant::now();
        let report = run_files(std::slice::from_ref(&file), &opts, &Silent).await?;
        let s = &report.scenarios[0];
        let skipped = s.skipped.as_deref().ok_or("not skipped")?;
        assert!(skipped.contains(why), "{skipped}");
        assert!(s.passed && report.passed, "{:?}", s.failures);
        assert!(started.elapsed() < Duration::from_secs(5), "it ran");
        assert!(report.to_junit().contains("skipped=\"1\""));
        assert!(report.summary_table().contains("SKIP fleet:"));
    }
    Ok(())
}
