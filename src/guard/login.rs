//! `LoginHistory`: what the guard remembers of recent logins, to slow password guessing
//! against one account without locking its owner out.
//!
//! Three bounded maps, all read and written under one lock (logins are rare next to frames:
//! each one costs an argon2 verification):
//!
//! - per account name, a failure backoff: a GCRA state (as governor keeps it) that only
//!   failed logins advance, `rates.logins_per_min_per_user` a minute with a burst of
//!   `rates.logins_burst_per_user`. Successes never count.
//! - per source, its own failed logins on any account, counted until [`FAILURE_MEMORY`]
//!   passes without one.
//! - per (account, source), when that source last logged in to that account. Such a source
//!   is in good standing for [`TRUST_FOR`].
//!
//! The backoff refuses a login only from a source that is not in good standing for the
//! account and has failed as many logins of its own as the firewall needs to block a source
//! (`firewall.threshold / firewall.weight_auth_failed`, rounded up: 4 by default). Every
//! other login is verified, so a correct password gets in however many others guessed
//! wrong, and each wrong guess counts against its own source in the firewall. The backoff
//! thus never holds back an address that its own failures would not already have got
//! blocked, while a guesser whose failures decay out of the firewall's score (one guess a
//! minute from each of many addresses) still gets no more than that many guesses per
//! address per quarter hour against an account under attack.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use super::source::SourceKey;

/// How long a source's own failed logins are remembered after its last one. A quarter of an
/// hour, fifteen firewall half-lives: long past the point where the firewall has forgotten
/// them, so guessing slowly enough to stay under the firewall's threshold does not buy more
/// guesses against an account in backoff.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);

/// How long a successful login keeps its source in good standing for that account: a week,
/// so that a user's usual addresses stay proven between weekly uses. Kept in memory only; a
/// restart forgets it, which merely treats those sources as new ones.
pub const TRUST_FOR: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Where a source stands with one account, for a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// It logged in to the account within [`TRUST_FOR`]: verified first, never held back.
    Proven,
    /// Not proven and not held back: verified like any login.
    New,
    /// Not proven, the account's failure backoff is active, and the source has failed as
    /// many logins of its own as the firewall blocks for: refused without verification.
    HeldBack,
}

/// An account's failure backoff: governor's GCRA on nanoseconds of the guard's clock, with
/// a test that does not take a cell and a way to give one back, which governor does not
/// offer. The per-source login budgets (`budget`) use it too.
#[derive(Debug, Clone, Copy)]
pub(super) struct Backoff {
    /// Nanoseconds between two failures at the sustained rate.
    t: u64,
    /// Tolerance: `t` times one less than the burst (governor's `tau`).
    tau: u64,
}

impl Backoff {
    pub(super) fn new(per_minute: u32, burst: u32) -> Backoff {
        // As governor's `Quota::per_minute`: the period divided by the rate, rounded down;
        // zero counts as one, as in `rate::per_minute`.
        let t = (60_000_000_000 / u64::from(per_minute.max(1))).max(1);
        Backoff {
            t,
            tau: t.saturating_mul(u64::from(burst.max(1) - 1)),
        }
    }

    /// Whether one more failure would exceed the allowance at `now`, given the theoretical
    /// arrival time `tat` (governor: conforming iff `now >= tat - tau`).
    pub(super) fn active(&self, tat: u64, now: u64) -> bool {
        now < tat.saturating_sub(self.tau)
    }

    /// The state after one more failure at `now`. Capped at a full bucket, so failures that
    /// arrive while the backoff is active (from sources without failures, which are still
    /// verified) do not lengthen it without end.
    pub(super) fn after_failure(&self, tat: u64, now: u64) -> u64 {
        let full = now.saturating_add(self.tau).saturating_add(self.t);
        tat.max(now).saturating_add(self.t).min(full)
    }

    /// The state with one cell given back: a theoretical arrival time at or before `now`
    /// already means a full bucket, so going lower changes nothing.
    pub(super) fn give_back(&self, tat: u64) -> u64 {
        tat.saturating_sub(self.t)
    }
}

/// Recent logins: account failure backoffs, sources' own failures, and sources in good
/// standing per account. See the module docs.
#[derive(Debug)]
pub(crate) struct LoginHistory {
    backoff: Backoff,
    /// Account name key to its backoff state (theoretical arrival time, in nanoseconds).
    accounts: HashMap<u64, u64>,
    /// Source to its own recent failed logins.
    failed: HashMap<SourceKey, Failures>,
    /// Failures of its own that hold a source back from an account in backoff.
    source_failures: u32,
    /// (account name key, source) to the time of that source's last login to it.
    proven: HashMap<(u64, SourceKey), u64>,
}

impl LoginHistory {
    /// An empty history with the per-account failure allowance of `per_minute` a minute and
    /// a burst of `burst`, holding back sources with `source_failures` failures of their own
    /// (at least 1).
    pub(crate) fn new(per_minute: u32, burst: u32, source_failures: u32) -> LoginHistory {
        LoginHistory {
            backoff: Backoff::new(per_minute, burst),
            accounts: HashMap::new(),
            failed: HashMap::new(),
            source_failures: source_failures.max(1),
            proven: HashMap::new(),
        }
    }

    /// Changes the account failure allowance and the failures that hold a source back
    /// (a reload), keeping every account's and source's recorded state.
    pub(crate) fn set_limits(&mut self, per_minute: u32, burst: u32, source_failures: u32) {
        self.backoff = Backoff::new(per_minute, burst);
        self.source_failures = source_failures.max(1);
    }

    /// The standing of `source` for `account` at `now`: proven if it logged in to the
    /// account recently; held back if the account's failure backoff is active and the source
    /// has `source_failures` recent failures of its own; new otherwise.
    pub(crate) fn standing(&self, account: u64, source: SourceKey, now: Duration) -> Standing {
        let now = nanos(now);
        let proven = self
            .proven
            .get(&(account, source))
            .is_some_and(|&at| within(at, TRUST_FOR, now));
        if proven {
            return Standing::Proven;
        }
        let in_backoff = self
            .accounts
            .get(&account)
            .is_some_and(|&tat| self.backoff.active(tat, now));
        let failed_enough = self
            .failed
            .get(&source)
            .is_some_and(|f| f.recent(now) >= self.source_failures);
        if in_backoff && failed_enough {
            Standing::HeldBack
        } else {
            Standing::New
        }
    }

    /// Records a failed login to `account` from `source` at `now`: it advances the account's
    /// backoff and marks the source.
    pub(crate) fn failed(&mut self, account: u64, source: SourceKey, now: Duration) {
        let now = nanos(now);
        let tat = self.accounts.get(&account).copied().unwrap_or(now);
        let next = self.backoff.after_failure(tat, now);
        self.accounts.insert(account, next);
        let f = self.failed.entry(source).or_insert(Failures {
            last: now,
            count: 0,
        });
        f.count = f.recent(now).saturating_add(1);
        f.last = now;
    }

    /// Records a successful login to `account` from `source` at `now`: the source is in good
    /// standing for that account from now on. Its failures stay recorded, so logging in to
    /// an account of one's own does not wash a guessing address clean.
    pub(crate) fn succeeded(&mut self, account: u64, source: SourceKey, now: Duration) {
        self.proven.insert((account, source), nanos(now));
    }

    /// Entries held in all three maps.
    pub(crate) fn len(&self) -> usize {
        self.accounts.len() + self.failed.len() + self.proven.len()
    }

    /// Drops what no longer matters at `now` (backoffs back to fresh, failures and standing
    /// past their memory) and clears any map still holding more than `cap` entries.
    /// Clearing forgives failures and forgets standing; either way a source without failures
    /// is still verified, so no one is locked out by it.
    pub(crate) fn purge(&mut self, now: Duration, cap: usize) {
        let now = nanos(now);
        self.accounts.retain(|_, tat| *tat > now);
        self.failed.retain(|_, f| f.recent(now) > 0);
        self.proven.retain(|_, at| within(*at, TRUST_FOR, now));
        let dropped = cap_map(&mut self.accounts, cap)
            + cap_map(&mut self.failed, cap)
            + cap_map(&mut self.proven, cap);
        if dropped > 0 {
            tracing::warn!(cap, dropped, "login history over its key cap, cleared");
        }
    }
}

/// A source's own failed logins: how many, and when the last one was.
#[derive(Debug, Clone, Copy)]
struct Failures {
    last: u64,
    count: u32,
}

impl Failures {
    /// The failures still remembered at `now`: all of them until [`FAILURE_MEMORY`] passes
    /// after the last one, then none.
    fn recent(&self, now: u64) -> u32 {
        if within(self.last, FAILURE_MEMORY, now) {
            self.count
        } else {
            0
        }
    }
}

/// Clears `map` if it holds more than `cap` entries; returns how many it dropped.
pub(super) fn cap_map<K: Hash + Eq, V>(map: &mut HashMap<K, V>, cap: usize) -> usize {
    if map.len() <= cap {
        return 0;
    }
    let n = map.len();
    map.clear();
    map.shrink_to_fit();
    n
}

/// Whether something at `at` is less than `memory` before `now` (all in nanoseconds).
pub(super) fn within(at: u64, memory: Duration, now: u64) -> bool {
    now.saturating_sub(at) < nanos(memory)
}

/// A clock reading in nanoseconds, saturating at about 584 years.
pub(super) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn src(n: u8) -> SourceKey {
        SourceKey::V4(Ipv4Addr::new(127, 0, 9, n))
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn backoff_matches_governors_burst_and_rate() {
        // 10 a minute, burst 5: five failures pass at once, then one per 6 s.
        let b = Backoff::new(10, 5);
        let mut tat = 0;
        let now = 1_000;
        for _ in 0..5 {
            assert!(!b.active(tat, now));
            tat = b.after_failure(tat, now);
        }
        assert!(b.active(tat, now));
        assert!(b.active(tat, now + 5_999_999_999));
        assert!(!b.active(tat, now + 6_000_000_000));
        // Capped at a full bucket: failures while active do not lengthen it.
        assert_eq!(b.after_failure(tat, now), tat);
    }

    #[test]
    fn only_sources_that_failed_enough_themselves_wait() {
        let mut h = LoginHistory::new(10, 5, 2);
        let now = MIN;
        for n in 0..5 {
            h.failed(1, src(n), now);
        }
        // The account is in backoff, but one failure of its own does not hold a source back.
        assert_ne!(h.standing(1, src(0), now), Standing::HeldBack);
        h.failed(1, src(0), now);
        // Two do; a clean source is verified, and other accounts are untouched.
        assert_eq!(h.standing(1, src(0), now), Standing::HeldBack);
        assert_ne!(h.standing(1, src(9), now), Standing::HeldBack);
        assert_ne!(h.standing(2, src(0), now), Standing::HeldBack);
        // The backoff ends at the sustained rate.
        assert_ne!(
            h.standing(1, src(0), now + Duration::from_secs(6)),
            Standing::HeldBack
        );
        // A source's failures are forgotten a quarter hour after its last one.
        h.failed(1, src(9), now);
        assert_ne!(
            h.standing(1, src(0), now + FAILURE_MEMORY),
            Standing::HeldBack
        );
    }

    #[test]
    fn good_standing_outlasts_typos_and_failures_outlast_success() {
        let mut h = LoginHistory::new(10, 5, 1);
        let now = MIN;
        h.succeeded(1, src(1), now);
        for n in 1..=5 {
            h.failed(1, src(n), now);
        }
        assert_eq!(h.standing(1, src(1), now), Standing::Proven);
        // A success on another account does not clear the source's failures.
        h.succeeded(2, src(2), now);
        assert_eq!(h.standing(1, src(2), now), Standing::HeldBack);
    }

    #[test]
    fn purge_forgets_and_caps() {
        let mut h = LoginHistory::new(10, 5, 1);
        h.failed(1, src(1), MIN);
        h.succeeded(1, src(2), MIN);
        assert_eq!(h.len(), 3);
        h.purge(MIN + Duration::from_secs(7), usize::MAX);
        assert_eq!(h.len(), 2, "the account's backoff is fresh again");
        h.purge(MIN + FAILURE_MEMORY, usize::MAX);
        assert_eq!(h.len(), 1, "the failure is forgotten");
        h.purge(MIN + TRUST_FOR, usize::MAX);
        assert_eq!(h.len(), 0, "the standing is forgotten");
        for n in 0..10 {
            h.failed(u64::from(n), src(n), MIN);
        }
        h.purge(MIN, 9);
        assert_eq!(h.len(), 0, "over the cap: cleared");
    }
}
