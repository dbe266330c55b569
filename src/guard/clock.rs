//! [`GuardClock`]: the one time source of a guard, for its rate limiters and block expiry.
//!
//! Production uses the monotonic clock, read through governor's default clock (quanta): the
//! CPU's invariant time-stamp counter scaled to nanoseconds, calibrated against the operating
//! system's monotonic clock at start, and the operating system's clock itself where the
//! counter is not invariant. A reading costs about a third of `Instant::now` here, and the
//! guard reads the clock for every frame. Tests use a frozen clock and move it by hand with
//! [`GuardClock::advance`], so limiter and expiry tests are deterministic and never sleep.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use governor::clock::{Clock, QuantaClock, QuantaInstant, Reference};
use governor::nanos::Nanos;

/// A monotonic clock that reads as time since its creation, optionally frozen. Clones share
/// the same time, so a test can keep one and advance the guard's.
#[derive(Clone)]
pub struct GuardClock {
    source: QuantaClock,
    /// In a simulation ([`crate::sim`]): the virtual clock's reading at creation, read
    /// instead of `source`.
    virtual_start: Option<tokio::time::Instant>,
    start: QuantaInstant,
    wall_start: SystemTime,
    frozen: bool,
    /// Nanoseconds added by [`GuardClock::advance`]; shared between clones.
    offset: Arc<AtomicU64>,
}

impl GuardClock {
    /// The real monotonic clock; in a simulation, the simulation's virtual clock.
    pub fn monotonic() -> GuardClock {
        let source = QuantaClock::default();
        GuardClock {
            start: source.now(),
            source,
            virtual_start: crate::sim::active().then(tokio::time::Instant::now),
            wall_start: crate::sim::wall_now(),
            frozen: false,
            offset: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A clock that stands still until [`GuardClock::advance`] moves it.
    pub fn manual() -> GuardClock {
        GuardClock {
            frozen: true,
            ..GuardClock::monotonic()
        }
    }

    /// Moves this clock and all its clones forward (a real clock too: it then runs ahead).
    /// Saturates at about 584 years rather than wrap.
    pub fn advance(&self, by: Duration) {
        let by = saturating_nanos(by);
        // fetch_update with a closure that always returns Some cannot fail.
        let _ = self
            .offset
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(by))
            });
    }

    /// Time since the clock was created, plus every advance.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.elapsed_nanos())
    }

    fn elapsed_nanos(&self) -> u64 {
        let offset = self.offset.load(Ordering::Acquire);
        if self.frozen {
            offset
        } else if let Some(start) = self.virtual_start {
            saturating_nanos(start.elapsed()).saturating_add(offset)
        } else {
            // Saturating: a reading before `start` counts as `start`.
            let since = self.source.now().duration_since(self.start);
            u64::from(since).saturating_add(offset)
        }
    }

    /// The wall-clock time of a point `at` on this clock (as returned by
    /// [`GuardClock::elapsed`]), for reports such as a block's expiry.
    pub fn wall(&self, at: Duration) -> SystemTime {
        // Only overflows hundreds of years out, which the guard never asks for; the creation
        // time is a safe answer then.
        self.wall_start.checked_add(at).unwrap_or(self.wall_start)
    }
}

fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Default for GuardClock {
    /// The real monotonic clock.
    fn default() -> Self {
        GuardClock::monotonic()
    }
}

impl fmt::Debug for GuardClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardClock")
            .field("frozen", &self.frozen)
            .field("elapsed", &self.elapsed())
            .finish()
    }
}

thread_local! {
    /// One reading of a clock, pinned on this thread by [`GuardClock::pinned`]: the clock's
    /// identity (its shared offset's address) and the reading in nanoseconds.
    static PINNED: Cell<Option<(usize, u64)>> = const { Cell::new(None) };
}

/// Puts the previous pin back when a [`GuardClock::pinned`] scope ends, panics included.
struct Unpin(Option<(usize, u64)>);

impl Drop for Unpin {
    fn drop(&mut self) {
        PINNED.with(|p| p.set(self.0));
    }
}

impl GuardClock {
    /// Identifies this clock and its clones (they share `offset`).
    fn id(&self) -> usize {
        Arc::as_ptr(&self.offset) as usize
    }

    /// Runs `f` with this clock (and its clones) reading one fixed instant on this thread,
    /// taken once on entry. A frame's admission passes several limiters; they all judge it at
    /// the same instant, and the clock, which costs as much as a limiter check, is read once
    /// instead of once per limiter. Other clocks, and other threads, are unaffected.
    pub(crate) fn pinned<R>(&self, f: impl FnOnce() -> R) -> R {
        let now = self.elapsed_nanos();
        let _unpin = Unpin(PINNED.with(|p| p.replace(Some((self.id(), now)))));
        f()
    }
}

impl Clock for GuardClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        match PINNED.with(Cell::get) {
            Some((id, at)) if id == self.id() => Nanos::from(at),
            _ => Nanos::from(self.elapsed_nanos()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_stands_still_and_advances_for_all_clones() {
        let c = GuardClock::manual();
        let d = c.clone();
        assert_eq!(c.elapsed(), Duration::ZERO);
        d.advance(Duration::from_secs(3));
        assert_eq!(c.elapsed(), Duration::from_secs(3));
        assert_eq!(c.now(), Nanos::from(3_000_000_000u64));
        c.advance(Duration::MAX);
        assert_eq!(d.elapsed(), Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn pinned_reading_holds_for_clones_only_and_ends_with_the_scope() {
        let c = GuardClock::manual();
        let d = c.clone();
        let other = GuardClock::manual();
        c.advance(Duration::from_secs(1));
        let inside = c.pinned(|| {
            // The pin holds even when the clock moves; another clock is not pinned.
            d.advance(Duration::from_secs(5));
            other.advance(Duration::from_secs(2));
            (c.now(), d.now(), other.now())
        });
        let one = Nanos::from(1_000_000_000u64);
        assert_eq!(inside, (one, one, Nanos::from(2_000_000_000u64)));
        assert_eq!(c.now(), Nanos::from(6_000_000_000u64));
    }

    #[test]
    fn monotonic_clock_keeps_time_with_the_system_clock() {
        let c = GuardClock::monotonic();
        let t = std::time::Instant::now();
        let before = c.elapsed();
        let mut last = before;
        // Spin (no sleep) for 20 ms of the system's monotonic clock.
        while t.elapsed() < Duration::from_millis(20) {
            let now = c.elapsed();
            assert!(now >= last, "went back from {last:?} to {now:?}");
            last = now;
        }
        let ours = c.elapsed() - before;
        let system = t.elapsed();
        let ratio = ours.as_secs_f64() / system.as_secs_f64();
        assert!((0.95..1.05).contains(&ratio), "{ours:?} vs {system:?}");
    }

    #[test]
    fn monotonic_clock_runs_ahead_when_advanced() {
        let c = GuardClock::monotonic();
        c.advance(Duration::from_secs(60));
        assert!(c.elapsed() >= Duration::from_secs(60));
        assert!(c.wall(c.elapsed()) >= SystemTime::now() + Duration::from_secs(59));
    }
}
