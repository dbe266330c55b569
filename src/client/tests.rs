//! Client tests against a scripted fake server: a task on 127.0.0.1:0 that decodes requests
//! with the server-side codec and answers whatever the test script says.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

use super::*;
use crate::protocol::{
    Attachment, ErrorCode, Frame, FrameCodec, InboxEntry, ItemBody, ItemKind, ItemView, Kind,
    Limits, Reply, Request, Role,
};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The fake server's side of one connection.
struct Peer {
    io: Framed<TcpStream, FrameCodec>,
}

impl Peer {
    /// The next request, or None when the client closed the connection.
    async fn recv(&mut self) -> Option<(u32, Request)> {
        let frame = self.io.next().await?.ok()?;
        let req = Request::decode(&frame, &Limits::default()).expect("fake: request decodes");
        Some((frame.request_id, req))
    }

    /// The next request, which must exist.
    async fn expect(&mut self) -> (u32, Request) {
        self.recv().await.expect("fake: client sent a request")
    }

    async fn reply(&mut self, id: u32, reply: Reply) {
        self.io.send((id, reply)).await.expect("fake: reply sent");
    }

    /// Reads until the client closes, so the connection stays open as long as the test needs.
    async fn hold(mut self) {
        while self.recv().await.is_some() {}
    }
}

/// Starts a fake server that runs `script` on its first connection.
async fn fake<F, Fut, T>(script: F) -> std::io::Result<(SocketAddr, JoinHandle<T>)>
where
    F: FnOnce(Peer) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("fake: accept");
        let io = Framed::new(stream, FrameCodec::new(Limits::default(), Role::Server));
        script(Peer { io }).await
    });
    Ok((addr, task))
}

fn opts() -> ClientOptions {
    ClientOptions::default().request_timeout(Duration::from_secs(10))
}

/// Deterministic test bytes.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn attachment(name: &str, data: &[u8]) -> Attachment {
    Attachment {
        name: name.to_string(),
        size: data.len() as u64,
        digest: *blake3::hash(data).as_bytes(),
    }
}

/// Answers FETCH from `items` and DOWNLOAD from `parts`, sending at most `cap` bytes per DATA,
/// until the client closes. Returns the number of DOWNLOAD requests served.
async fn serve_items(
    mut peer: Peer,
    items: HashMap<u64, ItemView>,
    parts: HashMap<(u64, u16), Vec<u8>>,
    cap: usize,
) -> usize {
    let mut downloads = 0;
    while let Some((id, req)) = peer.recv().await {
        let reply = match req {
            Request::Fetch { item_id } => match items.get(&item_id) {
                Some(view) => Reply::Item(view.clone()),
                None => Reply::error(ErrorCode::NotFound, "no such item"),
            },
            Request::Download {
                item_id,
                part,
                offset,
                max_len,
            } => {
                downloads += 1;
                match parts.get(&(item_id, part)) {
                    Some(bytes) if offset <= bytes.len() as u64 => {
                        let start = offset as usize;
                        let end = bytes.len().min(start + cap.min(max_len as usize));
                        Reply::Data {
                            item_id,
                            part,
                            offset,
                            total: bytes.len() as u64,
                            data: bytes[start..end].to_vec().into(),
                        }
                    }
                    Some(_) => Reply::error(ErrorCode::BadRequest, "offset past the end"),
                    None => Reply::error(ErrorCode::NotFound, "no such part"),
                }
            }
            Request::Ping => Reply::Pong,
            other => panic!("fake: unexpected request {other:?}"),
        };
        peer.reply(id, reply).await;
    }
    downloads
}

#[tokio::test]
async fn login_sets_the_user_and_ids_start_at_one() -> TestResult {
    let (addr, server) = fake(|mut peer| async move {
        let (id, req) = peer.expect().await;
        assert_eq!(id, 1);
        match req {
            Request::Auth { user, password } => {
                assert_eq!(user, "alice");
                assert_eq!(&password.0[..], b"hunter2");
            }
            other => panic!("expected AUTH, got {other:?}"),
        }
        peer.reply(
            id,
            Reply::AuthOk {
                user: "alice".into(),
            },
        )
        .await;
        let (id, req) = peer.expect().await;
        assert_eq!((id, req), (2, Request::Ping));
        peer.reply(id, Reply::Pong).await;
        peer.hold().await;
    })
    .await?;
    let mut client = Client::login(addr, "alice", b"hunter2", opts()).await?;
    assert_eq!(client.user(), Some("alice"));
    client.ping().await?;
    assert_eq!(client.local_addr()?.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    drop(client);
    server.await?;
    Ok(())
}

#[tokio::test]
async fn error_reply_becomes_server_error_and_connection_stays_usable() -> TestResult {
    let (addr, server) = fake(|mut peer| async move {
        let (id, req) = peer.expect().await;
        assert_eq!(req, Request::Fetch { item_id: 7 });
        peer.reply(id, Reply::error(ErrorCode::NotFound, "no such item"))
            .await;
        let (id, _) = peer.expect().await;
        peer.reply(id, Reply::Pong).await;
        // A reply of the wrong kind for DELETE.
        let (id, _) = peer.expect().await;
        peer.reply(id, Reply::Pong).await;
        peer.hold().await;
    })
    .await?;
    let mut client = Client::connect(&addr.to_string(), opts()).await?;
    let err = client.fetch(7).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    assert_eq!(err.to_string(), "server refused: no such item (not_found)");
    client.ping().await?;
    let err = client.delete(3).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::UnexpectedReply {
                expected: "OK",
                got: Kind::Pong
            }
        ),
        "{err:?}"
    );
    drop(client);
    server.await?;
    Ok(())
}

#[tokio::test]
async fn request_ids_wrap_and_skip_zero() -> TestResult {
    let (addr, server) = fake(|mut peer| async move {
        let mut ids = Vec::new();
        for _ in 0..2 {
            let (id, _) = peer.expect().await;
            ids.push(id);
            peer.reply(id, Reply::Pong).await;
        }
        peer.hold().await;
        ids
    })
    .await?;
    let mut client = Client::connect(addr, opts()).await?;
    client.next_id = u32::MAX;
    client.ping().await?;
    client.ping().await?;
    drop(client);
    assert_eq!(server.await?, vec![u32::MAX, 1]);
    Ok(())
}

#[tokio::test]
async fn mismatched_reply_id_is_an_error_and_closes_the_client() -> TestResult {
    let (addr, server) = fake(|mut peer| async move {
        let (id, _) = peer.expect().await;
        peer.reply(id + 1, Reply::Pong).await;
        peer.hold().await;
    })
    .await?;
    let mut client = Client::connect(addr, opts()).await?;
    let err = client.ping().await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::ReplyIdMismatch {
                expected: 1,
                got: 2
            }
        ),
        "{err:?}"
    );
    assert!(client.is_closed());
    assert!(matches!(client.ping().await, Err(ClientError::Closed)));
    drop(client);
    server.await?;
    Ok(())
}

#[tokio::test]
async fn connection_level_error_with_id_zero_is_a_server_error() -> TestResult {
    let (addr, server) = fake(|mut peer| async move {
        peer.reply(0, Reply::error(ErrorCode::Busy, "too many connections"))
            .await;
        peer.hold().await;
    })
    .await?;
    let mut client = Client::connect(addr, opts()).await?;
    let err = client.ping().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Busy), "{err:?}");
    assert!(matches!(client.ping().await, Err(ClientError::Closed)));
    drop(client);
    server.await?;
    Ok(())
}

#[tokio::test]
async fn undecodable_reply_body_is_a_protocol_error() -> TestResult {
    let (addr, server) = fake(|mut peer| async move {
        let (id, _) = peer.expect().await;
        // ACCEPTED needs 8 bytes of body; send 3.
        peer.io
            .send(Frame::new(Kind::Accepted, id, vec![1, 2, 3]))
            .await
            .expect("fake: raw frame sent");
        let (id, _) = peer.expect().await;
        peer.reply(id, Reply::Pong).await;
        peer.hold().await;
    })
    .await?;
    let mut client = Client::connect(addr, opts()).await?;
    let err = client.send_message("bob", "hi").await.unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
    // The frame itself was whole, so the stream is still in step.
    client.ping().await?;
    drop(client);
    server.await?;
    Ok(())
}

#[tokio::test]
async fn pipeline_sends_everything_first_and_returns_replies_in_order() -> TestResult {
    let (addr, server) = fake(|mut peer| async move {
        // Read all four before answering: the client must not wait between requests.
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(peer.expect().await);
        }
        let ids: Vec<u32> = got.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![1, 2, 3, 4]);
        let replies = [
            Reply::Pong,
            Reply::error(ErrorCode::NotFound, "no such item"),
            Reply::Ok,
            Reply::Pong,
        ];
        for ((id, _), reply) in got.into_iter().zip(replies) {
            peer.reply(id, reply).await;
        }
        peer.hold().await;
    })
    .await?;
    let mut client = Client::connect(addr, opts()).await?;
    let replies = client
        .pipeline(vec![
            Request::Ping,
            Request::Fetch { item_id: 5 },
            Request::Delete { item_id: 6 },
            Request::Ping,
        ])
        .await?;
    assert_eq!(
        replies,
        vec![
            Reply::Pong,
            Reply::error(ErrorCode::NotFound, "no such item"),
            Reply::Ok,
            Reply::Pong,
        ]
    );
    assert!(client.pipeline(Vec::new()).await?.is_empty());
    drop(client);
    server.await?;
    Ok(())
}

#[tokio::test]
async fn long_pipeline_reads_while_it_writes() -> TestResult {
    const N: u32 = 5_000;
    let (addr, server) = fake(|mut peer| async move {
        let mut expected = 1;
        while let Some((id, req)) = peer.recv().await {
            assert_eq!(id, expected);
            expected += 1;
            let reply = match req {
                Request::SendMessage { .. } => Reply::Accepted {
                    item_id: u64::from(id),
                },
                other => panic!("unexpected {other:?}"),
            };
            peer.reply(id, reply).await;
        }
    })
    .await?;
    let mut client = Client::connect(addr, opts()).await?;
    let text = "x".repeat(1000);
    let reqs = (0..N)
        .map(|_| Request::SendMessage {
            to: "bob".into(),
            text: text.clone(),
        })
        .collect();
    let replies = client.pipeline(reqs).await?;
    assert_eq!(replies.len(), N as usize);
    assert_eq!(replies.last(), Some(&Reply::Accepted { item_id: 5_000 }));
    drop(client);
    server.await?;
    Ok(())
}

/// What the fake upload server observed.
#[derive(Debug, Default)]
struct UploadSeen {
    name: String,
    data: Vec<u8>,
    largest_chunk: usize,
    most_unacked: usize,
}

/// Serves one upload with `max_chunk`, acking only when `window` chunks are outstanding (or
/// the upload is complete) and checking that the client never sends more than `window`
/// unacknowledged chunks; then answers SEND_FILE.
async fn serve_upload(mut peer: Peer, max_chunk: u32, window: usize) -> UploadSeen {
    const UPLOAD: u32 = 9;
    let mut seen = UploadSeen::default();
    let (id, req) = peer.expect().await;
    let Request::UploadBegin { name, size } = req else {
        panic!("expected UPLOAD_BEGIN, got {req:?}");
    };
    seen.name = name;
    peer.reply(
        id,
        Reply::UploadReady {
            upload_id: UPLOAD,
            max_chunk,
        },
    )
    .await;
    let mut unacked: Vec<(u32, u64)> = Vec::new();
    while (seen.data.len() as u64) < size {
        let (id, req) = peer.expect().await;
        let Request::UploadChunk {
            upload_id,
            offset,
            data,
        } = req
        else {
            panic!("expected UPLOAD_CHUNK, got {req:?}");
        };
        assert_eq!(upload_id, UPLOAD);
        assert_eq!(offset, seen.data.len() as u64, "chunk offset");
        seen.largest_chunk = seen.largest_chunk.max(data.len());
        seen.data.extend_from_slice(&data);
        unacked.push((id, seen.data.len() as u64));
        seen.most_unacked = seen.most_unacked.max(unacked.len());
        let complete = seen.data.len() as u64 >= size;
        if unacked.len() == window && !complete {
            // The window is full: the client must now wait for an ack, not send more.
            let extra = tokio::time::timeout(Duration::from_millis(50), peer.recv()).await;
            assert!(extra.is_err(), "client exceeded its upload window");
        }
        if unacked.len() == window || complete {
            for (id, received) in unacked.drain(..) {
                peer.reply(
                    id,
                    Reply::ChunkOk {
                        upload_id: UPLOAD,
                        received,
                    },
                )
                .await;
            }
        }
    }
    let (id, req) = peer.expect().await;
    let Request::UploadEnd { upload_id, digest } = req else {
        panic!("expected UPLOAD_END, got {req:?}");
    };
    assert_eq!(upload_id, UPLOAD);
    let reply = if digest == *blake3::hash(&seen.data).as_bytes() {
        Reply::UploadDone {
            upload_id,
            size: seen.data.len() as u64,
        }
    } else {
        Reply::error(ErrorCode::DigestMismatch, "digest mismatch")
    };
    peer.reply(id, reply).await;
    let (id, req) = peer.expect().await;
    assert_eq!(
        req,
        Request::SendFile {
            to: "bob".into(),
            upload_id: UPLOAD
        }
    );
    peer.reply(id, Reply::Accepted { item_id: 42 }).await;
    peer.hold().await;
    seen
}

#[tokio::test]
async fn upload_keeps_a_window_of_chunks_and_sends_the_digest() -> TestResult {
    let data = pattern(9_500, 3);
    let (addr, server) = fake(|peer| serve_upload(peer, 1000, 4)).await?;
    let mut client = Client::connect(addr, opts().upload_window(4)).await?;
    let item = client.send_file_bytes("bob", "../x.bin", &data).await?;
    assert_eq!(item, 42);
    drop(client);
    let seen = server.await?;
    assert_eq!(seen.name, "../x.bin");
    assert_eq!(seen.data, data);
    assert_eq!(seen.largest_chunk, 1000, "chunk size capped by max_chunk");
    assert_eq!(seen.most_unacked, 4);
    Ok(())
}

#[tokio::test]
async fn upload_of_a_file_and_of_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("notes.txt");
    let data = pattern(3_000, 9);
    std::fs::write(&path, &data)?;
    let (addr, server) = fake(|peer| serve_upload(peer, 256 * 1024, 8)).await?;
    let mut client = Client::connect(addr, opts().chunk_size(1024)).await?;
    assert_eq!(client.send_file("bob", &path).await?, 42);
    drop(client);
    let seen = server.await?;
    assert_eq!(seen.name, "notes.txt");
    assert_eq!(seen.data, data);
    assert_eq!(seen.largest_chunk, 1024, "chunk size from the options");

    let (addr, server) = fake(|peer| serve_upload(peer, 1000, 8)).await?;
    let mut client = Client::connect(addr, opts()).await?;
    assert_eq!(client.send_file_bytes("bob", "empty", b"").await?, 42);
    drop(client);
    assert!(server.await?.data.is_empty());
    Ok(())
}

#[tokio::test]
async fn missing_file_is_a_file_error() -> TestResult {
    let (addr, server) = fake(|peer| peer.hold()).await?;
    let mut client = Client::connect(addr, opts()).await?;
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("nope.bin");
    let err = client.send_file("bob", &missing).await.unwrap_err();
    assert!(matches!(err, ClientError::File { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("file not found: {}", missing.display())
    );
    drop(client);
    server.await?;
    Ok(())
}

#[tokio::test]
async fn upload_error_mid_window_leaves_the_connection_usable() -> TestResult {
    let (addr, server) = fake(|mut peer| async move {
        while let Some((id, req)) = peer.recv().await {
            let reply = match req {
                Request::UploadBegin { .. } => Reply::UploadReady {
                    upload_id: 1,
                    max_chunk: 100,
                },
                Request::UploadChunk {
                    offset: 0, data, ..
                } => Reply::ChunkOk {
                    upload_id: 1,
                    received: data.len() as u64,
                },
                Request::UploadChunk { offset: 100, .. } => {
                    Reply::error(ErrorCode::QuotaExceeded, "quota exceeded")
                }
                Request::UploadChunk { .. } => Reply::error(ErrorCode::NotFound, "no such upload"),
                Request::Ping => Reply::Pong,
                other => panic!("unexpected {other:?}"),
            };
            peer.reply(id, reply).await;
        }
    })
    .await?;
    let mut client = Client::connect(addr, opts().upload_window(4)).await?;
    let err = client
        .upload_bytes("big", &pattern(1_000, 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::QuotaExceeded), "{err:?}");
    // Replies still owed to the abandoned chunks are skipped.
    client.ping().await?;
    client.ping().await?;
    drop(client);
    server.await?;
    Ok(())
}

fn file_item(id: u64, name: &str, data: &[u8]) -> ItemView {
    ItemView {
        id,
        from: "alice".into(),
        received_at_ms: 1,
        body: ItemBody::File(attachment(name, data)),
    }
}

#[tokio::test]
async fn download_follows_a_smaller_server_chunk_and_verifies_the_digest() -> TestResult {
    let data = pattern(10_000, 5);
    let items = HashMap::from([(5, file_item(5, "a.bin", &data))]);
    let parts = HashMap::from([((5, 0), data.clone())]);
    // The server sends at most 700 bytes per DATA while the client asks for 1000.
    let (addr, server) = fake(move |peer| serve_items(peer, items, parts, 700)).await?;
    let mut client = Client::connect(addr, opts().chunk_size(1000).upload_window(4)).await?;
    let got = client.download_bytes(5, 0).await?;
    assert_eq!(got.len(), data.len());
    assert!(got == data, "downloaded bytes differ");
    // A part that does not exist is refused by the server, not invented by the client.
    let err = client.download_bytes(5, 1).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err:?}");
    client.ping().await?;
    drop(client);
    let requests = server.await?;
    assert!(requests >= 15, "{requests} DOWNLOAD requests");
    Ok(())
}

#[tokio::test]
async fn download_detects_a_digest_mismatch() -> TestResult {
    let data = pattern(2_000, 5);
    let mut view = file_item(5, "a.bin", &data);
    if let ItemBody::File(att) = &mut view.body {
        att.digest = *blake3::hash(b"something else").as_bytes();
    }
    let items = HashMap::from([(5, view)]);
    let parts = HashMap::from([((5, 0), data.clone())]);
    let (addr, server) = fake(move |peer| serve_items(peer, items, parts, 512)).await?;
    let mut client = Client::connect(addr, opts()).await?;
    let err = client.download_bytes(5, 0).await.unwrap_err();
    match err {
        ClientError::DigestMismatch { expected, actual } => {
            assert_eq!(expected, hex(blake3::hash(b"something else").as_bytes()));
            assert_eq!(actual, hex(blake3::hash(&data).as_bytes()));
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    drop(client);
    server.await?;
    Ok(())
}

#[tokio::test]
async fn save_attachments_sanitizes_and_deduplicates_names() -> TestResult {
    let root = tempfile::tempdir()?;
    let dir = root.path().join("inbox");
    std::fs::create_dir(&dir)?;
    std::fs::write(dir.join("report.txt"), b"old")?;
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("../../etc/passwd", pattern(100, 1)),
        ("passwd", pattern(200, 2)),
        ("report.txt", pattern(300, 3)),
        ("..", pattern(40, 4)),
    ];
    let view = ItemView {
        id: 8,
        from: "mallory".into(),
        received_at_ms: 1,
        body: ItemBody::Mail {
            subject: "hi".into(),
            body: "see attached".into(),
            attachments: files.iter().map(|(n, d)| attachment(n, d)).collect(),
        },
    };
    let items = HashMap::from([(8, view)]);
    let parts = files
        .iter()
        .enumerate()
        .map(|(i, (_, d))| ((8, i as u16), d.clone()))
        .collect();
    let (addr, server) = fake(move |peer| serve_items(peer, items, parts, 64)).await?;
    let mut client = Client::connect(addr, opts()).await?;
    let saved = client.save_attachments(8, &dir).await?;
    let names: Vec<String> = saved
        .iter()
        .map(|p| p.strip_prefix(&dir).map(|n| n.display().to_string()))
        .collect::<Result<_, _>>()?;
    assert_eq!(
        names,
        vec!["passwd", "passwd (1)", "report (1).txt", "unnamed"]
    );
    for (path, (_, data)) in saved.iter().zip(&files) {
        assert_eq!(&std::fs::read(path)?, data);
    }
    assert_eq!(std::fs::read(dir.join("report.txt"))?, b"old");
    let mut outside: Vec<_> = std::fs::read_dir(root.path())?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    outside.sort();
    assert_eq!(outside, vec![std::ffi::OsString::from("inbox")]);
    drop(client);
    server.await?;
    Ok(())
}

#[tokio::test]
async fn save_attachments_removes_a_file_that_fails_verification() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = pattern(500, 7);
    let mut view = file_item(3, "evil.sh", &data);
    if let ItemBody::File(att) = &mut view.body {
        att.digest = [0; 32];
    }
    let items = HashMap::from([(3, view)]);
    let parts = HashMap::from([((3, 0), data)]);
    let (addr, server) = fake(move |peer| serve_items(peer, items, parts, 128)).await?;
    let mut client = Client::connect(addr, opts()).await?;
    let err = client.save_attachments(3, dir.path()).await.unwrap_err();
    assert!(matches!(err, ClientError::DigestMismatch { .. }), "{err:?}");
    assert!(!dir.path().join("evil.sh").exists());
    drop(client);
    server.await?;
    Ok(())
}

fn entry(id: u64) -> InboxEntry {
    InboxEntry {
        id,
        kind: ItemKind::Message,
        from: "alice".into(),
        size: 2,
        received_at_ms: 0,
        title: String::new(),
    }
}

#[tokio::test]
async fn inbox_reads_every_page_and_stops_when_ids_do_not_advance() -> TestResult {
    let (addr, server) = fake(|mut peer| async move {
        let mut afters = Vec::new();
        while let Some((id, req)) = peer.recv().await {
            let Request::ListInbox { after, limit } = req else {
                panic!("expected LIST_INBOX, got {req:?}");
            };
            assert_eq!(limit, 0);
            afters.push(after);
            let entries = match after {
                0 => vec![entry(1), entry(2)],
                2 => vec![entry(3)],
                // A confused server that repeats the last page.
                _ => vec![entry(3)],
            };
            peer.reply(id, Reply::Inbox { entries }).await;
        }
        afters
    })
    .await?;
    let mut client = Client::connect(addr, opts()).await?;
    let ids: Vec<u64> = client.inbox().await?.iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    drop(client);
    assert_eq!(server.await?, vec![0, 2, 3]);
    Ok(())
}

#[tokio::test]
async fn server_dropping_the_connection_is_closed() -> TestResult {
    let (addr, server) = fake(|peer| async move { drop(peer) }).await?;
    let mut client = Client::connect(addr, opts()).await?;
    server.await?;
    let err = client.ping().await.unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn silent_server_times_out_and_a_late_reply_is_skipped() -> TestResult {
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let (addr, server) = fake(|mut peer| async move {
        let (first, _) = peer.expect().await;
        let _ = wait.await;
        peer.reply(first, Reply::Pong).await;
        let (second, _) = peer.expect().await;
        peer.reply(second, Reply::Pong).await;
        peer.hold().await;
    })
    .await?;
    let timeout = Duration::from_millis(200);
    let mut client = Client::connect(addr, opts().request_timeout(timeout)).await?;
    let started = Instant::now();
    let err = client.ping().await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout), "{err:?}");
    assert!(started.elapsed() >= timeout);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!client.is_closed());
    let _ = go.send(());
    client.ping().await?;
    drop(client);
    server.await?;
    Ok(())
}

#[tokio::test]
async fn unreachable_server_is_a_connect_error() -> TestResult {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    drop(listener);
    let opts = opts().source(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let err = Client::connect(addr, opts).await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot reach server at {addr}: ")),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn bye_waits_for_ok() -> TestResult {
    let (addr, server) = fake(|mut peer| async move {
        let (id, req) = peer.expect().await;
        assert_eq!(req, Request::Bye);
        peer.reply(id, Reply::Ok).await;
        // The client half-closes after OK.
        assert!(peer.recv().await.is_none());
    })
    .await?;
    let client = Client::connect(addr, opts().source(IpAddr::V4(Ipv4Addr::LOCALHOST))).await?;
    client.bye().await?;
    server.await?;
    Ok(())
}

/// The client's futures must be `Send`, so the load generator and tests can spawn them.
fn futures_are_send(client: &mut Client) {
    fn is_send<T: Send>(_: T) {}
    is_send(client.ping());
    is_send(client.pipeline(Vec::new()));
    is_send(client.upload_bytes("a", b""));
    is_send(client.send_mail_with("bob", "s", "b", &[]));
    is_send(client.download_bytes(1, 0));
    is_send(client.save_attachments(1, std::path::Path::new(".")));
    is_send(client.inbox());
}

#[test]
fn client_futures_are_send() {
    // Compiling `futures_are_send` is the test; it is never run.
    let _check: fn(&mut Client) = futures_are_send;
}

#[test]
fn hex_is_lower_case() {
    assert_eq!(hex(&[]), "");
    assert_eq!(hex(&[0xde, 0xad, 0x0b]), "dead0b");
}

/// Accepts one connection and returns every byte the client wrote until it closed.
async fn raw_bytes_of(
    drive: impl FnOnce(SocketAddr) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await?;
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await?;
        Ok::<_, std::io::Error>(all)
    });
    tokio::time::timeout(Duration::from_secs(10), drive(addr)).await?;
    Ok(tokio::time::timeout(Duration::from_secs(10), reader).await???)
}

#[tokio::test]
async fn segmented_writes_put_the_same_bytes_on_the_wire() -> TestResult {
    let text = "x".repeat(700);
    let requests = move || {
        vec![
            Request::Ping,
            Request::SendMessage {
                to: "bob".into(),
                text: text.clone(),
            },
            Request::Ping,
        ]
    };
    let mut wires = Vec::new();
    for segmented in [None, Some(7), Some(8)] {
        let reqs = requests();
        let wire = raw_bytes_of(move |addr| {
            Box::pin(async move {
                let opts = ClientOptions {
                    segmented,
                    ..opts().request_timeout(Duration::from_millis(300))
                };
                let Ok(mut c) = Client::connect(addr, opts).await else {
                    return;
                };
                // Nobody answers: the pipeline times out once every byte is written.
                let _ = c.pipeline(reqs).await;
            })
        })
        .await?;
        wires.push(wire);
    }
    assert!(wires[0].len() > 700, "{}", wires[0].len());
    assert_eq!(wires[1], wires[0]);
    assert_eq!(wires[2], wires[0]);
    Ok(())
}

#[tokio::test]
async fn a_segmented_client_talks_to_a_server() -> TestResult {
    let (addr, task) = fake(|mut peer| async move {
        let mut texts = Vec::new();
        for _ in 0..3 {
            let (id, req) = peer.expect().await;
            match req {
                Request::SendMessage { text, .. } => {
                    texts.push(text);
                    peer.reply(id, Reply::Accepted { item_id: id.into() }).await;
                }
                _ => peer.reply(id, Reply::Pong).await,
            }
        }
        peer.hold().await;
        texts
    })
    .await?;
    let mut c = Client::connect(addr, opts().segmented(3)).await?;
    assert_eq!(c.options().segmented, Some(3));
    c.ping().await?;
    assert_eq!(c.send_message("bob", &"y".repeat(300)).await?, 2);
    c.ping().await?;
    drop(c);
    assert_eq!(task.await?, vec!["y".repeat(300)]);
    Ok(())
}
