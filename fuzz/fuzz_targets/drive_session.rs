//! A full session against a real server and store over an in-memory pipe: arbitrary frame
//! sequences, raw garbage, partial writes, sleeps and stalled reads, logged in as mallory.
//! Checks that nothing panics or hangs, every reply is well-formed and answers its request
//! in order, no reply carries another user's data or a secret, and the limits hold. See
//! `rampart_fuzz::session` for the input format and the planted secrets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_fuzz::session::harness;

fuzz_target!(|data: &[u8]| {
    harness().fuzz_one(data);
});
