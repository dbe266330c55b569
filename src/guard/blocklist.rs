//! The runtime blocklist: sources refused at accept until a deadline.
//!
//! Deadlines are points on the guard's [`GuardClock`](super::GuardClock), so expiry follows
//! the monotonic clock (and a test's manual one), not the wall clock. The list is capped like
//! every other keyed state: when full, expired entries go first, then the one that would
//! have expired soonest.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::SourceKey;

/// One runtime block, as reported by [`super::Guard::blocked`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockEntry {
    /// The blocked source.
    pub source: SourceKey,
    /// When the block ends (wall-clock estimate of the monotonic deadline).
    pub until: SystemTime,
    /// Why it was blocked, as given by whoever blocked it.
    pub reason: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Block {
    /// Deadline on the guard's clock.
    pub(crate) until: Duration,
    pub(crate) reason: String,
}

/// Sources and their block deadlines.
#[derive(Debug)]
pub(crate) struct Blocklist {
    blocks: BTreeMap<SourceKey, Block>,
    cap: usize,
}

impl Blocklist {
    /// An empty list holding at most `cap` (at least one) sources.
    pub(crate) fn new(cap: usize) -> Self {
        Blocklist {
            blocks: BTreeMap::new(),
            cap: cap.max(1),
        }
    }

    /// The block on `source` if it is still in force at `now`.
    pub(crate) fn active(&self, source: &SourceKey, now: Duration) -> Option<&Block> {
        self.blocks.get(source).filter(|b| b.until > now)
    }

    /// Blocks `source` until `until`. A block already in force is extended, never shortened,
    /// and takes the new reason.
    pub(crate) fn insert(
        &mut self,
        source: SourceKey,
        until: Duration,
        reason: &str,
        now: Duration,
    ) {
        if !self.blocks.contains_key(&source) && self.blocks.len() >= self.cap {
            self.expire(now);
            if self.blocks.len() >= self.cap {
                self.evict_soonest();
            }
        }
        let block = self.blocks.entry(source).or_insert(Block {
            until,
            reason: String::new(),
        });
        block.until = block.until.max(until);
        reason.clone_into(&mut block.reason);
    }

    /// Removes the block on `source`; true if one was in force.
    pub(crate) fn remove(&mut self, source: &SourceKey, now: Duration) -> bool {
        self.blocks.remove(source).is_some_and(|b| b.until > now)
    }

    /// Drops every block that has ended by `now`.
    pub(crate) fn expire(&mut self, now: Duration) {
        self.blocks.retain(|_, b| b.until > now);
    }

    /// Blocks in force at `now`, in source order.
    pub(crate) fn iter_active(&self, now: Duration) -> impl Iterator<Item = (&SourceKey, &Block)> {
        self.blocks.iter().filter(move |(_, b)| b.until > now)
    }

    /// Entries held, including expired ones not yet purged.
    pub(crate) fn len(&self) -> usize {
        self.blocks.len()
    }

    fn evict_soonest(&mut self) {
        // First minimum in source order, so the choice is deterministic.
        let soonest = self
            .blocks
            .iter()
            .min_by_key(|(_, b)| b.until)
            .map(|(k, _)| *k);
        if let Some(k) = soonest {
            tracing::warn!(source = %k, "blocklist full, evicting the block that ends soonest");
            self.blocks.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn src(n: u8) -> SourceKey {
        SourceKey::V4(Ipv4Addr::new(127, 0, 1, n))
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn block_is_in_force_until_its_deadline() {
        let mut l = Blocklist::new(10);
        l.insert(src(1), secs(10), "scan", secs(0));
        assert!(l.active(&src(1), secs(9)).is_some());
        assert!(l.active(&src(1), secs(10)).is_none());
        l.expire(secs(10));
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn reblocking_extends_never_shortens() {
        let mut l = Blocklist::new(10);
        l.insert(src(1), secs(10), "a", secs(0));
        l.insert(src(1), secs(5), "b", secs(0));
        let b = l
            .active(&src(1), secs(0))
            .map(|b| (b.until, b.reason.clone()));
        assert_eq!(b, Some((secs(10), "b".to_owned())));
        l.insert(src(1), secs(20), "c", secs(0));
        assert_eq!(l.active(&src(1), secs(0)).map(|b| b.until), Some(secs(20)));
    }

    #[test]
    fn full_list_drops_expired_then_soonest() {
        let mut l = Blocklist::new(3);
        l.insert(src(1), secs(5), "", secs(0));
        l.insert(src(2), secs(30), "", secs(0));
        l.insert(src(3), secs(20), "", secs(0));
        // At 6 s, src(1) has expired: it goes and nothing in force is lost.
        l.insert(src(4), secs(40), "", secs(6));
        let held: Vec<_> = l.iter_active(secs(6)).map(|(k, _)| *k).collect();
        assert_eq!(held, vec![src(2), src(3), src(4)]);
        // Nothing expired: src(3) ends soonest and is evicted.
        l.insert(src(5), secs(50), "", secs(6));
        let held: Vec<_> = l.iter_active(secs(6)).map(|(k, _)| *k).collect();
        assert_eq!(held, vec![src(2), src(4), src(5)]);
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn remove_reports_whether_a_block_was_in_force() {
        let mut l = Blocklist::new(10);
        l.insert(src(1), secs(10), "", secs(0));
        assert!(l.remove(&src(1), secs(1)));
        assert!(!l.remove(&src(1), secs(1)));
        l.insert(src(2), secs(10), "", secs(0));
        assert!(!l.remove(&src(2), secs(11)));
    }
}
