//! `rampart activity ...`: export recorded activity as feature CSVs, or summarize it.
//!
//! Safe next to a running server: reads see a consistent snapshot of `activity.db` (WAL)
//! while the recorder keeps writing.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use rampart::activity::export::{self, ActivityStats, ExportSummary, EVENT_NAMES};
use rampart::activity::features::{format_window, parse_window};

use super::time::rfc3339_ms;

#[derive(Debug, Subcommand)]
pub enum ActivityCommand {
    /// Write one row of features per (source, window) to a CSV file, with a label column
    /// (the source's attack kind from a scenario recording, or "benign").
    #[command(
        after_help = "Columns: source,window_start_ms,window_ms,<features>,label,group; every \
feature is documented in docs/DETECTION.md.\n\nA fleet's windows (each server's detector ships \
the windows it scores to the fleet's PostgreSQL database) are read with --store-url instead of \
--data-dir: one row per server that saw a source in a window, every source benign.\n\n\
Examples:\n  rampart activity export --data-dir ./run1 --out train.csv --window 1s\n  \
rampart activity export --store-url postgres://rampart@db/rampart --out fleet.csv"
    )]
    Export(ExportArgs),
    /// Count the recorded events by type, and the sources and labels.
    #[command(after_help = "Example:\n  rampart activity stats --data-dir ./run1")]
    Stats(StatsArgs),
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The data directory holding activity.db.
    #[arg(
        long,
        required_unless_present = "store_url",
        conflicts_with = "store_url"
    )]
    data_dir: Option<PathBuf>,
    /// Export the windows the servers of a fleet shared, from their PostgreSQL database (the
    /// servers' `store.url`), instead of one data directory's events.
    #[arg(long, value_name = "URL")]
    store_url: Option<String>,
    /// The CSV file to write (replaced if it exists).
    #[arg(long)]
    out: PathBuf,
    /// Window length: a whole number of ms, s or m (500ms, 1s, 10s, 1m).
    #[arg(long, default_value = "1s", value_parser = parse_window)]
    window: Duration,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The data directory holding activity.db.
    #[arg(long)]
    data_dir: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs an `activity` subcommand.
pub fn run(cmd: ActivityCommand) -> Result<ExitCode> {
    match cmd {
        ActivityCommand::Export(args) => match (&args.data_dir, &args.store_url) {
            (Some(dir), _) => {
                let summary = export::export_csv(dir, &args.out, args.window)
                    .with_context(|| format!("cannot export {}", dir.display()))?;
                if args.json {
                    println!("{}", serde_json::to_string(&summary)?);
                } else {
                    print_export(&summary);
                }
            }
            (None, Some(url)) => export_fleet(url, &args)?,
            (None, None) => anyhow::bail!("give --data-dir DIR or --store-url URL"),
        },
        ActivityCommand::Stats(args) => {
            let stats = export::stats(&args.data_dir)
                .with_context(|| format!("cannot read {}", args.data_dir.display()))?;
            if args.json {
                println!("{}", serde_json::to_string(&stats)?);
            } else {
                print_stats(&stats);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "postgres")]
fn export_fleet(url: &str, args: &ExportArgs) -> Result<()> {
    let fleet = rampart::fleet::export_windows(url, &args.out, args.window)?;
    if args.json {
        println!("{}", serde_json::to_string(&fleet)?);
        return Ok(());
    }
    let s = &fleet.summary;
    println!(
        "wrote {} rows ({} sources, {} servers, window {}) to {}",
        s.rows,
        s.sources,
        fleet.servers,
        format_window(Duration::from_millis(s.window_ms)),
        s.out.display()
    );
    if fleet.other_window > 0 || fleet.other_schema > 0 {
        println!(
            "note: left out {} windows of another length and {} of another feature schema",
            fleet.other_window, fleet.other_schema
        );
    }
    Ok(())
}

#[cfg(not(feature = "postgres"))]
fn export_fleet(_url: &str, _args: &ExportArgs) -> Result<()> {
    anyhow::bail!(
        "this rampart was built without the postgres feature: --store-url is not available"
    )
}

fn print_export(s: &ExportSummary) {
    println!(
        "wrote {} rows ({} sources, {} events, window {}) to {}",
        s.rows,
        s.sources,
        s.events,
        format_window(Duration::from_millis(s.window_ms)),
        s.out.display()
    );
    if !s.rows_by_label.is_empty() {
        let labels: Vec<String> = s
            .rows_by_label
            .iter()
            .map(|(label, n)| format!("{label} {n}"))
            .collect();
        println!("rows by label: {}", labels.join(", "));
    }
    let x = &s.extractor;
    if x.late_events > 0 || x.evicted_sources > 0 || x.dropped_windows > 0 {
        println!(
            "note: {} late events counted in a later window, {} sources evicted, {} windows dropped",
            x.late_events, x.evicted_sources, x.dropped_windows
        );
    }
}

fn print_stats(s: &ActivityStats) {
    println!("events    {}", s.events);
    if let (Some(first), Some(last)) = (s.first_ms, s.last_ms) {
        println!("first     {}", rfc3339_ms(first));
        println!("last      {}", rfc3339_ms(last));
    }
    let labelled: u64 = s.labels.values().sum();
    println!("sources   {} ({labelled} labelled)", s.sources);
    println!();
    println!("{:<20} {:>12}", "event", "count");
    for name in EVENT_NAMES {
        let n = s.by_event.get(name).copied().unwrap_or(0);
        println!("{name:<20} {n:>12}");
    }
    if !s.labels.is_empty() {
        println!();
        println!("{:<20} {:>12}", "label", "sources");
        for (label, n) in &s.labels {
            println!("{label:<20} {n:>12}");
        }
    }
}
