//! Rate limiters: governor's GCRA limiters on the guard's clock, with bounded keyed state.
//!
//! A keyed limiter grows one entry per key it has seen. [`KeyedLimiter::purge`] drops the
//! entries that no longer matter (governor's `retain_recent`) and, if an attacker rotating
//! through sources left more than the cap, clears the limiter's map. Clearing only forgives: every
//! key starts again with a full burst. It never lets memory grow past the cap for longer than
//! one purge interval.

use std::fmt;
use std::hash::Hash;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
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

fn non_zero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// The hasher of every keyed limiter's map: aHash keyed with a random seed drawn from the
/// operating system when the map is made. A source cannot pick addresses that collide in
/// one bucket without knowing the seed, and hashing an 8- or 17-byte key costs a few
/// nanoseconds (SipHash, std's default, cost several times that).
type KeyHasher = ahash::RandomState;

/// The keyed state store of every keyed limiter: a sharded concurrent map from key to
/// governor's GCRA state (the theoretical arrival time in nanoseconds since the limiter's
/// start, 0 meaning none yet), with a keyed fast hasher.
///
/// It is governor's `DashMapStateStore` with two changes, neither of which changes a
/// decision: the map's hasher (see [`KeyHasher`]), and the state is a bare `AtomicU64`
/// updated exactly as governor's `InMemoryState` is (`InMemoryState` cannot be read from
/// outside governor, which purging needs). Held behind an `Arc`: the limiter uses it
/// through one handle and [`KeyedLimiter`] keeps a second one to clear the same map in place.
pub(crate) struct SharedStore<K: Hash + Eq + Clone>(Arc<KeyedMap<K>>);

type KeyedMap<K> = DashMap<K, AtomicU64, KeyHasher>;

/// Runs governor's decision `f` on one state and stores its new value, retrying if another
/// thread changed the state meanwhile: governor's `InMemoryState::measure_and_replace_one`.
fn measure_and_replace_one<T, E>(
    state: &AtomicU64,
    f: impl Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
) -> Result<T, E> {
    let mut prev = state.load(Ordering::Acquire);
    let mut decision = f(NonZeroU64::new(prev).map(|n| Nanos::from(n.get())));
    while let Ok((result, next)) = decision {
        match state.compare_exchange_weak(prev, next.into(), Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return Ok(result),
            Err(now) => prev = now,
        }
        decision = f(NonZeroU64::new(prev).map(|n| Nanos::from(n.get())));
    }
    decision.map(|(result, _)| result)
}

impl<K: Hash + Eq + Clone> StateStore for SharedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // One hash and a shared shard lock for a known key; a new key takes the write lock.
        if let Some(state) = self.0.get(key) {
            return measure_and_replace_one(&state, f);
        }
        let state = self.0.entry(key.clone()).or_default();
        measure_and_replace_one(&state, f)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for SharedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = u64::from(drop_below);
        self.0
            .retain(|_, state| state.load(Ordering::Relaxed) > drop_below);
    }

    fn shrink_to_fit(&self) {
        self.0.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A keyed limiter that can be purged and, past its cap, cleared.
pub(crate) struct KeyedLimiter<K: Hash + Eq + Clone> {
    quota: Quota,
    inner: Keyed<K>,
    /// The same map the limiter uses, to clear it: governor offers no `clear`. Clearing the
    /// map in place (rather than replacing the limiter behind a lock) keeps every check free
    /// of a lock of our own; the map's shards are locked by the map itself.
    map: Arc<KeyedMap<K>>,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    pub(crate) fn new(quota: Quota, clock: &GuardClock) -> Self {
        let map = Arc::new(KeyedMap::<K>::with_hasher(KeyHasher::new()));
        KeyedLimiter {
            quota,
            inner: RateLimiter::new(quota, SharedStore(Arc::clone(&map)), clock.clone()),
            map,
        }
    }

    /// Whether one more cell for `key` conforms now (and takes it if so).
    /// The quota it enforces.
    pub(crate) fn quota(&self) -> Quota {
        self.quota
    }

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
    quota: Quota,
    inner: Direct,
}

impl ConnLimiter {
    pub(crate) fn new(quota: Quota, clock: &GuardClock) -> Self {
        ConnLimiter {
            quota,
            inner: RateLimiter::direct_with_clock(quota, clock.clone()),
        }
    }

    /// The quota it enforces (a reload compares it with the configured one).
    pub(crate) fn quota(&self) -> Quota {
        self.quota
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

    use governor::state::keyed::DefaultKeyedStateStore;
    use proptest::prelude::*;

    use super::super::SourceKey;
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
    fn key_hasher_is_seeded_per_map() {
        // Two maps hash the same keys differently, so no fixed set of addresses lands in one
        // bucket of every map.
        let (a, b) = (KeyHasher::new(), KeyHasher::new());
        let differ = (0..8u32)
            .filter(|k| {
                a.hash_one(SourceKey::V4((*k).into())) != b.hash_one(SourceKey::V4((*k).into()))
            })
            .count();
        assert_eq!(differ, 8);
    }

    #[test]
    fn conn_limiter_admits_no_more_than_burst_at_once() {
        let clock = GuardClock::manual();
        let l = ConnLimiter::new(per_second(2_000, 500), &clock);
        let admitted = (0..10_000).filter(|_| l.check().is_ok()).count();
        assert_eq!(admitted, 500);
        assert_eq!(l.check(), Err(Limited::Connection));
    }

    /// One step of a schedule run on two keyed limiters at once.
    #[derive(Debug, Clone)]
    enum Step {
        Check(u8),
        Advance(u64),
        /// Advance by this many emission intervals exactly, to hit the boundaries.
        AdvanceIntervals(u32),
        Purge,
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        let step = prop_oneof![
            8 => (0u8..6).prop_map(Step::Check),
            2 => (0u64..3_000_000).prop_map(Step::Advance),
            2 => (0u32..4).prop_map(Step::AdvanceIntervals),
            1 => Just(Step::Purge),
        ];
        proptest::collection::vec(step, 0..400)
    }

    proptest! {
        /// Our store decides exactly as governor's default keyed store (a DashMap of
        /// `InMemoryState`s) on the same clock and schedule, and purging keeps the same keys.
        #[test]
        fn store_decides_as_governors_default_store(
            rate in 1u32..2_000,
            burst in 1u32..20,
            schedule in steps(),
        ) {
            let clock = GuardClock::manual();
            let quota = per_second(rate, burst);
            let ours = KeyedLimiter::new(quota, &clock);
            let theirs: RateLimiter<u8, DefaultKeyedStateStore<u8>, GuardClock, NoOpMiddleware<Nanos>> =
                RateLimiter::new(quota, DefaultKeyedStateStore::default(), clock.clone());
            for step in &schedule {
                match step {
                    Step::Check(k) => prop_assert_eq!(ours.check(k), theirs.check_key(k).is_ok()),
                    Step::Advance(ns) => clock.advance(Duration::from_nanos(*ns)),
                    Step::AdvanceIntervals(n) => {
                        clock.advance(quota.replenish_interval() * *n);
                    }
                    Step::Purge => {
                        theirs.retain_recent();
                        prop_assert_eq!(ours.purge(usize::MAX), theirs.len());
                    }
                }
            }
            // The same decisions at one pinned instant too, as the guard takes them.
            for k in 0..6u8 {
                let (a, b) = clock.pinned(|| (ours.check(&k), theirs.check_key(&k).is_ok()));
                prop_assert_eq!(a, b);
            }
        }

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
