//! No collateral damage: the firewall and the login limits must not lock out users in good
//! standing who share an address with a mistake or an attacker.
//!
//! Each test starts a real server on 127.0.0.1:0 with the firewall on, and sends from its own
//! 127.0.21.x address, so scores and limits of different tests never mix.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use rampart::client::{Client, ClientError, ClientOptions};
use rampart::protocol::ErrorCode;

use common::{
    drain, eventually, firewall_config, raw_connect, send_raw, start_server_with, within,
    TestResult, TestServer,
};

fn ip(b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 21, b))
}

fn from(source: IpAddr) -> ClientOptions {
    ClientOptions::default().source(source)
}

/// One login of `user` with `password` from `source` on a new connection, as a script that
/// runs the command-line client once per command does. The error code if it failed.
async fn login_once(
    server: &TestServer,
    source: IpAddr,
    user: &str,
    password: &str,
) -> Result<Option<ErrorCode>, ClientError> {
    match Client::login(&server.target(), user, password.as_bytes(), from(source)).await {
        Ok(_) => Ok(None),
        Err(ClientError::Server { code, .. }) => Ok(Some(code)),
        Err(e) => Err(e),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typo_then_the_right_password_is_forgiven() -> TestResult {
    within(async {
        let server = start_server_with(firewall_config()).await;
        let shared = ip(1);
        // alice mistypes twice, then logs in; then bob, behind the same address, does too.
        for (user, right) in [("alice", "alice-pw"), ("bob", "bob-pw")] {
            for _ in 0..2 {
                let code = login_once(&server, shared, user, "typo").await?;
                assert_eq!(code, Some(ErrorCode::AuthFailed));
            }
            assert_eq!(login_once(&server, shared, user, right).await?, None);
            let score = server.handle.firewall().score(shared);
            assert!(score < 1.0, "{user}'s typos left a score of {score}");
        }
        assert!(!server.handle.guard().is_blocked(shared));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_password_retried_counts_once() -> TestResult {
    within(async {
        let server = start_server_with(firewall_config()).await;
        let client = ip(2);
        for n in 0..12 {
            let code = login_once(&server, client, "alice", "last-years-pw").await?;
            assert_eq!(code, Some(ErrorCode::AuthFailed), "retry {n}");
        }
        let score = server.handle.firewall().score(client);
        assert!(score <= 25.0 + 1e-6, "twelve retries scored {score}");
        assert!(!server.handle.guard().is_blocked(client));
        // The right password still gets in, and forgives the one failure.
        assert_eq!(
            login_once(&server, client, "alice", "alice-pw").await?,
            None
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_logs_in_often_while_a_guesser_is_limited() -> TestResult {
    within(async {
        let server = start_server_with(firewall_config()).await;
        let script = ip(3);
        for n in 0..20 {
            let code = login_once(&server, script, "alice", "alice-pw").await?;
            assert_eq!(code, None, "login {n} of the script");
        }
        assert!(!server.handle.guard().is_blocked(script));
        // Twenty distinct wrong passwords on one connection: the firewall (four failures)
        // and the failures' allowance stop it well before twenty are verified.
        let guesser = ip(4);
        let mut c = Client::connect(&server.target(), from(guesser)).await?;
        let mut failed = 0;
        for n in 0..20 {
            match c.auth("alice", format!("guess-{n}").as_bytes()).await {
                Err(ClientError::Server {
                    code: ErrorCode::AuthFailed,
                    ..
                }) => failed += 1,
                Ok(()) => return Err("a wrong password logged in".into()),
                Err(_) => break,
            }
        }
        assert!(failed <= 4, "{failed} guesses verified");
        assert!(server.handle.guard().is_blocked(guesser));
        assert!(!server.handle.guard().is_blocked(script));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_session_outlives_the_block_of_its_address() -> TestResult {
    within(async {
        let server = start_server_with(firewall_config()).await;
        let shared = ip(5);
        let mut alice = server.login_from("alice", Some(shared)).await;
        alice.ping().await?;
        let mut anonymous = raw_connect(server.addr, Some(shared)).await?;
        // Someone else behind the address sends broken headers on two connections.
        for _ in 0..2 {
            let mut s = raw_connect(server.addr, Some(shared)).await?;
            send_raw(&mut s, b"GET / HTTP/1.1\r\n\r\n").await;
            assert!(drain(&mut s, Duration::from_secs(2)).await.closed);
        }
        let guard = server.handle.guard();
        assert!(guard.is_blocked(shared));
        assert!(
            drain(&mut anonymous, Duration::from_secs(2)).await.closed,
            "a connection that has not logged in is cut"
        );
        alice.ping().await?;
        alice.ping().await?;
        // Once only alice's session is left, it is still served.
        assert!(eventually(Duration::from_secs(2), || guard.stats().connections == 1).await);
        alice.ping().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_burst_of_bad_frames_makes_one_decision() -> TestResult {
    within(async {
        let server = start_server_with(firewall_config()).await;
        let attacker = ip(6);
        let mut sent = 0;
        for _ in 0..10 {
            let Ok(mut s) = raw_connect(server.addr, Some(attacker)).await else {
                continue;
            };
            for _ in 0..7 {
                send_raw(&mut s, b"\x52\x4d\x02\x01\0\0\0\x01\0\0\0\0\0\0").await;
                sent += 1;
            }
            drain(&mut s, Duration::from_millis(500)).await;
        }
        assert_eq!(sent, 70);
        assert!(server.handle.guard().is_blocked(attacker));
        let decisions = server.handle.firewall().decisions();
        assert_eq!(decisions.len(), 1, "{decisions:?}");
        assert_eq!(decisions[0].duration_s, firewall_config().ip.block_secs);
        Ok(())
    })
    .await
}

/// What the detection model learns from: a failed login is recorded as a guess only when it
/// tries a new password, and the login that follows a typo says how many failures it forgave,
/// so the model's `hist_auth_guesses` holds nothing for a user who mistyped and got in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recording_tells_typos_and_retries_from_guesses() -> TestResult {
    use rampart::activity::{db, EventKind};
    within(async {
        let server = start_server_with(firewall_config()).await;
        let client = ip(9);
        for password in ["typo", "typo", "alice-pw"] {
            login_once(&server, client, "alice", password).await?;
        }
        let auth_events = || {
            let conn = db::open(server.dir.path()).expect("activity database");
            let mut seen = Vec::new();
            db::for_each_event(&conn, |e| {
                if e.ip == client
                    && matches!(
                        e.kind,
                        EventKind::AuthOk { .. } | EventKind::AuthFailed { .. }
                    )
                {
                    seen.push(e.kind);
                }
            })
            .expect("events");
            seen
        };
        // The recorder commits within its flush interval.
        assert!(eventually(Duration::from_secs(5), || auth_events().len() == 3).await);
        assert_eq!(
            auth_events(),
            vec![
                EventKind::AuthFailed { guess: true },
                EventKind::AuthFailed { guess: false },
                EventKind::AuthOk { forgiven: 1 },
            ]
        );
        server.handle.shutdown().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_past_the_login_rate_is_refused_not_blocked() -> TestResult {
    within(async {
        let server = start_server_with(firewall_config()).await;
        // Eighty logins with the right password at once: past the successes' burst (60),
        // so some are refused, and a refusal of a source that logs in too often with the
        // right password is a rate limit, not a sign of guessing.
        let script = ip(10);
        let mut refused = 0;
        for n in 0..80 {
            match login_once(&server, script, "alice", "alice-pw").await? {
                None => {}
                Some(ErrorCode::RateLimited) => refused += 1,
                Some(code) => return Err(format!("login {n}: {code:?}").into()),
            }
        }
        assert!(refused > 0, "the successes' burst was never reached");
        assert!(
            !server.handle.guard().is_blocked(script),
            "blocked after {refused} refusals"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_over_the_limit_tried_again_blocks_nobody() -> TestResult {
    within(async {
        let config = firewall_config();
        let limit = config.limits.max_mail_body_bytes as usize;
        let server = start_server_with(config).await;
        let user = ip(11);
        let mut alice = server.login_from("alice", Some(user)).await;
        // Five times a body one byte over the limit (refused, the connection stays), then
        // three times one far over it, past the frame ceiling (refused, and closed).
        let over = "x".repeat(limit + 1);
        for _ in 0..5 {
            let sent = alice.send_mail("bob", "minutes", &over, &[]).await;
            assert!(sent.is_err(), "a body over the limit was accepted");
        }
        let far_over = "x".repeat(limit + limit / 4);
        for _ in 0..3 {
            let mut c = server.login_from("alice", Some(user)).await;
            assert!(c.send_mail("bob", "minutes", &far_over, &[]).await.is_err());
        }
        assert!(!server.handle.guard().is_blocked(user));
        alice
            .send_message("bob", "sent it as a file instead")
            .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_a_little_past_the_burst_is_refused_not_blocked() -> TestResult {
    use rampart::protocol::{Reply, Request};
    within(async {
        let config = firewall_config();
        let burst = config.rates.frames_burst_per_conn as usize;
        let server = start_server_with(config).await;
        let user = ip(12);
        let mut alice = server.login_from("alice", Some(user)).await;
        // Sixty frames past the burst in one write.
        let replies = alice.pipeline(vec![Request::Ping; burst + 60]).await?;
        let refused = replies
            .iter()
            .filter(|r| {
                matches!(
                    r,
                    Reply::Error {
                        code: ErrorCode::RateLimited,
                        ..
                    }
                )
            })
            .count();
        assert!(refused > 0, "the burst was never reached");
        assert!(
            !server.handle.guard().is_blocked(user),
            "blocked after {refused} refusals"
        );
        // The connection's allowance refills (2000 a second), and it is served again.
        tokio::time::sleep(Duration::from_millis(100)).await;
        alice.ping().await?;
        Ok(())
    })
    .await
}
