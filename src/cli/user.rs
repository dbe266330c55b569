//! `rampart user ...`: manage accounts directly in a data directory's store, or in the
//! PostgreSQL database the configuration's `store.url` names.
//!
//! Safe next to a running server: these commands only touch `rampart.db`, whose SQLite
//! locking (WAL, busy timeout) serializes them with the server's writes (or PostgreSQL,
//! whose transactions do), and never the blobs or the data-directory lock.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use rampart::config::Config;
use rampart::server::auth::hash_password;
use rampart::store::Store;

use super::load_config;
use super::terminal::{visible, Shape};
use super::time::rfc3339_ms;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user; reads the password from stdin (one line).
    #[command(after_help = "Example:\n  echo 's3cret' | rampart user add alice --data-dir ./data")]
    Add {
        /// User name: 1-32 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit.
        name: String,
        /// The server's data directory (created if missing).
        #[arg(long)]
        data_dir: PathBuf,
        /// Configuration file (for the argon2 parameters, and `store.url`).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Change a user's password; reads the new password from stdin (one line).
    Passwd {
        /// User name.
        name: String,
        /// The server's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Configuration file (for the argon2 parameters, and `store.url`).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// List users with their storage usage.
    List {
        /// The server's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Configuration file (for `store.url`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

/// The store the server with this configuration and data directory uses.
fn open_store(config: &Config, data_dir: &std::path::Path) -> Result<std::sync::Arc<dyn Store>> {
    // No free-space floor: an operator may always manage accounts.
    Ok(rampart::server::open_store(config, data_dir, 0)?)
}

/// Reads one line from stdin as the password, without its line ending.
fn read_password() -> Result<Vec<u8>> {
    let mut line = Vec::new();
    std::io::stdin()
        .lock()
        .read_until(b'\n', &mut line)
        .context("cannot read the password from stdin")?;
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    if line.is_empty() {
        bail!("empty password: write the password as one line on stdin");
    }
    if line.len() > rampart::protocol::limits::MAX_PASSWORD {
        bail!(
            "password too long: at most {} bytes",
            rampart::protocol::limits::MAX_PASSWORD
        );
    }
    Ok(line)
}

pub fn run(cmd: UserCommand) -> Result<ExitCode> {
    match cmd {
        UserCommand::Add {
            name,
            data_dir,
            config,
        } => {
            let config = load_config(config.as_ref())?;
            rampart::store::validate_user_name(&name)?;
            let password = read_password()?;
            let store = open_store(&config, &data_dir)?;
            let hash = hash_password(&config.auth, &password)?;
            store.add_user(&name, &hash)?;
            println!("added user {name}");
        }
        UserCommand::Passwd {
            name,
            data_dir,
            config,
        } => {
            let config = load_config(config.as_ref())?;
            let store = open_store(&config, &data_dir)?;
            if store.user_id(&name)?.is_none() {
                bail!("unknown user {name}");
            }
            let password = read_password()?;
            let hash = hash_password(&config.auth, &password)?;
            store.set_password(&name, &hash)?;
            println!("password changed for {name}");
        }
        UserCommand::List {
            data_dir,
            config,
            json,
        } => {
            let store = open_store(&load_config(config.as_ref())?, &data_dir)?;
            let users = store.list_users()?;
            if json {
                for u in &users {
                    println!(
                        "{}",
                        serde_json::json!({
                            "name": u.name,
                            "created_at": rfc3339_ms(u.created_at_ms),
                            "usage_bytes": u.usage_bytes,
                        })
                    );
                }
            } else {
                println!("{:<32}  {:>14}  CREATED", "NAME", "USAGE_BYTES");
                for u in &users {
                    println!(
                        "{:<32}  {:>14}  {}",
                        visible(&u.name, Shape::Line),
                        u.usage_bytes,
                        rfc3339_ms(u.created_at_ms)
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
