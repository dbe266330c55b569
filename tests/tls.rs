//! TLS on the protocol port: a client that trusts the server's CA works end to end, a wrong
//! CA and a changed certificate under trust on first use are refused, plaintext is refused
//! on a TLS port and on a non-loopback plaintext listener, and the handshake's time budget
//! and caps hold against slow and piled-up ClientHellos, and a TLS peer that never reads is
//! closed despite the bytes the TLS layer still holds.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;

use common::{
    drain, eventually, raw_connect, send_raw, start_server_with, test_config, within, TestResult,
};
use rampart::client::{Client, ClientError, ClientOptions, TlsOptions};
use rampart::config::Config;
use rampart::protocol::{encode_request, ErrorCode, Kind, Password, Request, HEADER_LEN};
use rampart::server::{Server, ServerError};
use rampart::tls::{
    attacker_client_config, generate_self_signed, ClientTrust, Generated, MinVersion,
};

fn cert(dir: &Path) -> Generated {
    generate_self_signed(&["localhost".into(), "127.0.0.1".into()], dir).expect("certificate")
}

fn tls_config(g: &Generated) -> Config {
    let mut c = test_config();
    c.tls.cert = Some(g.cert.clone());
    c.tls.key = Some(g.key.clone());
    c
}

fn opts(trust: &ClientTrust, server: &common::TestServer) -> ClientOptions {
    let tls = TlsOptions::new(trust, &server.target(), MinVersion::Tls13).expect("client TLS");
    ClientOptions {
        tls: Some(tls),
        request_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trusts_the_ca_works_and_a_wrong_ca_is_refused() -> TestResult {
    within(async {
        let dir = tempfile::tempdir()?;
        let good = cert(&dir.path().join("good"));
        let other = cert(&dir.path().join("other"));
        let server = start_server_with(tls_config(&good)).await;

        let trust = ClientTrust::Ca(good.cert.clone());
        let mut alice =
            Client::login(server.target(), "alice", b"alice-pw", opts(&trust, &server)).await?;
        let id = alice.send_message("bob", "over TLS").await?;
        let mut bob =
            Client::login(server.target(), "bob", b"bob-pw", opts(&trust, &server)).await?;
        let item = bob.fetch(id).await?;
        assert_eq!(item.id, id);
        alice.bye().await?;
        bob.bye().await?;
        assert!(server.handle.metrics().snapshot().tls_handshakes >= 2);

        let wrong = ClientTrust::Ca(other.cert.clone());
        match Client::login(server.target(), "alice", b"alice-pw", opts(&wrong, &server)).await {
            Err(ClientError::Tls { source, .. }) => {
                assert!(source.to_string().contains("certificate"), "{source}");
            }
            other => panic!("expected a TLS error, got {other:?}"),
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_use_trusts_once_and_a_changed_certificate_is_refused() -> TestResult {
    within(async {
        let dir = tempfile::tempdir()?;
        let first = cert(&dir.path().join("first"));
        let second = cert(&dir.path().join("second"));
        let known = dir.path().join("known_servers");
        let trust = ClientTrust::FirstUse(known.clone());

        let server = start_server_with(tls_config(&first)).await;
        let c = Client::login(server.target(), "alice", b"alice-pw", opts(&trust, &server)).await?;
        c.bye().await?;
        let text = std::fs::read_to_string(&known)?;
        assert!(
            text.contains(&server.target()) && text.contains(&first.fingerprint),
            "{text}"
        );
        let c = Client::login(server.target(), "alice", b"alice-pw", opts(&trust, &server)).await?;
        c.bye().await?;
        let addr = server.addr;
        server.handle.shutdown().await;

        // Another certificate where the known-servers file names the first: refused, both
        // fingerprints shown. (The second server listens elsewhere; the file is keyed by the
        // name the client was given, which is what a replaced server at the same address
        // presents to it.)
        let config = tls_config(&second);
        let dir2 = tempfile::tempdir()?;
        let other = Server::open(config.clone(), dir2.path())?;
        common::add_users(&*other.store(), &config);
        let handle = other.bind("127.0.0.1:0".parse()?).await?;
        let tls = TlsOptions::new(&trust, &addr.to_string(), MinVersion::Tls13)?;
        let o = ClientOptions {
            tls: Some(tls),
            ..ClientOptions::default()
        };
        match Client::login(handle.local_addr().to_string(), "alice", b"alice-pw", o).await {
            Err(ClientError::Tls { source, .. }) => {
                let msg = source.to_string();
                assert!(msg.contains(&first.fingerprint), "{msg}");
                assert!(msg.contains(&second.fingerprint), "{msg}");
            }
            other => panic!("expected a changed-certificate refusal, got {other:?}"),
        }
        handle.shutdown().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_on_the_tls_port_is_told_and_other_bytes_are_cut() -> TestResult {
    within(async {
        let dir = tempfile::tempdir()?;
        let g = cert(dir.path());
        let mut config = tls_config(&g);
        config.firewall.enabled = true;
        let server = start_server_with(config).await;

        // rampart's own client without --tls: one readable ERROR, then a close.
        let plain = ClientOptions::default().request_timeout(Duration::from_secs(5));
        match Client::login(server.target(), "alice", b"alice-pw", plain).await {
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::BadFrame), "{e}");
                assert!(e.to_string().contains("TLS"), "{e}");
            }
            Ok(_) => panic!("plaintext login on a TLS port succeeded"),
        }

        // Forgetting --tls is an honest mistake: no score.
        assert_eq!(server.handle.firewall().score(ip("127.0.0.1")), 0.0);

        // An HTTP request: closed without a word.
        let mut s = raw_connect(server.addr, Some(ip("127.0.50.1"))).await?;
        send_raw(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let seen = drain(&mut s, Duration::from_secs(5)).await;
        assert!(seen.closed);
        assert!(seen.replies.is_empty(), "{:?}", seen.replies);
        // The server counts a failed handshake (and signals the firewall) just after it
        // drops the connection.
        let counted = eventually(Duration::from_secs(2), || {
            server.handle.metrics().snapshot().tls_not_tls >= 2
                && server.handle.firewall().score(ip("127.0.50.1")) > 0.0
        })
        .await;
        let m = server.handle.metrics().snapshot();
        assert!(counted, "{m:?}");
        assert_eq!(m.tls_not_tls, 2);
        assert_eq!(m.tls_handshakes, 0);
        // Bytes that are not TLS at all are a broken frame to the firewall.
        assert!(server.handle.firewall().score(ip("127.0.50.1")) > 0.0);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_hello_is_cut_at_the_budget_and_handshakes_are_capped() -> TestResult {
    within(async {
        let dir = tempfile::tempdir()?;
        let g = cert(dir.path());
        let mut config = tls_config(&g);
        config.tls.handshake_timeout_ms = 1_000;
        config.tls.max_handshakes_per_ip = 2;
        let server = start_server_with(config).await;
        let slow = ip("127.0.51.1");
        let snapshot = || server.handle.metrics().snapshot();

        // Two ClientHellos that stop after their first byte fill the source's share...
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = raw_connect(server.addr, Some(slow)).await?;
            send_raw(&mut s, &[0x16]).await;
            held.push(s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // ...so three more from the same source wait for a place, unshaken and not refused.
        let mut waiting = Vec::new();
        for _ in 0..3 {
            let mut s = raw_connect(server.addr, Some(slow)).await?;
            send_raw(&mut s, &[0x16]).await;
            waiting.push(s);
        }
        let seen = drain(&mut waiting[0], Duration::from_millis(300)).await;
        assert!(!seen.closed, "a handshake past the cap waits");
        assert_eq!(snapshot().tls_handshakes_capped, 0);

        // The held ones are cut at the budget; their places go to the first two waiting, in
        // arrival order, and the third, with no place free within its budget, is refused.
        for mut s in held {
            let seen = drain(&mut s, Duration::from_secs(3)).await;
            assert!(seen.closed, "a slow handshake is cut at its budget");
        }
        let mut third = waiting.pop().ok_or("three waiting")?;
        let seen = drain(&mut third, Duration::from_secs(3)).await;
        assert!(seen.closed, "refused when no place came free in time");
        // The server counts a failed handshake just after it drops the connection.
        let capped = eventually(Duration::from_secs(2), || {
            snapshot().tls_handshakes_capped >= 1
        })
        .await;
        assert!(capped, "{:?}", snapshot());
        assert_eq!(snapshot().tls_handshakes_capped, 1);
        // The two let in are as slow, and are cut at their own budget.
        for mut s in waiting {
            let seen = drain(&mut s, Duration::from_secs(3)).await;
            assert!(seen.closed, "a slow handshake is cut at its budget");
        }
        let counted = eventually(Duration::from_secs(2), || {
            snapshot().tls_handshake_timeouts >= 4
        })
        .await;
        assert!(counted, "{:?}", snapshot());
        assert_eq!(snapshot().tls_handshake_timeouts, 4);

        // And the places came back: a real client gets in.
        let trust = ClientTrust::Ca(g.cert.clone());
        let c = Client::login(server.target(), "alice", b"alice-pw", opts(&trust, &server)).await?;
        c.bye().await?;
        Ok(())
    })
    .await
}

/// Users behind one NAT who connect at the same moment, more of them than the per-source
/// handshake cap, all get in: the ones past the cap wait a moment for a place. And a TLS
/// client that leaves without close_notify (most do) closed the connection itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_users_behind_one_address_connect_at_once() -> TestResult {
    within(async {
        let dir = tempfile::tempdir()?;
        let g = cert(dir.path());
        let mut config = tls_config(&g);
        config.tls.max_handshakes_per_ip = 2;
        let server = start_server_with(config).await;
        let trust = ClientTrust::Ca(g.cert.clone());
        let nat = ip("127.0.52.1");
        let logins = (0..10).map(|_| {
            let mut o = opts(&trust, &server);
            o.source = Some(nat);
            Client::login(server.target(), "alice", b"alice-pw", o)
        });
        let clients = futures::future::join_all(logins).await;
        let mut n = 0;
        for c in clients {
            let mut c = c?;
            c.ping().await?;
            // Dropped without BYE or close_notify, as a killed client would be.
            drop(c);
            n += 1;
        }
        assert_eq!(n, 10);
        let m = server.handle.metrics().snapshot();
        assert_eq!(m.tls_handshakes_capped, 0, "{m:?}");
        // Give the server a moment to see the ten closes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let m = server.handle.metrics().snapshot();
        assert_eq!(m.closed_by.get("eof"), Some(&10), "{:?}", m.closed_by);
        assert_eq!(m.closed_by.get("io"), Some(&0), "{:?}", m.closed_by);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_source_resumes_over_tls() -> TestResult {
    within(async {
        let dir = tempfile::tempdir()?;
        let g = cert(dir.path());
        let mut config = tls_config(&g);
        config.auth.resume_when_blocked = true;
        let server = start_server_with(config).await;
        let nat = ip("127.0.52.1");
        let trust = ClientTrust::Ca(g.cert.clone());
        let o = opts(&trust, &server).source(nat);
        let mut c = Client::login(server.target(), "alice", b"alice-pw", o.clone()).await?;
        let ticket = c.request_ticket().await?;
        c.bye().await?;
        assert!(server
            .handle
            .guard()
            .block(nat, Duration::from_secs(300), "test"));
        // The password path is refused (a bare close on a TLS port)...
        assert!(
            Client::login(server.target(), "alice", b"alice-pw", o.clone())
                .await
                .is_err()
        );
        // ...and the ticket gets in, told `blocked` first, over TLS.
        let mut alice = Client::resume(server.target(), "alice", &ticket.ticket, o).await?;
        alice.ping().await?;
        alice.bye().await?;
        Ok(())
    })
    .await
}

/// Reads one reply frame from a raw stream: its kind byte and request id.
async fn read_reply<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<(u8, u32)> {
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head).await?;
    let [_, _, _, kind, r0, r1, r2, r3, _, _, l0, l1, l2, l3] = head;
    let mut body = vec![0u8; u32::from_be_bytes([l0, l1, l2, l3]) as usize];
    s.read_exact(&mut body).await?;
    Ok((kind, u32::from_be_bytes([r0, r1, r2, r3])))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_never_reads_is_closed_after_the_write_deadline() -> TestResult {
    within(async {
        let dir = tempfile::tempdir()?;
        let g = cert(dir.path());
        let mut config = tls_config(&g);
        config.timeouts.write_ms = 1000;
        let server = start_server_with(config).await;
        let trust = ClientTrust::Ca(g.cert.clone());
        let data: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let item = {
            let o = opts(&trust, &server).source(ip("127.0.53.1"));
            let mut alice = Client::login(server.target(), "alice", b"alice-pw", o).await?;
            let item = alice.send_file_bytes("bob", "big.bin", &data).await?;
            alice.bye().await?;
            item
        };
        let guard = server.handle.guard();
        assert!(eventually(Duration::from_secs(3), || guard.stats().connections == 0).await);

        // A small receive buffer, and never a read after login: the replies fill the socket,
        // then the TLS layer's own buffer, and the write stalls.
        let socket = TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(4096)?;
        socket.bind(SocketAddr::new(ip("127.0.53.2"), 0))?;
        let tcp = socket.connect(server.addr).await?;
        let connector = TlsConnector::from(attacker_client_config()?);
        let mut tls = connector
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let mut wire = BytesMut::new();
        let auth = Request::Auth {
            user: "bob".into(),
            password: Password(Bytes::from_static(b"bob-pw")),
        };
        encode_request(1, &auth, &mut wire)?;
        tls.write_all(&wire).await?;
        tls.flush().await?;
        assert_eq!(read_reply(&mut tls).await?, (Kind::AuthOk as u8, 1));
        wire.clear();
        for n in 0..400u32 {
            let download = Request::Download {
                item_id: item,
                part: 0,
                offset: u64::from(n % 8) * 262_144,
                max_len: 262_144,
            };
            encode_request(n + 2, &download, &mut wire)?;
        }
        tls.write_all(&wire).await?;
        tls.flush().await?;
        let sent = std::time::Instant::now();

        // The write deadline (1 s) cuts it, and the closing TLS shutdown, which waits for a
        // peer that never reads, is bounded too: the slot is released.
        assert!(
            eventually(Duration::from_secs(8), || guard.stats().connections == 0).await,
            "the stalled TLS connection still holds its slot after {:?}",
            sent.elapsed()
        );
        assert!(server.handle.metrics().snapshot().timeouts >= 1);
        drop(tls);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn plaintext_is_refused_on_an_address_other_hosts_can_reach() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::open(test_config(), dir.path())?;
    // The check comes before the socket is bound: nothing listens, nothing is sent.
    match server.bind("0.0.0.0:0".parse()?).await {
        Err(e @ ServerError::Plaintext { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("--insecure-plaintext"), "{msg}");
        }
        Ok(_) => panic!("a plaintext server listened on 0.0.0.0"),
        Err(other) => panic!("expected the plaintext refusal, got {other}"),
    }
    Ok(())
}
