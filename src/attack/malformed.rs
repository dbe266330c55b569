//! malformed: broken frames, one case per fresh connection, cycling through the cases named
//! in `cases` (all by default); [`MalformedCase`] lists them with the bytes each sends.
//!
//! Header errors should end the connection with ERROR BAD_FRAME (request id 0); body errors
//! get ERROR BAD_FRAME with the frame's id and the connection stays open. The report lists,
//! per case, how often it was sent, answered with BAD_FRAME, and closed by the server.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::BufMut;
use rand::rngs::StdRng;
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::canary::{Got, Inbox};
use super::run::{run_slots, Env};
use super::spec::MalformedCase;
use super::wire::{error_code, raw_frame, request_bytes};
use crate::protocol::{raw_header, ErrorCode, Kind, Password, Request, VERSION};

/// How long the server gets to answer a case before the attacker moves on.
const ANSWER_WAIT: Duration = Duration::from_millis(500);

/// After the answer to our frame, how long to wait for anything more (a close).
const AFTER_ANSWER_WAIT: Duration = Duration::from_millis(50);

/// What one case met, over the run.
#[derive(Debug, Default, Clone, Copy)]
struct CaseTally {
    sent: u64,
    bad_frame: u64,
    closed: u64,
}

type Tallies = Arc<Mutex<BTreeMap<&'static str, CaseTally>>>;

pub(crate) async fn run(env: Arc<Env>, cases: Vec<MalformedCase>) {
    let cases: Arc<[MalformedCase]> = cases.into();
    let tallies: Tallies = Arc::default();
    let t = Arc::clone(&tallies);
    run_slots(&env, move |env, slot| {
        slot_loop(env, slot, Arc::clone(&cases), Arc::clone(&t))
    })
    .await;
    let tallies = tallies.lock().unwrap_or_else(PoisonError::into_inner);
    for (case, t) in tallies.iter() {
        env.note(format!(
            "case {case}: sent {}, answered bad_frame {}, closed by the server {}",
            t.sent, t.bad_frame, t.closed
        ));
    }
}

async fn slot_loop(env: Arc<Env>, slot: usize, cases: Arc<[MalformedCase]>, tallies: Tallies) {
    let mut rng = env.rng(slot as u64);
    let mut n = slot;
    while env.live() {
        let Some(&case) = cases.get(n % cases.len().max(1)) else {
            break;
        };
        n = n.wrapping_add(env.slots);
        let Some((stream, source)) = env.open_next(&mut rng).await else {
            break;
        };
        let opened = Instant::now();
        let (bytes, eof) = case_bytes(case, &mut rng);
        let (mut rd, mut wr) = stream.into_split();
        let mut inbox = Inbox::new(source);
        let mut tally = CaseTally {
            sent: 1,
            ..CaseTally::default()
        };
        let end = if env.write(&mut wr, &bytes, 1).await.is_err() {
            Got::Reset
        } else {
            if eof {
                let _ = wr.shutdown().await;
            }
            let mut wait = ANSWER_WAIT;
            loop {
                match inbox.next(&mut rd, &env, wait).await {
                    Got::Frame(f) => {
                        if error_code(&f) == Some(ErrorCode::BadFrame) {
                            tally.bad_frame += 1;
                        }
                        // Our frame was answered; a close, if one comes, follows at once.
                        if f.request_id != 0 {
                            wait = AFTER_ANSWER_WAIT;
                        }
                    }
                    end => break end,
                }
            }
        };
        if matches!(end, Got::Closed | Got::Reset) {
            tally.closed += 1;
        }
        inbox.finish(&env, &end);
        {
            let mut all = tallies.lock().unwrap_or_else(PoisonError::into_inner);
            let t = all.entry(case.as_str()).or_default();
            t.sent += tally.sent;
            t.bad_frame += tally.bad_frame;
            t.closed += tally.closed;
        }
        drop(wr);
        env.pace(opened, &mut rng).await;
    }
}

fn auth_body(user: &[u8], user_len: u8, password: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.put_u8(user_len);
    p.put_slice(user);
    p.put_u16(password.len() as u16);
    p.put_slice(password);
    p
}

/// The bytes of one case, and whether to close our side right after sending them.
pub(crate) fn case_bytes(case: MalformedCase, rng: &mut StdRng) -> (Vec<u8>, bool) {
    let ping = |id| raw_header(VERSION, Kind::Ping as u8, id, 0, 0).to_vec();
    let with = |mut h: Vec<u8>, at: usize, b: u8| {
        if let Some(x) = h.get_mut(at) {
            *x = b;
        }
        h
    };
    match case {
        MalformedCase::BadMagic => (with(ping(1), 0, 0x00), false),
        MalformedCase::BadMagicSecond => (with(ping(1), 1, 0x52), false),
        MalformedCase::BadVersion => (raw_header(2, Kind::Ping as u8, 1, 0, 0).to_vec(), false),
        MalformedCase::UnknownKind => (raw_header(VERSION, 0x7F, 1, 0, 0).to_vec(), false),
        MalformedCase::ReplyKind => (
            raw_header(VERSION, Kind::Pong as u8, 1, 0, 0).to_vec(),
            false,
        ),
        MalformedCase::ReservedFlags => (raw_frame(Kind::Ping, 1, 0x0001, &[]).to_vec(), false),
        MalformedCase::FixedTooLong => (raw_frame(Kind::Ping, 1, 0, &[0]).to_vec(), false),
        MalformedCase::FixedTooShort => {
            (raw_frame(Kind::Fetch, 1, 0, &[0, 0, 0, 1]).to_vec(), false)
        }
        MalformedCase::FieldTooLong => (
            raw_frame(Kind::Auth, 1, 0, &auth_body(&[b'a'; 40], 40, b"x")).to_vec(),
            false,
        ),
        MalformedCase::FieldPastEnd => (
            raw_frame(Kind::Auth, 1, 0, &auth_body(b"short", 20, b"")).to_vec(),
            false,
        ),
        MalformedCase::TrailingBytes => {
            let mut body = auth_body(b"nobody", 6, b"x");
            body.extend_from_slice(b"\x01\x02\x03");
            (raw_frame(Kind::Auth, 1, 0, &body).to_vec(), false)
        }
        MalformedCase::InvalidUtf8 => (
            raw_frame(Kind::Auth, 1, 0, &auth_body(&[0xC3, 0x28, 0xFF], 3, b"x")).to_vec(),
            false,
        ),
        MalformedCase::TooManyItems => {
            let mut p = Vec::new();
            p.put_u8(5);
            p.put_slice(b"alice");
            p.put_u16(0);
            p.put_u32(0);
            p.put_u8(255);
            for i in 0..255u32 {
                p.put_u32(i + 1);
            }
            (raw_frame(Kind::SendMail, 1, 0, &p).to_vec(), false)
        }
        MalformedCase::BitFlip => {
            let reqs = [
                Request::Ping,
                Request::Auth {
                    user: "nobody".into(),
                    password: Password(bytes::Bytes::from_static(b"guess")),
                },
                Request::Fetch { item_id: 1 },
                Request::ListInbox {
                    after: 0,
                    limit: 10,
                },
            ];
            let req = &reqs[rng.gen_range(0..reqs.len())];
            let mut bytes = request_bytes(1, req).to_vec();
            if !bytes.is_empty() {
                let bit = rng.gen_range(0..bytes.len() * 8);
                if let Some(b) = bytes.get_mut(bit / 8) {
                    *b ^= 1 << (bit % 8);
                }
            }
            (bytes, false)
        }
        MalformedCase::TruncatedFrame => {
            let mut b = raw_header(VERSION, Kind::Fetch as u8, 1, 0, 8).to_vec();
            b.extend_from_slice(&[0, 0, 0]);
            (b, true)
        }
        MalformedCase::HeaderThenEof => (ping(1).get(..7).unwrap_or(&[]).to_vec(), true),
        MalformedCase::GarbageAfterValid => {
            let mut b = ping(1);
            b.extend_from_slice(b"\xde\xad\xbe\xef");
            (b, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::attack::testing::{bench, config, TestResult};
    use crate::protocol::{decode_frame, DecodeError, Limits, Role};

    /// What the server's own decoder says about a case's bytes.
    fn verdict(case: MalformedCase) -> Result<Option<Request>, DecodeError> {
        let mut rng = StdRng::seed_from_u64(3);
        let (bytes, _) = case_bytes(case, &mut rng);
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        match decode_frame(&mut buf, &Limits::default(), Role::Server)? {
            Some(frame) => Request::decode(&frame, &Limits::default()).map(Some),
            None => Ok(None),
        }
    }

    #[test]
    fn every_case_is_rejected_by_the_real_decoder() {
        for case in [
            MalformedCase::BadMagic,
            MalformedCase::BadMagicSecond,
            MalformedCase::BadVersion,
            MalformedCase::UnknownKind,
            MalformedCase::ReplyKind,
        ] {
            assert!(verdict(case).is_err_and(|e| e.is_fatal()), "{case}");
        }
        for case in [MalformedCase::ReservedFlags, MalformedCase::FixedTooLong] {
            assert!(verdict(case).is_err_and(|e| e.is_fatal()), "{case}");
        }
        for case in [
            MalformedCase::FixedTooShort,
            MalformedCase::FieldTooLong,
            MalformedCase::FieldPastEnd,
            MalformedCase::TrailingBytes,
            MalformedCase::InvalidUtf8,
            MalformedCase::TooManyItems,
        ] {
            assert!(verdict(case).is_err_and(|e| !e.is_fatal()), "{case}");
        }
        for case in [MalformedCase::TruncatedFrame, MalformedCase::HeaderThenEof] {
            assert!(matches!(verdict(case), Ok(None)), "{case}");
        }
        assert!(matches!(
            verdict(MalformedCase::GarbageAfterValid),
            Ok(Some(Request::Ping))
        ));
        for &case in MalformedCase::ALL {
            let mut rng = StdRng::seed_from_u64(1);
            assert!(!case_bytes(case, &mut rng).0.is_empty(), "{case}");
        }
    }

    /// (sent, answered bad_frame, closed) from a case's note.
    fn tally(notes: &[String], case: &str) -> [u64; 3] {
        let prefix = format!("case {case}: ");
        let note = notes.iter().find(|n| n.starts_with(&prefix));
        let nums: Vec<u64> = note
            .and_then(|n| n.get(prefix.len()..))
            .map(|n| {
                n.split(|c: char| !c.is_ascii_digit())
                    .filter_map(|w| w.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        [0, 1, 2].map(|i| nums.get(i).copied().unwrap_or(0))
    }

    #[tokio::test]
    async fn malformed_cases_are_rejected_by_the_server() -> TestResult {
        let mut cfg = config();
        cfg.firewall.enabled = false;
        let b = bench(cfg).await?;
        let (report, env) = b
            .run_env(
                "kind = \"malformed\"\nconnections = 6\nsources = \"127.0.10.0/29\"\n",
                1.5,
            )
            .await?;
        let case_notes: Vec<&String> = report
            .notes
            .iter()
            .filter(|n| n.starts_with("case "))
            .collect();
        assert_eq!(case_notes.len(), MalformedCase::ALL.len(), "{report:?}");
        assert!(env.count("bad_frame") >= 12, "{report:?}");
        assert!(env.count("conn cut: bad_frame") >= 6, "{report:?}");
        // Header errors: every send answered with BAD_FRAME and closed.
        for case in [
            "bad-magic",
            "bad-magic-second",
            "bad-version",
            "reserved-flags",
        ] {
            let [sent, bad, closed] = tally(&report.notes, case);
            assert!(
                sent >= 1 && bad == sent && closed == sent,
                "{case}: {report:?}"
            );
        }
        // Body errors: answered with BAD_FRAME, connection kept.
        for case in ["fixed-too-short", "invalid-utf8", "too-many-items"] {
            let [sent, bad, closed] = tally(&report.notes, case);
            assert!(
                sent >= 1 && bad == sent && closed == 0,
                "{case}: {report:?}"
            );
        }
        b.stop().await;
        Ok(())
    }
}
