//! The session harness: one real server over a real store in a temporary directory, driven
//! over an in-memory duplex by a scripted client, with every reply checked.
//!
//! A current-thread tokio runtime and a template data directory are built once per process
//! ([`harness`]); each run copies the template into a fresh directory on tmpfs and opens a
//! real [`Server`] on it, so every run starts from the same store (the same item ids) and
//! the same fresh rate limiters, and a crash reproduces from its input alone. The
//! runtime's clock is paused: a fuzzer-chosen
//! sleep or stall costs no real time, and the server's own timeouts (idle, frame budget,
//! slow frame, authentication, write) fire as soon as nothing else can run. tokio does not
//! advance a paused clock while a `spawn_blocking` task (SQLite, argon2, blob files) runs,
//! so storage work never looks slow.
//!
//! Before any run the harness plants secrets: alice sends bob a message, a mail and a file
//! that carry a random canary (`CANARY-SECRET-<hex>`) and bob's password, and bob sends
//! alice one. Runs log in as mallory, whose password is public, and the checks assert that
//! no reply byte ever contains the canary, any password, any stored argon2 hash or even the
//! prefix `$argon2`, that no reply names one of the planted foreign items, and that those
//! items are all still there after the run.
//!
//! # Input format
//!
//! Hand-parsed, so a captured session is a valid input as it is (one raw segment). Byte 0
//! holds flags (bit 0: log in as mallory first). Then operations, each an op byte (mod 6)
//! and its operands, until the input ends:
//!
//! | op | operands | action |
//! |---|---|---|
//! | 0 | u16 length, bytes | write the bytes as they are |
//! | 1 | u16 length, bytes | build a request from the bytes with `arbitrary` and write it |
//! | 2 | u8 | from now on write in pieces of this many bytes (0: whole) |
//! | 3 | u16 | sleep this many milliseconds before the next write |
//! | 4 | u8 recipient, u8 mode, u8 chunk, u16 length, bytes | a whole upload with the right digest, sent as a file or mail |
//! | 5 | u16 | stop reading replies for this many milliseconds |

use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Unstructured;
use bytes::BytesMut;
use rampart::config::Config;
use rampart::protocol::{
    encode_request, ErrorCode, Frame, Kind, Limits, Password, RawHeader, Reply, Request, Role,
    HEADER_LEN,
};
use rampart::server::auth::hash_password;
use rampart::server::{CloseReason, Server};
use rampart::store::{Blobs, ItemId, NewItem, UserId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::arb::{self, USER_NAMES};
use crate::checks::{contains_secret, decode_stream, server_stream, Incoming};

/// The fuzzed user.
pub const MALLORY: &str = "mallory";
/// Mallory's password; the only one the fuzzer knows.
pub const MALLORY_PASSWORD: &[u8] = b"mallory-fuzz-password";
/// Virtual time one run may take before it counts as a hang. A session only lives on while
/// the client keeps it busy, and an input of n bytes can keep it busy for at most n/3
/// sleeps of 65 s (about 25 hours for a 4 KiB input, libFuzzer's default size) — but a
/// session that waits on nothing hits this at once: the paused clock jumps straight to
/// it. So it can be long and still cost nothing.
const SESSION_LIMIT: Duration = Duration::from_secs(30 * 24 * 3600);
/// Buffer of the in-memory pipe, small so partial reads and back-pressure happen.
const PIPE_BYTES: usize = 8 * 1024;
/// A prefix every stored password hash has; no reply may contain it.
const ARGON2_PREFIX: &[u8] = b"$argon2";

/// What the client does, step by step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes, in pieces of the current split size.
    Write(Vec<u8>),
    /// Write in pieces of this many bytes from now on (0: whole writes).
    Split(usize),
    /// Sleep before the next write.
    Sleep(Duration),
    /// Stop reading replies for this long.
    Stall(Duration),
}

/// A server configuration with cheap argon2, small limits (so they are reachable from
/// small inputs) and short timeouts.
pub fn fuzz_config() -> Config {
    let mut c = Config::default();
    c.auth.argon2_memory_kib = 8;
    c.auth.argon2_iterations = 1;
    c.auth.argon2_parallelism = 1;
    let l = &mut c.limits;
    l.max_frame_bytes = 32 * 1024;
    l.max_message_bytes = 4096;
    l.max_mail_body_bytes = 8192;
    l.max_attachments = 4;
    l.max_file_bytes = 16 * 1024;
    l.user_quota_bytes = 256 * 1024;
    l.max_chunk_bytes = 2048;
    l.max_open_uploads = 4;
    l.max_inbox_page = 16;
    l.outbound_queue_bytes = 8 * 1024;
    let t = &mut c.timeouts;
    t.frame_budget_ms = 2_000;
    t.frame_grace_ms = 500;
    t.idle_ms = 5_000;
    t.auth_ms = 3_000;
    t.write_ms = 1_000;
    t.shutdown_grace_ms = 1_000;
    let r = &mut c.rates;
    r.frames_per_s_per_conn = 1_000;
    r.frames_burst_per_conn = 64;
    r.frames_per_s_per_ip = 1_000;
    r.frames_burst_per_ip = 128;
    r.frames_per_s_per_user = 1_000;
    r.frames_burst_per_user = 96;
    r.logins_per_min_per_ip = 60;
    r.logins_burst_per_ip = 8;
    r.logins_per_min_per_user = 60;
    r.logins_burst_per_user = 6;
    r.strikes_to_close = 16;
    c
}

/// Reads operands from the front of the input; missing bytes read as zero.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> u16 {
        let hi = self.u8().unwrap_or(0);
        let lo = self.u8().unwrap_or(0);
        u16::from_be_bytes([hi, lo])
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

/// Replaces every `$argon2` in bytes mallory sends, so that a reply echoing her own data
/// can never look like a leaked hash. (libFuzzer learns the string from the hash parser's
/// comparisons, so without this it would eventually send it to itself.)
pub fn scrub(bytes: &mut [u8]) {
    let n = ARGON2_PREFIX.len();
    let mut i = 0;
    while i + n <= bytes.len() {
        if bytes[i..i + n] == *ARGON2_PREFIX {
            bytes[i + n - 1] = b'X';
        }
        i += 1;
    }
}

fn encoded(request_id: u32, req: &Request) -> Vec<u8> {
    let mut buf = BytesMut::new();
    // Requests built here respect the protocol's limits, so encoding cannot fail; an empty
    // write is harmless if it somehow did.
    let _ = encode_request(request_id, req, &mut buf);
    buf.to_vec()
}

/// The AUTH frame that logs mallory in.
pub fn mallory_auth(request_id: u32) -> Vec<u8> {
    encoded(
        request_id,
        &Request::Auth {
            user: MALLORY.into(),
            password: Password(MALLORY_PASSWORD.to_vec().into()),
        },
    )
}

/// The frames of a whole upload of `data` (begin, chunks, end with the right digest) and
/// its delivery to `to`: as a file (mode 0), as a mail attachment (mode 1), or not at all
/// (mode 2, the upload stays open).
pub fn upload_frames(
    first_id: u32,
    upload_id: u32,
    to: &str,
    mode: u8,
    chunk: usize,
    data: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut id = first_id;
    let mut next = || {
        id = id.wrapping_add(1);
        id
    };
    out.extend(encoded(
        next(),
        &Request::UploadBegin {
            name: format!("upload-{upload_id}.bin"),
            size: data.len() as u64,
        },
    ));
    let mut offset = 0u64;
    for piece in data.chunks(chunk.max(1)) {
        out.extend(encoded(
            next(),
            &Request::UploadChunk {
                upload_id,
                offset,
                data: piece.to_vec().into(),
            },
        ));
        offset += piece.len() as u64;
    }
    out.extend(encoded(
        next(),
        &Request::UploadEnd {
            upload_id,
            digest: *blake3::hash(data).as_bytes(),
        },
    ));
    match mode % 3 {
        0 => out.extend(encoded(
            next(),
            &Request::SendFile {
                to: to.into(),
                upload_id,
            },
        )),
        1 => out.extend(encoded(
            next(),
            &Request::SendMail {
                to: to.into(),
                subject: "attached".into(),
                body: "see the attachment".into(),
                attachments: vec![upload_id],
            },
        )),
        _ => {}
    }
    out
}

/// Turns a fuzz input into the client's actions (see the module docs for the format).
pub fn parse_input(data: &[u8], limits: &Limits) -> Vec<Action> {
    let mut input = Input(data);
    let mut actions = Vec::new();
    let mut request_id = 1u32;
    // The server numbers a session's uploads 1, 2, ...; predict the ids the upload
    // operation will get (a refused UPLOAD_BEGIN makes the guess wrong, which is fine).
    let mut next_upload = 1u32;
    if input.u8().unwrap_or(0) & 1 == 1 {
        actions.push(Action::Write(mallory_auth(request_id)));
    }
    while let Some(op) = input.u8() {
        match op % 6 {
            0 => {
                let n = usize::from(input.u16());
                actions.push(Action::Write(input.bytes(n).to_vec()));
            }
            1 => {
                let n = usize::from(input.u16());
                let mut u = Unstructured::new(input.bytes(n));
                if let Ok(req) = arb::request(&mut u, limits) {
                    if matches!(req, Request::UploadBegin { .. }) {
                        next_upload = next_upload.wrapping_add(1);
                    }
                    request_id = request_id.wrapping_add(1);
                    actions.push(Action::Write(encoded(request_id, &req)));
                }
            }
            2 => actions.push(Action::Split(usize::from(input.u8().unwrap_or(0)))),
            3 => actions.push(Action::Sleep(Duration::from_millis(u64::from(input.u16())))),
            4 => {
                let to = USER_NAMES[usize::from(input.u8().unwrap_or(0)) % USER_NAMES.len()];
                let mode = input.u8().unwrap_or(0);
                let chunk = usize::from(input.u8().unwrap_or(0)).max(1) * 16;
                let n = usize::from(input.u16());
                let mut data = input.bytes(n).to_vec();
                scrub(&mut data);
                let frames = upload_frames(request_id, next_upload, to, mode, chunk, &data);
                request_id = request_id.wrapping_add(64);
                next_upload = next_upload.wrapping_add(1);
                actions.push(Action::Write(frames));
            }
            _ => actions.push(Action::Stall(Duration::from_millis(u64::from(input.u16())))),
        }
    }
    for a in &mut actions {
        if let Action::Write(bytes) = a {
            scrub(bytes);
        }
    }
    actions
}

/// What one run saw.
#[derive(Debug)]
pub struct Transcript {
    /// The bytes the client managed to write.
    pub sent: Vec<u8>,
    /// Every byte the server sent back.
    pub received: Vec<u8>,
    /// How the session ended: None if it outlived [`SESSION_LIMIT`] (a hang).
    pub reason: Option<CloseReason>,
}

/// The runtime, the template store and what was planted in it.
pub struct Harness {
    rt: tokio::runtime::Runtime,
    limits: Limits,
    config: Config,
    /// Bytes no reply may ever contain.
    secrets: Vec<Vec<u8>>,
    /// Planted items of other users, with their owners: mallory must never see or touch
    /// them.
    foreign: Vec<(UserId, ItemId)>,
    /// The data directory every run starts from.
    template: tempfile::TempDir,
}

/// One run's server, on its own copy of the template.
pub struct Run {
    server: Server,
    _dir: tempfile::TempDir,
}

static HARNESS: OnceLock<Harness> = OnceLock::new();

/// The process-wide harness, built on first use.
pub fn harness() -> &'static Harness {
    HARNESS.get_or_init(|| Harness::new().unwrap_or_else(|e| panic!("harness setup: {e}")))
}

/// 32 hex characters that nothing in the fuzz input can know: blake3 of the clock, the
/// process id and an address.
fn random_hex(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = blake3::Hasher::new();
    h.update(&nanos.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&(tag as *const str as *const u8 as usize).to_le_bytes());
    h.update(tag.as_bytes());
    h.finalize().to_hex()[..32].to_string()
}

/// Scratch directories are named `rampart-fuzz-<pid>-...`, so a later process can tell
/// whose they are.
fn scratch_prefix() -> String {
    format!("rampart-fuzz-{}-", std::process::id())
}

/// A scratch directory, on tmpfs when there is one: every delivery fsyncs, and fsync on
/// tmpfs is free.
fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new()
            .prefix(&scratch_prefix())
            .tempdir_in(shm)
        {
            return Ok(dir);
        }
    }
    tempfile::Builder::new().prefix(&scratch_prefix()).tempdir()
}

/// Removes the scratch directories of fuzz processes that have exited. libFuzzer ends a
/// process with `exit`, which never drops the process-wide template (or the run that
/// crashed), so each process would otherwise leave one behind.
fn remove_stale_scratch() {
    // Liveness is read from /proc; without it (not Linux), leave everything alone.
    if !Path::new("/proc/self").exists() {
        return;
    }
    for parent in [Path::new("/dev/shm").to_path_buf(), std::env::temp_dir()] {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("rampart-fuzz-")) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !Path::new("/proc").join(pid.to_string()).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Copies a directory tree (the store's database and blob files).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Runs `f` again while it fails with `Interrupted`, up to a bound. libFuzzer's `-timeout`
/// alarm (SIGALRM, whose handler is installed without `SA_RESTART`) interrupts whatever
/// system call is running, and `std::fs::copy` passes the EINTR of `copy_file_range` on
/// instead of retrying. `copy_tree` and `scratch_dir` may safely run twice.
fn retry_interrupted<T>(mut f: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    for _ in 0..100 {
        match f() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
    f()
}

impl Harness {
    fn new() -> Result<Harness, Box<dyn std::error::Error>> {
        remove_stale_scratch();
        let dir = scratch_dir()?;
        let config = fuzz_config();
        let server = Server::open(config.clone(), dir.path())?;
        let blobs = Blobs::in_dir(dir.path())?;
        let store = server.store();
        let canary = format!("CANARY-SECRET-{}", random_hex("canary"));
        let bob_pw = format!("bob-{}", random_hex("bob"));
        let alice_pw = format!("alice-{}", random_hex("alice"));
        let mut users = Vec::new();
        let mut secrets = vec![
            canary.clone().into_bytes(),
            bob_pw.clone().into_bytes(),
            alice_pw.clone().into_bytes(),
            ARGON2_PREFIX.to_vec(),
        ];
        for (name, pw) in [
            (MALLORY, MALLORY_PASSWORD.to_vec()),
            ("bob", bob_pw.clone().into_bytes()),
            ("alice", alice_pw.into_bytes()),
        ] {
            let hash = hash_password(&config.auth, &pw)?;
            users.push(store.add_user(name, &hash)?);
            secrets.push(hash.into_bytes());
        }
        let (mallory, bob, alice) = (users[0], users[1], users[2]);
        let quota = config.limits.user_quota_bytes;
        let file = |content: &[u8], name: &str| -> Result<_, rampart::store::StoreError> {
            let mut staged = blobs.stage()?;
            staged.append(content)?;
            staged.commit(name)
        };
        let secret_file = file(format!("{canary} bob's file").as_bytes(), "diary.txt")?;
        let to_bob = [
            store.deliver(
                alice,
                bob,
                NewItem::Message {
                    text: format!("{canary} for bob only"),
                },
                quota,
            )?,
            store.deliver(
                alice,
                bob,
                NewItem::Mail {
                    subject: format!("{canary} subject"),
                    body: format!("bob, your password is {bob_pw}"),
                    attachments: vec![file(canary.as_bytes(), "secret.txt")?],
                },
                quota,
            )?,
            store.deliver(alice, bob, NewItem::File(secret_file), quota)?,
        ];
        let foreign_alice = store.deliver(
            bob,
            alice,
            NewItem::Message {
                text: format!("{canary} for alice only"),
            },
            quota,
        )?;
        let mut foreign: Vec<(UserId, ItemId)> = to_bob.iter().map(|&i| (bob, i)).collect();
        foreign.push((alice, foreign_alice));
        // Mallory's own: something to fetch, download and delete from the first frame on.
        store.deliver(
            alice,
            mallory,
            NewItem::Message {
                text: "hello mallory".into(),
            },
            quota,
        )?;
        store.deliver(
            alice,
            mallory,
            NewItem::File(file(b"welcome to rampart", "welcome.txt")?),
            quota,
        )?;
        drop(store);
        drop(server);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()?;
        Ok(Harness {
            rt,
            limits: config.limits.protocol(),
            config,
            secrets,
            foreign,
            template: dir,
        })
    }

    /// A fresh server on a fresh copy of the template store.
    pub fn start(&self) -> Run {
        let dir = retry_interrupted(scratch_dir).unwrap_or_else(|e| panic!("scratch dir: {e}"));
        retry_interrupted(|| copy_tree(self.template.path(), dir.path()))
            .unwrap_or_else(|e| panic!("copy: {e}"));
        let server =
            Server::open(self.config.clone(), dir.path()).unwrap_or_else(|e| panic!("server: {e}"));
        Run { server, _dir: dir }
    }

    /// The protocol limits the server enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The server configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs one session: the client performs `actions` while reading every reply, the
    /// server serves it to its end. Each run comes from a fresh source address.
    pub fn run(&self, run: &Run, actions: &[Action]) -> Transcript {
        let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), 40_000);
        self.rt.block_on(async {
            let (client, server_io) = tokio::io::duplex(PIPE_BYTES);
            let (mut rd, mut wr) = tokio::io::split(client);
            let stall_until: Cell<Option<Instant>> = Cell::new(None);
            let sent = std::cell::RefCell::new(Vec::new());
            let writer = async {
                let mut split = 0usize;
                'actions: for a in actions {
                    match a {
                        Action::Write(bytes) => {
                            let piece = if split == 0 {
                                bytes.len().max(1)
                            } else {
                                split
                            };
                            for chunk in bytes.chunks(piece) {
                                let mut rest = chunk;
                                while !rest.is_empty() {
                                    match wr.write(rest).await {
                                        Ok(0) | Err(_) => break 'actions,
                                        Ok(k) => {
                                            sent.borrow_mut().extend_from_slice(&rest[..k]);
                                            rest = &rest[k..];
                                        }
                                    }
                                }
                            }
                        }
                        Action::Split(s) => split = *s,
                        Action::Sleep(d) => tokio::time::sleep(*d).await,
                        Action::Stall(d) => stall_until.set(Some(Instant::now() + *d)),
                    }
                }
                let _ = wr.shutdown().await;
            };
            let reader = async {
                let mut received = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    if let Some(until) = stall_until.take() {
                        tokio::time::sleep_until(until).await;
                    }
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => received.extend_from_slice(&buf[..k]),
                    }
                }
                received
            };
            let serve = run.server.serve_connection(server_io, peer);
            // The session is over when the server has finished and the client has read
            // everything; a client still sleeping through its script then stops.
            let ended = async { tokio::join!(serve, reader) };
            let session = async {
                let mut writer = std::pin::pin!(writer);
                let mut ended = std::pin::pin!(ended);
                tokio::select! {
                    (outcome, received) = &mut ended => (outcome, received),
                    () = &mut writer => ended.await,
                }
            };
            match tokio::time::timeout(SESSION_LIMIT, session).await {
                Ok((outcome, received)) => Transcript {
                    sent: sent.take(),
                    received,
                    reason: Some(outcome.unwrap_or_else(|r| panic!("connection refused: {r}"))),
                },
                Err(_) => Transcript {
                    sent: sent.take(),
                    received: Vec::new(),
                    reason: None,
                },
            }
        })
    }

    /// Checks everything a run must guarantee; panics naming the broken invariant.
    pub fn check(&self, run: &Run, t: &Transcript) {
        let reason = t.reason.expect("the session hung past its time limit");
        assert_ne!(reason, CloseReason::Panic, "a connection task panicked");
        let panics = run.server.metrics().snapshot().panics;
        assert_eq!(panics, 0, "the server counted a panic");
        for secret in &self.secrets {
            assert!(
                !contains_secret(&t.received, secret),
                "a reply leaked a secret ({} bytes starting {:?})",
                secret.len(),
                String::from_utf8_lossy(&secret[..secret.len().min(8)])
            );
        }
        let replies = decode_stream(&t.received, Role::Client, &self.limits);
        assert_eq!(
            replies.error, None,
            "the server sent an invalid frame header"
        );
        if reason != CloseReason::WriteTimeout {
            // Only a write timeout may cut a reply short (the client stopped reading).
            assert_eq!(replies.remainder, 0, "the reply stream ends inside a frame");
        }
        // The requests as the server reads them: an oversized frame within the frame
        // ceiling is skipped and answered ERROR too_large with its own id, then reading
        // goes on.
        let requests = server_stream(&t.sent, &self.limits);
        // The request id of the frame the server was still reading when the stream ended:
        // a valid header at the start of the undecoded remainder.
        let pending_id = t
            .sent
            .len()
            .checked_sub(requests.remainder)
            .filter(|_| requests.error.is_none())
            .and_then(|start| t.sent.get(start..))
            .and_then(|rest| rest.first_chunk::<HEADER_LEN>())
            .map(|header| RawHeader::parse(header).request_id);
        let last = replies.frames.len().saturating_sub(1);
        for (i, frame) in replies.frames.iter().enumerate() {
            let reply = Reply::decode(frame, &self.limits)
                .unwrap_or_else(|e| panic!("reply {i} does not decode: {e}"));
            crate::checks::check_body(frame, &self.limits);
            let too_large = matches!(
                reply,
                Reply::Error {
                    code: ErrorCode::TooLarge,
                    ..
                }
            );
            match requests.incoming.get(i) {
                Some(Incoming::Frame(req)) if req.request_id == frame.request_id => {
                    self.check_pair(req, &reply)
                }
                Some(Incoming::Oversized { request_id, .. })
                    if *request_id == frame.request_id && too_large => {}
                // Before login a frame over `limits.preauth_frame_bytes` is refused from its
                // header with its own id and the connection closes: an oversized frame of a
                // non-login kind then gets not_authenticated, as the last reply.
                Some(Incoming::Oversized { request_id, .. })
                    if *request_id == frame.request_id
                        && i == last
                        && matches!(
                            reply,
                            Reply::Error {
                                code: ErrorCode::NotAuthenticated,
                                ..
                            }
                        ) => {}
                next => {
                    // Not the answer to request i: only the closing error may be that.
                    assert_eq!(
                        i, last,
                        "reply {i} ({reply:?}) does not answer {next:?}, in order"
                    );
                    let Reply::Error { code, .. } = reply else {
                        panic!("an unsolicited reply that is not an error: {reply:?}");
                    };
                    // Before login a header over `limits.preauth_frame_bytes` is refused
                    // with its own id (any id, 0 included) as soon as the header is in, body
                    // or not, and the connection closes: the last reply may answer the frame
                    // still pending after every answered one, never completed.
                    if matches!(code, ErrorCode::NotAuthenticated | ErrorCode::TooLarge)
                        && i == requests.incoming.len()
                        && pending_id == Some(frame.request_id)
                    {
                        self.check_no_foreign(&reply);
                        continue;
                    }
                    assert_eq!(frame.request_id, 0, "a closing reply carries id 0");
                    assert!(
                        matches!(
                            code,
                            ErrorCode::BadFrame | ErrorCode::Timeout | ErrorCode::ShuttingDown
                        ),
                        "unexpected closing error {code:?}"
                    );
                }
            }
            self.check_no_foreign(&reply);
        }
        let store = run.server.store();
        for &(owner, id) in &self.foreign {
            let item = store
                .item(owner, id)
                .unwrap_or_else(|e| panic!("store: {e}"));
            assert!(item.is_some(), "planted item {id} of user {owner} is gone");
        }
    }

    /// A reply to a request must be an error or the request's own success kind, and must
    /// be about what was asked.
    fn check_pair(&self, req: &Frame, reply: &Reply) {
        let expected = match req.kind {
            Kind::Auth => Kind::AuthOk,
            Kind::Ping => Kind::Pong,
            Kind::SendMessage | Kind::SendFile | Kind::SendMail => Kind::Accepted,
            Kind::UploadBegin => Kind::UploadReady,
            Kind::UploadChunk => Kind::ChunkOk,
            Kind::UploadEnd => Kind::UploadDone,
            Kind::ListInbox => Kind::Inbox,
            Kind::Fetch => Kind::Item,
            Kind::Download => Kind::Data,
            Kind::Delete | Kind::Bye => Kind::Ok,
            Kind::Ticket => Kind::TicketOk,
            Kind::Resume => Kind::AuthOk,
            other => panic!("the server decoded a {other:?} frame"),
        };
        if let Reply::Error { .. } = reply {
            return;
        }
        assert_eq!(
            reply.kind(),
            expected,
            "a {:?} request got {reply:?}",
            req.kind
        );
        let Ok(request) = Request::decode(req, &self.limits) else {
            panic!("a request whose body does not decode succeeded: {reply:?}");
        };
        match (&request, reply) {
            (Request::Auth { user, .. }, Reply::AuthOk { user: who }) => {
                assert_eq!(
                    who, MALLORY,
                    "logged in as someone whose password is secret"
                );
                assert_eq!(user, who, "AUTH_OK names another user");
            }
            (Request::Fetch { item_id }, Reply::Item(view)) => {
                assert_eq!(view.id, *item_id, "FETCH returned another item");
            }
            (
                Request::Download {
                    item_id,
                    part,
                    offset,
                    max_len,
                },
                Reply::Data {
                    item_id: got,
                    part: got_part,
                    offset: got_offset,
                    total,
                    data,
                },
            ) => {
                assert_eq!((got, got_part, got_offset), (item_id, part, offset));
                let cap = (*max_len).min(self.limits.max_chunk_bytes) as usize;
                assert!(data.len() <= cap, "DATA longer than asked or allowed");
                assert!(
                    offset.saturating_add(data.len() as u64) <= *total,
                    "DATA past the end"
                );
            }
            (Request::ListInbox { after, limit }, Reply::Inbox { entries }) => {
                let max = usize::from(self.limits.max_inbox_page);
                let cap = if *limit == 0 {
                    max
                } else {
                    usize::from(*limit).min(max)
                };
                assert!(entries.len() <= cap, "inbox page over its limit");
                let mut prev = *after;
                for e in entries {
                    assert!(e.id > prev, "inbox ids not ascending after `after`");
                    prev = e.id;
                }
            }
            (Request::Delete { item_id }, Reply::Ok) => {
                assert!(
                    !self.is_foreign(*item_id),
                    "mallory deleted another user's item {item_id}"
                );
            }
            _ => {}
        }
    }

    /// No reply may name a planted item of another user.
    fn check_no_foreign(&self, reply: &Reply) {
        let ids: Vec<u64> = match reply {
            Reply::Item(v) => vec![v.id],
            Reply::Data { item_id, .. } => vec![*item_id],
            Reply::Inbox { entries } => entries.iter().map(|e| e.id).collect(),
            _ => Vec::new(),
        };
        for id in ids {
            assert!(
                !self.is_foreign(id),
                "mallory received another user's item {id}"
            );
        }
    }

    fn is_foreign(&self, id: ItemId) -> bool {
        self.foreign.iter().any(|&(_, f)| f == id)
    }

    /// Parses, runs and checks one fuzz input on a fresh server.
    pub fn fuzz_one(&self, data: &[u8]) {
        let actions = parse_input(data, &self.limits);
        let run = self.start();
        let t = self.run(&run, &actions);
        self.check(&run, &t);
    }
}
