//! The session state machine: authentication, per-request admission, and the handlers.
//!
//! A session owns what one connection has established: the authenticated user (the only
//! source of identity), its staged uploads and its strike count. Every request passes the
//! rate limiters before its body is even decoded, and every handler answers with exactly one
//! reply. Storage and file work runs on the blocking pool so slow disks never stall the
//! runtime's worker threads; deliveries are queued for the store's group commit and awaited
//! ([`store::Store::deliver_named`]), so no thread waits per delivery.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::activity::EventKind;
use crate::firewall::Signal;
use crate::guard::{ConnLimiter, Limited, SourceKey, Standing};
use crate::protocol::{
    Attachment, DecodeError, ErrorCode, Frame, InboxEntry, ItemBody, ItemKind, ItemView, Reply,
    Request,
};
use crate::server::auth::Lane;
use crate::server::metrics::{Metrics, OpenUpload};
use crate::server::Shared;
use crate::sim::blocking;
use crate::store::{self, BlobRef, ItemContent, NewItem, StagedBlob, StoreError, UserId};

// Defined beside the activity events that record it (the lowest layer that needs it).
pub use crate::activity::CloseReason;

/// A staged or finished upload of this session.
enum Upload {
    /// Receiving chunks. Boxed: `StagedBlob` holds a hasher and its backend's writer.
    Staging {
        blob: Box<StagedBlob>,
        size: u64,
        name: String,
        /// Counts it in the open uploads gauge for as long as it is staging.
        open: OpenUpload,
    },
    /// Verified, fsynced and in the blob store; usable once by SEND_FILE or SEND_MAIL.
    Done(BlobRef),
}

impl Drop for Session {
    /// Finished uploads that were never sent are deleted with their session (staging ones
    /// delete themselves when their `StagedBlob` drops).
    fn drop(&mut self) {
        for upload in std::mem::take(&mut self.uploads).into_values() {
            if let Upload::Done(blob) = upload {
                if let Err(e) = self.shared.blobs.remove(&blob.blob_id) {
                    tracing::warn!(blob = %blob.blob_id, error = %e, "could not remove an unused upload");
                }
            }
        }
    }
}

/// What the connection loop should do after a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    Continue,
    Close(CloseReason),
}

type Handled = Result<Reply, Reply>;

fn err(code: ErrorCode, message: impl Into<String>) -> Reply {
    Reply::error(code, message)
}

/// When an internal error was last logged (milliseconds, [`crate::activity::now_ms`]),
/// and how many went unlogged since.
static INTERNAL_LOGGED: (AtomicI64, AtomicU64) = (AtomicI64::new(i64::MIN), AtomicU64::new(0));

/// Logs an internal error, at most one a second: a failing disk fails every request, and
/// a log line per request would fill the disk it failed on. The count says how many were
/// not logged; `internal_errors` counts them all.
fn log_internal(e: &dyn std::fmt::Display) {
    let now = crate::activity::now_ms();
    let last = INTERNAL_LOGGED.0.load(Ordering::Relaxed);
    if now.saturating_sub(last) < 1000
        || INTERNAL_LOGGED
            .0
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        INTERNAL_LOGGED.1.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let unlogged = INTERNAL_LOGGED.1.swap(0, Ordering::Relaxed);
    tracing::error!(error = %e, unlogged_since_last = unlogged, "internal error while handling a request");
}

fn internal(shared: &Shared, e: impl std::fmt::Display) -> Reply {
    Metrics::bump(&shared.metrics.internal_errors);
    log_internal(&e);
    err(
        ErrorCode::Internal,
        "internal server error; the request was not applied",
    )
}

/// Awaits a store delivery ([`store::Store::deliver_named`]) and notes how long the
/// session waited for it (the stall detector's view of the disk).
async fn timed_delivery<T>(shared: &Shared, delivery: impl std::future::Future<Output = T>) -> T {
    let started = tokio::time::Instant::now();
    let out = delivery.await;
    let waited = started.elapsed();
    crate::server::metrics::Stalls::note(&shared.metrics.stalls.delivery_us, waited);
    shared.metrics.store_commit.observe(waited);
    out
}

fn to_wire_kind(k: store::ItemKind) -> ItemKind {
    match k {
        store::ItemKind::Message => ItemKind::Message,
        store::ItemKind::Mail => ItemKind::Mail,
        store::ItemKind::File => ItemKind::File,
    }
}

fn to_attachment(b: &BlobRef) -> Attachment {
    Attachment {
        name: b.name.clone(),
        size: b.size,
        digest: b.digest,
    }
}

/// A request that passed admission, decoding and the authentication check.
pub(crate) enum Admitted {
    /// A message for `to`. The connection may deliver it together with the messages
    /// right after it ([`Session::deliver_messages`]).
    Message {
        /// The recipient's name.
        to: String,
        /// The message text.
        text: String,
    },
    /// Any other request, handled on its own ([`Session::run`]) after everything before it.
    Other(Request),
}

/// The reply to one delivery's outcome (`Ok(None)`: no such recipient).
fn delivered(shared: &Shared, result: Result<Option<u64>, StoreError>) -> Handled {
    match result {
        Ok(Some(item_id)) => {
            Metrics::bump(&shared.metrics.items_delivered);
            Ok(Reply::Accepted { item_id })
        }
        Ok(None) => Err(err(ErrorCode::UnknownRecipient, "no such recipient")),
        Err(e) => Err(store_failure(shared, e)),
    }
}

/// The reply to a store error: the ones a user can act on (quota, full disk) by their own
/// code, anything else as internal.
fn store_failure(shared: &Shared, e: StoreError) -> Reply {
    match e {
        StoreError::QuotaExceeded {
            used,
            requested,
            quota,
        } => err(
            ErrorCode::QuotaExceeded,
            format!(
                "storage quota exceeded: {used} bytes used, {requested} more requested, quota {quota}"
            ),
        ),
        StoreError::StorageFull => err(
            ErrorCode::StorageFull,
            "the server's storage is full and nothing was stored: delete items or retry later",
        ),
        e => internal(shared, e),
    }
}

/// The request for an item id that no item ever had from which a session counts as having
/// offended (a block of its address then cuts it): the ones before it count against the
/// address only.
const UNKNOWN_IDS_OFFEND: u32 = 5;

/// Why an item the session asked for is not its user's.
enum Missing {
    /// Another user's item.
    Foreign,
    /// No item has the id now, but one had it: deleted since.
    Gone,
    /// No item ever had the id.
    Never,
}

/// One connection's session state.
pub(crate) struct Session {
    shared: Arc<Shared>,
    peer: SocketAddr,
    source: SourceKey,
    user: Option<(UserId, String)>,
    /// The session's place among its user's open sessions, held while logged in.
    user_slot: Option<crate::server::sessions::UserSlot>,
    uploads: BTreeMap<u32, Upload>,
    next_upload: u32,
    limiter: ConnLimiter,
    strikes: u32,
    conn: u64,
    /// Requests for item ids that no item ever had, in this session.
    unknown_ids: AtomicU32,
}

impl Session {
    pub(crate) fn new(
        shared: Arc<Shared>,
        peer: SocketAddr,
        source: SourceKey,
        conn: u64,
    ) -> Session {
        let limiter = shared.guard.connection_limiter();
        Session {
            shared,
            peer,
            source,
            user: None,
            user_slot: None,
            uploads: BTreeMap::new(),
            next_upload: 1,
            limiter,
            strikes: 0,
            conn,
            unknown_ids: AtomicU32::new(0),
        }
    }

    /// A session that starts logged in by a resume ticket redeemed before the connection
    /// was admitted (a connection from a blocked source).
    pub(crate) fn resumed(
        shared: Arc<Shared>,
        peer: SocketAddr,
        source: SourceKey,
        conn: u64,
        redeemed: crate::server::tickets::Redeemed,
    ) -> Session {
        let mut session = Session::new(shared, peer, source, conn);
        session.user = Some((redeemed.user_id, redeemed.name));
        session.user_slot = Some(redeemed.slot);
        session
    }

    /// The peer's address.
    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The connection id (for activity events).
    pub(crate) fn conn(&self) -> u64 {
        self.conn
    }

    fn record(&self, kind: EventKind) {
        self.shared.record(self.conn, self.peer, kind);
    }

    /// True once AUTH succeeded.
    pub(crate) fn authenticated(&self) -> bool {
        self.user.is_some()
    }

    /// Adds a strike; the session closes once it reaches the configured count.
    pub(crate) fn strike(&mut self) -> Next {
        self.strikes = self.strikes.saturating_add(1);
        if self.strikes >= self.shared.config.load().rates.strikes_to_close {
            Next::Close(CloseReason::Strikes)
        } else {
            Next::Continue
        }
    }

    /// The firewall signal for a decode error of a frame whose payload holds `payload_len`
    /// bytes: `otherwise`, except for a request that is only too large, from a logged-in
    /// session. That is a frame over its kind's maximum, or a field or list over its limit
    /// whose bytes are all there (a mail body over the server's limit, sent again): a user's
    /// mistake, weighed as [`Signal::TooLarge`], not a lie about a length. Before login, where
    /// no honest client sends anything large, every such error stays `otherwise`.
    pub(crate) fn decode_signal(
        &self,
        e: &DecodeError,
        payload_len: usize,
        otherwise: Signal,
    ) -> Signal {
        let whole = |n: u64| n <= payload_len as u64;
        match *e {
            _ if !self.authenticated() => otherwise,
            DecodeError::FrameTooLarge { .. } => Signal::TooLarge,
            DecodeError::FieldTooLong { len, .. } if whole(len) => Signal::TooLarge,
            DecodeError::TooManyItems { count, .. } if whole(count) => Signal::TooLarge,
            _ => otherwise,
        }
    }

    /// Admits and decodes one frame: the rate limiters first, then the body, then the
    /// authentication requirement. A refused frame gets its reply (and maybe a strike) here.
    pub(crate) fn admit(&mut self, frame: &Frame) -> Result<Admitted, (Reply, Next)> {
        let shared = Arc::clone(&self.shared);
        let user_id = self.user.as_ref().map(|(id, _)| *id);
        shared.guard.refresh_limiter(&mut self.limiter);
        let limited = shared
            .guard
            .admit_frame(&self.limiter, self.source, user_id);
        if let Err(limit) = limited {
            shared.metrics.limited(limit);
            shared.signal(self.peer, self.conn, Signal::RateLimited);
            self.record(EventKind::RateLimited {
                reason: limit.reason(),
            });
            let reply = err(
                ErrorCode::RateLimited,
                format!(
                    "rate limit exceeded ({}); request not applied",
                    limit.reason()
                ),
            );
            return Err((reply, self.strike()));
        }
        let req = match Request::decode(frame, &shared.limits) {
            Ok(r) => r,
            Err(e) => {
                shared.metrics.decode_error(&e);
                let signal = self.decode_signal(&e, frame.payload.len(), Signal::BadBody);
                shared.signal(self.peer, self.conn, signal);
                self.record(EventKind::DecodeError { reason: e.reason() });
                return Err((err(ErrorCode::BadFrame, e.to_string()), self.strike()));
            }
        };
        #[cfg(feature = "fault-injection")]
        if let Some(hook) = &shared.fault_hook {
            hook(&req);
        }
        if !self.authenticated()
            && !matches!(
                req,
                Request::Auth { .. } | Request::Resume { .. } | Request::Ping | Request::Bye
            )
        {
            return Err((
                err(ErrorCode::NotAuthenticated, "authenticate first"),
                Next::Continue,
            ));
        }
        Ok(match req {
            Request::SendMessage { to, text } => Admitted::Message { to, text },
            other => Admitted::Other(other),
        })
    }

    /// Handles an admitted request other than a message, returning its single reply.
    pub(crate) async fn run(&mut self, req: Request) -> (Reply, Next) {
        let next = if matches!(req, Request::Bye) {
            Next::Close(CloseReason::Bye)
        } else {
            Next::Continue
        };
        let reply = match self.dispatch(req).await {
            Ok(r) | Err(r) => r,
        };
        (reply, next)
    }

    /// Delivers admitted messages `(to, text)` in order, in one store call (so one group
    /// commit), and returns one reply per message in the same order. Each is delivered,
    /// charged and answered exactly as if it had been sent on its own after the ones
    /// before it.
    pub(crate) async fn deliver_messages(&mut self, messages: Vec<(String, String)>) -> Vec<Reply> {
        let shared = Arc::clone(&self.shared);
        let me = match self.user_id() {
            Ok(me) => me,
            Err(e) => return vec![e; messages.len()],
        };
        let store = Arc::clone(&shared.store);
        let quota = shared.config.load().limits.user_quota_bytes;
        let items = messages
            .into_iter()
            .map(|(to, text)| (to, NewItem::Message { text }))
            .collect();
        let results = timed_delivery(&shared, store.deliver_named(me, items, quota)).await;
        results
            .into_iter()
            .map(|r| match delivered(&shared, r) {
                Ok(r) | Err(r) => r,
            })
            .collect()
    }

    async fn dispatch(&mut self, req: Request) -> Handled {
        match req {
            Request::Auth { user, password } => self.auth(user, password.0.to_vec()).await,
            Request::Ping => Ok(Reply::Pong),
            Request::Bye => Ok(Reply::Ok),
            Request::Ticket => self.ticket().await,
            Request::Resume { user, ticket } => self.resume(user, ticket).await,
            Request::SendMessage { to, text } => {
                self.deliver(to, NewItem::Message { text }, Vec::new())
                    .await
            }
            Request::UploadBegin { name, size } => self.upload_begin(name, size).await,
            Request::UploadChunk {
                upload_id,
                offset,
                data,
            } => self.upload_chunk(upload_id, offset, data).await,
            Request::UploadEnd { upload_id, digest } => self.upload_end(upload_id, digest).await,
            Request::SendFile { to, upload_id } => {
                let blob = self.take_done(&[upload_id])?.pop().ok_or_else(|| {
                    err(
                        ErrorCode::NotFound,
                        format!("no finished upload {upload_id}"),
                    )
                })?;
                self.deliver(to, NewItem::File(blob.1.clone()), vec![blob])
                    .await
            }
            Request::SendMail {
                to,
                subject,
                body,
                attachments,
            } => {
                let blobs = self.take_done(&attachments)?;
                let refs = blobs.iter().map(|(_, b)| b.clone()).collect();
                self.deliver(
                    to,
                    NewItem::Mail {
                        subject,
                        body,
                        attachments: refs,
                    },
                    blobs,
                )
                .await
            }
            Request::ListInbox { after, limit } => self.list(after, limit).await,
            Request::Fetch { item_id } => self.fetch(item_id).await,
            Request::Download {
                item_id,
                part,
                offset,
                max_len,
            } => self.download(item_id, part, offset, max_len).await,
            Request::Delete { item_id } => self.delete(item_id).await,
        }
    }

    fn user_id(&self) -> Result<UserId, Reply> {
        self.user
            .as_ref()
            .map(|(id, _)| *id)
            .ok_or_else(|| err(ErrorCode::NotAuthenticated, "authenticate first"))
    }

    async fn auth(&mut self, user: String, password: Vec<u8>) -> Handled {
        let shared = Arc::clone(&self.shared);
        if self.authenticated() {
            return Err(err(
                ErrorCode::BadRequest,
                "session is already authenticated",
            ));
        }
        let standing = shared.guard.check_login(self.source, &user);
        if let Err(limit) = standing {
            shared.metrics.limited(limit);
            // Only the source's own excess counts against it: an account's failure backoff
            // is others' doing too, and scoring it would let guessers get the owner blocked.
            // Logging in too often with the right password is a rate limit like any other,
            // not a sign of guessing (a script running the client once per command).
            match limit {
                Limited::LoginOkIp => shared.signal(self.peer, self.conn, Signal::RateLimited),
                limit if limit.blames_source() => {
                    shared.signal(self.peer, self.conn, Signal::LoginRateLimited)
                }
                _ => {}
            }
            self.record(EventKind::RateLimited {
                reason: limit.reason(),
            });
            let message = match limit {
                Limited::LoginUser => format!(
                    "too many failed logins for this user name from addresses that failed before ({}); try again later",
                    limit.reason()
                ),
                _ => format!(
                    "too many login attempts ({}); try again later",
                    limit.reason()
                ),
            };
            return Err(err(ErrorCode::RateLimited, message));
        }
        let store = Arc::clone(&shared.store);
        let name = user.clone();
        let creds = blocking(move || store.credentials(&name))
            .await
            .map_err(|e| {
                shared.guard.login_unjudged(self.source);
                internal(&shared, e)
            })?;
        let (id, hash) = match creds {
            Some((id, hash)) => (Some(id), Some(hash)),
            None => (None, None),
        };
        // A source that logged in to this account recently is verified first, so guessers
        // keeping the pool busy cannot make the owner wait behind them.
        let lane = match standing {
            Ok(Standing::Proven) => Lane::Proven,
            _ => Lane::Other,
        };
        // Hashed (keyed, in memory only) before the password goes to verification, so that
        // a retry of the same wrong password counts once and no copy of it is kept.
        let digest = shared.guard.password_digest(&password);
        let Ok(verified) = shared.verifier.verify(hash.clone(), password, lane).await else {
            // A full verifier gives back the attempt only to a source that logged in here
            // recently (an owner queued behind guessers). Any other source keeps the failure
            // it reserved: else a botnet that keeps the verifier full guesses for free and
            // is never blocked (scenarios/scale/botnet.toml).
            if lane == Lane::Proven {
                shared.guard.login_unjudged(self.source);
            }
            Metrics::bump(&shared.metrics.rate_limited);
            return Err(err(
                ErrorCode::RateLimited,
                "too many logins waiting for verification; try again later",
            ));
        };
        match (verified.matches, id) {
            (true, Some(id)) => {
                if let (Some(old), Some(new)) = (hash, verified.rehashed) {
                    self.upgrade_hash(id, old, new).await;
                }
                // The source's earlier failures on this account were typos: take them back.
                let typos = shared.guard.login_succeeded(self.source, &user);
                shared
                    .firewall
                    .forgive(self.peer.ip(), Signal::AuthFailed, &typos);
                // A session logs in once (a second AUTH is refused above), so this is the
                // session's first place among its user's sessions.
                let Some(slot) = shared.user_sessions.take(id) else {
                    return Err(err(
                        ErrorCode::Busy,
                        format!(
                            "{user} already has {} sessions open, the most allowed; \
                             close one and log in again",
                            shared.user_sessions.max()
                        ),
                    ));
                };
                self.user_slot = Some(slot);
                Metrics::bump(&shared.metrics.auth_ok);
                self.record(EventKind::AuthOk {
                    forgiven: u32::try_from(typos.len()).unwrap_or(u32::MAX),
                });
                tracing::debug!(peer = %self.peer, user = %user, "authenticated");
                self.user = Some((id, user.clone()));
                Ok(Reply::AuthOk { user })
            }
            _ => {
                Metrics::bump(&shared.metrics.auth_failed);
                // A client retrying a stale password is one mistake, not a guess per retry.
                let guess = shared.guard.login_failed_with(self.source, &user, digest);
                if guess {
                    shared.signal(self.peer, self.conn, Signal::AuthFailed);
                    tracing::info!(peer = %self.peer, user = %user, "failed login");
                } else {
                    tracing::debug!(peer = %self.peer, user = %user, "failed login, same password again");
                }
                self.record(EventKind::AuthFailed { guess });
                Err(err(ErrorCode::AuthFailed, "wrong user name or password"))
            }
        }
    }

    /// TICKET: a resume ticket for the session's user.
    async fn ticket(&mut self) -> Handled {
        let shared = Arc::clone(&self.shared);
        let Some((id, name)) = self.user.clone() else {
            return Err(err(ErrorCode::NotAuthenticated, "authenticate first"));
        };
        crate::server::tickets::issue(&shared, self.peer, id, &name).await
    }

    /// RESUME: log in with a resume ticket. Like AUTH (the user's session cap, the login
    /// success accounting) but checked by MAC and one store lookup, without argon2.
    async fn resume(&mut self, user: String, ticket: bytes::Bytes) -> Handled {
        use crate::server::tickets;
        let shared = Arc::clone(&self.shared);
        if self.authenticated() {
            return Err(err(
                ErrorCode::BadRequest,
                "session is already authenticated",
            ));
        }
        let verified = tickets::verify(&shared, &user, &ticket)
            .await
            .map_err(|e| tickets::refused(&shared, self.source, self.conn, self.peer, &user, e))?;
        let redeemed = tickets::log_in(&shared, self.source, self.conn, self.peer, verified)?;
        self.user_slot = Some(redeemed.slot);
        self.user = Some((redeemed.user_id, redeemed.name.clone()));
        Ok(Reply::AuthOk {
            user: redeemed.name,
        })
    }

    /// Stores `new`, the session user's password hashed with the current argon2 parameters,
    /// in place of `old`. A failure only delays the upgrade to the next login, so it is
    /// logged, not answered.
    async fn upgrade_hash(&self, id: UserId, old: String, new: String) {
        let store = Arc::clone(&self.shared.store);
        match blocking(move || store.upgrade_password_hash(id, &old, &new)).await {
            Ok(true) => tracing::info!(
                peer = %self.peer,
                "password hash moved to the current argon2 parameters"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot store the re-hashed password"),
        }
    }

    async fn upload_begin(&mut self, name: String, size: u64) -> Handled {
        let shared = Arc::clone(&self.shared);
        let me = self.user_id()?;
        let cfg = shared.config.load();
        let limits = &cfg.limits;
        if size > limits.max_file_bytes {
            return Err(err(
                ErrorCode::TooLarge,
                format!(
                    "file of {size} bytes exceeds the limit of {}",
                    limits.max_file_bytes
                ),
            ));
        }
        let staging = self
            .uploads
            .values()
            .filter(|u| matches!(u, Upload::Staging { .. }))
            .count();
        if staging >= usize::from(limits.max_open_uploads)
            || self.uploads.len()
                >= usize::from(limits.max_open_uploads) + usize::from(limits.max_attachments)
        {
            return Err(err(
                ErrorCode::TooLarge,
                format!(
                    "at most {} uploads may be open at once",
                    limits.max_open_uploads
                ),
            ));
        }
        let store = Arc::clone(&shared.store);
        let blobs = shared.blobs.clone();
        let quota = limits.user_quota_bytes;
        // The upload is charged from here on, across all of the user's sessions (see
        // `store::Pending`), until it is delivered or dropped.
        let blob = blocking(move || blobs.stage_for(me, size, store.usage(me)?, quota))
            .await
            .map_err(|e| store_failure(&shared, e))?;
        let id = self.next_upload;
        self.next_upload = self.next_upload.wrapping_add(1).max(1);
        self.uploads.insert(
            id,
            Upload::Staging {
                blob: Box::new(blob),
                size,
                name: store::sanitize_file_name(&name),
                open: shared.metrics.upload_opened(),
            },
        );
        Ok(Reply::UploadReady {
            upload_id: id,
            max_chunk: limits.max_chunk_bytes,
        })
    }

    /// Ends staging upload `id` (its staged file is deleted as the blob drops), after a chunk
    /// for it was refused before reaching [`Session::run`]; returns whether one was open.
    pub(crate) fn abort_upload(&mut self, id: u32) -> bool {
        match self.uploads.get(&id) {
            Some(Upload::Staging { .. }) => self.uploads.remove(&id).is_some(),
            _ => false,
        }
    }

    /// Removes a staging upload from the table so it can be moved onto the blocking pool.
    fn take_staging(
        &mut self,
        id: u32,
    ) -> Result<(Box<StagedBlob>, u64, String, OpenUpload), Reply> {
        match self.uploads.remove(&id) {
            Some(Upload::Staging {
                blob,
                size,
                name,
                open,
            }) => Ok((blob, size, name, open)),
            Some(done @ Upload::Done(_)) => {
                self.uploads.insert(id, done);
                Err(err(
                    ErrorCode::BadRequest,
                    format!("upload {id} is already finished"),
                ))
            }
            None => Err(err(ErrorCode::NotFound, format!("no open upload {id}"))),
        }
    }

    async fn upload_chunk(&mut self, id: u32, offset: u64, data: bytes::Bytes) -> Handled {
        let shared = Arc::clone(&self.shared);
        self.user_id()?;
        let (mut blob, size, name, open) = self.take_staging(id)?;
        // On any error below, the upload stays removed: the staged file is deleted when
        // `blob` drops, so a failed upload leaves nothing behind.
        let received = blob.written();
        if offset != received {
            return Err(err(
                ErrorCode::BadRequest,
                format!("chunk offset {offset} does not match the {received} bytes received; upload aborted"),
            ));
        }
        let end = received.saturating_add(data.len() as u64);
        if end > size {
            return Err(err(
                ErrorCode::TooLarge,
                format!("chunk ends at byte {end}, past the declared size {size}; upload aborted"),
            ));
        }
        let (blob, res) = blocking(move || {
            let res = blob.append(&data);
            (blob, res)
        })
        .await;
        res.map_err(|e| store_failure(&shared, e))?;
        let received = blob.written();
        self.uploads.insert(
            id,
            Upload::Staging {
                blob,
                size,
                name,
                open,
            },
        );
        Ok(Reply::ChunkOk {
            upload_id: id,
            received,
        })
    }

    async fn upload_end(&mut self, id: u32, digest: [u8; 32]) -> Handled {
        let shared = Arc::clone(&self.shared);
        self.user_id()?;
        let (blob, size, name, open) = self.take_staging(id)?;
        // No longer open, whether it now commits or fails.
        drop(open);
        if blob.written() != size {
            return Err(err(
                ErrorCode::BadRequest,
                format!(
                    "upload has {} of {size} bytes; upload aborted",
                    blob.written()
                ),
            ));
        }
        if blob.digest_so_far() != digest {
            return Err(err(
                ErrorCode::DigestMismatch,
                "blake3 digest does not match the uploaded bytes; upload aborted",
            ));
        }
        let committed = blocking(move || blob.commit(&name))
            .await
            .map_err(|e| store_failure(&shared, e))?;
        self.uploads.insert(id, Upload::Done(committed));
        Ok(Reply::UploadDone {
            upload_id: id,
            size,
        })
    }

    /// Takes finished uploads out of the table for delivery; on any error the table is
    /// unchanged.
    fn take_done(&mut self, ids: &[u32]) -> Result<Vec<(u32, BlobRef)>, Reply> {
        self.user_id()?;
        for (i, id) in ids.iter().enumerate() {
            if ids.get(..i).is_some_and(|before| before.contains(id)) {
                return Err(err(
                    ErrorCode::BadRequest,
                    format!("upload {id} is listed twice"),
                ));
            }
            if !matches!(self.uploads.get(id), Some(Upload::Done(_))) {
                return Err(err(ErrorCode::NotFound, format!("no finished upload {id}")));
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(Upload::Done(b)) = self.uploads.remove(id) {
                out.push((*id, b));
            }
        }
        Ok(out)
    }

    /// Commits an item for `to`. `uploads` are the finished uploads the item uses; if the
    /// delivery fails they go back into the table so the client may retry.
    async fn deliver(
        &mut self,
        to: String,
        item: NewItem,
        uploads: Vec<(u32, BlobRef)>,
    ) -> Handled {
        let shared = Arc::clone(&self.shared);
        let restore = |s: &mut Session, uploads: Vec<(u32, BlobRef)>| {
            for (id, b) in uploads {
                s.uploads.insert(id, Upload::Done(b));
            }
        };
        let me = match self.user_id() {
            Ok(me) => me,
            Err(e) => {
                restore(self, uploads);
                return Err(e);
            }
        };
        let store = Arc::clone(&shared.store);
        let quota = shared.config.load().limits.user_quota_bytes;
        let result = timed_delivery(&shared, store.deliver_named(me, vec![(to, item)], quota))
            .await
            .pop()
            .unwrap_or_else(|| Err(StoreError::ResultLost));
        let handled = delivered(&shared, result);
        if handled.is_err() {
            restore(self, uploads);
        } else {
            // The item's charge in the database now covers these blobs.
            for (_, b) in &uploads {
                shared.blobs.delivered(&b.blob_id);
            }
        }
        handled
    }

    async fn list(&mut self, after: u64, limit: u16) -> Handled {
        let shared = Arc::clone(&self.shared);
        let me = self.user_id()?;
        let max = shared.limits.max_inbox_page;
        let limit = if limit == 0 || limit > max {
            max
        } else {
            limit
        };
        let store = Arc::clone(&shared.store);
        let entries = blocking(move || store.inbox(me, after, u32::from(limit)))
            .await
            .map_err(|e| internal(&shared, e))?;
        Ok(Reply::Inbox {
            entries: entries
                .into_iter()
                .map(|e| InboxEntry {
                    id: e.id,
                    kind: to_wire_kind(e.kind),
                    from: e.from,
                    size: e.size,
                    received_at_ms: e.received_at_ms,
                    title: e.title,
                })
                .collect(),
        })
    }

    /// Loads one of the session user's items, telling "not yours" from "does not exist", and
    /// an id whose item was deleted from one that no item ever had.
    async fn own_item(&self, id: u64) -> Result<store::Item, Reply> {
        let shared = Arc::clone(&self.shared);
        let me = self.user_id()?;
        let store = Arc::clone(&shared.store);
        let found = blocking(move || -> Result<_, StoreError> {
            Ok(match store.item(me, id)? {
                Some(item) => Ok(item),
                None if store.item_owner(id)?.is_some() => Err(Missing::Foreign),
                None if store.item_id_issued(id)? => Err(Missing::Gone),
                None => Err(Missing::Never),
            })
        })
        .await
        .map_err(|e| internal(&shared, e))?;
        match found {
            Ok(item) => Ok(item),
            Err(Missing::Foreign) => {
                Metrics::bump(&shared.metrics.permission_denied);
                shared.signal(self.peer, self.conn, Signal::PermissionDenied);
                self.record(EventKind::PermissionDenied);
                tracing::info!(peer = %self.peer, item = id, "denied access to another user's item");
                Err(err(
                    ErrorCode::PermissionDenied,
                    format!("item {id} is not yours"),
                ))
            }
            // A stale cache, or a typo within the ids in use: no signal.
            Err(Missing::Gone) => Err(err(ErrorCode::NotFound, format!("no item {id}"))),
            Err(Missing::Never) => {
                Metrics::bump(&shared.metrics.unknown_ids);
                // A typo now and then, an enumeration past the end when it keeps coming. The
                // first few of a session count only against the address, so that a user who
                // mistyped an id is not cut with a blocked address's attacker
                // (`Shared::signal`).
                let seen = self.unknown_ids.fetch_add(1, Ordering::Relaxed) + 1;
                if seen >= UNKNOWN_IDS_OFFEND {
                    shared.signal(self.peer, self.conn, Signal::UnknownId);
                } else {
                    shared.signal_address(self.peer, Signal::UnknownId);
                }
                Err(err(ErrorCode::NotFound, format!("no item {id}")))
            }
        }
    }

    async fn fetch(&mut self, id: u64) -> Handled {
        let item = self.own_item(id).await?;
        let body = match item.content {
            ItemContent::Message { text } => ItemBody::Message { text },
            ItemContent::Mail {
                subject,
                body,
                attachments,
            } => ItemBody::Mail {
                subject,
                body,
                attachments: attachments.iter().map(to_attachment).collect(),
            },
            ItemContent::File(b) => ItemBody::File(to_attachment(&b)),
        };
        Ok(Reply::Item(ItemView {
            id: item.entry.id,
            from: item.entry.from,
            received_at_ms: item.entry.received_at_ms,
            body,
        }))
    }

    async fn download(&mut self, id: u64, part: u16, offset: u64, max_len: u32) -> Handled {
        let shared = Arc::clone(&self.shared);
        let item = self.own_item(id).await?;
        let blob = match item.content {
            ItemContent::File(b) if part == 0 => b,
            ItemContent::Mail {
                mut attachments, ..
            } if usize::from(part) < attachments.len() => {
                attachments.swap_remove(usize::from(part))
            }
            _ => {
                return Err(err(
                    ErrorCode::NotFound,
                    format!("item {id} has no part {part}"),
                ))
            }
        };
        if offset > blob.size {
            return Err(err(
                ErrorCode::BadRequest,
                format!("offset {offset} is past the end ({} bytes)", blob.size),
            ));
        }
        // An empty DATA marks the end of a part (PROTOCOL.md §11.3); answering a request for
        // no bytes with one would tell the client a non-empty part had ended.
        if max_len == 0 {
            return Err(err(
                ErrorCode::BadRequest,
                "max_len must be at least 1 (an empty DATA only marks the end of a part)",
            ));
        }
        let want = max_len.min(shared.limits.max_chunk_bytes) as usize;
        let blobs = shared.blobs.clone();
        let blob_id = blob.blob_id.clone();
        let data = match blocking(move || blobs.read_at(&blob_id, offset, want)).await {
            Ok(data) => data,
            // A DELETE on another connection can remove the item, and then its blob, between
            // the lookup above and this read. Look again: a deleted item is `not_found`, as
            // if this DOWNLOAD had come after the DELETE; only a live item without its blob
            // is a fault of the server.
            Err(e @ StoreError::BlobNotFound(_)) => {
                self.own_item(id).await?;
                return Err(internal(
                    &shared,
                    format!("item {id} part {part} has no blob: {e}"),
                ));
            }
            Err(e) => return Err(internal(&shared, e)),
        };
        Ok(Reply::Data {
            item_id: id,
            part,
            offset,
            total: blob.size,
            data: data.into(),
        })
    }

    async fn delete(&mut self, id: u64) -> Handled {
        let shared = Arc::clone(&self.shared);
        // Resolve ownership first so a foreign id is denied, not reported missing.
        self.own_item(id).await?;
        let me = self.user_id()?;
        let store = Arc::clone(&shared.store);
        let blobs = shared.blobs.clone();
        let removed = blocking(move || -> Result<_, StoreError> {
            let freed = store.delete(me, id)?;
            for blob in freed.iter().flatten() {
                // The item is gone; a blob file that cannot be removed now is swept at the
                // next start-up.
                if let Err(e) = blobs.remove(blob) {
                    tracing::warn!(blob = %blob, error = %e, "could not remove blob");
                }
            }
            Ok(freed.is_some())
        })
        .await
        .map_err(|e| internal(&shared, e))?;
        if removed {
            Ok(Reply::Ok)
        } else {
            Err(err(ErrorCode::NotFound, format!("no item {id}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CloseReason;

    #[test]
    fn every_close_reason_survives_the_activity_database() {
        for r in CloseReason::ALL {
            assert_eq!(crate::activity::intern_reason(r.as_str()), r.as_str());
        }
        use crate::guard::{Limited, Refusal};
        let refusals = [
            Refusal::Denied,
            Refusal::Blocked {
                until: std::time::SystemTime::UNIX_EPOCH,
            },
            Refusal::AcceptRate,
            Refusal::TooManyConnections,
            Refusal::TooManyFromSource,
        ];
        let limits = [
            Limited::Ip,
            Limited::User,
            Limited::Connection,
            Limited::LoginIp,
            Limited::LoginUser,
            Limited::LoginOkIp,
        ];
        for r in refusals
            .iter()
            .map(|r| r.reason())
            .chain(limits.iter().map(|l| l.reason()))
        {
            assert_eq!(crate::activity::intern_reason(r), r);
        }
    }
}
