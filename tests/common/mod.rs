//! Shared helpers for the integration tests: one way to start a real server on
//! 127.0.0.1:0 with test users, and small raw-socket utilities for the attacks.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use rampart::client::{Client, ClientError, ClientOptions};
use rampart::config::Config;
use rampart::protocol::{decode_frame, ErrorCode, Limits, Reply, Role};
use rampart::server::auth::hash_password;
use rampart::server::{Server, ServerHandle};
use rampart::store::Store;

/// The users every test server has, with their passwords.
pub const USERS: [(&str, &str); 3] = [
    ("alice", "alice-pw"),
    ("bob", "bob-pw"),
    ("mallory", "mallory-pw"),
];

/// A running server and the temporary data directory it owns.
pub struct TestServer {
    pub handle: ServerHandle,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
}

impl TestServer {
    /// The address as a string for the client.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    /// Logs in one of [`USERS`].
    pub async fn login(&self, user: &str) -> Client {
        self.login_from(user, None).await
    }

    /// Logs in one of [`USERS`] from a given loopback source address.
    pub async fn login_from(&self, user: &str, source: Option<IpAddr>) -> Client {
        let pw = USERS
            .iter()
            .find(|(u, _)| *u == user)
            .map(|(_, p)| *p)
            .expect("a test user");
        let opts = ClientOptions {
            source,
            request_timeout: Duration::from_secs(10),
            ..ClientOptions::default()
        };
        Client::login(&self.target(), user, pw.as_bytes(), opts)
            .await
            .expect("login")
    }
}

/// Defaults with cheap password hashing, so tests spend their time on behaviour, and the
/// firewall off: most tests attack from 127.0.0.1 and then check that 127.0.0.1 is still
/// served. [`firewall_config`] turns it back on for the tests of blocking.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.auth.argon2_memory_kib = 64;
    c.auth.argon2_iterations = 1;
    c.firewall.enabled = false;
    c
}

/// [`test_config`] with the firewall on, as in production.
pub fn firewall_config() -> Config {
    let mut c = test_config();
    c.firewall.enabled = true;
    c
}

/// Starts a server with [`test_config`].
pub async fn start_server() -> TestServer {
    start_server_with(test_config()).await
}

/// Starts a server with a given configuration and the test users.
pub async fn start_server_with(config: Config) -> TestServer {
    start(config, |s| s).await
}

/// Starts a server, letting the caller adjust it (e.g. install a fault hook) before bind.
pub async fn start(config: Config, adjust: impl FnOnce(Server) -> Server) -> TestServer {
    start_with_model(config, None, adjust).await
}

/// [`start`], with a detection model scoring activity windows live.
pub async fn start_with_model(
    config: Config,
    model: Option<std::sync::Arc<rampart::detect::Model>>,
    adjust: impl FnOnce(Server) -> Server,
) -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::open_with_model(config.clone(), dir.path(), model).expect("server opens");
    add_users(&*server.store(), &config);
    let handle = adjust(server)
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = handle.local_addr();
    TestServer { handle, dir, addr }
}

/// Opens a server with `config` on `dir`, whose last server is gone. A test binary that
/// spawns processes (`rampart`, `mount`) has a moment in which a child forked by another test
/// holds a copy of the lock's descriptor, until it execs (which closes it): that moment is
/// allowed for, bounded. Any other error, or the lock still held after 10 s, fails.
pub fn open_once_free(
    config: Config,
    dir: &std::path::Path,
) -> Result<Server, Box<dyn std::error::Error>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Server::open(config.clone(), dir) {
            Err(rampart::server::ServerError::Store(rampart::store::StoreError::InUse {
                ..
            })) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            opened => return Ok(opened?),
        }
    }
}

/// Adds [`USERS`] to a store.
pub fn add_users(store: &dyn Store, config: &Config) {
    for (name, pw) in USERS {
        let hash = hash_password(&config.auth, pw.as_bytes()).expect("hash");
        store.add_user(name, &hash).expect("add user");
    }
}

/// A raw TCP connection from `source` (any 127.0.0.0/8 address) to `addr`.
pub async fn raw_connect(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(addr).await
}

/// What a raw connection saw until the server closed it or `limit` passed.
pub struct Drained {
    /// Replies decoded from the bytes received.
    pub replies: Vec<(u32, Reply)>,
    /// Whether the server closed the connection.
    pub closed: bool,
}

/// Reads and decodes replies until the server closes or `limit` passes.
pub async fn drain(stream: &mut TcpStream, limit: Duration) -> Drained {
    let mut buf = BytesMut::new();
    let mut tmp = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + limit;
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => buf.extend_from_slice(&tmp[..n]),
            Err(_) => break false,
        }
    };
    let limits = Limits::default();
    let mut replies = Vec::new();
    while let Ok(Some(frame)) = decode_frame(&mut buf, &limits, Role::Client) {
        if let Ok(r) = Reply::decode(&frame, &limits) {
            replies.push((frame.request_id, r));
        }
    }
    Drained { replies, closed }
}

/// Writes raw bytes, ignoring errors (the server may already have closed).
pub async fn send_raw(stream: &mut TcpStream, bytes: &[u8]) {
    let _ = stream.write_all(bytes).await;
}

/// A frame header: magic, version 1, kind, request id, flags, length.
pub fn header(kind: u8, request_id: u32, flags: u16, len: u32) -> Vec<u8> {
    let mut h = b"RM\x01".to_vec();
    h.push(kind);
    h.extend_from_slice(&request_id.to_be_bytes());
    h.extend_from_slice(&flags.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    h
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// A test's error: anything, sendable across tasks.
pub type TestError = Box<dyn std::error::Error + Send + Sync>;
/// What a test body returns.
pub type TestResult = Result<(), TestError>;

/// Runs a test body with a hard 60 s limit, so nothing can hang the suite.
pub async fn within(body: impl std::future::Future<Output = TestResult>) -> TestResult {
    tokio::time::timeout(Duration::from_secs(60), body)
        .await
        .map_err(|_| "test did not finish within 60 s")?
}

/// A seeded RNG; the seed is printed so a failure can be replayed with RAMPART_TEST_SEED.
pub fn rng(default_seed: u64) -> StdRng {
    let seed = std::env::var("RAMPART_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_seed);
    println!("seed = {seed} (set RAMPART_TEST_SEED to replay)");
    StdRng::seed_from_u64(seed)
}

/// `len` bytes from `rng`.
pub fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// The server's error code and message, or a test failure naming what happened instead.
pub fn refused<T: std::fmt::Debug>(
    result: Result<T, ClientError>,
    want: ErrorCode,
) -> Result<String, TestError> {
    match result {
        Err(ClientError::Server { code, message }) if code == want => Ok(message),
        other => Err(format!("expected {}, got {other:?}", want.name()).into()),
    }
}
