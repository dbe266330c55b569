//! Argument definitions and dispatch for the `rampart` binary.

mod activity;
mod cert;
mod client;
mod config;
mod demo;
mod firewall;
mod load;
mod model;
mod scenario;
mod serve;
pub(crate) mod terminal;
mod time;
mod user;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use rampart::config::Config;

const ABOUT: &str = "rampart: a test-bench for server robustness, built around a real, hardened \
messaging server (chat messages, mail with attachments, files) and the attacks against it.";

const EXAMPLES: &str = "\
Examples:
  rampart scenario run scenarios/                       # the attack suite, with pass/fail
  rampart demo                                          # a short end-to-end demo on 127.0.0.1
  echo 's3cret' | rampart user add alice --data-dir ./data
  rampart serve --data-dir ./data --listen 127.0.0.1:7878
  RAMPART_PASSWORD=s3cret rampart client --server 127.0.0.1:7878 --user alice message bob 'hola'
  RAMPART_PASSWORD=s3cret rampart client --server 127.0.0.1:7878 --user bob inbox --json";

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "rampart", version, about = ABOUT, after_help = EXAMPLES)]
pub struct Cli {
    /// Log filter for stderr (e.g. info, debug, rampart=trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hardened server.
    #[command(
        after_help = "Prints \"listening on IP:PORT\" as its first line on stdout, then \
serves until SIGINT or SIGTERM. SIGHUP reloads the --config file without dropping \
connections (see --config) and prints \"reloaded FILE: N applied, M need a restart, connections cut: C\".\n\nExample:\n  rampart serve --data-dir ./data --listen 127.0.0.1:0"
    )]
    Serve(serve::ServeArgs),
    /// Manage user accounts in a data directory (the server may be stopped or running).
    #[command(subcommand)]
    User(user::UserCommand),
    /// Talk to a server as a user; the password comes from RAMPART_PASSWORD.
    Client(client::ClientArgs),
    /// Make TLS certificates.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Check or print the configuration.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Run attack scenarios against the server and check their expectations.
    #[command(subcommand)]
    Scenario(scenario::ScenarioCommand),
    /// Train, evaluate and explain the detection model on feature CSVs.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Export recorded activity as feature CSVs, or count what was recorded.
    #[command(subcommand)]
    Activity(activity::ActivityCommand),
    /// Measure throughput and latency with many clients (acknowledged operations only).
    Load(load::LoadArgs),
    /// List the firewall's decisions, or lift a block.
    #[command(subcommand)]
    Firewall(firewall::FirewallCommand),
    /// Start a server on 127.0.0.1 in a temporary directory, exchange messages, mail and
    /// files, attack it a little, and report what happened.
    Demo(demo::DemoArgs),
}

/// Loads the configuration file if one was given, else the defaults.
pub(crate) fn load_config(path: Option<&PathBuf>) -> Result<Config> {
    match path {
        Some(p) => {
            Config::load(p).with_context(|| format!("invalid configuration {}", p.display()))
        }
        None => Ok(Config::default()),
    }
}

/// `--model FILE` / `--no-model`: which detection model a server scores windows with.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ModelArgs {
    /// Detection model file (from `rampart model train`); the default is the model built
    /// from datasets/train.csv.
    #[arg(long, value_name = "FILE", conflicts_with = "no_model")]
    model: Option<PathBuf>,
    /// Run without the detection model: only the rule signals feed the firewall.
    #[arg(long)]
    no_model: bool,
}

impl ModelArgs {
    /// The chosen model and the name reports give it, or `None` with `--no-model`.
    pub(crate) fn resolve(
        &self,
    ) -> Result<Option<(String, std::sync::Arc<rampart::detect::Model>)>> {
        if self.no_model {
            return Ok(None);
        }
        let (name, model) = match &self.model {
            Some(path) => (
                path.display().to_string(),
                rampart::detect::Model::load(path)
                    .with_context(|| format!("cannot load the model {}", path.display()))?,
            ),
            None => (
                "default".to_owned(),
                rampart::detect::default_model().context("the built-in model is invalid")?,
            ),
        };
        Ok(Some((name, std::sync::Arc::new(model))))
    }
}

/// An error and its causes as one line, joined by ": ", each cause left out when the message
/// before it already ends with it (many errors print their source themselves, so a plain
/// chain said "Connection refused (os error 111): Connection refused (os error 111)").
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    // Colours only on a terminal (and not with NO_COLOR): a log file or a pipe gets plain
    // text, not escape sequences.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").map_or(true, |v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .try_init();
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    init_logging(&cli.log);
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    match cli.command {
        Command::Serve(args) => rt.block_on(serve::run(args)),
        Command::User(cmd) => user::run(cmd),
        Command::Client(args) => rt.block_on(client::run(args)),
        Command::Cert(cmd) => cert::run(cmd),
        Command::Config(cmd) => config::run(cmd),
        Command::Demo(args) => rt.block_on(demo::run(args)),
        Command::Firewall(cmd) => firewall::run(cmd),
        Command::Load(args) => rt.block_on(load::run(args)),
        Command::Activity(cmd) => activity::run(cmd),
        Command::Model(cmd) => model::run(cmd),
        Command::Scenario(cmd) => rt.block_on(scenario::run(cmd)),
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    #[test]
    fn an_error_line_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        // A cause its parent already printed is left out; a new one is joined.
        let e = anyhow::Error::new(io).context("cannot reach 127.0.0.1:1: refused");
        assert_eq!(super::error_line(&e), "cannot reach 127.0.0.1:1: refused");
        let e = e.context("ping failed");
        assert_eq!(
            super::error_line(&e),
            "ping failed: cannot reach 127.0.0.1:1: refused"
        );
        let plain: anyhow::Result<()> = Err(anyhow::anyhow!("inner"));
        let e = plain.context("outer").expect_err("an error");
        assert_eq!(super::error_line(&e), "outer: inner");
    }
}
