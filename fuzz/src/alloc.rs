//! A counting global allocator for the decoder targets: it records the largest single
//! allocation requested while armed, so a target can assert that a declared length never
//! reserves memory before its bytes arrive.
//!
//! A target installs it with `#[global_allocator] static A: Counting = Counting;` and makes
//! every decoder call through [`Armed`] (an [`Around`]), so only the decoders' own
//! allocations count, never the harness's buffers.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rampart::protocol::{Attachment, InboxEntry, Limits};

use crate::checks::Around;

/// Delegates to the system allocator and records sizes while armed.
pub struct Counting;

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

/// Records allocations only inside the calls it wraps.
pub struct Armed;

impl Around for Armed {
    fn call<T>(&self, f: impl FnOnce() -> T) -> T {
        ARMED.store(true, Ordering::Relaxed);
        let out = f();
        ARMED.store(false, Ordering::Relaxed);
        out
    }
}

/// Forgets the peak recorded so far; call at the start of every execution.
pub fn reset() {
    PEAK.store(0, Ordering::Relaxed);
}

/// The largest single allocation made under [`Armed`] since the last [`reset`].
pub fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Small fixed allocations any decoder call may make (the shared header `bytes` allocates
/// when a buffer is first split, an error's bookkeeping), independent of the input.
pub const FIXED: usize = 1024;

/// What a body decoder may allocate beyond the payload it was given: one `Vec` of inbox
/// entries (at most `max_inbox_page`, and only as many as the payload could hold) or of
/// mail attachments (at most `max_attachments`), sized by a checked count, plus [`FIXED`].
pub fn body_slack(limits: &Limits) -> usize {
    let inbox = usize::from(limits.max_inbox_page) * std::mem::size_of::<InboxEntry>();
    let attachments = usize::from(limits.max_attachments) * std::mem::size_of::<Attachment>();
    inbox.max(attachments) + FIXED
}
