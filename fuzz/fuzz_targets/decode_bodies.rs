//! Body decoders on their own: a kind byte and a payload, decoded as a request or reply
//! body with no frame header in the way. Asserts that a body that decodes re-encodes to
//! exactly the same payload (the encoding is canonical and `body_len` predicts it), that a
//! body that fails does so with a body error, never a fatal framing error, and that no
//! single allocation by the body decoders exceeds the payload plus the one bounded list
//! preallocation, so a declared count never reserves memory its bytes cannot fill.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart::protocol::Limits;
use rampart_fuzz::alloc::{self, Armed, Counting};
use rampart_fuzz::checks::check_body_input_around;

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    alloc::reset();
    check_body_input_around(data, &Armed);
    let peak = alloc::peak();
    let payload = data.len().saturating_sub(1);
    let bound = payload + alloc::body_slack(&Limits::default());
    assert!(
        peak <= bound,
        "one allocation of {peak} bytes while decoding a {payload}-byte body (bound {bound})"
    );
});
