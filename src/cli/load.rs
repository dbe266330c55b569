//! `rampart load`: a load generator whose every counted operation was acknowledged, and an
//! idle mode that holds many authenticated, silent connections.

use std::io::Write;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use rampart::load::{self, IdleSpec, LoadKind, LoadSpec};

use super::client::TlsArgs;
use super::terminal::{visible, Shape};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    Message,
    File,
}

#[derive(Debug, Args)]
#[command(
    after_help = "The password comes from RAMPART_PASSWORD. Every operation counted was \
acknowledged by the server after a durable commit.\n\nExamples:\n  \
RAMPART_PASSWORD=pw rampart load --server 127.0.0.1:7878 --user bench --clients 64 --ops 200000 --size 64\n  \
RAMPART_PASSWORD=pw rampart load --server 127.0.0.1:7878 --user bench --clients 64 --ops 500000 --pipeline 16 --json\n  \
RAMPART_PASSWORD=pw rampart load --server 127.0.0.1:7878 --user bench --kind file --size 1073741824 --clients 1 --ops 1\n  \
RAMPART_PASSWORD=pw rampart load --server 127.0.0.1:7878 --user bench --clients 8 --ops 1000 --sources 127.0.0.0/28\n  \
RAMPART_PASSWORD=pw rampart load --server 127.0.0.1:7878 --user bench --clients 64 --ops 200000 --tls --ca cert.pem\n  \
RAMPART_PASSWORD=pw rampart load --server 127.0.0.1:7878 --user bench --clients 8 --ops 1000 --bind 127.0.0.77\n\n\
Idle mode (--idle N) opens N authenticated connections instead, spread round-robin over \
--source-count addresses of --sources, holds them for --hold seconds (each sends one PING \
per --keepalive seconds, below the server's idle timeout) and closes them. Once every \
connection is open or has failed it prints \"holding N idle connections from M sources\" \
on stderr, so a script can measure the server while they are held. Every connection \
logs in, so the server's login rate limits must allow N logins of one user:\n  \
RAMPART_PASSWORD=pw rampart load --server 127.0.0.1:7878 --user bench --idle 10000 --sources 127.0.2.0/24 --source-count 40 --hold 20"
)]
pub struct LoadArgs {
    /// Server address.
    #[arg(long)]
    server: String,
    /// User to log in as (every client uses it).
    #[arg(long)]
    user: String,
    /// Password, from the environment only.
    #[arg(
        long = "password-from-env",
        env = "RAMPART_PASSWORD",
        hide = true,
        hide_env_values = true
    )]
    password: Option<String>,
    /// Recipient of every operation (default: the user itself).
    #[arg(long)]
    to: Option<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Total operations.
    #[arg(long, default_value_t = 100_000)]
    ops: u64,
    /// Payload bytes per operation.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// What each operation sends.
    #[arg(long, value_enum, default_value = "message")]
    kind: Kind,
    /// Requests in flight per client (1 = no pipelining).
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Source addresses to spread clients over, e.g. 127.0.0.0/28 (loopback only).
    #[arg(long, conflicts_with = "bind")]
    sources: Option<ipnet::Ipv4Net>,
    /// One local address every client connects from, e.g. 127.0.0.77 (any address this
    /// host owns). Default: the operating system chooses.
    #[arg(long, value_name = "ADDR")]
    bind: Option<IpAddr>,
    /// Use only the first M host addresses of --sources.
    #[arg(long, value_name = "M")]
    source_count: Option<usize>,
    /// Idle mode: open and hold N authenticated connections instead of sending operations.
    #[arg(long, value_name = "N")]
    idle: Option<usize>,
    /// Idle mode: seconds to hold the connections once all are open.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    hold: u64,
    /// Idle mode: seconds between each held connection's PINGs (below the server's
    /// timeouts.idle_ms).
    #[arg(long, default_value_t = 20, value_name = "SECS")]
    keepalive: u64,
    /// Idle mode: logins in progress at once.
    #[arg(long, default_value_t = 32, value_name = "N")]
    login_concurrency: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// TLS, trusted as `rampart client` does: --tls alone trusts on first use (recorded in
    /// --known-servers), --ca FILE trusts that CA only.
    #[command(flatten)]
    tls: TlsArgs,
}

pub async fn run(args: LoadArgs) -> Result<ExitCode> {
    let Some(password) = args.password else {
        bail!("set RAMPART_PASSWORD to the password of {}", args.user);
    };
    if args.clients == 0 || args.ops == 0 || args.pipeline == 0 {
        bail!("--clients, --ops and --pipeline must be at least 1");
    }
    let sources: Vec<IpAddr> = match args.sources {
        Some(net) => {
            if !net.network().is_loopback() {
                bail!("--sources must lie inside 127.0.0.0/8, got {net}");
            }
            let take = args.source_count.unwrap_or(4096).min(4096);
            net.hosts().take(take).map(IpAddr::V4).collect()
        }
        None => args.bind.into_iter().collect(),
    };
    let tls = args.tls.options(&args.server)?;
    if let Some(connections) = args.idle {
        if connections == 0 {
            bail!("--idle must be at least 1");
        }
        let spec = IdleSpec {
            server: args.server,
            user: args.user,
            password,
            connections,
            sources,
            concurrency: args.login_concurrency.max(1),
            hold: Duration::from_secs(args.hold),
            keepalive: Duration::from_secs(args.keepalive.max(1)),
            tls,
        };
        return run_idle(spec, args.json).await;
    }
    let spec = LoadSpec {
        to: args.to.unwrap_or_else(|| args.user.clone()),
        server: args.server,
        user: args.user,
        password,
        clients: args.clients,
        ops: args.ops,
        size: args.size,
        kind: match args.kind {
            Kind::Message => LoadKind::Message,
            Kind::File => LoadKind::File,
        },
        pipeline: args.pipeline,
        sources,
        tls,
    };
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(spec.ops);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} ops  {per_sec}  eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    };
    let report = load::run(spec, |done| bar.set_position(done)).await?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} ops acknowledged, {} errors in {:.2} s",
            report.ops, report.errors, report.elapsed_s
        );
        println!(
            "{:.0} ops/s  {:.2} MB/s  p50 {:.3} ms  p99 {:.3} ms  p999 {:.3} ms",
            report.ops_per_s, report.mb_per_s, report.p50_ms, report.p99_ms, report.p999_ms
        );
        if let Some(e) = &report.first_error {
            println!("first error: {}", visible(e, Shape::Line));
        }
    }
    Ok(if report.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Idle mode: opens, holds and closes the connections, then prints the report.
async fn run_idle(spec: IdleSpec, json: bool) -> Result<ExitCode> {
    let sources = spec.sources.len().max(1);
    let bar = if json {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(spec.connections as u64);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} connections  {per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    };
    let report = load::hold_idle(
        spec,
        |done| bar.set_position(done),
        |open| {
            bar.finish_and_clear();
            eprintln!("holding {open} idle connections from {sources} sources");
            let _ = std::io::stderr().flush();
        },
    )
    .await;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} of {} connections held for {:.1} s ({} failed to open, {} lost), opened in {:.1} s",
            report.open, report.requested, report.held_s, report.failed, report.lost, report.open_s
        );
        if let Some(e) = &report.first_error {
            println!("first error: {}", visible(e, Shape::Line));
        }
    }
    Ok(if report.failed == 0 && report.lost == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
