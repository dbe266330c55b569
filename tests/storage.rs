//! Storage under pressure: the quota counts uploads that are not items yet and charges every
//! item a fixed overhead, and a full disk refuses new data with `storage_full` while reading
//! and deleting go on. The last test fills a real size-limited file system (a tmpfs it
//! mounts, where the machine allows) during a run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rampart::client::ClientError;
use rampart::config::Config;
use rampart::protocol::{ErrorCode, Reply, Request};
use rampart::store::{ItemId, ITEM_OVERHEAD_BYTES};

use common::{add_users, open_once_free, start_server_with, test_config, TestServer};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const MIB: u64 = 1024 * 1024;

/// Fails unless `result` is an ERROR reply with `code`.
#[track_caller]
fn refused<T: std::fmt::Debug>(result: Result<T, ClientError>, code: ErrorCode) -> TestResult {
    match result {
        Err(e) if e.code() == Some(code) => Ok(()),
        other => Err(format!("expected {code:?}, got {other:?}").into()),
    }
}

/// Bounds a test, so a hang fails instead of stalling the suite.
async fn within<F: std::future::Future<Output = TestResult>>(f: F) -> TestResult {
    tokio::time::timeout(Duration::from_secs(120), f).await?
}

/// Deterministic bytes: `len` of them, all derived from `seed`.
fn bytes(seed: u8, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_parallel_uploads_cannot_all_finish_under_the_quota() -> TestResult {
    within(async {
        let mut cfg = test_config();
        cfg.limits.user_quota_bytes = 16 * MIB;
        cfg.limits.max_file_bytes = 16 * MIB;
        // Six logins of one user at once.
        cfg.rates.logins_burst_per_user = 10;
        let server = start_server_with(cfg).await;
        let file = bytes(1, 12 * MIB);
        let mut sessions = Vec::new();
        for _ in 0..6 {
            sessions.push(server.login("alice").await);
        }
        let uploads = sessions.into_iter().map(|mut alice| {
            let file = file.clone();
            tokio::spawn(async move {
                let finished = alice.upload_bytes("big.bin", &file).await;
                (alice, finished)
            })
        });
        // Uploads finish (UPLOAD_DONE) without being sent: each must already hold quota.
        let mut finished = Vec::new();
        for upload in uploads {
            match upload.await? {
                (alice, Ok(id)) => finished.push((alice, id)),
                (_, Err(e)) => assert_eq!(e.code(), Some(ErrorCode::QuotaExceeded), "{e}"),
            }
        }
        assert_eq!(
            finished.len(),
            1,
            "only one 12 MiB upload fits a 16 MiB quota"
        );
        let blobs = server.dir.path().join("blobs");
        let on_disk: usize = std::fs::read_dir(&blobs)?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().len() == 2)
            .map(|shard| std::fs::read_dir(shard.path()).map_or(0, Iterator::count))
            .sum();
        assert_eq!(on_disk, 1, "12 MiB files on disk");
        let (mut alice, upload_id) = finished.pop().ok_or("none finished")?;
        alice
            .call(Request::SendFile {
                to: "bob".into(),
                upload_id,
            })
            .await?;
        let store = server.handle.server().store();
        let id = store.user_id("alice")?.ok_or("no alice")?;
        assert_eq!(store.usage(id)?, 12 * MIB + ITEM_OVERHEAD_BYTES);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_upload_holds_its_quota_until_it_is_sent_or_its_session_ends() -> TestResult {
    within(async {
        let mut cfg = test_config();
        cfg.limits.user_quota_bytes = 16 * MIB;
        cfg.limits.max_file_bytes = 16 * MIB;
        let server = start_server_with(cfg).await;
        let mut first = server.login("alice").await;
        let upload_id = first.upload_bytes("a.bin", &bytes(2, 12 * MIB)).await?;
        let mut second = server.login("alice").await;
        let begin = Request::UploadBegin {
            name: "b.bin".into(),
            size: 12 * MIB,
        };
        refused(second.call(begin.clone()).await, ErrorCode::QuotaExceeded)?;
        // The first session ends without sending: its upload is gone, and so is its hold.
        first.bye().await?;
        let mut freed = false;
        for _ in 0..100 {
            if let Ok(Reply::UploadReady { .. }) = second.call(begin.clone()).await {
                freed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(freed, "upload {upload_id}'s hold outlived its session");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_item_costs_the_fixed_overhead_even_when_empty() -> TestResult {
    within(async {
        let mut cfg = test_config();
        cfg.limits.user_quota_bytes = 10 * ITEM_OVERHEAD_BYTES;
        cfg.limits.max_file_bytes = cfg.limits.user_quota_bytes;
        let server = start_server_with(cfg).await;
        let mut alice = server.login("alice").await;
        for _ in 0..8 {
            alice.send_message("bob", "").await?;
        }
        alice.send_file_bytes("bob", "empty.bin", b"").await?;
        alice.send_mail_with("bob", "", "", &[]).await?;
        refused(
            alice.send_message("bob", "").await,
            ErrorCode::QuotaExceeded,
        )?;
        refused(
            alice.send_file_bytes("bob", "empty.bin", b"").await,
            ErrorCode::QuotaExceeded,
        )?;
        let store = server.handle.server().store();
        let id = store.user_id("alice")?.ok_or("no alice")?;
        assert_eq!(store.usage(id)?, 10 * ITEM_OVERHEAD_BYTES);
        // Each delete gives back what the item cost.
        let mut bob = server.login("bob").await;
        let first = bob.inbox().await?[0].id;
        bob.delete(first).await?;
        assert_eq!(store.usage(id)?, 9 * ITEM_OVERHEAD_BYTES);
        alice.send_message("bob", "").await?;
        Ok(())
    })
    .await
}

/// A server on `dir` with `min_free_bytes`, and the test users if it is a fresh directory.
async fn server_on(
    dir: &Path,
    min_free_bytes: u64,
    users: bool,
) -> Result<TestServer, Box<dyn std::error::Error>> {
    let mut cfg = test_config();
    cfg.storage.min_free_bytes = min_free_bytes;
    cfg.limits.max_file_bytes = 64 * MIB;
    serve_on(cfg, dir, users).await
}

async fn serve_on(
    cfg: Config,
    dir: &Path,
    users: bool,
) -> Result<TestServer, Box<dyn std::error::Error>> {
    // A fresh directory, or one a previous server here was shut down on.
    let server = open_once_free(cfg.clone(), dir)?;
    if users {
        add_users(&*server.store(), &cfg);
    }
    let handle = server.bind("127.0.0.1:0".parse()?).await?;
    let addr = handle.local_addr();
    // The directory belongs to the caller; this empty one only fills the struct.
    Ok(TestServer {
        handle,
        dir: tempfile::tempdir()?,
        addr,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_free_space_floor_new_data_is_refused_and_reads_and_deletes_work() -> TestResult {
    within(async {
        let dir = tempfile::tempdir()?;
        let (msg, file, content) = {
            let server = server_on(dir.path(), 0, true).await?;
            let mut alice = server.login("alice").await;
            let content = bytes(3, 100_000);
            let file = alice.send_file_bytes("bob", "f.bin", &content).await?;
            let msg = alice.send_message("bob", "kept").await?;
            server.handle.shutdown().await;
            (msg, file, content)
        };
        // A floor no disk can meet: to the server the disk is full.
        let server = server_on(dir.path(), rampart::config::MAX_MIN_FREE_BYTES, false).await?;
        let mut alice = server.login("alice").await;
        refused(
            alice.send_message("bob", "new").await,
            ErrorCode::StorageFull,
        )?;
        refused(
            alice.send_file_bytes("bob", "g.bin", b"new bytes").await,
            ErrorCode::StorageFull,
        )?;
        let mut bob = server.login("bob").await;
        assert_eq!(bob.inbox().await?.len(), 2);
        assert_eq!(bob.download_bytes(file, 0).await?, content);
        bob.delete(file).await?;
        bob.delete(msg).await?;
        assert!(bob.inbox().await?.is_empty());
        assert_eq!(
            server.handle.server().metrics().snapshot().internal_errors,
            0
        );
        // The recorder shed what it could not write, and counted it.
        let recorder = server.handle.server().recorder();
        recorder.flush();
        let stats = recorder.stats();
        assert!(stats.shed > 0, "{stats:?}");
        assert_eq!(stats.recorded, 0, "{stats:?}");
        Ok(())
    })
    .await
}

/// A tmpfs of a given size mounted on a temporary directory, unmounted when dropped, on
/// every path.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes`, or says why it cannot.
    fn mount(bytes: u64) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: detaches even if something still holds a file open, so nothing stays
        // mounted after the test.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes zeros to `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> std::io::Result<u64> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let block = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if rampart::store::is_out_of_space(&e) => break,
            Err(e) => return Err(e),
        }
    }
    // Smaller writes take the last partial block too.
    for _ in 0..64 {
        match f.write(&block[..512]) {
            Ok(n) if n > 0 => written += n as u64,
            _ => break,
        }
    }
    let _ = f.sync_all();
    Ok(written)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_during_a_run_refuses_cleanly_and_loses_nothing() -> TestResult {
    let fs = match Tmpfs::mount(32 * MIB) {
        Ok(fs) => fs,
        Err(why) => {
            println!("skipped: cannot mount a size-limited tmpfs here ({why})");
            return Ok(());
        }
    };
    let data = fs.path().join("data");
    let result = within(fill_and_recover(&data, fs.path().join("filler"))).await;
    drop(fs);
    result
}

async fn fill_and_recover(data: &Path, filler: PathBuf) -> TestResult {
    let server = server_on(data, 4 * MIB, true).await?;
    let mut alice = server.login("alice").await;
    let mut bob = server.login("bob").await;

    // Upload 1 MiB files until the server says the disk is full.
    let mut acked: Vec<(ItemId, Vec<u8>)> = Vec::new();
    let full = loop {
        let content = bytes(acked.len() as u8, MIB);
        match alice.send_file_bytes("bob", "part.bin", &content).await {
            Ok(id) => acked.push((id, content)),
            Err(e) => break e,
        }
        assert!(acked.len() < 64, "a 32 MiB disk never filled");
    };
    assert_eq!(full.code(), Some(ErrorCode::StorageFull), "{full}");
    assert!(acked.len() >= 10, "only {} files fit", acked.len());

    // Then something else takes every last block.
    fill(&filler)?;
    refused(alice.send_message("bob", "m").await, ErrorCode::StorageFull)?;

    // Nothing acknowledged is lost, and reading works on the full disk.
    let listed: Vec<ItemId> = bob.inbox().await?.iter().map(|e| e.id).collect();
    assert_eq!(listed, acked.iter().map(|(id, _)| *id).collect::<Vec<_>>());
    let (first, content) = &acked[0];
    bob.fetch(*first).await?;
    assert_eq!(&bob.download_bytes(*first, 0).await?, content);

    // Deleting works on the full disk, and frees space.
    let before = rampart::store::FreeSpace::unlimited(data).available()?;
    for (id, _) in acked.drain(..4) {
        bob.delete(id).await?;
    }
    let after = rampart::store::FreeSpace::unlimited(data).available()?;
    assert!(after >= before + 4 * MIB, "freed {} bytes", after - before);

    // With the filler gone there is room again; the server never stopped.
    std::fs::remove_file(&filler)?;
    alice.send_message("bob", "room again").await?;
    alice
        .send_file_bytes("bob", "again.bin", &bytes(9, MIB))
        .await?;
    for (id, content) in &acked {
        assert_eq!(&bob.download_bytes(*id, 0).await?, content);
    }
    let metrics = server.handle.server().metrics().snapshot();
    assert_eq!(metrics.internal_errors, 0, "{metrics:?}");
    assert_eq!(metrics.panics, 0, "{metrics:?}");
    drop((alice, bob));
    server.handle.shutdown().await;
    Ok(())
}
