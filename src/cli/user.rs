//! `rampart user ...`: manage accounts directly in a data directory's store, or in the
//! PostgreSQL database the configuration's `store.url` names.
//!
//! Safe next to a running server: these commands only touch `rampart.db`, whose SQLite
//! locking (WAL, busy timeout) serializes them with the server's writes (or PostgreSQL,
//! whose transactions do), and never the blobs or the data-directory lock.

use std::io::{BufRead, IsTerminal};
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
    /// Create a user; reads the password from stdin (one line), or on a terminal asks for it
    /// twice without echo.
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
    /// Change a user's password; reads the new password from stdin (one line), or on a
    /// terminal asks for it twice without echo.
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

/// `data_dir` for a command that reads or changes existing users: it must exist unless the
/// users live in a database elsewhere (`store.url`), so that a mistyped directory is an
/// error, not a new empty store.
fn existing(config: &Config, data_dir: &std::path::Path) -> Result<()> {
    if config.store.url.is_none() && !data_dir.is_dir() {
        bail!(
            "no data directory at {}: give the --data-dir the server uses (rampart user add \
             creates one)",
            data_dir.display()
        );
    }
    Ok(())
}

/// The store the server with this configuration and data directory uses.
fn open_store(config: &Config, data_dir: &std::path::Path) -> Result<std::sync::Arc<dyn Store>> {
    // No free-space floor: an operator may always manage accounts.
    Ok(rampart::server::open_store(config, data_dir, 0)?)
}

/// Reads the password from stdin: one line, without its line ending. On a terminal it is
/// asked for twice, without echo, and must match.
fn read_password(name: &str) -> Result<Vec<u8>> {
    if std::io::stdin().is_terminal() {
        let first = prompt_hidden(&format!("password for {name}: "))?;
        let again = prompt_hidden("again: ")?;
        if first != again {
            bail!("the two passwords differ; nothing was changed");
        }
        return checked(first);
    }
    let mut line = Vec::new();
    std::io::stdin()
        .lock()
        .read_until(b'\n', &mut line)
        .context("cannot read the password from stdin")?;
    checked(line)
}

/// The password typed or piped, without its line ending, if the client can send it.
fn checked(mut line: Vec<u8>) -> Result<Vec<u8>> {
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
    if std::str::from_utf8(&line).is_err() {
        bail!(
            "the password is not valid UTF-8: rampart client reads it as text \
             (RAMPART_PASSWORD), so it could never log in"
        );
    }
    Ok(line)
}

/// Writes `prompt` to stderr and reads one line from the terminal on stdin with echo off.
#[cfg(unix)]
fn prompt_hidden(prompt: &str) -> Result<Vec<u8>> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    let stdin = std::io::stdin();
    eprint!("{prompt}");
    let saved = tcgetattr(&stdin).context("cannot read the terminal's settings")?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    tcsetattr(&stdin, OptionalActions::Now, &quiet)
        .context("cannot turn the terminal's echo off")?;
    let mut line = Vec::new();
    let read = stdin.lock().read_until(b'\n', &mut line);
    // Echo comes back whatever happened to the read.
    let restored = tcsetattr(&stdin, OptionalActions::Now, &saved);
    eprintln!();
    read.context("cannot read the password")?;
    restored.context("cannot turn the terminal's echo back on")?;
    Ok(line)
}

/// Without a way to turn echo off, the password is read as typed.
#[cfg(not(unix))]
fn prompt_hidden(prompt: &str) -> Result<Vec<u8>> {
    eprint!("{prompt}");
    let mut line = Vec::new();
    std::io::stdin()
        .lock()
        .read_until(b'\n', &mut line)
        .context("cannot read the password")?;
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
            let password = read_password(&name)?;
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
            existing(&config, &data_dir)?;
            let store = open_store(&config, &data_dir)?;
            if store.user_id(&name)?.is_none() {
                bail!("unknown user {name}");
            }
            let password = read_password(&name)?;
            let hash = hash_password(&config.auth, &password)?;
            store.set_password(&name, &hash)?;
            println!("password changed for {name}");
        }
        UserCommand::List {
            data_dir,
            config,
            json,
        } => {
            let config = load_config(config.as_ref())?;
            existing(&config, &data_dir)?;
            let store = open_store(&config, &data_dir)?;
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
