//! Resume tickets: good standing survives a source block (docs/PROTOCOL.md, 9.4).
//!
//! A user behind an address the firewall blocked (a NAT shared with an attacker) logs in with
//! the ticket they got earlier; anything else from that address is refused as before; a
//! flood of ticket-less connections costs the server a counter check; a ticket-admitted
//! session that misbehaves loses its ticket instead of scoring the address.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{drain, raw_connect, send_raw, start_server_with, test_config, within, TestResult};
use rampart::client::{Client, ClientError, ClientOptions, LoginVia, ResumeTicket};
use rampart::protocol::{encode_request, ErrorCode, Password, Reply, Request};
use rampart::server::auth::hash_password;

/// [`test_config`] with ticket admission from blocked sources on.
fn ticket_config() -> rampart::config::Config {
    let mut c = test_config();
    c.auth.resume_when_blocked = true;
    c
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

fn from(source: IpAddr) -> ClientOptions {
    ClientOptions::default()
        .source(source)
        .request_timeout(Duration::from_secs(10))
}

/// A ticket for `user`, got by logging in with the password from `source`.
async fn ticket_for(server: &common::TestServer, user: &str, source: IpAddr) -> ResumeTicket {
    let mut c = server.login_from(user, Some(source)).await;
    let t = c.request_ticket().await.expect("a ticket");
    let _ = c.bye().await;
    t
}

fn block(server: &common::TestServer, source: IpAddr) {
    assert!(server
        .handle
        .guard()
        .block(source, Duration::from_secs(300), "auth_failed x4"));
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(got: Result<T, ClientError>, code: ErrorCode) {
    match got {
        Err(e) if e.code() == Some(code) => {}
        other => panic!("expected ERROR {}, got {other:?}", code.name()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_ticket_from_a_blocked_source_is_admitted_and_works() -> TestResult {
    within(async {
        let server = start_server_with(ticket_config()).await;
        let nat = ip("127.0.20.1");
        let ticket = ticket_for(&server, "alice", nat).await;
        assert_eq!(ticket.user, "alice");
        assert_eq!(ticket.ticket.len(), 73);
        block(&server, nat);

        // The password path is refused as before...
        assert_code(
            Client::login(server.target(), "alice", b"alice-pw", from(nat)).await,
            ErrorCode::Blocked,
        );
        // ...the ticket gets in, and the session works.
        let mut alice = Client::resume(server.target(), "alice", &ticket.ticket, from(nat)).await?;
        assert_eq!(alice.user(), Some("alice"));
        alice.send_message("bob", "still here").await?;
        alice.ping().await?;
        let fresh = alice.request_ticket().await?;
        assert_ne!(fresh.ticket, ticket.ticket);
        alice.bye().await?;

        // The helper the scenario runner uses does the same without a password.
        let logged =
            Client::resume_or_login(server.target(), "alice", None, Some(&fresh), from(nat))
                .await?;
        assert_eq!(logged.via, LoginVia::Ticket);
        assert!(logged.ticket.is_some());
        logged.client.bye().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_expired_tickets_are_refused() -> TestResult {
    within(async {
        let mut config = ticket_config();
        config.auth.ticket_ttl_s = 1;
        let server = start_server_with(config).await;
        let home = ip("127.0.21.1");
        let ticket = ticket_for(&server, "alice", home).await;

        let mut forged = ticket.ticket.to_vec();
        forged[20] ^= 0x40;
        assert_code(
            Client::resume(server.target(), "alice", &forged, from(home)).await,
            ErrorCode::AuthFailed,
        );
        // Another user's name on alice's ticket.
        assert_code(
            Client::resume(server.target(), "bob", &ticket.ticket, from(home)).await,
            ErrorCode::AuthFailed,
        );
        // From a blocked source, a forged ticket gets the `blocked` refusal.
        let nat = ip("127.0.21.2");
        block(&server, nat);
        assert_code(
            Client::resume(server.target(), "alice", &forged, from(nat)).await,
            ErrorCode::Blocked,
        );

        tokio::time::sleep(Duration::from_millis(1100)).await;
        let expired = Client::resume(server.target(), "alice", &ticket.ticket, from(home)).await;
        let err = expired.err().ok_or("an expired ticket was accepted")?;
        assert_eq!(err.code(), Some(ErrorCode::AuthFailed));
        assert!(err.to_string().contains("expired"), "{err}");

        // The helper falls back to the password and stores a fresh ticket.
        let logged = Client::resume_or_login(
            server.target(),
            "alice",
            Some(b"alice-pw"),
            Some(&ticket),
            from(home),
        )
        .await?;
        assert_eq!(logged.via, LoginVia::Password);
        assert!(logged.ticket.is_some_and(|t| t.ticket != ticket.ticket));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_after_a_password_change_is_refused() -> TestResult {
    within(async {
        let config = test_config();
        let server = start_server_with(config.clone()).await;
        let home = ip("127.0.22.1");
        let ticket = ticket_for(&server, "alice", home).await;
        // What `rampart user passwd` does.
        let hash = hash_password(&config.auth, b"new-pw")?;
        server
            .handle
            .server()
            .store()
            .set_password("alice", &hash)?;
        let err = Client::resume(server.target(), "alice", &ticket.ticket, from(home))
            .await
            .err()
            .ok_or("a ticket survived the password change")?;
        assert_eq!(err.code(), Some(ErrorCode::AuthFailed));
        assert!(err.to_string().contains("revoked"), "{err}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_source_that_sends_anything_but_resume_gets_the_blocked_frame() -> TestResult {
    within(async {
        let server = start_server_with(ticket_config()).await;
        let nat = ip("127.0.23.1");
        block(&server, nat);
        let mut s = raw_connect(server.addr, Some(nat)).await?;
        let mut wire = BytesMut::new();
        encode_request(
            1,
            &Request::Auth {
                user: "alice".into(),
                password: Password(Bytes::from_static(b"alice-pw")),
            },
            &mut wire,
        )?;
        let started = Instant::now();
        send_raw(&mut s, &wire).await;
        let seen = drain(&mut s, Duration::from_secs(5)).await;
        assert!(seen.closed);
        // Refused on the kind byte, without waiting out the first-frame second.
        assert!(started.elapsed() < Duration::from_millis(900));
        match seen.replies.as_slice() {
            [(0, Reply::Error { code, .. })] => assert_eq!(*code, ErrorCode::Blocked),
            other => panic!("expected one ERROR blocked, got {other:?}"),
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_two_connections_per_blocked_source_may_present_a_ticket() -> TestResult {
    within(async {
        let server = start_server_with(ticket_config()).await;
        let nat = ip("127.0.24.1");
        block(&server, nat);
        // Two silent connections hold the source's whole budget for up to a second.
        let mut pending = Vec::new();
        for _ in 0..2 {
            pending.push(raw_connect(server.addr, Some(nat)).await?);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A third is refused at once, unread.
        let started = Instant::now();
        let mut third = raw_connect(server.addr, Some(nat)).await?;
        let seen = drain(&mut third, Duration::from_millis(600)).await;
        assert!(
            seen.closed,
            "the third connection was not refused at accept"
        );
        assert!(started.elapsed() < Duration::from_millis(600));
        // The two pending ones are still open, then refused when their second is up.
        for s in &mut pending {
            let early = drain(s, Duration::from_millis(200)).await;
            assert!(!early.closed, "a pending connection closed early");
        }
        for s in &mut pending {
            let seen = drain(s, Duration::from_secs(3)).await;
            assert!(
                seen.closed,
                "a silent pending connection was kept past its second"
            );
            assert!(seen.replies.len() <= 1, "{:?}", seen.replies);
        }
        // Another source's budget is its own.
        let other = ip("127.0.24.2");
        block(&server, other);
        let mut s = raw_connect(server.addr, Some(other)).await?;
        let early = drain(&mut s, Duration::from_millis(200)).await;
        assert!(!early.closed);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_admitted_session_that_misbehaves_loses_its_ticket_and_is_closed() -> TestResult {
    within(async {
        let mut config = common::firewall_config();
        config.auth.resume_when_blocked = true;
        // One permission denial must not be enough to block anyone by itself here.
        config.firewall.threshold = 1000;
        let server = start_server_with(config).await;
        let home = ip("127.0.25.1");
        let nat = ip("127.0.25.2");
        let ticket = ticket_for(&server, "alice", nat).await;
        // An item of bob's, which alice may not read.
        let mut bob = server.login_from("bob", Some(home)).await;
        let item = bob.send_message("bob", "mine").await?;
        block(&server, nat);
        let score_before = server.handle.firewall().score(nat);

        let mut alice = Client::resume(server.target(), "alice", &ticket.ticket, from(nat)).await?;
        let misbehaved = alice.fetch(item).await;
        assert!(
            misbehaved.is_err(),
            "a denied fetch got an answer: {misbehaved:?}"
        );
        // The session is closed...
        assert!(alice.ping().await.is_err(), "the session stayed open");
        // ...the address's score did not move...
        assert!(server.handle.firewall().score(nat) <= score_before);
        // ...and the ticket is gone, from anywhere.
        assert_code(
            Client::resume(server.target(), "alice", &ticket.ticket, from(nat)).await,
            ErrorCode::Blocked,
        );
        let err = Client::resume(server.target(), "alice", &ticket.ticket, from(home))
            .await
            .err()
            .ok_or("a revoked ticket was accepted")?;
        assert_eq!(err.code(), Some(ErrorCode::AuthFailed));
        assert!(err.to_string().contains("revoked"), "{err}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_admitted_session_may_ask_after_deleted_items_and_a_few_unknown_ids() -> TestResult
{
    within(async {
        let mut config = common::firewall_config();
        config.auth.resume_when_blocked = true;
        let server = start_server_with(config).await;
        let nat = ip("127.0.25.3");
        let ticket = ticket_for(&server, "alice", nat).await;
        block(&server, nat);
        let mut alice = Client::resume(server.target(), "alice", &ticket.ticket, from(nat)).await?;
        // A note deleted from another device (here, the same session): asked for again.
        let gone = alice.send_message("alice", "note").await?;
        alice.delete(gone).await?;
        for _ in 0..3 {
            assert_code(alice.fetch(gone).await, ErrorCode::NotFound);
        }
        // Four mistyped ids past the end: still only the address's business.
        for n in 1..=4 {
            assert_code(alice.fetch(gone * 1000 + n).await, ErrorCode::NotFound);
        }
        alice.ping().await?;
        // The fifth makes it the session's: it is closed and loses its ticket.
        let fifth = alice.fetch(gone * 1000 + 5).await;
        assert!(fifth.is_err(), "{fifth:?}");
        assert!(alice.ping().await.is_err(), "the session stayed open");
        assert_code(
            Client::resume(server.target(), "alice", &ticket.ticket, from(nat)).await,
            ErrorCode::Blocked,
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_keeps_a_0600_ticket_file_and_then_needs_no_password() -> TestResult {
    within(async {
        let server = start_server_with(ticket_config()).await;
        let dir = tempfile::tempdir()?;
        let tickets = dir.path().join("tickets");
        let run = |password: Option<&'static str>| {
            let target = server.target();
            let tickets = tickets.clone();
            tokio::task::spawn_blocking(move || {
                let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rampart"));
                cmd.args(["client", "--server", &target, "--user", "alice", "inbox"])
                    .env("RAMPART_TICKETS", &tickets)
                    .env_remove("RAMPART_PASSWORD");
                if let Some(pw) = password {
                    cmd.env("RAMPART_PASSWORD", pw);
                }
                cmd.output()
            })
        };
        let first = run(Some("alice-pw")).await??;
        assert!(first.status.success(), "{first:?}");
        let meta = std::fs::metadata(&tickets)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        }
        assert!(meta.len() > 0);
        let second = run(None).await??;
        assert!(second.status.success(), "{second:?}");
        Ok(())
    })
    .await
}
