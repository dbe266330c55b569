//! Helpers shared by the benches (not a bench itself: cargo only runs `benches/*.rs`).

use std::time::{Duration, Instant};

use criterion::black_box;

/// CPU time this thread has run (`CLOCK_THREAD_CPUTIME_ID`), or `None` where it is not
/// available.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
pub fn thread_cpu() -> Option<Duration> {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec (two 64-bit fields on 64-bit Linux, which is
    // what `Timespec` lays out) through a pointer to a live local.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
pub fn thread_cpu() -> Option<Duration> {
    None
}

/// Runs `f` `iters` times and returns the thread's CPU time for them, so that time spent
/// preempted by other work on a shared machine is not counted; wall time where the
/// scheduler's accounting is not available.
pub fn timed<T>(iters: u64, mut f: impl FnMut() -> T) -> Duration {
    let wall = Instant::now();
    let cpu = thread_cpu();
    for _ in 0..iters {
        black_box(f());
    }
    match (cpu, thread_cpu()) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => wall.elapsed(),
    }
}
