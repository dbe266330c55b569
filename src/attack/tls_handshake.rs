//! The TLS handshake as the target. Three kinds, for a scenario with `tls = true`:
//!
//! - **tls-handshake-flood**: every slot completes a TLS handshake (the server's key exchange
//!   and signature, its most expensive step per connection) and closes at once, over and
//!   over. The server's answer is its accept rate and per-source caps (refusals at accept are
//!   signals) and its caps on concurrent handshakes.
//! - **tls-slow-handshake**: every slot drips a real ClientHello a few bytes at a time, a
//!   slowloris of the handshake; the server's handshake budget (`[tls]
//!   handshake_timeout_ms`) cuts it and scores a slow frame.
//! - **plaintext-on-tls**: every slot sends a plaintext rampart AUTH frame to the TLS port;
//!   the server refuses it at the first byte, before any cryptography, with a plaintext
//!   ERROR.
//!
//! None of them verifies the server's certificate ([`crate::tls::attacker_client_config`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::canary::{Got, Inbox};
use super::net::{abort, PROBE_WAIT};
use super::run::{bump, run_slots, Counts, Env};
use super::wire::{error_code, request_bytes, Ids};
use crate::protocol::{ErrorCode, Kind, Password, Request};

/// Longest wait for the server's answer to a plaintext frame or for the end of a cut
/// connection.
const REPLY_WAIT: Duration = Duration::from_secs(10);

/// tls-handshake-flood: complete handshakes, closing each connection right after.
pub(crate) async fn flood(env: Arc<Env>) {
    if env.tls.is_none() {
        env.note("the run is not TLS: nothing to flood");
        return;
    }
    run_slots(&env, flood_slot).await;
}

async fn flood_slot(env: Arc<Env>, slot: usize) {
    let mut rng = env.rng(slot as u64);
    while env.live() {
        // `open_next` completes the handshake (and counts a failed one).
        let Some((conn, _)) = env.open_next(&mut rng).await else {
            break;
        };
        env.merge(&Counts::from([("handshakes completed", 1)]));
        // No pause: a flood reconnects at once. A refusal or a failed handshake already
        // backs off inside `open_next`, so a cut slot does not spin.
        conn.abort();
    }
}

/// tls-slow-handshake: a real ClientHello, `bytes_per_write` bytes every `interval`.
pub(crate) async fn slow(env: Arc<Env>, interval: Duration, bytes_per_write: usize) {
    let hello = match client_hello(&env) {
        Ok(h) => h,
        Err(e) => {
            env.note(format!("cannot build a ClientHello: {e}"));
            return;
        }
    };
    env.note(format!(
        "ClientHello of {} bytes, {} byte(s) every {} ms",
        hello.len(),
        bytes_per_write,
        interval.as_millis()
    ));
    let hello = Arc::new(hello);
    run_slots(&env, move |env, slot| {
        slow_slot(env, slot, Arc::clone(&hello), interval, bytes_per_write)
    })
    .await;
}

/// The bytes rustls sends first for a connection to the target: a ClientHello record.
fn client_hello(env: &Env) -> Result<Vec<u8>, String> {
    let config = match &env.tls {
        Some(c) => Arc::clone(c),
        None => crate::tls::attacker_client_config().map_err(|e| e.to_string())?,
    };
    let name = rustls::pki_types::ServerName::IpAddress(env.target.ip().into());
    let mut conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

async fn slow_slot(
    env: Arc<Env>,
    slot: usize,
    hello: Arc<Vec<u8>>,
    interval: Duration,
    bytes_per_write: usize,
) {
    let mut rng = env.rng(slot as u64);
    while env.live() {
        let source = env.next_source();
        let Some(stream) = env.open_tcp(source, &mut rng, PROBE_WAIT).await else {
            continue;
        };
        let opened = Instant::now();
        let (mut rd, mut wr) = stream.into_split();
        let mut inbox = Inbox::new(source);
        let mut counts = Counts::new();
        let mut chunks = hello.chunks(bytes_per_write.max(1));
        let mut next_write = Instant::now();
        let mut sent = 0usize;
        let end = loop {
            tokio::select! {
                // The server sends nothing before the whole ClientHello, so any read result
                // is the end: a close (the budget ran out), a reset, or a halt.
                got = inbox.next(&mut rd, &env, Duration::from_secs(3600)) => match got {
                    Got::Frame(_) | Got::Timeout => continue,
                    end => break end,
                },
                _ = tokio::time::sleep_until(next_write) => {
                    let Some(chunk) = chunks.next() else {
                        // The whole ClientHello is out: wait for the server's end.
                        next_write += Duration::from_secs(3600);
                        bump(&mut counts, "whole ClientHello sent");
                        continue;
                    };
                    if env.write(&mut wr, chunk, 0).await.is_err() {
                        break Got::Reset;
                    }
                    sent += chunk.len();
                    next_write += interval;
                }
            }
        };
        bump(&mut counts, "slow handshakes");
        *counts.entry("ClientHello bytes dripped").or_insert(0) += sent as u64;
        if !matches!(end, Got::Halted) {
            let held = opened.elapsed();
            let label = if held < Duration::from_secs(1) {
                "handshake cut within 1 s"
            } else {
                "handshake cut after 1 s or more"
            };
            bump(&mut counts, label);
        }
        env.merge(&counts);
        inbox.finish(&env, &end);
        env.pace(opened, &mut rng).await;
    }
}

/// plaintext-on-tls: an AUTH frame in plaintext on a fresh connection, every `interval` per
/// slot.
pub(crate) async fn plaintext(env: Arc<Env>, interval: Duration) {
    run_slots(&env, move |env, slot| plaintext_slot(env, slot, interval)).await;
}

async fn plaintext_slot(env: Arc<Env>, slot: usize, interval: Duration) {
    let mut rng = env.rng(slot as u64);
    let (user, pw) = env.account.clone();
    let auth = Request::Auth {
        user,
        password: Password(Bytes::copy_from_slice(pw.as_bytes())),
    };
    while env.live() {
        let source = env.next_source();
        let Some(mut stream) = env.open_tcp(source, &mut rng, PROBE_WAIT).await else {
            continue;
        };
        let opened = Instant::now();
        let mut counts = Counts::new();
        let bytes = request_bytes(Ids::new().next(), &auth);
        let mut inbox = Inbox::new(source);
        let end = match env.write(&mut stream, &bytes, 1).await {
            Err(_) => Got::Reset,
            Ok(()) => loop {
                match inbox.next(&mut stream, &env, REPLY_WAIT).await {
                    Got::Frame(f) => {
                        let label = match (f.kind, error_code(&f)) {
                            (Kind::Error, Some(ErrorCode::BadFrame)) => "told the port speaks TLS",
                            (Kind::AuthOk, _) => "LOGGED IN OVER PLAINTEXT",
                            _ => "other reply",
                        };
                        bump(&mut counts, label);
                    }
                    end => break end,
                }
            },
        };
        let _ = stream.shutdown().await;
        abort(stream);
        env.merge(&counts);
        inbox.finish(&env, &end);
        if !env.sleep_until(opened + interval).await {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::attack::testing::{bench_tls, config, TestResult};

    #[tokio::test]
    async fn plaintext_on_the_tls_port_is_told_and_never_logs_in() -> TestResult {
        let b = bench_tls(config()).await?;
        let (report, env) = b
            .run_env(
                "kind = \"plaintext-on-tls\"\nconnections = 2\ninterval_ms = 100\nsources = \"127.0.7.0/30\"\n",
                1.0,
            )
            .await?;
        assert!(env.count("told the port speaks TLS") >= 4, "{report:?}");
        assert_eq!(env.count("LOGGED IN OVER PLAINTEXT"), 0, "{report:?}");
        assert_eq!(report.canary_leaks, 0, "{report:?}");
        b.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn handshake_flood_completes_handshakes() -> TestResult {
        let mut cfg = config();
        cfg.firewall.enabled = false;
        let b = bench_tls(cfg).await?;
        let (report, env) = b
            .run_env(
                "kind = \"tls-handshake-flood\"\nconnections = 4\nsources = \"127.0.7.8/30\"\n",
                1.0,
            )
            .await?;
        assert!(env.count("handshakes completed") >= 4, "{report:?}");
        b.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn a_dripped_client_hello_is_cut_by_the_handshake_budget() -> TestResult {
        let mut cfg = config();
        cfg.firewall.enabled = false;
        cfg.tls.handshake_timeout_ms = 300;
        let b = bench_tls(cfg).await?;
        let (report, env) = b
            .run_env(
                "kind = \"tls-slow-handshake\"\nconnections = 2\ninterval_ms = 100\nsources = \"127.0.7.16/30\"\n",
                1.5,
            )
            .await?;
        assert!(env.count("handshake cut within 1 s") >= 2, "{report:?}");
        assert_eq!(env.count("whole ClientHello sent"), 0, "{report:?}");
        b.stop().await;
        Ok(())
    }
}
