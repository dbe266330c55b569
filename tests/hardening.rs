//! Every hardening point of the server, attacked for real: a server on 127.0.0.1:0, attackers
//! speaking raw frames from their own 127.0.x.y source addresses, and after each attack a
//! legitimate client from another address proving the server still serves.
//!
//! The rule-based firewall is switched off in these tests (`config()`), so each test sees the
//! defence it is about (limits, timeouts, rate limiters, the guard) and not a block the
//! firewall decided on its own. Every test is bounded (`within`), time margins are wide, and
//! random bytes come from a printed seed (`RAMPART_TEST_SEED` overrides it).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use rampart::client::{Client, ClientError, ClientOptions};
use rampart::config::Config;
use rampart::protocol::{
    decode_frame, encode_request, ErrorCode, ItemBody, Kind, Limits, Password, Reply, Request, Role,
};
use rampart::server::Server;

use common::{
    eventually, header, random_bytes, refused, rng, start, start_server_with, test_config, within,
    TestError, TestResult, TestServer,
};

/// 127.0.a.b, a loopback source address of its own.
fn ip(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, a, b))
}

/// The test defaults (cheap argon2) with the firewall off and session timeouts long enough
/// never to fire unless a test shortens them.
fn config() -> Config {
    let mut c = test_config();
    c.firewall.enabled = false;
    c.timeouts.auth_ms = 20_000;
    c.timeouts.idle_ms = 20_000;
    c
}

/// True for an ERROR reply with `code`.
fn is_error(reply: &Reply, want: ErrorCode) -> bool {
    matches!(reply, Reply::Error { code, .. } if *code == want)
}

/// The message of an ERROR reply with `code`, or a failure.
fn error_message(reply: &(u32, Reply), id: u32, want: ErrorCode) -> Result<String, TestError> {
    match reply {
        (got, Reply::Error { code, message }) if *got == id && *code == want => Ok(message.clone()),
        other => Err(format!("expected ERROR {} with id {id}, got {other:?}", want.name()).into()),
    }
}

/// The store's id of a test user.
fn user_id(server: &TestServer, name: &str) -> Result<i64, TestError> {
    Ok(server
        .handle
        .server()
        .store()
        .user_id(name)?
        .ok_or("test user exists")?)
}

/// A legitimate user from its own address proves the server still serves: login, ping, send.
async fn still_serves(server: &TestServer, from: IpAddr) -> TestResult {
    let mut mallory = server.login_from("mallory", Some(from)).await;
    mallory.ping().await?;
    mallory.send_message("mallory", "still serving").await?;
    Ok(())
}

/// Encodes one request frame.
fn frame(id: u32, req: &Request) -> Result<Vec<u8>, TestError> {
    let mut out = BytesMut::new();
    encode_request(id, req, &mut out)?;
    Ok(out.to_vec())
}

fn auth(user: &str, password: &str) -> Request {
    Request::Auth {
        user: user.into(),
        password: Password(Bytes::copy_from_slice(password.as_bytes())),
    }
}

/// A raw frame: header plus payload.
fn raw_frame(kind: Kind, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = header(
        kind as u8,
        id,
        0,
        u32::try_from(payload.len()).unwrap_or(u32::MAX),
    );
    f.extend_from_slice(payload);
    f
}

/// Whether `haystack` contains `needle`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A raw connection that keeps its partial input between reads and every byte it received,
/// and checks on every read that no password hash ever crosses the wire.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    seen: Vec<u8>,
    closed: bool,
}

impl Raw {
    async fn connect(addr: SocketAddr, source: IpAddr) -> std::io::Result<Raw> {
        Ok(Raw::from(common::raw_connect(addr, Some(source)).await?))
    }

    fn from(stream: TcpStream) -> Raw {
        Raw {
            stream,
            buf: BytesMut::new(),
            seen: Vec::new(),
            closed: false,
        }
    }

    /// Writes bytes, ignoring errors (the server may already have closed).
    async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    async fn request(&mut self, id: u32, req: &Request) -> TestResult {
        let f = frame(id, req)?;
        self.send(&f).await;
        Ok(())
    }

    fn decoded(&mut self, out: &mut Vec<(u32, Reply)>) -> TestResult {
        while let Some(f) = decode_frame(&mut self.buf, &Limits::default(), Role::Client)? {
            out.push((f.request_id, Reply::decode(&f, &Limits::default())?));
        }
        Ok(())
    }

    /// Reads until `n` replies arrived, the server closed, or `limit` passed.
    async fn replies(&mut self, n: usize, limit: Duration) -> Result<Vec<(u32, Reply)>, TestError> {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        let mut tmp = vec![0u8; 64 * 1024];
        self.decoded(&mut out)?;
        while out.len() < n && !self.closed {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut tmp)).await {
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(k)) => {
                    self.buf.extend_from_slice(&tmp[..k]);
                    self.seen.extend_from_slice(&tmp[..k]);
                    assert!(
                        !contains(&self.seen, b"$argon2"),
                        "a reply carried a password hash"
                    );
                }
                Err(_) => break,
            }
            self.decoded(&mut out)?;
        }
        Ok(out)
    }

    /// Reads until the server closes or `limit` passes; returns the replies and whether the
    /// connection was closed.
    async fn until_closed(
        &mut self,
        limit: Duration,
    ) -> Result<(Vec<(u32, Reply)>, bool), TestError> {
        let replies = self.replies(usize::MAX, limit).await?;
        Ok((replies, self.closed))
    }

    /// One reply, expected within 10 s.
    async fn one(&mut self) -> Result<(u32, Reply), TestError> {
        self.replies(1, Duration::from_secs(10))
            .await?
            .pop()
            .ok_or_else(|| format!("no reply (closed: {})", self.closed).into())
    }

    /// Authenticates with request id 1.
    async fn login(&mut self, user: &str, password: &str) -> TestResult {
        self.request(1, &auth(user, password)).await?;
        match self.one().await? {
            (1, Reply::AuthOk { .. }) => Ok(()),
            other => Err(format!("login failed: {other:?}").into()),
        }
    }
}

/// Every file under `dir`, recursively, relative to it.
fn files_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap_or(&path).to_path_buf());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Committed blob files (`blobs/<shard>/<id>`), not counting staging files.
fn committed_blobs(data_dir: &Path) -> std::io::Result<usize> {
    Ok(files_under(&data_dir.join("blobs"))?
        .iter()
        .filter(|p| !p.starts_with("tmp"))
        .count())
}

/// Files in `blobs/tmp` (uploads in progress).
fn staged_files(data_dir: &Path) -> std::io::Result<usize> {
    Ok(std::fs::read_dir(data_dir.join("blobs").join("tmp"))?.count())
}

// ---------------------------------------------------------------------------------------
// 1. Everything is bounded.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_gib_length_header_is_refused_without_allocating() -> TestResult {
    within(async {
        let server = start_server_with(config()).await;
        for (n, kind) in [Kind::SendMessage, Kind::UploadChunk, Kind::Auth, Kind::Ping]
            .into_iter()
            .enumerate()
        {
            let mut raw = Raw::connect(server.addr, ip(10, 1 + n as u8)).await?;
            raw.send(&header(kind as u8, 7, 0, u32::MAX)).await;
            let (replies, closed) = raw.until_closed(Duration::from_secs(5)).await?;
            assert!(closed, "{kind:?}: the server closes after a fatal header");
            assert_eq!(replies.len(), 1, "{kind:?}: {replies:?}");
            error_message(&replies[0], 0, ErrorCode::BadFrame)?;
        }
        let m = server.handle.metrics().snapshot();
        assert_eq!(m.decode_errors.get("frame_too_large"), Some(&4), "{m:?}");
        still_serves(&server, ip(10, 100)).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_is_a_bad_frame_and_the_connection_goes_on() -> TestResult {
    within(async {
        let mut cfg = config();
        cfg.limits.max_message_bytes = 1000;
        let server = start_server_with(cfg).await;
        let mut alice = server.login_from("alice", Some(ip(10, 10))).await;
        let mut bob = server.login_from("bob", Some(ip(10, 11))).await;

        // 1,001 bytes of text fit in the SEND_MESSAGE frame limit (the recipient field has
        // room for 32 bytes) but not in the text limit.
        let too_long = alice
            .call(Request::SendMessage {
                to: "bob".into(),
                text: "x".repeat(1001),
            })
            .await;
        let message = refused(too_long, ErrorCode::BadFrame)?;
        assert!(message.contains("text"), "{message}");
        // The reply carried the request's id (an id-0 error would have closed the client).
        assert!(!alice.is_closed());
        alice.ping().await?;
        let ok = alice.send_message("bob", &"y".repeat(1000)).await?;

        let inbox = bob.inbox().await?;
        assert_eq!(inbox.iter().map(|e| e.id).collect::<Vec<_>>(), [ok]);
        let m = server.handle.metrics().snapshot();
        assert_eq!(m.decode_errors.get("field_too_long"), Some(&1));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_the_file_limit_is_too_large() -> TestResult {
    within(async {
        let mut cfg = config();
        cfg.limits.max_file_bytes = 1024 * 1024;
        let server = start_server_with(cfg).await;
        let mut alice = server.login_from("alice", Some(ip(10, 20))).await;

        for size in [1024 * 1024 + 1, u64::MAX / 2, u64::MAX] {
            let begin = alice
                .call(Request::UploadBegin {
                    name: "big.bin".into(),
                    size,
                })
                .await;
            refused(begin, ErrorCode::TooLarge)?;
        }
        assert_eq!(staged_files(server.dir.path())?, 0, "nothing staged");

        // Exactly the limit is fine; a chunk past the declared size aborts the upload.
        let ready = alice
            .call(Request::UploadBegin {
                name: "ok.bin".into(),
                size: 10,
            })
            .await?;
        let Reply::UploadReady { upload_id, .. } = ready else {
            return Err(format!("expected UPLOAD_READY, got {ready:?}").into());
        };
        let over = alice
            .call(Request::UploadChunk {
                upload_id,
                offset: 0,
                data: Bytes::from(vec![0u8; 11]),
            })
            .await;
        refused(over, ErrorCode::TooLarge)?;
        let gone = alice
            .call(Request::UploadChunk {
                upload_id,
                offset: 0,
                data: Bytes::from(vec![0u8; 10]),
            })
            .await;
        refused(gone, ErrorCode::NotFound)?;
        let full = vec![7u8; 1024 * 1024];
        alice.send_file_bytes("bob", "max.bin", &full).await?;
        assert!(
            eventually(Duration::from_secs(5), || staged_files(server.dir.path())
                .is_ok_and(|n| n == 0))
            .await
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_is_enforced_and_nothing_over_it_is_stored() -> TestResult {
    within(async {
        let mut rng = rng(0x0007_A000);
        let quota: u64 = 1024 * 1024;
        let mut cfg = config();
        cfg.limits.user_quota_bytes = quota;
        cfg.limits.max_file_bytes = quota;
        let server = start_server_with(cfg).await;
        let store = server.handle.server().store();
        let alice_id = user_id(&server, "alice")?;
        let mut alice = server.login_from("alice", Some(ip(10, 30))).await;
        let mut bob = server.login_from("bob", Some(ip(10, 31))).await;

        // Each item costs its size plus ITEM_OVERHEAD_BYTES: the file and one message.
        let overhead = rampart::store::ITEM_OVERHEAD_BYTES;
        let file = random_bytes(&mut rng, usize::try_from(quota - 10 - 2 * overhead)?);
        alice.send_file_bytes("bob", "most.bin", &file).await?;
        // 11 more bytes would pass the quota; 10 reach it exactly.
        refused(
            alice.send_message("bob", "01234567890").await,
            ErrorCode::QuotaExceeded,
        )?;
        refused(
            alice.send_mail_with("bob", "0123456789", "x", &[]).await,
            ErrorCode::QuotaExceeded,
        )?;
        alice.send_message("bob", "0123456789").await?;
        assert_eq!(store.usage(alice_id)?, quota);
        // Even one byte is refused at UPLOAD_BEGIN, before anything is staged.
        refused(
            alice
                .call(Request::UploadBegin {
                    name: "one.bin".into(),
                    size: 1,
                })
                .await,
            ErrorCode::QuotaExceeded,
        )?;
        assert_eq!(staged_files(server.dir.path())?, 0);
        assert_eq!(
            bob.inbox().await?.len(),
            2,
            "nothing over the quota was stored"
        );
        assert_eq!(committed_blobs(server.dir.path())?, 1);
        // Other users have their own quota.
        bob.send_message("alice", "bob's own quota").await?;

        // Deleting frees the quota; uploads staged in a session count against it.
        for e in bob.inbox().await? {
            bob.delete(e.id).await?;
        }
        assert_eq!(store.usage(alice_id)?, 0);
        alice
            .call(Request::UploadBegin {
                name: "a.bin".into(),
                size: 600 * 1024,
            })
            .await?;
        refused(
            alice
                .call(Request::UploadBegin {
                    name: "b.bin".into(),
                    size: 600 * 1024,
                })
                .await,
            ErrorCode::QuotaExceeded,
        )?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_messages_are_answered_in_order_each_as_if_sent_alone() -> TestResult {
    within(async {
        // 30 bytes of quota and three items' overhead: the messages below use 10, then 10
        // more, then 20 would pass it.
        let quota = 30 + 3 * rampart::store::ITEM_OVERHEAD_BYTES;
        let mut cfg = config();
        cfg.limits.user_quota_bytes = quota;
        cfg.limits.max_file_bytes = 30;
        let server = start_server_with(cfg).await;
        let alice_id = user_id(&server, "alice")?;
        let mut alice = Raw::connect(server.addr, ip(10, 35)).await?;
        alice.login("alice", "alice-pw").await?;
        let send = |to: &str, text: &str| Request::SendMessage {
            to: to.into(),
            text: text.into(),
        };
        // One write: the server finds every frame in its buffer at once and batches the
        // messages between the other requests.
        let mut burst = Vec::new();
        burst.extend(frame(2, &send("bob", "aaaaaaaaaa"))?);
        burst.extend(frame(3, &send("nobody", "x"))?);
        burst.extend(frame(4, &Request::Ping)?);
        burst.extend(frame(5, &send("bob", "bbbbbbbbbb"))?);
        burst.extend(frame(6, &send("bob", "cccccccccccccccccccc"))?);
        burst.extend(raw_frame(Kind::SendMessage, 7, &[0xff]));
        burst.extend(frame(8, &send("bob", "dddddddddd"))?);
        alice.send(&burst).await;
        let replies = alice.replies(7, Duration::from_secs(10)).await?;
        let ids: Vec<u32> = replies.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [2, 3, 4, 5, 6, 7, 8], "{replies:?}");
        let accepted: Vec<u64> = replies
            .iter()
            .filter_map(|(_, r)| match r {
                Reply::Accepted { item_id } => Some(*item_id),
                _ => None,
            })
            .collect();
        assert_eq!(accepted.len(), 3, "{replies:?}");
        assert!(accepted.windows(2).all(|w| w[0] < w[1]), "{accepted:?}");
        assert!(
            matches!(replies[0].1, Reply::Accepted { .. }),
            "{replies:?}"
        );
        assert!(
            is_error(&replies[1].1, ErrorCode::UnknownRecipient),
            "{replies:?}"
        );
        assert_eq!(replies[2].1, Reply::Pong);
        assert!(
            matches!(replies[3].1, Reply::Accepted { .. }),
            "{replies:?}"
        );
        assert!(
            is_error(&replies[4].1, ErrorCode::QuotaExceeded),
            "{replies:?}"
        );
        assert!(is_error(&replies[5].1, ErrorCode::BadFrame), "{replies:?}");
        assert!(
            matches!(replies[6].1, Reply::Accepted { .. }),
            "{replies:?}"
        );

        let store = server.handle.server().store();
        assert_eq!(store.usage(alice_id)?, quota);
        let mut bob = server.login_from("bob", Some(ip(10, 36))).await;
        let inbox = bob.inbox().await?;
        assert_eq!(inbox.iter().map(|e| e.id).collect::<Vec<_>>(), accepted);
        let mut texts = Vec::new();
        for id in accepted {
            match bob.fetch(id).await?.body {
                ItemBody::Message { text } => texts.push(text),
                other => return Err(format!("item {id} is {other:?}").into()),
            }
        }
        assert_eq!(texts, ["aaaaaaaaaa", "bbbbbbbbbb", "dddddddddd"]);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_uploads_per_session_are_capped() -> TestResult {
    within(async {
        let mut cfg = config();
        cfg.limits.max_open_uploads = 2;
        let server = start_server_with(cfg).await;
        let mut alice = server.login_from("alice", Some(ip(10, 40))).await;
        let begin = |name: &str| Request::UploadBegin {
            name: name.into(),
            size: 100,
        };
        let first = alice.call(begin("1")).await?;
        assert!(
            matches!(first, Reply::UploadReady { upload_id: 1, .. }),
            "{first:?}"
        );
        alice.call(begin("2")).await?;
        let message = refused(alice.call(begin("3")).await, ErrorCode::TooLarge)?;
        assert!(message.contains("at most 2 uploads"), "{message}");
        assert_eq!(staged_files(server.dir.path())?, 2);

        // An error aborts an upload and frees its slot.
        let wrong_offset = alice
            .call(Request::UploadChunk {
                upload_id: 1,
                offset: 5,
                data: Bytes::from_static(b"abc"),
            })
            .await;
        refused(wrong_offset, ErrorCode::BadRequest)?;
        let third = alice.call(begin("3")).await?;
        assert!(
            matches!(third, Reply::UploadReady { upload_id: 3, .. }),
            "{third:?}"
        );
        assert_eq!(staged_files(server.dir.path())?, 2);

        // Another session has its own slots.
        let mut other = server.login_from("alice", Some(ip(10, 41))).await;
        other.call(begin("x")).await?;

        // Staged files go away with their session.
        drop(alice);
        drop(other);
        assert!(
            eventually(Duration::from_secs(5), || staged_files(server.dir.path())
                .is_ok_and(|n| n == 0))
            .await,
            "staged uploads outlived their sessions"
        );
        Ok(())
    })
    .await
}

/// Sends `first` at once, then `step` bytes of `rest` every `every`, until `rest` is used up
/// or the server closes; runs in the background.
fn drip(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    first: Vec<u8>,
    rest: Vec<u8>,
    step: usize,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if writer.write_all(&first).await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        tick.tick().await;
        for chunk in rest.chunks(step.max(1)) {
            tick.tick().await;
            if writer.write_all(chunk).await.is_err() {
                return;
            }
        }
    })
}

/// Reads replies until close; returns them with the time the close was seen.
async fn read_until_closed(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    limit: Duration,
) -> Result<(Vec<(u32, Reply)>, bool, Instant), TestError> {
    let deadline = Instant::now() + limit;
    let mut buf = BytesMut::new();
    let mut tmp = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout_at(deadline, reader.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => buf.extend_from_slice(&tmp[..n]),
            Err(_) => break false,
        }
    };
    let at = Instant::now();
    let mut replies = Vec::new();
    while let Some(f) = decode_frame(&mut buf, &Limits::default(), Role::Client)? {
        replies.push((f.request_id, Reply::decode(&f, &Limits::default())?));
    }
    Ok((replies, closed, at))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_keeps_the_rate_but_not_the_budget_is_cut() -> TestResult {
    within(async {
        let mut cfg = config();
        cfg.timeouts.frame_grace_ms = 500;
        cfg.timeouts.frame_budget_ms = 1500;
        cfg.timeouts.frame_min_rate_bytes_per_s = 1000;
        let server = start_server_with(cfg).await;
        let stream = common::raw_connect(server.addr, Some(ip(10, 50))).await?;
        let (reader, writer) = stream.into_split();

        // A 60,000-byte frame at 4,000 B/s: four times the minimum rate, but it would need
        // 15 s, ten times the budget. Logged in first: before login a frame this large is
        // refused from its header (tests/preauth.rs).
        let mut first = frame(1, &auth("alice", "alice-pw"))?;
        first.extend_from_slice(&header(Kind::SendMessage as u8, 9, 0, 60_000));
        first.extend_from_slice(&[b'a'; 400]);
        let started = Instant::now();
        let writer = drip(
            writer,
            first,
            vec![b'a'; 59_600],
            400,
            Duration::from_millis(100),
        );
        let (replies, closed, at) = read_until_closed(reader, Duration::from_secs(8)).await?;
        writer.abort();
        let took = at.duration_since(started);
        assert!(closed, "the server must cut the frame");
        assert_eq!(replies.len(), 2, "{replies:?}");
        assert!(
            matches!(replies[0], (1, Reply::AuthOk { .. })),
            "{replies:?}"
        );
        let message = error_message(&replies[1], 0, ErrorCode::Timeout)?;
        assert!(message.contains("budget"), "{message}");
        assert!(
            took >= Duration::from_millis(1400) && took < Duration::from_millis(4000),
            "cut after {took:?}, budget 1.5 s"
        );
        assert_eq!(server.handle.metrics().snapshot().timeouts, 1);
        still_serves(&server, ip(10, 51)).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_drip_is_cut_by_the_minimum_rate_long_before_the_budget() -> TestResult {
    within(async {
        let mut cfg = config();
        cfg.timeouts.frame_grace_ms = 500;
        cfg.timeouts.frame_budget_ms = 10_000;
        cfg.timeouts.frame_min_rate_bytes_per_s = 100;
        let server = start_server_with(cfg).await;
        let stream = common::raw_connect(server.addr, Some(ip(10, 52))).await?;
        let (reader, writer) = stream.into_split();

        // One byte every 700 ms: a per-read timeout of a second would never fire.
        let ping = header(Kind::Ping as u8, 3, 0, 0);
        let started = Instant::now();
        let writer = drip(
            writer,
            ping[..1].to_vec(),
            ping[1..].to_vec(),
            1,
            Duration::from_millis(700),
        );
        let (replies, closed, at) = read_until_closed(reader, Duration::from_secs(12)).await?;
        writer.abort();
        let took = at.duration_since(started);
        assert!(closed, "the server must cut the drip");
        assert_eq!(replies.len(), 1, "{replies:?}");
        let message = error_message(&replies[0], 0, ErrorCode::Timeout)?;
        assert!(message.contains("minimum rate"), "{message}");
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_millis(3000),
            "cut after {took:?}: grace 0.5 s, budget 10 s"
        );
        still_serves(&server, ip(10, 53)).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_drip_below_the_minimum_rate_is_cut_after_the_grace() -> TestResult {
    within(async {
        let mut cfg = config();
        cfg.timeouts.frame_grace_ms = 500;
        cfg.timeouts.frame_budget_ms = 10_000;
        cfg.timeouts.frame_min_rate_bytes_per_s = 1000;
        let server = start_server_with(cfg).await;
        let stream = common::raw_connect(server.addr, Some(ip(10, 54))).await?;
        let (reader, writer) = stream.into_split();

        // One byte every 100 ms is 10 B/s, a hundredth of the minimum rate.
        let mut first = header(Kind::SendMessage as u8, 4, 0, 1000);
        first.truncate(1);
        let mut rest = header(Kind::SendMessage as u8, 4, 0, 1000)[1..].to_vec();
        rest.extend_from_slice(&[b'z'; 1000]);
        let started = Instant::now();
        let writer = drip(writer, first, rest, 1, Duration::from_millis(100));
        let (replies, closed, at) = read_until_closed(reader, Duration::from_secs(12)).await?;
        writer.abort();
        let took = at.duration_since(started);
        assert!(closed, "the server must cut the drip");
        assert_eq!(replies.len(), 1, "{replies:?}");
        let message = error_message(&replies[0], 0, ErrorCode::Timeout)?;
        assert!(
            message.contains("minimum rate") && took < Duration::from_millis(3000),
            "cut after {took:?} ({message}): grace 0.5 s, budget 10 s"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_times_out() -> TestResult {
    within(async {
        let mut cfg = config();
        cfg.timeouts.idle_ms = 1000;
        let server = start_server_with(cfg).await;

        // Complete frames keep a session alive past the idle timeout...
        let mut busy = Raw::connect(server.addr, ip(10, 60)).await?;
        busy.login("alice", "alice-pw").await?;
        for id in 2..8 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            busy.request(id, &Request::Ping).await?;
            assert!(matches!(busy.one().await?, (i, Reply::Pong) if i == id));
        }

        // ...and their absence ends it.
        let mut idle = Raw::connect(server.addr, ip(10, 61)).await?;
        // Timed from before the AUTH frame, the session's last complete frame.
        let since = Instant::now();
        idle.login("bob", "bob-pw").await?;
        let (replies, closed) = idle.until_closed(Duration::from_secs(6)).await?;
        let took = since.elapsed();
        assert!(closed, "an idle session must be closed");
        assert_eq!(replies.len(), 1, "{replies:?}");
        let message = error_message(&replies[0], 0, ErrorCode::Timeout)?;
        assert!(message.contains("idle"), "{message}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(3500),
            "closed after {took:?}, idle timeout 1 s"
        );
        still_serves(&server, ip(10, 62)).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_never_authenticates_times_out() -> TestResult {
    within(async {
        let mut cfg = config();
        cfg.timeouts.auth_ms = 1000;
        let server = start_server_with(cfg).await;
        let mut raw = Raw::connect(server.addr, ip(10, 70)).await?;
        let since = Instant::now();
        // PINGs are allowed before AUTH, but they do not buy time.
        let mut pongs = 0;
        let mut id = 1;
        let timeout = loop {
            raw.request(id, &Request::Ping).await?;
            let replies = raw.replies(1, Duration::from_secs(5)).await?;
            match replies.first() {
                Some((i, Reply::Pong)) if *i == id => pongs += 1,
                Some(other) => break other.clone(),
                None => return Err("no reply to PING".into()),
            }
            id += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let took = since.elapsed();
        let message = error_message(&timeout, 0, ErrorCode::Timeout)?;
        assert!(message.contains("authentication"), "{message}");
        let (_, closed) = raw.until_closed(Duration::from_secs(3)).await?;
        assert!(closed);
        assert!(pongs >= 2, "pings were answered before the timeout");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(3500),
            "cut after {took:?}, auth timeout 1 s"
        );
        still_serves(&server, ip(10, 71)).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_at_the_write_deadline() -> TestResult {
    within(async {
        let mut rng = rng(0x00DE_AD00);
        let mut cfg = config();
        cfg.timeouts.write_ms = 1000;
        let server = start_server_with(cfg).await;
        let data = random_bytes(&mut rng, 2 * 1024 * 1024);
        let item = {
            let mut alice = server.login_from("alice", Some(ip(10, 80))).await;
            alice.send_file_bytes("bob", "big.bin", &data).await?
        };

        // A small receive buffer, and never a read after login: the server's replies pile
        // up in its bounded queue and the write stalls.
        let socket = TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(4096)?;
        socket.bind(SocketAddr::new(ip(10, 81), 0))?;
        let mut sink = Raw::from(socket.connect(server.addr).await?);
        sink.login("bob", "bob-pw").await?;
        let mut wire = Vec::new();
        for n in 0..400u32 {
            wire.extend(frame(
                n + 2,
                &Request::Download {
                    item_id: item,
                    part: 0,
                    offset: u64::from(n % 8) * 262_144,
                    max_len: 262_144,
                },
            )?);
        }
        sink.send(&wire).await;
        let sent = Instant::now();
        let before = server.handle.metrics().snapshot().timeouts;

        // Meanwhile another client of the same user downloads the whole file.
        let mut bob = server.login_from("bob", Some(ip(10, 82))).await;
        assert!(bob.download_bytes(item, 0).await? == data);
        bob.ping().await?;
        // Unless this machine is so slow that the deadline has passed already, the stalled
        // connection is still there.
        if sent.elapsed() < Duration::from_millis(900) {
            assert_eq!(
                server.handle.metrics().snapshot().timeouts,
                before,
                "cut before the write deadline"
            );
        }

        let metrics = server.handle.metrics();
        assert!(
            eventually(Duration::from_secs(5), || metrics.snapshot().timeouts
                > before)
            .await,
            "the stalled connection was never cut"
        );
        let took = sent.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(4500),
            "cut after {took:?}, write deadline 1 s"
        );
        // Only the reader is left (the sink's slot is released).
        let guard = server.handle.guard();
        assert!(eventually(Duration::from_secs(3), || guard.stats().connections == 1).await);

        // What the sink finally reads: some DATA replies, no error frame, then the close.
        let (replies, closed) = sink.until_closed(Duration::from_secs(10)).await?;
        assert!(closed);
        assert!(
            replies.iter().all(|(_, r)| matches!(r, Reply::Data { .. })),
            "only DATA replies, the cut sends nothing more"
        );
        assert!(replies.len() < 400, "{} replies", replies.len());
        bob.ping().await?;
        still_serves(&server, ip(10, 83)).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_stop_at_the_per_source_cap() -> TestResult {
    within(async {
        let mut cfg = config();
        // Only the connection cap is under test here, not the accept rate.
        cfg.rates.accepts_burst_per_ip = 10_000;
        cfg.rates.accepts_per_s_per_ip = 10_000;
        let cap = cfg.limits.max_connections_per_ip;
        assert_eq!(cap, 256, "the default per-source cap");
        // These connections never log in; the smaller pre-login cap has its own test
        // (tests/preauth.rs), so here it is raised to the cap under test.
        cfg.limits.preauth_connections_per_ip = cap;
        let server = start_server_with(cfg).await;
        let attacker = ip(3, 1);

        let mut conns: Vec<Raw> = Vec::with_capacity(2000);
        for _ in 0..20 {
            let batch = (0..100).map(|_| Raw::connect(server.addr, attacker));
            for c in futures::future::join_all(batch).await {
                conns.push(c?);
            }
        }
        let guard = server.handle.guard();
        assert!(
            eventually(Duration::from_secs(10), || {
                server.handle.metrics().snapshot().connections_refused == 2000 - u64::from(cap)
            })
            .await,
            "{:?}",
            server.handle.metrics().snapshot()
        );
        let stats = guard.stats();
        assert_eq!(stats.connections, cap, "{stats:?}");
        assert_eq!(stats.sources_connected, 1, "{stats:?}");

        // The refused ones were told BUSY (or just closed); the admitted ones hear nothing.
        let outcomes = futures::future::join_all(
            conns
                .iter_mut()
                .map(|c| c.until_closed(Duration::from_millis(1500))),
        )
        .await;
        let (mut open, mut busy, mut eof) = (0u32, 0u32, 0u32);
        for outcome in outcomes {
            let (replies, closed) = outcome?;
            match (closed, replies.as_slice()) {
                (false, []) => open += 1,
                (true, []) => eof += 1,
                (true, [(0, Reply::Error { code, message })]) if *code == ErrorCode::Busy => {
                    assert!(message.contains("max_connections_per_ip"), "{message}");
                    busy += 1;
                }
                other => return Err(format!("unexpected outcome {other:?}").into()),
            }
        }
        println!("admitted {open}, refused with BUSY {busy}, refused with a bare close {eof}");
        assert_eq!(open, cap);
        assert_eq!(busy + eof, 2000 - cap);

        // Another source is not affected.
        let mut other = server.login_from("alice", Some(ip(3, 2))).await;
        other.ping().await?;
        refused(
            Client::login(
                server.target(),
                "alice",
                b"alice-pw",
                ClientOptions::default().source(attacker),
            )
            .await,
            ErrorCode::Busy,
        )?;

        // Dropping the idle connections frees their slots.
        drop(conns);
        assert!(
            eventually(Duration::from_secs(10), || guard.stats().connections == 1).await,
            "{:?}",
            guard.stats()
        );
        let mut back = server.login_from("bob", Some(attacker)).await;
        back.ping().await?;
        drop(back);
        drop(other);
        assert!(
            eventually(Duration::from_secs(10), || guard.stats().connections == 0).await,
            "{:?}",
            guard.stats()
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_faster_than_the_accept_rate_are_refused() -> TestResult {
    within(async {
        let mut cfg = config();
        cfg.rates.accepts_burst_per_ip = 5;
        cfg.rates.accepts_per_s_per_ip = 1;
        let server = start_server_with(cfg).await;
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(Raw::connect(server.addr, ip(11, 1)).await?);
        }
        let mut sixth = Raw::connect(server.addr, ip(11, 1)).await?;
        let (replies, closed) = sixth.until_closed(Duration::from_secs(5)).await?;
        assert!(closed);
        assert_eq!(replies.len(), 1, "{replies:?}");
        let message = error_message(&replies[0], 0, ErrorCode::Busy)?;
        assert!(message.contains("accept_rate"), "{message}");
        assert_eq!(server.handle.guard().stats().connections, 5);
        still_serves(&server, ip(11, 2)).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_total_cap_are_refused() -> TestResult {
    within(async {
        let mut cfg = config();
        cfg.limits.max_connections = 10;
        cfg.limits.max_connections_per_ip = 10;
        let server = start_server_with(cfg).await;
        // Ten sources, one connection each: no per-source cap is reached.
        let mut held = Vec::new();
        for b in 1..=10 {
            held.push(Raw::connect(server.addr, ip(11, 100 + b)).await?);
        }
        let guard = server.handle.guard();
        assert!(eventually(Duration::from_secs(5), || guard.stats().connections == 10).await);
        let mut eleventh = Raw::connect(server.addr, ip(11, 111)).await?;
        let (replies, closed) = eleventh.until_closed(Duration::from_secs(5)).await?;
        assert!(closed);
        assert_eq!(replies.len(), 1, "{replies:?}");
        let message = error_message(&replies[0], 0, ErrorCode::Busy)?;
        assert!(message.contains("max_connections"), "{message}");
        // A slot freed is a slot available again.
        drop(held.pop());
        assert!(eventually(Duration::from_secs(5), || guard.stats().connections == 9).await);
        still_serves(&server, ip(11, 112)).await
    })
    .await
}

/// Sends `n` PINGs with ids `first..` in one write and reads `n` replies (or until close).
async fn ping_burst(raw: &mut Raw, first: u32, n: u32) -> Result<Vec<(u32, Reply)>, TestError> {
    let mut wire = Vec::new();
    for id in first..first + n {
        wire.extend(frame(id, &Request::Ping)?);
    }
    raw.send(&wire).await;
    raw.replies(n as usize, Duration::from_secs(10)).await
}

fn count(replies: &[(u32, Reply)], pred: impl Fn(&Reply) -> bool) -> u64 {
    replies.iter().filter(|(_, r)| pred(r)).count() as u64
}

/// Cells a limiter of `per_s` may have refilled during `elapsed`.
fn refills(per_s: u32, elapsed: Duration) -> u64 {
    (elapsed.as_secs_f64() * f64::from(per_s)).ceil() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_its_frame_rate_is_limited_then_closed() -> TestResult {
    within(async {
        let mut cfg = config();
        cfg.rates.frames_burst_per_conn = 20;
        cfg.rates.frames_per_s_per_conn = 1;
        cfg.rates.strikes_to_close = 5;
        let server = start_server_with(cfg).await;
        let mut raw = Raw::connect(server.addr, ip(11, 10)).await?;
        let started = Instant::now();
        let replies = ping_burst(&mut raw, 1, 40).await?;
        let (rest, closed) = raw.until_closed(Duration::from_secs(5)).await?;
        let extra = refills(1, started.elapsed());
        assert!(rest.is_empty(), "{rest:?}");
        assert!(closed, "the fifth strike closes the connection");

        // In order: the burst of PONGs, then exactly five refusals, then nothing.
        let ids: Vec<u32> = replies.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, (1..=ids.len() as u32).collect::<Vec<_>>());
        let pongs = count(&replies, |r| matches!(r, Reply::Pong));
        let limited = count(&replies, |r| is_error(r, ErrorCode::RateLimited));
        assert!((20..=20 + extra).contains(&pongs), "{pongs} pongs");
        assert_eq!(limited, 5, "{replies:?}");
        assert_eq!(pongs + limited, replies.len() as u64);
        if let Some((_, Reply::Error { message, .. })) = replies.last() {
            assert!(message.contains("frame_rate_connection"), "{message}");
        }
        assert_eq!(server.handle.metrics().snapshot().rate_limited, 5);
        still_serves(&server, ip(11, 11)).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_its_frame_rate_is_limited_on_every_connection() -> TestResult {
    within(async {
        let mut cfg = config();
        cfg.rates.frames_burst_per_user = 30;
        cfg.rates.frames_per_s_per_user = 1;
        let server = start_server_with(cfg).await;
        let mut a = Raw::connect(server.addr, ip(11, 20)).await?;
        let mut b = Raw::connect(server.addr, ip(11, 21)).await?;
        a.login("alice", "alice-pw").await?;
        b.login("alice", "alice-pw").await?;

        let started = Instant::now();
        let first = ping_burst(&mut a, 2, 20).await?;
        let second = ping_burst(&mut b, 2, 20).await?;
        let extra = refills(1, started.elapsed());
        assert_eq!(count(&first, |r| matches!(r, Reply::Pong)), 20);
        let pongs = count(&second, |r| matches!(r, Reply::Pong));
        assert!((10..=10 + extra).contains(&pongs), "{second:?}");
        let limited: Vec<&String> = second
            .iter()
            .filter_map(|(_, r)| match r {
                Reply::Error {
                    code: ErrorCode::RateLimited,
                    message,
                } => Some(message),
                _ => None,
            })
            .collect();
        assert_eq!(limited.len() as u64, 20 - pongs, "{second:?}");
        assert!(
            limited.iter().all(|m| m.contains("frame_rate_user")),
            "{limited:?}"
        );

        // Another user, even from the same address as one of alice's connections, is not.
        let mut bob = Raw::connect(server.addr, ip(11, 21)).await?;
        bob.login("bob", "bob-pw").await?;
        let bobs = ping_burst(&mut bob, 2, 20).await?;
        assert_eq!(count(&bobs, |r| matches!(r, Reply::Pong)), 20);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_over_its_frame_rate_is_limited_on_every_connection() -> TestResult {
    within(async {
        let mut cfg = config();
        cfg.rates.frames_burst_per_ip = 30;
        cfg.rates.frames_per_s_per_ip = 1;
        let server = start_server_with(cfg).await;
        let mut a = Raw::connect(server.addr, ip(11, 30)).await?;
        let mut b = Raw::connect(server.addr, ip(11, 30)).await?;
        let started = Instant::now();
        let first = ping_burst(&mut a, 1, 20).await?;
        let second = ping_burst(&mut b, 1, 20).await?;
        let extra = refills(1, started.elapsed());
        assert_eq!(count(&first, |r| matches!(r, Reply::Pong)), 20);
        let pongs = count(&second, |r| matches!(r, Reply::Pong));
        assert!((10..=10 + extra).contains(&pongs), "{second:?}");
        let limited = count(&second, |r| {
            matches!(r, Reply::Error { code: ErrorCode::RateLimited, message } if message.contains("frame_rate_ip"))
        });
        assert_eq!(limited, 20 - pongs, "{second:?}");

        // Another source has its own allowance.
        let mut c = Raw::connect(server.addr, ip(11, 31)).await?;
        let third = ping_burst(&mut c, 1, 20).await?;
        assert_eq!(count(&third, |r| matches!(r, Reply::Pong)), 20);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limiter_state_of_many_sources_is_purged() -> TestResult {
    within(async {
        let mut cfg = config();
        // One cell takes a second to refill, so a key stays non-fresh for about a second
        // after its one frame and is then purged.
        cfg.rates.accepts_per_s_per_ip = 1;
        cfg.rates.accepts_burst_per_ip = 100;
        cfg.rates.frames_per_s_per_ip = 1;
        cfg.rates.frames_burst_per_ip = 100;
        let server = start_server_with(cfg).await;
        let addr = server.addr;
        let sources: Vec<IpAddr> = (1..=255u8)
            .map(|b| ip(12, b))
            .chain((1..=245u8).map(|b| ip(13, b)))
            .collect();
        assert_eq!(sources.len(), 500);

        let one_ping = |source: IpAddr| async move {
            let mut raw = Raw::connect(addr, source).await?;
            match ping_burst(&mut raw, 1, 1).await?.as_slice() {
                [(1, Reply::Pong)] => Ok::<(), TestError>(()),
                other => Err(format!("{source}: {other:?}").into()),
            }
        };
        let mut peak = 0;
        for batch in sources.chunks(50) {
            for r in futures::future::join_all(batch.iter().map(|s| one_ping(*s))).await {
                r?;
            }
            peak = peak.max(server.handle.guard().stats().tracked_keys);
        }
        println!("peak tracked keys: {peak}");
        // Each source leaves an accept key and a frame key for about a second; at least the
        // last batch's must have been seen (all 1,000 on any machine that is not crawling).
        assert!(peak >= 100, "each source left limiter state: {peak} keys");

        let guard = server.handle.guard();
        assert!(
            eventually(Duration::from_secs(6), || guard.stats().tracked_keys == 0).await,
            "keyed limiter state was not purged: {:?}",
            guard.stats()
        );
        assert!(eventually(Duration::from_secs(3), || guard.stats().connections == 0).await);
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------
// 2. No error takes the server down.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_handler_closes_only_its_connection() -> TestResult {
    within(async {
        let server = start(config(), |s| {
            s.with_fault_hook(Arc::new(|req: &Request| {
                if let Request::SendMessage { text, .. } = req {
                    if text == "panic please" {
                        panic!("fault hook: panic please");
                    }
                }
            }))
        })
        .await;
        let mut bob = server.login_from("bob", Some(ip(14, 1))).await;
        let mut alice = server.login_from("alice", Some(ip(14, 2))).await;
        // An upload in progress on the doomed connection.
        alice
            .call(Request::UploadBegin {
                name: "partial".into(),
                size: 1000,
            })
            .await?;
        assert_eq!(staged_files(server.dir.path())?, 1);

        let outcome = alice.send_message("bob", "panic please").await;
        assert!(
            matches!(outcome, Err(ClientError::Closed | ClientError::Io(_))),
            "{outcome:?}"
        );
        assert!(alice.ping().await.is_err());
        // The socket closes while the task unwinds, just before the panic is counted.
        let metrics = server.handle.metrics();
        assert!(
            eventually(Duration::from_secs(5), || metrics.snapshot().panics == 1).await,
            "{:?}",
            metrics.snapshot()
        );
        let guard = server.handle.guard();
        assert!(
            eventually(Duration::from_secs(5), || guard.stats().connections == 1).await,
            "the panicked connection's slot must be released: {:?}",
            guard.stats()
        );
        assert!(
            eventually(Duration::from_secs(5), || staged_files(server.dir.path())
                .is_ok_and(|n| n == 0))
            .await,
            "the panicked session's staged upload must be removed"
        );

        // The connection that was already open carries on; a new one works.
        bob.ping().await?;
        bob.send_message("alice", "still here").await?;
        let mut alice = server.login_from("alice", Some(ip(14, 2))).await;
        let after = alice.send_message("bob", "after the panic").await?;
        let inbox = bob.inbox().await?;
        assert_eq!(
            inbox.iter().map(|e| e.id).collect::<Vec<_>>(),
            [after],
            "the panicking request was not applied"
        );
        assert_eq!(metrics.snapshot().panics, 1);
        Ok(())
    })
    .await
}

fn str8(out: &mut Vec<u8>, s: &[u8]) {
    out.push(u8::try_from(s.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(s);
}

fn str16(out: &mut Vec<u8>, s: &[u8]) {
    out.put_u16(u16::try_from(s.len()).unwrap_or(u16::MAX));
    out.extend_from_slice(s);
}

fn str32(out: &mut Vec<u8>, s: &[u8]) {
    out.put_u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(s);
}

/// Well-framed requests with broken bodies: (request id, reason label, frame).
fn malformed_bodies() -> Vec<(u32, &'static str, Vec<u8>)> {
    let message = |to: &[u8], text: &[u8], trailing: &[u8]| {
        let mut p = Vec::new();
        str8(&mut p, to);
        str32(&mut p, text);
        p.extend_from_slice(trailing);
        p
    };
    let mut too_many = Vec::new();
    str8(&mut too_many, b"bob");
    str16(&mut too_many, b"subject");
    str32(&mut too_many, b"body");
    too_many.push(17);
    vec![
        (11, "truncated", raw_frame(Kind::Fetch, 11, &[0, 0, 0, 1])),
        (
            12,
            "trailing_bytes",
            raw_frame(Kind::SendMessage, 12, &message(b"bob", b"hi", b"!!")),
        ),
        (
            13,
            "invalid_utf8",
            raw_frame(Kind::SendMessage, 13, &message(b"bob", &[0xff, 0xfe], b"")),
        ),
        (
            14,
            "field_too_long",
            raw_frame(Kind::SendMessage, 14, &message(&[b'b'; 40], b"hi", b"")),
        ),
        (
            15,
            "too_many_items",
            raw_frame(Kind::SendMail, 15, &too_many),
        ),
        (
            16,
            "truncated",
            raw_frame(Kind::SendMessage, 16, &message(b"bob", b"", b"")[..5]),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_bad_frame_with_their_id_and_the_connection_goes_on() -> TestResult {
    within(async {
        let server = start_server_with(config()).await;
        let mut raw = Raw::connect(server.addr, ip(14, 10)).await?;
        raw.login("alice", "alice-pw").await?;
        let cases = malformed_bodies();
        let mut wire = Vec::new();
        for (_, _, f) in &cases {
            wire.extend_from_slice(f);
        }
        wire.extend(frame(99, &Request::Ping)?);
        raw.send(&wire).await;
        let replies = raw
            .replies(cases.len() + 1, Duration::from_secs(10))
            .await?;
        assert_eq!(replies.len(), cases.len() + 1, "{replies:?}");
        for ((id, reason, _), reply) in cases.iter().zip(&replies) {
            let message = error_message(reply, *id, ErrorCode::BadFrame)
                .map_err(|e| format!("{reason}: {e}"))?;
            println!("{reason}: {message}");
        }
        assert!(
            matches!(replies.last(), Some((99, Reply::Pong))),
            "{replies:?}"
        );
        let m = server.handle.metrics().snapshot();
        for reason in [
            "trailing_bytes",
            "invalid_utf8",
            "field_too_long",
            "too_many_items",
        ] {
            assert_eq!(m.decode_errors.get(reason), Some(&1), "{reason}: {m:?}");
        }
        assert_eq!(m.decode_errors.get("truncated"), Some(&2));
        assert!(!raw.closed);

        // Nothing was applied.
        let mut bob = server.login_from("bob", Some(ip(14, 11))).await;
        assert!(bob.inbox().await?.is_empty());
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_malformed_bodies_close_after_the_strike_limit() -> TestResult {
    within(async {
        let mut cfg = config();
        cfg.rates.strikes_to_close = 3;
        let server = start_server_with(cfg).await;
        let mut raw = Raw::connect(server.addr, ip(14, 20)).await?;
        // Two malformed bodies and a skipped oversized frame: three strikes.
        let mut wire = Vec::new();
        wire.extend(raw_frame(Kind::Fetch, 1, &[1]));
        wire.extend(raw_frame(Kind::Ping, 2, &[0; 10]));
        for id in 3..=5 {
            wire.extend(raw_frame(Kind::Fetch, id, &[1]));
        }
        raw.send(&wire).await;
        let (replies, closed) = raw.until_closed(Duration::from_secs(5)).await?;
        assert!(closed, "the third strike closes");
        let ids: Vec<u32> = replies.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [1, 2, 3], "{replies:?}");
        assert!(is_error(&replies[0].1, ErrorCode::BadFrame), "{replies:?}");
        assert!(is_error(&replies[1].1, ErrorCode::TooLarge), "{replies:?}");
        assert!(is_error(&replies[2].1, ErrorCode::BadFrame), "{replies:?}");
        still_serves(&server, ip(14, 21)).await
    })
    .await
}

/// Sends `bytes` from `source` on a fresh connection and checks the server answers one
/// ERROR BAD_FRAME with request id 0 and closes.
async fn check_fatal(server: &TestServer, source: IpAddr, name: &str, bytes: &[u8]) -> TestResult {
    let mut raw = Raw::connect(server.addr, source).await?;
    raw.send(bytes).await;
    let (replies, closed) = raw.until_closed(Duration::from_secs(5)).await?;
    assert!(closed, "{name}: the server must close, got {replies:?}");
    assert_eq!(replies.len(), 1, "{name}: {replies:?}");
    error_message(&replies[0], 0, ErrorCode::BadFrame).map_err(|e| format!("{name}: {e}"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_errors_get_bad_frame_id_0_and_close() -> TestResult {
    within(async {
        let server = start_server_with(config()).await;
        let cases: Vec<(&str, &str, Vec<u8>)> = vec![
            ("http probe, first byte", "bad_magic", b"G".to_vec()),
            (
                "http request",
                "bad_magic",
                b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            ),
            ("tls client hello, first byte", "bad_magic", vec![0x16]),
            ("ssh banner, first byte", "bad_magic", b"S".to_vec()),
            ("RR: second magic byte", "bad_magic", vec![0x52, 0x52]),
            ("version 2", "unsupported_version", b"RM\x02".to_vec()),
            ("version 0", "unsupported_version", b"RM\x00".to_vec()),
            ("unknown kind 0x40", "unknown_kind", b"RM\x01\x40".to_vec()),
            ("unknown kind 0x00", "unknown_kind", b"RM\x01\x00".to_vec()),
            ("reply kind PONG", "unexpected_kind", b"RM\x01\x82".to_vec()),
            (
                "reply kind ERROR",
                "unexpected_kind",
                b"RM\x01\xff".to_vec(),
            ),
            (
                "flags bit 0",
                "reserved_flags",
                header(Kind::Ping as u8, 5, 1, 0),
            ),
            (
                "flags bit 15",
                "reserved_flags",
                header(Kind::Ping as u8, 5, 0x8000, 0),
            ),
        ];
        for (n, (name, _, bytes)) in cases.iter().enumerate() {
            check_fatal(&server, ip(15, 1 + n as u8), name, bytes).await?;
        }
        // After authentication too.
        let mut raw = Raw::connect(server.addr, ip(15, 100)).await?;
        raw.login("alice", "alice-pw").await?;
        raw.send(&header(Kind::Ping as u8, 2, 0x0100, 0)).await;
        let (replies, closed) = raw.until_closed(Duration::from_secs(5)).await?;
        assert!(closed);
        assert_eq!(replies.len(), 1, "{replies:?}");
        error_message(&replies[0], 0, ErrorCode::BadFrame)?;

        let m = server.handle.metrics().snapshot();
        for (_, reason, _) in &cases {
            let want = cases.iter().filter(|(_, r, _)| r == reason).count() as u64
                + u64::from(*reason == "reserved_flags");
            assert_eq!(m.decode_errors.get(reason), Some(&want), "{reason}: {m:?}");
        }
        still_serves(&server, ip(15, 200)).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_length_over_the_frame_limit_gets_bad_frame_id_0_and_close() -> TestResult {
    within(async {
        let server = start_server_with(config()).await;
        let max = config().limits.max_frame_bytes;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "SEND_MESSAGE one byte over the frame limit",
                header(Kind::SendMessage as u8, 5, 0, max + 1),
            ),
            (
                "UPLOAD_CHUNK of 16 MiB",
                header(Kind::UploadChunk as u8, 5, 0, 16 << 20),
            ),
            ("PING of 4 GiB", header(Kind::Ping as u8, 5, 0, u32::MAX)),
        ];
        for (n, (name, bytes)) in cases.iter().enumerate() {
            check_fatal(&server, ip(15, 150 + n as u8), name, bytes).await?;
        }
        still_serves(&server, ip(15, 201)).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_within_the_frame_limit_is_skipped_and_refused() -> TestResult {
    within(async {
        let mut cfg = config();
        cfg.timeouts.frame_grace_ms = 500;
        cfg.timeouts.frame_budget_ms = 3000;
        let server = start_server_with(cfg.clone()).await;
        let limits = cfg.limits.protocol();
        let mut raw = Raw::connect(server.addr, ip(15, 160)).await?;
        raw.login("alice", "alice-pw").await?;

        // Each payload is over its kind's maximum but within the frame limit. It is filled
        // with valid frames (a SEND_MESSAGE to bob, a PING), which must be skipped unread.
        let mut decoy = frame(
            1000,
            &Request::SendMessage {
                to: "bob".into(),
                text: "smuggled".into(),
            },
        )?;
        decoy.extend(frame(1001, &Request::Ping)?);
        let filled = |len: usize| -> Vec<u8> { decoy.iter().copied().cycle().take(len).collect() };
        let send_message_max = 1 + 32 + 4 + limits.max_text_bytes as usize;
        let cases: Vec<(u32, Kind, usize)> = vec![
            (10, Kind::Ping, 1),
            (11, Kind::Fetch, 9),
            (12, Kind::Bye, 100),
            (
                13,
                Kind::UploadChunk,
                12 + limits.max_chunk_bytes as usize + 1,
            ),
            (14, Kind::SendMessage, send_message_max + 1),
            (15, Kind::SendMessage, limits.max_frame_bytes as usize),
        ];
        let mut wire = Vec::new();
        for (id, kind, len) in &cases {
            wire.extend(raw_frame(*kind, *id, &filled(*len)));
        }
        wire.extend(frame(99, &Request::Ping)?);
        raw.send(&wire).await;
        let replies = raw
            .replies(cases.len() + 1, Duration::from_secs(10))
            .await?;
        assert_eq!(replies.len(), cases.len() + 1, "{replies:?}");
        for ((id, kind, _), reply) in cases.iter().zip(&replies) {
            error_message(reply, *id, ErrorCode::TooLarge).map_err(|e| format!("{kind:?}: {e}"))?;
        }
        assert!(
            matches!(replies.last(), Some((99, Reply::Pong))),
            "{replies:?}"
        );
        assert!(!raw.closed, "the connection goes on");
        let m = server.handle.metrics().snapshot();
        assert_eq!(
            m.decode_errors.get("frame_too_large"),
            Some(&(cases.len() as u64))
        );

        // Skipping is still a frame in progress: a declared payload that never comes is cut
        // by the minimum rate like any other (in a logged-in session: before login such a
        // header is refused outright, tests/preauth.rs).
        let mut stalled = Raw::connect(server.addr, ip(15, 161)).await?;
        let since = Instant::now();
        let mut bytes = frame(1, &auth("bob", "bob-pw"))?;
        bytes.extend_from_slice(&header(
            Kind::SendMessage as u8,
            20,
            0,
            limits.max_frame_bytes,
        ));
        stalled.send(&bytes).await;
        let (replies, closed) = stalled.until_closed(Duration::from_secs(8)).await?;
        assert!(closed, "{replies:?}");
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "{:?}",
            since.elapsed()
        );
        assert_eq!(replies.len(), 3, "{replies:?}");
        assert!(
            matches!(replies[0], (1, Reply::AuthOk { .. })),
            "{replies:?}"
        );
        error_message(&replies[1], 20, ErrorCode::TooLarge)?;
        error_message(&replies[2], 0, ErrorCode::Timeout)?;

        // Nothing inside the skipped payloads was applied.
        let mut bob = server.login_from("bob", Some(ip(15, 162))).await;
        assert!(bob.inbox().await?.is_empty());
        raw.request(100, &Request::Ping).await?;
        assert!(matches!(raw.one().await?, (100, Reply::Pong)));
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------
// 3. Injection and tampering fail.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_cannot_read_or_delete_another_users_items() -> TestResult {
    within(async {
        let mut rng = rng(0x7A3D_0001);
        let server = start_server_with(config()).await;
        let mut alice = server.login_from("alice", Some(ip(16, 1))).await;
        let mut bob = server.login_from("bob", Some(ip(16, 2))).await;
        let mut mallory = server.login_from("mallory", Some(ip(16, 3))).await;

        let file = random_bytes(&mut rng, 50_000);
        let message = alice.send_message("bob", "for bob only").await?;
        let file_id = alice.send_file_bytes("bob", "secret.bin", &file).await?;
        let mail = alice
            .send_mail_with("bob", "private", "body", &[("a.bin".into(), file.clone())])
            .await?;
        let bobs = [message, file_id, mail];
        let before: Vec<_> = {
            let mut v = Vec::new();
            for id in bobs {
                v.push(bob.fetch(id).await?);
            }
            v
        };

        for id in bobs {
            refused(mallory.fetch(id).await, ErrorCode::PermissionDenied)?;
            let download = mallory
                .call(Request::Download {
                    item_id: id,
                    part: 0,
                    offset: 0,
                    max_len: 1 << 20,
                })
                .await;
            refused(download, ErrorCode::PermissionDenied)?;
            refused(mallory.delete(id).await, ErrorCode::PermissionDenied)?;
            // The sender has no access to the recipient's copy either.
            refused(alice.fetch(id).await, ErrorCode::PermissionDenied)?;
        }
        assert_eq!(server.handle.metrics().snapshot().permission_denied, 12);

        // A nonexistent id is NOT_FOUND.
        for id in [0, 999_999, u64::MAX] {
            refused(mallory.fetch(id).await, ErrorCode::NotFound)?;
            refused(mallory.delete(id).await, ErrorCode::NotFound)?;
            let download = mallory
                .call(Request::Download {
                    item_id: id,
                    part: 0,
                    offset: 0,
                    max_len: 10,
                })
                .await;
            refused(download, ErrorCode::NotFound)?;
        }

        // Inboxes list only their owner's items, from any starting point.
        assert!(mallory.inbox().await?.is_empty());
        assert!(mallory.inbox_page(0, 0).await?.is_empty());
        assert!(alice.inbox().await?.is_empty());
        // Identity comes from the session: mallory's message says it is from mallory.
        let from_mallory = mallory.send_message("bob", "hi, it's alice").await?;

        // Bob's items are intact.
        for (id, view) in bobs.iter().zip(&before) {
            assert_eq!(&bob.fetch(*id).await?, view);
        }
        assert!(bob.download_bytes(file_id, 0).await? == file);
        assert!(bob.download_bytes(mail, 0).await? == file);
        let inbox = bob.inbox().await?;
        assert_eq!(inbox.len(), 4);
        let last = inbox.last().ok_or("an entry")?;
        assert_eq!((last.id, last.from.as_str()), (from_mallory, "mallory"));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_file_names_are_sanitized_and_never_reach_a_path() -> TestResult {
    within(async {
        let server = start_server_with(config()).await;
        let mut alice = server.login_from("alice", Some(ip(16, 10))).await;
        let mut bob = server.login_from("bob", Some(ip(16, 11))).await;

        let cases = [
            ("../../etc/passwd", "passwd"),
            ("/etc/shadow", "shadow"),
            ("a\0b", "ab"),
            ("..\\..\\windows\\win.ini", "win.ini"),
            ("..", "unnamed"),
            ("/", "unnamed"),
            ("evil\u{202E}txt.exe", "eviltxt.exe"),
            ("line\nbreak\r\t.txt", "linebreak.txt"),
        ];
        let mut ids = Vec::new();
        for (name, _) in cases {
            ids.push(alice.send_file_bytes("bob", name, name.as_bytes()).await?);
        }
        let inbox = bob.inbox().await?;
        for ((name, want), entry) in cases.iter().zip(&inbox) {
            assert_eq!(&entry.title, want, "inbox title for {name:?}");
            match bob.fetch(entry.id).await?.body {
                ItemBody::File(meta) => assert_eq!(&meta.name, want, "{name:?}"),
                other => return Err(format!("expected a file, got {other:?}").into()),
            }
        }

        // A mail attachment saved by the client lands inside the chosen directory.
        let mail = alice
            .send_mail_with(
                "bob",
                "tools",
                "",
                &[("../../evil.sh".into(), b"#!/bin/sh\n".to_vec())],
            )
            .await?;
        let outer = tempfile::tempdir()?;
        let inner = outer.path().join("attachments");
        std::fs::create_dir(&inner)?;
        let saved = bob.save_attachments(mail, &inner).await?;
        assert_eq!(saved, [inner.join("evil.sh")]);
        assert_eq!(
            files_under(outer.path())?,
            [PathBuf::from("attachments/evil.sh")]
        );

        // The data directory holds only the databases, the server's own fixed-name lock and
        // free-space reserve, and blobs named by random ids.
        drop(alice);
        drop(bob);
        let guard = server.handle.guard();
        assert!(eventually(Duration::from_secs(5), || guard.stats().connections == 0).await);
        let files = files_under(server.dir.path())?;
        let mut blobs = 0;
        for f in &files {
            let s = f.to_string_lossy();
            let parts: Vec<&str> = s.split('/').collect();
            let hex = |p: &str, n: usize| {
                p.len() == n && p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            };
            match parts.as_slice() {
                [db] if db.starts_with("rampart.db") || db.starts_with("activity.db") => {}
                [own]
                    if *own == rampart::store::LOCK_FILE
                        || *own == rampart::store::RESERVE_FILE
                        || *own == rampart::store::TICKET_KEY_FILE => {}
                ["blobs", shard, id] if hex(shard, 2) && hex(id, 32) && id.starts_with(shard) => {
                    blobs += 1
                }
                _ => return Err(format!("unexpected file in the data dir: {s}").into()),
            }
        }
        assert_eq!(blobs, cases.len() + 1, "{files:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_metacharacters_are_stored_verbatim() -> TestResult {
    within(async {
        const EVIL: &str = "x'); DROP TABLE users;--";
        let server = start_server_with(config()).await;
        let mut alice = server.login_from("alice", Some(ip(16, 20))).await;
        let mut bob = server.login_from("bob", Some(ip(16, 21))).await;

        let m = alice.send_message("bob", EVIL).await?;
        let mail = alice
            .send_mail_with(
                "bob",
                EVIL,
                EVIL,
                &[(EVIL.into(), EVIL.as_bytes().to_vec())],
            )
            .await?;
        let file = alice.send_file_bytes("bob", EVIL, EVIL.as_bytes()).await?;
        refused(
            alice.send_message("bob'; DROP TABLE items;--", "x").await,
            ErrorCode::UnknownRecipient,
        )?;

        assert_eq!(
            bob.fetch(m).await?.body,
            ItemBody::Message { text: EVIL.into() }
        );
        match bob.fetch(mail).await?.body {
            ItemBody::Mail {
                subject,
                body,
                attachments,
            } => {
                assert_eq!((subject.as_str(), body.as_str()), (EVIL, EVIL));
                assert_eq!(attachments.first().map(|a| a.name.as_str()), Some(EVIL));
            }
            other => return Err(format!("expected a mail, got {other:?}").into()),
        }
        let titles: Vec<String> = bob.inbox().await?.into_iter().map(|e| e.title).collect();
        assert_eq!(titles, ["", EVIL, EVIL]);
        assert_eq!(bob.download_bytes(file, 0).await?, EVIL.as_bytes());

        // Injection in the login fails like any wrong login, and every user still logs in.
        for (n, user) in ["alice' --", "' OR '1'='1", "alice\"; --"]
            .iter()
            .enumerate()
        {
            let attempt = Client::login(
                server.target(),
                user,
                b"' OR '1'='1",
                ClientOptions::default().source(ip(16, 30 + n as u8)),
            )
            .await;
            refused(attempt, ErrorCode::AuthFailed)?;
        }
        for (n, (user, _)) in common::USERS.iter().enumerate() {
            let mut c = server.login_from(user, Some(ip(16, 40 + n as u8))).await;
            c.ping().await?;
        }
        assert_eq!(server.handle.server().store().list_users()?.len(), 3);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reply_ever_carries_a_password_hash() -> TestResult {
    within(async {
        let server = start_server_with(config()).await;
        // Every request kind, successful and failing, on the wire; `Raw` also checks every
        // byte it reads in every test of this file.
        let mut raw = Raw::connect(server.addr, ip(16, 50)).await?;
        raw.request(1, &auth("alice", "wrong")).await?;
        raw.request(2, &auth("nosuchuser", "alice-pw")).await?;
        raw.request(3, &Request::Fetch { item_id: 1 }).await?;
        raw.request(4, &auth("alice", "alice-pw")).await?;
        raw.request(5, &auth("bob", "bob-pw")).await?;
        raw.request(6, &Request::Ping).await?;
        raw.request(
            7,
            &Request::SendMessage {
                to: "alice".into(),
                text: "to self".into(),
            },
        )
        .await?;
        raw.request(
            8,
            &Request::UploadBegin {
                name: "f".into(),
                size: 3,
            },
        )
        .await?;
        raw.request(
            9,
            &Request::UploadChunk {
                upload_id: 1,
                offset: 0,
                data: Bytes::from_static(b"abc"),
            },
        )
        .await?;
        raw.request(
            10,
            &Request::UploadEnd {
                upload_id: 1,
                digest: *blake3::hash(b"abc").as_bytes(),
            },
        )
        .await?;
        raw.request(
            11,
            &Request::SendFile {
                to: "alice".into(),
                upload_id: 1,
            },
        )
        .await?;
        raw.request(
            12,
            &Request::SendMail {
                to: "alice".into(),
                subject: "s".into(),
                body: "b".into(),
                attachments: vec![],
            },
        )
        .await?;
        raw.request(13, &Request::ListInbox { after: 0, limit: 0 })
            .await?;
        for (id, item) in [(14, 1), (15, 2), (16, 3), (17, 999)] {
            raw.request(id, &Request::Fetch { item_id: item }).await?;
        }
        raw.request(
            18,
            &Request::Download {
                item_id: 2,
                part: 0,
                offset: 0,
                max_len: 100,
            },
        )
        .await?;
        raw.request(19, &Request::Delete { item_id: 1 }).await?;
        raw.request(20, &Request::Bye).await?;
        let (replies, closed) = raw.until_closed(Duration::from_secs(10)).await?;
        assert!(closed);
        assert_eq!(replies.len(), 20, "{replies:?}");
        assert!(matches!(replies[3].1, Reply::AuthOk { .. }), "{replies:?}");
        assert!(matches!(replies[16].1, Reply::Error { .. }), "{replies:?}");
        for needle in [&b"$argon2"[..], b"alice-pw", b"bob-pw"] {
            assert!(!contains(&raw.seen, needle), "a reply carried {needle:?}");
        }
        // The store does hold argon2 hashes; they just never leave it.
        let (_, hash) = server
            .handle
            .server()
            .store()
            .credentials("alice")?
            .ok_or("alice exists")?;
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_back_off_per_user_for_addresses_that_failed() -> TestResult {
    within(async {
        let mut cfg = config();
        cfg.rates.logins_burst_per_user = 5;
        cfg.rates.logins_per_min_per_user = 1;
        let server = start_server_with(cfg).await;
        let target = server.target();
        // Each attempt from its own source: only the per-user limit can apply.
        let from = |n: u8| ClientOptions::default().source(ip(17, n));
        for n in 1..=5 {
            let attempt = Client::login(&target, "bob", b"guess", from(n)).await;
            refused(attempt, ErrorCode::AuthFailed)?;
        }
        // The account is in backoff. An address is still verified until its own failures
        // are as many as the firewall blocks for (4 by default)... (distinct guesses: the
        // same wrong password retried from one address counts once)
        for n in 1..4 {
            refused(
                Client::login(&target, "bob", format!("guess-{n}").as_bytes(), from(1)).await,
                ErrorCode::AuthFailed,
            )?;
        }
        // ...then it waits, even with the right password (it cannot be told from a guesser)...
        let again = Client::login(&target, "bob", b"bob-pw", from(1)).await;
        let message = refused(again, ErrorCode::RateLimited)?;
        assert!(message.contains("login_rate_user"), "{message}");
        // ...while an address without failures is verified: a wrong password fails as
        // usual and the right one gets in.
        refused(
            Client::login(&target, "bob", b"guess", from(6)).await,
            ErrorCode::AuthFailed,
        )?;
        let mut bob = Client::login(&target, "bob", b"bob-pw", from(7)).await?;
        bob.ping().await?;
        assert_eq!(server.handle.metrics().snapshot().auth_failed, 9);
        // Other users are unaffected.
        let mut alice = Client::login(&target, "alice", b"alice-pw", from(8)).await?;
        alice.ping().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_rate_limited_per_source() -> TestResult {
    within(async {
        let mut cfg = config();
        cfg.rates.logins_burst_per_ip = 4;
        cfg.rates.logins_per_min_per_ip = 1;
        let server = start_server_with(cfg).await;
        let mut c =
            Client::connect(server.target(), ClientOptions::default().source(ip(17, 20))).await?;
        // Different (unknown) names, so only the per-source limit can apply.
        for n in 1..=4 {
            refused(
                c.auth(&format!("user{n}"), b"guess").await,
                ErrorCode::AuthFailed,
            )?;
        }
        let message = refused(c.auth("user5", b"guess").await, ErrorCode::RateLimited)?;
        assert!(message.contains("login_rate_ip"), "{message}");
        refused(c.auth("alice", b"alice-pw").await, ErrorCode::RateLimited)?;
        // A new connection from the same source gets no fresh allowance.
        let again = Client::login(
            server.target(),
            "alice",
            b"alice-pw",
            ClientOptions::default().source(ip(17, 20)),
        )
        .await;
        refused(again, ErrorCode::RateLimited)?;
        // Another source logs in.
        still_serves(&server, ip(17, 21)).await
    })
    .await
}

// ---------------------------------------------------------------------------------------
// 4. IP blocklist.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_source_is_closed_without_a_byte() -> TestResult {
    within(async {
        let mut cfg = config();
        cfg.ip.deny = vec!["127.0.18.1/32".parse()?];
        // The deny list is absolute: being allow-listed too does not help.
        cfg.ip.allow = vec!["127.0.18.0/24".parse()?];
        let server = start_server_with(cfg).await;

        let mut raw = Raw::connect(server.addr, ip(18, 1)).await?;
        raw.request(1, &Request::Ping).await?;
        let (replies, closed) = raw.until_closed(Duration::from_secs(5)).await?;
        assert!(closed);
        assert!(replies.is_empty() && raw.seen.is_empty(), "{:?}", raw.seen);
        let metrics = server.handle.metrics();
        assert!(
            eventually(Duration::from_secs(3), || metrics
                .snapshot()
                .connections_refused
                == 1)
            .await
        );
        let login = Client::login(
            server.target(),
            "alice",
            b"alice-pw",
            ClientOptions::default().source(ip(18, 1)),
        )
        .await;
        assert!(
            matches!(login, Err(ClientError::Closed | ClientError::Io(_))),
            "{login:?}"
        );
        assert_eq!(metrics.snapshot().connections_accepted, 0);
        still_serves(&server, ip(18, 2)).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_block_cuts_open_sessions_and_refuses_new_ones() -> TestResult {
    within(async {
        let server = start_server_with(config()).await;
        let guard = server.handle.guard();
        let blocked = ip(18, 11);
        let mut alice = server.login_from("alice", Some(blocked)).await;
        let mut bob = server.login_from("bob", Some(ip(18, 12))).await;
        alice.ping().await?;

        assert!(guard.block(blocked, Duration::from_secs(5), "test"));
        assert!(guard.is_blocked(blocked));
        assert!(!guard.is_blocked(ip(18, 12)));
        assert_eq!(guard.blocked().len(), 1);
        // The cut is asynchronous (see `a_blocked_session_gets_no_reply_after_the_block`):
        // wait until only bob's connection is left, then alice's session is gone.
        assert!(
            eventually(Duration::from_secs(5), || guard.stats().connections == 1).await,
            "the blocked source's session was not cut: {:?}",
            guard.stats()
        );
        let cut = alice.ping().await;
        assert!(
            matches!(cut, Err(ClientError::Closed | ClientError::Io(_))),
            "{cut:?}"
        );
        let refused_before = server.handle.metrics().snapshot().connections_refused;
        let mut raw = Raw::connect(server.addr, blocked).await?;
        raw.request(1, &Request::Ping).await?;
        let (replies, closed) = raw.until_closed(Duration::from_secs(5)).await?;
        // Told why, once, and closed: ERROR blocked with the seconds left and the reason.
        assert!(closed);
        match replies.as_slice() {
            [(0, Reply::Error { code, message })] => {
                assert_eq!(*code, ErrorCode::Blocked);
                assert_eq!(message, "your address is blocked for 5 s (test)");
            }
            other => panic!("expected one ERROR blocked, got {other:?}"),
        }
        assert_eq!(
            server.handle.metrics().snapshot().connections_refused,
            refused_before + 1
        );
        bob.ping().await?;
        bob.send_message("alice", "unaffected").await?;

        assert!(guard.unblock(blocked));
        assert!(!guard.is_blocked(blocked));
        let mut back = server.login_from("alice", Some(blocked)).await;
        assert_eq!(back.inbox().await?.len(), 1);

        // A block expires by itself.
        let brief = ip(18, 13);
        assert!(guard.block(brief, Duration::from_secs(1), "brief"));
        assert!(guard.is_blocked(brief));
        assert!(eventually(Duration::from_secs(4), || !guard.is_blocked(brief)).await);
        let mut after = server.login_from("bob", Some(brief)).await;
        after.ping().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_session_gets_no_reply_after_the_block() -> TestResult {
    within(async {
        let mut cfg = config();
        cfg.rates.logins_burst_per_user = 100;
        let server = start_server_with(cfg).await;
        let guard = server.handle.guard();
        // Twenty rounds: a race lost half the time shows up.
        for round in 0..20u8 {
            let source = ip(18, 100 + round);
            let mut alice = server.login_from("alice", Some(source)).await;
            alice.ping().await?;
            assert!(guard.block(source, Duration::from_secs(30), "test"));
            let next = alice.ping().await;
            assert!(
                matches!(next, Err(ClientError::Closed | ClientError::Io(_))),
                "round {round}: the request after block() got {next:?}"
            );
        }
        still_serves(&server, ip(18, 99)).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_listed_source_is_never_blocked() -> TestResult {
    within(async {
        let mut cfg = config();
        cfg.ip.allow = vec!["127.0.18.21/32".parse()?];
        let server = start_server_with(cfg).await;
        let guard = server.handle.guard();
        let trusted = ip(18, 21);
        let mut alice = server.login_from("alice", Some(trusted)).await;
        assert!(!guard.block(trusted, Duration::from_secs(60), "test"));
        assert!(!guard.is_blocked(trusted));
        assert!(guard.blocked().is_empty());
        alice.ping().await?;
        let mut again = server.login_from("bob", Some(trusted)).await;
        again.ping().await?;
        // Its neighbour is not allow-listed.
        assert!(guard.block(ip(18, 22), Duration::from_secs(60), "test"));
        alice.ping().await?;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------
// 5. Nothing is lost.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_items_survive_a_restart() -> TestResult {
    within(async {
        let mut rng = rng(0x0D0A_B1E5);
        let cfg = config();
        let server = start_server_with(cfg.clone()).await;
        let file = random_bytes(&mut rng, 1_500_000);
        let att = random_bytes(&mut rng, 10_000);
        let (m, f, mail) = {
            let mut alice = server.login_from("alice", Some(ip(19, 1))).await;
            let m = alice.send_message("bob", "durable").await?;
            let f = alice.send_file_bytes("bob", "durable.bin", &file).await?;
            let mail = alice
                .send_mail_with("bob", "kept", "body", &[("a.bin".into(), att.clone())])
                .await?;
            alice.bye().await?;
            (m, f, mail)
        };
        // An open session is told the server is shutting down.
        let mut open = Raw::connect(server.addr, ip(19, 2)).await?;
        open.login("bob", "bob-pw").await?;

        let TestServer { handle, dir, .. } = server;
        handle.shutdown().await;
        let (replies, closed) = open.until_closed(Duration::from_secs(5)).await?;
        assert!(closed);
        assert_eq!(replies.len(), 1, "{replies:?}");
        error_message(&replies[0], 0, ErrorCode::ShuttingDown)?;

        let handle = Server::open(cfg, dir.path())?
            .bind("127.0.0.1:0".parse()?)
            .await?;
        let addr = handle.local_addr();
        let server = TestServer { handle, dir, addr };
        let mut bob = server.login_from("bob", Some(ip(19, 3))).await;
        let ids: Vec<u64> = bob.inbox().await?.iter().map(|e| e.id).collect();
        assert_eq!(ids, [m, f, mail]);
        assert_eq!(
            bob.fetch(m).await?.body,
            ItemBody::Message {
                text: "durable".into()
            }
        );
        assert!(bob.download_bytes(f, 0).await? == file);
        assert!(bob.download_bytes(mail, 0).await? == att);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_finished_upload_is_never_visible_and_leaves_nothing() -> TestResult {
    within(async {
        let server = start_server_with(config()).await;
        let alice_id = user_id(&server, "alice")?;
        let mut alice = server.login_from("alice", Some(ip(19, 10))).await;
        let mut bob = server.login_from("bob", Some(ip(19, 11))).await;
        let ready = alice
            .call(Request::UploadBegin {
                name: "partial.bin".into(),
                size: 1024 * 1024,
            })
            .await?;
        let Reply::UploadReady { upload_id, .. } = ready else {
            return Err(format!("expected UPLOAD_READY, got {ready:?}").into());
        };
        for n in 0..3u64 {
            alice
                .call(Request::UploadChunk {
                    upload_id,
                    offset: n * 65_536,
                    data: Bytes::from(vec![n as u8; 65_536]),
                })
                .await?;
        }
        // An upload cannot be delivered before it is finished.
        refused(
            alice
                .call(Request::SendFile {
                    to: "bob".into(),
                    upload_id,
                })
                .await,
            ErrorCode::NotFound,
        )?;
        // Ending it early is refused and aborts it.
        let early = alice
            .call(Request::UploadEnd {
                upload_id,
                digest: [0; 32],
            })
            .await;
        refused(early, ErrorCode::BadRequest)?;
        // A second partial upload, then the client vanishes without a word.
        alice
            .call(Request::UploadBegin {
                name: "partial2.bin".into(),
                size: 1000,
            })
            .await?;
        alice
            .call(Request::UploadChunk {
                upload_id: upload_id + 1,
                offset: 0,
                data: Bytes::from(vec![1u8; 500]),
            })
            .await?;
        assert_eq!(staged_files(server.dir.path())?, 1, "staged in blobs/tmp");
        assert!(bob.inbox().await?.is_empty());
        drop(alice);

        assert!(
            eventually(Duration::from_secs(5), || staged_files(server.dir.path())
                .is_ok_and(|n| n == 0))
            .await,
            "blobs/tmp must be emptied when the session ends"
        );
        assert!(bob.inbox().await?.is_empty());
        assert_eq!(committed_blobs(server.dir.path())?, 0);
        assert_eq!(server.handle.server().store().usage(alice_id)?, 0);
        let mut alice = server.login_from("alice", Some(ip(19, 10))).await;
        assert!(alice.inbox().await?.is_empty());
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_finished_upload_is_deleted_when_the_session_ends() -> TestResult {
    within(async {
        let mut rng = rng(0x0B5E_7ED0);
        let server = start_server_with(config()).await;
        let data = random_bytes(&mut rng, 100_000);
        for round in 0..3 {
            let mut alice = server.login_from("alice", Some(ip(19, 20))).await;
            alice.upload_bytes("never-sent.bin", &data).await?;
            drop(alice);
            let guard = server.handle.guard();
            assert!(eventually(Duration::from_secs(5), || guard.stats().connections == 0).await);
            assert!(
                eventually(Duration::from_secs(5), || committed_blobs(
                    server.dir.path()
                )
                .is_ok_and(|n| n == 0))
                .await,
                "round {round}: {} unused blob files left",
                committed_blobs(server.dir.path())?
            );
        }
        Ok(())
    })
    .await
}
