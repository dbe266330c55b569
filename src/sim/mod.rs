//! Deterministic simulation: the real server, clients and attackers on one thread, a virtual
//! clock and an in-memory network.
//!
//! A simulation is a current-thread tokio runtime started with its clock paused: timers fire
//! in virtual time, which jumps to the next deadline whenever every task waits, so a 60 s
//! scenario takes as long as its code runs, not 60 s. While it runs, the thread carries a
//! [`Context`] that the layers below read instead of the operating system:
//!
//! - [`wall_now`] and [`now_ms`]: wall-clock time, a fixed epoch plus the virtual time
//!   elapsed (the recorder's events, the firewall's decisions, the store's timestamps);
//! - [`blocking`]: work the real server hands to the blocking pool (SQLite, argon2) runs
//!   inline on the simulation's thread, so it takes no virtual time and finishes in the same
//!   order on every run;
//! - [`net`]: `Server::bind` listens, and clients and attackers connect, on a [`net::SimNet`]
//!   of in-memory streams, with any source address;
//! - the server's background threads (the recorder's writer, the detector's relay, the
//!   argon2 workers) become tasks on the simulation's runtime.
//!
//! Outside a simulation every function here is the plain operating-system call it replaces,
//! and costs one thread-local read more. `docs/SIMULATION.md` says what is modelled and what
//! is not.

pub mod net;

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where a simulation's wall clock starts: 2026-01-01T00:00:00Z. Fixed, so that every
/// timestamp a simulated run writes is the same on every run.
pub const EPOCH_UNIX_S: u64 = 1_767_225_600;

/// How long one argon2 verification takes in virtual time (per login worker). The hash
/// itself runs inline and takes no virtual time; this stands for its cost, so a guessing
/// attack meets the same throughput limit as on a real server.
pub const DEFAULT_ARGON2_MS: u64 = 25;

/// argon2's smallest memory cost (8 KiB per lane, one lane), what a simulation hashes with
/// unless its scenario asks for the configured parameters.
pub const SMALL_ARGON2_MEMORY_KIB: u32 = 8;

/// The state of one running simulation, shared by everything on its thread.
#[derive(Debug)]
pub struct Context {
    net: net::SimNet,
    start: tokio::time::Instant,
    argon2: Duration,
    /// How far the wall clock has been jumped ([`Context::jump_clock`]), milliseconds.
    wall_offset_ms: std::sync::atomic::AtomicI64,
}

impl Context {
    /// The simulated network.
    pub fn net(&self) -> &net::SimNet {
        &self.net
    }

    /// Virtual time since the simulation started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The virtual cost of one argon2 verification.
    pub fn argon2_cost(&self) -> Duration {
        self.argon2
    }

    /// Jumps the wall clock by `by_ms` milliseconds (negative: backwards), as an NTP step
    /// or an operator's `date -s` would; timers and the monotonic clock go on unchanged.
    pub fn jump_clock(&self, by_ms: i64) {
        self.wall_offset_ms
            .fetch_add(by_ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// The wall clock: [`EPOCH_UNIX_S`], plus the virtual time elapsed, plus every jump.
    fn wall(&self) -> SystemTime {
        let base = UNIX_EPOCH + Duration::from_secs(EPOCH_UNIX_S) + self.elapsed();
        let offset = self
            .wall_offset_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let by = Duration::from_millis(offset.unsigned_abs());
        let moved = if offset >= 0 {
            base.checked_add(by)
        } else {
            base.checked_sub(by)
        };
        moved.unwrap_or(base)
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Context>>> = const { RefCell::new(None) };
}

/// The simulation running on this thread, if any.
pub fn current() -> Option<Arc<Context>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// True while a simulation runs on this thread.
pub fn active() -> bool {
    CURRENT.with(|c| c.borrow().is_some())
}

/// The wall-clock time: in a simulation, [`EPOCH_UNIX_S`] plus the virtual time elapsed
/// (plus any [`Context::jump_clock`]).
pub fn wall_now() -> SystemTime {
    match current() {
        Some(ctx) => ctx.wall(),
        None => SystemTime::now(),
    }
}

/// Milliseconds since the Unix epoch, [`wall_now`].
pub fn now_ms() -> i64 {
    wall_now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Runs blocking work (SQLite, argon2, file IO): on the blocking pool, or inline in a
/// simulation. Panics in `f` are resumed on the caller, as the inline call would.
pub async fn blocking<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if active() {
        return f();
    }
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Cancellation only happens at runtime shutdown.
            Err(_) => std::panic::resume_unwind(Box::new("blocking task cancelled")),
        },
    }
}

/// Milliseconds since the Unix epoch on a steady clock: the wall clock read once, when
/// first asked, plus the monotonic time elapsed since. A jump of the wall clock does not
/// move it, so what it times (activity windows, tickets, block expiries) stays in order;
/// it drifts from the wall clock by whatever the wall clock was stepped since the
/// process started. In a simulation: [`EPOCH_UNIX_S`] plus the virtual time elapsed,
/// whatever [`Context::jump_clock`] did.
pub fn steady_ms() -> i64 {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    if let Some(ctx) = current() {
        return ms(Duration::from_secs(EPOCH_UNIX_S)).saturating_add(ms(ctx.elapsed()));
    }
    static ANCHOR: std::sync::OnceLock<(i64, std::time::Instant)> = std::sync::OnceLock::new();
    let (wall, mono) = ANCHOR.get_or_init(|| (now_ms(), std::time::Instant::now()));
    wall.saturating_add(ms(mono.elapsed()))
}

/// How a simulation is set up.
#[derive(Debug, Clone, Copy)]
pub struct SimOptions {
    /// Seeds the simulated network's links ([`net::SimNet::seeded`]): their random choices
    /// of jitter, loss and segmentation. Nothing else in the simulation draws from it; the
    /// scenario runner passes the scenario's seed, which also drives its clients and
    /// attackers.
    pub seed: u64,
    /// The virtual cost of one argon2 verification.
    pub argon2: Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            seed: 0,
            argon2: Duration::from_millis(DEFAULT_ARGON2_MS),
        }
    }
}

/// Clears the thread's context when a simulation ends, panics included.
struct Leave;

impl Drop for Leave {
    fn drop(&mut self) {
        CURRENT.with(|c| c.borrow_mut().take());
    }
}

/// Runs `make`'s future to completion inside a new simulation on this thread (a
/// current-thread runtime with a paused clock), then drops the runtime and every task it
/// still holds. Fails if the runtime cannot be built, or if this thread already runs a
/// simulation or a runtime.
pub fn run<F, Fut>(opts: SimOptions, make: F) -> std::io::Result<Fut::Output>
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    if active() || tokio::runtime::Handle::try_current().is_ok() {
        return Err(std::io::Error::other(
            "a simulation needs a thread of its own, outside any runtime",
        ));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()?;
    let _leave = Leave;
    let out = rt.block_on(async {
        // Read inside the runtime: the paused clock's time, not the system's.
        let ctx = Arc::new(Context {
            net: net::SimNet::seeded(opts.seed),
            start: tokio::time::Instant::now(),
            argon2: opts.argon2,
            wall_offset_ms: std::sync::atomic::AtomicI64::new(0),
        });
        CURRENT.with(|c| *c.borrow_mut() = Some(ctx));
        make().await
    });
    // Tasks still alive are dropped inside the simulation, so what they drop sees it.
    drop(rt);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_simulation_the_clock_is_the_system_clock() {
        assert!(!active());
        let a = SystemTime::now();
        let b = wall_now();
        assert!(b >= a && b.duration_since(a).unwrap_or_default() < Duration::from_secs(5));
    }

    #[test]
    fn virtual_time_jumps_and_wall_time_follows_it() -> std::io::Result<()> {
        let (t0, t1, real) = run(SimOptions::default(), || async {
            let real = std::time::Instant::now();
            let t0 = now_ms();
            tokio::time::sleep(Duration::from_secs(3600)).await;
            (t0, now_ms(), real.elapsed())
        })?;
        assert_eq!(t0, i64::try_from(EPOCH_UNIX_S * 1000).unwrap_or(0));
        assert_eq!(t1 - t0, 3_600_000);
        assert!(real < Duration::from_secs(5), "an hour took {real:?}");
        assert!(!active());
        Ok(())
    }

    #[test]
    fn outside_a_simulation_the_steady_clock_starts_at_the_wall_clock() {
        let wall = now_ms();
        let steady = steady_ms();
        assert!((steady - wall).abs() < 5_000, "steady {steady} wall {wall}");
    }

    #[test]
    fn the_wall_clock_jumps_both_ways_and_timers_do_not() -> std::io::Result<()> {
        let (t0, ahead, behind, slept, steady0, steady) = run(SimOptions::default(), || async {
            let jump = |by| current().iter().for_each(|ctx| ctx.jump_clock(by));
            let t0 = now_ms();
            let steady0 = steady_ms();
            let start = tokio::time::Instant::now();
            jump(3_600_000);
            let ahead = now_ms();
            jump(-7_200_000);
            let behind = now_ms();
            tokio::time::sleep(Duration::from_secs(1)).await;
            (t0, ahead, behind, start.elapsed(), steady0, steady_ms())
        })?;
        assert_eq!(ahead - t0, 3_600_000);
        assert_eq!(behind - t0, -3_600_000);
        assert_eq!(slept, Duration::from_secs(1));
        assert_eq!(steady - steady0, 1000, "the steady clock ignores the jumps");
        Ok(())
    }

    #[test]
    fn blocking_work_runs_inline_in_a_simulation() -> std::io::Result<()> {
        let here = std::thread::current().id();
        let there = run(SimOptions::default(), || async {
            blocking(|| std::thread::current().id()).await
        })?;
        assert_eq!(here, there);
        Ok(())
    }

    #[test]
    fn a_simulation_refuses_to_nest() -> std::io::Result<()> {
        let nested = run(SimOptions::default(), || async {
            run(SimOptions::default(), || async {}).is_err()
        })?;
        assert!(nested);
        Ok(())
    }
}
