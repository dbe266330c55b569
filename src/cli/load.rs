//! `rampart load`: a load generator whose every counted operation was acknowledged.

use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use rampart::load::{self, LoadKind, LoadSpec};

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
RAMPART_PASSWORD=pw rampart load --server 127.0.0.1:7878 --user bench --clients 64 --ops 500000 --pipeline 16 --json"
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
    #[arg(long)]
    sources: Option<ipnet::Ipv4Net>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
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
            net.hosts().take(4096).map(IpAddr::V4).collect()
        }
        None => Vec::new(),
    };
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
    let report = load::run(spec, |done| bar.set_position(done)).await;
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
            println!("first error: {e}");
        }
    }
    Ok(if report.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
