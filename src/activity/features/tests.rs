//! Tests of the extractor as a whole: events in, rows out, every feature checked by value.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::window::EVICT_FRACTION;
use super::*;
use crate::activity::{Event, EventKind};
use crate::guard::SourceKey;
use crate::protocol::Kind;

/// A window-aligned base time (2023-11-14T22:13:20Z).
const T0: i64 = 1_700_000_000_000;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, last))
}

fn ev(t: i64, conn: u64, host: u8, kind: EventKind) -> Event {
    Event {
        t_ms: T0 + t,
        conn,
        ip: ip(host),
        kind,
    }
}

fn frame_in(kind: Kind, size: u32, assemble_ms: u32) -> EventKind {
    EventKind::FrameIn {
        kind: kind as u8,
        size,
        assemble_ms,
    }
}

fn frame_out(kind: Kind, size: u32) -> EventKind {
    EventKind::FrameOut {
        kind: kind as u8,
        size,
    }
}

fn close(reason: &'static str, unread_bytes: u32) -> EventKind {
    EventKind::Close {
        reason,
        unread_bytes,
    }
}

fn run(window_ms: u64, events: &[Event]) -> Vec<FeatureRow> {
    let mut x = Extractor::new(Duration::from_millis(window_ms), 1000);
    for e in events {
        x.push(e);
    }
    x.finish()
}

fn get(row: &FeatureRow, name: &str) -> f64 {
    match row.value(name) {
        Some(v) => v,
        None => panic!("no feature {name}"),
    }
}

/// Asserts the named features of `row`; every other feature must be 0 unless listed in
/// `ignore`.
fn check(row: &FeatureRow, want: &[(&str, f64)], ignore: &[&str]) {
    for (name, value) in want {
        assert_eq!(get(row, name), *value, "feature {name}");
    }
    for (i, name) in FEATURES.iter().enumerate() {
        if want.iter().all(|(n, _)| n != name) && !ignore.contains(name) {
            assert_eq!(row.values[i], 0.0, "feature {name} should be 0");
        }
    }
}

/// History features depend on decay; the window tests ignore them unless they check them.
const HIST: [&str; 4] = [
    "hist_frames_in",
    "hist_permission_denials",
    "hist_auth_guesses",
    "hist_gap_cv",
];

#[test]
fn one_session_in_one_window() {
    let events = [
        ev(0, 1, 5, EventKind::Accept),
        ev(10, 1, 5, frame_in(Kind::Auth, 20, 0)),
        ev(12, 1, 5, EventKind::AuthOk { forgiven: 0 }),
        ev(12, 1, 5, frame_out(Kind::AuthOk, 6)),
        ev(110, 1, 5, frame_in(Kind::Fetch, 8, 3)),
        ev(111, 1, 5, EventKind::PermissionDenied),
        ev(111, 1, 5, frame_out(Kind::Error, 30)),
        ev(310, 1, 5, frame_in(Kind::SendMessage, 100, 5)),
        ev(312, 1, 5, frame_out(Kind::Accepted, 8)),
        ev(400, 1, 5, frame_in(Kind::Bye, 0, 0)),
        ev(400, 1, 5, frame_out(Kind::Ok, 0)),
        ev(401, 1, 5, close("bye", 0)),
    ];
    let rows = run(1000, &events);
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.source, SourceKey::V4(Ipv4Addr::new(127, 0, 1, 5)));
    assert_eq!(r.window_start_ms, T0);
    assert_eq!(r.window_ms, 1000);
    assert_eq!(r.ip(), ip(5));
    check(
        r,
        &[
            ("connections_opened", 1.0),
            ("concurrent_connections_max", 1.0),
            ("closes", 1.0),
            ("frames_in", 4.0),
            ("frames_out", 4.0),
            ("bytes_in", 128.0),
            ("bytes_out", 44.0),
            ("frame_in_size_mean", 32.0),
            ("frame_in_size_max", 100.0),
            ("auth_ok", 1.0),
            ("permission_denials", 1.0),
            ("distinct_kinds", 4.0),
            ("kind_fraction_item", 0.25),
            ("kind_fraction_write", 0.25),
            ("kind_fraction_control", 0.5),
            // Gaps 100, 200, 90.
            ("interarrival_mean_ms", 130.0),
            ("interarrival_var_ms2", (900.0 + 4900.0 + 1600.0) / 3.0),
            // The first window: history is this window alone.
            ("hist_frames_in", 4.0),
            ("hist_permission_denials", 1.0),
        ],
        &["hist_gap_cv"],
    );
    let cv = get(r, "hist_gap_cv");
    let want = ((900.0f64 + 4900.0 + 1600.0) / 3.0).sqrt() / 130.0;
    assert!((cv - want).abs() < 1e-12, "{cv} vs {want}");
}

#[test]
fn typos_a_login_redeems_and_retries_leave_no_guesses_in_the_history() {
    let fail = |t, guess| ev(t, 1, 8, EventKind::AuthFailed { guess });
    let events = [
        ev(0, 1, 8, EventKind::Accept),
        // Window 0: two typos and a retry of one of them, then the right password.
        fail(10, true),
        fail(20, true),
        fail(30, false),
        ev(40, 1, 8, EventKind::AuthOk { forgiven: 2 }),
        // Window 1: a guess nobody redeems, and a frame that took 1.5 s to arrive.
        fail(1010, true),
        ev(1020, 1, 8, frame_in(Kind::Ping, 0, 1_500)),
    ];
    let rows = run(1000, &events);
    assert_eq!(rows.len(), 2);
    let (a, b) = (&rows[0], &rows[1]);
    assert_eq!(
        get(a, "auth_failures"),
        3.0,
        "every failure counts in its window"
    );
    assert_eq!(
        get(a, "hist_auth_guesses"),
        0.0,
        "redeemed typos and retries do not"
    );
    assert_eq!(get(b, "auth_failures"), 1.0);
    assert_eq!(get(b, "hist_auth_guesses"), 1.0);
    assert_eq!(
        get(b, "slow_frame_ms_max"),
        500.0,
        "only the time past the grace"
    );
    // A frame within the grace is no slow frame, however it was split.
    let quick = run(
        1000,
        &[ev(0, 1, 8, frame_in(Kind::Ping, 0, SLOW_FRAME_GRACE_MS))],
    );
    assert_eq!(get(&quick[0], "slow_frame_ms_max"), 0.0);
}

#[test]
fn failures_timeouts_and_closes_are_counted_by_reason() {
    let events = [
        ev(0, 1, 7, EventKind::Accept),
        ev(1, 0, 7, EventKind::Refused { reason: "blocked" }),
        ev(
            2,
            1,
            7,
            EventKind::DecodeError {
                reason: "frame_too_large",
            },
        ),
        ev(
            3,
            1,
            7,
            EventKind::DecodeError {
                reason: "invalid_utf8",
            },
        ),
        ev(
            4,
            1,
            7,
            EventKind::DecodeError {
                reason: "bad_magic",
            },
        ),
        ev(5, 1, 7, EventKind::AuthFailed { guess: true }),
        ev(
            6,
            1,
            7,
            EventKind::RateLimited {
                reason: "login_rate_ip",
            },
        ),
        ev(
            7,
            1,
            7,
            EventKind::Timeout {
                reason: "slow_frame",
            },
        ),
        ev(
            8,
            1,
            7,
            EventKind::Timeout {
                reason: "write_timeout",
            },
        ),
        ev(9, 1, 7, EventKind::Timeout { reason: "idle" }),
        ev(10, 1, 7, close("write_timeout", 5000)),
        ev(11, 2, 7, EventKind::Accept),
        ev(12, 2, 7, close("eof", 7)),
    ];
    let rows = run(1000, &events);
    assert_eq!(rows.len(), 1);
    check(
        &rows[0],
        &[
            ("connections_opened", 2.0),
            ("concurrent_connections_max", 1.0),
            ("refused", 1.0),
            ("closes", 2.0),
            ("server_closes", 1.0),
            ("decode_errors", 3.0),
            ("header_errors", 2.0),
            ("frame_too_large", 1.0),
            ("auth_failures", 1.0),
            ("rate_limit_hits", 1.0),
            ("timeouts", 3.0),
            ("frame_timeouts", 1.0),
            ("write_timeouts", 1.0),
            ("unread_outbound_bytes", 5007.0),
            ("hist_auth_guesses", 1.0),
        ],
        &[],
    );
}

#[test]
fn windows_are_aligned_and_close_at_their_end() {
    let mut x = Extractor::new(Duration::from_secs(1), 10);
    x.push(&ev(999, 1, 1, frame_in(Kind::Ping, 0, 0)));
    x.push(&ev(1000, 1, 1, frame_in(Kind::Ping, 0, 0)));
    x.push(&ev(1999, 1, 1, frame_in(Kind::Ping, 0, 0)));
    assert!(x.close_until(T0 + 999).is_empty());
    let first = x.close_until(T0 + 1000);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].window_start_ms, T0);
    assert_eq!(get(&first[0], "frames_in"), 1.0);
    // The window [T0+1000, T0+2000) ends at T0+2000, not before.
    assert!(x.close_until(T0 + 1999).is_empty());
    let second = x.close_until(T0 + 2000);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].window_start_ms, T0 + 1000);
    assert_eq!(get(&second[0], "frames_in"), 2.0);
    // The gap 999 -> 1000 counts in the second window, with 1000 -> 1999.
    assert_eq!(get(&second[0], "interarrival_mean_ms"), 500.0);
    assert!(x.finish().is_empty());
    // Negative times align downwards too.
    let mut y = Extractor::new(Duration::from_millis(500), 10);
    y.push(&Event {
        t_ms: -1,
        conn: 1,
        ip: ip(1),
        kind: EventKind::Accept,
    });
    let rows = y.finish();
    assert_eq!(rows[0].window_start_ms, -500);
    assert_eq!(rows[0].window_ms, 500);
}

#[test]
fn rows_come_in_window_then_source_order() {
    let events = [
        ev(0, 1, 9, frame_in(Kind::Ping, 0, 0)),
        ev(1, 2, 3, frame_in(Kind::Ping, 0, 0)),
        ev(1500, 2, 3, frame_in(Kind::Ping, 0, 0)),
        ev(1600, 1, 9, frame_in(Kind::Ping, 0, 0)),
        ev(1700, 3, 200, frame_in(Kind::Ping, 0, 0)),
    ];
    let rows = run(1000, &events);
    let keys: Vec<(i64, String)> = rows
        .iter()
        .map(|r| (r.window_start_ms - T0, r.source.to_string()))
        .collect();
    let want = [
        (0, "127.0.1.3"),
        (0, "127.0.1.9"),
        (1000, "127.0.1.3"),
        (1000, "127.0.1.9"),
        (1000, "127.0.1.200"),
    ];
    let want: Vec<(i64, String)> = want.iter().map(|(t, s)| (*t, s.to_string())).collect();
    // 127.0.1.200 sorts after 127.0.1.9 as an address, not as text.
    assert_eq!(keys, want);
}

#[test]
fn events_up_to_one_window_late_count_in_their_own_window() {
    let mut x = Extractor::new(Duration::from_secs(1), 10);
    x.push(&ev(1500, 1, 1, frame_in(Kind::Ping, 0, 0)));
    // One window late, not yet closed: its own window.
    x.push(&ev(900, 2, 1, frame_in(Kind::Ping, 0, 0)));
    let rows = x.close_until(T0 + 2000);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].window_start_ms, T0);
    assert_eq!(get(&rows[0], "frames_in"), 1.0);
    assert_eq!(rows[1].window_start_ms, T0 + 1000);
    assert_eq!(get(&rows[1], "frames_in"), 1.0);
    assert_eq!(x.stats().late_events, 0);
    // The window of T0+500 is closed: the event counts in the current window.
    x.push(&ev(2100, 1, 1, frame_in(Kind::Ping, 0, 0)));
    x.push(&ev(500, 3, 1, frame_in(Kind::Ping, 0, 0)));
    // Two windows behind the source's newest window: final even though not closed.
    x.push(&ev(4200, 1, 1, frame_in(Kind::Ping, 0, 0)));
    x.push(&ev(2200, 1, 1, frame_in(Kind::Ping, 0, 0)));
    assert_eq!(x.stats().late_events, 2);
    let rows = x.finish();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].window_start_ms, T0 + 2000);
    assert_eq!(get(&rows[0], "frames_in"), 2.0);
    assert_eq!(rows[1].window_start_ms, T0 + 4000);
    assert_eq!(get(&rows[1], "frames_in"), 2.0);
    // The late frame stamped before its predecessor counts a zero gap.
    assert_eq!(get(&rows[1], "interarrival_mean_ms"), 1050.0);
}

#[test]
fn a_late_event_of_a_new_source_goes_into_the_first_open_window() {
    let mut x = Extractor::new(Duration::from_secs(1), 10);
    assert!(x.close_until(T0 + 3000).is_empty());
    x.push(&ev(100, 1, 4, EventKind::AuthFailed { guess: true }));
    assert_eq!(x.stats().late_events, 1);
    let rows = x.finish();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].window_start_ms, T0 + 3000);
    assert_eq!(get(&rows[0], "auth_failures"), 1.0);
}

#[test]
fn open_connections_emit_idle_rows() {
    let events = [
        ev(100, 1, 2, EventKind::Accept),
        ev(200, 2, 2, EventKind::Accept),
        ev(1200, 1, 2, close("eof", 0)),
        // Nothing in windows 2 and 3, one connection still open.
        ev(4500, 2, 2, close("idle", 0)),
        // Nothing at all in windows 5 and 6.
        ev(7000, 3, 2, EventKind::Refused { reason: "blocked" }),
    ];
    let rows = run(1000, &events);
    let starts: Vec<i64> = rows.iter().map(|r| r.window_start_ms - T0).collect();
    assert_eq!(starts, [0, 1000, 2000, 3000, 4000, 7000]);
    let conc: Vec<f64> = rows
        .iter()
        .map(|r| get(r, "concurrent_connections_max"))
        .collect();
    assert_eq!(conc, [2.0, 2.0, 1.0, 1.0, 1.0, 0.0]);
    check(&rows[2], &[("concurrent_connections_max", 1.0)], &HIST);
    check(
        &rows[4],
        &[
            ("concurrent_connections_max", 1.0),
            ("closes", 1.0),
            ("server_closes", 1.0),
        ],
        &HIST,
    );
}

#[test]
fn idle_rows_stop_when_the_source_is_stale() {
    // An accept whose close was lost: idle rows for IDLE_ROWS_MAX_MS, then none.
    let mut x = Extractor::new(Duration::from_secs(10), 10);
    x.push(&ev(0, 1, 2, EventKind::Accept));
    let rows = x.close_until(T0 + 3_600_000);
    assert_eq!(rows.len() as i64, IDLE_ROWS_MAX_MS / 10_000);
    assert_eq!(rows.last().map(|r| r.window_start_ms), Some(T0 + 290_000));
    // Forgotten: a close now does not go negative, and the history restarts.
    x.push(&ev(3_600_001, 1, 2, close("eof", 0)));
    let rows = x.finish();
    assert_eq!(rows.len(), 1);
    check(&rows[0], &[("closes", 1.0)], &[]);
    assert_eq!(x.stats().forgotten_sources, 1);
    assert_eq!(x.stats().sources, 1);
}

#[test]
fn history_decays_with_the_half_life() {
    let events = [
        ev(0, 1, 1, frame_in(Kind::Fetch, 8, 0)),
        ev(1, 1, 1, EventKind::PermissionDenied),
        ev(1, 1, 1, frame_out(Kind::Error, 20)),
        ev(60_000, 1, 1, frame_in(Kind::Ping, 0, 0)),
        ev(60_001, 1, 1, frame_out(Kind::Pong, 0)),
    ];
    let rows = run(1000, &events);
    assert_eq!(rows.len(), 2);
    let r = &rows[1];
    // One half-life later the first window weighs one half.
    check(
        r,
        &[
            ("frames_in", 1.0),
            ("frames_out", 1.0),
            ("distinct_kinds", 1.0),
            ("kind_fraction_control", 1.0),
            ("interarrival_mean_ms", 60_000.0),
            ("hist_frames_in", 1.5),
            ("hist_permission_denials", 0.5),
        ],
        &[],
    );
}

#[test]
fn regular_gaps_have_no_variation() {
    let events: Vec<Event> = (0..30)
        .map(|i| ev(i * 1000 + 5, 1, 1, frame_in(Kind::Fetch, 8, 0)))
        .collect();
    let rows = run(1000, &events);
    assert_eq!(rows.len(), 30);
    for r in &rows[1..] {
        assert_eq!(get(r, "interarrival_mean_ms"), 1000.0);
        assert_eq!(get(r, "interarrival_var_ms2"), 0.0);
        assert!(get(r, "hist_gap_cv").abs() < 1e-6);
    }
    // Irregular gaps: 10, 1990, 10, 1990, ...
    let events: Vec<Event> = (0..30)
        .map(|i| {
            ev(
                (i / 2) * 2000 + (i % 2) * 10,
                1,
                1,
                frame_in(Kind::Ping, 0, 0),
            )
        })
        .collect();
    let rows = run(1000, &events);
    let last = &rows[rows.len() - 1];
    assert!(
        get(last, "hist_gap_cv") > 0.9,
        "{}",
        get(last, "hist_gap_cv")
    );
}

#[test]
fn sources_are_bounded_and_the_least_recently_seen_go_first() {
    let mut x = Extractor::new(Duration::from_secs(1), 4);
    for host in 1..=4u8 {
        x.push(&ev(i64::from(host), 1, host, frame_in(Kind::Ping, 0, 0)));
    }
    // Host 1 is seen again: host 2 is now the least recently seen.
    x.push(&ev(10, 1, 1, frame_in(Kind::Ping, 0, 0)));
    x.push(&ev(11, 1, 5, frame_in(Kind::Ping, 0, 0)));
    let s = x.stats();
    assert_eq!(s.sources, 4);
    assert_eq!(s.evicted_sources, 1);
    assert_eq!(s.dropped_windows, 1);
    let rows = x.finish();
    let hosts: Vec<String> = rows.iter().map(|r| r.source.to_string()).collect();
    assert_eq!(hosts, ["127.0.1.1", "127.0.1.3", "127.0.1.4", "127.0.1.5"]);
    // Many more sources than room: never more than the bound.
    let mut x = Extractor::new(Duration::from_secs(1), 100);
    for i in 0..10_000u32 {
        x.push(&Event {
            t_ms: T0 + i64::from(i),
            conn: 1,
            ip: IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + i)),
            kind: EventKind::Accept,
        });
        assert!(x.stats().sources <= 100);
    }
    let s = x.stats();
    assert_eq!(s.evicted_sources + s.sources, 10_000);
    assert!(s.sources >= 100 - 100 / EVICT_FRACTION as u64);
}

#[test]
fn ipv6_sources_are_grouped_by_prefix() {
    let a: IpAddr = "2001:db8::1".parse().unwrap_or(ip(0));
    let b: IpAddr = "2001:db8::2".parse().unwrap_or(ip(0));
    let mapped: IpAddr = "::ffff:127.0.1.1".parse().unwrap_or(ip(0));
    let mut x = Extractor::new(Duration::from_secs(1), 10);
    for (i, addr) in [a, b, mapped, ip(1)].into_iter().enumerate() {
        x.push(&Event {
            t_ms: T0 + i as i64,
            conn: i as u64,
            ip: addr,
            kind: EventKind::Accept,
        });
    }
    let rows = x.finish();
    let got: Vec<(String, f64)> = rows
        .iter()
        .map(|r| (r.source.to_string(), get(r, "connections_opened")))
        .collect();
    assert_eq!(
        got,
        [
            ("127.0.1.1".to_string(), 2.0),
            ("2001:db8::/64".to_string(), 2.0)
        ]
    );
    assert_eq!(rows[1].ip().to_string(), "2001:db8::");
    let x = Extractor::new(Duration::from_secs(1), 10).with_ipv6_prefix(128);
    assert_eq!(x.source_of(a).to_string(), "2001:db8::1/128");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn arb_kind() -> impl Strategy<Value = EventKind> {
        prop_oneof![
            Just(EventKind::Accept),
            Just(EventKind::Refused { reason: "blocked" }),
            (0u8..=255, any::<u32>(), any::<u32>()).prop_map(|(kind, size, assemble_ms)| {
                EventKind::FrameIn {
                    kind,
                    size,
                    assemble_ms,
                }
            }),
            (0u8..=255, any::<u32>()).prop_map(|(kind, size)| EventKind::FrameOut { kind, size }),
            Just(EventKind::DecodeError {
                reason: "bad_magic"
            }),
            (0u32..4).prop_map(|forgiven| EventKind::AuthOk { forgiven }),
            any::<bool>().prop_map(|guess| EventKind::AuthFailed { guess }),
            Just(EventKind::RateLimited {
                reason: "frame_rate_ip"
            }),
            Just(EventKind::PermissionDenied),
            Just(EventKind::Timeout { reason: "idle" }),
            any::<u32>().prop_map(|unread_bytes| EventKind::Close {
                reason: "eof",
                unread_bytes
            }),
        ]
    }

    /// Events in time order (steps of 0 to 3 s, sometimes a huge jump) from a few hosts.
    fn arb_events() -> impl Strategy<Value = Vec<Event>> {
        proptest::collection::vec(
            (
                prop_oneof![9 => 0i64..3000, 1 => 0i64..10_000_000],
                0u8..6,
                arb_kind(),
            ),
            0..200,
        )
        .prop_map(|steps| {
            let mut t = T0;
            steps
                .into_iter()
                .map(|(dt, host, kind)| {
                    t += dt;
                    Event {
                        t_ms: t,
                        conn: u64::from(host),
                        ip: ip(host),
                        kind,
                    }
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Values are finite, rows are unique per (source, window) and sorted, and the
        /// rows do not depend on how often the caller closes windows.
        #[test]
        fn rows_are_finite_unique_and_independent_of_the_close_cadence(
            events in arb_events(),
            window_ms in prop_oneof![Just(1u64), Just(1000), Just(10_000), 1u64..5000],
        ) {
            let w = Duration::from_millis(window_ms);
            let mut once = Extractor::new(w, 1000);
            let mut often = Extractor::new(w, 1000);
            let mut often_rows = Vec::new();
            for e in &events {
                once.push(e);
                often.push(e);
                often_rows.extend(often.close_until(e.t_ms));
            }
            often_rows.extend(often.finish());
            let once_rows = once.finish();
            prop_assert_eq!(&once_rows, &often_rows);
            let keys: Vec<(i64, SourceKey)> =
                once_rows.iter().map(|r| (r.window_start_ms, r.source)).collect();
            prop_assert!(keys.windows(2).all(|p| p[0] < p[1]), "sorted and unique");
            for r in &once_rows {
                prop_assert_eq!(r.values.len(), FEATURES.len());
                prop_assert!(r.values.iter().all(|v| v.is_finite() && *v >= 0.0));
                prop_assert_eq!(r.window_start_ms.rem_euclid(window_ms as i64), 0);
            }
            prop_assert_eq!(once.stats().late_events, 0);
        }

        /// Shuffled input never panics, never emits a non-finite value, and never tracks
        /// more sources than allowed.
        #[test]
        fn disorder_is_tolerated(
            events in arb_events(),
            swaps in proptest::collection::vec((0usize..200, 0usize..200), 0..50),
            closes in proptest::collection::vec(0usize..200, 0..10),
        ) {
            let mut events = events;
            let n = events.len();
            if n > 0 {
                for (a, b) in swaps {
                    events.swap(a % n, b % n);
                }
            }
            let mut x = Extractor::new(Duration::from_millis(700), 3);
            let mut rows = Vec::new();
            for (i, e) in events.iter().enumerate() {
                x.push(e);
                prop_assert!(x.stats().sources <= 3);
                if closes.contains(&i) {
                    rows.extend(x.close_until(e.t_ms));
                }
            }
            rows.extend(x.finish());
            for r in &rows {
                prop_assert!(r.values.iter().all(|v| v.is_finite()));
            }
        }
    }
}
