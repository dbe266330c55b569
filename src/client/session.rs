//! [`Client`]: one connection to the server, the request/reply plumbing and the small request
//! helpers. Uploads live in [`upload`](super::upload), downloads in
//! [`download`](super::download).

use std::fmt;
use std::io;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use tokio::net::ToSocketAddrs;

use super::transport::{self, Inbound, Outbound};
use super::{ClientError, ClientOptions};
use crate::protocol::{encode_request, InboxEntry, ItemView, Password, Reply, Request};

/// A connection to a rampart server.
///
/// Every method that talks to the server waits at most [`ClientOptions::request_timeout`] for
/// each reply. Request ids start at 1 and never take the value 0, which the server reserves
/// for connection-level errors. If an operation fails part way (a timeout, an error reply in
/// the middle of an upload), replies still owed to earlier requests are read and discarded by
/// the next operation, so the client can keep using the connection. After an error that
/// leaves the stream out of step, every further operation fails with [`ClientError::Closed`].
pub struct Client {
    pub(super) inbound: Inbound,
    pub(super) outbound: Outbound,
    /// The id the next request will carry; never 0.
    pub(super) next_id: u32,
    user: Option<String>,
    pub(super) opts: ClientOptions,
    /// Reused encoding buffer for single requests.
    scratch: BytesMut,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("local_addr", &self.inbound.local_addr().ok())
            .field("peer_addr", &self.inbound.peer_addr().ok())
            .field("user", &self.user)
            .field("next_id", &self.next_id)
            .field("outstanding", &self.inbound.outstanding())
            .finish()
    }
}

/// The error for a reply of the wrong kind.
pub(super) fn unexpected(expected: &'static str, got: &Reply) -> ClientError {
    ClientError::UnexpectedReply {
        expected,
        got: got.kind(),
    }
}

/// The outcome of writing a pipeline while reading its replies.
enum Pipelined {
    /// Every request was written; the replies, or why reading them failed.
    Done(Result<Vec<Reply>, ClientError>),
    /// Reading failed before the last byte was written: a partial frame may be on the wire.
    ReadFailedFirst(ClientError),
    /// Writing failed.
    WriteFailed(ClientError),
}

impl Client {
    /// Connects without authenticating. `addr` is anything tokio can resolve and display:
    /// `"127.0.0.1:7070"`, `"localhost:7070"`, a `SocketAddr`.
    pub async fn connect<A>(addr: A, opts: ClientOptions) -> Result<Client, ClientError>
    where
        A: ToSocketAddrs + fmt::Display,
    {
        let stream = transport::open(addr, &opts).await?;
        let (inbound, outbound) = transport::split(stream, &opts);
        Ok(Client {
            inbound,
            outbound,
            next_id: 1,
            user: None,
            opts,
            scratch: BytesMut::new(),
        })
    }

    /// Connects and authenticates as `user`.
    pub async fn login<A>(
        addr: A,
        user: &str,
        password: &[u8],
        opts: ClientOptions,
    ) -> Result<Client, ClientError>
    where
        A: ToSocketAddrs + fmt::Display,
    {
        let mut client = Client::connect(addr, opts).await?;
        client.auth(user, password).await?;
        Ok(client)
    }

    /// Authenticates this session (AUTH). On success [`Client::user`] is the name the server
    /// confirmed.
    pub async fn auth(&mut self, user: &str, password: &[u8]) -> Result<(), ClientError> {
        let req = Request::Auth {
            user: user.to_string(),
            password: Password(Bytes::copy_from_slice(password)),
        };
        match self.call(req).await? {
            Reply::AuthOk { user } => {
                self.user = Some(user);
                Ok(())
            }
            other => Err(unexpected("AUTH_OK", &other)),
        }
    }

    /// The authenticated user, if AUTH (or RESUME) succeeded.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Records the user the server confirmed in AUTH_OK.
    pub(super) fn set_user(&mut self, user: String) {
        self.user = Some(user);
    }

    /// The local address of the connection.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inbound.local_addr()
    }

    /// The server's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inbound.peer_addr()
    }

    /// The options this client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// True once an error has left the connection unusable; every request then fails with
    /// [`ClientError::Closed`].
    pub fn is_closed(&self) -> bool {
        self.inbound.broken || self.outbound.broken
    }

    /// Takes the next request id: wrapping, skipping 0.
    fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = match self.next_id.wrapping_add(1) {
            0 => 1,
            n => n,
        };
        id
    }

    /// Writes one request without waiting for its reply; returns its id. The reply must be
    /// read with [`Inbound::wait_for`] (or is discarded by a later wait).
    pub(super) async fn send(&mut self, req: &Request) -> Result<u32, ClientError> {
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        let id = self.take_id();
        self.scratch.clear();
        encode_request(id, req, &mut self.scratch).map_err(ClientError::Encode)?;
        self.inbound.expect(id);
        if let Err(e) = self.outbound.write(&self.scratch).await {
            return Err(self.salvage(e).await);
        }
        Ok(id)
    }

    /// Waits for the reply to request `id`, turning an ERROR reply into
    /// [`ClientError::Server`].
    /// Reads past one `blocked` notice (ERROR, request id 0) before the next reply: on a
    /// fresh connection from a blocked source the server sends it before it reads a RESUME.
    pub(super) fn skip_blocked_notice(&mut self) {
        self.inbound.skip_blocked_notice = true;
    }

    pub(super) async fn reply_to(&mut self, id: u32) -> Result<Reply, ClientError> {
        match self.inbound.wait_for(id).await? {
            Reply::Error { code, message } => Err(ClientError::Server { code, message }),
            reply => Ok(reply),
        }
    }

    /// After a failed write, looks for the reason the server may have sent before closing
    /// (an ERROR with request id 0) and prefers it to the bare write error.
    async fn salvage(&mut self, write_error: ClientError) -> ClientError {
        if matches!(write_error, ClientError::Timeout) {
            // The server is alive but not reading: waiting for a reply would only time out too.
            return write_error;
        }
        for _ in 0..=self.inbound.outstanding() {
            match self.inbound.recv().await {
                Ok(_) => continue,
                Err(e @ ClientError::Server { .. }) => return e,
                Err(_) => break,
            }
        }
        write_error
    }

    /// Writes one request and returns its id without reading the reply, as a client that
    /// stops reading for a while does; read the reply later with [`Client::read_reply`].
    pub async fn send_request(&mut self, req: &Request) -> Result<u32, ClientError> {
        self.send(req).await
    }

    /// Reads replies up to the one for request `id` (from [`Client::send_request`]),
    /// discarding replies to earlier requests; an ERROR reply becomes
    /// [`ClientError::Server`].
    pub async fn read_reply(&mut self, id: u32) -> Result<Reply, ClientError> {
        self.reply_to(id).await
    }

    /// Sends one request and waits for its reply; an ERROR reply becomes
    /// [`ClientError::Server`].
    pub async fn call(&mut self, req: Request) -> Result<Reply, ClientError> {
        let id = self.send(&req).await?;
        self.reply_to(id).await
    }

    /// Sends all requests back to back (pipelined), then reads the replies in order; each
    /// reply is returned as-is (ERROR replies included), matched by request id.
    ///
    /// Nothing is sent if any request cannot be encoded. Replies are read while the requests
    /// are still being written, so a long pipeline cannot stall against the server's bounded
    /// reply queue.
    pub async fn pipeline(&mut self, reqs: Vec<Request>) -> Result<Vec<Reply>, ClientError> {
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let mut wire = BytesMut::new();
        let mut ids = Vec::with_capacity(reqs.len());
        for req in &reqs {
            let id = self.take_id();
            encode_request(id, req, &mut wire).map_err(ClientError::Encode)?;
            ids.push(id);
        }
        drop(reqs);
        for &id in &ids {
            self.inbound.expect(id);
        }
        let outcome = {
            let Client {
                inbound, outbound, ..
            } = &mut *self;
            let read = async {
                let mut replies = Vec::with_capacity(ids.len());
                for &id in &ids {
                    replies.push(inbound.wait_for(id).await?);
                }
                Ok(replies)
            };
            let write = outbound.write(&wire);
            tokio::pin!(read, write);
            tokio::select! {
                read_result = &mut read => match read_result {
                    // Every reply arrived, so the server has read every byte already.
                    Ok(replies) => match write.await {
                        Ok(()) => Pipelined::Done(Ok(replies)),
                        Err(e) => Pipelined::WriteFailed(e),
                    },
                    Err(e) => Pipelined::ReadFailedFirst(e),
                },
                write_result = &mut write => match write_result {
                    Ok(()) => Pipelined::Done(read.await),
                    Err(e) => Pipelined::WriteFailed(e),
                },
            }
        };
        match outcome {
            Pipelined::Done(result) => result,
            Pipelined::ReadFailedFirst(e) => {
                self.outbound.broken = true;
                Err(e)
            }
            Pipelined::WriteFailed(e) => Err(self.salvage(e).await),
        }
    }

    /// PING, expecting PONG.
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        match self.call(Request::Ping).await? {
            Reply::Pong => Ok(()),
            other => Err(unexpected("PONG", &other)),
        }
    }

    /// Sends a chat message; returns the new item's id.
    pub async fn send_message(&mut self, to: &str, text: &str) -> Result<u64, ClientError> {
        self.accepted(Request::SendMessage {
            to: to.to_string(),
            text: text.to_string(),
        })
        .await
    }

    /// Sends a request that answers ACCEPTED and returns the item id.
    pub(super) async fn accepted(&mut self, req: Request) -> Result<u64, ClientError> {
        match self.call(req).await? {
            Reply::Accepted { item_id } => Ok(item_id),
            other => Err(unexpected("ACCEPTED", &other)),
        }
    }

    /// One page of the inbox: up to `limit` entries with ids above `after` (0 for the first
    /// page; a `limit` of 0 means the server's maximum page).
    pub async fn inbox_page(
        &mut self,
        after: u64,
        limit: u16,
    ) -> Result<Vec<InboxEntry>, ClientError> {
        match self.call(Request::ListInbox { after, limit }).await? {
            Reply::Inbox { entries } => Ok(entries),
            other => Err(unexpected("INBOX", &other)),
        }
    }

    /// The whole inbox, page by page, in ascending id order.
    ///
    /// Stops at an empty page, and also when a page does not move past the previous one, so
    /// a confused server cannot keep the loop going forever.
    pub async fn inbox(&mut self) -> Result<Vec<InboxEntry>, ClientError> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = self.inbox_page(after, 0).await?;
            let Some(last) = page.iter().map(|e| e.id).max() else {
                break;
            };
            if last <= after {
                break;
            }
            all.extend(page.into_iter().filter(|e| e.id > after));
            after = last;
        }
        Ok(all)
    }

    /// One item's metadata and text (FETCH).
    pub async fn fetch(&mut self, id: u64) -> Result<ItemView, ClientError> {
        match self.call(Request::Fetch { item_id: id }).await? {
            Reply::Item(view) => Ok(view),
            other => Err(unexpected("ITEM", &other)),
        }
    }

    /// Deletes an item from the inbox.
    pub async fn delete(&mut self, id: u64) -> Result<(), ClientError> {
        self.ok(Request::Delete { item_id: id }).await
    }

    async fn ok(&mut self, req: Request) -> Result<(), ClientError> {
        match self.call(req).await? {
            Reply::Ok => Ok(()),
            other => Err(unexpected("OK", &other)),
        }
    }

    /// Ends the session politely: BYE, wait for OK, then half-close the connection.
    pub async fn bye(mut self) -> Result<(), ClientError> {
        self.ok(Request::Bye).await?;
        // The server closes after OK anyway; a failed FIN changes nothing for the caller.
        let _ = self.outbound.shutdown().await;
        Ok(())
    }
}
