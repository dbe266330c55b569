//! The data directory's safety, tried as an operator would: a second `rampart serve` on the
//! same directory, the offline commands next to a running server, a lost or damaged
//! database, and `fetch --out` when the bytes do not match their digest. The binary under
//! test (`CARGO_BIN_EXE_rampart`) runs as child processes on 127.0.0.1.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rampart::client::{Client, ClientOptions};
use rampart::protocol::{Reply, Request};
use rampart::server::{Server, ServerError};
use rampart::store::{StoreError, LOST_FOUND_DIR};

use common::{add_users, open_once_free, start_server, test_config};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const BIN: &str = env!("CARGO_BIN_EXE_rampart");

/// Longest wait for any one command, and for the server's "listening on" line.
const LIMIT: Duration = Duration::from_secs(60);

/// Cheap hashing, generous login limits, and no runtime blocks for 127.0.0.1.
const CONFIG: &str = "\
[auth]
argon2_memory_kib = 64
argon2_iterations = 1

[rates]
logins_per_min_per_ip = 100000
logins_burst_per_ip = 100000
logins_per_min_per_user = 100000
logins_burst_per_user = 100000

[ip]
allow = [\"127.0.0.1\"]
";

/// A `rampart serve` child, killed and reaped on drop (every path, panics included).
struct Serve {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the test configuration into `dir` and returns its path.
fn config_file(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join("rampart.toml");
    std::fs::write(&path, CONFIG)?;
    Ok(path)
}

/// Starts `rampart serve` on `data` and waits for its "listening on" line.
fn serve(data: &Path, config: &Path) -> Result<Serve, Box<dyn std::error::Error>> {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--no-model",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data)
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut first = String::new();
        let mut reader = BufReader::new(stdout);
        let _ = reader.read_line(&mut first);
        let _ = tx.send(first);
        // Keep draining so the server never blocks on a full pipe.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let mut serve = Serve {
        child,
        addr: "127.0.0.1:0".parse()?,
    };
    let line = rx.recv_timeout(LIMIT)?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| format!("unexpected first line {line:?}"))?;
    serve.addr = addr.parse()?;
    Ok(serve)
}

/// Runs `rampart ARGS...` with `stdin`, bounded by [`LIMIT`].
fn rampart(
    args: &[&str],
    stdin: &[u8],
    env: &[(&str, &str)],
) -> Result<Output, Box<dyn std::error::Error>> {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin);
    }
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let mut err = child.stderr.take().ok_or("no stderr")?;
    let reader = std::thread::spawn(move || {
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let _ = out.read_to_end(&mut o);
        let _ = err.read_to_end(&mut e);
        (o, e)
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out: rampart {args:?}").into());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (stdout, stderr) = reader.join().map_err(|_| "reader panicked")?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn options() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    }
}

/// `rampart user add NAME` with `password` on stdin.
fn user_add(
    data: &str,
    config: &Path,
    name: &str,
    password: &str,
) -> Result<Output, Box<dyn std::error::Error>> {
    let config = config.to_str().ok_or("path")?;
    rampart(
        &["user", "add", name, "--data-dir", data, "--config", config],
        format!("{password}\n").as_bytes(),
        &[],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_the_same_data_directory_fails_at_once_naming_the_owner() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config_file(dir.path())?;
    let data = dir.path().join("data");
    let data_s = data.to_str().ok_or("path")?;
    let added = user_add(data_s, &config, "alice", "alice-pw")?;
    assert!(added.status.success(), "{}", text(&added.stderr));
    let first = serve(&data, &config)?;

    // An upload in flight on the first server: what a second server's start-up sweep
    // used to delete.
    let mut alice = Client::login(&first.addr.to_string(), "alice", b"alice-pw", options()).await?;
    let content = b"half of it, then the other half".to_vec();
    let Reply::UploadReady { upload_id, .. } = alice
        .call(Request::UploadBegin {
            name: "f.bin".into(),
            size: content.len() as u64,
        })
        .await?
    else {
        return Err("upload not ready".into());
    };
    alice
        .call(Request::UploadChunk {
            upload_id,
            offset: 0,
            data: content[..10].to_vec().into(),
        })
        .await?;

    let started = Instant::now();
    let second = rampart(
        &[
            "serve",
            "--no-model",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_s,
        ],
        b"",
        &[],
    )?;
    assert!(started.elapsed() < Duration::from_secs(10), "not at once");
    assert!(!second.status.success());
    assert_eq!(
        text(&second.stderr).trim_end(),
        format!(
            "error: data directory {data_s} is in use by another rampart (pid {})",
            first.child.id()
        )
    );
    assert!(second.stdout.is_empty(), "{}", text(&second.stdout));

    // The first server's upload was not touched: it finishes and downloads intact.
    alice
        .call(Request::UploadChunk {
            upload_id,
            offset: 10,
            data: content[10..].to_vec().into(),
        })
        .await?;
    alice
        .call(Request::UploadEnd {
            upload_id,
            digest: *blake3::hash(&content).as_bytes(),
        })
        .await?;
    let Reply::Accepted { item_id } = alice
        .call(Request::SendFile {
            to: "alice".into(),
            upload_id,
        })
        .await?
    else {
        return Err("file not accepted".into());
    };
    assert_eq!(alice.download_bytes(item_id, 0).await?, content);
    drop(alice);

    // Once the first server is gone, the directory is free again.
    drop(first);
    let again = serve(&data, &config)?;
    drop(again);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_in_one_process_cannot_share_a_data_directory() -> TestResult {
    let dir = tempfile::tempdir()?;
    let first = Server::open(test_config(), dir.path())?;
    match Server::open(test_config(), dir.path()) {
        Err(ServerError::Store(StoreError::InUse { pid, .. })) => {
            assert_eq!(pid, Some(std::process::id()));
        }
        other => return Err(format!("expected InUse, got {other:?}").into()),
    }
    drop(first);
    // The lock goes with the server.
    open_once_free(test_config(), dir.path())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_commands_work_beside_a_running_server() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config_file(dir.path())?;
    let data = dir.path().join("data");
    let data_s = data.to_str().ok_or("path")?;
    assert!(user_add(data_s, &config, "alice", "alice-pw")?
        .status
        .success());
    let server = serve(&data, &config)?;
    let target = server.addr.to_string();

    // user add and passwd write through SQLite's own locking; the server sees them at once.
    let added = user_add(data_s, &config, "carol", "carol-pw")?;
    assert!(added.status.success(), "{}", text(&added.stderr));
    let mut carol = Client::login(&target, "carol", b"carol-pw", options()).await?;
    carol
        .send_message("alice", "hello from a user added live")
        .await?;
    let passwd = rampart(
        &[
            "user",
            "passwd",
            "carol",
            "--data-dir",
            data_s,
            "--config",
            config.to_str().ok_or("path")?,
        ],
        b"carol-new\n",
        &[],
    )?;
    assert!(passwd.status.success(), "{}", text(&passwd.stderr));
    Client::login(&target, "carol", b"carol-new", options()).await?;
    let list = rampart(&["user", "list", "--json", "--data-dir", data_s], b"", &[])?;
    assert!(list.status.success(), "{}", text(&list.stderr));
    assert!(
        text(&list.stdout).contains("\"name\":\"carol\""),
        "{}",
        text(&list.stdout)
    );

    // The firewall commands go through the activity database, which the server polls.
    let unblock = rampart(
        &["firewall", "unblock", "127.0.0.9", "--data-dir", data_s],
        b"",
        &[],
    )?;
    assert!(unblock.status.success(), "{}", text(&unblock.stderr));
    let decisions = rampart(
        &["firewall", "list", "--all", "--json", "--data-dir", data_s],
        b"",
        &[],
    )?;
    assert!(decisions.status.success(), "{}", text(&decisions.stderr));
    assert!(
        text(&decisions.stdout).contains("127.0.0.9"),
        "{}",
        text(&decisions.stdout)
    );

    // Exports read a consistent snapshot while the recorder writes.
    let csv = dir.path().join("features.csv");
    let export = rampart(
        &[
            "activity",
            "export",
            "--data-dir",
            data_s,
            "--out",
            csv.to_str().ok_or("path")?,
        ],
        b"",
        &[],
    )?;
    assert!(export.status.success(), "{}", text(&export.stderr));
    assert!(csv.is_file());

    // And the server is still serving, its data intact.
    let mut alice = Client::login(&target, "alice", b"alice-pw", options()).await?;
    assert_eq!(alice.inbox().await?.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_moves_every_blob_to_lost_and_found_and_deletes_none() -> TestResult {
    let server = start_server().await;
    let mut alice = server.login("alice").await;
    let mut files = Vec::new();
    for i in 0..3u8 {
        let data = vec![i; 1000 + usize::from(i)];
        alice
            .send_file_bytes("bob", &format!("f{i}.bin"), &data)
            .await?;
        files.push(data);
    }
    drop(alice);
    let common::TestServer { handle, dir, .. } = server;
    handle.shutdown().await;
    for name in ["rampart.db", "rampart.db-wal", "rampart.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(name));
    }

    // A new, empty database references nothing: the blobs move, and none is deleted.
    let reopened = open_once_free(test_config(), dir.path())?;
    let lost = dir.path().join(LOST_FOUND_DIR);
    let mut found: Vec<Vec<u8>> = std::fs::read_dir(&lost)?
        .map(|e| e.and_then(|e| std::fs::read(e.path())))
        .collect::<Result<_, _>>()?;
    found.sort_by_key(Vec::len);
    assert_eq!(found, files);
    add_users(&*reopened.store(), &test_config());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_stops_serve_with_a_clear_error() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("rampart.db"), vec![0x42; 16 * 1024])?;
    let out = rampart(
        &[
            "serve",
            "--no-model",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().ok_or("path")?,
        ],
        b"",
        &[],
    )?;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("rampart.db is damaged"), "{err}");
    assert!(err.contains("restore it from a backup"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_out_never_leaves_a_file_whose_digest_failed() -> TestResult {
    let server = start_server().await;
    let mut alice = server.login("alice").await;
    let content = vec![7u8; 300_000];
    let id = alice.send_file_bytes("bob", "doc.bin", &content).await?;
    // Flip one byte of the stored blob: the server now serves bytes that do not match the
    // digest it recorded.
    let blobs = server.dir.path().join("blobs");
    let blob = std::fs::read_dir(&blobs)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().len() == 2)
        .find_map(|shard| std::fs::read_dir(shard.path()).ok()?.next()?.ok())
        .ok_or("no blob")?
        .path();
    let mut bytes = std::fs::read(&blob)?;
    bytes[123_456] ^= 0xff;
    std::fs::write(&blob, &bytes)?;

    let out_dir = tempfile::tempdir()?;
    let fresh = out_dir.path().join("fresh.bin");
    let existing = out_dir.path().join("existing.bin");
    std::fs::write(&existing, b"keep me")?;
    // A ticket file of this test's own, not the user's, outside the checked directory.
    let tickets_dir = tempfile::tempdir()?;
    let tickets = tickets_dir.path().join("tickets");
    let tickets = tickets.to_str().ok_or("path")?;
    for dest in [&fresh, &existing] {
        let out = rampart(
            &[
                "client",
                "--server",
                &server.target(),
                "--user",
                "bob",
                "fetch",
                &id.to_string(),
                "--out",
                dest.to_str().ok_or("path")?,
            ],
            b"",
            &[("RAMPART_PASSWORD", "bob-pw"), ("RAMPART_TICKETS", tickets)],
        )?;
        assert!(!out.status.success(), "{}", text(&out.stdout));
        assert!(
            text(&out.stderr).contains("digest"),
            "{}",
            text(&out.stderr)
        );
    }
    assert!(
        !fresh.exists(),
        "a file whose digest failed was left behind"
    );
    assert_eq!(std::fs::read(&existing)?, b"keep me");
    let left: Vec<_> = std::fs::read_dir(out_dir.path())?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["existing.bin"], "temporary files left: {left:?}");

    // Restored bytes download normally, through the same path.
    bytes[123_456] ^= 0xff;
    std::fs::write(&blob, &bytes)?;
    let mut bob = server.login("bob").await;
    bob.download_to_file(
        id,
        0,
        &fresh,
        rampart::client::download::Placement::NoClobber,
    )
    .await?;
    assert_eq!(std::fs::read(&fresh)?, content);
    Ok(())
}
