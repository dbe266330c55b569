//! `rampart serve`: run the hardened server until SIGINT or SIGTERM; SIGHUP reloads the
//! configuration file.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use rampart::config::Config;
use rampart::server::{Server, ServerError, ServerHandle};
use rampart::store::StoreError;

use super::load_config;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Data directory: SQLite database and blobs (created on first start).
    #[arg(long)]
    data_dir: PathBuf,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Configuration file (TOML); see rampart.example.toml. Defaults apply without it.
    /// SIGHUP re-reads it: limits, timeouts, rates, the [ip] allow and deny lists and the
    /// firewall's weights and thresholds change without dropping connections; a file with
    /// an error is ignored (the running configuration stays), and keys that need a restart
    /// are logged and keep their running values (`rampart config check FILE --against`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key. Overrides [tls] cert.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM). Overrides [tls] key.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plaintext on an address other hosts can reach. Without TLS the server refuses to
    /// listen anywhere but loopback: passwords would cross the network in clear text.
    #[arg(long)]
    insecure_plaintext: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (its own port, never the protocol
    /// port). Overrides [metrics] listen. A non-loopback ADDR is refused unless the
    /// configuration sets metrics.allow_remote = true: the endpoint has no authentication.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    model: super::ModelArgs,
}

/// Serves until the process receives SIGINT or SIGTERM, reloading the configuration on
/// every SIGHUP.
async fn serve_until_stopped(handle: &ServerHandle, args: &ServeArgs) -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => return r.context("cannot listen for SIGINT"),
                _ = term.recv() => return Ok(()),
                _ = hup.recv() => reload(handle, args),
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (handle, args);
        tokio::signal::ctrl_c()
            .await
            .context("cannot listen for ctrl-c")
    }
}

/// Re-reads the configuration file and applies it; on an error the running configuration
/// stays and the error (naming the key) is logged.
#[cfg(unix)]
fn reload(handle: &ServerHandle, args: &ServeArgs) {
    let Some(path) = &args.config else {
        tracing::warn!("SIGHUP: no --config file to reload, nothing changes");
        return;
    };
    tracing::info!(file = %path.display(), "SIGHUP: reloading the configuration");
    let config = match file_config(args) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "configuration not reloaded, the running one stays"
            );
            return;
        }
    };
    // The server logs each change and each key that needs a restart; one line on stdout
    // (beside "listening on") confirms the reload at any log level.
    if let Ok(report) = handle.reload(config) {
        tracing::info!(
            applied = report.applied.len(),
            need_restart = report.restart.len(),
            connections_cut = report.cut,
            "configuration reloaded"
        );
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "reloaded {}: {} applied, {} need a restart, connections cut: {}",
            path.display(),
            report.applied.len(),
            report.restart.len(),
            report.cut
        );
        let _ = out.flush();
    }
}

/// The configuration file (or the defaults) with the command line's overrides applied, so
/// a reload compares like with like.
fn file_config(args: &ServeArgs) -> Result<Config> {
    let mut config = load_config(args.config.as_ref())?;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls.cert = Some(cert.clone());
        config.tls.key = Some(key.clone());
    }
    config.tls.insecure_plaintext |= args.insecure_plaintext;
    if let Some(addr) = args.metrics_listen {
        config.metrics.listen = Some(addr);
    }
    Ok(config)
}

pub async fn run(args: ServeArgs) -> Result<ExitCode> {
    let config = file_config(&args)?;
    // `firewall.model = "off"` is `--no-model` in the configuration file.
    let model = match config.firewall.model {
        rampart::config::ModelMode::Off => None,
        mode => args.model.resolve()?.map(|(name, model)| {
            tracing::info!(
                model = %name,
                mode = mode.as_str(),
                "scoring activity windows with the detection model"
            );
            model
        }),
    };
    let server = match Server::open_with_model(config, &args.data_dir, model) {
        Ok(server) => server,
        // The lock's message already names the directory and its owner's pid.
        Err(ServerError::Store(e @ StoreError::InUse { .. })) => return Err(e.into()),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot start with data directory {}",
                args.data_dir.display()
            )))
        }
    };
    let handle = server.bind(args.listen).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", handle.local_addr())?;
        if let Some(addr) = handle.metrics_addr() {
            writeln!(out, "metrics on http://{addr}/metrics")?;
        }
        out.flush()?;
    }
    serve_until_stopped(&handle, &args).await?;
    tracing::info!("shutting down");
    let metrics = handle.metrics();
    handle.shutdown().await;
    let m = metrics.snapshot();
    eprintln!(
        "stopped: {} connections, {} refused, {} items delivered, {} panics contained",
        m.connections_accepted, m.connections_refused, m.items_delivered, m.panics
    );
    Ok(ExitCode::SUCCESS)
}
