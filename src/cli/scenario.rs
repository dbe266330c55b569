//! `rampart scenario run`: run attack scenarios, show live progress, print the summary table
//! and write the JSON, JUnit and HTML reports. The work is [`rampart::scenario`]'s; this file
//! parses arguments and draws.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use rampart::scenario::target::{self, TargetSpec, TargetUrl};
use rampart::scenario::{run_files, LiveStats, Progress, RunOptions, Scenario, ScenarioReport};

const RUN_HELP: &str = "\
Each scenario starts a fresh in-process server on 127.0.0.1:0 with a temporary data directory,
runs its legit clients and attacks for duration_s, reads back every acknowledged item, and checks
its [expect] table. The exit code is 1 if any expectation fails. See docs/SCENARIOS.md.

Examples:
  rampart scenario run scenarios/
  rampart scenario run scenarios/ --json report.json --junit report.xml --html report.html
  rampart scenario run scenarios/flood.toml --seed 7
  rampart scenario run scenarios/ --filter brute
  rampart scenario run scenarios/ --sim            # virtual time: same seed, same report
  rampart scenario run scenarios/ --sim --seeds 1..20   # a seed sweep; failures print a replay
  rampart scenario run scenarios/baseline.toml scenarios/flood.toml --tls
  rampart scenario run scenarios/ --model my-model.json   # or --no-model: rules only
  rampart scenario run scenarios/baseline.toml --target 127.0.0.1:7878 --target-data-dir ./data

Any TCP server (scenarios/generic/ runs unchanged against each; kinds that need rampart's
protocol, such as tamper or brute-force, are refused before anything runs):
  rampart scenario run scenarios/generic/ --target tcp://127.0.0.1:6379 --legit resp --target-pid PID
  rampart scenario run scenarios/generic/ --target tcp://127.0.0.1:8080 --legit http --legit-opt path=/health
  rampart scenario run scenarios/generic/ --target tcp://127.0.0.1:7000 --legit line --legit-opt greeting=true
  rampart scenario run scenarios/generic/ --target tcp://127.0.0.1:6379 --legit script \\
      --legit-opt 'steps=[{send=\"PING\\r\\n\"},{expect=\"+PONG\\r\\n\"}]'
Block metrics read n/a against a tcp:// target: it has no firewall to ask.";

/// `rampart scenario ...`.
#[derive(Debug, Subcommand)]
pub enum ScenarioCommand {
    /// Run scenario files and check their expectations.
    #[command(after_help = RUN_HELP)]
    Run(RunArgs),
}

/// `rampart scenario run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Scenario files, or directories (every *.toml in it, sorted by name).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Where to run instead of an in-process server: `rampart://127.0.0.1:PORT` (or a bare
    /// address) for an external `rampart serve` (with --target-data-dir), or
    /// `tcp://127.0.0.1:PORT` for any TCP server (with a legit driver: --legit or the file's
    /// [target]). Overrides every file's `[target] url`.
    #[arg(long, value_name = "URL")]
    target: Option<String>,
    /// The legit driver of a tcp:// target: resp (SET then GET), http (GET a path, expect a
    /// status), line (a line out, a matching line back) or script (send/expect steps).
    /// Overrides the file's `[target] legit`.
    #[arg(long, value_name = "DRIVER")]
    legit: Option<String>,
    /// A driver option, as in the file's [target] table, e.g. `path=/health`, `status=204`,
    /// `greeting=true`, `steps=[{send="PING\r\n"},{expect="+PONG\r\n"}]`. Repeatable; wins
    /// over the file.
    #[arg(long = "legit-opt", value_name = "KEY=VALUE")]
    legit_opt: Vec<String>,
    /// The target server's process id: its resident memory is sampled during the run, and
    /// `server_alive` also needs it still running at the end. Default: the process found
    /// listening on the target's port.
    #[arg(long, value_name = "PID")]
    target_pid: Option<u32>,
    /// The external server's data directory; the runner creates its accounts there.
    #[arg(long, requires = "target")]
    target_data_dir: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a JUnit XML report here (one testcase per scenario).
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Write a self-contained HTML report with plots here.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Override every scenario's seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run every scenario once per seed from A to B, both included (`1..100` is 100 runs),
    /// and print each failing seed's replay command. Meant for --sim, where a run takes a
    /// fraction of its scenario time.
    #[arg(long, value_name = "A..B", value_parser = parse_seeds)]
    seeds: Option<std::ops::RangeInclusive<u64>>,
    /// Keep each in-process server's data directory as DIR/<scenario name>.
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
    /// Run every scenario over TLS, as if each file had `tls = true`: the runner makes a
    /// self-signed certificate per run, legit and control clients trust exactly it, and
    /// attackers connect through TLS too. In-process server only.
    #[arg(long, conflicts_with = "target")]
    tls: bool,
    /// Run only the scenarios whose name contains NAME.
    #[arg(long, value_name = "NAME")]
    filter: Option<String>,
    /// Run each scenario in a deterministic simulation instead of on real sockets: the real
    /// server, clients and attackers on one thread, a virtual clock and an in-memory
    /// network. The same seed gives the same report. See docs/SIMULATION.md.
    #[arg(long, conflicts_with = "target")]
    sim: bool,
    /// The PostgreSQL database fleet scenarios (`servers` above 1) run on:
    /// `postgres://USER@127.0.0.1:PORT/DB`, a user that may create schemas. Each run gets a
    /// schema of its own, dropped at its end. Without it fleet scenarios are skipped.
    #[arg(
        long,
        value_name = "URL",
        env = "RAMPART_STORE_URL",
        hide_env_values = true
    )]
    store_url: Option<String>,
    /// No live progress display.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    model: super::ModelArgs,
}

/// Most seeds one `--seeds` range may hold.
const MAX_SEEDS: u64 = 100_000;

/// Parses `--seeds A..B` (both included).
fn parse_seeds(s: &str) -> Result<std::ops::RangeInclusive<u64>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("expected A..B, such as 1..100, got {s:?}"))?;
    let b = b.strip_prefix('=').unwrap_or(b);
    let parse = |x: &str| {
        x.trim()
            .parse::<u64>()
            .map_err(|e| format!("{x:?} is not a seed (a whole number from 0): {e}"))
    };
    let (a, b) = (parse(a)?, parse(b)?);
    if b < a {
        return Err(format!(
            "the range {a}..{b} is empty: the last seed comes first"
        ));
    }
    if b - a >= MAX_SEEDS {
        return Err(format!(
            "at most {MAX_SEEDS} seeds at a time, got {}",
            b - a + 1
        ));
    }
    Ok(a..=b)
}

/// One indicatif bar per scenario, on stderr.
struct Bars {
    multi: MultiProgress,
    current: Mutex<Option<ProgressBar>>,
}

impl Bars {
    fn new(quiet: bool) -> Bars {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr_with_hz(4)
        };
        Bars {
            multi: MultiProgress::with_draw_target(target),
            current: Mutex::new(None),
        }
    }

    fn bar(&self) -> Option<ProgressBar> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn short(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=9_999_999 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

impl Progress for Bars {
    fn scenario_started(&self, index: usize, total: usize, scenario: &Scenario) {
        let bar = self.multi.add(ProgressBar::new(
            scenario.duration().as_millis().max(1) as u64
        ));
        let style = ProgressStyle::with_template("{prefix:.bold} [{bar:24.cyan/blue}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!(
            "[{}/{total}] {} (seed {})",
            index + 1,
            scenario.name(),
            scenario.seed()
        ));
        bar.set_message("setting up");
        bar.enable_steady_tick(Duration::from_millis(250));
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(bar);
    }

    fn scenario_tick(&self, s: &LiveStats) {
        let Some(bar) = self.bar() else { return };
        bar.set_position(s.elapsed.as_millis() as u64);
        let phase = if s.elapsed >= s.duration {
            " · verifying"
        } else {
            ""
        };
        bar.set_message(format!(
            "{:.1}/{:.0} s · legit {}/{} ok · attack {} frames, {} conns · blocked {}{}{}",
            s.elapsed.as_secs_f64(),
            s.duration.as_secs_f64(),
            short(s.legit_delivered),
            short(s.legit_attempted),
            short(s.attack_frames),
            short(s.attack_connects),
            s.blocked_sources,
            s.rss_mb
                .map(|mb| format!(" · {mb:.0} MiB"))
                .unwrap_or_default(),
            phase
        ));
    }

    fn scenario_finished(&self, r: &ScenarioReport) {
        if let Some(bar) = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        if let Some(why) = &r.skipped {
            let line = format!("skip {} (seed {}): {why}", r.name, r.seed);
            self.multi.suspend(|| eprintln!("{line}"));
            return;
        }
        let verdict = if r.passed { "pass" } else { "FAIL" };
        let line = format!(
            "{verdict} {} (seed {}, {:.1} s): goodput {:.3}, p99 {:.1} ms, lost {}, blocked {}",
            r.name,
            r.seed,
            r.wall_s,
            r.metrics.legit_goodput,
            r.metrics.latency_p99_ms,
            r.metrics.legit_lost,
            r.metrics.block_text(|| format!(
                "{}/{}",
                r.metrics.blocked_sources, r.metrics.attack_sources
            )),
        );
        self.multi.suspend(|| eprintln!("{line}"));
    }
}

/// Runs `rampart scenario ...`.
pub async fn run(cmd: ScenarioCommand) -> Result<ExitCode> {
    let ScenarioCommand::Run(args) = cmd;
    let url = args
        .target
        .as_deref()
        .map(TargetUrl::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let legit = if args.legit.is_some() || !args.legit_opt.is_empty() {
        let mut spec = TargetSpec {
            legit: args.legit.clone(),
            ..TargetSpec::default()
        };
        for opt in &args.legit_opt {
            target::set_option(&mut spec, opt).map_err(anyhow::Error::msg)?;
        }
        spec.check()
            .map_err(|(k, r)| anyhow::anyhow!("--legit/--legit-opt {k}: {r}"))?;
        Some(spec)
    } else {
        None
    };
    if args.target.is_some() && args.model.model.is_some() {
        anyhow::bail!(
            "--model applies to the in-process server; an external server runs the model it was started with (`rampart serve --model FILE`)"
        );
    }
    let opts = RunOptions {
        target: match url {
            Some(TargetUrl::Rampart(addr)) => Some(addr),
            _ => None,
        },
        tcp_target: match url {
            Some(TargetUrl::Tcp(addr)) => Some(addr),
            _ => None,
        },
        legit,
        target_pid: args.target_pid,
        target_data_dir: args.target_data_dir.clone(),
        seed: args.seed,
        seeds: args.seeds.clone(),
        record_dir: args.record.clone(),
        filter: args.filter.clone(),
        // A tcp:// target has no model to run.
        model: match url {
            Some(TargetUrl::Tcp(_)) => None,
            _ => args
                .model
                .resolve()?
                .map(|(name, model)| rampart::scenario::RunModel { name, model }),
        },
        tls: args.tls,
        sim: args.sim,
        store_url: args.store_url.clone(),
    };
    let bars = Bars::new(args.quiet);
    let report = run_files(&args.paths, &opts, &bars).await?;
    // Written, not print!ed: a closed stdout (`| head`) is an error, not a panic.
    let mut out = std::io::stdout().lock();
    write!(out, "{}", report.summary_table())?;
    if let Some(path) = &args.json {
        report
            .write_json(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    if let Some(path) = &args.junit {
        report
            .write_junit(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    if let Some(path) = &args.html {
        report
            .write_html(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    out.flush()?;
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
