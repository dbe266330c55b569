//! One connection's IO loop: reading with budgets, decoding, writing with a deadline.
//!
//! The loop is generic over the transport so the same code runs on TCP, on an in-memory
//! duplex in tests, and in fuzz targets. It enforces every per-connection time limit:
//!
//! - a frame, once its first byte arrived, must complete within `frame_budget` and, after
//!   `frame_grace`, arrive at `frame_min_rate_bytes_per_s` or better (a per-read timeout alone
//!   would let one byte every 59 s through a 60 s timeout);
//! - an idle session (no complete frame) and an unauthenticated one expire;
//! - replies are queued up to `outbound_queue_bytes`; past that the connection is not read
//!   until the client drains them, and a write that makes no progress for `write` cuts it.
//!
//! The receive buffer only grows as bytes arrive, by at most 64 KiB per read, and an empty
//! buffer that grew large is released so idle connections stay small.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::activity::EventKind;
use crate::firewall::Signal;
use crate::guard::ConnTicket;
use crate::protocol::{
    self, bytes_wanted, DecodeError, ErrorCode, Kind, RawHeader, Reply, Request, HEADER_LEN, MAGIC,
    VERSION,
};
use crate::server::metrics::Metrics;
use crate::server::session::{Admitted, CloseReason, Next, Session};
use crate::server::Shared;

/// Smallest read we ask the kernel for while a frame is in progress.
const MIN_READ: usize = 4 * 1024;
/// The read asked for between frames, when the receive buffer is empty: what an idle
/// connection holds (it is most of an idle session's memory), yet enough for 16 pipelined
/// small messages in one read.
const IDLE_READ: usize = 2 * 1024;
/// Largest single reservation for a read, whatever the frame header declares.
const MAX_READ: usize = 64 * 1024;
/// Above this, an empty receive buffer is released instead of kept for reuse.
const KEEP_BUFFER: usize = 64 * 1024;
/// Most messages delivered together from one connection's buffer (their texts are copies
/// of bytes already read, so the batch is bounded by the receive buffer as well).
const MAX_BATCH: usize = 64;
/// How often a frame in progress is checked against the minimum rate.
const RATE_CHECK: Duration = Duration::from_millis(250);
/// How long the final error frame of a closing connection may take to write.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

struct Conn<'a> {
    shared: &'a Shared,
    /// The guard's ticket, told once the session logs in.
    ticket: &'a ConnTicket,
    /// Whether the ticket was told.
    login_noted: bool,
    peer: std::net::SocketAddr,
    conn: u64,
    inbuf: BytesMut,
    out: BytesMut,
    /// When the first byte of the frame now in `inbuf` arrived.
    frame_started: Option<Instant>,
    /// When the last complete frame was decoded (or the connection opened).
    last_frame: Instant,
    opened: Instant,
    /// When `out` last became non-empty or last made progress.
    write_since: Option<Instant>,
    /// Set once the session must end; the loop then only flushes.
    closing: Option<(CloseReason, Instant)>,
    /// Reply bytes thrown away unsent when the session was cut.
    discarded: usize,
    /// Payload bytes still to skip of a rejected, oversized frame whose boundary is trusted.
    skip: usize,
    /// Bytes of the current frame already skipped (they count towards its minimum rate).
    skipped: usize,
}

impl Conn<'_> {
    fn record(&self, kind: EventKind) {
        self.shared.record(self.conn, self.peer, kind);
    }

    fn queue(&mut self, request_id: u32, reply: &Reply) {
        if self.out.is_empty() {
            self.write_since = Some(Instant::now());
        }
        let before = self.out.len();
        if let Err(e) = protocol::encode_reply(request_id, reply, &mut self.out) {
            // Replies are built by the server; one that cannot be encoded is a bug. Say so
            // to the client rather than sending nothing.
            tracing::error!(error = %e, "reply could not be encoded");
            let fallback = Reply::error(ErrorCode::Internal, "reply could not be encoded");
            let _ = protocol::encode_reply(request_id, &fallback, &mut self.out);
        }
        self.shared.metrics.frame_out(reply.kind());
        let size = (self.out.len() - before).saturating_sub(protocol::HEADER_LEN);
        self.record(EventKind::FrameOut {
            kind: reply.kind() as u8,
            size: u32::try_from(size).unwrap_or(u32::MAX),
        });
    }

    /// Ends the session after `reply` (if any) is flushed.
    fn close(&mut self, reason: CloseReason, reply: Option<Reply>) {
        if self.closing.is_some() {
            return;
        }
        if let Some(r) = reply {
            self.queue(0, &r);
        }
        let flush = self.shared.config.load().timeouts.write().min(CLOSE_FLUSH);
        self.closing = Some((reason, Instant::now() + flush));
    }

    fn timeout(&mut self, reason: CloseReason, what: &str) {
        Metrics::bump(&self.shared.metrics.timeouts);
        self.record(EventKind::Timeout {
            reason: reason.as_str(),
        });
        match reason {
            CloseReason::FrameBudget | CloseReason::SlowFrame => {
                self.shared.signal(self.peer, self.conn, Signal::SlowFrame)
            }
            CloseReason::AuthTimeout => {
                self.shared
                    .signal(self.peer, self.conn, Signal::AuthTimeout)
            }
            _ => {}
        }
        self.close(reason, Some(Reply::error(ErrorCode::Timeout, what)));
    }

    /// Drops every queued reply, remembering how many bytes the client never read.
    fn discard_output(&mut self) {
        self.discarded = self.discarded.saturating_add(self.out.len());
        self.out.clear();
        self.write_since = None;
    }

    fn queue_full(&self) -> bool {
        self.out.len() >= self.shared.config.load().limits.outbound_queue_bytes as usize
    }

    /// Rejects a frame whose declared length is over its kind's limit but within the frame
    /// ceiling: the boundary is still trustworthy, so its payload is skipped as it arrives
    /// (never buffered) and the request gets TOO_LARGE instead of the connection closing.
    fn reject_oversized(
        &mut self,
        session: &mut Session,
        e: &DecodeError,
        len: u32,
        upload_aborted: bool,
    ) {
        let request_id = self
            .inbuf
            .first_chunk::<HEADER_LEN>()
            .map_or(0, |h| RawHeader::parse(h).request_id);
        let total = protocol::HEADER_LEN.saturating_add(len as usize);
        let now_have = self.inbuf.len().min(total);
        self.inbuf.advance(now_have);
        self.skip = total - now_have;
        self.skipped = now_have;
        self.shared.metrics.decode_error(e);
        self.shared.signal(
            self.peer,
            self.conn,
            session.decode_signal(e, 0, Signal::BadBody),
        );
        self.record(EventKind::DecodeError { reason: e.reason() });
        let note = if upload_aborted {
            "frame discarded, upload aborted"
        } else {
            "frame discarded"
        };
        let reply = Reply::error(ErrorCode::TooLarge, format!("{e}; {note}"));
        self.queue(request_id, &reply);
        if let Next::Close(reason) = session.strike() {
            self.close(reason, None);
        }
    }

    /// Before login, refuses a frame whose header declares more than
    /// `limits.preauth_frame_bytes`, from its header alone: none of its body is buffered for
    /// a stranger, and the connection is closed. Headers that are invalid in any other way,
    /// or over the frame ceiling (fatal for everyone), are left to the decoder, which names
    /// the fault.
    fn refuse_before_login(&mut self) -> bool {
        let Some(header) = self.inbuf.first_chunk::<HEADER_LEN>() else {
            return false;
        };
        let h = RawHeader::parse(header);
        let len = h.len;
        let max = self.shared.config.load().limits.preauth_frame_bytes;
        let kind = match Kind::from_u8(h.kind) {
            Some(kind)
                if h.magic == MAGIC
                    && h.version == VERSION
                    && h.flags == 0
                    && kind.is_request() =>
            {
                kind
            }
            _ => return false,
        };
        // Past the frame ceiling the decoder refuses the header for everyone (bad_frame).
        if len <= max || len > self.shared.limits.frame_ceiling() {
            return false;
        }
        let e = DecodeError::FrameTooLarge { kind, len, max };
        self.shared.metrics.decode_error(&e);
        self.shared.signal(self.peer, self.conn, Signal::BadBody);
        self.record(EventKind::DecodeError { reason: e.reason() });
        let code = match kind {
            Kind::Auth | Kind::Resume | Kind::Ping | Kind::Bye => ErrorCode::TooLarge,
            _ => ErrorCode::NotAuthenticated,
        };
        let reply = Reply::error(
            code,
            format!(
                "a {} frame of {len} bytes before login; until AUTH_OK at most {max} bytes \
                 per frame are accepted",
                kind.wire_name()
            ),
        );
        self.queue(h.request_id, &reply);
        self.close(CloseReason::BadFrame, None);
        true
    }

    /// Drops skipped payload bytes from the front of the buffer.
    fn skip_input(&mut self) {
        let n = self.skip.min(self.inbuf.len());
        self.inbuf.advance(n);
        self.skip -= n;
        self.skipped = self.skipped.saturating_add(n);
        if self.skip == 0 {
            self.skipped = 0;
        }
    }

    /// Queues a request's reply and acts on what the session says comes next.
    fn answer(&mut self, request_id: u32, reply: &Reply, next: Next) {
        self.queue(request_id, reply);
        if let Next::Close(reason) = next {
            self.close(reason, None);
        }
    }

    /// Delivers the batched messages (one store call, so one group commit) and queues their
    /// replies in request order.
    async fn deliver(&mut self, session: &mut Session, batch: &mut Vec<(u32, String, String)>) {
        if batch.is_empty() {
            return;
        }
        let (ids, messages): (Vec<u32>, Vec<(String, String)>) = batch
            .drain(..)
            .map(|(id, to, text)| (id, (to, text)))
            .unzip();
        let replies = session.deliver_messages(messages).await;
        for (id, reply) in ids.into_iter().zip(&replies) {
            self.queue(id, reply);
        }
    }

    /// Decodes and handles every complete frame in the buffer while the outbound queue has
    /// room.
    ///
    /// Consecutive messages that are already in the buffer are delivered together, up to
    /// [`MAX_BATCH`]: each is admitted (rate limits, body, authentication) as it is decoded,
    /// and the batch is delivered before any other request is handled, before a refusal is
    /// answered, and before this returns, so replies keep request order and none waits for
    /// more input. A pipelining client's messages thus share one durable commit.
    async fn process<R: AsyncRead + Unpin>(
        &mut self,
        session: &mut Session,
        rd: &mut R,
        cut: &CancellationToken,
    ) {
        self.skip_input();
        let mut batch = Vec::new();
        // A cut (the source was blocked) stops the requests already buffered too: none of
        // them runs, and the messages admitted but not yet delivered are dropped with it.
        while self.closing.is_none() && !self.queue_full() && self.skip == 0 && !cut.is_cancelled()
        {
            // Messages need a login, so before one the batch is empty and nothing is owed.
            if !session.authenticated() {
                if self.refuse_before_login() {
                    break;
                }
            } else if !self.login_noted {
                self.login_noted = true;
                self.ticket.authenticated();
            }
            match self.shared.decoder.decode(&mut self.inbuf) {
                Ok(Some(frame)) => {
                    self.shared.metrics.frame_in(frame.kind);
                    let now = Instant::now();
                    let assemble = self
                        .frame_started
                        .map_or(0, |t| now.duration_since(t).as_millis());
                    self.record(EventKind::FrameIn {
                        kind: frame.kind as u8,
                        size: u32::try_from(frame.payload.len()).unwrap_or(u32::MAX),
                        assemble_ms: u32::try_from(assemble).unwrap_or(u32::MAX),
                    });
                    self.last_frame = now;
                    // Whatever remains arrived with the last read: a new frame starts now.
                    self.frame_started = (!self.inbuf.is_empty()).then_some(now);
                    let id = frame.request_id;
                    match session.admit(&frame) {
                        Ok(Admitted::Message { to, text }) => {
                            batch.push((id, to, text));
                            if batch.len() >= MAX_BATCH {
                                self.deliver(session, &mut batch).await;
                            }
                        }
                        Ok(Admitted::Other(req)) => {
                            self.deliver(session, &mut batch).await;
                            let (reply, next) = if matches!(req, Request::Auth { .. }) {
                                // A login waits for argon2, behind others' logins: watch
                                // the connection meanwhile, and give up the verification
                                // once nobody is left to answer.
                                match self.watched(session.run(req), rd, cut).await {
                                    Some(done) => done,
                                    None => break,
                                }
                            } else {
                                session.run(req).await
                            };
                            self.answer(id, &reply, next);
                        }
                        Err((reply, next)) => {
                            self.deliver(session, &mut batch).await;
                            self.answer(id, &reply, next);
                        }
                    }
                }
                Ok(None) => break,
                Err(e @ DecodeError::FrameTooLarge { kind, len, .. })
                    if len <= self.shared.limits.frame_ceiling() =>
                {
                    // An oversized chunk ends the upload it names, like any refused chunk
                    // (PROTOCOL.md §10.3); its first four payload bytes name it, so wait for
                    // those four bytes (and no more) before skipping the rest.
                    let upload = match kind {
                        protocol::Kind::UploadChunk => match self
                            .inbuf
                            .get(protocol::HEADER_LEN..protocol::HEADER_LEN + 4)
                        {
                            Some(b) => b.try_into().ok().map(u32::from_be_bytes),
                            None => break,
                        },
                        _ => None,
                    };
                    self.deliver(session, &mut batch).await;
                    let aborted = upload.is_some_and(|id| session.abort_upload(id));
                    self.reject_oversized(session, &e, len, aborted);
                    self.skip_input();
                    self.frame_started =
                        (self.skip > 0 || !self.inbuf.is_empty()).then(Instant::now);
                }
                Err(e) => {
                    self.deliver(session, &mut batch).await;
                    self.shared.metrics.decode_error(&e);
                    let signal = session.decode_signal(&e, 0, Signal::FatalFrame);
                    self.shared.signal(self.peer, self.conn, signal);
                    self.record(EventKind::DecodeError { reason: e.reason() });
                    tracing::debug!(error = %e, "fatal frame error");
                    self.close(
                        CloseReason::BadFrame,
                        Some(Reply::error(ErrorCode::BadFrame, e.to_string())),
                    );
                }
            }
        }
        if cut.is_cancelled() {
            batch.clear();
        }
        self.deliver(session, &mut batch).await;
        if self.inbuf.is_empty() && self.skip == 0 {
            self.frame_started = None;
            // Between frames, hold only an idle-sized buffer (a fresh one: the old one's
            // memory is shared with the frames split off it and cannot shrink).
            if self.inbuf.capacity() > IDLE_READ {
                self.inbuf = BytesMut::new();
            }
        }
    }

    /// Waits for `work` (a login, which can wait long for a verifier) while watching the
    /// connection: if its source is blocked (`cut`), the server shuts down, or the client
    /// ends its side of the connection, `work` is dropped unfinished and the session
    /// closes, so a queued verification nobody waits for is skipped
    /// (`server::auth::Verifier`) instead of holding a verifier. Bytes that arrive
    /// meanwhile (pipelined requests) are kept for after it, up to [`MAX_READ`] of
    /// them; past that the connection is no longer read until `work` is done.
    async fn watched<T, R: AsyncRead + Unpin>(
        &mut self,
        work: impl std::future::Future<Output = T>,
        rd: &mut R,
        cut: &CancellationToken,
    ) -> Option<T> {
        tokio::pin!(work);
        let shutdown = &self.shared.shutdown;
        // The client half-closed after sending more requests: they are owed answers.
        let mut ended = false;
        loop {
            let can_read = !ended && self.inbuf.len() < MAX_READ;
            if can_read {
                self.reserve_for_read();
            }
            tokio::select! {
                biased;
                _ = cut.cancelled() => {
                    self.discard_output();
                    self.closing = Some((CloseReason::Blocked, Instant::now()));
                    return None;
                }
                _ = shutdown.cancelled() => {
                    self.close(
                        CloseReason::Shutdown,
                        Some(Reply::error(ErrorCode::ShuttingDown, "server is shutting down")),
                    );
                    return None;
                }
                done = &mut work => return Some(done),
                res = rd.read_buf(&mut self.inbuf), if can_read => {
                    // End of stream (a TLS peer without close_notify too), or a failed
                    // read. A client that sent requests after the AUTH and then
                    // half-closed (a script piping a batch through socat) is owed their
                    // answers: go on, reading no more. One that sent only the AUTH can
                    // send nothing more, so the session it logs in to could never be used.
                    let reason = match res {
                        Ok(0) if !self.inbuf.is_empty() => {
                            ended = true;
                            continue;
                        }
                        Ok(0) => CloseReason::Eof,
                        Ok(n) => {
                            self.shared
                                .metrics
                                .bytes_in
                                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                            self.frame_started.get_or_insert_with(Instant::now);
                            continue;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof
                            && !self.inbuf.is_empty() =>
                        {
                            ended = true;
                            continue;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                            CloseReason::Eof
                        }
                        Err(_) => CloseReason::Io,
                    };
                    tracing::debug!(peer = %self.peer, "login abandoned by its client");
                    self.close(reason, None);
                    return None;
                }
            }
        }
    }

    /// The next instant at which a timer must be checked.
    fn next_deadline(&self, authenticated: bool) -> Instant {
        let cfg = self.shared.config.load();
        let t = &cfg.timeouts;
        if let Some((_, at)) = self.closing {
            return at;
        }
        let mut at = match self.frame_started {
            Some(start) if !self.queue_full() => {
                (start + t.frame_budget()).min(Instant::now() + RATE_CHECK)
            }
            _ => self.last_frame + t.idle(),
        };
        if !authenticated {
            at = at.min(self.opened + t.auth());
        }
        if let Some(since) = self.write_since {
            at = at.min(since + t.write());
        }
        at
    }

    /// Checks every timer; closes the session if one expired.
    fn check_timers(&mut self, authenticated: bool) {
        let now = Instant::now();
        let cfg = self.shared.config.load();
        let t = &cfg.timeouts;
        if let Some(since) = self.write_since {
            if now.duration_since(since) >= t.write() {
                Metrics::bump(&self.shared.metrics.timeouts);
                self.shared
                    .signal(self.peer, self.conn, Signal::WriteTimeout);
                self.record(EventKind::Timeout {
                    reason: CloseReason::WriteTimeout.as_str(),
                });
                // The client is not reading: nothing more can be sent to it.
                self.discard_output();
                self.closing = Some((CloseReason::WriteTimeout, now));
                return;
            }
        }
        if !authenticated && now.duration_since(self.opened) >= t.auth() {
            return self.timeout(
                CloseReason::AuthTimeout,
                "no authentication within the time limit",
            );
        }
        match self.frame_started {
            Some(start) if !self.queue_full() => {
                let elapsed = now.duration_since(start);
                if elapsed >= t.frame_budget() {
                    return self.timeout(
                        CloseReason::FrameBudget,
                        "frame not completed within its time budget",
                    );
                }
                if elapsed >= t.frame_grace() {
                    let needed = t.frame_min_rate_bytes_per_s as f64 * elapsed.as_secs_f64();
                    let arrived = self.inbuf.len().saturating_add(self.skipped);
                    if (arrived as f64) < needed {
                        self.timeout(
                            CloseReason::SlowFrame,
                            "frame arriving below the minimum rate",
                        );
                    }
                }
            }
            Some(_) => {}
            None => {
                if now.duration_since(self.last_frame) >= t.idle() {
                    self.timeout(CloseReason::Idle, "session idle for too long");
                }
            }
        }
    }

    /// Makes room for the next read: enough for the frame in progress, within bounds.
    fn reserve_for_read(&mut self) {
        let spare = self.inbuf.capacity() - self.inbuf.len();
        if self.inbuf.is_empty() {
            if spare < IDLE_READ {
                self.inbuf.reserve(IDLE_READ);
            }
        } else if spare < MIN_READ {
            let want = bytes_wanted(&self.inbuf)
                .unwrap_or(MIN_READ)
                .clamp(MIN_READ, MAX_READ);
            self.inbuf.reserve(want);
        }
    }
}

/// How a connection starts: empty for a fresh one; for one admitted from a blocked source by
/// resume ticket, with the reply to its RESUME queued and the bytes that followed it.
#[derive(Default)]
pub(crate) struct Start {
    /// A reply to queue first, with its request id.
    pub(crate) reply: Option<(u32, Reply)>,
    /// Bytes already read, the start of the input.
    pub(crate) input: BytesMut,
}

/// Runs one admitted connection to its end and says why it ended, with the reply bytes the
/// client had not read by then.
pub(crate) async fn run<T>(
    shared: Arc<Shared>,
    ticket: &ConnTicket,
    io: T,
    mut session: Session,
    cut: CancellationToken,
    start: Start,
) -> (CloseReason, u32)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let now = Instant::now();
    let mut c = Conn {
        shared: &shared,
        ticket,
        login_noted: false,
        peer: session.peer(),
        conn: session.conn(),
        inbuf: BytesMut::new(),
        out: BytesMut::new(),
        frame_started: None,
        last_frame: now,
        opened: now,
        write_since: None,
        closing: None,
        discarded: 0,
        skip: 0,
        skipped: 0,
    };
    if let Some((id, reply)) = &start.reply {
        c.queue(*id, reply);
    }
    c.inbuf = start.input;
    c.frame_started = (!c.inbuf.is_empty()).then_some(now);
    let reason = run_loop(&mut c, &mut rd, &mut wr, &mut session, &cut).await;
    let unread = c.out.len().saturating_add(c.discarded);
    (reason, u32::try_from(unread).unwrap_or(u32::MAX))
}

async fn run_loop<R, W>(
    c: &mut Conn<'_>,
    rd: &mut R,
    wr: &mut W,
    session: &mut Session,
    cut: &CancellationToken,
) -> CloseReason
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let shared = c.shared;
    loop {
        c.process(session, rd, cut).await;
        if let Some((reason, _)) = c.closing {
            if c.out.is_empty() {
                // Bounded: on TLS the shutdown flushes what the TLS layer still holds (up to
                // its buffer) and sends close_notify, which waits for a peer that may never
                // read again, and the write deadline no longer watches those bytes.
                let _ = tokio::time::timeout(CLOSE_FLUSH, wr.shutdown()).await;
                return reason;
            }
        }
        let deadline = c.next_deadline(session.authenticated());
        let can_read = c.closing.is_none() && !c.queue_full();
        if can_read {
            c.reserve_for_read();
        }
        let write_len = c.out.len();
        tokio::select! {
            // Cut and shutdown first: a blocked source must not get one more reply.
            biased;
            _ = cut.cancelled(), if c.closing.is_none() => {
                // A blocked source gets no further bytes.
                c.discard_output();
                c.closing = Some((CloseReason::Blocked, Instant::now()));
            }
            _ = shared.shutdown.cancelled(), if c.closing.is_none() => {
                c.close(
                    CloseReason::Shutdown,
                    Some(Reply::error(ErrorCode::ShuttingDown, "server is shutting down")),
                );
            }
            res = wr.write(&c.out), if write_len > 0 => match res {
                Ok(0) | Err(_) => return CloseReason::Io,
                Ok(n) => {
                    c.out.advance(n);
                    c.shared.metrics.bytes_out.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    c.write_since = (!c.out.is_empty()).then(Instant::now);
                    if c.out.is_empty() && c.out.capacity() > KEEP_BUFFER {
                        c.out = BytesMut::new();
                    }
                }
            },
            // A TLS peer that closes without close_notify (most clients do) reads as
            // UnexpectedEof; frames carry their own lengths, so it is the peer's EOF, as on a
            // plain socket.
            res = rd.read_buf(&mut c.inbuf), if can_read => match res.or_else(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof { Ok(0) } else { Err(e) }
            }) {
                Ok(0) => {
                    if c.out.is_empty() {
                        return CloseReason::Eof;
                    }
                    // Half-closed: deliver the replies already owed, then stop.
                    c.close(CloseReason::Eof, None);
                }
                Ok(n) => {
                    c.shared.metrics.bytes_in.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    if c.frame_started.is_none() {
                        c.frame_started = Some(Instant::now());
                    } else {
                        // Reads must not postpone the rate check: judge the frame now.
                        c.check_timers(session.authenticated());
                    }
                }
                Err(_) => return CloseReason::Io,
            },
            _ = tokio::time::sleep_until(deadline) => {
                if let Some((reason, at)) = c.closing {
                    if Instant::now() >= at {
                        return reason;
                    }
                } else {
                    c.check_timers(session.authenticated());
                }
            }
        }
    }
}
