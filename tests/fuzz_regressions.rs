//! Fuzz findings and the committed seed corpus, replayed in plain `cargo test`.
//!
//! The checks are the fuzz targets' own: `fuzz/src/checks.rs` is included here with
//! `#[path]`, so a corpus file means the same thing to `cargo fuzz run` and to this file,
//! and no cargo-fuzz or nightly toolchain is needed. Replaying keeps the corpus meaningful:
//! a change that makes a seed panic, or that breaks an invariant on it, fails here first.
//!
//! A crash found by a fuzzer is fixed, and its input becomes a named test in the last
//! section below (bytes inline, with the target it came from). See docs/FUZZING.md.

#[allow(dead_code)]
#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::error::Error;
use std::path::{Path, PathBuf};

use rampart::protocol::{DecodeError, Frame, Kind, Limits, Reply, Request};

type TestResult = Result<(), Box<dyn Error>>;

/// The committed corpus of one fuzz target.
fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
        .join(target)
}

/// Runs `check` on every file of a target's corpus, in name order, and returns how many
/// there were. The file name is printed first, so a failure names its input.
fn replay(target: &str, check: impl Fn(&[u8])) -> Result<usize, Box<dyn Error>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    for path in &files {
        println!("replaying {}", path.display());
        check(&std::fs::read(path)?);
    }
    Ok(files.len())
}

#[test]
fn decode_frame_corpus_replays() -> TestResult {
    let n = replay("decode_frame", |d| {
        // The target's checks, plus decode_bodies' canonical re-encoding of every body.
        for f in checks::check_decode_input(d).frames {
            checks::check_body(&f, &Limits::default());
        }
    })?;
    assert!(n >= 20, "decode_frame corpus has only {n} files");
    Ok(())
}

#[test]
fn decode_chunked_corpus_replays() -> TestResult {
    let n = replay("decode_chunked", |d| {
        checks::check_chunked_input(d);
    })?;
    assert!(n >= 10, "decode_chunked corpus has only {n} files");
    Ok(())
}

#[test]
fn decode_bodies_corpus_replays() -> TestResult {
    let n = replay("decode_bodies", |d| {
        checks::check_body_input(d);
    })?;
    assert!(n >= 20, "decode_bodies corpus has only {n} files");
    Ok(())
}

#[test]
fn parse_config_corpus_replays() -> TestResult {
    let n = replay("parse_config", |d| {
        checks::check_config_input(d);
    })?;
    assert!(n >= 5, "parse_config corpus has only {n} files");
    Ok(())
}

/// The seed corpus reaches every frame kind (a body of each decodes) and every decode
/// error reason, so replaying it exercises the whole decoder.
#[test]
fn corpus_reaches_every_kind_and_every_error() -> TestResult {
    use std::collections::BTreeSet;
    let limits = Limits::default();
    let mut kinds = BTreeSet::new();
    let mut reasons = BTreeSet::new();
    let mut body = |f: &Frame, reasons: &mut BTreeSet<&'static str>| {
        let res = if f.kind.is_request() {
            Request::decode(f, &limits).map(|_| ())
        } else {
            Reply::decode(f, &limits).map(|_| ())
        };
        match res {
            Ok(()) => {
                kinds.insert(f.kind);
            }
            Err(e) => {
                reasons.insert(e.reason());
            }
        }
    };
    for entry in std::fs::read_dir(corpus_dir("decode_frame"))? {
        let data = std::fs::read(entry?.path())?;
        let Some((&selector, stream)) = data.split_first() else {
            continue;
        };
        let d = checks::decode_stream(stream, checks::role_of(selector), &limits);
        for f in &d.frames {
            body(f, &mut reasons);
        }
        reasons.extend(d.error.as_ref().map(DecodeError::reason));
    }
    for entry in std::fs::read_dir(corpus_dir("decode_bodies"))? {
        let data = std::fs::read(entry?.path())?;
        if let Some((kind, payload)) = data
            .split_first()
            .and_then(|(&k, p)| Some((Kind::from_u8(k)?, p)))
        {
            body(&Frame::new(kind, 1, payload.to_vec()), &mut reasons);
        }
    }
    let missing: Vec<_> = Kind::ALL.iter().filter(|k| !kinds.contains(k)).collect();
    assert!(missing.is_empty(), "no decodable body of {missing:?}");
    let missing: Vec<_> = DecodeError::REASONS
        .iter()
        .filter(|r| !reasons.contains(*r))
        .collect();
    assert!(missing.is_empty(), "no input rejected for {missing:?}");
    Ok(())
}

/// The committed corpus stays small enough to review and to replay in CI.
#[test]
fn corpus_stays_small() -> TestResult {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus");
    let mut total = 0u64;
    for target in std::fs::read_dir(&root)? {
        for file in std::fs::read_dir(target?.path())? {
            total += file?.metadata()?.len();
        }
    }
    assert!(total < 2 * 1024 * 1024, "fuzz/corpus holds {total} bytes");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Known-bad inputs, through the decode_frame target's checks: each is rejected for its
// reason at the first offending byte, with nothing consumed.

fn header(kind: u8, flags: u16, len: u32) -> Vec<u8> {
    let mut h = b"RM\x01".to_vec();
    h.push(kind);
    h.extend_from_slice(&1u32.to_be_bytes());
    h.extend_from_slice(&flags.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    h
}

/// Decodes `stream` as the server through the target's checks and expects `reason`.
fn check_rejected(stream: &[u8], reason: &str) {
    let input = [&[0u8][..], stream].concat();
    let decoded = checks::check_decode_input(&input);
    let err = decoded.error.as_ref().map(DecodeError::reason);
    assert_eq!(err, Some(reason), "{stream:?}");
    assert_eq!(decoded.remainder, stream.len(), "nothing consumed");
    // And the same in pieces.
    let chunked = [&[0u8, 3, 1, 2, 5][..], stream].concat();
    assert_eq!(checks::check_chunked_input(&chunked), decoded);
}

#[test]
fn four_gib_length_is_rejected() {
    check_rejected(
        &header(Kind::SendMessage as u8, 0, u32::MAX),
        "frame_too_large",
    );
}

#[test]
fn bad_magic_rr_is_rejected() {
    check_rejected(&[0x52, 0x52], "bad_magic");
}

#[test]
fn http_get_is_rejected() {
    check_rejected(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", "bad_magic");
}

#[test]
fn tls_client_hello_is_rejected() {
    check_rejected(&[0x16, 0x03, 0x01, 0x00, 0x2f, 0x01], "bad_magic");
}

#[test]
fn ssh_banner_is_rejected() {
    check_rejected(b"SSH-2.0-OpenSSH_9.6\r\n", "bad_magic");
}

#[test]
fn reserved_flags_are_rejected() {
    check_rejected(&header(Kind::Ping as u8, 0x8000, 0), "reserved_flags");
}

#[test]
fn reply_kind_sent_to_the_server_is_rejected() {
    check_rejected(&header(Kind::Error as u8, 0, 0), "unexpected_kind");
}

// ---------------------------------------------------------------------------------------
// Crashes found by fuzzing, fixed, and kept. None so far: the runs recorded in
// docs/FUZZING.md found no crash, leak or timeout. Add each new one here as
// `fn <target>_<what_it_broke>()` with its input bytes and the target's check.
