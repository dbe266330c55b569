//! `rampart cert generate`: a self-signed certificate and key for `serve --tls-cert/--tls-key`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
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
            for name in &names {
                if !host_name(name) {
                    bail!(
                        "--name {name:?} is neither an IP address nor a DNS name (letters, \
                         digits and '-' in dot-separated labels, a leading '*.' allowed)"
                    );
                }
            }
            let g = rampart::tls::generate_self_signed(&names, &out)?;
            println!("certificate {}", g.cert.display());
            println!("key {}", g.key.display());
            println!("fingerprint {}", g.fingerprint);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Whether a client could connect by `name`: an IP address, or a DNS name of at most 253
/// bytes whose labels are 1 to 63 letters, digits and inner hyphens (the first may be `*`).
fn host_name(name: &str) -> bool {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_names_are_addresses_or_dns_names() {
        for ok in [
            "localhost",
            "127.0.0.1",
            "::1",
            "a-b.example.com",
            "*.example.com",
            "x.",
        ] {
            assert!(super::host_name(ok), "{ok}");
        }
        for bad in ["", "bad name!", "-a.com", "a..b", "*", "a/b", "é.com"] {
            assert!(!super::host_name(bad), "{bad}");
        }
    }
}
