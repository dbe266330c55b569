//! Nothing is buffered for a stranger: before AUTH_OK a frame may declare at most
//! `limits.preauth_frame_bytes`, and connections that have not logged in have their own,
//! smaller caps per source and in total. A legitimate client from another address is served
//! throughout.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use rampart::protocol::{ErrorCode, Kind, Reply};

use common::{
    drain, eventually, header, raw_connect, send_raw, start_server_with, test_config, within,
    TestResult,
};

fn source(last: u8) -> Option<IpAddr> {
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 41, last)))
}

fn is_error(reply: &Reply, want: ErrorCode) -> bool {
    matches!(reply, Reply::Error { code, .. } if *code == want)
}

/// The red team's attack: a SEND_MAIL of 1 MiB - 1 bytes before login, part of its body
/// sent, then a stall. The server used to buffer towards the declared size for the whole
/// frame budget; now it refuses the header at once and closes.
#[tokio::test]
async fn a_large_frame_before_login_is_refused_from_its_header() -> TestResult {
    within(async {
        let srv = start_server_with(test_config()).await;
        for (i, kind) in [Kind::SendMail, Kind::UploadChunk, Kind::SendMessage]
            .into_iter()
            .enumerate()
        {
            let mut s = raw_connect(srv.addr, source(1)).await?;
            let id = 7 + i as u32;
            let mut bytes = header(kind as u8, id, 0, 1024 * 1024 - 1);
            bytes.extend_from_slice(&[0u8; 1000]);
            send_raw(&mut s, &bytes).await;
            let seen = drain(&mut s, Duration::from_secs(5)).await;
            assert!(
                seen.closed,
                "{kind:?}: the connection must be closed at once"
            );
            let first = seen.replies.first().ok_or("no reply")?;
            assert_eq!(first.0, id, "{kind:?}: the reply carries the frame's id");
            assert!(
                is_error(&first.1, ErrorCode::NotAuthenticated),
                "{kind:?}: {first:?}"
            );
        }
        // An AUTH or a RESUME (both allowed before login) over the pre-login cap is too large.
        for kind in [Kind::Auth, Kind::Resume] {
            let mut s = raw_connect(srv.addr, source(2)).await?;
            send_raw(&mut s, &header(kind as u8, 3, 0, 1_089)).await;
            let seen = drain(&mut s, Duration::from_secs(5)).await;
            assert!(seen.closed);
            let first = seen.replies.first().ok_or("no reply")?;
            assert!(
                is_error(&first.1, ErrorCode::TooLarge),
                "{kind:?}: {first:?}"
            );
        }
        // A header that is invalid in another way keeps the decoder's answer: reserved flags
        // are a bad_frame with id 0, whatever length the header declares.
        let mut s = raw_connect(srv.addr, source(4)).await?;
        send_raw(&mut s, &header(Kind::Fetch as u8, 255, 0xff00, 2048)).await;
        let seen = drain(&mut s, Duration::from_secs(5)).await;
        assert!(seen.closed);
        let first = seen.replies.first().ok_or("no reply")?;
        assert_eq!(first.0, 0, "{first:?}");
        assert!(is_error(&first.1, ErrorCode::BadFrame), "{first:?}");
        // Small requests before login are still answered and the session stays open.
        let mut s = raw_connect(srv.addr, source(3)).await?;
        send_raw(&mut s, &header(Kind::Ping as u8, 4, 0, 0)).await;
        let seen = drain(&mut s, Duration::from_millis(500)).await;
        assert!(!seen.closed, "a PING before login keeps the connection");
        assert!(matches!(seen.replies.first(), Some((4, Reply::Pong))));
        // After login, the same large frame is an ordinary request in progress.
        let mut c = srv.login("alice").await;
        c.ping().await?;
        Ok(())
    })
    .await
}

/// Connections that have not logged in count against `preauth_connections_per_ip`; a
/// connection that logs in gives its pre-login slot back, and another source is unaffected.
#[tokio::test]
async fn strangers_have_their_own_connection_caps() -> TestResult {
    within(async {
        let mut config = test_config();
        config.limits.preauth_connections_per_ip = 4;
        config.limits.preauth_connections = 6;
        let srv = start_server_with(config).await;
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut s = raw_connect(srv.addr, source(10)).await?;
            send_raw(&mut s, &header(Kind::Ping as u8, 1, 0, 0)).await;
            held.push(s);
        }
        // The 5th stranger from the same source is refused with a reason.
        let mut fifth = raw_connect(srv.addr, source(10)).await?;
        let seen = drain(&mut fifth, Duration::from_secs(3)).await;
        assert!(seen.closed, "the 5th connection must be refused");
        let refused = seen.replies.first().ok_or("no refusal")?;
        assert!(is_error(&refused.1, ErrorCode::Busy), "{refused:?}");
        // Two more from another source fill the total of 6; a third is refused.
        for _ in 0..2 {
            held.push(raw_connect(srv.addr, source(11)).await?);
        }
        assert!(eventually_refused(&srv, source(11)).await?);
        // A user who logs in from the first source is served: logged-in sessions do not
        // count against the pre-login caps, so one slot frees as soon as a stranger leaves.
        held.remove(0);
        let guard = srv.handle.guard();
        assert!(
            eventually(Duration::from_secs(5), || guard.stats().unauthenticated
                == 5)
            .await
        );
        let mut c = srv.login_from("alice", source(10)).await;
        c.ping().await?;
        assert_eq!(guard.stats().unauthenticated, 5, "alice no longer counts");
        // alice's session holds no pre-login slot, so a 4th stranger from her source fits.
        let mut s = raw_connect(srv.addr, source(10)).await?;
        send_raw(&mut s, &header(Kind::Ping as u8, 2, 0, 0)).await;
        let seen = drain(&mut s, Duration::from_millis(500)).await;
        assert!(!seen.closed, "a stranger fits again once alice logged in");
        Ok(())
    })
    .await
}

/// Whether a new connection from `src` is refused as busy.
async fn eventually_refused(
    srv: &common::TestServer,
    src: Option<IpAddr>,
) -> Result<bool, common::TestError> {
    let mut s = raw_connect(srv.addr, src).await?;
    let seen = drain(&mut s, Duration::from_secs(3)).await;
    Ok(seen.closed
        && seen
            .replies
            .first()
            .is_some_and(|r| is_error(&r.1, ErrorCode::Busy)))
}

/// A user's sessions are capped (`limits.max_sessions_per_user`), the user's budget for
/// large frames: a login past the cap is answered `busy`, is not a failure, and a place
/// frees when a session ends. Other users are unaffected.
#[tokio::test]
async fn a_users_sessions_are_capped() -> TestResult {
    within(async {
        let mut config = test_config();
        config.limits.max_sessions_per_user = 2;
        let srv = start_server_with(config).await;
        let first = srv.login_from("alice", source(20)).await;
        let _second = srv.login_from("alice", source(21)).await;
        let opts = rampart::client::ClientOptions {
            source: source(22),
            ..rampart::client::ClientOptions::default()
        };
        let third = rampart::client::Client::login(&srv.target(), "alice", b"alice-pw", opts).await;
        let Err(e) = third else {
            return Err("a third session of alice must be refused".into());
        };
        assert!(e.to_string().contains("busy"), "{e}");
        assert_eq!(srv.handle.metrics().snapshot().auth_failed, 0);
        let mut bob = srv.login_from("bob", source(22)).await;
        bob.ping().await?;
        drop(first);
        let guard = srv.handle.guard();
        assert!(eventually(Duration::from_secs(5), || guard.stats().connections == 2).await);
        let mut again = srv.login_from("alice", source(22)).await;
        again.ping().await?;
        Ok(())
    })
    .await
}
