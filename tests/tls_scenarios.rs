//! Scenarios over TLS: a scenario with `tls = true` and a plaintext scenario forced onto TLS
//! by the runner's `--tls` run end to end (legit clients, the canary, the alive check and
//! the attackers all through TLS), their reports say so, and the TLS attack kinds are
//! refused in a scenario that is not TLS.
//!
//! Scenarios here use cheap argon2 parameters and last about three seconds.

use rampart::scenario::{run_files, RunOptions, Scenario, Silent};

type TestResult = Result<(), Box<dyn std::error::Error>>;

mod scenario_util;
use scenario_util::{write, CHEAP_AUTH};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_scenario_runs_everyone_over_tls_and_says_so() -> TestResult {
    let dir = tempfile::tempdir()?;
    let text = format!(
        "name = \"mini-tls\"\nduration_s = 3\nseed = 5\ntls = true\n{CHEAP_AUTH}\
         [[legit]]\nclients = 4\nrate_per_s = 10\nfile_bytes = 4096\n\
         [[attack]]\nkind = \"plaintext-on-tls\"\nconnections = 2\nsources = \"127.0.22.0/30\"\nstart_s = 1\n\
         [expect]\nlegit_goodput_min = 0.9\nlatency_slo_ms = 1000\nfalse_blocks_max = 0\n"
    );
    let path = write(dir.path(), "mini-tls.toml", &text)?;
    let report = run_files(&[path], &RunOptions::default(), &Silent).await?;
    let json: serde_json::Value = serde_json::from_str(&report.to_json())?;
    let s = &json["scenarios"][0];
    assert_eq!(s["passed"], true, "{}", report.summary_table());
    assert_eq!(s["tls"], true);
    assert_eq!(s["metrics"]["legit_lost"], 0);
    assert_eq!(s["metrics"]["server_alive"], true);
    assert_eq!(s["metrics"]["canary_leaks"], 0);
    assert!(report.summary_table().contains("mini-tls (tls)"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_flag_forces_tls_and_attackers_speak_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let text = format!(
        "name = \"mini-flood\"\nduration_s = 3\nseed = 5\n{CHEAP_AUTH}\
         [[legit]]\nclients = 4\nrate_per_s = 10\n\
         [[attack]]\nkind = \"flood\"\nconnections = 4\nsources = \"127.0.2.0/30\"\nstart_s = 1\n\
         [expect]\nlegit_goodput_min = 0.9\nlatency_slo_ms = 1000\nfalse_blocks_max = 0\n"
    );
    let path = write(dir.path(), "mini-flood.toml", &text)?;
    let report = run_files(&[path], &RunOptions::default().tls(), &Silent).await?;
    let json: serde_json::Value = serde_json::from_str(&report.to_json())?;
    let s = &json["scenarios"][0];
    assert_eq!(s["passed"], true, "{}", report.summary_table());
    assert_eq!(s["tls"], true);
    // The flood logged in and sent frames: only possible through TLS on a TLS port.
    let attack = &s["metrics"]["attacks"][0];
    assert!(
        attack["frames_sent"].as_u64().is_some_and(|n| n > 10),
        "{attack}"
    );
    let notes = attack["notes"].to_string();
    assert!(!notes.contains("TLS handshake"), "{notes}");
    Ok(())
}

#[test]
fn tls_attack_kinds_need_a_tls_scenario() -> TestResult {
    let dir = tempfile::tempdir()?;
    for kind in [
        "tls-handshake-flood",
        "tls-slow-handshake",
        "plaintext-on-tls",
    ] {
        let text = format!("name = \"t\"\nduration_s = 3\n[[attack]]\nkind = \"{kind}\"\n");
        let path = write(dir.path(), "bad.toml", &text)?;
        let err = Scenario::load(&path).err().ok_or("accepted")?.to_string();
        assert!(
            err.contains("attack[0].kind") && err.contains("tls = true"),
            "{err}"
        );
        let ok = write(dir.path(), "ok.toml", &format!("tls = true\n{text}"))?;
        assert!(Scenario::load(&ok)?.tls());
    }
    let text = "name = \"t\"\nduration_s = 3\n[server.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
    let path = write(dir.path(), "cert.toml", text)?;
    let err = Scenario::load(&path).err().ok_or("accepted")?.to_string();
    assert!(err.contains("server.tls.cert"), "{err}");
    Ok(())
}

#[test]
fn tls_runs_need_the_in_process_server() -> Result<(), std::net::AddrParseError> {
    let opts = RunOptions::default()
        .target("127.0.0.1:7878".parse()?, "data")
        .tls();
    assert!(opts.check().is_err());
    Ok(())
}
