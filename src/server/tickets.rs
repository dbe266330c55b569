//! Resume tickets: good standing that survives a source block.
//!
//! After a login, a session may ask for a ticket (TICKET). A later connection presents it
//! with RESUME and is logged in as the ticket's user without a password, so without argon2:
//! checking a ticket is one blake3 MAC and one store lookup. A ticket is also the one thing a
//! connection from a blocked source may present ([`crate::server`]'s blocked admission), so
//! that users behind the same address as an attacker (a NAT, an office) are not locked out
//! with it.
//!
//! # Layout (73 bytes, opaque to clients)
//!
//! ```text
//! offset  size  field
//!      0     1  version        1
//!      1    16  ticket id      random; names the ticket in the revoked set
//!     17     8  user id        i64, big-endian
//!     25     8  epoch          u64, big-endian: the user's ticket epoch at issue
//!     33     8  expires_at_ms  i64, big-endian, milliseconds since the Unix epoch
//!     41    32  mac            blake3 keyed_hash(key, CONTEXT || bytes 0..41 || u8 len || name)
//! ```
//!
//! The MAC covers the user name too, so a ticket is bound to the user's id and name.
//!
//! # Revocation
//!
//! - `rampart user passwd` moves the user's ticket epoch on (`users.ticket_epoch`), voiding
//!   every ticket issued before. An epoch rather than a fingerprint of the password hash,
//!   because the server re-hashes a password under new argon2 parameters at login, and that
//!   must not log its user out everywhere.
//! - A session admitted from a blocked source that then misbehaves (any firewall signal)
//!   loses the ticket it presented and every ticket it was issued: their ids go into an
//!   in-memory revoked set until they expire ([`MAX_REVOKED`] at most).
//! - Deleting `DATA/ticket.key` revokes every ticket at the next start.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::{BufMut, Bytes, BytesMut};
use rand::RngCore;
use tokio_util::sync::CancellationToken;

use crate::activity::EventKind;
use crate::firewall::Signal;
use crate::guard::SourceKey;
use crate::protocol::{ErrorCode, Reply};
use crate::server::metrics::Metrics;
use crate::server::sessions::UserSlot;
use crate::server::Shared;
use crate::sim::blocking;
use crate::store::{UserId, TICKET_KEY_LEN};

/// The ticket layout version this build issues and accepts.
const VERSION: u8 = 1;

/// Length of a ticket id.
pub const TICKET_ID_LEN: usize = 16;

/// Bytes of a ticket before its MAC.
const SIGNED_LEN: usize = 1 + TICKET_ID_LEN + 8 + 8 + 8;

/// Length of a ticket this build issues.
pub const TICKET_LEN: usize = SIGNED_LEN + 32;

/// Domain separation for the MAC: a ticket key signs nothing else.
const CONTEXT: &[u8] = b"rampart resume ticket v1\0";

/// Most revoked ticket ids remembered at once. Each entry is 24 bytes, so the set stays
/// under 100 KiB; when it is full the id that expires soonest is forgotten first (it is the
/// one whose revocation matters least), and a warning is logged.
pub const MAX_REVOKED: usize = 4096;

/// Most tickets one session admitted from a blocked source may be issued: enough to refresh
/// its ticket a few times, and few enough that misbehaving costs it all of them.
pub const MAX_TICKETS_PER_RESUMED_SESSION: usize = 8;

/// A ticket's id.
pub type TicketId = [u8; TICKET_ID_LEN];

/// What a ticket says, once its MAC checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    /// The ticket's id.
    pub id: TicketId,
    /// The user it was issued to.
    pub user_id: UserId,
    /// The user's ticket epoch when it was issued.
    pub epoch: u64,
    /// When it expires, in milliseconds since the Unix epoch.
    pub expires_at_ms: i64,
}

/// Why a ticket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// Tickets are turned off (`auth.ticket_ttl_s = 0`).
    #[error("resume tickets are turned off on this server")]
    Disabled,
    /// Not a ticket of this server: wrong length, version or MAC (or another user's name).
    #[error("resume ticket is not valid for this user")]
    Forged,
    /// The ticket is past its expiry.
    #[error("resume ticket has expired")]
    Expired,
    /// The ticket was revoked (a password change, misbehaviour, or the user is gone).
    #[error("resume ticket was revoked")]
    Revoked,
}

/// The ticket key, lifetime and revoked set, and the sessions admitted from blocked sources.
pub(crate) struct Tickets {
    key: [u8; TICKET_KEY_LEN],
    ttl_ms: i64,
    /// Revoked ticket ids and when they expire (after which they need no remembering).
    revoked: Mutex<BTreeMap<TicketId, i64>>,
    /// Sessions admitted from a blocked source, by peer address (unique among open TCP
    /// connections), with the tickets they stand on and their cut tokens.
    resumed: Mutex<HashMap<SocketAddr, ResumedConn>>,
}

/// A session admitted from a blocked source.
struct ResumedConn {
    /// The connection's id, so a late drop never removes a newer connection's entry.
    conn: u64,
    /// The ticket it presented and the tickets it was issued since, with their expiry.
    tickets: Vec<(TicketId, i64)>,
    /// Cancelled to close the session.
    cut: CancellationToken,
}

/// Keeps a session's entry among the sessions admitted from blocked sources; dropping it
/// (when the connection ends) removes the entry.
pub(crate) struct ResumedEntry {
    tickets: Arc<Tickets>,
    peer: SocketAddr,
    conn: u64,
}

impl Drop for ResumedEntry {
    fn drop(&mut self) {
        let mut resumed = lock(&self.tickets.resumed);
        if resumed.get(&self.peer).is_some_and(|c| c.conn == self.conn) {
            resumed.remove(&self.peer);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every operation leaves the maps valid, so a poisoned lock is recovered.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Tickets {
    /// Tickets signed with `key`, valid for `ttl_s` seconds (0: tickets are off).
    pub(crate) fn new(key: [u8; TICKET_KEY_LEN], ttl_s: u64) -> Tickets {
        Tickets {
            key,
            // The configuration caps the lifetime at 30 days, far inside an i64.
            ttl_ms: i64::try_from(ttl_s.saturating_mul(1000)).unwrap_or(i64::MAX),
            revoked: Mutex::new(BTreeMap::new()),
            resumed: Mutex::new(HashMap::new()),
        }
    }

    /// A per-process random key, for a server without a data directory.
    pub(crate) fn random_key() -> [u8; TICKET_KEY_LEN] {
        let mut key = [0u8; TICKET_KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut key);
        key
    }

    /// Whether tickets are on.
    pub(crate) fn enabled(&self) -> bool {
        self.ttl_ms > 0
    }

    fn mac(&self, signed: &[u8], name: &str) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(CONTEXT);
        h.update(signed);
        // User names are at most 32 bytes (checked at decode), so the length fits a byte.
        h.update(&[u8::try_from(name.len()).unwrap_or(u8::MAX)]);
        h.update(name.as_bytes());
        h.finalize()
    }

    /// A new ticket for user `user_id` named `name` at ticket epoch `epoch`, issued at
    /// `now_ms`; returns the ticket and its expiry.
    pub(crate) fn issue(
        &self,
        user_id: UserId,
        name: &str,
        epoch: u64,
        now_ms: i64,
    ) -> Result<(Bytes, Claims), TicketError> {
        if !self.enabled() {
            return Err(TicketError::Disabled);
        }
        let mut id = [0u8; TICKET_ID_LEN];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let claims = Claims {
            id,
            user_id,
            epoch,
            expires_at_ms: now_ms.saturating_add(self.ttl_ms),
        };
        let mut out = BytesMut::with_capacity(TICKET_LEN);
        out.put_u8(VERSION);
        out.put_slice(&claims.id);
        out.put_i64(claims.user_id);
        out.put_u64(claims.epoch);
        out.put_i64(claims.expires_at_ms);
        let mac = self.mac(&out, name);
        out.put_slice(mac.as_bytes());
        Ok((out.freeze(), claims))
    }

    /// Checks `ticket` for user `name` at `now_ms`: layout, MAC, expiry and the revoked set
    /// (not the user's epoch, which needs the store: see [`verify`]).
    pub(crate) fn check(
        &self,
        name: &str,
        ticket: &[u8],
        now_ms: i64,
    ) -> Result<Claims, TicketError> {
        if !self.enabled() {
            return Err(TicketError::Disabled);
        }
        let (Some(signed), Some(mac)) = (ticket.get(..SIGNED_LEN), ticket.get(SIGNED_LEN..)) else {
            return Err(TicketError::Forged);
        };
        let Ok(mac) = <[u8; 32]>::try_from(mac) else {
            return Err(TicketError::Forged);
        };
        // blake3::Hash compares in constant time.
        if signed.first() != Some(&VERSION) || self.mac(signed, name) != blake3::Hash::from(mac) {
            return Err(TicketError::Forged);
        }
        let field = |at: usize| -> [u8; 8] {
            let mut b = [0u8; 8];
            if let Some(s) = signed.get(at..at + 8) {
                b.copy_from_slice(s);
            }
            b
        };
        let mut id = [0u8; TICKET_ID_LEN];
        if let Some(s) = signed.get(1..1 + TICKET_ID_LEN) {
            id.copy_from_slice(s);
        }
        let claims = Claims {
            id,
            user_id: i64::from_be_bytes(field(17)),
            epoch: u64::from_be_bytes(field(25)),
            expires_at_ms: i64::from_be_bytes(field(33)),
        };
        if now_ms >= claims.expires_at_ms {
            return Err(TicketError::Expired);
        }
        if lock(&self.revoked).contains_key(&claims.id) {
            return Err(TicketError::Revoked);
        }
        Ok(claims)
    }

    /// Revokes ticket `id` (which expires at `expires_at_ms`) until it expires.
    pub(crate) fn revoke(&self, id: TicketId, expires_at_ms: i64, now_ms: i64) {
        let mut revoked = lock(&self.revoked);
        if revoked.len() >= MAX_REVOKED {
            revoked.retain(|_, exp| *exp > now_ms);
        }
        if revoked.len() >= MAX_REVOKED {
            // Forget the revocation that matters least: the one that ends soonest.
            let soonest = revoked.iter().min_by_key(|(_, exp)| **exp).map(|(k, _)| *k);
            if let Some(k) = soonest {
                revoked.remove(&k);
                tracing::warn!("revoked-ticket set full; forgot the revocation expiring soonest");
            }
        }
        revoked.insert(id, expires_at_ms);
    }

    /// Revoked ticket ids remembered now.
    #[cfg(test)]
    fn revoked_len(&self) -> usize {
        lock(&self.revoked).len()
    }

    /// Registers a session admitted from a blocked source with ticket `claims`; its firewall
    /// signals now cost it its tickets and close it instead of scoring its address.
    pub(crate) fn register_resumed(
        self: &Arc<Self>,
        peer: SocketAddr,
        conn: u64,
        claims: &Claims,
        cut: CancellationToken,
    ) -> ResumedEntry {
        lock(&self.resumed).insert(
            peer,
            ResumedConn {
                conn,
                tickets: vec![(claims.id, claims.expires_at_ms)],
                cut,
            },
        );
        ResumedEntry {
            tickets: Arc::clone(self),
            peer,
            conn,
        }
    }

    /// Whether `peer` is a session admitted from a blocked source.
    #[cfg(test)]
    fn is_resumed(&self, peer: SocketAddr) -> bool {
        lock(&self.resumed).contains_key(&peer)
    }

    /// Notes a ticket issued to `peer`'s session if it was admitted from a blocked source,
    /// so misbehaving revokes it too. False if that session has had its share of tickets.
    fn note_issued(&self, peer: SocketAddr, claims: &Claims) -> bool {
        let mut resumed = lock(&self.resumed);
        match resumed.get_mut(&peer) {
            Some(conn) if conn.tickets.len() >= MAX_TICKETS_PER_RESUMED_SESSION => false,
            Some(conn) => {
                conn.tickets.push((claims.id, claims.expires_at_ms));
                true
            }
            None => true,
        }
    }

    /// Whether `peer`'s session may be issued another ticket (see [`Tickets::note_issued`]).
    fn may_issue(&self, peer: SocketAddr) -> bool {
        lock(&self.resumed)
            .get(&peer)
            .map_or(true, |c| c.tickets.len() < MAX_TICKETS_PER_RESUMED_SESSION)
    }

    /// A firewall signal about `peer`: if its session was admitted from a blocked source,
    /// revokes its tickets, closes it and returns true (the signal is not scored against the
    /// address); otherwise returns false.
    pub(crate) fn misbehaved(&self, peer: SocketAddr, signal: Signal, now_ms: i64) -> bool {
        let Some(conn) = lock(&self.resumed).remove(&peer) else {
            return false;
        };
        for (id, exp) in &conn.tickets {
            self.revoke(*id, *exp, now_ms);
        }
        conn.cut.cancel();
        tracing::info!(
            %peer,
            signal = signal.as_str(),
            revoked = conn.tickets.len(),
            "a session admitted by resume ticket from a blocked source misbehaved; its tickets are revoked and it is closed"
        );
        true
    }
}

/// A ticket that checked out against the store: its claims and its user's current name.
pub(crate) struct Verified {
    /// What the ticket says.
    pub(crate) claims: Claims,
    /// The user's name.
    pub(crate) name: String,
}

/// A session logged in by ticket.
pub(crate) struct Redeemed {
    /// The ticket's claims.
    pub(crate) claims: Claims,
    /// The user's id.
    pub(crate) user_id: UserId,
    /// The user's name.
    pub(crate) name: String,
    /// The session's place among its user's sessions.
    pub(crate) slot: UserSlot,
}

/// Checks `ticket` for `user` completely: MAC, expiry, revoked set, and the store (the user
/// still exists under this name at the ticket's epoch). No argon2.
pub(crate) async fn verify(
    shared: &Shared,
    user: &str,
    ticket: &[u8],
) -> Result<Verified, TicketError> {
    let claims = shared
        .tickets
        .check(user, ticket, crate::activity::now_ms())?;
    let store = Arc::clone(&shared.store);
    let found = blocking(move || store.ticket_epoch(claims.user_id)).await;
    match found {
        Ok(Some((name, epoch))) if name == user && epoch == claims.epoch => {
            Ok(Verified { claims, name })
        }
        Ok(_) => Err(TicketError::Revoked),
        Err(e) => {
            // A store failure is not the ticket's fault, but nothing can be checked: refuse,
            // and say why in the log.
            tracing::error!(error = %e, "cannot look up a resume ticket's user");
            Err(TicketError::Revoked)
        }
    }
}

/// The reply to a refused RESUME, after recording it. A forged ticket counts as a failed
/// login (and a firewall signal); an expired or revoked one is an ordinary state of a
/// client's ticket file, so it is answered but not scored.
pub(crate) fn refused(
    shared: &Shared,
    source: SourceKey,
    conn: u64,
    peer: SocketAddr,
    user: &str,
    e: TicketError,
) -> Reply {
    match e {
        TicketError::Disabled => {
            return Reply::error(ErrorCode::BadRequest, e.to_string());
        }
        TicketError::Forged => {
            shared.guard.login_failed(source, user);
            shared.signal(peer, conn, Signal::AuthFailed);
        }
        TicketError::Expired | TicketError::Revoked => {}
    }
    Metrics::bump(&shared.metrics.auth_failed);
    let guess = matches!(e, TicketError::Forged);
    shared.record(conn, peer, EventKind::AuthFailed { guess });
    tracing::info!(%peer, user, reason = %e, "resume refused");
    let hint = match e {
        TicketError::Forged => "",
        _ => "; log in with the password",
    };
    Reply::error(ErrorCode::AuthFailed, format!("{e}{hint}"))
}

/// Logs a session in with a verified ticket: the user's session cap, then the same success
/// accounting as AUTH (the account's login history, metrics, the activity event).
pub(crate) fn log_in(
    shared: &Shared,
    source: SourceKey,
    conn: u64,
    peer: SocketAddr,
    verified: Verified,
) -> Result<Redeemed, Reply> {
    let Verified { claims, name } = verified;
    let Some(slot) = shared.user_sessions.take(claims.user_id) else {
        return Err(Reply::error(
            ErrorCode::Busy,
            format!(
                "{name} already has {} sessions open, the most allowed; close one and log in again",
                shared.user_sessions.max()
            ),
        ));
    };
    shared.guard.login_succeeded(source, &name);
    Metrics::bump(&shared.metrics.auth_ok);
    shared.record(conn, peer, EventKind::AuthOk { forgiven: 0 });
    tracing::debug!(%peer, user = %name, "resumed with a ticket");
    Ok(Redeemed {
        claims,
        user_id: claims.user_id,
        name,
        slot,
    })
}

/// TICKET for `peer`'s session of user `user_id` named `name`.
pub(crate) async fn issue(
    shared: &Shared,
    peer: SocketAddr,
    user_id: UserId,
    name: &str,
) -> Result<Reply, Reply> {
    if !shared.tickets.enabled() {
        return Err(Reply::error(
            ErrorCode::BadRequest,
            TicketError::Disabled.to_string(),
        ));
    }
    if !shared.tickets.may_issue(peer) {
        return Err(Reply::error(
            ErrorCode::RateLimited,
            format!(
                "a session admitted from a blocked address gets at most \
                 {MAX_TICKETS_PER_RESUMED_SESSION} tickets"
            ),
        ));
    }
    let store = Arc::clone(&shared.store);
    let epoch = match blocking(move || store.ticket_epoch(user_id)).await {
        Ok(Some((_, epoch))) => epoch,
        Ok(None) => {
            return Err(Reply::error(
                ErrorCode::NotFound,
                "the session's user no longer exists",
            ))
        }
        Err(e) => {
            Metrics::bump(&shared.metrics.internal_errors);
            tracing::error!(error = %e, "cannot read a user's ticket epoch");
            return Err(Reply::error(
                ErrorCode::Internal,
                "internal server error; no ticket was issued",
            ));
        }
    };
    let (ticket, claims) = shared
        .tickets
        .issue(user_id, name, epoch, crate::activity::now_ms())
        .map_err(|e| Reply::error(ErrorCode::BadRequest, e.to_string()))?;
    if !shared.tickets.note_issued(peer, &claims) {
        return Err(Reply::error(
            ErrorCode::RateLimited,
            "too many tickets for this session",
        ));
    }
    Ok(Reply::TicketOk {
        expires_at_ms: claims.expires_at_ms,
        ticket,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn tickets(ttl_s: u64) -> Tickets {
        Tickets::new([9u8; TICKET_KEY_LEN], ttl_s)
    }

    #[test]
    fn a_ticket_checks_out_for_its_user_only_and_until_it_expires() -> Result<(), TicketError> {
        let t = tickets(60);
        let (ticket, claims) = t.issue(7, "alice", 3, NOW)?;
        assert_eq!(ticket.len(), TICKET_LEN);
        assert_eq!(claims.expires_at_ms, NOW + 60_000);
        assert_eq!(t.check("alice", &ticket, NOW + 59_999), Ok(claims));
        assert_eq!(
            t.check("alice", &ticket, NOW + 60_000),
            Err(TicketError::Expired)
        );
        assert_eq!(t.check("bob", &ticket, NOW), Err(TicketError::Forged));
        // Another server's key.
        let other = Tickets::new([8u8; TICKET_KEY_LEN], 60);
        assert_eq!(other.check("alice", &ticket, NOW), Err(TicketError::Forged));
        Ok(())
    }

    #[test]
    fn any_changed_byte_or_length_is_forged() -> Result<(), TicketError> {
        let t = tickets(60);
        let (ticket, _) = t.issue(7, "alice", 0, NOW)?;
        for i in 0..ticket.len() {
            let mut bad = ticket.to_vec();
            bad[i] ^= 0x01;
            assert_eq!(t.check("alice", &bad, NOW), Err(TicketError::Forged), "{i}");
        }
        for len in [0, 1, SIGNED_LEN, TICKET_LEN - 1] {
            assert_eq!(
                t.check("alice", &ticket[..len], NOW),
                Err(TicketError::Forged)
            );
        }
        let mut long = ticket.to_vec();
        long.push(0);
        assert_eq!(t.check("alice", &long, NOW), Err(TicketError::Forged));
        Ok(())
    }

    #[test]
    fn revoked_tickets_are_refused_and_the_set_stays_bounded() -> Result<(), TicketError> {
        let t = tickets(60);
        let (ticket, claims) = t.issue(7, "alice", 0, NOW)?;
        t.revoke(claims.id, claims.expires_at_ms, NOW);
        assert_eq!(t.check("alice", &ticket, NOW), Err(TicketError::Revoked));
        for i in 0..(MAX_REVOKED as i64 + 10) {
            let mut id = [0u8; TICKET_ID_LEN];
            id[..8].copy_from_slice(&i.to_be_bytes());
            t.revoke(id, NOW + 120_000 + i, NOW);
        }
        assert_eq!(t.revoked_len(), MAX_REVOKED);
        // The ticket revoked first expires first and was forgotten, as documented.
        assert_eq!(t.check("alice", &ticket, NOW), Ok(claims));
        Ok(())
    }

    #[test]
    fn tickets_off_issue_and_accept_nothing() {
        let t = tickets(0);
        assert_eq!(
            t.issue(1, "a", 0, NOW).map(|_| ()),
            Err(TicketError::Disabled)
        );
        assert_eq!(
            t.check("a", &[0; TICKET_LEN], NOW),
            Err(TicketError::Disabled)
        );
    }

    #[test]
    fn a_resumed_session_that_misbehaves_loses_its_tickets_and_is_cut() -> Result<(), TicketError> {
        let t = Arc::new(tickets(60));
        let (first, claims) = t.issue(7, "alice", 0, NOW)?;
        let peer: SocketAddr = ([127, 0, 0, 9], 4000).into();
        let cut = CancellationToken::new();
        let entry = t.register_resumed(peer, 1, &claims, cut.clone());
        let (second, more) = t.issue(7, "alice", 0, NOW)?;
        assert!(t.note_issued(peer, &more));
        let other: SocketAddr = ([127, 0, 0, 9], 4001).into();
        assert!(!t.misbehaved(other, Signal::BadBody, NOW));
        assert!(t.misbehaved(peer, Signal::BadBody, NOW));
        assert!(cut.is_cancelled());
        assert_eq!(t.check("alice", &first, NOW), Err(TicketError::Revoked));
        assert_eq!(t.check("alice", &second, NOW), Err(TicketError::Revoked));
        assert!(!t.is_resumed(peer));
        drop(entry);
        Ok(())
    }
}
