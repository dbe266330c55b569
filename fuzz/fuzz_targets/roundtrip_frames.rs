//! Structure-aware frames: requests and replies built with `arbitrary` within the default
//! limits must encode to exactly `14 + body_len()` bytes, decode back to the same value
//! with the same request id, and re-encode canonically.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart::protocol::Limits;
use rampart_fuzz::arb::ArbFrame;
use rampart_fuzz::checks::{check_reply_roundtrip, check_request_roundtrip};

fuzz_target!(|frames: Vec<ArbFrame>| {
    let limits = Limits::default();
    for f in &frames {
        match f {
            ArbFrame::Request(r) => check_request_roundtrip(r.0, &r.1, &limits),
            ArbFrame::Reply(r) => check_reply_roundtrip(r.0, &r.1, &limits),
        }
    }
});
