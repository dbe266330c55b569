//! Folding: high-rate frame events of connections that have not logged in are counted, not
//! stored one by one.
//!
//! A stranger's PING flood (125,000 PINGs in 20 s grew the database by 50 MB) is mostly
//! identical FRAME_IN/FRAME_OUT rows. The recorder keeps the first [`FOLD_AFTER`] frame events
//! of each anonymous connection in each second and folds the rest into a counter
//! ([`RecorderStats::folded`](super::RecorderStats::folded)). Every other event (accepts,
//! refusals, errors, limits, logins, timeouts, closes) is always kept, and so is everything of
//! a logged-in session. Folding happens before both the database and the live window sink
//! see the batch, so `activity export` and the live model still see the same events.

use std::collections::HashMap;

use super::{Event, EventKind};

/// Frame events kept per anonymous connection per second (in and out together): far above
/// what a client sends while logging in, and enough for the features of a flood to stand out.
pub const FOLD_AFTER: u32 = 256;

/// Connections tracked at most; past this the table starts again (it only ever folds less).
const MAX_TRACKED: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct ConnState {
    authenticated: bool,
    second: i64,
    frames: u32,
}

/// Per-connection state the writer keeps to fold a batch.
#[derive(Debug, Default)]
pub(crate) struct Folder {
    conns: HashMap<u64, ConnState>,
}

impl Folder {
    /// Removes the folded events from `batch`, in place and in order, and returns how many.
    pub(crate) fn fold(&mut self, batch: &mut Vec<Event>) -> u64 {
        if self.conns.len() > MAX_TRACKED {
            self.conns.clear();
        }
        let before = batch.len();
        batch.retain(|e| self.keep(e));
        (before - batch.len()) as u64
    }

    fn keep(&mut self, e: &Event) -> bool {
        let second = e.t_ms.div_euclid(1000);
        match e.kind {
            EventKind::AuthOk { .. } => {
                self.state(e.conn, second).authenticated = true;
                true
            }
            EventKind::Close { .. } => {
                self.conns.remove(&e.conn);
                true
            }
            EventKind::FrameIn { .. } | EventKind::FrameOut { .. } => {
                let s = self.state(e.conn, second);
                if s.authenticated {
                    return true;
                }
                if s.second != second {
                    s.second = second;
                    s.frames = 0;
                }
                s.frames = s.frames.saturating_add(1);
                s.frames <= FOLD_AFTER
            }
            _ => true,
        }
    }

    fn state(&mut self, conn: u64, second: i64) -> &mut ConnState {
        self.conns.entry(conn).or_insert(ConnState {
            authenticated: false,
            second,
            frames: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t_ms: i64, conn: u64, kind: EventKind) -> Event {
        Event {
            t_ms,
            conn,
            ip: std::net::IpAddr::from([127, 0, 1, 1]),
            kind,
        }
    }

    fn ping(t_ms: i64, conn: u64) -> Event {
        ev(
            t_ms,
            conn,
            EventKind::FrameIn {
                kind: 2,
                size: 0,
                assemble_ms: 0,
            },
        )
    }

    #[test]
    fn anonymous_floods_fold_and_sessions_keep_everything() {
        let mut f = Folder::default();
        let mut batch = vec![
            ev(0, 1, EventKind::Accept),
            ev(0, 2, EventKind::AuthOk { forgiven: 0 }),
        ];
        // 1,000 PINGs in one second on each connection; conn 2 is logged in.
        for i in 0..1000 {
            batch.push(ping(i, 1));
            batch.push(ping(i, 2));
        }
        batch.push(ev(999, 1, EventKind::AuthFailed { guess: true }));
        let folded = f.fold(&mut batch);
        assert_eq!(folded, 1000 - u64::from(FOLD_AFTER));
        let of = |c| batch.iter().filter(|e| e.conn == c).count();
        assert_eq!(
            of(1),
            1 + FOLD_AFTER as usize + 1,
            "accept, kept frames, auth failure"
        );
        assert_eq!(of(2), 1 + 1000);
        // The next second starts a new allowance.
        let mut next: Vec<Event> = (1000..1010).map(|t| ping(t, 1)).collect();
        assert_eq!(f.fold(&mut next), 0);
        // A closed connection is forgotten.
        let mut close = vec![ev(
            1011,
            1,
            EventKind::Close {
                reason: "eof",
                unread_bytes: 0,
            },
        )];
        f.fold(&mut close);
        assert!(!f.conns.contains_key(&1));
    }
}
