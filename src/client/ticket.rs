//! Resume tickets on the client side: asking for one after a login (TICKET), logging in with
//! one (RESUME), and [`Client::resume_or_login`], which does both the way a client that keeps
//! tickets should.
//!
//! A ticket lets its user log in without the password (no argon2 on the server) and, within
//! a small budget, even from an address the server has blocked, so people sharing an address
//! with an attacker keep working. It is a bearer credential: keep it like a password.

use std::fmt;

use bytes::Bytes;
use tokio::net::ToSocketAddrs;

use super::session::unexpected;
use super::{Client, ClientError, ClientOptions};
use crate::protocol::{ErrorCode, Reply, Request};

/// A resume ticket as the server issued it, with the user it logs in.
#[derive(Clone, PartialEq, Eq)]
pub struct ResumeTicket {
    /// The user the ticket was issued to.
    pub user: String,
    /// The ticket bytes, opaque to the client.
    pub ticket: Bytes,
    /// When the ticket expires, in milliseconds since the Unix epoch (the server's clock).
    pub expires_at_ms: i64,
}

impl fmt::Debug for ResumeTicket {
    /// Never shows the ticket bytes: they log the user in.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResumeTicket")
            .field("user", &self.user)
            .field(
                "ticket",
                &format_args!("<{} bytes redacted>", self.ticket.len()),
            )
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// How [`Client::resume_or_login`] logged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginVia {
    /// With the resume ticket (RESUME).
    Ticket,
    /// With the password (AUTH), because there was no ticket or the server refused it.
    Password,
}

/// A session opened by [`Client::resume_or_login`].
#[derive(Debug)]
pub struct LoggedIn {
    /// The logged-in client.
    pub client: Client,
    /// How it logged in.
    pub via: LoginVia,
    /// The ticket to keep for next time: a fresh one when the server issued one, else the
    /// ticket that was just accepted; `None` when the server issues none (tickets off) and
    /// the password was used.
    pub ticket: Option<ResumeTicket>,
}

/// Whether a refused RESUME means the ticket (or tickets as such) will not do, so the
/// password should be tried instead.
fn ticket_refused(e: &ClientError) -> bool {
    matches!(
        e.code(),
        Some(ErrorCode::AuthFailed | ErrorCode::BadRequest)
    )
}

impl Client {
    /// Connects and logs in as `user` with a resume ticket (RESUME), without a password.
    /// From a blocked address this is the one request the server will read; a refused ticket
    /// there is answered with the `blocked` error.
    pub async fn resume<A>(
        addr: A,
        user: &str,
        ticket: &[u8],
        opts: ClientOptions,
    ) -> Result<Client, ClientError>
    where
        A: ToSocketAddrs + fmt::Display,
    {
        let mut client = Client::connect(addr, opts).await?;
        client.skip_blocked_notice();
        client.resume_with(user, ticket).await?;
        Ok(client)
    }

    /// Logs this connection in as `user` with a resume ticket (RESUME). On success
    /// [`Client::user`] is the name the server confirmed.
    pub async fn resume_with(&mut self, user: &str, ticket: &[u8]) -> Result<(), ClientError> {
        let req = Request::Resume {
            user: user.to_string(),
            ticket: Bytes::copy_from_slice(ticket),
        };
        match self.call(req).await? {
            Reply::AuthOk { user } => {
                self.set_user(user);
                Ok(())
            }
            other => Err(unexpected("AUTH_OK", &other)),
        }
    }

    /// Asks for a resume ticket for the logged-in user (TICKET).
    pub async fn request_ticket(&mut self) -> Result<ResumeTicket, ClientError> {
        let user = self.user().unwrap_or_default().to_string();
        match self.call(Request::Ticket).await? {
            Reply::TicketOk {
                expires_at_ms,
                ticket,
            } => Ok(ResumeTicket {
                user,
                ticket,
                expires_at_ms,
            }),
            other => Err(unexpected("TICKET_OK", &other)),
        }
    }

    /// Logs in as `user` the way a client that keeps tickets should: with `ticket` if there
    /// is one for this user, else (or if the server refuses it as invalid, expired, revoked
    /// or tickets off) with `password`; then asks for a fresh ticket. A server that issues
    /// none is not an error: [`LoggedIn::ticket`] then keeps the old one, or is `None`.
    ///
    /// Fails with the server's refusal of the ticket when there is no password to fall back
    /// to, and with a `blocked` refusal as is (a password would be refused the same way).
    pub async fn resume_or_login<A>(
        addr: A,
        user: &str,
        password: Option<&[u8]>,
        ticket: Option<&ResumeTicket>,
        opts: ClientOptions,
    ) -> Result<LoggedIn, ClientError>
    where
        A: ToSocketAddrs + fmt::Display + Clone,
    {
        let mut refused = None;
        if let Some(t) = ticket.filter(|t| t.user == user) {
            match Client::resume(addr.clone(), user, &t.ticket, opts.clone()).await {
                Ok(mut client) => {
                    let fresh = client.fresh_ticket().await?;
                    return Ok(LoggedIn {
                        client,
                        via: LoginVia::Ticket,
                        ticket: Some(fresh.unwrap_or_else(|| t.clone())),
                    });
                }
                Err(e) if ticket_refused(&e) => refused = Some(e),
                Err(e) => return Err(e),
            }
        }
        let Some(password) = password else {
            return Err(refused.unwrap_or(ClientError::Server {
                code: ErrorCode::AuthFailed,
                message: "no resume ticket for this user and no password".into(),
            }));
        };
        let mut client = Client::login(addr, user, password, opts).await?;
        let ticket = client.fresh_ticket().await?;
        Ok(LoggedIn {
            client,
            via: LoginVia::Password,
            ticket,
        })
    }

    /// A fresh ticket, or `None` if the server refused to issue one (tickets off, or this
    /// session's share used up); other failures are errors.
    async fn fresh_ticket(&mut self) -> Result<Option<ResumeTicket>, ClientError> {
        match self.request_ticket().await {
            Ok(t) => Ok(Some(t)),
            Err(ClientError::Server { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
