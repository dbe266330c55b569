//! The budget for connections from blocked sources that may still present a resume ticket.
//!
//! A blocked source is refused at accept without a byte read. With resume tickets, a
//! connection from it may instead send one small first frame (a RESUME, at most
//! [`RESUME_FIRST_FRAME_BYTES`] within [`RESUME_FIRST_FRAME_WAIT`]), but only while the
//! budget has room: [`RESUME_PENDING_PER_SOURCE`] such connections per source and
//! [`RESUME_PENDING_TOTAL`] in all. Past that, the connection is refused exactly as before,
//! unread, so a flood from a blocked source still costs one counter check per connection.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::conns;
use super::{listed, ConnTicket, Guard, Refusal, SourceKey};

/// Most connections from one blocked source that may be waiting to present a ticket: two
/// people behind one address logging in at the same moment.
pub const RESUME_PENDING_PER_SOURCE: u32 = 2;

/// Most connections from all blocked sources waiting to present a ticket: each holds a
/// socket and at most [`RESUME_FIRST_FRAME_BYTES`] of buffer for at most
/// [`RESUME_FIRST_FRAME_WAIT`], so the whole budget costs 32 KiB and 64 descriptors.
pub const RESUME_PENDING_TOTAL: u32 = 64;

/// Largest first frame (header and payload) a blocked source may send: a RESUME is at most
/// 14 + 1 + 32 + 2 + 128 = 177 bytes, so 512 leaves room and nothing more.
pub const RESUME_FIRST_FRAME_BYTES: usize = 512;

/// How long a blocked source has to send its whole first frame: a client sends RESUME at
/// once, so one second covers a slow network and nothing else.
pub const RESUME_FIRST_FRAME_WAIT: Duration = Duration::from_secs(1);

/// Connections from blocked sources waiting to present a ticket, per source and in total.
#[derive(Debug)]
pub struct ResumeBudget {
    per_source: u32,
    total: u32,
    open: Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    total: u32,
    by_source: BTreeMap<SourceKey, u32>,
}

/// One place in the [`ResumeBudget`]; dropping it gives the place back.
#[derive(Debug)]
pub struct ResumePermit {
    budget: Arc<ResumeBudget>,
    source: SourceKey,
}

impl ResumeBudget {
    /// A budget of `per_source` pending connections per source and `total` in all.
    pub fn new(per_source: u32, total: u32) -> Arc<ResumeBudget> {
        Arc::new(ResumeBudget {
            per_source,
            total,
            open: Mutex::new(Pending::default()),
        })
    }

    /// The budget with the documented limits ([`RESUME_PENDING_PER_SOURCE`],
    /// [`RESUME_PENDING_TOTAL`]).
    pub fn standard() -> Arc<ResumeBudget> {
        ResumeBudget::new(RESUME_PENDING_PER_SOURCE, RESUME_PENDING_TOTAL)
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Each operation leaves the counts valid, so a poisoned lock is recovered.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for one more pending connection from `source`, or `None` when the source or
    /// the server has its budget's worth waiting.
    pub fn try_take(self: &Arc<Self>, source: SourceKey) -> Option<ResumePermit> {
        let mut open = self.lock();
        if open.total >= self.total {
            return None;
        }
        let n = open.by_source.entry(source).or_insert(0);
        if *n >= self.per_source {
            return None;
        }
        *n += 1;
        open.total += 1;
        Some(ResumePermit {
            budget: Arc::clone(self),
            source,
        })
    }

    /// Connections waiting now, in total.
    pub fn pending(&self) -> u32 {
        self.lock().total
    }
}

impl Drop for ResumePermit {
    fn drop(&mut self) {
        let mut open = self.budget.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.by_source.remove(&self.source);
            }
        }
    }
}

impl Guard {
    /// Admits a connection from `peer` that presented a valid resume ticket, although its
    /// source may be blocked: only the static deny list and the connection caps apply (total
    /// and per source; not the pre-login caps, as the connection is logged in from its first
    /// reply). The connection counts as logged in; a later block of its source cuts it like
    /// any other.
    pub fn admit_resumed(&self, peer: IpAddr) -> Result<ConnTicket, Refusal> {
        // Under the blocklist lock, as in `admit`, so a reload's deny list cannot miss it.
        let _blocks = self.lock_blocks();
        let policy = self.policy.load();
        if listed(&policy.deny, peer) {
            return Err(Refusal::Denied);
        }
        let source = self.source_of(peer);
        let mut conns = conns::lock(&self.conns);
        if conns.total() >= policy.max_connections {
            return Err(Refusal::TooManyConnections);
        }
        if conns.count_of(&source) >= policy.max_connections_per_ip {
            return Err(Refusal::TooManyFromSource);
        }
        Ok(self.register(&mut conns, source, peer, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_caps_each_source_and_the_total() {
        let budget = ResumeBudget::new(2, 3);
        let a = SourceKey::from_ip([127, 0, 0, 1].into(), 64);
        let b = SourceKey::from_ip([127, 0, 0, 2].into(), 64);
        let a1 = budget.try_take(a);
        let a2 = budget.try_take(a);
        assert!(a1.is_some() && a2.is_some());
        assert!(budget.try_take(a).is_none(), "third from one source");
        let b1 = budget.try_take(b);
        assert!(b1.is_some());
        assert!(budget.try_take(b).is_none(), "over the total");
        drop(a1);
        assert_eq!(budget.pending(), 2);
        assert!(budget.try_take(b).is_some());
        drop((a2, b1));
        assert_eq!(budget.pending(), 0);
    }
}
