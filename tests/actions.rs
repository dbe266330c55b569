//! Every user action, end to end: a real server on 127.0.0.1:0 driven through the client
//! library (and, where the library would hide the wire, through raw frames).
//!
//! Each test is bounded (`within`), seeded where it uses random bytes (the seed is printed;
//! `RAMPART_TEST_SEED` overrides it) and talks only to 127.0.0.0/8.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use bytes::BytesMut;

use rampart::client::{Client, ClientError, ClientOptions};
use rampart::protocol::{encode_request, ErrorCode, ItemBody, ItemKind, Password, Reply, Request};
use rampart::store::Store;

use common::{
    drain, random_bytes, raw_connect, rng, send_raw, start_server, start_server_with, test_config,
    within, TestResult,
};

/// The server's error code and message, or a test failure naming what happened instead.
fn refused<T: std::fmt::Debug>(
    result: Result<T, ClientError>,
    want: ErrorCode,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    match result {
        Err(ClientError::Server { code, message }) if code == want => Ok(message),
        other => Err(format!("expected {}, got {other:?}", want.name()).into()),
    }
}

/// The store's id of a test user.
fn user_id(store: &dyn Store, name: &str) -> Result<i64, Box<dyn std::error::Error + Send + Sync>> {
    Ok(store.user_id(name)?.ok_or("test user exists")?)
}

/// Committed blob files (`blobs/<shard>/<id>`), not counting staging files.
fn committed_blobs(data_dir: &std::path::Path) -> std::io::Result<usize> {
    let mut n = 0;
    for shard in std::fs::read_dir(data_dir.join("blobs"))? {
        let shard = shard?;
        if shard.file_name() != "tmp" && shard.file_type()?.is_dir() {
            n += std::fs::read_dir(shard.path())?.count();
        }
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_is_delivered_listed_and_fetched() -> TestResult {
    within(async {
        let server = start_server().await;
        let mut alice = server.login("alice").await;
        let mut bob = server.login("bob").await;

        let text = "hello bob, ünïcödé too";
        let id = alice.send_message("bob", text).await?;

        let inbox = bob.inbox().await?;
        assert_eq!(inbox.len(), 1, "{inbox:?}");
        let entry = &inbox[0];
        assert_eq!(entry.id, id);
        assert_eq!(entry.kind, ItemKind::Message);
        assert_eq!(entry.from, "alice");
        assert_eq!(entry.size, text.len() as u64);
        assert_eq!(entry.title, "");
        assert!(entry.received_at_ms > 1_600_000_000_000, "{entry:?}");

        let view = bob.fetch(id).await?;
        assert_eq!(view.id, id);
        assert_eq!(view.from, "alice");
        assert_eq!(view.body, ItemBody::Message { text: text.into() });

        // The sender's own inbox does not list what it sent.
        assert!(alice.inbox().await?.is_empty());
        // A message to oneself is allowed and lands in one's own inbox.
        let own = alice.send_message("alice", "note to self").await?;
        assert_eq!(alice.inbox().await?.first().map(|e| e.id), Some(own));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_with_several_attachments_round_trips() -> TestResult {
    within(async {
        let mut rng = rng(0xA77A_C4ED);
        let server = start_server().await;
        let mut alice = server.login("alice").await;
        let mut bob = server.login("bob").await;

        // Sizes straddle the 256 KiB chunk, and one attachment is empty. Four, the default
        // `max_open_uploads` (see `mail_may_carry_more_attachments_than_open_uploads`).
        let attachments: Vec<(String, Vec<u8>)> = [
            ("notes.txt", 1_000),
            ("photo.jpg", 700_001),
            ("exactly-one-chunk.bin", 262_144),
            ("empty.dat", 0),
        ]
        .iter()
        .map(|(name, len)| (name.to_string(), random_bytes(&mut rng, *len)))
        .collect();
        let subject = "quarterly figures";
        let body = "see attached\nline two\n";
        let id = alice
            .send_mail_with("bob", subject, body, &attachments)
            .await?;

        let inbox = bob.inbox().await?;
        assert_eq!(inbox.len(), 1);
        assert_eq!(inbox[0].kind, ItemKind::Mail);
        assert_eq!(inbox[0].title, subject);
        let total: u64 = (subject.len() + body.len()) as u64
            + attachments.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
        assert_eq!(inbox[0].size, total);

        let view = bob.fetch(id).await?;
        let ItemBody::Mail {
            subject: got_subject,
            body: got_body,
            attachments: got,
        } = view.body
        else {
            return Err(format!("expected a mail, got {:?}", view.body).into());
        };
        assert_eq!(got_subject, subject);
        assert_eq!(got_body, body);
        assert_eq!(got.len(), attachments.len());
        for (part, ((name, data), meta)) in attachments.iter().zip(&got).enumerate() {
            assert_eq!(&meta.name, name);
            assert_eq!(meta.size, data.len() as u64);
            assert_eq!(
                meta.digest,
                *blake3::hash(data).as_bytes(),
                "digest of {name}"
            );
            let downloaded = bob.download_bytes(id, u16::try_from(part)?).await?;
            assert_eq!(
                blake3::hash(&downloaded),
                blake3::hash(data),
                "downloaded {name}"
            );
            assert_eq!(&downloaded, data, "bytes of {name}");
        }
        // A part past the last attachment does not exist.
        let missing = bob
            .call(Request::Download {
                item_id: id,
                part: u16::try_from(attachments.len())?,
                offset: 0,
                max_len: 1024,
            })
            .await;
        refused(missing, ErrorCode::NotFound)?;

        // Saving them into a directory uses the (sanitized) names.
        let out = tempfile::tempdir()?;
        let saved = bob.save_attachments(id, out.path()).await?;
        assert_eq!(saved.len(), attachments.len());
        for (path, (name, data)) in saved.iter().zip(&attachments) {
            assert_eq!(path, &out.path().join(name));
            assert_eq!(&std::fs::read(path)?, data);
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_of_a_few_mib_round_trips() -> TestResult {
    within(async {
        let mut rng = rng(0xF11E_0003);
        let server = start_server().await;
        let mut alice = server.login("alice").await;
        let mut bob = server.login("bob").await;

        // 3 MiB and an odd tail, so the last chunk is short.
        let data = random_bytes(&mut rng, 3 * 1024 * 1024 + 12_345);
        let id = alice.send_file_bytes("bob", "holiday.mov", &data).await?;

        let inbox = bob.inbox().await?;
        assert_eq!(inbox.len(), 1);
        assert_eq!(inbox[0].id, id);
        assert_eq!(inbox[0].kind, ItemKind::File);
        assert_eq!(inbox[0].title, "holiday.mov");
        assert_eq!(inbox[0].size, data.len() as u64);
        assert_eq!(inbox[0].from, "alice");

        let view = bob.fetch(id).await?;
        let ItemBody::File(meta) = &view.body else {
            return Err(format!("expected a file, got {:?}", view.body).into());
        };
        assert_eq!(meta.name, "holiday.mov");
        assert_eq!(meta.size, data.len() as u64);
        assert_eq!(meta.digest, *blake3::hash(&data).as_bytes());

        let downloaded = bob.download_bytes(id, 0).await?;
        assert!(
            downloaded == data,
            "downloaded bytes differ from the sent ones"
        );

        // A range read in the middle, and the empty DATA that marks the end.
        let mid = bob
            .call(Request::Download {
                item_id: id,
                part: 0,
                offset: 1_000_000,
                max_len: 4096,
            })
            .await?;
        match mid {
            Reply::Data {
                offset,
                total,
                data: chunk,
                ..
            } => {
                assert_eq!((offset, total), (1_000_000, data.len() as u64));
                assert_eq!(&chunk[..], &data[1_000_000..1_004_096]);
            }
            other => return Err(format!("expected DATA, got {other:?}").into()),
        }
        let end = bob
            .call(Request::Download {
                item_id: id,
                part: 0,
                offset: data.len() as u64,
                max_len: 4096,
            })
            .await?;
        assert!(
            matches!(&end, Reply::Data { data, .. } if data.is_empty()),
            "{end:?}"
        );
        let past = bob
            .call(Request::Download {
                item_id: id,
                part: 0,
                offset: data.len() as u64 + 1,
                max_len: 4096,
            })
            .await;
        refused(past, ErrorCode::BadRequest)?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_pages_through_more_items_than_a_page() -> TestResult {
    within(async {
        let mut config = test_config();
        config.limits.max_inbox_page = 5;
        config.check()?;
        let server = start_server_with(config).await;
        let mut alice = server.login("alice").await;
        let mut bob = server.login("bob").await;

        let mut sent = Vec::new();
        for i in 0..13 {
            sent.push(alice.send_message("bob", &format!("message {i}")).await?);
        }

        // Limit 0 and a limit over the maximum both mean the maximum page.
        let first = bob.inbox_page(0, 0).await?;
        assert_eq!(first.iter().map(|e| e.id).collect::<Vec<_>>(), sent[..5]);
        assert_eq!(bob.inbox_page(0, 1000).await?.len(), 5);
        // A smaller limit is honoured, and `after` is exclusive.
        let next = bob.inbox_page(sent[4], 3).await?;
        assert_eq!(next.iter().map(|e| e.id).collect::<Vec<_>>(), sent[5..8]);
        // The tail is a short page, then nothing.
        assert_eq!(bob.inbox_page(sent[9], 0).await?.len(), 3);
        assert!(bob.inbox_page(sent[12], 0).await?.is_empty());

        // The library's whole-inbox walk sees everything once, in order.
        let all = bob.inbox().await?;
        assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), sent);
        for (i, e) in all.iter().enumerate() {
            let view = bob.fetch(e.id).await?;
            assert_eq!(
                view.body,
                ItemBody::Message {
                    text: format!("message {i}")
                }
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_returns_each_kind() -> TestResult {
    within(async {
        let mut rng = rng(0xFE7C_0005);
        let server = start_server().await;
        let mut alice = server.login("alice").await;
        let mut bob = server.login("bob").await;

        let file = random_bytes(&mut rng, 5_000);
        let att = random_bytes(&mut rng, 7_000);
        let m = alice.send_message("bob", "plain text").await?;
        let mail = alice
            .send_mail_with("bob", "subj", "body", &[("a.bin".into(), att.clone())])
            .await?;
        let f = alice.send_file_bytes("bob", "f.bin", &file).await?;

        let kinds: Vec<ItemKind> = bob.inbox().await?.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [ItemKind::Message, ItemKind::Mail, ItemKind::File]);

        assert_eq!(
            bob.fetch(m).await?.body,
            ItemBody::Message {
                text: "plain text".into()
            }
        );
        match bob.fetch(mail).await?.body {
            ItemBody::Mail {
                subject,
                body,
                attachments,
            } => {
                assert_eq!((subject.as_str(), body.as_str()), ("subj", "body"));
                assert_eq!(attachments.len(), 1);
                assert_eq!(attachments[0].name, "a.bin");
                assert_eq!(attachments[0].size, 7_000);
                assert_eq!(attachments[0].digest, *blake3::hash(&att).as_bytes());
            }
            other => return Err(format!("expected a mail, got {other:?}").into()),
        }
        match bob.fetch(f).await?.body {
            ItemBody::File(meta) => {
                assert_eq!(meta.name, "f.bin");
                assert_eq!(meta.size, 5_000);
                assert_eq!(meta.digest, *blake3::hash(&file).as_bytes());
            }
            other => return Err(format!("expected a file, got {other:?}").into()),
        }
        // A chat message has no downloadable part.
        let no_part = bob
            .call(Request::Download {
                item_id: m,
                part: 0,
                offset: 0,
                max_len: 10,
            })
            .await;
        refused(no_part, ErrorCode::NotFound)?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_the_item_and_frees_the_senders_quota() -> TestResult {
    within(async {
        let mut rng = rng(0xDE1E_7E00);
        let server = start_server().await;
        let store = server.handle.server().store();
        let alice_id = user_id(&*store, "alice")?;
        let mut alice = server.login("alice").await;
        let mut bob = server.login("bob").await;

        let data = random_bytes(&mut rng, 100_000);
        let file = alice.send_file_bytes("bob", "doc.bin", &data).await?;
        let msg = alice.send_message("bob", "0123456789").await?;
        // Each item costs its size plus ITEM_OVERHEAD_BYTES.
        let overhead = rampart::store::ITEM_OVERHEAD_BYTES;
        assert_eq!(store.usage(alice_id)?, 100_010 + 2 * overhead);
        assert_eq!(committed_blobs(server.dir.path())?, 1);

        bob.delete(file).await?;
        refused(bob.fetch(file).await, ErrorCode::NotFound)?;
        refused(
            bob.call(Request::Download {
                item_id: file,
                part: 0,
                offset: 0,
                max_len: 100,
            })
            .await,
            ErrorCode::NotFound,
        )?;
        refused(bob.delete(file).await, ErrorCode::NotFound)?;
        assert_eq!(
            store.usage(alice_id)?,
            10 + overhead,
            "the file's bytes are freed"
        );
        assert_eq!(
            committed_blobs(server.dir.path())?,
            0,
            "the blob file is gone"
        );

        bob.delete(msg).await?;
        assert_eq!(store.usage(alice_id)?, 0);
        assert!(bob.inbox().await?.is_empty());
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() -> TestResult {
    within(async {
        let server = start_server().await;
        let mut alice = server.login("alice").await;
        let mut bob = server.login("bob").await;

        // 100 requests of four kinds, written back to back before any reply is read.
        let reqs: Vec<Request> = (0..100u64)
            .map(|i| match i % 4 {
                0 => Request::Ping,
                1 => Request::SendMessage {
                    to: "bob".into(),
                    text: format!("pipelined {i}"),
                },
                2 => Request::Fetch {
                    item_id: 1_000_000 + i,
                },
                _ => Request::ListInbox { after: 0, limit: 1 },
            })
            .collect();
        let replies = alice.pipeline(reqs).await?;
        assert_eq!(replies.len(), 100);
        let mut accepted = Vec::new();
        for (i, reply) in replies.iter().enumerate() {
            match (i % 4, reply) {
                (0, Reply::Pong) => {}
                (1, Reply::Accepted { item_id }) => accepted.push(*item_id),
                (
                    2,
                    Reply::Error {
                        code: ErrorCode::NotFound,
                        ..
                    },
                ) => {}
                (3, Reply::Inbox { entries }) => assert!(entries.is_empty()),
                other => return Err(format!("reply {i} out of order: {other:?}").into()),
            }
        }
        assert_eq!(accepted.len(), 25);
        assert!(accepted.windows(2).all(|w| w[0] < w[1]), "{accepted:?}");

        let inbox = bob.inbox().await?;
        assert_eq!(inbox.iter().map(|e| e.id).collect::<Vec<_>>(), accepted);
        for (n, e) in inbox.iter().enumerate() {
            let i = n * 4 + 1;
            assert_eq!(
                bob.fetch(e.id).await?.body,
                ItemBody::Message {
                    text: format!("pipelined {i}")
                }
            );
        }
        // The connection is still in step after the pipeline.
        alice.ping().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_recipient_is_refused_and_nothing_is_applied() -> TestResult {
    within(async {
        let server = start_server().await;
        let store = server.handle.server().store();
        let alice_id = user_id(&*store, "alice")?;
        let mut alice = server.login("alice").await;

        refused(
            alice.send_message("nobody", "hi").await,
            ErrorCode::UnknownRecipient,
        )?;
        refused(
            alice
                .send_mail_with("nobody", "s", "b", &[("a.txt".into(), b"abc".to_vec())])
                .await,
            ErrorCode::UnknownRecipient,
        )?;
        // A file to nobody: refused, and the finished upload stays usable.
        let upload = alice.upload_bytes("f.txt", b"file bytes").await?;
        refused(
            alice
                .call(Request::SendFile {
                    to: "nobody".into(),
                    upload_id: upload,
                })
                .await,
            ErrorCode::UnknownRecipient,
        )?;
        assert_eq!(store.usage(alice_id)?, 0, "nothing was charged");
        let delivered = alice
            .call(Request::SendFile {
                to: "bob".into(),
                upload_id: upload,
            })
            .await?;
        assert!(matches!(delivered, Reply::Accepted { .. }), "{delivered:?}");
        // Used once: a second SEND_FILE with the same upload finds nothing.
        refused(
            alice
                .call(Request::SendFile {
                    to: "bob".into(),
                    upload_id: upload,
                })
                .await,
            ErrorCode::NotFound,
        )?;
        // The file's 10 bytes and the item's overhead.
        assert_eq!(
            store.usage(alice_id)?,
            10 + rampart::store::ITEM_OVERHEAD_BYTES
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_user_fail_alike() -> TestResult {
    within(async {
        let server = start_server().await;
        let target = server.target();
        // Each attempt comes from its own address, so this test is about the answers and not
        // about any per-source defence (login rate limits, the firewall).
        let from = |n: u8| {
            ClientOptions::default()
                .request_timeout(Duration::from_secs(10))
                .source(IpAddr::V4(Ipv4Addr::new(127, 0, 20, n)))
        };

        let wrong = Client::login(&target, "alice", b"not-alices-pw", from(1)).await;
        let wrong_msg = refused(wrong, ErrorCode::AuthFailed)?;
        let unknown = Client::login(&target, "nosuchuser", b"whatever", from(2)).await;
        let unknown_msg = refused(unknown, ErrorCode::AuthFailed)?;
        assert_eq!(
            wrong_msg, unknown_msg,
            "the two failures must be indistinguishable"
        );
        // Another user's password does not open this account either.
        refused(
            Client::login(&target, "alice", b"bob-pw", from(3)).await,
            ErrorCode::AuthFailed,
        )?;

        // A failed AUTH leaves the connection usable for a correct one.
        let mut c = Client::connect(&target, from(4)).await?;
        refused(c.auth("alice", b"nope").await, ErrorCode::AuthFailed)?;
        c.auth("alice", b"alice-pw").await?;
        assert_eq!(c.user(), Some("alice"));
        c.ping().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_before_auth_are_not_authenticated() -> TestResult {
    within(async {
        let server = start_server().await;
        let mut c = Client::connect(server.target(), ClientOptions::default()).await?;
        // PING is allowed before AUTH.
        c.ping().await?;
        let before: Vec<Request> = vec![
            Request::SendMessage {
                to: "bob".into(),
                text: "hi".into(),
            },
            Request::UploadBegin {
                name: "x".into(),
                size: 1,
            },
            Request::UploadChunk {
                upload_id: 1,
                offset: 0,
                data: bytes::Bytes::from_static(b"x"),
            },
            Request::UploadEnd {
                upload_id: 1,
                digest: [0; 32],
            },
            Request::SendFile {
                to: "bob".into(),
                upload_id: 1,
            },
            Request::SendMail {
                to: "bob".into(),
                subject: "s".into(),
                body: "b".into(),
                attachments: vec![],
            },
            Request::ListInbox { after: 0, limit: 0 },
            Request::Fetch { item_id: 1 },
            Request::Download {
                item_id: 1,
                part: 0,
                offset: 0,
                max_len: 1,
            },
            Request::Delete { item_id: 1 },
        ];
        for req in before {
            let kind = req.kind();
            let got = c.call(req).await;
            refused(got, ErrorCode::NotAuthenticated)
                .map_err(|e| format!("{}: {e}", kind.wire_name()))?;
        }
        // Nothing was delivered, and the session can still log in.
        c.auth("alice", b"alice-pw").await?;
        assert!(c.inbox().await?.is_empty());
        // AUTH on an authenticated session is a bad request.
        refused(c.auth("bob", b"bob-pw").await, ErrorCode::BadRequest)?;
        assert_eq!(c.user(), Some("alice"));
        let mut bob = server.login("bob").await;
        assert!(bob.inbox().await?.is_empty());
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bye_answers_ok_and_closes() -> TestResult {
    within(async {
        let server = start_server().await;
        let alice = server.login("alice").await;
        alice.bye().await?;

        // On the wire: OK with BYE's id, then the server closes.
        let mut raw = raw_connect(server.addr, None).await?;
        let mut wire = BytesMut::new();
        encode_request(
            1,
            &Request::Auth {
                user: "bob".into(),
                password: Password(bytes::Bytes::from_static(b"bob-pw")),
            },
            &mut wire,
        )?;
        encode_request(2, &Request::Bye, &mut wire)?;
        // Anything after BYE is not answered.
        encode_request(3, &Request::Ping, &mut wire)?;
        send_raw(&mut raw, &wire).await;
        let seen = drain(&mut raw, Duration::from_secs(5)).await;
        assert!(seen.closed, "the server closes after BYE");
        let ids: Vec<u32> = seen.replies.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [1, 2], "{:?}", seen.replies);
        assert!(matches!(seen.replies[1].1, Reply::Ok), "{:?}", seen.replies);

        // BYE before AUTH is allowed too.
        let c = Client::connect(server.target(), ClientOptions::default()).await?;
        c.bye().await?;

        // The server is unaffected.
        assert!(
            common::eventually(Duration::from_secs(5), || {
                server.handle.guard().stats().connections == 0
            })
            .await
        );
        let mut bob = server.login("bob").await;
        bob.ping().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_item_id_is_distinct_across_kinds_and_users() -> TestResult {
    within(async {
        let server = start_server().await;
        let mut alice = server.login("alice").await;
        let mut bob = server.login("bob").await;
        let mut ids = BTreeSet::new();
        for i in 0..5 {
            ids.insert(alice.send_message("bob", &format!("a{i}")).await?);
            ids.insert(bob.send_message("alice", &format!("b{i}")).await?);
            ids.insert(bob.send_file_bytes("mallory", "x", b"xyz").await?);
        }
        assert_eq!(ids.len(), 15);
        assert_eq!(alice.inbox().await?.len(), 5);
        assert_eq!(bob.inbox().await?.len(), 5);
        let mut mallory = server.login("mallory").await;
        assert_eq!(mallory.inbox().await?.len(), 5);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_may_carry_more_attachments_than_open_uploads() -> TestResult {
    within(async {
        let mut rng = rng(0x5EED_A77C);
        let config = test_config();
        let count = usize::from(config.limits.max_attachments);
        assert!(count > usize::from(config.limits.max_open_uploads));
        let server = start_server_with(config).await;
        let mut alice = server.login("alice").await;
        let mut bob = server.login("bob").await;
        let attachments: Vec<(String, Vec<u8>)> = (0..count)
            .map(|i| (format!("part-{i}.bin"), random_bytes(&mut rng, 1_000 + i)))
            .collect();
        let id = alice
            .send_mail_with("bob", "many parts", "", &attachments)
            .await?;
        for (part, (_, data)) in attachments.iter().enumerate() {
            assert_eq!(&bob.download_bytes(id, u16::try_from(part)?).await?, data);
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_digest_does_not_match_is_refused_and_discarded() -> TestResult {
    within(async {
        let server = start_server().await;
        let mut alice = server.login("alice").await;
        let ready = alice
            .call(Request::UploadBegin {
                name: "x.bin".into(),
                size: 6,
            })
            .await?;
        let Reply::UploadReady { upload_id, .. } = ready else {
            return Err(format!("expected UPLOAD_READY, got {ready:?}").into());
        };
        alice
            .call(Request::UploadChunk {
                upload_id,
                offset: 0,
                data: bytes::Bytes::from_static(b"abcdef"),
            })
            .await?;
        let end = alice
            .call(Request::UploadEnd {
                upload_id,
                digest: *blake3::hash(b"abcdeF").as_bytes(),
            })
            .await;
        refused(end, ErrorCode::DigestMismatch)?;
        // The upload is gone: it can be neither finished again nor sent.
        let again = alice
            .call(Request::UploadEnd {
                upload_id,
                digest: *blake3::hash(b"abcdef").as_bytes(),
            })
            .await;
        refused(again, ErrorCode::NotFound)?;
        let send = alice
            .call(Request::SendFile {
                to: "bob".into(),
                upload_id,
            })
            .await;
        refused(send, ErrorCode::NotFound)?;
        assert_eq!(committed_blobs(server.dir.path())?, 0);
        let mut bob = server.login("bob").await;
        assert!(bob.inbox().await?.is_empty());
        Ok(())
    })
    .await
}
