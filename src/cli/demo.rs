//! `rampart demo`: a short end-to-end run on 127.0.0.1 that shows the server working and
//! holding against a handful of attacks. Every step prints one line; any failed check makes
//! the command exit non-zero.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::BytesMut;
use clap::Args;
use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use rampart::client::{Client, ClientOptions};
use rampart::config::Config;
use rampart::protocol::{
    decode_frame, raw_header, BlockedNotice, ErrorCode, ItemBody, Kind, Limits, Reply, Role,
    VERSION,
};
use rampart::server::auth::hash_password;
use rampart::server::Server;

use super::terminal::{visible, Shape};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Seed for the random file contents and flood bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keep the data directory instead of deleting it at the end.
    #[arg(long)]
    keep: bool,
}

struct Report {
    failures: usize,
}

impl Report {
    fn check(&mut self, ok: bool, what: &str) {
        if ok {
            println!("[ok]   {what}");
        } else {
            self.failures += 1;
            println!("[FAIL] {what}");
        }
    }
}

/// Reads until the server closes or `limit` passes; returns the bytes and whether it closed.
async fn drain(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(buf.get(..n).unwrap_or(&[])),
            Err(_) => return (got, false),
        }
    }
}

/// The loopback address of attacker `i` (Linux routes all of 127.0.0.0/8 to loopback).
fn attacker(i: u8) -> std::net::IpAddr {
    std::net::IpAddr::from([127, 0, 66, i])
}

async fn connect_from(source: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

fn error_code_of(bytes: &[u8]) -> Option<u16> {
    // An ERROR frame: 14-byte header with kind 0xFF, then the u16 code.
    if bytes.len() >= 16 && bytes.get(3) == Some(&0xFF) {
        return Some(u16::from_be_bytes([bytes[14], bytes[15]]));
    }
    None
}

/// The message of the one ERROR frame in `bytes`, if it is a `blocked` notice.
fn blocked_message(bytes: &[u8]) -> Option<String> {
    let limits = Limits::default();
    let frame = decode_frame(&mut BytesMut::from(bytes), &limits, Role::Client).ok()??;
    match Reply::decode(&frame, &limits).ok()? {
        Reply::Error { message, .. } => BlockedNotice::parse(&message).map(|n| n.to_string()),
        _ => None,
    }
}

pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    let dir = tempfile::Builder::new().prefix("rampart-demo-").tempdir()?;
    let mut config = Config::default();
    // Short timeouts so the slow attacks finish within a few seconds.
    config.timeouts.frame_budget_ms = 3_000;
    config.timeouts.frame_grace_ms = 1_000;
    println!(
        "rampart demo: seed {}, data in {}",
        args.seed,
        dir.path().display()
    );

    let server = Server::open(config.clone(), dir.path())?;
    let store = server.store();
    for (name, pw) in [
        ("alice", "alice-pw"),
        ("bob", "bob-pw"),
        ("mallory", "mallory-pw"),
    ] {
        store.add_user(name, &hash_password(&config.auth, pw.as_bytes())?)?;
    }
    let handle = server.bind("127.0.0.1:0".parse()?).await?;
    let addr: SocketAddr = handle.local_addr();
    println!("server listening on {addr}");
    let mut r = Report { failures: 0 };
    let opts = ClientOptions::default();
    let target = addr.to_string();

    // Legit traffic: a message, a mail with an attachment, and a file.
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut picture = vec![0u8; 1 << 20];
    rng.fill_bytes(&mut picture);
    let mut alice = Client::login(&target, "alice", b"alice-pw", opts.clone()).await?;
    let m = alice.send_message("bob", "hola bob, ¿qué tal?").await?;
    r.check(
        true,
        &format!("alice -> bob: chat message accepted as item {m}"),
    );
    let mail = alice
        .send_mail_with(
            "bob",
            "minutes",
            "see the attached notes",
            &[("notes.txt".to_string(), b"1. ship rampart\n".to_vec())],
        )
        .await?;
    r.check(
        true,
        &format!("alice -> bob: mail with one attachment accepted as item {mail}"),
    );
    let file = alice
        .send_file_bytes("bob", "picture.bin", &picture)
        .await?;
    r.check(
        true,
        &format!("alice -> bob: 1 MiB file uploaded in chunks, accepted as item {file}"),
    );

    let mut bob = Client::login(&target, "bob", b"bob-pw", opts.clone()).await?;
    let inbox = bob.inbox().await?;
    r.check(
        inbox.len() == 3,
        &format!("bob's inbox lists {} items", inbox.len()),
    );
    let got = bob.download_bytes(file, 0).await?;
    r.check(
        got == picture,
        "bob downloads the file; blake3 digest verified",
    );
    let view = bob.fetch(mail).await?;
    let attached =
        matches!(&view.body, ItemBody::Mail { attachments, .. } if attachments.len() == 1);
    r.check(attached, "bob fetches the mail with its attachment listed");

    // Tampering: mallory asks for bob's items by id and sends a traversal file name.
    // Each attacker comes from its own loopback address, so the firewall's blocks hit it alone.
    let mut mallory_opts = opts.clone();
    mallory_opts.source = Some(attacker(1));
    let mut mallory = Client::login(&target, "mallory", b"mallory-pw", mallory_opts).await?;
    let evil = mallory
        .send_file_bytes("mallory", "../../etc/passwd", b"x")
        .await?;
    let name = match mallory.fetch(evil).await?.body {
        ItemBody::File(a) => a.name,
        _ => String::new(),
    };
    r.check(
        name == "passwd",
        &format!("file name '../../etc/passwd' stored as '{name}'"),
    );

    // The sixth denial tips mallory's score over the threshold (a mistyped id or two never
    // does): the firewall blocks the source and cuts the session, so that last reply may
    // never arrive.
    let mut denied = 0;
    let mut cut = false;
    // Keep asking until the firewall cuts the session; at most a few more than it takes.
    for id in [m, mail, file].into_iter().cycle().take(10) {
        match mallory.fetch(id).await {
            Err(e) if e.code() == Some(ErrorCode::PermissionDenied) => denied += 1,
            Err(rampart::client::ClientError::Closed) => {
                cut = true;
                break;
            }
            _ => {}
        }
    }
    r.check(
        (5..=6).contains(&denied) && cut,
        &format!("mallory fetching bob's items by id: permission denied {denied} times, then cut"),
    );
    // Oversized: a header declaring a 4 GiB frame, on two connections (one broken header
    // alone never blocks: a client of another version sends one).
    let (mut bytes, mut closed) = (Vec::new(), true);
    for _ in 0..2 {
        let mut s = connect_from(attacker(2), addr).await?;
        s.write_all(&raw_header(
            VERSION,
            Kind::SendMessage as u8,
            1,
            0,
            u32::MAX,
        ))
        .await?;
        let (got, shut) = drain(&mut s, Duration::from_secs(2)).await;
        closed &= shut;
        bytes = got;
    }
    r.check(
        closed && error_code_of(&bytes) == Some(ErrorCode::BadFrame as u16),
        "4 GiB length header: refused with bad_frame before any payload, connection closed",
    );

    // A probe that is not rampart at all, twice, as a scanner retries.
    let mut closed = true;
    for _ in 0..2 {
        let mut s = connect_from(attacker(3), addr).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
        closed &= drain(&mut s, Duration::from_secs(2)).await.1;
    }
    r.check(
        closed,
        "HTTP request on the port: rejected at the first byte, connection closed",
    );

    // Endless random bytes: while True: socket.send(data).
    let started = Instant::now();
    let mut flood = connect_from(attacker(4), addr).await?;
    let mut junk = vec![0u8; 64 * 1024];
    rng.fill_bytes(&mut junk);
    let mut sent = 0usize;
    while started.elapsed() < Duration::from_secs(2) {
        match tokio::time::timeout(Duration::from_millis(200), flood.write_all(&junk)).await {
            Ok(Ok(())) => sent += junk.len(),
            _ => break,
        }
    }
    let (_, closed) = drain(&mut flood, Duration::from_secs(2)).await;
    r.check(closed, &format!("raw flood: cut after {} KiB", sent / 1024));
    // The flood reconnects and starts again: its second connection blocks it.
    if let Ok(mut again) = connect_from(attacker(4), addr).await {
        if again.write_all(&junk).await.is_ok() {
            drain(&mut again, Duration::from_secs(2)).await;
        }
    }

    // Slowloris: a valid header declaring a large frame, then one byte at a time.
    let mut slow = connect_from(attacker(5), addr).await?;
    slow.write_all(&raw_header(VERSION, Kind::SendMessage as u8, 1, 0, 0x4000))
        .await?;
    let started = Instant::now();
    let mut cut = false;
    while started.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if slow.write_all(b"x").await.is_err() {
            cut = true;
            break;
        }
        let mut b = [0u8; 64];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut b)).await {
            if n == 0 || error_code_of(b.get(..n).unwrap_or(&[])) == Some(ErrorCode::Timeout as u16)
            {
                cut = true;
                break;
            }
        }
    }
    r.check(
        cut,
        &format!(
            "slowloris (one byte every 300 ms): cut after {:.1} s",
            started.elapsed().as_secs_f64()
        ),
    );

    // The server is still there for everyone else.
    let alive = bob.ping().await.is_ok();
    r.check(
        alive,
        "server alive after the attacks: bob's session still answers",
    );
    let guard = handle.guard();
    let blocked: Vec<String> = guard
        .blocked()
        .iter()
        .map(|b| b.source.to_string())
        .collect();
    r.check(
        (1..=4).all(|i| guard.is_blocked(attacker(i))) && !guard.is_blocked(addr.ip()),
        &format!(
            "firewall blocked every attacking source ({}) and no legit one",
            blocked.join(", ")
        ),
    );
    println!(
        "       (the slowloris source has {:.0} of {} points: one more cut blocks it)",
        handle.firewall().score(attacker(5)),
        config.firewall.threshold
    );
    // Refused at accept with one ERROR blocked that says for how long and why, then closed:
    // at once, or, when the connection got a place in the resume-ticket budget, once the
    // server's wait for a RESUME (`guard::RESUME_FIRST_FRAME_WAIT`) is over.
    let told = match connect_from(attacker(3), addr).await {
        Ok(mut s) => match drain(
            &mut s,
            rampart::guard::RESUME_FIRST_FRAME_WAIT + Duration::from_secs(1),
        )
        .await
        {
            (got, true) if error_code_of(&got) == Some(ErrorCode::Blocked as u16) => {
                blocked_message(&got)
            }
            _ => None,
        },
        Err(_) => None,
    };
    r.check(
        told.is_some(),
        "a blocked source that reconnects is refused at accept and told why",
    );
    if let Some(message) = told {
        println!("       ({})", visible(&message, Shape::Line));
    }
    let m = handle.metrics().snapshot();
    println!(
        "metrics: {}",
        serde_json::to_string(&m).context("metrics are serializable")?
    );
    drop((alice, bob, mallory));
    handle.shutdown().await;
    if args.keep {
        println!("data kept in {}", dir.keep().display());
    }
    if r.failures == 0 {
        println!("demo passed");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("demo failed: {} check(s)", r.failures);
        Ok(ExitCode::FAILURE)
    }
}
