//! The streaming decoder on the same bytes split at fuzzer-chosen points: it must give
//! exactly the frames, the error and the remainder that the whole input gives, for the
//! chosen cuts and for one byte at a time. Input format: see `checks::parse_chunked_input`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_fuzz::checks::check_chunked_input;

fuzz_target!(|data: &[u8]| {
    check_chunked_input(data);
});
