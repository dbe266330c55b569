//! The scenario runner against a server that is not rampart (`tcp://` targets), without
//! installing one: a small line-echo server written here runs the `scenarios/generic/`
//! suite (each scenario shortened to two seconds) through the `line` and `script` drivers,
//! and a minimal RESP server written here runs part of it through the `resp` driver;
//! the `script` driver also speaks rampart's binary PING to a rampart server; and a kind
//! that needs rampart's protocol is refused before anything runs.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use rampart::scenario::target::TargetSpec;
use rampart::scenario::{
    collect_files, load_all, run_all, run_files, RunError, RunOptions, Silent, SuiteReport,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Longest line the echo server buffers before it gives up on the connection, as a real
/// line server bounds its buffer.
const MAX_LINE: usize = 64 * 1024;

/// A line-echo server on 127.0.0.1:0: every line comes back as it was sent (with its end).
async fn echo_server() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                    while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=i).collect();
                        if stream.write_all(&line).await.is_err() {
                            return;
                        }
                    }
                    if buf.len() > MAX_LINE {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Largest bulk string the RESP server takes (redis's `proto-max-bulk-len` is 512 MB; a
/// test server keeps less).
const MAX_BULK: usize = 8 * 1024 * 1024;

/// A minimal RESP server on 127.0.0.1:0: arrays of bulk strings, PING, SET, GET and EXISTS;
/// anything else, or a protocol error, gets `-ERR` (and a protocol error closes).
async fn resp_server() -> std::io::Result<SocketAddr> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let store: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>> = Arc::default();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 64 * 1024];
                loop {
                    // Serve every whole command in the buffer, then read more.
                    loop {
                        match parse_command(&buf) {
                            Ok(Some((args, used))) => {
                                buf.drain(..used);
                                let reply = answer(&store, &args);
                                if stream.write_all(&reply).await.is_err() {
                                    return;
                                }
                            }
                            Ok(None) => break,
                            Err(()) => {
                                let _ = stream.write_all(b"-ERR Protocol error\r\n").await;
                                return;
                            }
                        }
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// One RESP command from the front of `buf`: its arguments and the bytes it used; `None`
/// if incomplete.
#[allow(clippy::type_complexity)]
fn parse_command(buf: &[u8]) -> Result<Option<(Vec<Vec<u8>>, usize)>, ()> {
    fn line(buf: &[u8], at: usize, prefix: u8) -> Result<Option<(usize, usize)>, ()> {
        let Some(rest) = buf.get(at..) else {
            return Ok(None);
        };
        let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return if rest.len() > 64 { Err(()) } else { Ok(None) };
        };
        if rest.first() != Some(&prefix) {
            return Err(());
        }
        let n: usize = std::str::from_utf8(rest.get(1..end).ok_or(())?)
            .map_err(|_| ())?
            .parse()
            .map_err(|_| ())?;
        Ok(Some((n, at + end + 2)))
    }
    let Some((count, mut at)) = line(buf, 0, b'*')? else {
        return Ok(None);
    };
    if count == 0 || count > 16 {
        return Err(());
    }
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        let Some((len, start)) = line(buf, at, b'$')? else {
            return Ok(None);
        };
        if len > MAX_BULK {
            return Err(());
        }
        let Some(arg) = buf.get(start..start + len) else {
            return Ok(None);
        };
        match buf.get(start + len..start + len + 2) {
            None => return Ok(None),
            Some(b"\r\n") => {}
            Some(_) => return Err(()),
        }
        args.push(arg.to_vec());
        at = start + len + 2;
    }
    Ok(Some((args, at)))
}

fn answer(
    store: &std::sync::Mutex<std::collections::HashMap<Vec<u8>, Vec<u8>>>,
    args: &[Vec<u8>],
) -> Vec<u8> {
    let mut store = store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match args {
        [cmd] if cmd.eq_ignore_ascii_case(b"PING") => b"+PONG\r\n".to_vec(),
        [cmd, key, value] if cmd.eq_ignore_ascii_case(b"SET") => {
            store.insert(key.clone(), value.clone());
            b"+OK\r\n".to_vec()
        }
        [cmd, key] if cmd.eq_ignore_ascii_case(b"GET") => match store.get(key) {
            Some(v) => {
                let mut out = format!("${}\r\n", v.len()).into_bytes();
                out.extend_from_slice(v);
                out.extend_from_slice(b"\r\n");
                out
            }
            None => b"$-1\r\n".to_vec(),
        },
        [cmd, key] if cmd.eq_ignore_ascii_case(b"EXISTS") => {
            format!(":{}\r\n", u8::from(store.contains_key(key))).into_bytes()
        }
        _ => b"-ERR unknown command\r\n".to_vec(),
    }
}

/// The generic scenarios whose names end in one of `names`, shortened to two seconds (the
/// attacks start at 1 s), run against `addr` with the driver `legit`.
async fn run_generic(
    addr: SocketAddr,
    legit: TargetSpec,
    names: &[&str],
) -> Result<SuiteReport, Box<dyn std::error::Error>> {
    let files = collect_files(&[PathBuf::from("scenarios/generic")])?;
    let scenarios: Vec<_> = load_all(&files)?
        .into_iter()
        .filter(|s| names.iter().any(|n| s.name() == format!("generic-{n}")))
        .map(|s| s.with_duration(Duration::from_secs(2)))
        .collect();
    assert_eq!(scenarios.len(), names.len(), "missing generic scenarios");
    let opts = RunOptions::default()
        .tcp_target(addr, legit)
        .target_pid(std::process::id());
    rampart::scenario::runner::check_targets(&scenarios, &opts)?;
    Ok(run_all(scenarios, &opts, &Silent).await)
}

/// What every generic report must show: the target named with its driver, legit goodput
/// measured, the block metrics `null`, the target alive, and every attack having sent.
fn check_report(report: &SuiteReport, driver: &str) -> TestResult {
    let json: serde_json::Value = serde_json::from_str(&report.to_json())?;
    let table = report.summary_table();
    for s in json["scenarios"].as_array().ok_or("no scenarios")? {
        let name = s["name"].as_str().unwrap_or("?");
        let m = &s["metrics"];
        assert!(
            s["target"].as_str().is_some_and(
                |t| t.starts_with("tcp://127.0.0.1:") && t.ends_with(&format!("({driver})"))
            ),
            "{name}: {}",
            s["target"]
        );
        assert!(
            m["legit_attempted"].as_u64().is_some_and(|n| n > 0),
            "{name}: {m}"
        );
        let goodput = m["legit_goodput"].as_f64().ok_or("no goodput")?;
        assert!(goodput > 0.5, "{name}: goodput {goodput}\n{table}");
        assert_eq!(
            m["server_alive"], true,
            "{name}: {}",
            m["server_alive_error"]
        );
        for key in ["blocked_sources", "time_to_block_s", "false_blocks"] {
            assert!(m[key].is_null(), "{name}: {key} = {}", m[key]);
        }
        assert_eq!(m["model"], "n/a", "{name}");
        // The test process holds the echo server: its memory was sampled.
        assert!(
            m["peak_rss_mb"].as_f64().is_some_and(|mb| mb > 0.0),
            "{name}: {m}"
        );
        assert!(m["rss_scope"]
            .as_str()
            .is_some_and(|s| s.starts_with("target process")));
        for a in m["attacks"].as_array().ok_or("no attacks")? {
            assert!(a["sources_blocked"].is_null(), "{name}: {a}");
            assert!(a["connects"].as_u64().is_some_and(|n| n > 0), "{name}: {a}");
            let notes = a["notes"].to_string();
            assert!(
                notes.contains(&format!("against a {driver} target")),
                "{name}: {notes}"
            );
        }
    }
    // The terminal table prints n/a where a firewall's numbers would be.
    assert!(table.contains("n/a"), "{table}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_suite_runs_against_a_line_echo_server() -> TestResult {
    let addr = echo_server().await?;
    let legit = TargetSpec {
        legit: Some("line".into()),
        ..TargetSpec::default()
    };
    let names = [
        "baseline",
        "raw-flood",
        "slowloris",
        "slow-read",
        "oversized",
    ];
    let report = run_generic(addr, legit, &names).await?;
    check_report(&report, "line")?;
    let baseline = report.scenarios.first().ok_or("no baseline")?;
    assert!(baseline.attacks.is_empty());
    assert!(
        baseline.metrics.legit_goodput >= 0.9,
        "{}",
        report.summary_table()
    );
    assert_eq!(
        baseline.metrics.legit_by_kind.keys().collect::<Vec<_>>(),
        ["request"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_suite_runs_through_the_script_driver() -> TestResult {
    let addr = echo_server().await?;
    let legit = TargetSpec {
        legit: Some("script".into()),
        steps: Some(vec![
            rampart::scenario::target::StepSpec {
                send: Some("ping\r\n".into()),
                ..Default::default()
            },
            rampart::scenario::target::StepSpec {
                expect_hex: Some("70 69 6e 67 0d 0a".into()),
                ..Default::default()
            },
        ]),
        ..TargetSpec::default()
    };
    let names = ["flood", "conn-churn", "conn-exhaust", "probe"];
    let report = run_generic(addr, legit, &names).await?;
    check_report(&report, "script")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_suite_runs_against_a_resp_server() -> TestResult {
    let addr = resp_server().await?;
    let legit = TargetSpec {
        legit: Some("resp".into()),
        ..TargetSpec::default()
    };
    let names = ["baseline", "slow-read", "oversized", "malformed"];
    let report = run_generic(addr, legit, &names).await?;
    check_report(&report, "resp")?;
    let baseline = report.scenarios.first().ok_or("no baseline")?;
    assert!(
        baseline.metrics.legit_goodput >= 0.9,
        "{}",
        report.summary_table()
    );
    // slow-read stored its big value through the driver's protocol before asking for it.
    let slow = report
        .scenarios
        .iter()
        .find(|s| s.name == "generic-slow-read")
        .ok_or("no slow-read")?;
    let notes = slow
        .metrics
        .attacks
        .first()
        .map(|a| a.notes.join("; "))
        .unwrap_or_default();
    assert!(notes.contains("stored a 1048576-byte value"), "{notes}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_driver_pings_a_rampart_server() -> TestResult {
    let server = common::start_server().await;
    // PING with request id 2, and its PONG (docs/PROTOCOL.md, appendix): allowed before AUTH.
    let mut legit = TargetSpec::default();
    rampart::scenario::target::set_option(&mut legit, "legit=script")?;
    rampart::scenario::target::set_option(
        &mut legit,
        r#"steps=[{send_hex="524d0102 00000002 0000 00000000"},{expect_hex="524d0182 00000002 0000 00000000"}]"#,
    )?;
    let report = run_generic(server.addr, legit, &["baseline"]).await?;
    let m = &report.scenarios.first().ok_or("no report")?.metrics;
    assert!(m.server_alive, "{:?}", m.server_alive_error);
    assert!(m.legit_goodput >= 0.9, "{}", report.summary_table());
    server.handle.shutdown().await;
    Ok(())
}

/// Writes `text` as `dir/name` and returns the path.
fn write(dir: &Path, name: &str, text: &str) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

#[tokio::test]
async fn rampart_only_kinds_are_refused_against_a_tcp_target() -> TestResult {
    let dir = tempfile::tempdir()?;
    let addr: SocketAddr = "127.0.0.1:9".parse()?;
    let resp = TargetSpec {
        legit: Some("resp".into()),
        ..TargetSpec::default()
    };
    let opts = RunOptions::default().tcp_target(addr, resp);
    for kind in ["tamper", "brute-force", "preauth-buffer", "low-and-slow"] {
        let path = write(
            dir.path(),
            &format!("{kind}.toml"),
            &format!("name = \"x\"\nduration_s = 1\n[[legit]]\n[[attack]]\nkind = \"{kind}\"\n"),
        )?;
        let err = run_files(&[path], &opts, &Silent)
            .await
            .err()
            .ok_or("ran")?;
        let msg = err.to_string();
        assert!(matches!(err, RunError::Target(_)), "{msg}");
        assert!(msg.contains(&format!("`{kind}`")), "{msg}");
        assert!(msg.contains("tcp://127.0.0.1:9"), "{msg}");
        assert!(msg.contains("needs rampart's protocol"), "{msg}");
    }
    // A script without steps, and no driver at all, are refused too.
    let base = write(
        dir.path(),
        "base.toml",
        "name = \"b\"\nduration_s = 1\n[[legit]]\n",
    )?;
    let script = TargetSpec {
        legit: Some("script".into()),
        ..TargetSpec::default()
    };
    let err = run_files(
        std::slice::from_ref(&base),
        &RunOptions::default().tcp_target(addr, script),
        &Silent,
    )
    .await
    .err()
    .ok_or("ran")?;
    assert!(err.to_string().contains("steps"), "{err}");
    let err = run_files(
        std::slice::from_ref(&base),
        &RunOptions::default().tcp_target(addr, TargetSpec::default()),
        &Silent,
    )
    .await
    .err()
    .ok_or("ran")?;
    assert!(err.to_string().contains("legit driver"), "{err}");
    // The file's own [target] table works the same way.
    let in_file = write(
        dir.path(),
        "file.toml",
        "name = \"f\"\nduration_s = 1\n[[legit]]\n[[attack]]\nkind = \"tamper\"\n[target]\nurl = \"tcp://127.0.0.1:9\"\nlegit = \"http\"\n",
    )?;
    let err = run_files(&[in_file], &RunOptions::default(), &Silent)
        .await
        .err()
        .ok_or("ran")?;
    assert!(err.to_string().contains("`tamper`"), "{err}");
    let tcp_file = write(
        dir.path(),
        "tcp.toml",
        "name = \"t\"\nduration_s = 1\n[[legit]]\n[target]\nurl = \"tcp://127.0.0.1:9\"\nlegit = \"line\"\n",
    )?;
    let err = run_files(&[tcp_file], &RunOptions::default().tls(), &Silent)
        .await
        .err()
        .ok_or("ran")?;
    assert!(err.to_string().contains("--tls"), "{err}");
    // --target-pid means nothing for the in-process server.
    let err = run_files(&[base], &RunOptions::default().target_pid(1), &Silent)
        .await
        .err()
        .ok_or("ran")?;
    assert!(err.to_string().contains("--target-pid"), "{err}");
    Ok(())
}

#[test]
fn the_top_level_suite_does_not_include_the_generic_one() -> TestResult {
    let files = collect_files(&[PathBuf::from("scenarios")])?;
    assert!(
        files
            .iter()
            .all(|f| f.parent() == Some(Path::new("scenarios"))),
        "{files:?}"
    );
    let generic = collect_files(&[PathBuf::from("scenarios/generic")])?;
    assert!(generic.len() >= 8, "{generic:?}");
    // Every generic scenario loads, and none needs rampart's protocol.
    for s in load_all(&generic)? {
        for a in s.attacks() {
            assert!(
                rampart::scenario::target::generic_kind(a.kind()),
                "{}: {}",
                s.name(),
                a.kind()
            );
        }
        assert!(
            s.target().is_none(),
            "{}: a generic scenario names no target",
            s.name()
        );
    }
    Ok(())
}

#[test]
fn the_command_line_names_the_refused_kind_and_documents_the_flags() -> TestResult {
    let rampart = env!("CARGO_BIN_EXE_rampart");
    let out = std::process::Command::new(rampart)
        .args([
            "scenario",
            "run",
            "scenarios/tamper.toml",
            "--target",
            "tcp://127.0.0.1:9",
            "--legit",
            "resp",
        ])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`tamper` needs rampart's protocol") && err.contains("tcp://127.0.0.1:9"),
        "{err}"
    );
    let out = std::process::Command::new(rampart)
        .args([
            "scenario",
            "run",
            "scenarios/generic/",
            "--target",
            "udp://127.0.0.1:9",
        ])
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("scheme"));
    let help = std::process::Command::new(rampart)
        .args(["scenario", "run", "--help"])
        .output()?;
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--target <URL>",
        "--legit <DRIVER>",
        "--legit-opt <KEY=VALUE>",
        "--target-pid <PID>",
        "tcp://",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
    Ok(())
}

#[tokio::test]
async fn an_unreachable_target_is_a_failed_report_not_a_hang() -> TestResult {
    // A port nobody listens on: bind one, note it, close it.
    let addr = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let files = collect_files(&[PathBuf::from("scenarios/generic/baseline.toml")])?;
    let legit = TargetSpec {
        legit: Some("line".into()),
        ..TargetSpec::default()
    };
    let opts = RunOptions::default().tcp_target(addr, legit);
    let report = run_all(load_all(&files)?, &opts, &Silent).await;
    let s = report.scenarios.first().ok_or("no report")?;
    assert!(!s.passed);
    let first = s.failures.first().map(String::as_str).unwrap_or_default();
    assert!(
        first.starts_with("setup failed: legit client 0 cannot reach tcp://"),
        "{first}"
    );
    Ok(())
}
