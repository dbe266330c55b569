//! probe: what a scanner sends to an open port. Each connection sends one of an HTTP GET, a
//! TLS 1.3 ClientHello (offering 1.2 too, as browsers do) or an SSH client banner, in turn,
//! reads whatever comes back until the server closes, and waits `interval_ms` before the
//! next. A rampart server rejects each on its first byte with ERROR BAD_FRAME (id 0).

use std::sync::Arc;
use std::time::Duration;

use bytes::BufMut;
use rand::rngs::StdRng;
use rand::RngCore;
use tokio::time::Instant;

use super::canary::{Got, Inbox};
use super::run::{bump, run_slots, Counts, Env};

/// How long a probe waits for the server to answer and close.
const ANSWER_WAIT: Duration = Duration::from_secs(1);

/// The SSH client identification string (RFC 4253, 4.2).
pub(crate) const SSH_BANNER: &[u8] = b"SSH-2.0-OpenSSH_9.6\r\n";

/// An HTTP/1.1 request as curl sends it.
pub(crate) fn http_get(host: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n")
        .into_bytes()
}

/// A realistic TLS ClientHello: record version 0x0301, legacy version 0x0303, TLS 1.3 and
/// 1.2 cipher suites, SNI, supported versions 1.3 and 1.2, groups, signature algorithms and
/// an X25519 key share. Random parts come from `rng`.
pub(crate) fn tls_client_hello(host: &str, rng: &mut StdRng) -> Vec<u8> {
    let mut random = [0u8; 32];
    rng.fill_bytes(&mut random);
    let mut session = [0u8; 32];
    rng.fill_bytes(&mut session);
    let mut key = [0u8; 32];
    rng.fill_bytes(&mut key);

    let mut ext = Vec::new();
    // server_name
    let name = host.as_bytes();
    let mut sni = Vec::new();
    sni.put_u16(name.len() as u16 + 3);
    sni.put_u8(0);
    sni.put_u16(name.len() as u16);
    sni.put_slice(name);
    put_ext(&mut ext, 0x0000, &sni);
    // ec_point_formats: uncompressed
    put_ext(&mut ext, 0x000b, &[1, 0]);
    // supported_groups: x25519, secp256r1, secp384r1
    put_ext(
        &mut ext,
        0x000a,
        &[0, 6, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18],
    );
    // signature_algorithms
    let sigs: [u16; 8] = [
        0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
    ];
    let mut sig = Vec::new();
    sig.put_u16((sigs.len() * 2) as u16);
    for s in sigs {
        sig.put_u16(s);
    }
    put_ext(&mut ext, 0x000d, &sig);
    // application_layer_protocol_negotiation: h2, http/1.1
    put_ext(&mut ext, 0x0010, b"\x00\x0c\x02h2\x08http/1.1");
    // supported_versions: TLS 1.3, TLS 1.2
    put_ext(&mut ext, 0x002b, &[4, 0x03, 0x04, 0x03, 0x03]);
    // psk_key_exchange_modes: psk_dhe_ke
    put_ext(&mut ext, 0x002d, &[1, 1]);
    // key_share: one X25519 share
    let mut share = Vec::new();
    share.put_u16(2 + 2 + 32);
    share.put_u16(0x001d);
    share.put_u16(32);
    share.put_slice(&key);
    put_ext(&mut ext, 0x0033, &share);

    let suites: [u16; 9] = [
        0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8,
    ];
    let mut hello = Vec::new();
    hello.put_u16(0x0303);
    hello.put_slice(&random);
    hello.put_u8(32);
    hello.put_slice(&session);
    hello.put_u16((suites.len() * 2) as u16);
    for s in suites {
        hello.put_u16(s);
    }
    hello.put_slice(&[1, 0]);
    hello.put_u16(ext.len() as u16);
    hello.put_slice(&ext);

    let mut handshake = Vec::new();
    handshake.put_u8(1);
    let len = hello.len() as u32;
    handshake.put_slice(&len.to_be_bytes()[1..]);
    handshake.put_slice(&hello);

    let mut record = Vec::new();
    record.put_slice(&[0x16, 0x03, 0x01]);
    record.put_u16(handshake.len() as u16);
    record.put_slice(&handshake);
    record
}

fn put_ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    out.put_u16(kind);
    out.put_u16(data.len() as u16);
    out.put_slice(data);
}

pub(crate) async fn run(env: Arc<Env>, interval: Duration) {
    run_slots(&env, move |env, slot| slot_loop(env, slot, interval)).await;
}

async fn slot_loop(env: Arc<Env>, slot: usize, interval: Duration) {
    let mut rng = env.rng(slot as u64);
    let host = env.target.to_string();
    let mut n = slot;
    while env.live() {
        let which = n % 3;
        n = n.wrapping_add(1);
        let Some((stream, source)) = env.open_next(&mut rng).await else {
            break;
        };
        let opened = Instant::now();
        let (label, bytes): (&'static str, Vec<u8>) = match which {
            0 => ("probe: http", http_get(&host)),
            1 => ("probe: tls", tls_client_hello("localhost", &mut rng)),
            _ => ("probe: ssh", SSH_BANNER.to_vec()),
        };
        let mut counts = Counts::new();
        bump(&mut counts, label);
        env.merge(&counts);
        let (mut rd, mut wr) = stream.into_split();
        let mut inbox = Inbox::new(source);
        // The connection alone is what any client does; the attack is what it sends.
        env.attacking(source);
        let end = if env.write(&mut wr, &bytes, 0).await.is_err() {
            Got::Reset
        } else {
            loop {
                match inbox.next(&mut rd, &env, ANSWER_WAIT).await {
                    Got::Frame(_) => continue,
                    end => break end,
                }
            }
        };
        inbox.finish(&env, &end);
        drop(wr);
        env.pace(opened, &mut rng).await;
        if !env.sleep(interval).await {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::attack::testing::{bench, config, TestResult};

    #[test]
    fn client_hello_lengths_add_up() {
        let mut rng = StdRng::seed_from_u64(1);
        let hello = tls_client_hello("localhost", &mut rng);
        assert_eq!(&hello[..3], &[0x16, 0x03, 0x01]);
        let record_len = u16::from_be_bytes([hello[3], hello[4]]) as usize;
        assert_eq!(hello.len(), 5 + record_len);
        assert_eq!(hello[5], 1, "handshake type client_hello");
        let hs_len = u32::from_be_bytes([0, hello[6], hello[7], hello[8]]) as usize;
        assert_eq!(record_len, 4 + hs_len);
        assert_eq!(&hello[9..11], &[0x03, 0x03]);
    }

    #[tokio::test]
    async fn probes_are_rejected_on_their_first_byte() -> TestResult {
        let mut cfg = config();
        cfg.firewall.enabled = false;
        let b = bench(cfg).await?;
        let (report, env) = b
            .run_env(
                "kind = \"probe\"\nconnections = 3\ninterval_ms = 50\nsources = \"127.0.11.0/30\"\n",
                1.0,
            )
            .await?;
        for label in ["probe: http", "probe: tls", "probe: ssh"] {
            assert!(env.count(label) >= 1, "{label}: {report:?}");
        }
        let probes = env.count("probe: http") + env.count("probe: tls") + env.count("probe: ssh");
        // Every probe is answered with BAD_FRAME and cut (the last ones may be interrupted by
        // the end of the run).
        assert!(env.count("conn cut: bad_frame") + 3 >= probes, "{report:?}");
        assert!(env.count("bad_frame") + 3 >= probes, "{report:?}");
        b.stop().await;
        Ok(())
    }
}
