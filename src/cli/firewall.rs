//! `rampart firewall ...`: the firewall's stored decisions, and lifting a block.
//!
//! Meant to run next to a running server: both go through `activity.db` (SQLite, WAL),
//! which the server polls for unblock rows.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use rampart::activity::{db, now_ms};

use super::time::rfc3339_ms;

#[derive(Debug, Subcommand)]
pub enum FirewallCommand {
    /// Show the blocks in force (or, with --all, every decision) with their reasons.
    #[command(after_help = "Example:\n  rampart firewall list --data-dir ./data --all --json")]
    List {
        /// The server's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Every decision ever stored, oldest first, not only the blocks in force.
        #[arg(long)]
        all: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Lift the block on an address; a running server applies it within a second. With a
    /// configuration whose `store.url` names a fleet's database, every server of the fleet
    /// does.
    #[command(
        after_help = "Examples:\n  rampart firewall unblock 127.0.1.7 --data-dir ./data\n  rampart firewall unblock 127.0.1.7 --data-dir ./data --config fleet.toml"
    )]
    Unblock {
        /// The blocked address.
        ip: IpAddr,
        /// The server's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Configuration file (for `store.url`: the fleet's database).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// The activity database of `data_dir`, which must already exist: a mistyped directory is an
/// error, not a new empty database that lists nothing and lifts nothing.
fn open_existing(data_dir: &std::path::Path) -> Result<rusqlite::Connection> {
    let file = db::path(data_dir);
    if !file.is_file() {
        bail!(
            "no activity database at {}: give the --data-dir of a server that has run",
            file.display()
        );
    }
    db::open(data_dir).context("cannot open the activity database")
}

pub fn run(cmd: FirewallCommand) -> Result<ExitCode> {
    match cmd {
        FirewallCommand::List {
            data_dir,
            all,
            json,
        } => {
            let conn = open_existing(&data_dir)?;
            if all {
                for d in db::decisions(&conn)? {
                    if json {
                        println!("{}", serde_json::to_string(&d)?);
                    } else {
                        println!(
                            "{}  {:<12}  {:<24}  {:>7}s  {}",
                            rfc3339_ms(d.t_ms),
                            d.action,
                            d.source,
                            d.duration_s,
                            d.reason
                        );
                    }
                }
            } else {
                let blocks = db::active_blocks(&conn, now_ms())?;
                if !json {
                    println!("{} block(s) in force", blocks.len());
                }
                for (source, left, reason) in blocks {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"source": source, "seconds_left": left, "reason": reason})
                        );
                    } else {
                        println!("{source:<24}  {left:>7}s left  {reason}");
                    }
                }
            }
        }
        FirewallCommand::Unblock {
            ip,
            data_dir,
            config,
        } => {
            let config = super::load_config(config.as_ref())?;
            if let Some(url) = &config.store.url {
                let source = rampart::guard::SourceKey::from_ip(ip, config.ip.ipv6_prefix);
                #[cfg(feature = "postgres")]
                rampart::fleet::unblock(url, source)
                    .context("cannot write the unblock to the fleet's database")?;
                #[cfg(not(feature = "postgres"))]
                let _ = (url, source);
                println!("unblocked {source} on every server of the fleet");
            }
            let conn = open_existing(&data_dir)?;
            let key = rampart::guard::SourceKey::from_ip(ip, config.ip.ipv6_prefix).to_string();
            let blocked = db::active_blocks(&conn, now_ms())?
                .iter()
                .any(|(source, _, _)| *source == ip.to_string() || *source == key);
            db::insert_decision(
                &conn,
                now_ms(),
                &ip.to_string(),
                "unblock",
                0,
                0.0,
                "unblocked by an operator (rampart firewall unblock)",
            )?;
            if blocked {
                println!("unblocked {ip}");
            } else {
                println!(
                    "{ip} had no block in force here; recorded an unblock anyway (a running \
                     server lifts any block it holds on it within a second)"
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
