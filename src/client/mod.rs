//! The well-behaved client library, used by the CLI, the tests, the load generator and the
//! attackers' legitimate traffic.
//!
//! A [`Client`] owns one TCP connection and speaks the protocol the way the server expects a
//! polite peer to: one request id per request (from 1, never 0), replies matched by id, every
//! network wait bounded by [`ClientOptions::request_timeout`], uploads in a bounded window of
//! chunks, downloads verified against the blake3 digest the server reported.
//!
//! - [`session`]: [`Client`] itself: connecting, AUTH, single calls, pipelines and the small
//!   request helpers (messages, inbox, fetch, delete).
//! - [`upload`]: staged uploads and the requests that deliver them (files and mails).
//! - [`download`]: downloads with digest verification and saving attachments to a directory.
//! - [`ticket`]: resume tickets: TICKET, RESUME and [`Client::resume_or_login`].
//! - [`error`]: [`ClientError`], one variant per way a request can fail.
//! - `transport`: the two halves of the socket, the reply decoder and the read and write
//!   deadlines.
//!
//! Invariant: nothing the server sends makes the client panic, allocate by a length the server
//! declared, or wait without a deadline. After a reply that leaves the stream out of step (a
//! wrong request id, a broken header, a failed write), the connection is treated as closed.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rampart::client::ClientError> {
//! use rampart::client::{Client, ClientOptions};
//!
//! let mut alice = Client::login("127.0.0.1:7070", "alice", b"secret", ClientOptions::default()).await?;
//! let item = alice.send_message("bob", "hello").await?;
//! println!("delivered as item {item}");
//! alice.bye().await?;
//! # Ok(())
//! # }
//! ```

pub mod download;
pub mod error;
pub mod session;
pub mod ticket;
mod transport;
pub mod upload;

#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use crate::protocol::Limits;

pub use error::ClientError;
pub use session::Client;
pub use ticket::{LoggedIn, LoginVia, ResumeTicket};

/// Default wait for any one reply or write: generous, because an ACCEPTED is sent only after
/// the server has committed the item durably (an fsync on a slow disk).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Default wait for the TCP handshake (and name resolution).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default number of upload chunks (and download requests) in flight: enough to keep a
/// loopback or LAN link busy without queuing much at the server.
pub const DEFAULT_UPLOAD_WINDOW: usize = 8;

/// Default chunk size, 256 KiB: the server's default `max_chunk_bytes`. The server's own
/// `max_chunk` from UPLOAD_READY always caps it.
pub const DEFAULT_CHUNK_SIZE: usize = 256 * 1024;

/// Largest piece a [`ClientOptions::segmented`] client writes at once: small enough that
/// most frames take several writes, as from a client that writes field by field.
pub const SEGMENT_MAX_BYTES: usize = 64;

/// Longest pause a [`ClientOptions::segmented`] client makes between two pieces of a frame:
/// well below any server read timeout, long enough to split a frame across reads.
pub const SEGMENT_MAX_PAUSE: Duration = Duration::from_millis(5);

/// How a [`Client`] connects and behaves. Build it with `ClientOptions::default()` and the
/// builder methods, or with struct update syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Longest wait for one reply, and for one write to the socket to complete.
    pub request_timeout: Duration,
    /// Longest wait for name resolution plus the TCP handshake.
    pub connect_timeout: Duration,
    /// Local address to bind before connecting (attack and legitimate test clients use
    /// 127.0.x.y to look like distinct sources); `None` lets the OS choose.
    pub source: Option<IpAddr>,
    /// Decoding limits applied to replies.
    pub limits: Limits,
    /// Upload chunks (and download requests) in flight at once; 0 is treated as 1.
    pub upload_window: usize,
    /// Bytes per upload chunk and per download request, capped by the server's `max_chunk`
    /// (uploads) and by `limits.max_chunk_bytes` (downloads); 0 is treated as 1.
    pub chunk_size: usize,
    /// Write every request in small pieces, the way another implementation of the protocol
    /// might, from this seed: see [`ClientOptions::segmented`]. `None` (the default) writes
    /// each request, or a whole pipeline, at once.
    pub segmented: Option<u64>,
    /// Speak TLS to the server with this configuration; `None` (the default) is plaintext.
    pub tls: Option<TlsOptions>,
}

/// How a client speaks TLS: the rustls configuration, the name the certificate must carry,
/// and, under trust on first use, the verifier that records a first-seen certificate.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// The rustls client configuration.
    pub config: std::sync::Arc<rustls::ClientConfig>,
    /// The server name to verify the certificate against (a DNS name or an IP address).
    pub server_name: String,
    /// Set under trust on first use ([`crate::tls::ClientTrust::FirstUse`]).
    pub first_use: Option<std::sync::Arc<crate::tls::TofuVerifier>>,
}

/// Two options are equal when they share one configuration and check the same name.
impl PartialEq for TlsOptions {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.config, &other.config) && self.server_name == other.server_name
    }
}

impl Eq for TlsOptions {}

impl TlsOptions {
    /// The options for `server` (`HOST:PORT`) under `trust`: the name checked is `HOST`.
    pub fn new(
        trust: &crate::tls::ClientTrust,
        server: &str,
        min: crate::tls::MinVersion,
    ) -> Result<TlsOptions, crate::tls::TlsError> {
        let tls = crate::tls::client_config(trust, server, min)?;
        let host = server
            .rsplit_once(':')
            .map_or(server, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        Ok(TlsOptions {
            config: tls.config,
            server_name: host.to_string(),
            first_use: tls.first_use,
        })
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            source: None,
            limits: Limits::default(),
            upload_window: DEFAULT_UPLOAD_WINDOW,
            chunk_size: DEFAULT_CHUNK_SIZE,
            segmented: None,
            tls: None,
        }
    }
}

impl ClientOptions {
    /// Sets [`ClientOptions::request_timeout`].
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`ClientOptions::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`ClientOptions::source`], the local address to connect from.
    pub fn source(mut self, ip: IpAddr) -> Self {
        self.source = Some(ip);
        self
    }

    /// Sets [`ClientOptions::limits`].
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets [`ClientOptions::upload_window`].
    pub fn upload_window(mut self, chunks: usize) -> Self {
        self.upload_window = chunks;
        self
    }

    /// Sets [`ClientOptions::chunk_size`].
    pub fn chunk_size(mut self, bytes: usize) -> Self {
        self.chunk_size = bytes;
        self
    }

    /// Writes every frame in pieces of 1 to [`SEGMENT_MAX_BYTES`] bytes, now and then
    /// pausing up to [`SEGMENT_MAX_PAUSE`] between two pieces, all drawn from `seed`: the
    /// same bytes as the default client, cut the way a different implementation (or a
    /// congested link) would cut them. Sets [`ClientOptions::segmented`].
    pub fn segmented(mut self, seed: u64) -> Self {
        self.segmented = Some(seed);
        self
    }
}

/// Lower-case hex of a digest (or any bytes), for display.
///
/// ```
/// assert_eq!(rampart::client::hex(&[0x00, 0xab, 0x7f]), "00ab7f");
/// ```
pub fn hex(digest: &[u8]) -> String {
    let mut out = String::with_capacity(digest.len() * 2);
    for b in digest {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}
