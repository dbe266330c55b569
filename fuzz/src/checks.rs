//! Invariant checks shared by the fuzz targets and by `tests/fuzz_regressions.rs`.
//!
//! Everything here is a function over bytes that depends only on rampart, `bytes`, `toml`
//! and `tempfile` (the CSV round trip writes one scratch file), so the main crate's
//! regression tests include this very file with `#[path]` and replay crashes and the seed
//! corpus through exactly the checks the fuzzers run, without cargo-fuzz. Each check panics
//! with a message that names the broken invariant.
//!
//! Input formats are plain bytes (no `arbitrary`), so a corpus file means the same thing to
//! a fuzz target and to `cargo test`:
//!
//! - [`check_decode_input`]: one role byte (even: server, odd: client), then the stream.
//! - [`check_chunked_input`]: one role byte, one cut-count byte (mod 17), that many cut
//!   sizes (one byte each, 0 counts as 1), then the stream.
//! - [`check_body_input`]: one kind byte, then the payload.
//! - [`check_config_input`]: TOML text (UTF-8; anything else is skipped).
//! - [`check_scenario_input`]: scenario TOML text (UTF-8; anything else is skipped).
//! - [`check_csv_input`]: the bytes of a feature CSV file.

use bytes::BytesMut;
use rampart::config::Config;
use rampart::protocol::{
    bytes_wanted, decode_frame, encode_reply, encode_request, max_payload, DecodeError, Frame,
    FrameDecoder, Kind, Limits, Reply, Request, Role, HEADER_LEN, MAGIC, VERSION,
};

/// Wraps every call into rampart's decoders, so a fuzz target can watch exactly what the
/// decoders do (the decoder targets record their allocations) and nothing the checks
/// themselves do.
pub trait Around {
    /// Runs `f`.
    fn call<T>(&self, f: impl FnOnce() -> T) -> T;
}

/// Calls straight through.
pub struct Plain;

impl Around for Plain {
    fn call<T>(&self, f: impl FnOnce() -> T) -> T {
        f()
    }
}

/// The role a selector byte picks: even bytes decode as the server, odd ones as the client.
pub fn role_of(selector: u8) -> Role {
    if selector & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    }
}

/// What decoding a stream gives: the frames, the fatal error if one stopped it, and how
/// many bytes were left undecoded (a partial frame, or the bytes at and after the error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Every complete frame, in order.
    pub frames: Vec<Frame>,
    /// The header error that ended decoding, if any.
    pub error: Option<DecodeError>,
    /// Bytes left in the buffer at the end.
    pub remainder: usize,
}

/// Checks one frame that `decode_frame` returned after it took `used` bytes.
fn check_frame(f: &Frame, used: usize, role: Role, limits: &Limits) {
    assert_eq!(
        used,
        HEADER_LEN + f.payload.len(),
        "a frame consumes exactly its header and payload"
    );
    let max = max_payload(f.kind, limits);
    assert!(
        f.payload.len() as u64 <= u64::from(max),
        "{:?} payload of {} bytes exceeds max_payload {max}",
        f.kind,
        f.payload.len()
    );
    assert!(
        f.payload.len() as u64 <= u64::from(limits.frame_ceiling()),
        "payload above the frame ceiling"
    );
    assert_eq!(
        f.kind.is_request(),
        role == Role::Server,
        "{:?} decoded in the wrong direction",
        f.kind
    );
    assert_eq!(f.flags, 0, "reserved flags accepted");
}

/// Decodes `stream` frame by frame as `role` until it needs more bytes or fails, checking
/// that every frame is within its limit and that consumed bytes plus the remainder add up to
/// the input.
pub fn decode_stream(stream: &[u8], role: Role, limits: &Limits) -> Decoded {
    decode_stream_around(stream, role, limits, &Plain)
}

/// What one call of the frame decoder gave, after the checks every call must pass.
enum Step {
    /// A complete frame and the bytes it took.
    Frame(Frame, usize),
    /// More bytes are needed; nothing was consumed.
    More,
    /// A fatal header error; nothing was consumed.
    Error(DecodeError),
}

/// Calls the frame decoder once on `buf` through `around` and checks the result: a frame is
/// within its limits and took exactly its header and payload, and "need more" and errors
/// consume nothing, errors being fatal header errors.
///
/// `decoder` is the server's [`FrameDecoder`]; [`decode_in_pieces`] uses the free function
/// [`decode_frame`], so the decode_chunked target also checks that the two agree.
fn step(buf: &mut BytesMut, decoder: &FrameDecoder, around: &impl Around) -> Step {
    let (role, limits) = (decoder.role(), decoder.limits());
    let before = buf.len();
    match around.call(|| decoder.decode(buf)) {
        Ok(Some(f)) => {
            let used = before - buf.len();
            check_frame(&f, used, role, limits);
            Step::Frame(f, used)
        }
        Ok(None) => {
            assert_eq!(buf.len(), before, "\"need more bytes\" consumed bytes");
            if let Some(wanted) = bytes_wanted(buf) {
                assert!(wanted > 0, "a complete frame was left undecoded");
            }
            Step::More
        }
        Err(e) => {
            assert_eq!(buf.len(), before, "a rejected header consumed bytes");
            assert!(
                e.is_fatal(),
                "the frame decoder returned a body error: {e:?}"
            );
            Step::Error(e)
        }
    }
}

/// [`decode_stream`], with every decoder call made through `around`.
pub fn decode_stream_around(
    stream: &[u8],
    role: Role,
    limits: &Limits,
    around: &impl Around,
) -> Decoded {
    let mut buf = BytesMut::from(stream);
    let mut frames = Vec::new();
    let (error, remainder) = visit_stream(&mut buf, role, limits, around, |f| frames.push(f));
    Decoded {
        frames,
        error,
        remainder,
    }
}

/// The loop of [`decode_stream_around`] over a buffer holding the whole stream: hands each
/// checked frame to `on_frame` as it is decoded (nothing is collected), and returns the
/// error that ended decoding and the bytes left over, after checking that consumed bytes
/// plus the remainder add up to the stream.
pub fn visit_stream(
    buf: &mut BytesMut,
    role: Role,
    limits: &Limits,
    around: &impl Around,
    mut on_frame: impl FnMut(Frame),
) -> (Option<DecodeError>, usize) {
    let len = buf.len();
    let mut consumed = 0usize;
    let error = with_decoder(limits, role, |decoder| loop {
        match step(buf, decoder, around) {
            Step::Frame(f, used) => {
                consumed += used;
                on_frame(f);
            }
            Step::More => break None,
            Step::Error(e) => break Some(e),
        }
    });
    assert_eq!(
        consumed + buf.len(),
        len,
        "consumed bytes and the remainder add up to the input"
    );
    (error, buf.len())
}

thread_local! {
    /// The server's and the client's decoder under the default limits, built once per
    /// thread: most targets decode under those, and building a decoder's table per input
    /// was a measurable share of a short execution.
    static DEFAULT_DECODERS: [FrameDecoder; 2] = [
        FrameDecoder::new(Limits::default(), Role::Server),
        FrameDecoder::new(Limits::default(), Role::Client),
    ];
}

/// Runs `f` with a decoder for `role` under `limits`.
fn with_decoder<T>(limits: &Limits, role: Role, f: impl FnOnce(&FrameDecoder) -> T) -> T {
    if *limits == Limits::default() {
        DEFAULT_DECODERS.with(|d| f(&d[usize::from(role == Role::Client)]))
    } else {
        f(&FrameDecoder::new(*limits, role))
    }
}

/// One request frame as the server's connection loop sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A frame within its kind's limit, handed to the session.
    Frame(Frame),
    /// A frame whose length is over its kind's limit but within the frame ceiling: its
    /// boundary is trusted, so the server skips its payload and answers ERROR `too_large`
    /// with this request id (docs/PROTOCOL.md, 2.2).
    Oversized {
        /// The frame's kind.
        kind: Kind,
        /// Its request id, which the ERROR reply carries.
        request_id: u32,
        /// Its declared payload length.
        len: u32,
    },
}

/// A request stream as the server reads it: every frame it handles or skips, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStream {
    /// Handled and skipped frames, in order; each gets exactly one reply.
    pub incoming: Vec<Incoming>,
    /// The fatal header error that ended the stream, if any (the server closes there).
    pub error: Option<DecodeError>,
    /// Bytes left undecoded: a partial frame, or the bytes at and after the error. A
    /// skipped frame's payload that never fully arrived counts as consumed.
    pub remainder: usize,
}

/// Models how the server reads a request stream: like [`decode_stream`] as the server, but
/// a `frame_too_large` whose length is within `limits.frame_ceiling()` does not end it; the
/// frame (header and payload, as far as they arrived) is skipped and decoding goes on.
pub fn server_stream(stream: &[u8], limits: &Limits) -> ServerStream {
    let mut buf = BytesMut::from(stream);
    let mut incoming = Vec::new();
    let mut consumed = 0usize;
    let error = with_decoder(limits, Role::Server, |decoder| loop {
        match step(&mut buf, decoder, &Plain) {
            Step::Frame(f, used) => {
                consumed += used;
                incoming.push(Incoming::Frame(f));
            }
            Step::More => break None,
            Step::Error(DecodeError::FrameTooLarge { kind, len, max })
                if len <= limits.frame_ceiling() =>
            {
                assert_eq!(
                    max,
                    max_payload(kind, limits),
                    "frame_too_large names another limit"
                );
                assert!(
                    len > max,
                    "{kind:?} length {len} within {max} refused as too large"
                );
                assert!(
                    kind.is_request(),
                    "{kind:?} length checked before its direction"
                );
                let id: [u8; 4] = buf
                    .get(4..8)
                    .and_then(|b| b.try_into().ok())
                    .expect("frame_too_large before the header arrived");
                assert!(
                    buf.len() >= HEADER_LEN,
                    "frame_too_large before the header arrived"
                );
                let skip = (HEADER_LEN + len as usize).min(buf.len());
                bytes::Buf::advance(&mut buf, skip);
                consumed += skip;
                incoming.push(Incoming::Oversized {
                    kind,
                    request_id: u32::from_be_bytes(id),
                    len,
                });
            }
            Step::Error(e) => break Some(e),
        }
    });
    assert_eq!(
        consumed + buf.len(),
        stream.len(),
        "consumed bytes and the remainder add up to the input"
    );
    ServerStream {
        incoming,
        error,
        remainder: buf.len(),
    }
}

/// Decodes `stream` fed in pieces of the given sizes (cycled; 0 counts as 1), stopping at
/// the first error as a connection would. It calls the free function [`decode_frame`],
/// while [`decode_stream`] runs the server's [`FrameDecoder`], so comparing the two also
/// compares the decoders.
pub fn decode_in_pieces(stream: &[u8], cuts: &[usize], role: Role, limits: &Limits) -> Decoded {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = stream;
    let mut sizes = cuts.iter().cycle();
    while !rest.is_empty() {
        let n = sizes
            .next()
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match decode_frame(&mut buf, limits, role) {
                Ok(Some(f)) => {
                    check_frame(&f, before - buf.len(), role, limits);
                    frames.push(f);
                }
                Ok(None) => break,
                Err(e) => {
                    // The rest of the input never reaches the decoder; count it as left over
                    // so the remainder compares with the whole-input result.
                    return Decoded {
                        frames,
                        error: Some(e),
                        remainder: buf.len() + rest.len(),
                    };
                }
            }
        }
    }
    Decoded {
        frames,
        error: None,
        remainder: buf.len(),
    }
}

/// Decodes a frame's body as the request or reply its kind names. A body that decodes must
/// re-encode to exactly the same frame (header, request id and payload): the encoding is
/// canonical, and `body_len` predicts it. A body that fails must fail with a body error.
/// Returns whether the body decoded.
pub fn check_body(frame: &Frame, limits: &Limits) -> bool {
    check_body_around(frame, limits, &Plain)
}

/// [`check_body`], with the body decoder called through `around`.
pub fn check_body_around(frame: &Frame, limits: &Limits, around: &impl Around) -> bool {
    let mut out = BytesMut::new();
    let (decoded, predicted) = if frame.kind.is_request() {
        match around.call(|| Request::decode(frame, limits)) {
            Ok(req) => {
                assert_eq!(req.kind(), frame.kind, "request decoded as another kind");
                encode_request(frame.request_id, &req, &mut out)
                    .unwrap_or_else(|e| panic!("decoded {req:?} does not re-encode: {e}"));
                (Ok(()), req.body_len())
            }
            Err(e) => (Err(e), 0),
        }
    } else {
        match around.call(|| Reply::decode(frame, limits)) {
            Ok(rep) => {
                assert_eq!(rep.kind(), frame.kind, "reply decoded as another kind");
                encode_reply(frame.request_id, &rep, &mut out)
                    .unwrap_or_else(|e| panic!("decoded {rep:?} does not re-encode: {e}"));
                (Ok(()), rep.body_len())
            }
            Err(e) => (Err(e), 0),
        }
    };
    match decoded {
        Ok(()) => {
            assert_eq!(predicted, frame.payload.len(), "body_len mispredicts");
            assert_eq!(
                out.len(),
                HEADER_LEN + frame.payload.len(),
                "re-encoded length"
            );
            assert_eq!(
                &out[HEADER_LEN..],
                &frame.payload[..],
                "{:?} body is not canonical: re-encoding differs",
                frame.kind
            );
            let id = frame.request_id.to_be_bytes();
            let len = (frame.payload.len() as u32).to_be_bytes();
            let header: [u8; HEADER_LEN] = [
                MAGIC[0],
                MAGIC[1],
                VERSION,
                frame.kind as u8,
                id[0],
                id[1],
                id[2],
                id[3],
                0,
                0,
                len[0],
                len[1],
                len[2],
                len[3],
            ];
            assert_eq!(out[..HEADER_LEN], header, "re-encoded header");
            true
        }
        Err(e) => {
            assert!(!e.is_fatal(), "a body error is classed as fatal: {e:?}");
            false
        }
    }
}

/// The decode_frame checks: decode the stream after the role byte under the default
/// limits and check every frame. (Bodies are the decode_bodies target's job; this one
/// stays lean so it runs fast.) Returns the frames.
pub fn check_decode_input(data: &[u8]) -> Decoded {
    check_decode_input_around(data, &Plain)
}

/// [`check_decode_input`], with every decoder call made through `around`.
pub fn check_decode_input_around(data: &[u8], around: &impl Around) -> Decoded {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let (error, remainder) = check_decode_input_in(&mut buf, data, around, |f| frames.push(f));
    Decoded {
        frames,
        error,
        remainder,
    }
}

/// What the decode_frame target runs: exactly the checks of [`check_decode_input_around`],
/// with the stream copied into `buf` (a buffer the caller reuses, so an execution
/// allocates no buffer once the frames of the last one are gone) and each checked frame
/// handed to `on_frame`. Returns the error and the remainder.
pub fn check_decode_input_in(
    buf: &mut BytesMut,
    data: &[u8],
    around: &impl Around,
    on_frame: impl FnMut(Frame),
) -> (Option<DecodeError>, usize) {
    let Some((&selector, stream)) = data.split_first() else {
        return (None, 0);
    };
    let limits = Limits::default();
    buf.clear();
    buf.extend_from_slice(stream);
    visit_stream(buf, role_of(selector), &limits, around, on_frame)
}

/// Splits a decode_chunked input into (role, cut sizes, stream).
pub fn parse_chunked_input(data: &[u8]) -> (Role, Vec<usize>, &[u8]) {
    let role = role_of(data.first().copied().unwrap_or(0));
    let n = usize::from(data.get(1).copied().unwrap_or(0) % 17);
    let cuts: Vec<usize> = data
        .get(2..)
        .unwrap_or(&[])
        .iter()
        .take(n)
        .map(|&c| usize::from(c).max(1))
        .collect();
    let start = (2 + cuts.len()).min(data.len());
    (role, cuts, &data[start..])
}

/// The decode_chunked target: the stream fed in the given pieces must give exactly the
/// frames, the error and the remainder that the whole stream gives (pieces through
/// [`decode_frame`], the whole stream through the server's [`FrameDecoder`]).
pub fn check_chunked_input(data: &[u8]) -> Decoded {
    let (role, cuts, stream) = parse_chunked_input(data);
    let limits = Limits::default();
    let whole = decode_stream(stream, role, &limits);
    let pieces = decode_in_pieces(stream, &cuts, role, &limits);
    assert_eq!(
        whole, pieces,
        "chunked input differs from whole input (cuts {cuts:?})"
    );
    // One byte at a time is the most fragmented schedule a socket can produce.
    let bytewise = decode_in_pieces(stream, &[1], role, &limits);
    assert_eq!(
        whole, bytewise,
        "byte-by-byte input differs from whole input"
    );
    whole
}

/// The decode_bodies target: a kind byte and a payload, decoded as a body directly (no
/// frame header, no length limit); a body that decodes must re-encode to the same bytes,
/// and the other direction's decoder must refuse the kind.
/// Returns whether the body decoded (None for an undefined kind byte).
pub fn check_body_input(data: &[u8]) -> Option<bool> {
    check_body_input_around(data, &Plain)
}

/// [`check_body_input`], with every body decoder call made through `around`.
pub fn check_body_input_around(data: &[u8], around: &impl Around) -> Option<bool> {
    let (&k, payload) = data.split_first()?;
    let kind = Kind::from_u8(k)?;
    let frame = Frame::new(kind, 0x0102_0304, bytes::Bytes::copy_from_slice(payload));
    let limits = Limits::default();
    // The other direction's decoder refuses the kind outright, whatever the payload.
    let wrong_way = if kind.is_request() {
        around.call(|| Reply::decode(&frame, &limits)).err()
    } else {
        around.call(|| Request::decode(&frame, &limits)).err()
    };
    assert_eq!(
        wrong_way,
        Some(DecodeError::UnexpectedKind { kind }),
        "a {kind:?} body decoded in the wrong direction"
    );
    Some(check_body_around(&frame, &limits, around))
}

/// The parse_config target: a config that parses has passed `check`, serializes, and
/// parses back to an equal value. Returns whether the text was a valid config.
pub fn check_config_input(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    check_config_text(text)
}

/// [`check_config_input`] on text.
pub fn check_config_text(text: &str) -> bool {
    let cfg = match Config::from_toml_str(text) {
        Ok(cfg) => cfg,
        Err(e) => {
            assert!(!e.to_string().is_empty(), "an empty config error message");
            return false;
        }
    };
    if let Err(e) = cfg.check() {
        panic!("from_toml_str returned a config that fails check: {e}");
    }
    let text2 = toml::to_string(&cfg)
        .unwrap_or_else(|e| panic!("a checked config does not serialize: {e}"));
    let again = Config::from_toml_str(&text2)
        .unwrap_or_else(|e| panic!("a serialized config does not parse back: {e}\n{text2}"));
    assert_eq!(again, cfg, "config changed through serialize and parse");
    true
}

/// The file name scenario and CSV errors must name (the parsers take it only for messages).
pub const FUZZ_SCENARIO_PATH: &str = "fuzz-scenario.toml";
/// See [`FUZZ_SCENARIO_PATH`].
pub const FUZZ_CSV_PATH: &str = "fuzz-features.csv";

/// The parse_scenario target: UTF-8 text through `ScenarioSpec::from_toml_str` and
/// `check()`. Errors name the file (a parse error on one line, a check error with its key);
/// a scenario that checks keeps every documented limit, and its spec serializes, parses
/// back to the same serialization and checks again. Returns whether the text was a valid
/// scenario.
pub fn check_scenario_input(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    check_scenario_text(text)
}

/// [`check_scenario_input`] on text.
pub fn check_scenario_text(text: &str) -> bool {
    use rampart::scenario::ScenarioSpec;
    let path = std::path::Path::new(FUZZ_SCENARIO_PATH);
    let spec = match ScenarioSpec::from_toml_str(text, path) {
        Ok(spec) => spec,
        Err(e) => {
            check_scenario_error(&e);
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "a parse error spans lines: {msg:?}");
            return false;
        }
    };
    match spec.clone().check(path) {
        Ok(scenario) => {
            check_scenario_limits(&scenario);
            // The round trip holds for checked specs. (Not for every parsed one: toml's
            // serializer joins a table header and a dotted key into one header, which its
            // parser refuses beyond a nesting limit; check() rejects such a `[server]`
            // table, naming its key.)
            let text2 = toml::to_string(&spec)
                .unwrap_or_else(|e| panic!("a checked scenario does not serialize: {e}"));
            let again = ScenarioSpec::from_toml_str(&text2, path).unwrap_or_else(|e| {
                panic!("a serialized scenario does not parse back: {e}\n{text2}")
            });
            let text3 = toml::to_string(&again)
                .unwrap_or_else(|e| panic!("a re-parsed scenario does not serialize: {e}"));
            assert_eq!(text2, text3, "scenario changed through serialize and parse");
            if let Err(e) = again.check(path) {
                panic!("a checked scenario fails check after a round trip: {e}\n{text2}");
            }
            true
        }
        Err(e) => {
            check_scenario_error(&e);
            let key = e
                .key()
                .unwrap_or_else(|| panic!("check() error names no key: {e}"));
            assert!(!key.is_empty(), "check() error with an empty key: {e}");
            false
        }
    }
}

fn check_scenario_error(e: &rampart::scenario::ScenarioError) {
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("{FUZZ_SCENARIO_PATH}: "))
            && msg.len() > FUZZ_SCENARIO_PATH.len() + 2,
        "a scenario error that does not name the file: {msg:?}"
    );
}

/// Every limit docs/SCENARIOS.md and `scenario::spec` promise of a checked scenario.
fn check_scenario_limits(s: &rampart::scenario::Scenario) {
    use rampart::scenario::spec::{
        CONTROL_SOURCE, MAX_DURATION_S, MAX_LATENCY_SLO_MS, MAX_LEGIT_CLIENTS,
        MAX_LEGIT_FILE_BYTES, MAX_LEGIT_RATE_PER_S, MAX_SOURCES_PER_NET,
    };
    use std::time::Duration;
    let name = s.name();
    assert!(
        (1..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
        "scenario name {name:?} accepted"
    );
    let d = s.duration();
    assert!(
        d > Duration::ZERO && d <= Duration::from_secs_f64(MAX_DURATION_S),
        "duration {d:?} accepted"
    );
    if let Err(e) = s.config().check() {
        panic!("a checked scenario's server config fails check: {e}");
    }
    let mut clients = 0u32;
    for g in s.legit() {
        assert!((1..=MAX_LEGIT_CLIENTS).contains(&g.clients), "{g:?}");
        clients = clients.saturating_add(g.clients);
        assert!(
            g.rate_per_s.is_finite() && g.rate_per_s > 0.0 && g.rate_per_s <= MAX_LEGIT_RATE_PER_S,
            "legit rate {} accepted",
            g.rate_per_s
        );
        let sum: f64 = g.mix.iter().sum();
        assert!(
            g.mix.iter().all(|w| w.is_finite() && *w >= 0.0) && (sum - 1.0).abs() < 1e-9,
            "legit mix {:?} is not normalized",
            g.mix
        );
        assert!(
            !g.sources.is_empty() && g.sources.len() <= MAX_SOURCES_PER_NET,
            "{} legit sources",
            g.sources.len()
        );
        assert!(
            g.sources
                .iter()
                .all(|ip| ip.is_loopback() && *ip != CONTROL_SOURCE),
            "legit sources outside loopback or on the control address"
        );
        let max_text = s
            .config()
            .limits
            .max_message_bytes
            .min(s.config().limits.max_mail_body_bytes / 4);
        assert!((16..=max_text).contains(&g.message_bytes), "{g:?}");
        let max_file = s.config().limits.max_file_bytes.min(MAX_LEGIT_FILE_BYTES);
        assert!((1..=max_file).contains(&g.file_bytes), "{g:?}");
        assert!(g.start <= g.stop && g.stop <= d, "legit window {g:?}");
        // Legit sources may overlap attack sources (users behind an attacker's address).
        for rate in [
            g.typo_rate,
            g.stale_fetch_rate,
            g.wrong_id_rate,
            g.unknown_recipient_rate,
        ] {
            assert!((0.0..=1.0).contains(&rate), "{g:?}");
        }
        assert!(
            g.stale_fetch_rate + g.wrong_id_rate + g.unknown_recipient_rate <= 1.0,
            "{g:?}"
        );
        assert!(g.behind_nat >= 1, "{g:?}");
        assert!(
            !g.name.is_empty() && !g.name.contains('+'),
            "group name {:?}",
            g.name
        );
    }
    assert!(
        clients <= MAX_LEGIT_CLIENTS,
        "{clients} legit clients accepted"
    );
    for a in s.attacks() {
        assert!(
            !a.sources().contains(&CONTROL_SOURCE.into()),
            "an attack binds the control address"
        );
        assert!(
            !a.sources().is_empty() && a.sources().len() <= rampart::attack::spec::MAX_SOURCES,
            "{} attack sources",
            a.sources().len()
        );
        // IPv4 sources stay in loopback in both modes; IPv6 ones need a simulation.
        assert!(
            a.sources()
                .iter()
                .all(|ip| ip.is_ipv6() == a.needs_sim() && (ip.is_ipv6() || ip.is_loopback())),
            "attack sources {} outside loopback run on real sockets",
            a.source_net()
        );
        assert!(
            !a.rotates() || a.needs_sim(),
            "an IPv4 attack rotates its addresses"
        );
        assert!(
            a.start() <= a.stop() && a.stop() <= d,
            "attack window {:?}..{:?} in {d:?}",
            a.start(),
            a.stop()
        );
    }
    let e = s.expect();
    assert!(
        e.latency_slo >= Duration::from_millis(1)
            && e.latency_slo <= Duration::from_millis(MAX_LATENCY_SLO_MS),
        "latency_slo {:?} accepted",
        e.latency_slo
    );
    if let Some(g) = e.legit_goodput_min {
        assert!((0.0..=1.0).contains(&g), "legit_goodput_min {g} accepted");
    }
    for v in [
        e.latency_p99_ms_max,
        e.blocked_within_s,
        e.peak_rss_mb_max,
        e.rss_growth_mb_max,
    ]
    .into_iter()
    .flatten()
    {
        assert!(v.is_finite() && v > 0.0, "expectation {v} accepted");
    }
    let kinds = s.attack_kinds();
    assert!(
        e.blocked_kinds.iter().all(|k| kinds.contains(k)),
        "blocked_kinds names an attack the scenario lacks"
    );
}

/// The parse_activity_csv target: bytes through the feature CSV reader
/// (`detect::data::read_from`). An error names the file; a dataset that reads has at least
/// one feature, unique feature names, a `rows × features` matrix of finite values, a
/// source and window for every row, a non-empty label for every row if it is labelled,
/// and writes back (`write_csv`) to a file that reads back equal. Returns whether it read.
pub fn check_csv_input(data: &[u8]) -> bool {
    use rampart::detect::data::read_from;
    let path = std::path::Path::new(FUZZ_CSV_PATH);
    let ds = match read_from(data, path) {
        Ok(ds) => ds,
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("{FUZZ_CSV_PATH}: "))
                    && msg.len() > FUZZ_CSV_PATH.len() + 2,
                "a CSV error that does not name the file: {msg:?}"
            );
            return false;
        }
    };
    let d = ds.features().len();
    assert!(d >= 1, "a dataset without features");
    let unique: std::collections::HashSet<&String> = ds.features().iter().collect();
    assert_eq!(unique.len(), d, "duplicate feature names accepted");
    let n = ds.rows();
    assert_eq!(
        ds.values().dim(),
        (n, d),
        "matrix shape is not rows × features"
    );
    assert!(
        ds.values().iter().all(|v| v.is_finite()),
        "a non-finite feature value accepted"
    );
    for i in 0..n {
        let _ = (ds.source(i), ds.window_start_ms(i), ds.window_ms(i));
        assert_eq!(ds.row(i).len(), d, "row {i} length");
        match ds.label(i) {
            Some(l) => {
                assert!(ds.is_labelled(), "a label in an unlabelled dataset");
                assert!(!l.is_empty(), "an empty label accepted");
                assert_eq!(ds.is_benign(i), l == rampart::detect::BENIGN);
            }
            None => {
                assert!(!ds.is_labelled(), "a labelled row without a label");
                assert!(ds.is_benign(i), "an unlabelled row that is not benign");
            }
        }
    }
    // Written in the export's format, it reads back to the same dataset.
    let dir = scratch_csv_dir();
    let file = dir.join(FUZZ_CSV_PATH);
    ds.write_csv(&file)
        .unwrap_or_else(|e| panic!("a dataset that read does not write: {e}"));
    let back = std::fs::read(&file).unwrap_or_else(|e| panic!("reading back: {e}"));
    let again = read_from(&back[..], path).unwrap_or_else(|e| {
        panic!(
            "a written dataset does not read back: {e}\n{}",
            String::from_utf8_lossy(&back)
        )
    });
    assert_eq!(again, ds, "dataset changed through write_csv and read");
    true
}

/// A directory for [`check_csv_input`]'s round-trip file, one per thread (tests run the
/// check on several threads), on tmpfs when there is one. It lives as long as the process.
fn scratch_csv_dir() -> std::path::PathBuf {
    thread_local! {
        static DIR: tempfile::TempDir = {
            let shm = std::path::Path::new("/dev/shm");
            let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
            tempfile::Builder::new()
                .prefix("rampart-fuzz-csv-")
                .tempdir_in(base)
                .or_else(|_| tempfile::tempdir())
                .unwrap_or_else(|e| panic!("scratch dir: {e}"))
        };
    }
    DIR.with(|d| d.path().to_path_buf())
}

/// Encodes a request, checks the predicted length, decodes it back and compares.
pub fn check_request_roundtrip(request_id: u32, req: &Request, limits: &Limits) {
    let mut buf = BytesMut::new();
    encode_request(request_id, req, &mut buf)
        .unwrap_or_else(|e| panic!("{req:?} within limits does not encode: {e}"));
    assert_eq!(buf.len(), HEADER_LEN + req.body_len(), "predicted length");
    let d = decode_stream(&buf, Role::Server, limits);
    assert_eq!(d.error, None, "{req:?}");
    assert_eq!(d.remainder, 0, "one whole frame");
    assert_eq!(d.frames.len(), 1, "one frame");
    let f = &d.frames[0];
    assert_eq!(f.request_id, request_id);
    let back = Request::decode(f, limits).unwrap_or_else(|e| panic!("{req:?}: {e}"));
    assert_eq!(&back, req, "request changed through encode and decode");
    assert!(check_body(f, limits));
}

/// Encodes a reply, checks the predicted length, decodes it back and compares.
pub fn check_reply_roundtrip(request_id: u32, rep: &Reply, limits: &Limits) {
    let mut buf = BytesMut::new();
    encode_reply(request_id, rep, &mut buf)
        .unwrap_or_else(|e| panic!("{rep:?} within limits does not encode: {e}"));
    assert_eq!(buf.len(), HEADER_LEN + rep.body_len(), "predicted length");
    let d = decode_stream(&buf, Role::Client, limits);
    assert_eq!(d.error, None, "{rep:?}");
    assert_eq!(d.remainder, 0, "one whole frame");
    assert_eq!(d.frames.len(), 1, "one frame");
    let f = &d.frames[0];
    assert_eq!(f.request_id, request_id);
    let back = Reply::decode(f, limits).unwrap_or_else(|e| panic!("{rep:?}: {e}"));
    assert_eq!(&back, rep, "reply changed through encode and decode");
    assert!(check_body(f, limits));
}

/// Whether `needle` occurs in `haystack`, by Rabin-Karp over a 64-bit polynomial hash.
///
/// The session target looks for secrets this way on purpose: libFuzzer records the operands
/// of `memcmp` calls and splices them into new inputs, so a plain slice comparison against
/// a secret would teach the fuzzer the secret, let "mallory" send it to herself, and report
/// a false leak. Only hash values reach a comparison until a hash matches.
pub fn contains_secret(haystack: &[u8], needle: &[u8]) -> bool {
    const BASE: u64 = 1_000_003;
    let n = needle.len();
    if n == 0 || haystack.len() < n {
        return n == 0;
    }
    let hash = |s: &[u8]| {
        s.iter().fold(0u64, |h, &b| {
            h.wrapping_mul(BASE).wrapping_add(u64::from(b))
        })
    };
    let target = hash(needle);
    // BASE^(n-1), to remove the byte leaving the window.
    let top = (1..n).fold(1u64, |p, _| p.wrapping_mul(BASE));
    let mut h = hash(&haystack[..n]);
    for start in 0..=haystack.len() - n {
        if start > 0 {
            let out = u64::from(haystack[start - 1]);
            let inb = u64::from(haystack[start + n - 1]);
            h = h
                .wrapping_sub(out.wrapping_mul(top))
                .wrapping_mul(BASE)
                .wrapping_add(inb);
        }
        if h == target && haystack[start..start + n] == *needle {
            return true;
        }
    }
    false
}
