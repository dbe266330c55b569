//! The frame decoder on raw bytes, as the server (even first byte) or the client (odd).
//!
//! Asserts, beyond not panicking: every frame is within `max_payload` for its kind and the
//! frame ceiling; consumed bytes plus the remainder add up to the input; "need more" and
//! errors consume nothing; every body decodes to its frame's kind or fails with a body
//! error (re-encoding is decode_bodies' job, so this target stays fast); and no
//! single allocation made by the decoders exceeds the bytes that arrived (capped by the
//! frame ceiling) plus the one bounded list preallocation, so a declared length never
//! reserves memory before its bytes arrive.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::BytesMut;

use libfuzzer_sys::fuzz_target;
use rampart::protocol::{Attachment, InboxEntry, Limits};
use rampart_fuzz::checks::{check_decode_input_in, Around};

/// Records the largest single allocation requested while `ARMED` is set.
struct Counting;

static ARMED: AtomicBool = AtomicBool::new(false);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates every call to the system allocator unchanged; only records sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            PEAK.fetch_max(layout.size(), Ordering::Relaxed);
        }
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            PEAK.fetch_max(new_size, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Allocations the decoder may make beyond the bytes it was given: one Vec of inbox
/// entries (at most `max_inbox_page`, and only as many as the payload could hold) or of
/// mail attachments (at most `max_attachments`), sized by a checked count, plus room for
/// small fixed allocations.
fn slack(limits: &Limits) -> usize {
    let inbox = usize::from(limits.max_inbox_page) * std::mem::size_of::<InboxEntry>();
    let attachments = usize::from(limits.max_attachments) * std::mem::size_of::<Attachment>();
    inbox.max(attachments) + 1024
}

/// Records allocations only inside the decoders' calls.
struct Armed;

impl Around for Armed {
    fn call<T>(&self, f: impl FnOnce() -> T) -> T {
        ARMED.store(true, Ordering::Relaxed);
        let out = f();
        ARMED.store(false, Ordering::Relaxed);
        out
    }
}

thread_local! {
    /// The stream buffer, reused: a frame holds a share of it only until its body is checked.
    static BUF: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

fuzz_target!(|data: &[u8]| {
    // Every invariant on frames and bodies (see rampart_fuzz::checks), with the decoders'
    // own allocations recorded (not the harness's buffers), each frame dropped once its
    // body is checked.
    PEAK.store(0, Ordering::Relaxed);
    BUF.with_borrow_mut(|buf| check_decode_input_in(buf, data, &Armed, drop));
    let peak = PEAK.load(Ordering::Relaxed);
    let limits = Limits::default();
    let stream = data.len().saturating_sub(1);
    let bound = stream.min(limits.frame_ceiling() as usize) + slack(&limits);
    assert!(
        peak <= bound,
        "one allocation of {peak} bytes while decoding {stream} bytes (bound {bound})"
    );
});
