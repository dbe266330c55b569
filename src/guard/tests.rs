//! Tests for [`Guard`]: admission order and caps, tickets, blocking, limiters and purging.
//! All run on a manual clock: no sleeps, no real time.

use std::net::IpAddr;
use std::time::Duration;

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn ip(s: &str) -> IpAddr {
    // Test literals only; a typo should fail loudly.
    s.parse()
        .unwrap_or_else(|e| panic!("bad test address {s}: {e}"))
}

/// The default config with `edit` applied, on a manual clock.
fn guard(edit: impl FnOnce(&mut Config)) -> Guard {
    let mut cfg = Config::default();
    edit(&mut cfg);
    Guard::with_clock(&cfg, GuardClock::manual())
}

#[test]
fn reasons_are_stable() {
    let refusals = [
        (Refusal::Denied, "denied"),
        (
            Refusal::Blocked {
                until: SystemTime::UNIX_EPOCH,
            },
            "blocked",
        ),
        (Refusal::AcceptRate, "accept_rate"),
        (Refusal::TooManyConnections, "max_connections"),
        (Refusal::TooManyFromSource, "max_connections_per_ip"),
    ];
    for (r, s) in refusals {
        assert_eq!(r.reason(), s);
    }
    let limits = [
        (Limited::Ip, "frame_rate_ip"),
        (Limited::User, "frame_rate_user"),
        (Limited::Connection, "frame_rate_connection"),
        (Limited::LoginIp, "login_rate_ip"),
        (Limited::LoginUser, "login_rate_user"),
        (Limited::LoginOkIp, "login_ok_rate_ip"),
    ];
    for (l, s) in limits {
        assert_eq!(l.reason(), s);
    }
}

#[test]
fn per_source_cap_refuses_that_source_only() -> TestResult {
    let g = guard(|c| c.limits.max_connections_per_ip = 3);
    let a = ip("127.0.1.1");
    let tickets = (0..3).map(|_| g.admit(a)).collect::<Result<Vec<_>, _>>()?;
    assert_eq!(g.admit(a).err(), Some(Refusal::TooManyFromSource));
    let other = g.admit(ip("127.0.1.2"))?;
    assert_eq!(g.stats().connections, 4);
    assert_eq!(g.stats().sources_connected, 2);
    let ids: std::collections::BTreeSet<u64> =
        tickets.iter().chain([&other]).map(ConnTicket::id).collect();
    assert_eq!(ids.len(), 4, "ticket ids must be unique");
    assert_eq!(tickets[0].source(), g.source_of(a));
    Ok(())
}

#[test]
fn total_cap_refuses_everyone() -> TestResult {
    let g = guard(|c| {
        c.limits.max_connections = 2;
        c.limits.max_connections_per_ip = 2;
    });
    let _a = g.admit(ip("127.0.1.1"))?;
    let _b = g.admit(ip("127.0.1.2"))?;
    assert_eq!(
        g.admit(ip("127.0.1.3")).err(),
        Some(Refusal::TooManyConnections)
    );
    Ok(())
}

#[test]
fn dropping_tickets_frees_slots() -> TestResult {
    let g = guard(|c| {
        c.limits.max_connections = 2;
        c.limits.max_connections_per_ip = 2;
    });
    let a = ip("127.0.1.1");
    let t1 = g.admit(a)?;
    let t2 = g.admit(a)?;
    assert!(g.admit(a).is_err());
    drop(t1);
    let _t3 = g.admit(a)?;
    drop(t2);
    assert_eq!(g.stats().connections, 1);
    Ok(())
}

#[test]
fn ticket_dropped_by_a_panicking_task_frees_its_slot() -> TestResult {
    let g = Arc::new(guard(|c| c.limits.max_connections_per_ip = 1));
    let a = ip("127.0.1.1");
    let t = g.admit(a)?;
    let joined = std::thread::spawn(move || {
        let _t = t;
        panic!("connection task failed");
    })
    .join();
    assert!(joined.is_err());
    assert_eq!(g.stats().connections, 0);
    assert_eq!(g.stats().sources_connected, 0);
    let _again = g.admit(a)?;
    Ok(())
}

#[test]
fn poisoned_table_still_works() -> TestResult {
    let g = Arc::new(guard(|_| {}));
    let t = g.admit(ip("127.0.1.1"))?;
    let table = Arc::clone(&g.conns);
    let _ = std::thread::spawn(move || {
        let _held = table.lock();
        panic!("poison the connection table");
    })
    .join();
    assert!(g.conns.is_poisoned());
    let _u = g.admit(ip("127.0.1.1"))?;
    drop(t);
    assert_eq!(g.stats().connections, 1);
    Ok(())
}

#[test]
fn deny_list_is_absolute() -> TestResult {
    let g = guard(|c| {
        c.ip.deny = vec!["127.0.2.0/24".parse().unwrap_or_else(|_| unreachable!())];
        c.ip.allow = vec!["127.0.2.7/32".parse().unwrap_or_else(|_| unreachable!())];
    });
    assert_eq!(g.admit(ip("127.0.2.7")).err(), Some(Refusal::Denied));
    assert_eq!(g.admit(ip("::ffff:127.0.2.1")).err(), Some(Refusal::Denied));
    let _ok = g.admit(ip("127.0.3.1"))?;
    Ok(())
}

#[test]
fn accept_rate_refuses_past_the_burst_then_recovers() -> TestResult {
    let g = guard(|c| {
        c.rates.accepts_per_s_per_ip = 2;
        c.rates.accepts_burst_per_ip = 3;
    });
    let a = ip("127.0.1.1");
    let _held = (0..3).map(|_| g.admit(a)).collect::<Result<Vec<_>, _>>()?;
    assert_eq!(g.admit(a).err(), Some(Refusal::AcceptRate));
    let _b = g.admit(ip("127.0.1.2"))?;
    g.clock().advance(Duration::from_millis(500));
    let _c = g.admit(a)?;
    assert_eq!(g.admit(a).err(), Some(Refusal::AcceptRate));
    Ok(())
}

#[test]
fn block_cuts_open_connections_and_refuses_new_ones() -> TestResult {
    let g = guard(|_| {});
    let a = ip("127.0.1.1");
    let t1 = g.admit(a)?;
    let t2 = g.admit(a)?;
    let other = g.admit(ip("127.0.1.2"))?;
    let token = t1.cut_token();
    assert!(!token.is_cancelled());

    assert!(g.block(a, Duration::from_secs(60), "scan"));
    assert!(token.is_cancelled() && t2.cut_token().is_cancelled());
    assert!(!other.cut_token().is_cancelled());
    assert!(g.is_blocked(a));
    match g.admit(a) {
        Err(Refusal::Blocked { until }) => {
            let left = until.duration_since(SystemTime::now())?;
            assert!(left > Duration::from_secs(50) && left <= Duration::from_secs(60));
        }
        other => panic!("expected blocked, got {other:?}"),
    }
    let listed = g.blocked();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].source, g.source_of(a));
    assert_eq!(listed[0].reason, "scan");
    // Cut connections still hold their slots until their tasks drop the tickets.
    assert_eq!(g.stats().connections, 3);
    Ok(())
}

#[test]
fn a_block_spares_logged_in_sessions_that_did_not_offend() -> TestResult {
    let g = guard(|_| {});
    let a = ip("127.0.1.1");
    let anonymous = g.admit(a)?;
    let honest = g.admit(a)?;
    honest.authenticated();
    let offender = g.admit(a)?;
    offender.authenticated();
    g.offended(a, offender.id());
    let late = g.admit(a)?;
    late.authenticated();
    assert!(g.block_offence(a, Duration::from_secs(60), "fatal_frame x2"));
    assert!(anonymous.cut_token().is_cancelled(), "not logged in: cut");
    assert!(offender.cut_token().is_cancelled(), "offended: cut");
    assert!(!honest.cut_token().is_cancelled(), "good standing: kept");
    assert!(!late.cut_token().is_cancelled());
    // A kept session that offends while its source is blocked is cut then.
    g.offended(a, late.id());
    assert!(late.cut_token().is_cancelled());
    assert!(!honest.cut_token().is_cancelled());
    // No connection (a refusal at accept) and unknown ids are ignored.
    g.offended(a, 0);
    g.offended(a, 9_999);
    Ok(())
}

#[test]
fn successes_and_failures_have_their_own_allowances() {
    let g = guard(|_| {});
    let script = g.source_of(ip("127.0.5.1"));
    // A script logging in once per command: 60 at once, never refused for it.
    for _ in 0..60 {
        assert!(g.check_login(script, "alice").is_ok());
        g.login_succeeded(script, "alice");
    }
    // The 61st at once is refused, and named for what it is: logging in too often, not
    // guessing (the firewall weighs the two differently).
    assert_eq!(g.check_login(script, "alice"), Err(Limited::LoginOkIp));
    // Distinct wrong passwords from a guesser are limited to the failures' burst.
    let guesser = g.source_of(ip("127.0.5.2"));
    let mut admitted = 0;
    for n in 0..20 {
        if g.check_login(guesser, &format!("user{n}")).is_ok() {
            admitted += 1;
            let digest = g.password_digest(format!("guess{n}").as_bytes());
            assert!(g.login_failed_with(guesser, &format!("user{n}"), digest));
        }
    }
    assert_eq!(admitted, 10);
    assert_eq!(g.check_login(guesser, "alice"), Err(Limited::LoginIp));
}

#[test]
fn successes_are_never_allowed_less_than_failures() {
    let g = guard(|c| {
        c.rates.logins_per_min_per_ip = 100_000;
        c.rates.logins_burst_per_ip = 100_000;
    });
    let cli = g.source_of(ip("127.0.5.5"));
    for n in 0..1_000 {
        assert!(g.check_login(cli, "alice").is_ok(), "login {n}");
        g.login_succeeded(cli, "alice");
    }
}

#[test]
fn a_stale_password_retried_counts_once() {
    let g = guard(|_| {});
    let client = g.source_of(ip("127.0.5.3"));
    let stale = g.password_digest(b"last year's password");
    for n in 0..30 {
        assert!(g.check_login(client, "bob").is_ok(), "retry {n}");
        assert_eq!(g.login_failed_with(client, "bob", stale), n == 0);
    }
    // One failure of its own: never held back, and it still has its whole allowance of
    // failures but the one.
    let fresh = (0..20)
        .filter(|_| g.check_login(client, "bob").is_ok())
        .count();
    assert_eq!(fresh, 9);
}

#[test]
fn a_success_returns_the_typos_to_forgive() {
    let g = guard(|_| {});
    let home = g.source_of(ip("127.0.5.4"));
    assert!(g.check_login(home, "carol").is_ok());
    assert!(g.login_failed_with(home, "carol", g.password_digest(b"typo")));
    g.clock().advance(Duration::from_secs(3));
    assert!(g.check_login(home, "carol").is_ok());
    assert_eq!(
        g.login_succeeded(home, "carol"),
        vec![Duration::from_secs(3)]
    );
    assert!(g.login_succeeded(home, "carol").is_empty());
}

#[test]
fn blocked_notice_says_seconds_left_and_offence() {
    let g = guard(|_| {});
    let a = ip("127.0.1.1");
    assert_eq!(g.blocked_notice(a), None, "not blocked: nothing to tell");
    assert!(g.block(a, Duration::from_secs(300), "auth_failed x4"));
    g.clock().advance(Duration::from_millis(12_500));
    // 287.5 s left reads as 288: rounded up, never 0 while in force.
    assert_eq!(
        g.blocked_notice(a),
        Some(BlockedNotice::new(288, "auth_failed x4"))
    );
    // Another address of the same IPv6 prefix is the same source, with the same block.
    assert!(g.block(ip("2001:db8::1"), Duration::from_secs(60), "fatal_frame x3"));
    assert_eq!(
        g.blocked_notice(ip("2001:db8::2"))
            .map(|n| (n.secs_left, n.reason)),
        Some((60, "fatal_frame x3".to_string()))
    );
    g.clock().advance(Duration::from_secs(288));
    assert_eq!(g.blocked_notice(a), None, "the block ended");
}

#[test]
fn blocked_notices_are_rate_limited_per_source() {
    let g = guard(|_| {});
    let (a, b) = (ip("127.0.1.1"), ip("127.0.1.2"));
    assert!(g.block(a, Duration::from_secs(300), "flood"));
    assert!(g.block(b, Duration::from_secs(300), "flood"));
    let told = |ip| (0..100).filter(|_| g.blocked_notice(ip).is_some()).count();
    // A flood of 100 refused connections in one instant: the burst, then bare closes.
    assert_eq!(told(a), NOTICES_BURST_PER_SOURCE as usize);
    // Another source has its own share.
    assert_eq!(told(b), NOTICES_BURST_PER_SOURCE as usize);
    // One more per second after that.
    g.clock().advance(Duration::from_secs(1));
    assert_eq!(told(a), NOTICES_PER_S_PER_SOURCE as usize);
    // The notice limiter's keys are tracked and purged like every other limiter's.
    assert!(g.stats().tracked_keys >= 2);
}

#[test]
fn allow_listed_is_never_blocked() -> TestResult {
    let g = guard(|c| {
        c.ip.allow = vec![
            "127.0.1.0/24".parse().unwrap_or_else(|_| unreachable!()),
            "2001:db8::7/128".parse().unwrap_or_else(|_| unreachable!()),
        ];
    });
    let a = ip("127.0.1.1");
    let t = g.admit(a)?;
    assert!(!g.block(a, Duration::from_secs(60), "scan"));
    assert!(!t.cut_token().is_cancelled());
    assert!(!g.is_blocked(a));
    let _again = g.admit(a)?;
    assert!(g.blocked().is_empty());

    // A neighbour in the same /64 gets its source blocked, but the allow-listed address in
    // it is neither cut nor refused.
    let friend = g.admit(ip("2001:db8::7"))?;
    let stranger = g.admit(ip("2001:db8::8"))?;
    assert!(g.block(ip("2001:db8::8"), Duration::from_secs(60), "scan"));
    assert!(stranger.cut_token().is_cancelled());
    assert!(!friend.cut_token().is_cancelled());
    let _friend_again = g.admit(ip("2001:db8::7"))?;
    assert!(matches!(
        g.admit(ip("2001:db8::9")),
        Err(Refusal::Blocked { .. })
    ));
    Ok(())
}

#[test]
fn block_expires_and_unblock_lifts() -> TestResult {
    let g = guard(|_| {});
    let a = ip("127.0.1.1");
    assert!(g.block(a, Duration::from_secs(10), "flood"));
    g.clock().advance(Duration::from_secs(9));
    assert!(g.is_blocked(a));
    g.clock().advance(Duration::from_secs(1));
    assert!(!g.is_blocked(a));
    assert!(g.blocked().is_empty());
    assert_eq!(g.stats().blocked, 1, "expired entry stays until purge");
    g.purge();
    assert_eq!(g.stats().blocked, 0);
    let _t = g.admit(a)?;

    assert!(g.block(a, Duration::MAX, "forever"));
    assert!(g.is_blocked(a));
    assert!(g.unblock(a));
    assert!(!g.unblock(a));
    let _u = g.admit(a)?;
    Ok(())
}

#[test]
fn v4_mapped_and_ipv6_prefix_share_a_source() -> TestResult {
    let g = guard(|c| c.limits.max_connections_per_ip = 2);
    let _a = g.admit(ip("127.0.1.1"))?;
    let b = g.admit(ip("::ffff:127.0.1.1"))?;
    assert_eq!(b.source().to_string(), "127.0.1.1");
    assert_eq!(
        g.admit(ip("127.0.1.1")).err(),
        Some(Refusal::TooManyFromSource)
    );

    let _c = g.admit(ip("2001:db8::1"))?;
    let d = g.admit(ip("2001:db8::ffff"))?;
    assert_eq!(d.source().to_string(), "2001:db8::/64");
    assert_eq!(
        g.admit(ip("2001:db8::abcd:1")).err(),
        Some(Refusal::TooManyFromSource)
    );
    let _e = g.admit(ip("2001:db8:0:1::1"))?;

    // Blocking a mapped address blocks the IPv4 source.
    assert!(g.block(ip("::ffff:127.0.1.1"), Duration::from_secs(5), "x"));
    assert!(g.is_blocked(ip("127.0.1.1")));
    Ok(())
}

#[test]
fn frame_limits_admit_no_more_than_the_burst_at_once() {
    let g = guard(|c| {
        c.rates.frames_burst_per_ip = 100;
        c.rates.frames_burst_per_user = 150;
    });
    let a = g.source_of(ip("127.0.1.1"));
    let b = g.source_of(ip("127.0.1.2"));
    let ok = (0..1_000)
        .filter(|_| g.check_frame(a, None).is_ok())
        .count();
    assert_eq!(ok, 100);
    assert_eq!(g.check_frame(a, None), Err(Limited::Ip));

    // User 7's allowance spans sources: 100 from b, then 50 more from c.
    let c = g.source_of(ip("127.0.1.3"));
    let from_b = (0..1_000)
        .filter(|_| g.check_frame(b, Some(7)).is_ok())
        .count();
    assert_eq!(from_b, 100);
    // 60 tries: the last 10 spend c's allowance but not the user's, which is gone.
    let from_c = (0..60)
        .filter(|_| g.check_frame(c, Some(7)).is_ok())
        .count();
    assert_eq!(from_c, 50);
    assert_eq!(g.check_frame(c, Some(7)), Err(Limited::User));
    assert_eq!(g.check_frame(c, Some(8)), Ok(()));

    g.clock().advance(Duration::from_secs(1));
    assert_eq!(g.check_frame(a, None), Ok(()));
}

/// `admit_frame` decides exactly as the connection limiter followed by `check_frame`.
#[test]
fn admit_frame_decides_like_the_separate_checks() {
    {
        let mut cfg = Config::default();
        cfg.rates.frames_burst_per_conn = 30;
        cfg.rates.frames_burst_per_ip = 50;
        cfg.rates.frames_burst_per_user = 70;
        let one = Guard::with_clock(&cfg, GuardClock::manual());
        let two = Guard::with_clock(&cfg, GuardClock::manual());
        let a = one.source_of(ip("127.0.1.1"));
        let (c1, c2) = (one.connection_limiter(), two.connection_limiter());
        // Within one burst, the time read cannot change the outcome.
        let got: Vec<_> = (0..100).map(|_| one.admit_frame(&c1, a, Some(3))).collect();
        let want: Vec<_> = (0..100)
            .map(|_| c2.check().and_then(|()| two.check_frame(a, Some(3))))
            .collect();
        assert_eq!(got, want);
        assert_eq!(got.iter().filter(|r| r.is_ok()).count(), 30);
        // A fresh connection from the same source: the source's allowance has 20 left.
        let c3 = one.connection_limiter();
        let more: Vec<_> = (0..25).map(|_| one.admit_frame(&c3, a, None)).collect();
        assert!(more[..20].iter().all(|r| r.is_ok()));
        assert!(more[20..].iter().all(|r| *r == Err(Limited::Ip)));
    }
}

#[test]
fn connection_limiters_are_independent() {
    let g = guard(|c| c.rates.frames_burst_per_conn = 10);
    let one = g.connection_limiter();
    let two = g.connection_limiter();
    assert_eq!((0..100).filter(|_| one.check().is_ok()).count(), 10);
    assert_eq!(one.check(), Err(Limited::Connection));
    assert_eq!(two.check(), Ok(()));
}

#[test]
fn login_limits_per_source_and_per_account_failures() {
    let g = guard(|_| {});
    let a = g.source_of(ip("127.0.1.1"));
    // Default per-account burst is 5 failures: five addresses fail once each on "alice".
    for n in 0..5 {
        let src = g.source_of(ip(&format!("127.0.2.{n}")));
        assert_eq!(g.check_login(src, "alice"), Ok(Standing::New));
        g.login_failed(src, "alice");
    }
    // The account is in backoff, but a source is verified until its own failures are as
    // many as the firewall blocks for (4 by default: threshold 100, 25 points each).
    let guesser = g.source_of(ip("127.0.2.0"));
    for _ in 1..4 {
        assert_eq!(g.check_login(guesser, "alice"), Ok(Standing::New));
        g.login_failed(guesser, "alice");
    }
    assert_eq!(g.check_login(guesser, "alice"), Err(Limited::LoginUser));
    // A source without failures is verified (its right password gets in, its wrong one is
    // a failure like any other).
    assert_eq!(g.check_login(a, "alice"), Ok(Standing::New));
    // Default per-source burst is 10; one was spent on "alice" above.
    let ok = (0..20)
        .filter(|n| g.check_login(a, &format!("user{n}")).is_ok())
        .count();
    assert_eq!(ok, 9);
    assert_eq!(g.check_login(a, "bob"), Err(Limited::LoginIp));
    // 30 a minute: one comes back every 2 s.
    g.clock().advance(Duration::from_secs(2));
    assert_eq!(g.check_login(a, "bob"), Ok(Standing::New));
    // 10 failures a minute: the account's backoff ends 6 s after the burst.
    g.clock().advance(Duration::from_secs(4));
    assert_eq!(g.check_login(guesser, "alice"), Ok(Standing::New));
}

#[test]
fn successful_logins_never_count_against_the_account() {
    let g = guard(|_| {});
    for n in 0..50 {
        let src = g.source_of(ip(&format!("127.0.3.{n}")));
        assert_eq!(g.check_login(src, "carol"), Ok(Standing::New));
        g.login_succeeded(src, "carol");
    }
    // A source with a failure elsewhere is still admitted: carol has no failures at all.
    let other = g.source_of(ip("127.0.3.200"));
    g.login_failed(other, "dave");
    assert_eq!(g.check_login(other, "carol"), Ok(Standing::New));
}

#[test]
fn a_proven_source_is_never_held_back_by_the_account() {
    // One failure of its own is as many as the firewall blocks for.
    let g = guard(|c| c.firewall.weight_auth_failed = c.firewall.threshold);
    let home = g.source_of(ip("127.0.4.1"));
    g.login_succeeded(home, "erin");
    // The owner mistypes at home, then others guess: the backoff is on.
    g.login_failed(home, "erin");
    for n in 2..10 {
        g.login_failed(g.source_of(ip(&format!("127.0.4.{n}"))), "erin");
    }
    assert_eq!(
        g.check_login(g.source_of(ip("127.0.4.2")), "erin"),
        Err(Limited::LoginUser)
    );
    assert_eq!(g.check_login(home, "erin"), Ok(Standing::Proven));
    // Proven for erin only.
    for n in 2..10 {
        g.login_failed(g.source_of(ip(&format!("127.0.4.{n}"))), "frank");
    }
    assert_eq!(g.check_login(home, "frank"), Err(Limited::LoginUser));
}

#[test]
fn sources_wait_after_as_many_failures_as_the_firewall_blocks_for() {
    let check = |threshold: u32, weight: u32, want: u32| {
        let fw = FirewallConfig {
            threshold,
            weight_auth_failed: weight,
            ..FirewallConfig::default()
        };
        assert_eq!(failures_to_block(&fw), want, "{threshold} / {weight}");
    };
    check(100, 25, 4);
    check(100, 30, 4);
    check(100, 100, 1);
    check(100, 500, 1);
    check(100_000, 1, MAX_SOURCE_FAILURES);
    check(100, 0, MAX_SOURCE_FAILURES);
}

#[test]
fn only_account_wide_refusals_spare_the_source() {
    for l in [
        Limited::Ip,
        Limited::User,
        Limited::Connection,
        Limited::LoginIp,
        Limited::LoginOkIp,
    ] {
        assert!(l.blames_source(), "{l:?}");
    }
    assert!(!Limited::LoginUser.blames_source());
}

#[test]
fn purge_forgets_many_idle_sources() {
    let g = guard(|_| {});
    for n in 0..10_000u32 {
        let src = SourceKey::V4(std::net::Ipv4Addr::from(0x7f00_0000 | n));
        assert_eq!(g.check_frame(src, Some(i64::from(n))), Ok(()));
    }
    assert_eq!(g.stats().tracked_keys, 20_000);
    g.purge();
    assert_eq!(g.stats().tracked_keys, 20_000, "all still recent");
    g.clock().advance(Duration::from_secs(1));
    g.purge();
    assert_eq!(g.stats().tracked_keys, 0);
}

#[test]
fn purge_clears_a_limiter_over_the_cap() {
    let g = guard(|c| {
        c.limits.max_tracked_sources = 1_000;
        c.rates.frames_burst_per_ip = 2;
    });
    let victim = g.source_of(ip("127.0.1.1"));
    assert!(g.check_frame(victim, None).is_ok());
    assert!(g.check_frame(victim, None).is_ok());
    assert_eq!(g.check_frame(victim, None), Err(Limited::Ip));
    for n in 0..2_000u32 {
        let src = SourceKey::V4(std::net::Ipv4Addr::from(0x0a00_0000 | n));
        let _ = g.check_frame(src, None);
    }
    g.purge();
    assert_eq!(g.stats().tracked_keys, 0);
    // Cleared means forgiven, not unlimited: the burst applies again.
    assert!(g.check_frame(victim, None).is_ok());
    assert!(g.check_frame(victim, None).is_ok());
    assert_eq!(g.check_frame(victim, None), Err(Limited::Ip));
}

#[test]
fn blocklist_is_capped() {
    let g = guard(|c| c.limits.max_tracked_sources = 100);
    for n in 0..1_000u32 {
        let addr = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 | n));
        assert!(g.block(addr, Duration::from_secs(u64::from(n) + 1), "x"));
    }
    assert_eq!(g.stats().blocked, 100);
    // The latest blocks, those that end last, are the ones kept.
    assert!(g.is_blocked(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 | 999))));
    assert!(!g.is_blocked(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000))));
}

#[test]
fn blocked_is_sorted_by_source() {
    let g = guard(|_| {});
    for a in ["127.0.1.9", "2001:db8::1", "127.0.1.2", "10.0.0.1"] {
        assert!(g.block(ip(a), Duration::from_secs(60), a));
    }
    let order: Vec<String> = g.blocked().iter().map(|b| b.source.to_string()).collect();
    assert_eq!(
        order,
        ["10.0.0.1", "127.0.1.2", "127.0.1.9", "2001:db8::/64"]
    );
}

#[tokio::test]
async fn cut_token_ends_a_waiting_task() -> TestResult {
    let g = Arc::new(guard(|_| {}));
    let a = ip("127.0.1.1");
    let ticket = g.admit(a)?;
    let task = tokio::spawn(async move {
        let cut = ticket.cut_token();
        cut.cancelled().await;
        // The task ends and drops its ticket.
    });
    g.block(a, Duration::from_secs(60), "test");
    task.await?;
    assert_eq!(g.stats().connections, 0);
    Ok(())
}
