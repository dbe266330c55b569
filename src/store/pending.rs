//! Quota held by uploads that are not items yet.
//!
//! An upload is charged to its sender's quota from UPLOAD_BEGIN, not only when SEND_FILE or
//! SEND_MAIL turns it into an item: otherwise every session of one user could stage a file
//! up to the whole quota in parallel, and the disk would hold many times the quota of files
//! only one of which can ever be delivered. [`Pending`] is that charge, shared by every
//! session through [`Blobs`](super::Blobs), whatever the blob backend: per user, the declared size plus
//! [`ITEM_OVERHEAD_BYTES`] of each upload in progress or finished but not yet delivered.
//! Each reservation is keyed by its blob id and released exactly once: when the staged
//! upload is dropped, when the blob is removed, or when it was delivered (the item's own
//! charge in the database has taken over).
//!
//! It lives in memory only, per server: at start-up no upload of this server is pending
//! (what a crash left of them is never committed), so there is nothing to recover. In a
//! fleet each server charges its own sessions' uploads; the database's usage, which
//! every delivery checks, holds the quota across servers.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::{StoreError, UserId, ITEM_OVERHEAD_BYTES};

/// Per-user bytes reserved by uploads that are not items yet.
#[derive(Debug, Default)]
pub struct Pending {
    inner: Mutex<Ledger>,
}

#[derive(Debug, Default)]
struct Ledger {
    by_user: HashMap<UserId, u64>,
    by_blob: HashMap<String, (UserId, u64)>,
}

impl Pending {
    /// Reserves `size` + [`ITEM_OVERHEAD_BYTES`] for `user`'s upload `blob_id`, if `used`
    /// (the user's charge in the database) plus everything already reserved plus this stays
    /// within `quota`. Check and reservation are one step, so parallel sessions cannot all
    /// pass the same check.
    pub fn reserve(
        &self,
        user: UserId,
        blob_id: &str,
        size: u64,
        used: u64,
        quota: u64,
    ) -> Result<(), StoreError> {
        let cost = size.saturating_add(ITEM_OVERHEAD_BYTES);
        let mut ledger = self.lock();
        let held = ledger.by_user.get(&user).copied().unwrap_or(0);
        let committed = used.saturating_add(held);
        if committed.saturating_add(cost) > quota {
            return Err(StoreError::QuotaExceeded {
                used: committed,
                requested: cost,
                quota,
            });
        }
        *ledger.by_user.entry(user).or_insert(0) += cost;
        ledger.by_blob.insert(blob_id.to_owned(), (user, cost));
        Ok(())
    }

    /// Releases the reservation of `blob_id`, if it has one; a second release does nothing.
    pub fn release(&self, blob_id: &str) {
        let mut ledger = self.lock();
        let Some((user, cost)) = ledger.by_blob.remove(blob_id) else {
            return;
        };
        if let Some(held) = ledger.by_user.get_mut(&user) {
            *held = held.saturating_sub(cost);
            if *held == 0 {
                ledger.by_user.remove(&user);
            }
        }
    }

    /// Bytes reserved for `user` right now.
    pub fn of(&self, user: UserId) -> u64 {
        self.lock().by_user.get(&user).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // Every update above is a whole step under the lock; a panic cannot leave half of one.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_add_up_per_user_and_release_once() {
        let p = Pending::default();
        let quota = 3 * (100 + ITEM_OVERHEAD_BYTES);
        assert!(p.reserve(1, "a", 100, 0, quota).is_ok());
        assert!(p.reserve(1, "b", 100, 0, quota).is_ok());
        assert!(p.reserve(2, "c", 100, 0, quota).is_ok(), "users are apart");
        // The third of user 1 fits only if the database charge leaves room.
        assert!(matches!(
            p.reserve(1, "d", 100, 1, quota),
            Err(StoreError::QuotaExceeded { used, requested, quota: q })
                if used == 1 + 2 * (100 + ITEM_OVERHEAD_BYTES)
                    && requested == 100 + ITEM_OVERHEAD_BYTES
                    && q == quota
        ));
        assert_eq!(p.of(1), 2 * (100 + ITEM_OVERHEAD_BYTES));
        p.release("a");
        p.release("a");
        assert_eq!(p.of(1), 100 + ITEM_OVERHEAD_BYTES);
        assert!(p.reserve(1, "d", 100, 1, quota).is_ok());
        p.release("b");
        p.release("d");
        p.release("unknown");
        assert_eq!(p.of(1), 0);
        assert_eq!(p.of(2), 100 + ITEM_OVERHEAD_BYTES);
        // An absurd size saturates and is refused rather than wrapping around.
        assert!(p.reserve(3, "e", u64::MAX, 0, u64::MAX - 1).is_err());
    }
}
