//! The frame decoder on raw bytes, as the server (even first byte) or the client (odd).
//!
//! Asserts, beyond not panicking: every frame is within `max_payload` for its kind and the
//! frame ceiling, in the role's direction, with flags 0; consumed bytes plus the remainder
//! add up to the input; "need more" and errors consume nothing and errors are fatal header
//! errors; and the frame decoder makes no allocation beyond a small fixed one, so a
//! declared length never reserves memory before its bytes arrive. Bodies are the
//! decode_bodies target's job, which keeps this one fast.
#![no_main]

use std::cell::RefCell;

use bytes::BytesMut;

use libfuzzer_sys::fuzz_target;
use rampart_fuzz::alloc::{self, Armed, Counting};
use rampart_fuzz::checks::check_decode_input_in;

#[global_allocator]
static ALLOC: Counting = Counting;

thread_local! {
    /// The stream buffer, reused: a frame holds a share of it only until it is checked.
    static BUF: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

fuzz_target!(|data: &[u8]| {
    // Every frame invariant (see rampart_fuzz::checks), with the decoder's own allocations
    // recorded (not the harness's buffer), each frame dropped once it is checked.
    alloc::reset();
    BUF.with_borrow_mut(|buf| check_decode_input_in(buf, data, &Armed, drop));
    let peak = alloc::peak();
    assert!(
        peak <= alloc::FIXED,
        "the frame decoder allocated {peak} bytes at once while decoding {} bytes",
        data.len().saturating_sub(1)
    );
});
