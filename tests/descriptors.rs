//! Under a low descriptor limit (`ulimit -n 512`), `rampart serve` lowers `max_connections`
//! to what the limit can serve, says so at start, and a connection flood then cannot take
//! the descriptors an authenticated session's upload needs.

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart::client::{Client, ClientOptions};

const BIN: &str = env!("CARGO_BIN_EXE_rampart");

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Kills and reaps the server on every path.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Cheap hashing; the flood's sources stay unblocked (the test is about descriptors, not the
/// firewall), and its silent connections are not cut for 30 s.
const CONFIG: &str = "\
[auth]
argon2_memory_kib = 64
argon2_iterations = 1

[timeouts]
auth_ms = 30000

[firewall]
enabled = false
";

#[test]
fn a_flood_under_a_low_descriptor_limit_leaves_room_for_an_upload() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let config = dir.path().join("rampart.toml");
    std::fs::write(&config, CONFIG)?;
    let add = Command::new(BIN)
        .args(["user", "add", "alice", "--data-dir"])
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().map(|mut i| i.write_all(b"alice-pw\n"));
            c.wait()
        })?;
    assert!(add.success());

    // `ulimit -n` in sh sets the soft and the hard limit, so the server cannot raise it.
    let script = format!(
        "ulimit -n 512 && exec \"{BIN}\" serve --data-dir \"{}\" --listen 127.0.0.1:0 --config \"{}\"",
        data.display(),
        config.display()
    );
    let mut server = ChildGuard(
        Command::new("sh")
            .args(["-c", &script])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut err_pipe = server.0.stderr.take().ok_or("no stderr")?;
    let sink = Arc::clone(&stderr);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = err_pipe.read(&mut buf) {
            if let Ok(mut s) = sink.lock() {
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    let mut first = String::new();
    let mut out = BufReader::new(server.0.stdout.take().ok_or("no stdout")?);
    out.read_line(&mut first)?;
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let addr: SocketAddr = first
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| format!("no listening line: {first:?}"))?
        .parse()?;
    // The warning was written before the listening line; give the reader thread a moment.
    let expected = "max_connections lowered from 16384 to 64";
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut said = String::new();
    while std::time::Instant::now() < deadline {
        said = stderr.lock().map(|s| s.clone()).unwrap_or_default();
        if said.contains(expected) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        said.contains(expected) && said.contains("file descriptor limit of 512"),
        "start-up should say how it fitted the limit: {said}"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let opts = ClientOptions::default().request_timeout(Duration::from_secs(20));
        let mut alice = Client::login(addr, "alice", b"alice-pw", opts).await?;
        // 8 sources x 100 silent connections: far more than 512 descriptors' worth, held
        // for the rest of the test.
        let mut flood = Vec::new();
        for source in 2..10u8 {
            for _ in 0..100 {
                let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, source));
                flood.push(tokio::spawn(async move {
                    let socket = tokio::net::TcpSocket::new_v4().ok()?;
                    socket.bind(SocketAddr::new(ip, 0)).ok()?;
                    tokio::time::timeout(Duration::from_secs(2), socket.connect(addr))
                        .await
                        .ok()?
                        .ok()
                }));
            }
        }
        let mut held = Vec::new();
        for f in flood {
            if let Ok(Some(stream)) = f.await {
                held.push(stream);
            }
        }
        // Let the server accept (or refuse) everything the flood opened.
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The upload stages a file, commits a blob and writes SQLite: descriptors the
        // flood must not have taken.
        let data = vec![7u8; 1024 * 1024];
        let id = alice
            .send_file_bytes("alice", "under-flood.bin", &data)
            .await?;
        let mut sink = Vec::new();
        alice.download(id, 0, &mut sink).await?;
        assert_eq!(sink, data);
        drop(held);
        TestResult::Ok(())
    })?;
    let said = stderr.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(!said.contains("ERROR"), "{said}");
    Ok(())
}
