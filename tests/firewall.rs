//! The firewall end to end: rule signals block a source at accept, decisions are stored with
//! their reasons, an operator's unblock reaches a running server, and blocks survive a restart.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{drain, eventually, firewall_config, raw_connect, send_raw, start_server_with};
use rampart::activity::{db, now_ms};
use rampart::protocol::{BlockedNotice, ErrorCode, Reply, Request};
use rampart::server::Server;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_header_blocks_its_source_and_only_it() {
    let server = start_server_with(firewall_config()).await;
    let attacker = ip("127.0.5.1");
    // One broken header is not enough (a client of another version sends one); a second
    // connection's is.
    for n in 0..2 {
        assert!(
            !server.handle.guard().is_blocked(attacker),
            "blocked after {n}"
        );
        let mut s = raw_connect(server.addr, Some(attacker))
            .await
            .expect("connect");
        send_raw(&mut s, b"GET / HTTP/1.1\r\n\r\n").await;
        let seen = drain(&mut s, Duration::from_secs(2)).await;
        assert!(seen.closed, "the probe's connection is closed");
    }
    assert!(server.handle.guard().is_blocked(attacker));

    // Refused at accept: the server says why (the offence) and closes.
    let mut again = raw_connect(server.addr, Some(attacker))
        .await
        .expect("connect");
    let seen = drain(&mut again, Duration::from_secs(2)).await;
    assert!(seen.closed);
    match seen.replies.as_slice() {
        [(0, Reply::Error { code, message })] => {
            assert_eq!(*code, ErrorCode::Blocked);
            let notice = BlockedNotice::parse(message).expect("a blocked notice");
            assert!(notice.reason.contains("fatal_frame"), "{message}");
        }
        other => panic!("expected one ERROR blocked, got {other:?}"),
    }

    // Everyone else is served.
    let mut bob = server.login_from("bob", Some(ip("127.0.5.2"))).await;
    bob.ping().await.expect("bob is served");
    let decisions = server.handle.firewall().decisions();
    assert_eq!(decisions.len(), 1);
    assert!(
        decisions[0].reason.contains("fatal_frame"),
        "{}",
        decisions[0].reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_stored_unblock_reaches_the_server_and_blocks_survive_restart() {
    let config = firewall_config();
    let server = start_server_with(config.clone()).await;
    let (a, b) = (ip("127.0.5.11"), ip("127.0.5.12"));
    for source in [a, a, b, b] {
        let mut s = raw_connect(server.addr, Some(source))
            .await
            .expect("connect");
        send_raw(&mut s, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").await;
        drain(&mut s, Duration::from_secs(2)).await;
    }
    let guard = server.handle.guard();
    assert!(guard.is_blocked(a) && guard.is_blocked(b));
    server.handle.server().recorder().flush();

    let conn = db::open(server.dir.path()).expect("activity db");
    let stored = db::decisions(&conn).expect("decisions");
    assert_eq!(stored.len(), 2);
    assert!(stored
        .iter()
        .all(|d| d.action == "block" && d.reason.contains("fatal_frame")));

    // An operator lifts the block on `a` through the database, as `rampart firewall unblock`
    // does; the running server applies it within about a second.
    db::insert_decision(&conn, now_ms(), &a.to_string(), "unblock", 0, 0.0, "test")
        .expect("unblock row");
    assert!(
        eventually(Duration::from_secs(5), || !guard.is_blocked(a)).await,
        "unblock applied"
    );
    assert!(guard.is_blocked(b));

    // Restart on the same data directory: `b` is still blocked, `a` is not.
    let dir = server.dir;
    server.handle.shutdown().await;
    let reopened = Server::open(config, dir.path()).expect("reopen");
    assert!(
        reopened.guard().is_blocked(b),
        "the block on b survived the restart"
    );
    assert!(
        !reopened.guard().is_blocked(a),
        "the lifted block stayed lifted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_buffered_behind_the_one_that_blocks_do_not_run() {
    let mut config = firewall_config();
    // Two denials block, so the block lands on the second frame of the write.
    config.firewall.weight_permission_denied = config.firewall.threshold / 2;
    let server = start_server_with(config).await;
    let mut alice = server.login_from("alice", Some(ip("127.0.5.21"))).await;
    let item = alice
        .send_message("bob", "for bob only")
        .await
        .expect("sent");
    let prober = ip("127.0.5.22");
    let mut mallory = server.login_from("mallory", Some(prober)).await;
    // One write: two fetches of alice's item (denied, and the source blocked), then a
    // message that must not be delivered, since its sender is cut.
    let cut = mallory
        .pipeline(vec![
            Request::Fetch { item_id: item },
            Request::Fetch { item_id: item },
            Request::SendMessage {
                to: "bob".into(),
                text: "sent after the block".into(),
            },
        ])
        .await;
    assert!(cut.is_err(), "the session is cut: {cut:?}");
    assert!(server.handle.guard().is_blocked(prober));
    let mut bob = server.login_from("bob", Some(ip("127.0.5.23"))).await;
    let inbox = bob.inbox().await.expect("inbox");
    assert_eq!(inbox.len(), 1, "only alice's message: {inbox:?}");
}
