//! Writes the seed corpus under `corpus/<target>/` (run from `fuzz/`):
//!
//! ```text
//! cargo run --example gen_corpus [OUT_DIR]
//! ```
//!
//! Seeds come from real sessions captured against the fuzzing server (login, chat, mail,
//! chunked uploads, inbox, fetch, download, delete, and the errors of an unauthenticated
//! client and a foreign item), from the protocol test vectors, and from known-bad inputs
//! (a 4 GiB length, `RR` instead of `RM`, an HTTP request, a TLS ClientHello, an SSH
//! banner, reserved flags, unknown kinds and versions). Files are named for what they
//! hold; running it again rewrites the same files with the same meaning.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use rampart::protocol::{
    encode_reply, encode_request, ErrorCode, Frame, InboxEntry, ItemBody, ItemKind, ItemView, Kind,
    Limits, Password, Reply, Request, Role, HEADER_LEN,
};
use rampart_fuzz::checks::decode_stream;
use rampart_fuzz::session::{harness, mallory_auth, scrub, Action, Run, MALLORY_PASSWORD};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn req(id: u32, r: &Request) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_request(id, r, &mut b).expect("seed requests are valid");
    b.to_vec()
}

fn rep(id: u32, r: &Reply) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_reply(id, r, &mut b).expect("seed replies are valid");
    b.to_vec()
}

fn header(kind: u8, id: u32, flags: u16, len: u32) -> Vec<u8> {
    let mut h = b"RM\x01".to_vec();
    h.push(kind);
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&flags.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    h
}

fn concat(frames: &[Vec<u8>]) -> Vec<u8> {
    frames.concat()
}

/// A writer of named seed files for one target.
struct Seeds {
    dir: PathBuf,
    count: usize,
    names: BTreeSet<String>,
}

impl Seeds {
    fn new(root: &Path, target: &str) -> Result<Seeds> {
        let dir = root.join(target);
        fs::create_dir_all(&dir)?;
        Ok(Seeds {
            dir,
            count: 0,
            names: BTreeSet::new(),
        })
    }

    /// Writes one seed; a name used twice keeps the last bytes and counts once.
    fn put(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        fs::write(self.dir.join(name), bytes)?;
        self.names.insert(name.to_string());
        self.count = self.names.len();
        Ok(())
    }
}

/// Session input (see `rampart_fuzz::session`): flags, then one raw segment per stream.
fn session_input(login: bool, ops: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![u8::from(login)];
    for (op, operand) in ops {
        out.push(*op);
        out.extend_from_slice(operand);
    }
    out
}

fn raw_op(bytes: &[u8]) -> (u8, Vec<u8>) {
    let mut v = (bytes.len().min(usize::from(u16::MAX)) as u16)
        .to_be_bytes()
        .to_vec();
    v.extend_from_slice(&bytes[..bytes.len().min(usize::from(u16::MAX))]);
    (0, v)
}

/// Runs a scripted session on `run`'s server and returns (requests sent, replies
/// received), after the session target's own checks.
fn capture(run: &Run, stream: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
    let h = harness();
    let t = h.run(run, &[Action::Write(stream)]);
    h.check(run, &t);
    (t.sent, t.received)
}

fn replies(bytes: &[u8]) -> Vec<(Frame, Reply)> {
    let h = harness();
    decode_stream(bytes, Role::Client, h.limits())
        .frames
        .into_iter()
        .filter_map(|f| Reply::decode(&f, h.limits()).ok().map(|r| (f, r)))
        .collect()
}

fn frames(bytes: &[u8], role: Role) -> Vec<Frame> {
    decode_stream(bytes, role, harness().limits()).frames
}

fn wire(f: &Frame) -> Vec<u8> {
    let mut v = header(f.kind as u8, f.request_id, f.flags, f.payload.len() as u32);
    v.extend_from_slice(&f.payload);
    v
}

fn main() -> Result<()> {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let file_data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let small: &[u8] = b"ten bytes!";

    // Session A: log in, chat, mail, two chunked uploads sent as a file and an attachment.
    let mut a = vec![mallory_auth(1)];
    a.push(req(2, &Request::Ping));
    a.push(req(
        3,
        &Request::SendMessage {
            to: "mallory".into(),
            text: "hello me".into(),
        },
    ));
    a.push(req(
        4,
        &Request::SendMessage {
            to: "bob".into(),
            text: "hi bob, lunch?".into(),
        },
    ));
    a.push(req(
        5,
        &Request::SendMail {
            to: "mallory".into(),
            subject: "minutes".into(),
            body: "see below\nitem 1\nitem 2".into(),
            attachments: vec![],
        },
    ));
    a.push(req(
        6,
        &Request::UploadBegin {
            name: "report.pdf".into(),
            size: file_data.len() as u64,
        },
    ));
    let mut offset = 0u64;
    for (id, piece) in (7..).zip(file_data.chunks(2048)) {
        a.push(req(
            id,
            &Request::UploadChunk {
                upload_id: 1,
                offset,
                data: piece.to_vec().into(),
            },
        ));
        offset += piece.len() as u64;
    }
    a.push(req(
        20,
        &Request::UploadEnd {
            upload_id: 1,
            digest: *blake3::hash(&file_data).as_bytes(),
        },
    ));
    a.push(req(
        21,
        &Request::SendFile {
            to: "mallory".into(),
            upload_id: 1,
        },
    ));
    a.push(req(
        22,
        &Request::UploadBegin {
            name: "../../etc/notes.txt".into(),
            size: small.len() as u64,
        },
    ));
    a.push(req(
        23,
        &Request::UploadChunk {
            upload_id: 2,
            offset: 0,
            data: small.to_vec().into(),
        },
    ));
    a.push(req(
        24,
        &Request::UploadEnd {
            upload_id: 2,
            digest: *blake3::hash(small).as_bytes(),
        },
    ));
    a.push(req(
        25,
        &Request::SendMail {
            to: "mallory".into(),
            subject: "with attachment".into(),
            body: "attached".into(),
            attachments: vec![2],
        },
    ));
    a.push(req(26, &Request::ListInbox { after: 0, limit: 0 }));
    a.push(req(27, &Request::Bye));
    // One server for the three sessions, so B reads what A sent.
    let run = harness().start();
    let (a_sent, a_recv) = capture(&run, concat(&a));
    let accepted: Vec<u64> = replies(&a_recv)
        .into_iter()
        .filter_map(|(_, r)| match r {
            Reply::Accepted { item_id } => Some(item_id),
            _ => None,
        })
        .collect();
    assert!(accepted.len() >= 4, "session A delivered its items");

    // Session B: read everything back, download, delete, and try a foreign item (id 1 is
    // bob's planted message).
    let mut b = vec![mallory_auth(1)];
    let mut id = 2;
    for item in &accepted {
        b.push(req(id, &Request::Fetch { item_id: *item }));
        id += 1;
    }
    let file_item = accepted[accepted.len() - 2];
    let mail_item = accepted[accepted.len() - 1];
    for (item, offset) in [(file_item, 0), (file_item, 4096), (mail_item, 0)] {
        b.push(req(
            id,
            &Request::Download {
                item_id: item,
                part: 0,
                offset,
                max_len: 4096,
            },
        ));
        id += 1;
    }
    b.push(req(id, &Request::Fetch { item_id: 1 }));
    b.push(req(id + 1, &Request::Delete { item_id: 1 }));
    b.push(req(
        id + 2,
        &Request::Delete {
            item_id: accepted[0],
        },
    ));
    b.push(req(id + 3, &Request::Fetch { item_id: 999_999 }));
    b.push(req(id + 4, &Request::ListInbox { after: 0, limit: 2 }));
    b.push(req(id + 5, &Request::Bye));
    let (b_sent, b_recv) = capture(&run, concat(&b));

    // Session C: the errors of a client that has not logged in, and failed logins.
    let c = vec![
        req(1, &Request::Fetch { item_id: 1 }),
        req(
            2,
            &Request::Auth {
                user: "mallory".into(),
                password: Password(b"wrong".to_vec().into()),
            },
        ),
        req(
            3,
            &Request::Auth {
                user: "nobody".into(),
                password: Password(b"x".to_vec().into()),
            },
        ),
        mallory_auth(4),
        req(
            5,
            &Request::Auth {
                user: "mallory".into(),
                password: Password(MALLORY_PASSWORD.to_vec().into()),
            },
        ),
        req(
            6,
            &Request::SendMessage {
                to: "nobody".into(),
                text: "x".into(),
            },
        ),
        req(
            7,
            &Request::UploadEnd {
                upload_id: 9,
                digest: [0; 32],
            },
        ),
        // A body error (trailing byte) keeps the session; a header error ends it.
        {
            let mut f = header(Kind::Fetch as u8, 8, 0, 9);
            f.extend_from_slice(&[0; 9]);
            f
        },
        header(Kind::Auth as u8, 9, 0, 0xFFFF_FFFF),
    ];
    let (c_sent, c_recv) = capture(&run, concat(&c));
    drop(run);

    // Replies the scripted sessions cannot produce, from the protocol's test vectors.
    let vectors = [
        rep(
            9,
            &Reply::Inbox {
                entries: vec![InboxEntry {
                    id: 1,
                    kind: ItemKind::Mail,
                    from: "bob".into(),
                    size: 10,
                    received_at_ms: 1_700_000_000_000,
                    title: "hi".into(),
                }],
            },
        ),
        rep(
            9,
            &Reply::Item(ItemView {
                id: 9,
                from: "carol".into(),
                received_at_ms: -1,
                body: ItemBody::Message { text: "hi".into() },
            }),
        ),
        rep(
            9,
            &Reply::Error {
                code: ErrorCode::Busy,
                message: "connection refused: max_connections".into(),
            },
        ),
        rep(
            0,
            &Reply::error(ErrorCode::Timeout, "session idle for too long"),
        ),
    ];

    let bad: Vec<(&str, Vec<u8>)> = vec![
        (
            "bad-4gib-length",
            header(Kind::SendMessage as u8, 1, 0, u32::MAX),
        ),
        ("bad-magic-rr", vec![0x52, 0x52]),
        (
            "bad-http-get",
            b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.5.0\r\n\r\n".to_vec(),
        ),
        ("bad-tls-client-hello", {
            let mut v = vec![
                0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03,
            ];
            v.extend_from_slice(&[0x5a; 32]);
            v.extend_from_slice(&[0x00, 0x00, 0x02, 0x13, 0x01, 0x01, 0x00]);
            v
        }),
        (
            "bad-ssh-banner",
            b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3\r\n".to_vec(),
        ),
        ("bad-reserved-flags", header(Kind::Ping as u8, 1, 0x8000, 0)),
        (
            "bad-version-2",
            b"RM\x02\x02\0\0\0\x01\0\0\0\0\0\0".to_vec(),
        ),
        ("bad-unknown-kind", b"RM\x01\x7f".to_vec()),
        (
            "bad-reply-kind-to-server",
            header(Kind::AuthOk as u8, 1, 0, 0),
        ),
        ("bad-ping-with-payload", {
            let mut v = header(Kind::Ping as u8, 1, 0, 1);
            v.push(0);
            v
        }),
        ("bad-truncated-frame", a[2][..HEADER_LEN + 3].to_vec()),
        ("bad-header-only", a[2][..HEADER_LEN].to_vec()),
    ];

    // decode_frame: role byte (0 server, 1 client) + stream.
    let mut s = Seeds::new(&root, "decode_frame")?;
    for (name, sent, recv) in [
        ("a", &a_sent, &a_recv),
        ("b", &b_sent, &b_recv),
        ("c", &c_sent, &c_recv),
    ] {
        s.put(
            &format!("session-{name}-requests"),
            &[&[0u8][..], sent].concat(),
        )?;
        s.put(
            &format!("session-{name}-replies"),
            &[&[1u8][..], recv].concat(),
        )?;
    }
    for (name, bytes) in &bad {
        s.put(name, &[&[0u8][..], bytes].concat())?;
    }
    s.put("bad-request-kind-to-client", &[&[1u8][..], &a[1]].concat())?;
    s.put(
        "bad-4gib-reply",
        &[&[1u8][..], &header(Kind::Data as u8, 1, 0, u32::MAX)].concat(),
    )?;
    for (i, v) in vectors.iter().enumerate() {
        s.put(&format!("vector-reply-{i}"), &[&[1u8][..], v].concat())?;
    }
    for f in frames(&a_sent, Role::Server)
        .iter()
        .chain(&frames(&b_sent, Role::Server))
    {
        let name = format!("frame-{}", f.kind.wire_name().to_lowercase());
        s.put(&name, &[&[0u8][..], &wire(f)].concat())?;
    }
    for (f, _) in replies(&a_recv)
        .iter()
        .chain(&replies(&b_recv))
        .chain(&replies(&c_recv))
    {
        let name = format!("frame-{}", f.kind.wire_name().to_lowercase());
        s.put(&name, &[&[1u8][..], &wire(f)].concat())?;
    }
    println!("decode_frame: {} seeds", s.count);

    // decode_chunked: role, cut count, cuts, stream.
    let mut s = Seeds::new(&root, "decode_chunked")?;
    let cut_sets: [&[u8]; 5] = [&[1], &[3, 5, 7], &[14], &[200, 13], &[2, 255, 1, 64]];
    for (name, role, stream) in [
        ("a-requests", 0u8, &a_sent),
        ("b-replies", 1, &b_recv),
        ("c-requests", 0, &c_sent),
    ] {
        for (i, cuts) in cut_sets.iter().enumerate() {
            let mut v = vec![role, cuts.len() as u8];
            v.extend_from_slice(cuts);
            v.extend_from_slice(stream);
            s.put(&format!("session-{name}-cuts{i}"), &v)?;
        }
    }
    for (name, bytes) in &bad {
        let mut v = vec![0, 2, 1, 3];
        v.extend_from_slice(bytes);
        s.put(name, &v)?;
    }
    println!("decode_chunked: {} seeds", s.count);

    // decode_bodies: kind byte + payload.
    let mut s = Seeds::new(&root, "decode_bodies")?;
    let all_frames: Vec<Frame> = frames(&a_sent, Role::Server)
        .into_iter()
        .chain(frames(&b_sent, Role::Server))
        .chain(frames(&c_sent, Role::Server))
        .chain(replies(&a_recv).into_iter().map(|(f, _)| f))
        .chain(replies(&b_recv).into_iter().map(|(f, _)| f))
        .chain(vectors.iter().flat_map(|v| frames(v, Role::Client)))
        .collect();
    for (i, f) in all_frames.iter().enumerate() {
        let name = format!("{}-{i}", f.kind.wire_name().to_lowercase());
        s.put(&name, &[&[f.kind as u8][..], &f.payload].concat())?;
    }
    let mut bad_bodies: Vec<(&str, u8, Vec<u8>)> = vec![
        ("bad-fetch-truncated", Kind::Fetch as u8, vec![0, 0, 0]),
        ("bad-fetch-trailing", Kind::Fetch as u8, vec![0; 9]),
        (
            "bad-message-utf8",
            Kind::SendMessage as u8,
            vec![1, 0xFF, 0, 0, 0, 0],
        ),
        ("bad-message-long-name", Kind::SendMessage as u8, vec![40]),
        (
            "bad-message-4gib-text",
            Kind::SendMessage as u8,
            vec![1, b'b', 0xFF, 0xFF, 0xFF, 0xFF],
        ),
        ("bad-mail-attachments", Kind::SendMail as u8, {
            let mut v = vec![1, b'b', 0, 0, 0, 0, 0, 0, 200];
            v.extend_from_slice(&[0; 16]);
            v
        }),
        ("bad-error-code", Kind::Error as u8, vec![0, 99, 0, 0]),
        ("bad-inbox-count", Kind::Inbox as u8, vec![0xFF, 0xFF]),
        ("bad-item-kind", Kind::Item as u8, {
            let mut v = vec![0; 8];
            v.extend_from_slice(&[1, b'a']);
            v.extend_from_slice(&[0; 8]);
            v.push(9);
            v
        }),
    ];
    // Chunks one byte over `max_chunk_bytes` (256 KiB): the frame decoder stops them at the
    // header, so only a body seed reaches the body decoders' own check.
    let over = Limits::default().max_chunk_bytes as usize + 1;
    bad_bodies.push((
        "bad-chunk-over-limit",
        Kind::UploadChunk as u8,
        vec![0; 4 + 8 + over],
    ));
    bad_bodies.push(("bad-data-over-limit", Kind::Data as u8, vec![0; 26 + over]));
    for (name, kind, payload) in &bad_bodies {
        s.put(name, &[&[*kind][..], payload].concat())?;
    }
    println!("decode_bodies: {} seeds", s.count);

    // roundtrip_frames is driven by `arbitrary`: its input is a `Vec`, whose elements each
    // follow a "continue" byte with the low bit set. Real frames after 0x01 give it varied
    // starting points (an even first byte would mean an empty list).
    let mut s = Seeds::new(&root, "roundtrip_frames")?;
    for (i, f) in all_frames.iter().enumerate().step_by(3) {
        s.put(&format!("frame-{i}"), &[&[1u8][..], &wire(f)].concat())?;
    }
    println!("roundtrip_frames: {} seeds", s.count);

    // drive_session: flags byte, then operations (see rampart_fuzz::session).
    let mut s = Seeds::new(&root, "drive_session")?;
    let without_auth = |sent: &[u8]| sent[a[0].len()..].to_vec();
    for (name, sent) in [("a", &a_sent), ("b", &b_sent)] {
        let body = without_auth(sent);
        s.put(
            &format!("session-{name}"),
            &session_input(true, &[raw_op(&body)]),
        )?;
        s.put(
            &format!("session-{name}-split7"),
            &session_input(true, &[(2, vec![7]), raw_op(&body)]),
        )?;
    }
    s.put("session-c", &session_input(false, &[raw_op(&c_sent)]))?;
    for (name, bytes) in &bad {
        s.put(name, &session_input(true, &[raw_op(bytes)]))?;
    }
    s.put(
        "slowloris-header",
        &session_input(
            true,
            &[
                raw_op(&a[1][..5]),
                (3, 2500u16.to_be_bytes().to_vec()),
                raw_op(&a[1][5..]),
            ],
        ),
    )?;
    s.put(
        "idle-then-ping",
        &session_input(true, &[(3, 6000u16.to_be_bytes().to_vec()), raw_op(&a[1])]),
    )?;
    s.put(
        "no-auth-then-wait",
        &session_input(false, &[(3, 4000u16.to_be_bytes().to_vec())]),
    )?;
    let many_lists = concat(&vec![
        req(7, &Request::ListInbox { after: 0, limit: 0 });
        40
    ]);
    s.put(
        "stalled-reader",
        &session_input(
            true,
            &[(5, 3000u16.to_be_bytes().to_vec()), raw_op(&many_lists)],
        ),
    )?;
    let pings = concat(&vec![req(7, &Request::Ping); 100]);
    s.put("ping-flood", &session_input(true, &[raw_op(&pings)]))?;
    let mut upload = vec![4u8, 1, 0, 8];
    upload.extend_from_slice(&(small.len() as u16).to_be_bytes());
    upload.extend_from_slice(small);
    s.put("upload-file-to-bob", &[&[1u8][..], &upload].concat())?;
    let mut upload = vec![4u8, 0, 1, 128];
    upload.extend_from_slice(&(3000u16).to_be_bytes());
    upload.extend_from_slice(&file_data[..3000]);
    s.put("upload-mail-to-self", &[&[1u8][..], &upload].concat())?;
    let mut structured = vec![1u8];
    let arb_bytes: Vec<u8> = (0u8..64).collect();
    structured.extend_from_slice(&(arb_bytes.len() as u16).to_be_bytes());
    structured.extend_from_slice(&arb_bytes);
    s.put("structured-request", &[&[1u8][..], &structured].concat())?;
    println!("drive_session: {} seeds", s.count);

    // parse_config: the example config and small valid and invalid snippets.
    let mut s = Seeds::new(&root, "parse_config")?;
    let example =
        fs::read_to_string(Path::new("..").join("rampart.example.toml")).unwrap_or_default();
    s.put("rampart-example", example.as_bytes())?;
    let mut cheap = String::from("[auth]\nargon2_memory_kib = 8\nargon2_iterations = 1\n");
    s.put("cheap-auth", cheap.as_bytes())?;
    cheap.push_str("[ip]\nallow = [\"127.0.0.1\", \"::1\"]\ndeny = [\"192.0.2.0/24\", \"2001:db8::/32\"]\nipv6_prefix = 56\nblock_secs = 60\n");
    s.put("ip-lists", cheap.as_bytes())?;
    s.put(
        "small-limits",
        b"[limits]\nmax_frame_bytes = 32768\nmax_message_bytes = 4096\nmax_mail_body_bytes = 8192\nmax_attachments = 4\nmax_chunk_bytes = 2048\nmax_inbox_page = 16\noutbound_queue_bytes = 8192\n",
    )?;
    s.put(
        "timeouts",
        b"[timeouts]\nframe_budget_ms = 2000\nframe_grace_ms = 500\nidle_ms = 5000\nauth_ms = 3000\nwrite_ms = 1000\n",
    )?;
    s.put(
        "rates",
        b"[rates]\nframes_per_s_per_conn = 1000\nframes_burst_per_conn = 64\nlogins_per_min_per_ip = 60\nstrikes_to_close = 16\n",
    )?;
    for (i, bad) in [
        "[limits]\nmax_frame_bytes = 100",
        "[limits]\nmax_chunk_bytes = 2000000",
        "[limits]\nmax_attachments = 300",
        "[timeouts]\nframe_grace_ms = 20000",
        "[rates]\nstrikes_to_close = 0",
        "[ip]\nipv6_prefix = 129",
        "[ip]\nallow = [\"not an ip\"]",
        "[auth]\nargon2_parallelism = 4\nargon2_memory_kib = 31",
        "[nope]\nx = 1",
        "limits = 5",
    ]
    .iter()
    .enumerate()
    {
        s.put(&format!("invalid-{i}"), bad.as_bytes())?;
    }
    println!("parse_config: {} seeds", s.count);

    // parse_scenario: every committed scenario file, and small valid and invalid ones.
    let mut s = Seeds::new(&root, "parse_scenario")?;
    let mut files: Vec<PathBuf> = fs::read_dir(Path::new("..").join("scenarios"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::result::Result<_, _>>()?;
    files.sort();
    for path in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
    {
        let stem = path
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or("scenario");
        s.put(&format!("scenario-{stem}"), &fs::read(path)?)?;
    }
    s.put(
        "minimal",
        b"name = \"m\"\nduration_s = 1\n[[legit]]\nclients = 1\n",
    )?;
    s.put(
        "server-overrides",
        b"name = \"s\"\nduration_s = 2.5\n[server.limits]\nmax_chunk_bytes = 4096\n[server.rates]\nstrikes_to_close = 4\n[[attack]]\nkind = \"oversized\"\nsources = \"127.0.9.9\"\nstop_s = 2\n[expect]\nblocked_within_s = 1\nblocked_kinds = [\"oversized\"]\n",
    )?;
    for (i, bad) in [
        "name = \"x y\"\nduration_s = 1",
        "name = \"x\"\nduration_s = 0",
        "name = \"x\"\nduration_s = nan",
        "name = \"x\"\nduration_s = 5\n[[legit]]\nclients = 1001",
        "name = \"x\"\nduration_s = 5\n[[legit]]\nsources = \"10.0.0.0/8\"",
        "name = \"x\"\nduration_s = 5\n[[legit]]\nmix = { message = 0, mail = 0, file = 0 }",
        "name = \"x\"\nduration_s = 5\n[[legit]]\nstart_s = 4\nstop_s = 3",
        "name = \"x\"\nduration_s = 5\n[[legit]]\nsources = \"127.0.1.0/30\"\n[[attack]]\nkind = \"flood\"\nsources = \"127.0.1.0/30\"",
        "name = \"x\"\nduration_s = 5\n[[attack]]\nkind = \"probe\"\nsources = \"127.0.0.100\"",
        "name = \"x\"\nduration_s = 5\n[[attack]]\nkind = \"nope\"",
        "name = \"x\"\nduration_s = 5\n[server.limits]\nmax_frame_bytes = 100",
        "name = \"x\"\nduration_s = 5\n[server.nope]\nx = 1",
        "name = \"x\"\nduration_s = 5\n[expect]\nlatency_slo_ms = 0",
        "name = \"x\"\nduration_s = 5\n[expect]\nblocked_kinds = [\"flood\"]",
        "name = \"x\"\nduration_s = 5\nbogus = 1",
    ]
    .iter()
    .enumerate()
    {
        s.put(&format!("invalid-{i}"), bad.as_bytes())?;
    }
    println!("parse_scenario: {} seeds", s.count);

    // parse_activity_csv: the header and first rows of the committed test set, and small
    // valid and invalid files.
    let mut s = Seeds::new(&root, "parse_activity_csv")?;
    let test_csv = fs::read_to_string(Path::new("..").join("datasets").join("test.csv"))?;
    let head: Vec<&str> = test_csv.lines().take(4).collect();
    s.put("test-head", format!("{}\n", head.join("\n")).as_bytes())?;
    let attack_rows: Vec<&str> = test_csv
        .lines()
        .skip(1)
        .filter(|l| !l.ends_with(",benign"))
        .take(2)
        .collect();
    if let Some(header) = head.first() {
        s.put(
            "test-attacks",
            format!("{header}\n{}\n", attack_rows.join("\n")).as_bytes(),
        )?;
    }
    s.put(
        "unlabelled",
        b"source,window_start_ms,window_ms,a,b\n127.0.0.1,0,1000,1,2.5\n127.0.0.2,1000,1000,0,-3e2\n",
    )?;
    s.put(
        "quoted",
        b"source,window_start_ms,window_ms,\"a,b\",label\n\" 127.0.0.1 \",+5,1000,1e3,\"raw flood\"\r\n",
    )?;
    for (i, bad) in [
        "source,window_start_ms,window_ms,a,label\n127.0.0.1,0,1000,NaN,benign\n",
        "source,window_start_ms,window_ms,a,label\n127.0.0.1,0,1000,inf,benign\n",
        "source,window_start_ms,window_ms,a,label\n127.0.0.1,0,1000,1,\n",
        "source,window_start_ms,window_ms,a,a\n127.0.0.1,0,1000,1,2\n",
        "source,window_start_ms,window_ms,label\n",
        "window_start_ms,source,window_ms,a\n",
        "source,window_start_ms,window_ms,a\n127.0.0.1,0,1000\n",
        "source,window_start_ms,window_ms,a\n127.0.0.1,-1,-1,1\n",
        "source,window_start_ms,window_ms,a\n127.0.0.1,0,1000,\"1\n",
    ]
    .iter()
    .enumerate()
    {
        s.put(&format!("invalid-{i}"), bad.as_bytes())?;
    }
    s.put(
        "invalid-utf8",
        b"source,window_start_ms,window_ms,a\n127.0.0.1,0,1000,\xff\n\xfe,0,1,2\n",
    )?;
    println!("parse_activity_csv: {} seeds", s.count);

    // The scrubber the session target applies to mallory's bytes.
    let mut probe = b"$argon2".to_vec();
    scrub(&mut probe);
    assert_eq!(probe, b"$argonX");
    Ok(())
}
