//! `Retries`: the wrong passwords each source recently tried on each account, to tell a client
//! retrying a stale password, and a typo its owner then corrects, from guessing.
//!
//! A password is never kept: only its BLAKE3 keyed hash, under a key of 32 random bytes drawn
//! when the guard is made and never stored, so the hashes mean nothing outside this process.
//! Per (account, source) at most [`PER_PAIR`] failures are kept, each for [`RETRY_MEMORY`];
//! the map holds at most `limits.max_tracked_sources` pairs past a purge.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use rand::RngCore;

use super::login::{cap_map, nanos, within};
use super::source::SourceKey;

/// How long a failed password is remembered: a retry of it within this time counts for
/// nothing more, and a success within it forgives it. A quarter of an hour, as the source
/// failures of `login` (a client retrying every minute is still one failure).
pub const RETRY_MEMORY: Duration = Duration::from_secs(15 * 60);

/// Failed passwords remembered per (account, source). More distinct ones than this are
/// guessing, which the firewall blocks after four; the oldest is forgotten first.
pub const PER_PAIR: usize = 8;

/// The keyed hash of a password tried in a login, for [`super::Guard::login_failed`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PasswordDigest(blake3::Hash);

impl std::fmt::Debug for PasswordDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never printed, even hashed.
        f.write_str("PasswordDigest(..)")
    }
}

/// One remembered failure.
#[derive(Debug, Clone, Copy)]
struct Failure {
    digest: PasswordDigest,
    /// When it was counted, in nanoseconds of the guard's clock.
    at: u64,
}

/// Recent failed passwords per (account name key, source). See the module docs.
pub(crate) struct Retries {
    key: [u8; 32],
    pairs: HashMap<(u64, SourceKey), VecDeque<Failure>>,
}

impl std::fmt::Debug for Retries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retries")
            .field("pairs", &self.pairs.len())
            .finish_non_exhaustive()
    }
}

impl Retries {
    /// An empty memory with a fresh random key.
    pub(crate) fn new() -> Retries {
        let mut key = [0u8; 32];
        if let Err(e) = rand::rngs::OsRng.try_fill_bytes(&mut key) {
            // Without the OS's randomness, a key from the clock and this process still keeps
            // the hashes from being compared with any other process's.
            tracing::warn!(error = %e, "no OS randomness for the failed-password key");
            let seed = format!("{:?} {}", std::time::SystemTime::now(), std::process::id());
            key = blake3::derive_key("rampart failed-password key", seed.as_bytes());
        }
        Retries {
            key,
            pairs: HashMap::new(),
        }
    }

    /// The keyed hash of `password`.
    pub(crate) fn digest(&self, password: &[u8]) -> PasswordDigest {
        PasswordDigest(blake3::keyed_hash(&self.key, password))
    }

    /// Records a failed login to `account` from `source` with `digest` at `now`. Returns
    /// false, and records nothing, if the same password failed from there within
    /// [`RETRY_MEMORY`]: it was counted then.
    pub(crate) fn failed(
        &mut self,
        account: u64,
        source: SourceKey,
        digest: PasswordDigest,
        now: Duration,
    ) -> bool {
        let now = nanos(now);
        let failures = self.pairs.entry((account, source)).or_default();
        failures.retain(|f| within(f.at, RETRY_MEMORY, now));
        if failures.iter().any(|f| f.digest == digest) {
            return false;
        }
        if failures.len() >= PER_PAIR {
            failures.pop_front();
        }
        failures.push_back(Failure { digest, at: now });
        true
    }

    /// Records a successful login to `account` from `source` at `now`: forgets the pair's
    /// failures and returns how long ago each was counted, oldest first, so that they can be
    /// forgiven.
    pub(crate) fn succeeded(
        &mut self,
        account: u64,
        source: SourceKey,
        now: Duration,
    ) -> Vec<Duration> {
        let now_ns = nanos(now);
        self.pairs
            .remove(&(account, source))
            .unwrap_or_default()
            .into_iter()
            .filter(|f| within(f.at, RETRY_MEMORY, now_ns))
            .map(|f| Duration::from_nanos(now_ns.saturating_sub(f.at)))
            .collect()
    }

    /// Pairs held.
    pub(crate) fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Drops failures past their memory and pairs left empty, and clears the map if it
    /// still holds more than `cap` pairs (which only forgets: a retry then counts again).
    pub(crate) fn purge(&mut self, now: Duration, cap: usize) -> usize {
        let now = nanos(now);
        self.pairs.retain(|_, failures| {
            failures.retain(|f| within(f.at, RETRY_MEMORY, now));
            !failures.is_empty()
        });
        cap_map(&mut self.pairs, cap)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn src(n: u8) -> SourceKey {
        SourceKey::V4(Ipv4Addr::new(127, 0, 9, n))
    }

    const T0: Duration = Duration::from_secs(60);

    #[test]
    fn the_same_wrong_password_counts_once_per_pair() {
        let mut r = Retries::new();
        let stale = r.digest(b"old password");
        assert!(r.failed(1, src(1), stale, T0));
        for s in 1..20 {
            assert!(!r.failed(1, src(1), stale, T0 + Duration::from_secs(s)));
        }
        // Another password, another account or another source counts.
        assert!(r.failed(1, src(1), r.digest(b"guess"), T0));
        assert!(r.failed(2, src(1), stale, T0));
        assert!(r.failed(1, src(2), stale, T0));
        // Past the memory it counts again.
        assert!(r.failed(1, src(1), stale, T0 + RETRY_MEMORY));
    }

    #[test]
    fn keys_differ_per_process_and_digests_hide_the_password() {
        let (a, b) = (Retries::new(), Retries::new());
        assert_ne!(a.digest(b"pw"), b.digest(b"pw"));
        assert_eq!(format!("{:?}", a.digest(b"pw")), "PasswordDigest(..)");
    }

    #[test]
    fn a_success_returns_the_pairs_failures_to_forgive() {
        let mut r = Retries::new();
        assert!(r.failed(1, src(1), r.digest(b"typo"), T0));
        assert!(r.failed(1, src(1), r.digest(b"typo2"), T0 + Duration::from_secs(3)));
        assert!(r.failed(1, src(2), r.digest(b"typo"), T0));
        let ages = r.succeeded(1, src(1), T0 + Duration::from_secs(5));
        assert_eq!(ages, vec![Duration::from_secs(5), Duration::from_secs(2)]);
        assert!(r.succeeded(1, src(1), T0).is_empty(), "forgiven once");
        assert_eq!(r.len(), 1, "the other source's failure stays");
    }

    #[test]
    fn memory_is_bounded() {
        let mut r = Retries::new();
        for n in 0..20u8 {
            assert!(r.failed(1, src(1), r.digest(&[n]), T0));
        }
        assert_eq!(r.succeeded(1, src(1), T0).len(), PER_PAIR);
        for n in 0..10 {
            r.failed(1, src(n), r.digest(b"x"), T0);
        }
        assert_eq!(r.purge(T0, 9), 10);
        r.failed(1, src(1), r.digest(b"x"), T0);
        assert_eq!(r.purge(T0 + RETRY_MEMORY, usize::MAX), 0);
        assert_eq!(r.len(), 0);
    }
}
