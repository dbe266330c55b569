//! `rampart cert generate`: a self-signed certificate and key for `serve --tls-cert/--tls-key`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Write a self-signed certificate (cert.pem) and its key (key.pem, mode 0600) to a
    /// directory, for tests and small deployments.
    #[command(
        after_help = "Clients trust it with `rampart client --tls --ca DIR/cert.pem`, or \
on first use with `rampart client --tls` (the fingerprint printed here is the one they record).\n\n\
Example:\n  rampart cert generate --name localhost --name 127.0.0.1 --out ./tls\n  \
rampart serve --data-dir ./data --tls-cert ./tls/cert.pem --tls-key ./tls/key.pem"
    )]
    Generate {
        /// A DNS name or IP address the certificate is for (repeatable).
        #[arg(long = "name", required = true, value_name = "HOST")]
        names: Vec<String>,
        /// Directory to write cert.pem and key.pem to (created if needed; existing files are
        /// never overwritten).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

pub fn run(cmd: CertCommand) -> Result<ExitCode> {
    match cmd {
        CertCommand::Generate { names, out } => {
            let g = rampart::tls::generate_self_signed(&names, &out)?;
            println!("certificate {}", g.cert.display());
            println!("key {}", g.key.display());
            println!("fingerprint {}", g.fingerprint);
            Ok(ExitCode::SUCCESS)
        }
    }
}
