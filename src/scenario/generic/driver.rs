//! The legit drivers of a `tcp://` target: one connection per client, one checked exchange
//! per operation. A driver reads replies with its own small parser, bounded by named limits,
//! and fails an operation on any reply other than the expected one.
//!
//! - `resp`: `SET KEY:i <value>` answered `+OK`, then `GET KEY:i` answered with the value;
//! - `http`: `GET path` answered with the expected status, the body skipped by its
//!   `Content-Length` or chunks (or read to the close);
//! - `line`: a line out, a reply line that contains the expected text;
//! - `script`: every `send` written, every `expect` compared byte for byte.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rand::distributions::Alphanumeric;
use rand::rngs::StdRng;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::attack::resp_command;
use crate::scenario::target::{Driver, Step};

/// Longest reply line (a RESP header, an HTTP header block, a `line` reply).
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Largest reply body a driver skips (an HTTP body, a RESP bulk string): far more than a
/// legit request needs, and read in pieces, never held.
pub const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
/// Longest connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an operation failed: the label reports count it under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpError {
    /// The connect failed or was refused.
    Connect(String),
    /// The server closed the connection.
    Closed,
    /// Reading or writing failed (a reset).
    Io,
    /// A reply other than the expected one (what was wrong).
    Unexpected(String),
    /// A reply line or body past the driver's limits.
    TooLarge,
}

impl OpError {
    /// The label in `legit_errors`.
    pub fn label(&self) -> String {
        match self {
            OpError::Connect(_) => "connect".into(),
            OpError::Closed => "closed".into(),
            OpError::Io => "reset".into(),
            OpError::Unexpected(what) => what.clone(),
            OpError::TooLarge => "reply too large".into(),
        }
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpError::Connect(e) => write!(f, "connect failed: {e}"),
            other => f.write_str(&other.label()),
        }
    }
}

/// One legit connection.
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// The server announced it will close (HTTP `Connection: close`) or closed.
    done: bool,
}

impl Conn {
    /// Connects from `source` (within [`CONNECT_TIMEOUT`]) and, for a `line` driver with
    /// `greeting`, reads the server's first line.
    pub async fn open(
        addr: SocketAddr,
        source: Ipv4Addr,
        driver: &Driver,
    ) -> Result<Conn, OpError> {
        let connect = async {
            let socket = TcpSocket::new_v4()?;
            socket.set_reuseaddr(true)?;
            socket.bind(SocketAddr::from((source, 0)))?;
            let stream = socket.connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok::<TcpStream, std::io::Error>(stream)
        };
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(OpError::Connect(e.to_string())),
            Err(_) => return Err(OpError::Connect("timed out".into())),
        };
        let mut conn = Conn {
            stream,
            buf: BytesMut::with_capacity(4096),
            done: false,
        };
        if let Driver::Line { greeting: true, .. } = driver {
            conn.line().await?;
        }
        Ok(conn)
    }

    /// False once the connection cannot carry another operation.
    pub fn usable(&self) -> bool {
        !self.done
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), OpError> {
        self.stream.write_all(bytes).await.map_err(|_| OpError::Io)
    }

    /// Reads more bytes into the buffer; an error at the close.
    async fn fill(&mut self) -> Result<(), OpError> {
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => {
                self.done = true;
                Err(OpError::Closed)
            }
            Ok(_) => Ok(()),
            Err(_) => {
                self.done = true;
                Err(OpError::Io)
            }
        }
    }

    /// One line, without its `\n` (and `\r`).
    async fn line(&mut self) -> Result<Vec<u8>, OpError> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line = self.buf.split_to(i + 1).to_vec();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buf.len() > MAX_LINE_BYTES {
                return Err(OpError::TooLarge);
            }
            self.fill().await?;
        }
    }

    /// Exactly `n` bytes.
    async fn exact(&mut self, n: usize) -> Result<Vec<u8>, OpError> {
        while self.buf.len() < n {
            self.fill().await?;
        }
        Ok(self.buf.split_to(n).to_vec())
    }

    /// Reads and drops `n` bytes.
    async fn skip(&mut self, mut n: u64) -> Result<(), OpError> {
        loop {
            let here = (self.buf.len() as u64).min(n);
            self.buf.advance(here as usize);
            n -= here;
            if n == 0 {
                return Ok(());
            }
            self.fill().await?;
        }
    }

    /// Reads and drops everything until the server closes.
    async fn skip_to_close(&mut self) -> Result<(), OpError> {
        let mut total = 0u64;
        loop {
            total += self.buf.len() as u64;
            self.buf.clear();
            if total > MAX_BODY_BYTES {
                return Err(OpError::TooLarge);
            }
            match self.fill().await {
                Ok(()) => {}
                Err(OpError::Closed) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// One operation, number `n` of client `client`.
    pub async fn exchange(
        &mut self,
        driver: &Driver,
        addr: SocketAddr,
        client: usize,
        n: u64,
        rng: &mut StdRng,
    ) -> Result<(), OpError> {
        match driver {
            Driver::Resp { key, value_bytes } => {
                let key = format!("{key}:{client}");
                let value: Vec<u8> = (0..*value_bytes)
                    .map(|_| rng.sample(Alphanumeric))
                    .collect();
                self.send(&resp_command(&[b"SET", key.as_bytes(), &value]))
                    .await?;
                match self.resp_reply().await? {
                    Resp::Simple(s) if s == b"OK" => {}
                    other => return Err(other.unexpected("SET")),
                }
                self.send(&resp_command(&[b"GET", key.as_bytes()])).await?;
                match self.resp_reply().await? {
                    Resp::Bulk(Some(v)) if v == value => Ok(()),
                    Resp::Bulk(Some(_)) => Err(OpError::Unexpected("GET: wrong value".into())),
                    other => Err(other.unexpected("GET")),
                }
            }
            Driver::Http { path, status, host } => {
                let host = host.clone().unwrap_or_else(|| addr.to_string());
                let req = format!(
                    "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: rampart-legit\r\nAccept: */*\r\n\r\n"
                );
                self.send(req.as_bytes()).await?;
                let got = self.http_reply().await?;
                if got != *status {
                    return Err(OpError::Unexpected(format!("status {got}")));
                }
                Ok(())
            }
            Driver::Line {
                line, expect, eol, ..
            } => {
                let num = n.to_string();
                let out = format!("{}{eol}", line.replace("{n}", &num));
                self.send(out.as_bytes()).await?;
                let reply = self.line().await?;
                let want = expect.replace("{n}", &num);
                if memchr::memmem::find(&reply, want.as_bytes()).is_some() {
                    Ok(())
                } else {
                    Err(OpError::Unexpected("line mismatch".into()))
                }
            }
            Driver::Script { steps } => {
                for (i, step) in steps.iter().enumerate() {
                    match step {
                        Step::Send(bytes) => self.send(bytes).await?,
                        Step::Expect(bytes) => {
                            if self.exact(bytes.len()).await? != *bytes {
                                return Err(OpError::Unexpected(format!("step {i} mismatch")));
                            }
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// One RESP reply (arrays are not expected of SET and GET).
    async fn resp_reply(&mut self) -> Result<Resp, OpError> {
        let line = self.line().await?;
        let (kind, rest) = line
            .split_first()
            .ok_or(OpError::Unexpected("empty reply".into()))?;
        match kind {
            b'+' => Ok(Resp::Simple(rest.to_vec())),
            b'-' => Ok(Resp::Error(String::from_utf8_lossy(rest).into_owned())),
            b'$' => {
                let len: i64 = std::str::from_utf8(rest)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(OpError::Unexpected("bad bulk length".into()))?;
                if len < 0 {
                    return Ok(Resp::Bulk(None));
                }
                let len = usize::try_from(len).map_err(|_| OpError::TooLarge)?;
                if len as u64 > MAX_BODY_BYTES {
                    return Err(OpError::TooLarge);
                }
                let mut v = self.exact(len + 2).await?;
                v.truncate(len);
                Ok(Resp::Bulk(Some(v)))
            }
            _ => Ok(Resp::Other),
        }
    }

    /// One HTTP response: its status; the body is skipped.
    async fn http_reply(&mut self) -> Result<u16, OpError> {
        let status_line = self.line().await?;
        let status: u16 = status_line
            .split(|b| *b == b' ')
            .nth(1)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse().ok())
            .filter(|_| status_line.starts_with(b"HTTP/1."))
            .ok_or(OpError::Unexpected("not an HTTP response".into()))?;
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut header_bytes = 0usize;
        loop {
            let h = self.line().await?;
            if h.is_empty() {
                break;
            }
            header_bytes += h.len();
            if header_bytes > MAX_LINE_BYTES {
                return Err(OpError::TooLarge);
            }
            let text = String::from_utf8_lossy(&h).to_ascii_lowercase();
            let Some((name, value)) = text.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim() {
                "content-length" => length = value.parse().ok(),
                "transfer-encoding" => chunked = value.contains("chunked"),
                "connection" if value.contains("close") => self.done = true,
                _ => {}
            }
        }
        let no_body = (100..200).contains(&status) || status == 204 || status == 304;
        if no_body {
            return Ok(status);
        }
        if chunked {
            loop {
                let size_line = self.line().await?;
                let size_text = String::from_utf8_lossy(&size_line);
                let size =
                    u64::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| OpError::Unexpected("bad chunk size".into()))?;
                if size > MAX_BODY_BYTES {
                    return Err(OpError::TooLarge);
                }
                if size == 0 {
                    // Trailers, up to the empty line.
                    while !self.line().await?.is_empty() {}
                    break;
                }
                self.skip(size + 2).await?;
            }
        } else if let Some(n) = length {
            if n > MAX_BODY_BYTES {
                return Err(OpError::TooLarge);
            }
            self.skip(n).await?;
        } else {
            // No length: the body ends at the close.
            self.skip_to_close().await?;
            self.done = true;
        }
        Ok(status)
    }
}

/// A RESP reply, as far as the driver cares.
enum Resp {
    Simple(Vec<u8>),
    Error(String),
    Bulk(Option<Vec<u8>>),
    Other,
}

impl Resp {
    fn unexpected(self, command: &str) -> OpError {
        OpError::Unexpected(match self {
            Resp::Error(e) => {
                // The error's first word (`ERR`, `OOM`, `LOADING`...): a bounded label.
                let word: String = e
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(16)
                    .collect();
                format!("{command}: error {word}")
            }
            Resp::Bulk(None) => format!("{command}: nil"),
            _ => format!("{command}: unexpected reply"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use tokio::net::TcpListener;

    /// A server that answers every connection with `reply` after reading `want` bytes.
    async fn serve_once(reply: &'static [u8], want: usize) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; want];
                if s.read_exact(&mut buf).await.is_ok() {
                    let _ = s.write_all(reply).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Ok(addr)
    }

    fn http() -> Driver {
        Driver::Http {
            path: "/".into(),
            status: 200,
            host: Some("h".into()),
        }
    }

    const HTTP_REQ: usize =
        "GET / HTTP/1.1\r\nHost: h\r\nUser-Agent: rampart-legit\r\nAccept: */*\r\n\r\n".len();

    async fn one(driver: &Driver, reply: &'static [u8], want: usize) -> Result<(), OpError> {
        let addr = serve_once(reply, want)
            .await
            .map_err(|e| OpError::Connect(e.to_string()))?;
        let mut c = Conn::open(addr, Ipv4Addr::LOCALHOST, driver).await?;
        let mut rng = StdRng::seed_from_u64(1);
        c.exchange(driver, addr, 0, 0, &mut rng).await
    }

    #[tokio::test]
    async fn http_reads_length_chunks_and_status() {
        let d = http();
        assert_eq!(
            one(
                &d,
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
                HTTP_REQ
            )
            .await,
            Ok(())
        );
        assert_eq!(
            one(
                &d,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                HTTP_REQ
            )
            .await,
            Ok(())
        );
        assert_eq!(
            one(
                &d,
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                HTTP_REQ
            )
            .await,
            Err(OpError::Unexpected("status 404".into()))
        );
        assert_eq!(
            one(&d, b"SSH-2.0-x\r\n", HTTP_REQ).await,
            Err(OpError::Unexpected("not an HTTP response".into()))
        );
    }

    #[tokio::test]
    async fn line_and_script_check_their_replies() {
        let line = Driver::Line {
            line: "hi {n}".into(),
            expect: "hi {n}".into(),
            eol: "\n".into(),
            greeting: false,
        };
        assert_eq!(one(&line, b"hi 0\n", 5).await, Ok(()));
        assert_eq!(
            one(&line, b"bye\n", 5).await,
            Err(OpError::Unexpected("line mismatch".into()))
        );
        let script = Driver::Script {
            steps: vec![
                Step::Send(b"PING\r\n".to_vec()),
                Step::Expect(b"+PONG\r\n".to_vec()),
            ],
        };
        assert_eq!(one(&script, b"+PONG\r\n", 6).await, Ok(()));
        assert_eq!(
            one(&script, b"-ERR x\r\n", 6).await,
            Err(OpError::Unexpected("step 1 mismatch".into()))
        );
        assert_eq!(one(&script, b"", 6).await, Err(OpError::Closed));
    }

    #[tokio::test]
    async fn resp_errors_are_labelled_by_their_first_word() {
        let resp = Driver::Resp {
            key: "k".into(),
            value_bytes: 4,
        };
        let set_len = resp_command(&[b"SET", b"k:0", b"abcd"]).len();
        assert_eq!(
            one(&resp, b"-OOM command not allowed\r\n", set_len).await,
            Err(OpError::Unexpected("SET: error OOM".into()))
        );
    }
}
