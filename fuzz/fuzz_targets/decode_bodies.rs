//! Body decoders on their own: a kind byte and a payload, decoded as a request or reply
//! body with no frame header in the way. Asserts that a body that decodes re-encodes to
//! exactly the same payload (the encoding is canonical and `body_len` predicts it), and
//! that a body that fails does so with a body error, never a fatal framing error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_fuzz::checks::check_body_input;

fuzz_target!(|data: &[u8]| {
    check_body_input(data);
});
