//! `LoginBudgets`: how many logins each source may have verified, with failures and successes
//! counted apart.
//!
//! Every login costs an argon2 verification, so a source's logins are limited before any
//! password is verified. Failures and successes have separate allowances: a guesser fails,
//! and a script that runs the command-line client once per command succeeds dozens of times
//! a minute, so one shared allowance either lets the guesser through or blocks the script.
//!
//! An attempt cannot know its outcome before it is verified, so [`LoginBudgets::reserve`]
//! checks that neither allowance is spent and takes one failure for the attempt while it is
//! verified: at most `rates.logins_burst_per_ip` verifications from one source are in flight
//! however many connections it opens. [`LoginBudgets::settle`] then keeps that failure, or
//! gives it back and takes a success instead, or (a retry of a password that already failed,
//! or an attempt the server could not judge) gives it back and takes nothing.

use std::collections::HashMap;
use std::time::Duration;

use super::login::{cap_map, nanos, Backoff};
use super::source::SourceKey;

/// How a verified login turned out, for [`LoginBudgets::settle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The password was right.
    Succeeded,
    /// A wrong password not tried before.
    Failed,
    /// The same wrong password as a recent failure: counted once, already.
    Repeated,
    /// Never judged: the server could not look the user up (its store down), or could not
    /// verify the password of a source in good standing (its verifier full). Not the
    /// source's doing, so it costs nothing.
    Unjudged,
}

/// Which allowance refused an attempt, for [`LoginBudgets::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spent {
    /// The failure allowance (when both are spent too: guessing is the graver reading).
    Failures,
    /// Only the success allowance.
    Successes,
}

/// Per-source allowances of failed and of successful logins (GCRA states on the guard's
/// clock, as [`Backoff`] keeps them).
#[derive(Debug)]
pub(crate) struct LoginBudgets {
    failures: Backoff,
    successes: Backoff,
    /// Source to the theoretical arrival time of its failure allowance.
    failed: HashMap<SourceKey, u64>,
    /// Source to the theoretical arrival time of its success allowance.
    succeeded: HashMap<SourceKey, u64>,
}

impl LoginBudgets {
    /// Allowances of `failures` (per minute, burst) and `successes` (per minute, burst).
    pub(crate) fn new(failures: (u32, u32), successes: (u32, u32)) -> LoginBudgets {
        LoginBudgets {
            failures: Backoff::new(failures.0, failures.1),
            successes: Backoff::new(successes.0, successes.1),
            failed: HashMap::new(),
            succeeded: HashMap::new(),
        }
    }

    /// Changes both allowances (a reload), keeping every source's recorded state.
    pub(crate) fn set_allowances(&mut self, failures: (u32, u32), successes: (u32, u32)) {
        self.failures = Backoff::new(failures.0, failures.1);
        self.successes = Backoff::new(successes.0, successes.1);
    }

    /// Whether `source` may have one more login verified at `now`: neither of its allowances
    /// is spent. If so, takes one failure for the attempt until it is settled; if not, says
    /// which allowance is spent.
    pub(crate) fn reserve(&mut self, source: SourceKey, now: Duration) -> Result<(), Spent> {
        let now = nanos(now);
        let failed = self.failed.get(&source).copied().unwrap_or(now);
        let succeeded = self.succeeded.get(&source).copied().unwrap_or(now);
        if self.failures.active(failed, now) {
            return Err(Spent::Failures);
        }
        if self.successes.active(succeeded, now) {
            return Err(Spent::Successes);
        }
        self.failed
            .insert(source, self.failures.after_failure(failed, now));
        Ok(())
    }

    /// Charges a reserved attempt of `source` by its outcome (see the module docs).
    pub(crate) fn settle(&mut self, source: SourceKey, outcome: Outcome, now: Duration) {
        if outcome == Outcome::Failed {
            return;
        }
        if let Some(tat) = self.failed.get_mut(&source) {
            *tat = self.failures.give_back(*tat);
        }
        if outcome == Outcome::Succeeded {
            let now = nanos(now);
            let tat = self.succeeded.get(&source).copied().unwrap_or(now);
            self.succeeded
                .insert(source, self.successes.after_failure(tat, now));
        }
    }

    /// Entries held in both maps.
    pub(crate) fn len(&self) -> usize {
        self.failed.len() + self.succeeded.len()
    }

    /// Drops allowances that are full again at `now`, and clears a map holding more than
    /// `cap` entries (which only forgives: every source starts with a full allowance).
    pub(crate) fn purge(&mut self, now: Duration, cap: usize) -> usize {
        let now = nanos(now);
        self.failed.retain(|_, tat| *tat > now);
        self.succeeded.retain(|_, tat| *tat > now);
        cap_map(&mut self.failed, cap) + cap_map(&mut self.succeeded, cap)
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

    impl LoginBudgets {
        fn reserve_ok(&mut self, source: SourceKey, now: Duration) -> bool {
            self.reserve(source, now).is_ok()
        }
    }

    #[test]
    fn successes_spend_their_own_allowance() {
        // 30 failures a minute, 10 at once; 300 successes a minute, 60 at once.
        let mut b = LoginBudgets::new((30, 10), (300, 60));
        for _ in 0..60 {
            assert!(b.reserve_ok(src(1), T0));
            b.settle(src(1), Outcome::Succeeded, T0);
        }
        assert_eq!(
            b.reserve(src(1), T0),
            Err(Spent::Successes),
            "the successes' burst is spent"
        );
        // 300 a minute: one more every 200 ms.
        assert!(b.reserve_ok(src(1), T0 + Duration::from_millis(200)));
        // Failures of another source are counted apart.
        for _ in 0..10 {
            assert!(b.reserve_ok(src(2), T0));
            b.settle(src(2), Outcome::Failed, T0);
        }
        assert_eq!(b.reserve(src(2), T0), Err(Spent::Failures));
        assert!(b.reserve_ok(src(2), T0 + Duration::from_secs(2)));
    }

    #[test]
    fn attempts_in_flight_hold_a_failure_and_repeats_give_it_back() {
        let mut b = LoginBudgets::new((30, 10), (300, 60));
        assert_eq!((0..20).filter(|_| b.reserve_ok(src(1), T0)).count(), 10);
        for _ in 0..10 {
            b.settle(src(1), Outcome::Repeated, T0);
        }
        assert_eq!((0..20).filter(|_| b.reserve_ok(src(1), T0)).count(), 10);
    }

    #[test]
    fn purge_forgets_full_allowances_and_caps() {
        let mut b = LoginBudgets::new((30, 10), (300, 60));
        assert!(b.reserve_ok(src(1), T0));
        b.settle(src(1), Outcome::Succeeded, T0);
        assert_eq!(b.len(), 2);
        b.purge(T0 + Duration::from_millis(200), usize::MAX);
        assert_eq!(b.len(), 0);
        for n in 0..10 {
            let _ = b.reserve(src(n), T0);
        }
        assert_eq!(b.purge(T0, 9), 10);
        assert_eq!(b.len(), 0);
    }
}
