//! `rampart config`: check a configuration file (and what reloading it would change), or
//! print the defaults.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

use rampart::config::reload::{diff, flatten_table, is_live};
use rampart::config::Config;

use super::load_config;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Parse and check a configuration file. Prints "ok" on stdout, or an error naming the
    /// key and the reason and exits with status 1.
    #[command(
        after_help = "Without --against, stdout is just \"ok\", and the keys set in \
FILE that need a restart to change (a reload keeps their running values) are listed on \
stderr. With --against RUNNING_FILE (the file \
the server runs with), stdout lists every key whose value differs, each marked \"reload\" (applied by \
SIGHUP) or \"restart\" (kept until the server restarts). Options given to `rampart serve` on \
the command line (--tls-cert, --tls-key, --insecure-plaintext) are not in either file and are \
not compared.\n\nExamples:\n  rampart config check new.toml\n  rampart config check new.toml \
--against /etc/rampart.toml"
    )]
    Check {
        /// The TOML file to check.
        file: PathBuf,
        /// The configuration the server runs with: list the keys FILE changes and which of
        /// them need a restart.
        #[arg(long, value_name = "RUNNING_FILE")]
        against: Option<PathBuf>,
    },
    /// Print the defaults as TOML.
    Defaults,
}

/// Runs a `rampart config` command.
pub fn run(cmd: ConfigCommand) -> Result<ExitCode> {
    match cmd {
        ConfigCommand::Check { file, against } => {
            let new = load_config(Some(&file))?;
            // `serve` loads the certificate and key at start: a file that is missing or is
            // not what it should be fails here too, not only there.
            if let (Some(cert), Some(key)) = (&new.tls.cert, &new.tls.key) {
                let min = rampart::tls::MinVersion::parse(&new.tls.min_version)?;
                rampart::tls::server_config(cert, key, min).context("tls.cert and tls.key")?;
            }
            println!("ok");
            match against {
                Some(running) => print_changes(&load_config(Some(&running))?, &new),
                None => print_restart_only(&file)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        ConfigCommand::Defaults => {
            print!("{}", toml::to_string_pretty(&Config::default())?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Lists the keys that differ between the running configuration and the new one.
fn print_changes(running: &Config, new: &Config) {
    let changes = diff(running, new);
    if changes.is_empty() {
        println!("no key differs");
        return;
    }
    for c in &changes {
        let how = if c.live { "reload" } else { "restart" };
        println!("{how:<8}{c}");
    }
    let restart = changes.iter().filter(|c| !c.live).count();
    println!(
        "{} keys differ: {} applied by a reload, {restart} need a restart",
        changes.len(),
        changes.len() - restart
    );
}

/// Lists the keys set in `file` that a reload does not apply, on stderr: stdout stays the
/// bare verdict "ok" that scripts check.
fn print_restart_only(file: &PathBuf) -> Result<()> {
    // Already parsed and checked as a Config; read again for the keys it sets itself.
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("cannot parse {}", file.display()))?;
    let keys: Vec<String> = flatten_table(table)
        .into_keys()
        .filter(|k| !is_live(k))
        .collect();
    if keys.is_empty() {
        eprintln!("every key set here is applied by a reload (SIGHUP)");
    } else {
        eprintln!("keys set here that need a restart to change (a reload keeps them):");
        for k in keys {
            eprintln!("  {k}");
        }
    }
    Ok(())
}
