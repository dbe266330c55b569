//! Rate limiters: governor's GCRA limiters on the guard's clock, with bounded keyed state.
//!
//! A keyed limiter grows one entry per key it has seen. [`KeyedLimiter::purge`] drops the
//! entries that no longer matter (governor's `retain_recent`) and, if an attacker rotating
//! through sources left more than the cap, clears the limiter's map. Clearing only forgives: every
//! key starts again with a full burst. It never lets memory grow past the cap for longer than
//! one purge interval.

use std::fmt;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

use super::clock::GuardClock;
use super::Limited;

type Keyed<K> = RateLimiter<K, SharedStore<K>, GuardClock, NoOpMiddleware<Nanos>>;
type Direct = RateLimiter<NotKeyed, InMemoryState, GuardClock, NoOpMiddleware<Nanos>>;

/// A governor quota of `rate` cells per second with a burst of `burst`. Zero counts as one:
/// governor cannot express zero, and a checked config never holds it.
pub(crate) fn per_second(rate: u32, burst: u32) -> Quota {
    Quota::per_second(non_zero(rate)).allow_burst(non_zero(burst))
}

/// Like [`per_second`], per minute.
pub(crate) fn per_minute(rate: u32, burst: u32) -> Quota {
    Quota::per_minute(non_zero(rate)).allow_burst(non_zero(burst))
}

fn non_zero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// governor's DashMap store behind an `Arc`: the limiter uses it through this handle, and
/// [`KeyedLimiter`] keeps a second handle to clear the same map in place.
pub(crate) struct SharedStore<K: Hash + Eq + Clone>(Arc<DashMapStateStore<K>>);

impl<K: Hash + Eq + Clone> StateStore for SharedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for SharedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        self.0.retain_recent(drop_below);
    }

    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&*self.0);
    }

    fn len(&self) -> usize {
        ShrinkableKeyedStateStore::len(&*self.0)
    }

    fn is_empty(&self) -> bool {
        ShrinkableKeyedStateStore::is_empty(&*self.0)
    }
}

/// A keyed limiter that can be purged and, past its cap, cleared.
pub(crate) struct KeyedLimiter<K: Hash + Eq + Clone> {
    quota: Quota,
    inner: Keyed<K>,
    /// The same map the limiter uses, to clear it: governor offers no `clear`. Clearing the
    /// map in place (rather than replacing the limiter behind a lock) keeps every check free
    /// of a lock of our own; the map's shards are locked by the map itself.
    map: Arc<DashMapStateStore<K>>,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    pub(crate) fn new(quota: Quota, clock: &GuardClock) -> Self {
        let map = Arc::new(DashMapStateStore::<K>::default());
        KeyedLimiter {
            quota,
            inner: RateLimiter::new(quota, SharedStore(Arc::clone(&map)), clock.clone()),
            map,
        }
    }

    /// Whether one more cell for `key` conforms now (and takes it if so).
    pub(crate) fn check(&self, key: &K) -> bool {
        self.inner.check_key(key).is_ok()
    }

    /// Keys currently held.
    pub(crate) fn len(&self) -> usize {
        self.inner.len()
    }

    /// Drops keys whose state is back to "fresh", releases spare capacity, and clears the
    /// limiter if it still holds more than `cap` keys. Returns the keys left.
    pub(crate) fn purge(&self, cap: usize) -> usize {
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
        if self.inner.len() <= cap {
            return self.inner.len();
        }
        self.map.clear();
        self.map.shrink_to_fit();
        tracing::warn!(cap, "keyed rate limiter over its key cap, cleared");
        0
    }
}

impl<K: Hash + Eq + Clone> fmt::Debug for KeyedLimiter<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("quota", &self.quota)
            .field("keys", &self.len())
            .finish()
    }
}

/// The frame rate limiter of one connection (not keyed: one per connection, dropped with it).
/// Get one from [`super::Guard::connection_limiter`].
pub struct ConnLimiter {
    inner: Direct,
}

impl ConnLimiter {
    pub(crate) fn new(quota: Quota, clock: &GuardClock) -> Self {
        ConnLimiter {
            inner: RateLimiter::direct_with_clock(quota, clock.clone()),
        }
    }

    /// Takes one frame from the connection's allowance, or says the connection is over it.
    pub fn check(&self) -> Result<(), Limited> {
        self.inner.check().map_err(|_| Limited::Connection)
    }
}

impl fmt::Debug for ConnLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnLimiter").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn keyed_limiter_admits_burst_per_key() {
        let clock = GuardClock::manual();
        let l = KeyedLimiter::new(per_second(1, 3), &clock);
        assert_eq!((0..10).filter(|_| l.check(&1u32)).count(), 3);
        assert_eq!((0..10).filter(|_| l.check(&2u32)).count(), 3);
        clock.advance(Duration::from_secs(1));
        assert_eq!((0..10).filter(|_| l.check(&1u32)).count(), 1);
    }

    #[test]
    fn purge_drops_stale_keys() {
        let clock = GuardClock::manual();
        let l = KeyedLimiter::new(per_second(10, 20), &clock);
        for k in 0..1000u32 {
            assert!(l.check(&k));
        }
        assert_eq!(l.len(), 1000);
        // Nothing has recovered yet: every key is still distinguishable from a fresh one.
        assert_eq!(l.purge(usize::MAX), 1000);
        clock.advance(Duration::from_secs(2));
        assert_eq!(l.purge(usize::MAX), 0);
    }

    #[test]
    fn purge_clears_past_the_cap_and_only_forgives() {
        let clock = GuardClock::manual();
        let l = KeyedLimiter::new(per_second(1, 2), &clock);
        for k in 0..100u32 {
            l.check(&k);
            l.check(&k);
        }
        assert!(!l.check(&7));
        assert_eq!(l.purge(99), 0);
        assert_eq!(l.len(), 0);
        // Cleared: key 7 has its full burst again, and no more than that.
        assert_eq!((0..10).filter(|_| l.check(&7u32)).count(), 2);
    }

    #[test]
    fn conn_limiter_admits_no_more_than_burst_at_once() {
        let clock = GuardClock::manual();
        let l = ConnLimiter::new(per_second(2_000, 500), &clock);
        let admitted = (0..10_000).filter(|_| l.check().is_ok()).count();
        assert_eq!(admitted, 500);
        assert_eq!(l.check(), Err(Limited::Connection));
    }

    proptest! {
        /// At one instant, no schedule of checks gets more than the burst through, and the
        /// first `burst` checks on a fresh limiter all pass.
        #[test]
        fn never_more_than_burst_in_an_instant(
            rate in 1u32..10_000,
            burst in 1u32..2_000,
            n in 0usize..4_000,
            keys in proptest::collection::vec(0u8..4, 0..4_000),
        ) {
            let clock = GuardClock::manual();
            let direct = ConnLimiter::new(per_second(rate, burst), &clock);
            let ok = (0..n).filter(|_| direct.check().is_ok()).count();
            prop_assert_eq!(ok, n.min(burst as usize));

            let keyed = KeyedLimiter::new(per_second(rate, burst), &clock);
            let mut per_key = [0usize; 4];
            for k in &keys {
                if keyed.check(k) {
                    per_key[usize::from(*k)] += 1;
                }
            }
            for (k, got) in per_key.iter().enumerate() {
                let asked = keys.iter().filter(|&&x| usize::from(x) == k).count();
                prop_assert_eq!(*got, asked.min(burst as usize));
            }
        }
    }
}
