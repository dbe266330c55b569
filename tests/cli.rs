//! End-to-end tests of the `rampart` binary: every test runs the real executable
//! (`CARGO_BIN_EXE_rampart`) as child processes on 127.0.0.1, with temporary data
//! directories and a small TOML config (cheap argon2, generous login rates).
//!
//! Every child process is owned by a [`ChildGuard`] that kills it on drop, and every wait is
//! bounded, so a hung server or client fails the test instead of hanging it.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_rampart");

/// Longest wait for any one CLI command (uploads of a few MiB included).
const CMD_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest wait for the server's "listening on" line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for the server to exit after SIGINT or SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The users every [`Server`] starts with, and their passwords.
const USERS: [(&str, &str); 3] = [
    ("alice", "alice-pw"),
    ("bob", "bob-pw"),
    ("mallory", "mallory-pw"),
];

/// Cheap password hashing, and login limits high enough for the many CLI logins a test makes
/// from 127.0.0.1.
const CHEAP_CONFIG: &str = "\
[auth]
argon2_memory_kib = 64
argon2_iterations = 1

[rates]
logins_per_min_per_ip = 100000
logins_burst_per_ip = 100000
logins_per_min_per_user = 100000
logins_burst_per_user = 100000
";

/// [`CHEAP_CONFIG`] with 127.0.0.1 exempt from runtime blocks: the tests fail logins and reach
/// for other users' items on purpose, which the firewall would otherwise punish by blocking
/// the source. Tests append other tables ([limits], [timeouts]) to this.
const BASE_CONFIG: &str = "\
[ip]
allow = [\"127.0.0.1\"]
";

const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Processes

/// Kills and reaps its child when dropped, on every path (success, assertion failure, panic).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Both fail harmlessly if the child was already reaped.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for `child` to exit for at most `limit`.
fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Reads a pipe to its end on a thread, so a chatty child never blocks on a full pipe.
fn drain<R: Read + Send + 'static>(mut pipe: R) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// A command started with captured stdout and stderr.
struct Spawned {
    child: ChildGuard,
    stdout: JoinHandle<Vec<u8>>,
    stderr: JoinHandle<Vec<u8>>,
    what: String,
}

/// Starts `cmd` with `stdin` written to its standard input (then closed), capturing the
/// output. RUST_LOG is removed so the server's log filter cannot add lines to stderr.
fn spawn(mut cmd: Command, stdin: &[u8]) -> Spawned {
    cmd.env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let mut child = ChildGuard(cmd.spawn().expect("spawn rampart"));
    let stdout = drain(child.0.stdout.take().expect("stdout"));
    let stderr = drain(child.0.stderr.take().expect("stderr"));
    if let Some(mut input) = child.0.stdin.take() {
        // A child that exits without reading stdin makes this fail with EPIPE; that is fine.
        let _ = input.write_all(stdin);
        // Dropping `input` closes the pipe: the child sees end of file.
    }
    Spawned {
        child,
        stdout,
        stderr,
        what,
    }
}

impl Spawned {
    /// Waits at most `limit` for the exit, then returns everything the command printed.
    fn finish(mut self, limit: Duration) -> Output {
        let status = wait_timeout(&mut self.child.0, limit);
        // Kill (if still running) before joining the readers, so the pipes close.
        drop(self.child);
        let stdout = self.stdout.join().expect("stdout reader");
        let stderr = self.stderr.join().expect("stderr reader");
        let Some(status) = status else {
            panic!(
                "timed out after {limit:?}: {}\nstdout: {}\nstderr: {}",
                self.what,
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        };
        Output {
            status,
            stdout,
            stderr,
        }
    }
}

/// Runs `cmd` to completion (bounded by [`CMD_TIMEOUT`]).
fn run(cmd: Command, stdin: &[u8]) -> Output {
    spawn(cmd, stdin).finish(CMD_TIMEOUT)
}

/// `rampart ARGS...`, run to completion with empty stdin.
fn rampart(args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    run(cmd, b"")
}

/// `rampart client ARGS...` with RAMPART_PASSWORD set to `password`, or unset for `None`.
fn client_command(args: &[&str], password: Option<&str>) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("client").args(args).env_remove("RAMPART_PASSWORD");
    if let Some(pw) = password {
        cmd.env("RAMPART_PASSWORD", pw);
    }
    cmd
}

/// Runs `rampart client ARGS...` to completion.
fn run_client(args: &[&str], password: Option<&str>) -> Output {
    run(client_command(args, password), b"")
}

/// `rampart user ARGS...` with `stdin` as its standard input.
fn run_user(args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("user").args(args);
    run(cmd, stdin)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// Asserts success; returns stdout.
#[track_caller]
fn expect_ok(out: &Output) -> String {
    assert!(out.status.success(), "command failed: {}", describe(out));
    text(&out.stdout)
}

/// Asserts the error contract: non-zero exit, exactly one line on stderr, starting with
/// "error:" and containing `needle`. Returns that line.
#[track_caller]
fn expect_error(out: &Output, needle: &str) -> String {
    assert!(
        !out.status.success(),
        "command should have failed: {}",
        describe(out)
    );
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.trim().lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one line on stderr: {}",
        describe(out)
    );
    assert!(
        lines[0].starts_with("error:"),
        "stderr should start with \"error:\": {}",
        describe(out)
    );
    assert!(
        lines[0].contains(needle),
        "stderr should mention {needle:?}: {}",
        describe(out)
    );
    lines[0].to_string()
}

/// The item id from "sent message 4 to bob", "sent mail 5 to bob with ...", "sent file 6 ...".
#[track_caller]
fn sent_id(stdout: &str) -> u64 {
    let line = stdout.trim();
    assert!(line.starts_with("sent "), "unexpected output {line:?}");
    line.split_whitespace()
        .nth(2)
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no item id in {line:?}"))
}

// ---------------------------------------------------------------------------------------------
// Data

/// Deterministic pseudo-random bytes (xorshift64*): cheap even in a debug build.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = vec![0u8; len];
    for chunk in out.chunks_mut(8) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let word = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    out
}

/// Random bytes that start like a PNG file.
fn image_like(len: usize, seed: u64) -> Vec<u8> {
    let mut data = random_bytes(len, seed);
    let signature = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    let n = signature.len().min(len);
    data[..n].copy_from_slice(&signature[..n]);
    data
}

fn write_file(path: &Path, data: &[u8]) {
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn read_file(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// True for `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339, UTC, milliseconds), the CLI's format.
fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            23 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

// ---------------------------------------------------------------------------------------------
// The server fixture

/// A running `rampart serve` process.
struct Running {
    child: ChildGuard,
    addr: String,
    /// Everything the server wrote to stderr so far.
    stderr: Arc<Mutex<Vec<u8>>>,
    /// The thread filling `stderr`; it ends when the process exits.
    stderr_reader: JoinHandle<()>,
}

/// A data directory and config in a temp dir, the [`USERS`], and (usually) a running server.
struct Server {
    // Declared first so the process is killed before the directory is removed.
    running: Option<Running>,
    root: TempDir,
    data: PathBuf,
    config: PathBuf,
    /// This server's resume-ticket file, so that no test reads or writes the user's own
    /// (`~/.config/rampart/tickets`), where a ticket from another test's server on a reused
    /// port would be tried first.
    tickets: String,
}

impl Server {
    /// [`Server::with_config`] of [`CHEAP_CONFIG`], [`BASE_CONFIG`] and `extra_toml`.
    fn new(extra_toml: &str) -> Server {
        Server::with_config(&format!("{CHEAP_CONFIG}\n{BASE_CONFIG}\n{extra_toml}"))
    }

    /// Writes `toml` as the config, adds the [`USERS`] and starts the server.
    fn with_config(toml: &str) -> Server {
        let root = tempfile::tempdir().expect("tempdir");
        let data = root.path().join("data");
        let config = root.path().join("rampart.toml");
        let tickets = root.path().join("tickets").display().to_string();
        write_file(&config, toml.as_bytes());
        let mut server = Server {
            running: None,
            root,
            data,
            config,
            tickets,
        };
        for (name, password) in USERS {
            expect_ok(&server.user("add", name, format!("{password}\n").as_bytes()));
        }
        server.start();
        server
    }

    /// A scratch directory inside the fixture's temp dir.
    fn scratch(&self) -> TempDir {
        tempfile::tempdir_in(self.root.path()).expect("scratch dir")
    }

    /// `rampart user SUB NAME --data-dir D --config C` with `stdin`.
    fn user(&self, sub: &str, name: &str, stdin: &[u8]) -> Output {
        run_user(
            &[
                sub,
                name,
                "--data-dir",
                path_str(&self.data),
                "--config",
                path_str(&self.config),
            ],
            stdin,
        )
    }

    /// `rampart user list --data-dir D --json`, parsed.
    fn user_names(&self) -> Vec<String> {
        let out = run_user(&["list", "--data-dir", path_str(&self.data), "--json"], b"");
        expect_ok(&out)
            .lines()
            .map(|line| {
                let v: Value = serde_json::from_str(line).expect("user list --json line");
                v["name"].as_str().expect("name").to_string()
            })
            .collect()
    }

    /// Starts `rampart serve` and waits for "listening on 127.0.0.1:PORT".
    fn start(&mut self) {
        assert!(self.running.is_none(), "server already running");
        let mut cmd = Command::new(BIN);
        cmd.args([
            "serve",
            "--data-dir",
            path_str(&self.data),
            "--listen",
            "127.0.0.1:0",
            "--config",
            path_str(&self.config),
        ])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = ChildGuard(cmd.spawn().expect("spawn rampart serve"));

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut err_pipe = child.0.stderr.take().expect("stderr");
        let sink = Arc::clone(&stderr);
        let stderr_reader = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err_pipe.read(&mut buf) {
                sink.lock()
                    .expect("stderr lock")
                    .extend_from_slice(&buf[..n]);
            }
        });

        let out_pipe = child.0.stdout.take().expect("stdout");
        let (first_line, first) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(out_pipe);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = first_line.send(line);
            // Keep draining so the server can never block on stdout.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = first.recv_timeout(START_TIMEOUT).unwrap_or_else(|_| {
            panic!(
                "no first line from the server within {START_TIMEOUT:?}; stderr: {}",
                text(&stderr.lock().expect("stderr lock"))
            )
        });
        let line = line.trim_end();
        let addr = line.strip_prefix("listening on ").unwrap_or_else(|| {
            panic!(
                "first line should be \"listening on IP:PORT\", got {line:?}; stderr: {}",
                text(&stderr.lock().expect("stderr lock"))
            )
        });
        let port = addr
            .strip_prefix("127.0.0.1:")
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("expected 127.0.0.1:PORT, got {addr:?}"));
        assert_ne!(port, 0, "the server must report the port it actually bound");
        self.running = Some(Running {
            child,
            addr: addr.to_string(),
            stderr,
            stderr_reader,
        });
    }

    fn running(&self) -> &Running {
        self.running.as_ref().expect("server is running")
    }

    fn addr(&self) -> &str {
        &self.running().addr
    }

    fn pid(&self) -> u32 {
        self.running().child.0.id()
    }

    /// `rampart client --server ADDR --user USER ARGS...` with the user's password.
    fn client(&self, user: &str, args: &[&str]) -> Output {
        let password = USERS
            .iter()
            .find(|(name, _)| *name == user)
            .map(|(_, pw)| *pw)
            .unwrap_or_else(|| panic!("{user} is not a fixture user"));
        self.client_pw(user, password, args)
    }

    /// Like [`Server::client`] with an explicit password.
    fn client_pw(&self, user: &str, password: &str, args: &[&str]) -> Output {
        run_client(&self.client_args(user, args), Some(password))
    }

    fn client_args<'a>(&'a self, user: &'a str, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec![
            "--server",
            self.addr(),
            "--user",
            user,
            "--tickets",
            &self.tickets,
        ];
        all.extend_from_slice(args);
        all
    }

    /// SIGKILL, no chance to clean up.
    fn kill9(&mut self) {
        let mut running = self.running.take().expect("server is running");
        running.child.0.kill().expect("kill -9 the server");
        let status = wait_timeout(&mut running.child.0, STOP_TIMEOUT).expect("killed server exits");
        assert!(!status.success(), "a killed server cannot exit cleanly");
    }

    /// Sends `signal` (e.g. "TERM", "INT") with kill(1); returns the exit status and stderr.
    fn stop_with(&mut self, signal: &str) -> (ExitStatus, String) {
        let pid = self.pid().to_string();
        let out = run(
            {
                let mut cmd = Command::new("kill");
                cmd.args([&format!("-{signal}"), pid.as_str()]);
                cmd
            },
            b"",
        );
        expect_ok(&out);
        let mut running = self.running.take().expect("server is running");
        let status = wait_timeout(&mut running.child.0, STOP_TIMEOUT)
            .unwrap_or_else(|| panic!("server still running {STOP_TIMEOUT:?} after SIG{signal}"));
        // The process is gone, so its stderr is at end of file and the reader finishes.
        running.stderr_reader.join().expect("stderr reader");
        let stderr = text(&running.stderr.lock().expect("stderr lock"));
        (status, stderr)
    }

    /// Files in DATA/blobs/tmp (uploads in progress or left by a crash).
    fn staged(&self) -> Vec<(PathBuf, u64)> {
        let dir = self.data.join("blobs").join("tmp");
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|e| {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                (e.path(), len)
            })
            .collect()
    }

    /// `inbox --json` for `user`, with every line checked against the contract.
    fn inbox(&self, user: &str) -> Vec<Value> {
        let stdout = expect_ok(&self.client(user, &["inbox", "--json"]));
        stdout.lines().map(check_inbox_line).collect()
    }

    fn inbox_ids(&self, user: &str) -> Vec<u64> {
        self.inbox(user)
            .iter()
            .map(|e| e["id"].as_u64().expect("id"))
            .collect()
    }
}

/// Parses one `inbox --json` line and checks the keys the contract promises.
#[track_caller]
fn check_inbox_line(line: &str) -> Value {
    let v: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {line}"));
    assert!(
        obj.get("id").and_then(Value::as_u64).is_some(),
        "id: {line}"
    );
    assert!(
        obj.get("from").and_then(Value::as_str).is_some(),
        "from: {line}"
    );
    assert!(
        obj.get("size").and_then(Value::as_u64).is_some(),
        "size: {line}"
    );
    let at = obj
        .get("received_at")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("received_at: {line}"));
    assert!(is_rfc3339_utc(at), "received_at {at:?} is not RFC 3339 UTC");
    assert!(
        obj.get("received_at_ms").and_then(Value::as_i64).is_some(),
        "received_at_ms: {line}"
    );
    match obj.get("kind").and_then(Value::as_str) {
        Some("message") => {}
        Some("mail") => assert!(
            obj.get("subject").and_then(Value::as_str).is_some(),
            "a mail has a subject: {line}"
        ),
        Some("file") => assert!(
            obj.get("name").and_then(Value::as_str).is_some(),
            "a file has a name: {line}"
        ),
        other => panic!("kind {other:?} is not message, mail or file: {line}"),
    }
    v
}

/// What was sent, to check what arrives.
#[derive(Debug, Clone)]
enum Content {
    Message(String),
    Mail {
        subject: String,
        body: String,
        /// (sanitized name, bytes)
        attachments: Vec<(String, Vec<u8>)>,
    },
    File {
        name: String,
        bytes: Vec<u8>,
    },
}

#[derive(Debug, Clone)]
struct Sent {
    id: u64,
    from: &'static str,
    to: &'static str,
    content: Content,
}

/// Every user's inbox holds exactly the items sent to them, and each reads back byte for byte.
fn verify_all(srv: &Server, sent: &[Sent]) {
    for (user, _) in USERS {
        let inbox = srv.inbox(user);
        let got: Vec<u64> = inbox
            .iter()
            .map(|e| e["id"].as_u64().expect("id"))
            .collect();
        let mut want: Vec<u64> = sent.iter().filter(|s| s.to == user).map(|s| s.id).collect();
        want.sort_unstable();
        assert_eq!(got, want, "inbox of {user}");
        for entry in &inbox {
            let id = entry["id"].as_u64().expect("id");
            let s = sent.iter().find(|s| s.id == id).expect("sent item");
            assert_eq!(entry["from"], s.from, "sender of {id}");
            match &s.content {
                Content::Message(t) => {
                    assert_eq!(entry["kind"], "message");
                    assert_eq!(entry["size"], t.len() as u64, "size of message {id}");
                }
                Content::Mail { subject, .. } => {
                    assert_eq!(entry["kind"], "mail");
                    assert_eq!(entry["subject"], subject.as_str());
                }
                Content::File { name, bytes } => {
                    assert_eq!(entry["kind"], "file");
                    assert_eq!(entry["name"], name.as_str());
                    assert_eq!(entry["size"], bytes.len() as u64, "size of file {id}");
                }
            }
        }
    }
    for s in sent {
        verify_item(srv, s);
    }
}

/// Fetches one item as its recipient and compares it with what was sent.
fn verify_item(srv: &Server, s: &Sent) {
    let id = s.id.to_string();
    match &s.content {
        Content::Message(t) => {
            let stdout = expect_ok(&srv.client(s.to, &["fetch", &id]));
            assert!(stdout.contains(&format!("From: {}\n", s.from)), "{stdout}");
            assert!(
                stdout.ends_with(&format!("\n\n{t}\n")),
                "message {id} text: {stdout:?}"
            );
        }
        Content::Mail {
            subject,
            body,
            attachments,
        } => {
            let dir = srv.scratch();
            let stdout = expect_ok(
                &srv.client(s.to, &["fetch", &id, "--attachments", path_str(dir.path())]),
            );
            assert!(
                stdout.contains(&format!("Subject: {subject}\n")),
                "{stdout}"
            );
            assert!(stdout.contains(&format!("\n\n{body}\n")), "{stdout:?}");
            let saved: BTreeSet<String> = fs::read_dir(dir.path())
                .expect("attachments dir")
                .map(|e| e.expect("entry").file_name().into_string().expect("name"))
                .collect();
            let want: BTreeSet<String> = attachments.iter().map(|(n, _)| n.clone()).collect();
            assert_eq!(saved, want, "attachment names of mail {id}");
            for (name, bytes) in attachments {
                assert!(
                    read_file(&dir.path().join(name)) == *bytes,
                    "attachment {name} of mail {id} differs"
                );
                assert!(stdout.contains(name.as_str()), "{stdout}");
            }
        }
        Content::File { bytes, .. } => {
            let dir = srv.scratch();
            let out = dir.path().join("fetched.bin");
            expect_ok(&srv.client(s.to, &["fetch", &id, "--out", path_str(&out)]));
            let got = read_file(&out);
            assert_eq!(got.len(), bytes.len(), "size of file {id}");
            assert!(got == *bytes, "bytes of file {id} differ");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn help_lists_commands_and_the_password_variable() {
    let help = expect_ok(&rampart(&["--help"]));
    for command in ["serve", "user", "client", "demo", "config"] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "--help should list {command}:\n{help}"
        );
    }
    let client = expect_ok(&rampart(&["client", "--help"]));
    assert!(client.contains("RAMPART_PASSWORD"), "{client}");
    for sub in ["message", "mail", "send-file", "inbox", "fetch", "delete"] {
        assert!(client.contains(sub), "client --help should list {sub}");
    }
    let serve = expect_ok(&rampart(&["serve", "--help"]));
    assert!(serve.contains("listening on"), "{serve}");
}

#[test]
fn user_add_list_and_input_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("rampart.toml");
    write_file(&config, CHEAP_CONFIG.as_bytes());
    let (data, config) = (path_str(&data), path_str(&config));
    let add = |name: &str, stdin: &[u8]| {
        run_user(
            &["add", name, "--data-dir", data, "--config", config],
            stdin,
        )
    };

    assert_eq!(
        expect_ok(&add("alice", b"alice-pw\n")).trim(),
        "added user alice"
    );
    assert_eq!(expect_ok(&add("bob", b"bob-pw\n")).trim(), "added user bob");

    let table = expect_ok(&run_user(&["list", "--data-dir", data], b""));
    assert!(
        table.lines().next().is_some_and(|h| h.contains("NAME")),
        "{table}"
    );
    assert!(table.contains("alice") && table.contains("bob"), "{table}");

    let json = expect_ok(&run_user(&["list", "--data-dir", data, "--json"], b""));
    let names: Vec<String> = json
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("JSON line");
            assert!(v.is_object(), "{line}");
            assert!(v["usage_bytes"].is_u64(), "{line}");
            assert!(
                v["created_at"].as_str().is_some_and(is_rfc3339_utc),
                "{line}"
            );
            v["name"].as_str().expect("name").to_string()
        })
        .collect();
    assert_eq!(names, ["alice", "bob"]);

    expect_error(&add("alice", b"another-pw\n"), "already exists");
    for bad in ["Alice", "bad name", "../evil", "_dash", "", &"a".repeat(33)] {
        expect_error(&add(bad, b"pw\n"), "user name");
    }
    expect_error(&add("carol", b""), "empty password");
    expect_error(&add("carol", b"\n"), "empty password");
    expect_error(
        &run_user(
            &["passwd", "nobody", "--data-dir", data, "--config", config],
            b"pw\n",
        ),
        "nobody",
    );

    // None of the failures added anyone.
    let json = expect_ok(&run_user(&["list", "--data-dir", data, "--json"], b""));
    assert_eq!(json.lines().count(), 2, "{json}");
}

#[test]
fn user_passwd_and_add_while_the_server_runs() {
    let srv = Server::new("");
    expect_ok(&srv.client("alice", &["inbox"]));

    // Change alice's password in the live data directory.
    let out = srv.user("passwd", "alice", b"alice-new-pw\n");
    assert_eq!(expect_ok(&out).trim(), "password changed for alice");
    expect_error(&srv.client("alice", &["inbox"]), "auth_failed");
    expect_ok(&srv.client_pw("alice", "alice-new-pw", &["inbox"]));

    // Add a user while the server runs (SQLite WAL); the server sees it at once.
    expect_ok(&srv.user("add", "carol", b"carol-pw\n"));
    let mut names = srv.user_names();
    names.sort();
    assert_eq!(names, ["alice", "bob", "carol", "mallory"]);
    let out = srv.client_pw("alice", "alice-new-pw", &["message", "carol", "welcome"]);
    let id = sent_id(&expect_ok(&out));
    let out = run_client(
        &srv.client_args("carol", &["inbox", "--json"]),
        Some("carol-pw"),
    );
    let inbox: Vec<Value> = expect_ok(&out).lines().map(check_inbox_line).collect();
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0]["id"], id);
    assert_eq!(inbox[0]["from"], "alice");
    assert_eq!(inbox[0]["kind"], "message");
    let out = run_client(
        &srv.client_args("carol", &["fetch", &id.to_string()]),
        Some("carol-pw"),
    );
    assert!(expect_ok(&out).ends_with("\n\nwelcome\n"));
}

#[test]
fn message_mail_file_inbox_fetch_delete() {
    let srv = Server::new("");
    let work = srv.scratch();
    let w = work.path();
    let mut sent = Vec::new();

    // A chat message.
    let hello = "hola, bob: ünïcødé ✓";
    let id = sent_id(&expect_ok(&srv.client("alice", &["message", "bob", hello])));
    sent.push(Sent {
        id,
        from: "alice",
        to: "bob",
        content: Content::Message(hello.into()),
    });

    // A mail with --body and no attachment.
    let out = srv.client(
        "alice",
        &["mail", "bob", "--subject", "Lunch", "--body", "At noon?"],
    );
    let stdout = expect_ok(&out);
    assert!(stdout.contains("with 0 attachment"), "{stdout}");
    sent.push(Sent {
        id: sent_id(&stdout),
        from: "alice",
        to: "bob",
        content: Content::Mail {
            subject: "Lunch".into(),
            body: "At noon?".into(),
            attachments: vec![],
        },
    });

    // A mail with --body-file and two attachments, one whose name needs sanitizing.
    let body = "Minutes of the meeting\n\n1. ünïcødé works\n2. so do \"quotes\"";
    let body_file = w.join("notes.txt");
    write_file(&body_file, body.as_bytes());
    let report = random_bytes(300_000, 1); // more than one 256 KiB chunk
    let report_path = w.join("report:v1?.bin");
    write_file(&report_path, &report);
    let photo = image_like(70_001, 2);
    let photo_path = w.join("photo.jpg");
    write_file(&photo_path, &photo);
    let out = srv.client(
        "alice",
        &[
            "mail",
            "bob",
            "--subject",
            "Minutes",
            "--body-file",
            path_str(&body_file),
            "--attach",
            path_str(&report_path),
            "--attach",
            path_str(&photo_path),
        ],
    );
    let stdout = expect_ok(&out);
    assert!(stdout.contains("with 2 attachment"), "{stdout}");
    let mail_id = sent_id(&stdout);
    assert_eq!(
        rampart::store::sanitize_file_name("report:v1?.bin"),
        "report_v1_.bin"
    );
    sent.push(Sent {
        id: mail_id,
        from: "alice",
        to: "bob",
        content: Content::Mail {
            subject: "Minutes".into(),
            body: body.into(),
            attachments: vec![
                ("report_v1_.bin".into(), report),
                ("photo.jpg".into(), photo),
            ],
        },
    });

    // An image-like file of a few MiB, not a whole number of chunks.
    let image = image_like(3 * MIB + 12_345, 3);
    let image_path = w.join("image.png");
    write_file(&image_path, &image);
    let out = srv.client("alice", &["send-file", "bob", path_str(&image_path)]);
    let file_id = sent_id(&expect_ok(&out));
    sent.push(Sent {
        id: file_id,
        from: "alice",
        to: "bob",
        content: Content::File {
            name: "image.png".into(),
            bytes: image.clone(),
        },
    });

    // bob's inbox as a table: a header, then one row per item.
    let table = expect_ok(&srv.client("bob", &["inbox"]));
    let mut rows = table.lines();
    let header = rows.next().expect("header");
    for col in ["ID", "KIND", "FROM", "SIZE", "RECEIVED"] {
        assert!(header.contains(col), "{header}");
    }
    let rows: Vec<&str> = rows.collect();
    assert_eq!(rows.len(), sent.len(), "{table}");
    for (row, s) in rows.iter().zip(&sent) {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0], s.id.to_string(), "{row}");
        assert_eq!(cells[2], "alice", "{row}");
    }
    assert!(rows[0].contains("message"));
    assert!(
        rows[2].contains("mail") && rows[2].ends_with("Minutes"),
        "{table}"
    );
    assert!(
        rows[3].contains("file") && rows[3].ends_with("image.png"),
        "{table}"
    );
    assert!(rows[3].contains(&image.len().to_string()), "{table}");

    // --json, fetch of each kind, attachments saved under sanitized names, --out.
    verify_all(&srv, &sent);

    // fetch of a file without --out writes its sanitized name in the working directory,
    // and never overwrites.
    let cwd = srv.scratch();
    let fetch_here = || {
        let mut cmd = client_command(
            &srv.client_args("bob", &["fetch", &file_id.to_string()]),
            Some("bob-pw"),
        );
        cmd.current_dir(cwd.path());
        run(cmd, b"")
    };
    let stdout = expect_ok(&fetch_here());
    assert!(stdout.contains("saved to image.png"), "{stdout}");
    assert!(read_file(&cwd.path().join("image.png")) == image);
    expect_error(&fetch_here(), "image.png");
    assert!(read_file(&cwd.path().join("image.png")) == image);

    // --out applies to files only, and --attachments to mails only.
    let out_path = w.join("not-a-file.txt");
    let out = srv.client(
        "bob",
        &["fetch", &mail_id.to_string(), "--out", path_str(&out_path)],
    );
    expect_error(&out, "not a file");
    let out = srv.client(
        "bob",
        &["fetch", &file_id.to_string(), "--attachments", path_str(w)],
    );
    expect_error(&out, "not a mail");

    // --json on a file says where the bytes went.
    let json_out = w.join("image-copy.png");
    let line = expect_ok(&srv.client(
        "bob",
        &[
            "fetch",
            &file_id.to_string(),
            "--json",
            "--out",
            path_str(&json_out),
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON object");
    assert_eq!(v["saved_to"], path_str(&json_out));
    assert!(read_file(&json_out) == image);

    // alice sent everything and received nothing.
    assert!(srv.inbox("alice").is_empty());

    // delete removes exactly one item.
    let first = sent.remove(0);
    let out = srv.client("bob", &["delete", &first.id.to_string()]);
    assert_eq!(expect_ok(&out).trim(), format!("deleted {}", first.id));
    assert_eq!(
        srv.inbox_ids("bob"),
        sent.iter().map(|s| s.id).collect::<Vec<_>>()
    );
    expect_error(
        &srv.client("bob", &["fetch", &first.id.to_string()]),
        "not_found",
    );
    expect_error(
        &srv.client("bob", &["delete", &first.id.to_string()]),
        "not_found",
    );
    verify_all(&srv, &sent);
}

#[test]
fn client_errors_exit_nonzero_with_one_line() {
    let srv = Server::new("[limits]\nmax_message_bytes = 64\nmax_file_bytes = 100000\n");
    let work = srv.scratch();

    // Authentication: a wrong password and an unknown user look the same.
    expect_error(
        &srv.client_pw("alice", "wrong-pw", &["inbox"]),
        "auth_failed",
    );
    expect_error(
        &srv.client_pw("nobody", "whatever", &["inbox"]),
        "auth_failed",
    );

    // Missing password.
    let out = run_client(&srv.client_args("alice", &["inbox"]), None);
    expect_error(&out, "RAMPART_PASSWORD");

    // Unknown recipient.
    expect_error(
        &srv.client("alice", &["message", "nobody", "hello?"]),
        "unknown_recipient",
    );

    // Permission denied: mallory reaches for bob's item by id.
    let id = sent_id(&expect_ok(
        &srv.client("alice", &["message", "bob", "for bob only"]),
    ));
    let id_s = id.to_string();
    expect_error(
        &srv.client("mallory", &["fetch", &id_s]),
        "permission_denied",
    );
    expect_error(
        &srv.client("mallory", &["delete", &id_s]),
        "permission_denied",
    );
    let out_path = work.path().join("stolen.bin");
    let out = srv.client("mallory", &["fetch", &id_s, "--out", path_str(&out_path)]);
    expect_error(&out, "permission_denied");
    expect_error(&srv.client("bob", &["fetch", "999999"]), "not_found");

    // Limits: a message at the limit passes, one byte more is refused.
    let at_limit = "x".repeat(64);
    let at_limit_id = sent_id(&expect_ok(
        &srv.client("alice", &["message", "bob", &at_limit]),
    ));
    for over in [65, 1000] {
        let text = "y".repeat(over);
        let line = expect_error(&srv.client("alice", &["message", "bob", &text]), "");
        assert!(line.contains("limit"), "{over} bytes: {line}");
    }
    // ... and the same for files.
    let fits = work.path().join("fits.bin");
    write_file(&fits, &random_bytes(100_000, 4));
    let fits_id = sent_id(&expect_ok(
        &srv.client("alice", &["send-file", "bob", path_str(&fits)]),
    ));
    let big = work.path().join("big.bin");
    write_file(&big, &random_bytes(100_001, 5));
    expect_error(
        &srv.client("alice", &["send-file", "bob", path_str(&big)]),
        "too_large",
    );
    let out = srv.client(
        "alice",
        &[
            "mail",
            "bob",
            "--subject",
            "s",
            "--body",
            "b",
            "--attach",
            path_str(&big),
        ],
    );
    expect_error(&out, "too_large");

    // Local files that do not exist.
    let missing = work.path().join("missing.png");
    let line = expect_error(
        &srv.client("alice", &["send-file", "bob", path_str(&missing)]),
        "not found",
    );
    assert!(line.contains("missing.png"), "{line}");
    let out = srv.client(
        "alice",
        &[
            "mail",
            "bob",
            "--subject",
            "s",
            "--body-file",
            path_str(&missing),
        ],
    );
    expect_error(&out, "missing.png");
    let out = srv.client(
        "alice",
        &[
            "mail",
            "bob",
            "--subject",
            "s",
            "--body",
            "b",
            "--attach",
            path_str(&missing),
        ],
    );
    expect_error(&out, "missing.png");

    // Nothing refused was applied: bob has exactly the three accepted items.
    assert_eq!(srv.inbox_ids("bob"), [id, at_limit_id, fits_id]);
    assert!(srv.inbox("mallory").is_empty());
}

#[test]
fn unreachable_server_is_a_one_line_error() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let server = format!("127.0.0.1:{port}");
    let out = run_client(
        &[
            "--server", &server, "--user", "alice", "message", "bob", "hi",
        ],
        Some("alice-pw"),
    );
    let line = expect_error(&out, "cannot reach server");
    assert!(line.contains(&server), "{line}");
    let out = run_client(&["--server", &server, "--user", "alice", "ping"], None);
    expect_error(&out, "cannot reach server");
}

/// Runs `rampart serve` with `config`, which must refuse to start without ever listening.
#[track_caller]
fn serve_refused(data: &Path, config: &Path) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--data-dir",
        path_str(data),
        "--listen",
        "127.0.0.1:0",
        "--config",
        path_str(config),
    ]);
    let out = spawn(cmd, b"").finish(Duration::from_secs(20));
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        !text(&out.stdout).contains("listening on"),
        "{}",
        describe(&out)
    );
    out
}

#[test]
fn config_check_and_serve_with_a_bad_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.toml");
    write_file(
        &good,
        format!("{CHEAP_CONFIG}\n{BASE_CONFIG}\n[limits]\nmax_message_bytes = 1000\n").as_bytes(),
    );
    let out = rampart(&["config", "check", path_str(&good)]);
    assert_eq!(expect_ok(&out).trim(), "ok");

    // The printed defaults are themselves a valid file.
    let defaults = dir.path().join("defaults.toml");
    write_file(
        &defaults,
        expect_ok(&rampart(&["config", "defaults"])).as_bytes(),
    );
    assert_eq!(
        expect_ok(&rampart(&["config", "check", path_str(&defaults)])).trim(),
        "ok"
    );

    // A typo'd key is named.
    let typo = dir.path().join("typo.toml");
    write_file(&typo, b"[limits]\nmax_mesage_bytes = 1000\n");
    let out = rampart(&["config", "check", path_str(&typo)]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("max_mesage_bytes"),
        "{}",
        describe(&out)
    );

    // An out-of-range value is named with its table.
    let zero = dir.path().join("zero.toml");
    write_file(&zero, b"[limits]\nmax_message_bytes = 0\n");
    let out = rampart(&["config", "check", path_str(&zero)]);
    expect_error(&out, "limits.max_message_bytes");

    // The server refuses to start on either, without ever listening.
    for bad in [&typo, &zero] {
        let out = serve_refused(&dir.path().join("data"), bad);
        assert!(text(&out.stderr).contains("max_me"), "{}", describe(&out));
    }
}

#[test]
fn config_errors_are_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let typo = dir.path().join("typo.toml");
    write_file(&typo, b"[limits]\nmax_mesage_bytes = 1000\n");
    let out = rampart(&["config", "check", path_str(&typo)]);
    expect_error(&out, "max_mesage_bytes");
    let data = dir.path().join("data");
    let out = rampart(&[
        "serve",
        "--data-dir",
        path_str(&data),
        "--listen",
        "127.0.0.1:0",
        "--config",
        path_str(&typo),
    ]);
    expect_error(&out, "max_mesage_bytes");
}

#[test]
fn an_oversized_message_does_not_get_the_sender_blocked() {
    // The default firewall, no allow list: what a real user gets.
    let srv = Server::with_config(&format!(
        "{CHEAP_CONFIG}\n[limits]\nmax_message_bytes = 64\n"
    ));
    let text = "z".repeat(1000);
    expect_error(&srv.client("alice", &["message", "bob", &text]), "limit");
    // A mistake of a well-behaved client is refused, not punished: the same user, from the
    // same address, carries on.
    let id = sent_id(&expect_ok(
        &srv.client("alice", &["message", "bob", "shorter"]),
    ));
    assert_eq!(srv.inbox_ids("bob"), [id]);
}

#[test]
fn client_bind_chooses_the_source_and_a_blocked_one_is_told_why() {
    let mut srv = Server::new("");
    let bound = ["--bind", "127.0.0.77"];
    let id = sent_id(&expect_ok(&srv.client(
        "alice",
        &[&bound[..], &["message", "bob", "from .77"]].concat(),
    )));
    assert_eq!(srv.inbox_ids("bob"), [id]);

    // Block 127.0.0.77 as the firewall does: a stored decision, restored at start.
    let (status, stderr) = srv.stop_with("TERM");
    assert!(status.success(), "{status:?}: {stderr}");
    let conn = rampart::activity::db::open(&srv.data).expect("activity database");
    rampart::activity::db::insert_decision(
        &conn,
        rampart::activity::now_ms(),
        "127.0.0.77",
        "block",
        300,
        120.0,
        "auth_failed x4",
    )
    .expect("block row");
    drop(conn);
    srv.start();

    // The server saw 127.0.0.77 (the CLI bound it), and the user is told why and how long.
    for command in [&["inbox"][..], &["ping"]] {
        let out = srv.client("alice", &[&bound[..], command].concat());
        let line = expect_error(&out, "your address is blocked for ");
        let secs = line
            .strip_prefix("error: your address is blocked for ")
            .and_then(|rest| rest.strip_suffix(" s (auth_failed x4)"))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("unexpected message: {line}"));
        assert!((1..=300).contains(&secs), "{line}");
    }
    // Without --bind the same user is served, and `firewall list` names the offence.
    expect_ok(&srv.client("alice", &["inbox"]));
    let listed = expect_ok(&rampart(&[
        "firewall",
        "list",
        "--data-dir",
        path_str(&srv.data),
    ]));
    assert!(
        listed.contains("127.0.0.77") && listed.contains("auth_failed x4"),
        "{listed}"
    );
}

#[test]
fn load_bind_conflicts_with_sources() {
    let out = rampart(&[
        "load",
        "--server",
        "127.0.0.1:1",
        "--user",
        "a",
        "--bind",
        "127.0.0.77",
        "--sources",
        "127.0.0.0/28",
    ]);
    // A usage error from the argument parser (with its usage lines), before any connect.
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("cannot be used with"),
        "{}",
        describe(&out)
    );
    let help = expect_ok(&rampart(&["load", "--help"]));
    assert!(
        help.contains("--bind") && help.contains("--bind 127.0.0.77"),
        "{help}"
    );
    let help = expect_ok(&rampart(&["client", "--help"]));
    assert!(help.contains("--bind 127.0.0.77"), "{help}");
}

/// Stops the server with `signal` while a connection is open; it must exit 0 promptly, tell
/// the open connection, and keep what it acknowledged.
fn stops_cleanly_on(signal: &str) {
    let mut srv = Server::new("[timeouts]\nshutdown_grace_ms = 2000\n");
    let id = sent_id(&expect_ok(
        &srv.client("alice", &["message", "bob", "before the stop"]),
    ));

    let mut idle = TcpStream::connect(srv.addr()).expect("connect");
    idle.set_read_timeout(Some(STOP_TIMEOUT)).expect("timeout");
    let started = Instant::now();
    let (status, stderr) = srv.stop_with(signal);
    assert!(
        status.success(),
        "SIG{signal}: {status:?}, stderr: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "SIG{signal} took {:?}",
        started.elapsed()
    );
    assert!(stderr.contains("stopped:"), "stderr: {stderr}");

    // The open connection got ERROR SHUTTING_DOWN (kind 0xFF, code 13) and was closed.
    let mut got = Vec::new();
    let _ = idle.read_to_end(&mut got);
    assert!(got.len() >= 16, "expected an ERROR frame, got {got:?}");
    assert_eq!(&got[..2], b"RM", "{got:?}");
    assert_eq!(got[3], 0xFF, "an ERROR frame: {got:?}");
    assert_eq!(u16::from_be_bytes([got[14], got[15]]), 13, "SHUTTING_DOWN");

    srv.start();
    assert_eq!(srv.inbox_ids("bob"), [id]);
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    stops_cleanly_on("TERM");
}

#[test]
fn sigint_stops_the_server_cleanly() {
    stops_cleanly_on("INT");
}

#[test]
fn kill_9_loses_nothing_acknowledged_and_shows_nothing_partial() {
    use tokio::io::AsyncWriteExt;

    let mut srv = Server::new("");
    let work = srv.scratch();
    let w = work.path();
    let mut sent = Vec::new();

    // Acknowledged items of every kind (acknowledged = the CLI exited 0).
    for (i, t) in ["first", "second: ünïcødé", "third"].iter().enumerate() {
        let to = if i == 1 { "mallory" } else { "bob" };
        let id = sent_id(&expect_ok(&srv.client("alice", &["message", to, t])));
        sent.push(Sent {
            id,
            from: "alice",
            to,
            content: Content::Message((*t).into()),
        });
    }
    let attachment = random_bytes(400_000, 10);
    let attachment_path = w.join("data.bin");
    write_file(&attachment_path, &attachment);
    let out = srv.client(
        "bob",
        &[
            "mail",
            "alice",
            "--subject",
            "Re: first",
            "--body",
            "got it",
            "--attach",
            path_str(&attachment_path),
        ],
    );
    sent.push(Sent {
        id: sent_id(&expect_ok(&out)),
        from: "bob",
        to: "alice",
        content: Content::Mail {
            subject: "Re: first".into(),
            body: "got it".into(),
            attachments: vec![("data.bin".into(), attachment)],
        },
    });
    let image = image_like(2 * MIB + 7, 11);
    let image_path = w.join("scan.png");
    write_file(&image_path, &image);
    let out = srv.client("alice", &["send-file", "bob", path_str(&image_path)]);
    sent.push(Sent {
        id: sent_id(&expect_ok(&out)),
        from: "alice",
        to: "bob",
        content: Content::File {
            name: "scan.png".into(),
            bytes: image,
        },
    });

    // Kill point 1: right after an acknowledgement.
    srv.kill9();
    srv.start();
    assert!(
        srv.staged().is_empty(),
        "blobs/tmp after restart: {:?}",
        srv.staged()
    );
    verify_all(&srv, &sent);

    // Kill point 2: halfway through an upload whose input stalls (library client).
    let half = 16 * MIB;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let opts = rampart::client::ClientOptions::default();
        let mut client = rampart::client::Client::login(srv.addr(), "alice", b"alice-pw", opts)
            .await
            .expect("login");
        let (mut feed, input) = tokio::io::duplex(256 * 1024);
        let upload = tokio::spawn(async move {
            let uploaded = client.upload("half.bin", 2 * half as u64, input).await;
            // Only reached if the upload fails; it must never succeed.
            uploaded.map(|_| ())
        });
        feed.write_all(&random_bytes(half, 12))
            .await
            .expect("feed half the input");
        // Wait until the server has staged every byte it was given.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !srv.staged().iter().any(|(_, len)| *len == half as u64) {
            assert!(
                Instant::now() < deadline,
                "upload never reached half: {:?}",
                srv.staged()
            );
            assert!(!upload.is_finished(), "the upload ended early");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        srv.kill9();
        upload.abort();
        drop(feed);
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    assert!(
        srv.staged().iter().any(|(_, len)| *len == half as u64),
        "the killed server should have left its half upload in blobs/tmp: {:?}",
        srv.staged()
    );
    srv.start();
    assert!(
        srv.staged().is_empty(),
        "blobs/tmp after restart: {:?}",
        srv.staged()
    );
    verify_all(&srv, &sent);

    // Kill point 3: during a 64 MiB `client send-file` in a child process.
    let big = image_like(64 * MIB, 13);
    let big_path = w.join("big.png");
    write_file(&big_path, &big);
    let upload = spawn(
        client_command(
            &srv.client_args("alice", &["send-file", "bob", path_str(&big_path)]),
            Some("alice-pw"),
        ),
        b"",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut upload = upload;
    let staging_seen = loop {
        if srv.staged().iter().any(|(_, len)| *len > 0) {
            break true;
        }
        if upload.child.0.try_wait().expect("try_wait").is_some() {
            break false;
        }
        assert!(Instant::now() < deadline, "the upload never started");
        thread::sleep(Duration::from_millis(1));
    };
    srv.kill9();
    let out = upload.finish(CMD_TIMEOUT);
    if out.status.success() {
        // Finished before the kill: acknowledged, so it must survive.
        eprintln!(
            "note: the 64 MiB upload completed before the kill (staging seen: {staging_seen})"
        );
        sent.push(Sent {
            id: sent_id(&text(&out.stdout)),
            from: "alice",
            to: "bob",
            content: Content::File {
                name: "big.png".into(),
                bytes: big,
            },
        });
    } else {
        // The client saw the server die: one line, like every error.
        expect_error(&out, "");
    }
    srv.start();
    assert!(
        srv.staged().is_empty(),
        "blobs/tmp after restart: {:?}",
        srv.staged()
    );
    verify_all(&srv, &sent);
}

#[test]
fn demo_passes() {
    let mut cmd = Command::new(BIN);
    cmd.arg("demo");
    let out = spawn(cmd, b"").finish(Duration::from_secs(180));
    let stdout = expect_ok(&out);
    assert!(
        stdout.lines().any(|l| l.trim() == "demo passed"),
        "{}",
        describe(&out)
    );
    assert!(!stdout.contains("[FAIL]"), "{stdout}");
}

#[test]
fn model_options_fail_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let missing = dir.path().join("no-such-model.json");
    let out = rampart(&[
        "serve",
        "--data-dir",
        path_str(&data),
        "--listen",
        "127.0.0.1:0",
        "--model",
        path_str(&missing),
    ]);
    expect_error(&out, "cannot load the model");

    let bad = dir.path().join("bad.json");
    write_file(&bad, b"{\"format\": 1}");
    let out = rampart(&[
        "scenario",
        "run",
        "scenarios/baseline.toml",
        "--model",
        path_str(&bad),
    ]);
    expect_error(&out, "not a rampart model file");

    let out = rampart(&[
        "scenario",
        "run",
        "scenarios/baseline.toml",
        "--model",
        path_str(&bad),
        "--no-model",
    ]);
    assert!(!out.status.success(), "{}", describe(&out));

    let out = rampart(&[
        "scenario",
        "run",
        "scenarios/baseline.toml",
        "--target",
        "127.0.0.1:9",
        "--target-data-dir",
        path_str(&data),
        "--model",
        path_str(&bad),
    ]);
    expect_error(&out, "--model applies to the in-process server");

    let help = expect_ok(&rampart(&["scenario", "run", "--help"]));
    assert!(
        help.contains("--no-model") && help.contains("--model"),
        "{help}"
    );
    let help = expect_ok(&rampart(&["serve", "--help"]));
    assert!(
        help.contains("--no-model") && help.contains("--model"),
        "{help}"
    );
}

/// Fails if `out` holds a raw control character (other than a line break) or a bidi control.
#[track_caller]
fn assert_terminal_safe(out: &str) {
    for c in out.chars() {
        let bidi = matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        assert!(
            c == '\n' || !(c.is_control() || bidi),
            "raw {c:?} reached the terminal: {out:?}"
        );
    }
}

#[test]
fn a_sender_cannot_drive_the_recipients_terminal() {
    let srv = Server::new("");
    let work = srv.scratch();
    // A window title and screen clear, an OSC 8 fake link, C1 CSI and a right-to-left
    // override, in a message text, a mail subject, a mail body and an attachment name.
    let title = "\x1b]0;pwned\x07\x1b[2J";
    let link = "\x1b]8;;https://evil.example/\x1b\\your bank\x1b]8;;\x1b\\";
    let text = format!("{title}hi\u{9b}31m\n{link}\u{202e}");
    let id_message = sent_id(&expect_ok(&srv.client("alice", &["message", "bob", &text])));
    let attach = work.path().join("invoice\u{202e}fdp.exe");
    write_file(&attach, b"MZ");
    let out = srv.client(
        "alice",
        &[
            "mail",
            "bob",
            "--subject",
            title,
            "--body",
            &text,
            "--attach",
            path_str(&attach),
        ],
    );
    let id_mail = sent_id(&expect_ok(&out));

    let inbox = expect_ok(&srv.client("bob", &["inbox"]));
    assert_terminal_safe(&inbox);
    assert!(inbox.contains("\\x1b]0;pwned\\x07\\x1b[2J"), "{inbox}");

    let inbox_json = expect_ok(&srv.client("bob", &["inbox", "--json"]));
    assert_terminal_safe(&inbox_json);
    let subjects: Vec<Value> = inbox_json
        .lines()
        .map(check_inbox_line)
        .filter_map(|v| v.get("subject").cloned())
        .collect();
    assert_eq!(subjects, [Value::from(title)], "JSON stays exact");

    for id in [id_message, id_mail] {
        let id = id.to_string();
        let shown = expect_ok(&srv.client("bob", &["fetch", &id]));
        assert_terminal_safe(&shown);
        assert!(shown.contains("hi\\u{9b}31m\n\\x1b]8;;"), "{shown}");
        let json = expect_ok(&srv.client("bob", &["fetch", &id, "--json"]));
        assert_terminal_safe(&json);
        let v: Value = serde_json::from_str(json.trim()).expect("fetch --json");
        let field = if v["kind"] == "mail" { "body" } else { "text" };
        assert_eq!(v[field], Value::from(text.as_str()), "JSON stays exact");
    }
}

#[test]
fn config_check_and_serve_refuse_values_that_would_kill_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Each parsed and passed `config check` before, then aborted on allocation, hung
    // start-up, or spawned thousands of threads.
    for (toml, key) in [
        (
            "[auth]\nargon2_memory_kib = 4294967295\n",
            "auth.argon2_memory_kib",
        ),
        (
            "[auth]\nargon2_iterations = 1000000\n",
            "auth.argon2_iterations",
        ),
        ("[auth]\nlogin_workers = 20000\n", "auth.login_workers"),
    ] {
        let file = dir.path().join("bad.toml");
        write_file(&file, toml.as_bytes());
        expect_error(&rampart(&["config", "check", path_str(&file)]), key);
        expect_error(&serve_refused(&dir.path().join("data"), &file), key);
    }
}

/// `activity export` reads one data directory or a fleet's database: it says so when given
/// neither, refuses both, and names the database error (never a half-written file) when the
/// database cannot be reached.
#[test]
fn activity_export_needs_one_source_and_reports_an_unreachable_fleet() {
    let dir = TempDir::new().expect("tempdir");
    let out = dir.path().join("fleet.csv");
    let out_s = path_str(&out);
    let neither = rampart(&["activity", "export", "--out", out_s]);
    assert!(!neither.status.success(), "{}", describe(&neither));
    assert!(
        text(&neither.stderr).contains("--data-dir"),
        "{}",
        describe(&neither)
    );
    let both = rampart(&[
        "activity",
        "export",
        "--out",
        out_s,
        "--data-dir",
        path_str(dir.path()),
        "--store-url",
        "postgres://rampart@127.0.0.1:1/rampart",
    ]);
    assert!(!both.status.success(), "{}", describe(&both));
    assert!(
        text(&both.stderr).contains("cannot be used with"),
        "{}",
        describe(&both)
    );
    // Port 1 on loopback: nothing listens there.
    let down = rampart(&[
        "activity",
        "export",
        "--out",
        out_s,
        "--store-url",
        "postgres://rampart@127.0.0.1:1/rampart",
    ]);
    let line = expect_error(&down, "cannot read the fleet's windows");
    assert!(line.contains("connect"), "{line}");
    assert!(!out.exists(), "a failed export left {}", out.display());
}
