//! `rampart serve`: run the hardened server until SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use rampart::server::{Server, ServerError};
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

/// Resolves when the process receives SIGINT or SIGTERM.
async fn shutdown_signal() -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot listen for SIGINT")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for ctrl-c")?;
    Ok(())
}

pub async fn run(args: ServeArgs) -> Result<ExitCode> {
    let mut config = load_config(args.config.as_ref())?;
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls.cert = Some(cert);
        config.tls.key = Some(key);
    }
    config.tls.insecure_plaintext |= args.insecure_plaintext;
    if let Some(addr) = args.metrics_listen {
        config.metrics.listen = Some(addr);
    }
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
    shutdown_signal().await?;
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
