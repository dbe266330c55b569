//! Open connections: the table behind the connection caps, and [`ConnTicket`], the RAII
//! proof that a connection was admitted.
//!
//! The table is kept per source in `BTreeMap`s, so cutting a source's connections is one
//! lookup and the order they are cut in is stable.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio_util::sync::CancellationToken;

use super::SourceKey;

/// One open connection, as the table sees it.
#[derive(Debug)]
pub(crate) struct OpenConn {
    /// The peer's own address (a source may cover many).
    pub(crate) ip: IpAddr,
    /// Cancelled to cut the connection.
    pub(crate) cut: CancellationToken,
    /// Whether the session has logged in; until then it counts against the pre-login caps.
    pub(crate) authenticated: bool,
    /// Whether the connection did something the firewall counts against its source: such a
    /// session is cut when its source is blocked even if it has logged in.
    pub(crate) offended: bool,
}

/// Every admitted connection that has not been dropped yet.
#[derive(Debug, Default)]
pub(crate) struct ConnTable {
    total: u32,
    /// Connections that have not logged in yet.
    unauthenticated: u32,
    by_source: BTreeMap<SourceKey, BTreeMap<u64, OpenConn>>,
}

impl ConnTable {
    pub(crate) fn total(&self) -> u32 {
        self.total
    }

    /// Open connections that have not logged in yet.
    pub(crate) fn unauthenticated(&self) -> u32 {
        self.unauthenticated
    }

    /// Open connections from `source` that have not logged in yet.
    pub(crate) fn unauthenticated_of(&self, source: &SourceKey) -> u32 {
        let n = self.of_source(source).filter(|c| !c.authenticated).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Marks a connection as logged in, so it no longer counts against the pre-login caps.
    fn authenticate(&mut self, source: &SourceKey, id: u64) {
        let Some(conn) = self.by_source.get_mut(source).and_then(|c| c.get_mut(&id)) else {
            return;
        };
        if !conn.authenticated {
            conn.authenticated = true;
            self.unauthenticated = self.unauthenticated.saturating_sub(1);
        }
    }

    /// Marks a connection as having offended; returns it, if it is still open.
    pub(crate) fn offend(&mut self, source: &SourceKey, id: u64) -> Option<&OpenConn> {
        let conn = self.by_source.get_mut(source)?.get_mut(&id)?;
        conn.offended = true;
        Some(conn)
    }

    /// Cuts every open connection `pred` picks; returns how many.
    pub(crate) fn cut_where(&self, pred: impl Fn(&OpenConn) -> bool) -> u32 {
        let mut n = 0u32;
        for conn in self.by_source.values().flat_map(|c| c.values()) {
            if pred(conn) {
                conn.cut.cancel();
                n = n.saturating_add(1);
            }
        }
        n
    }

    /// Open connections from `source`.
    pub(crate) fn count_of(&self, source: &SourceKey) -> u32 {
        self.by_source
            .get(source)
            .map_or(0, |conns| u32::try_from(conns.len()).unwrap_or(u32::MAX))
    }

    /// Sources with at least one open connection.
    pub(crate) fn sources(&self) -> u32 {
        u32::try_from(self.by_source.len()).unwrap_or(u32::MAX)
    }

    pub(crate) fn insert(&mut self, source: SourceKey, id: u64, conn: OpenConn) {
        if !conn.authenticated {
            self.unauthenticated = self.unauthenticated.saturating_add(1);
        }
        self.by_source.entry(source).or_default().insert(id, conn);
        self.total = self.total.saturating_add(1);
    }

    fn remove(&mut self, source: &SourceKey, id: u64) {
        let Some(conns) = self.by_source.get_mut(source) else {
            return;
        };
        if let Some(conn) = conns.remove(&id) {
            self.total = self.total.saturating_sub(1);
            if !conn.authenticated {
                self.unauthenticated = self.unauthenticated.saturating_sub(1);
            }
        }
        if conns.is_empty() {
            self.by_source.remove(source);
        }
    }

    /// The open connections of `source`, in the order they were admitted.
    pub(crate) fn of_source(&self, source: &SourceKey) -> impl Iterator<Item = &OpenConn> {
        self.by_source
            .get(source)
            .into_iter()
            .flat_map(|c| c.values())
    }
}

/// Locks the table, recovering it if a thread panicked while holding the lock: every
/// mutation above leaves the table consistent at each step that could panic (none do), so
/// its contents are still right.
pub(crate) fn lock(table: &Mutex<ConnTable>) -> MutexGuard<'_, ConnTable> {
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Proof that a connection was admitted. Keep it for the connection's whole life: dropping
/// it (normally, or while a panicking task unwinds) gives its slot back.
pub struct ConnTicket {
    pub(crate) source: SourceKey,
    pub(crate) id: u64,
    pub(crate) cut: CancellationToken,
    pub(crate) table: Arc<Mutex<ConnTable>>,
}

impl ConnTicket {
    /// The source this connection is counted against.
    pub fn source(&self) -> SourceKey {
        self.source
    }

    /// This connection's id, unique within its guard.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// A token that is cancelled when the connection must be cut (its source was blocked).
    /// The connection task selects on it next to its reads and writes.
    pub fn cut_token(&self) -> CancellationToken {
        self.cut.clone()
    }

    /// Records that the session logged in: from now on the connection no longer counts
    /// against the pre-login caps (`limits.preauth_connections*`).
    pub fn authenticated(&self) {
        lock(&self.table).authenticate(&self.source, self.id);
    }
}

impl Drop for ConnTicket {
    fn drop(&mut self) {
        lock(&self.table).remove(&self.source, self.id);
    }
}

impl fmt::Debug for ConnTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnTicket")
            .field("source", &self.source)
            .field("id", &self.id)
            .field("cut", &self.cut.is_cancelled())
            .finish()
    }
}
