//! A [`Store`] that fails on demand: the disk faults a simulated scenario schedules
//! (`[[sim.fault]]`), injected through the store's trait so that the server meets them
//! exactly where a real disk would fail it.
//!
//! [`FaultyStore`] passes every call to the store it wraps, except while its
//! [`DiskFaults`] say otherwise:
//!
//! - fsync failure: every write fails as a commit whose fsync returned EIO does, and
//!   nothing is stored;
//! - a full disk: every write is refused with [`StoreError::StorageFull`];
//! - a slow disk: every delivery's commit takes a fixed delay longer;
//! - an unreachable database: every call fails, reads too.
//!
//! Reads pass the disk faults: they come from the page cache, which a failing fsync or a
//! full disk leave readable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::{
    Deliveries, InboxEntry, Item, ItemId, NewItem, Store, StoreError, UserId, UserSummary,
};

/// The disk fault in force.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DiskFault {
    /// None: every call passes.
    #[default]
    Healthy,
    /// Every write fails as a commit whose fsync returned EIO.
    FsyncFail,
    /// Every write fails with ENOSPC.
    Full,
    /// Every delivery takes this much longer.
    Slow(Duration),
    /// The database cannot be reached (a PostgreSQL store whose server is down): every
    /// call fails, reads too, with [`StoreError::Database`].
    Unreachable,
}

/// The switch a fault schedule turns, shared with the [`FaultyStore`]s it controls.
#[derive(Debug, Default)]
pub struct DiskFaults {
    now: Mutex<DiskFault>,
    failed: AtomicU64,
    delayed: AtomicU64,
}

impl DiskFaults {
    /// Puts `fault` in force, replacing the one before.
    pub fn set(&self, fault: DiskFault) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = fault;
    }

    /// The fault in force.
    pub fn get(&self) -> DiskFault {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes failed by an injected fault so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Deliveries an injected slow disk delayed so far.
    pub fn delayed(&self) -> u64 {
        self.delayed.load(Ordering::Relaxed)
    }

    /// The errors the fault in force fails a write of `n` items with (one per item), if
    /// it fails writes, counting them.
    fn fail(&self, n: usize) -> Option<Vec<StoreError>> {
        let make = match self.get() {
            DiskFault::FsyncFail => || {
                StoreError::NotCommitted(format!(
                    "fsync: {}",
                    std::io::Error::from_raw_os_error(EIO)
                ))
            },
            DiskFault::Full => || StoreError::StorageFull,
            DiskFault::Unreachable => unreachable_error,
            DiskFault::Healthy | DiskFault::Slow(_) => return None,
        };
        self.failed.fetch_add(n as u64, Ordering::Relaxed);
        Some((0..n).map(|_| make()).collect())
    }
}

/// What a call fails with while the database is unreachable.
fn unreachable_error() -> StoreError {
    StoreError::Database("cannot connect to the database (injected fault)".into())
}

/// EIO, what fsync returns when the disk could not write the data back.
const EIO: i32 = 5;

/// A store whose writes fail, or slow down, while its [`DiskFaults`] say so.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    faults: Arc<DiskFaults>,
}

impl FaultyStore {
    /// Wraps `inner`, failing as `faults` says.
    pub fn new(inner: Arc<dyn Store>, faults: Arc<DiskFaults>) -> FaultyStore {
        FaultyStore { inner, faults }
    }

    /// Runs a read unless the database is unreachable.
    fn read<T>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.faults.get() == DiskFault::Unreachable {
            self.faults.failed.fetch_add(1, Ordering::Relaxed);
            return Err(unreachable_error());
        }
        f(&*self.inner)
    }

    /// Runs a write unless a fault fails it first.
    fn write<T>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match self.faults.fail(1).and_then(|e| e.into_iter().next()) {
            Some(e) => Err(e),
            None => f(&*self.inner),
        }
    }
}

impl Store for FaultyStore {
    fn add_user(&self, name: &str, password_hash: &str) -> Result<UserId, StoreError> {
        self.write(|s| s.add_user(name, password_hash))
    }

    fn set_password(&self, name: &str, password_hash: &str) -> Result<(), StoreError> {
        self.write(|s| s.set_password(name, password_hash))
    }

    fn upgrade_password_hash(&self, id: UserId, old: &str, new: &str) -> Result<bool, StoreError> {
        self.write(|s| s.upgrade_password_hash(id, old, new))
    }

    fn list_users(&self) -> Result<Vec<UserSummary>, StoreError> {
        self.read(|s| s.list_users())
    }

    fn credentials(&self, name: &str) -> Result<Option<(UserId, String)>, StoreError> {
        self.read(|s| s.credentials(name))
    }

    fn ticket_epoch(&self, id: UserId) -> Result<Option<(String, u64)>, StoreError> {
        self.read(|s| s.ticket_epoch(id))
    }

    fn user_id(&self, name: &str) -> Result<Option<UserId>, StoreError> {
        self.read(|s| s.user_id(name))
    }

    fn usage(&self, user: UserId) -> Result<u64, StoreError> {
        self.read(|s| s.usage(user))
    }

    fn deliver(
        &self,
        from: UserId,
        to: UserId,
        item: NewItem,
        quota: u64,
    ) -> Result<ItemId, StoreError> {
        self.write(|s| s.deliver(from, to, item, quota))
    }

    fn deliver_all(
        &self,
        from: UserId,
        items: Vec<(UserId, NewItem)>,
        quota: u64,
    ) -> Vec<Result<ItemId, StoreError>> {
        match self.faults.fail(items.len()) {
            Some(errors) => errors.into_iter().map(Err).collect(),
            None => self.inner.deliver_all(from, items, quota),
        }
    }

    fn deliver_named(
        self: Arc<Self>,
        from: UserId,
        items: Vec<(String, NewItem)>,
        quota: u64,
    ) -> Deliveries {
        let fault = self.faults.get();
        if let Some(errors) = self.faults.fail(items.len()) {
            return Box::pin(std::future::ready(errors.into_iter().map(Err).collect()));
        }
        let inner = Arc::clone(&self.inner);
        let delay = match fault {
            DiskFault::Slow(d) => {
                self.faults.delayed.fetch_add(1, Ordering::Relaxed);
                Some(d)
            }
            _ => None,
        };
        Box::pin(async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            inner.deliver_named(from, items, quota).await
        })
    }

    fn inbox(
        &self,
        owner: UserId,
        after: ItemId,
        limit: u32,
    ) -> Result<Vec<InboxEntry>, StoreError> {
        self.read(|s| s.inbox(owner, after, limit))
    }

    fn item(&self, owner: UserId, id: ItemId) -> Result<Option<Item>, StoreError> {
        self.read(|s| s.item(owner, id))
    }

    fn item_owner(&self, id: ItemId) -> Result<Option<UserId>, StoreError> {
        self.read(|s| s.item_owner(id))
    }

    fn item_id_issued(&self, id: ItemId) -> Result<bool, StoreError> {
        self.read(|s| s.item_id_issued(id))
    }

    fn delete(&self, owner: UserId, id: ItemId) -> Result<Option<Vec<String>>, StoreError> {
        self.write(|s| s.delete(owner, id))
    }

    fn referenced_blobs(&self) -> Result<Vec<String>, StoreError> {
        self.read(|s| s.referenced_blobs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn message(text: &str) -> NewItem {
        NewItem::Message { text: text.into() }
    }

    #[test]
    fn writes_fail_while_a_fault_is_in_force_and_reads_pass() -> Result<(), StoreError> {
        let dir = tempfile::tempdir()?;
        let faults = Arc::new(DiskFaults::default());
        let inner: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path())?);
        let store = FaultyStore::new(inner, Arc::clone(&faults));
        let a = store.add_user("a", "h")?;
        let b = store.add_user("b", "h")?;
        let kept = store.deliver(a, b, message("before"), u64::MAX)?;

        faults.set(DiskFault::FsyncFail);
        let failed = store.deliver(a, b, message("lost"), u64::MAX);
        assert!(
            matches!(&failed, Err(StoreError::NotCommitted(why)) if why.contains("fsync")),
            "{failed:?}"
        );
        faults.set(DiskFault::Full);
        let all = store.deliver_all(a, vec![(b, message("x")), (b, message("y"))], u64::MAX);
        assert!(
            all.iter()
                .all(|r| matches!(r, Err(StoreError::StorageFull))),
            "{all:?}"
        );
        assert!(matches!(
            store.add_user("c", "h"),
            Err(StoreError::StorageFull)
        ));
        // Reads come from what is already there.
        assert!(store.item(b, kept)?.is_some());
        assert_eq!(faults.failed(), 4);

        faults.set(DiskFault::Healthy);
        let after = store.deliver(a, b, message("after"), u64::MAX)?;
        let inbox = store.inbox(b, 0, 10)?;
        let ids: Vec<ItemId> = inbox.iter().map(|e| e.id).collect();
        assert_eq!(ids, [kept, after], "nothing a fault refused was stored");
        Ok(())
    }
}
