//! A blocked source is told why at accept: one ERROR `blocked` (request id 0) with the
//! seconds left and the offence, then a close; a flood from it gets no more than its share of
//! those notices, and bare closes past it. With resume tickets admitted from blocked sources
//! (the default), the notice still comes at once, before anything is read, and out of the
//! same share.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{drain, raw_connect, start_server_with, test_config, within, TestResult};
use rampart::client::{Client, ClientOptions};
use rampart::guard::{NOTICES_BURST_PER_SOURCE, NOTICES_PER_S_PER_SOURCE};
use rampart::protocol::{BlockedNotice, ErrorCode, Reply};

/// A server that refuses blocked sources at accept, unread (no resume tickets from them).
async fn start_server() -> common::TestServer {
    let mut config = test_config();
    config.auth.resume_when_blocked = false;
    start_server_with(config).await
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// The one notice a refused connection got, if it got exactly one and was closed.
async fn notice_at_accept(server: &common::TestServer, source: IpAddr) -> Option<BlockedNotice> {
    let mut s = raw_connect(server.addr, Some(source))
        .await
        .expect("connect");
    let seen = drain(&mut s, Duration::from_secs(5)).await;
    assert!(seen.closed, "a refused connection is closed");
    match seen.replies.as_slice() {
        [] => None,
        [(0, Reply::Error { code, message })] if *code == ErrorCode::Blocked => {
            Some(BlockedNotice::parse(message).expect("a notice of the documented form"))
        }
        other => panic!("expected at most one ERROR blocked, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_source_is_told_the_seconds_left_and_the_offence() -> TestResult {
    within(async {
        let server = start_server().await;
        let source = ip("127.0.9.1");
        assert!(server
            .handle
            .guard()
            .block(source, Duration::from_secs(300), "auth_failed x4"));

        let notice = notice_at_accept(&server, source)
            .await
            .ok_or("the first refused connection got no notice")?;
        assert!(
            (299..=300).contains(&notice.secs_left),
            "{}",
            notice.secs_left
        );
        assert_eq!(notice.reason, "auth_failed x4");

        // The client library reads it back, and says it in the user's words.
        let login = Client::login(
            server.target(),
            "alice",
            b"alice-pw",
            ClientOptions::default().source(source),
        )
        .await;
        let err = login.err().ok_or("a blocked source logged in")?;
        let told = err
            .blocked()
            .ok_or_else(|| format!("not a notice: {err:?}"))?;
        assert_eq!(told.reason, "auth_failed x4");
        assert_eq!(
            err.to_string(),
            format!(
                "your address is blocked for {} s (auth_failed x4)",
                told.secs_left
            )
        );

        // Nobody else is affected.
        let mut bob = server.login_from("bob", Some(ip("127.0.9.2"))).await;
        bob.ping().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_a_blocked_source_gets_at_most_its_share_of_notices() -> TestResult {
    within(async {
        let server = start_server().await;
        let source = ip("127.0.9.3");
        assert!(server
            .handle
            .guard()
            .block(source, Duration::from_secs(300), "raw flood"));
        let connections = 60;
        let started = Instant::now();
        let mut told = 0u64;
        for _ in 0..connections {
            told += u64::from(notice_at_accept(&server, source).await.is_some());
        }
        let elapsed = started.elapsed();
        // The burst, then one more per started second at most.
        let share = u64::from(NOTICES_BURST_PER_SOURCE)
            + u64::from(NOTICES_PER_S_PER_SOURCE) * elapsed.as_secs().saturating_add(1);
        assert!(
            told >= u64::from(NOTICES_BURST_PER_SOURCE),
            "the first connections are told: {told}"
        );
        assert!(
            told <= share,
            "{told} notices for {connections} connections in {elapsed:?}, share {share}"
        );
        assert_eq!(
            server.handle.metrics().snapshot().connections_refused,
            connections
        );
        Ok(())
    })
    .await
}

/// With tickets admitted from blocked sources, a connection that holds a place in the resume
/// budget is told `blocked` at once, before it sends anything, and closed unread within the
/// first-frame wait without a second notice; a flood that closes on the notice, as a client
/// does, still gets no more than its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_resume_tickets_the_notice_still_comes_first_and_within_the_share() -> TestResult {
    within(async {
        let server = start_server_with(test_config()).await;
        let source = ip("127.0.9.4");
        assert!(server
            .handle
            .guard()
            .block(source, Duration::from_secs(300), "fatal_frame x2"));

        let mut s = raw_connect(server.addr, Some(source)).await?;
        let started = Instant::now();
        let first = drain(&mut s, Duration::from_millis(300)).await;
        match first.replies.as_slice() {
            [(0, Reply::Error { code, .. })] if *code == ErrorCode::Blocked => {}
            other => {
                return Err(format!("expected one ERROR blocked at once, got {other:?}").into())
            }
        }
        let rest = drain(&mut s, Duration::from_secs(3)).await;
        assert!(rest.closed, "closed once the first-frame wait is over");
        assert!(
            rest.replies.is_empty(),
            "no second notice: {:?}",
            rest.replies
        );
        assert!(started.elapsed() < Duration::from_secs(3));

        let connections = 40;
        let started = Instant::now();
        let mut told = 0u64;
        for _ in 0..connections {
            let mut s = raw_connect(server.addr, Some(source)).await?;
            let seen = drain(&mut s, Duration::from_millis(200)).await;
            told += u64::from(!seen.replies.is_empty());
        }
        let elapsed = started.elapsed();
        let share = u64::from(NOTICES_BURST_PER_SOURCE)
            + u64::from(NOTICES_PER_S_PER_SOURCE) * elapsed.as_secs().saturating_add(2);
        assert!(
            told <= share,
            "{told} notices for {connections} connections in {elapsed:?}, share {share}"
        );
        Ok(())
    })
    .await
}
