//! Sessions per user: a logged-in user's share of the server.
//!
//! Memory for large frames is granted only to logged-in sessions (strangers are capped at
//! `limits.preauth_frame_bytes`), and each session's receive buffer is bounded by the frame
//! limit. Counting each user's open sessions against `limits.max_sessions_per_user` turns
//! that into a per-user budget: one account, however many connections it opens, holds at
//! most that many sessions' worth of buffers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::store::UserId;

/// Open sessions per user, capped.
#[derive(Debug)]
pub(crate) struct UserSessions {
    max: u32,
    open: Mutex<HashMap<UserId, u32>>,
}

/// One logged-in session's place in [`UserSessions`]; dropping it gives the place back.
#[derive(Debug)]
pub(crate) struct UserSlot {
    user: UserId,
    table: Arc<UserSessions>,
}

impl UserSessions {
    /// At most `max` sessions per user.
    pub(crate) fn new(max: u32) -> Arc<UserSessions> {
        Arc::new(UserSessions {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The most sessions one user may have open.
    pub(crate) fn max(&self) -> u32 {
        self.max
    }

    /// A place for one more session of `user`, or `None` if the user has `max` open.
    pub(crate) fn take(self: &Arc<Self>, user: UserId) -> Option<UserSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(user).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(UserSlot {
            user,
            table: Arc::clone(self),
        })
    }

    /// Sessions `user` has open.
    #[cfg(test)]
    fn open_of(&self, user: UserId) -> u32 {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&user).copied().unwrap_or(0)
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut open = self
            .table
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // Users with no session hold no entry, so the map never outgrows the
                // sessions open.
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_gets_at_most_max_slots_and_dropping_one_frees_it() {
        let t = UserSessions::new(2);
        let a = t.take(7);
        let b = t.take(7);
        assert!(a.is_some() && b.is_some());
        assert!(t.take(7).is_none(), "a third session of user 7");
        assert!(t.take(8).is_some(), "another user is not affected");
        drop(a);
        assert_eq!(t.open_of(7), 1);
        let c = t.take(7);
        assert!(c.is_some());
        drop((b, c));
        assert_eq!(t.open_of(7), 0);
        assert!(t.open.lock().map(|m| m.is_empty()).unwrap_or(false));
    }
}
