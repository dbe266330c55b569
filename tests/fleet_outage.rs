//! Fleet mode through a database outage: three servers share one PostgreSQL cluster that this
//! test starts itself (`.ci/postgres.sh`), four legitimate clients keep sending messages and
//! mails round-robin across the servers, and the cluster is stopped hard
//! (`pg_ctl stop -m immediate`) for two seconds in the middle and started again on the same
//! port. Afterwards every server must still serve logins and sends, every item a server
//! acknowledged must be readable with its exact body through each of the three servers, the
//! sends that failed during the outage must have been refused with `internal` ("the request
//! was not applied") and nothing else, and no client's address may have been blocked for
//! the database's fault.
//!
//! Needs a PostgreSQL server installed (`/usr/lib/postgresql/*/bin`, Debian's layout); the
//! test never installs one and is skipped with a note when there is none. It ignores
//! `RAMPART_TEST_POSTGRES`: it must own the server it stops. It takes 12 to 15 s on the
//! 2-core machine: 5.5 s of load, PostgreSQL's crash recovery, and the cluster's start and
//! stop. Only outcomes are asserted, no timings; the counts and a timeline are printed
//! (`--nocapture`). The clients' choices come from a fixed seed (`RAMPART_TEST_SEED`).
#![cfg(feature = "postgres")]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{within, TestError, TestResult};
use rampart::client::{Client, ClientError, ClientOptions};
use rampart::config::Config;
use rampart::protocol::{ErrorCode, ItemBody};
use rampart::server::auth::hash_password;
use rampart::server::{Server, ServerHandle};
use rand::distributions::Alphanumeric;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The test's users, one per client; client `i` sends to user `i + 1` (mod 4).
const USERS: [(&str, &str); 4] = [
    ("olga", "olga-pw"),
    ("pavel", "pavel-pw"),
    ("quinn", "quinn-pw"),
    ("rosa", "rosa-pw"),
];
const SERVERS: usize = 3;
/// Load before the outage, the outage itself, and load after the restart.
const BEFORE: Duration = Duration::from_millis(1500);
const DOWN: Duration = Duration::from_secs(2);
const AFTER: Duration = Duration::from_secs(2);
/// How long every server has, after the load, to serve a login and a send again.
const RECOVERY: Duration = Duration::from_secs(10);

/// Client `i`'s own source address.
fn source(i: usize) -> IpAddr {
    IpAddr::from([127, 0, 7, 1 + i as u8])
}

fn options(i: usize) -> ClientOptions {
    ClientOptions {
        source: Some(source(i)),
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    }
}

/// The newest installed PostgreSQL's programs, as `.ci/postgres.sh` picks them.
fn pg_bindir() -> Option<PathBuf> {
    let version = |p: &Path| -> Vec<u32> {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        name.split('.').map(|s| s.parse().unwrap_or(0)).collect()
    };
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("bin").is_dir())
        .max_by_key(|p| version(p))
        .map(|p| p.join("bin"))
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A throwaway PostgreSQL cluster of this test's own, stopped (and its directory removed)
/// when dropped, also when the test fails.
struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    url: String,
    port: u16,
}

impl Cluster {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/postgres.sh")
    }

    /// Starts a cluster with `.ci/postgres.sh start`; `None` (after a note) when no
    /// PostgreSQL is installed.
    fn start() -> Result<Option<Cluster>, TestError> {
        let Some(bin) = pg_bindir() else {
            eprintln!(
                "skipped: no PostgreSQL server installed (/usr/lib/postgresql/*/bin); \
                 this test starts and stops its own cluster (Debian's package `postgresql`)"
            );
            return Ok(None);
        };
        let dir = tempfile::Builder::new()
            .prefix("rampart-outage-pg.")
            .tempdir()?;
        let out = Command::new("bash")
            .arg(Self::script())
            .arg("start")
            .arg(dir.path())
            // With it set the script would only echo it; the port is the kernel's choice.
            .env_remove("RAMPART_TEST_POSTGRES")
            .env_remove("PGPORT")
            .stderr(Stdio::inherit())
            .output()?;
        // From here on the guard stops whatever the script started, also on an error.
        let mut cluster = Cluster {
            dir,
            bin,
            url: String::new(),
            port: 0,
        };
        if !out.status.success() {
            return Err(format!(".ci/postgres.sh start failed: {}", out.status).into());
        }
        let url = String::from_utf8(out.stdout)?.trim().to_string();
        let port = url
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("no port in the script's URL {url:?}"))?;
        cluster.url = url;
        cluster.port = port;
        Ok(Some(cluster))
    }

    /// `pg_ctl ARGS` on this cluster, as its owner (PostgreSQL refuses to run as root).
    fn pg_ctl(&self, args: &[&str]) -> Result<(), TestError> {
        let pg_ctl = self.bin.join("pg_ctl");
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            c
        } else {
            Command::new(&pg_ctl)
        };
        let data = self.dir.path().join("data");
        let status = cmd
            .arg("-D")
            .arg(&data)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("pg_ctl {args:?} failed: {status}").into())
        }
    }

    /// Stops the server the hard way: every backend killed, no checkpoint.
    fn crash(&self) -> Result<(), TestError> {
        self.pg_ctl(&["stop", "-m", "immediate"])
    }

    /// Starts it again on the same port and socket directory, after crash recovery.
    fn restart(&self) -> Result<(), TestError> {
        let dir = self.dir.path().display().to_string();
        let log = format!("{dir}/log");
        let opts = format!("-p {} -k {dir} -c listen_addresses=127.0.0.1", self.port);
        self.pg_ctl(&["-l", &log, "-w", "-t", "30", "-o", &opts, "start"])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(Self::script())
            .arg("stop")
            .arg(self.dir.path())
            .env_remove("RAMPART_TEST_POSTGRES")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Starts the three servers on `config`'s store, each with a data directory of its own;
/// the first adds [`USERS`], whom every server then knows.
async fn fleet(config: &Config) -> Result<Vec<(ServerHandle, tempfile::TempDir)>, TestError> {
    let mut members = Vec::new();
    for i in 0..SERVERS {
        let dir = tempfile::tempdir()?;
        let (c, path) = (config.clone(), dir.path().to_path_buf());
        // Opening migrates and reads the store: off the runtime's threads.
        let server = tokio::task::spawn_blocking(move || Server::open(c, &path)).await??;
        if i == 0 {
            let (store, auth) = (server.store(), config.auth.clone());
            tokio::task::spawn_blocking(move || -> TestResult {
                for (name, pw) in USERS {
                    store.add_user(name, &hash_password(&auth, pw.as_bytes())?)?;
                }
                Ok(())
            })
            .await??;
        }
        members.push((server.bind("127.0.0.1:0".parse()?).await?, dir));
    }
    Ok(members)
}

/// Where the database was when a send started or ended.
const UP: u8 = 0;
const STOPPING: u8 = 1;
const RESTARTED: u8 = 2;

/// What one send was and how it ended.
#[derive(Debug, Clone)]
struct Sent {
    client: usize,
    to: usize,
    server: usize,
    /// A new connection and login for this send, or a session kept across sends.
    fresh: bool,
    /// `Some(subject)` for a mail (whose body is `text`), `None` for a chat message.
    subject: Option<String>,
    text: String,
    phase_start: u8,
    phase_end: u8,
    /// When it ended.
    ended: Instant,
    /// Whether it failed at the login (a new connection's, or a lost session's again).
    at_login: bool,
    outcome: Outcome,
}

#[derive(Debug, Clone)]
enum Outcome {
    /// ACCEPTED with this item id.
    Acked(u64),
    /// ERROR `internal`: the request was not applied.
    Refused,
    /// Anything else: a wrong error code, a dropped connection, a timeout.
    Failed(String),
}

fn outcome(result: Result<u64, ClientError>) -> Outcome {
    match result {
        Ok(id) => Outcome::Acked(id),
        Err(ClientError::Server {
            code: ErrorCode::Internal,
            ..
        }) => Outcome::Refused,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

async fn login(addr: &str, i: usize) -> Result<Client, ClientError> {
    let (user, pw) = USERS[i];
    Client::login(addr, user, pw.as_bytes(), options(i)).await
}

async fn deliver(
    c: &mut Client,
    to: usize,
    subject: &Option<String>,
    text: &str,
) -> Result<u64, ClientError> {
    let to = USERS[to].0;
    match subject {
        Some(subject) => c.send_mail_with(to, subject, text, &[]).await,
        None => c.send_message(to, text).await,
    }
}

/// Client `i`: sends round-robin over the servers until `stop`, half the time over a new
/// connection and login, half over a session kept per server (logged in again when lost).
async fn client(
    i: usize,
    addrs: Vec<String>,
    seed: u64,
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
) -> Vec<Sent> {
    let mut rng = StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut sessions: Vec<Option<Client>> = (0..addrs.len()).map(|_| None).collect();
    let mut log = Vec::new();
    let to = (i + 1) % USERS.len();
    for n in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let server = (i + n) % addrs.len();
        let fresh = rng.gen_bool(0.5);
        let subject = rng
            .gen_bool(0.3)
            .then(|| format!("mail {n} from client {i}"));
        let len = rng.gen_range(4..60);
        let noise: String = (&mut rng)
            .sample_iter(Alphanumeric)
            .take(len)
            .map(char::from)
            .collect();
        let text = format!("client {i} send {n}: {noise}");
        let phase_start = phase.load(Ordering::SeqCst);
        let mut at_login = false;
        let result = if fresh {
            match login(&addrs[server], i).await {
                Ok(mut c) => {
                    let r = deliver(&mut c, to, &subject, &text).await;
                    // The answer is in; a failed BYE changes nothing about it.
                    let _ = c.bye().await;
                    r
                }
                Err(e) => {
                    at_login = true;
                    Err(e)
                }
            }
        } else {
            let session = match sessions[server].take() {
                Some(c) if !c.is_closed() => Ok(c),
                _ => login(&addrs[server], i).await,
            };
            match session {
                Ok(mut c) => {
                    let r = deliver(&mut c, to, &subject, &text).await;
                    // An ERROR leaves the session usable; a broken connection does not.
                    if !matches!(r, Err(ref e) if e.code().is_none()) {
                        sessions[server] = Some(c);
                    }
                    r
                }
                Err(e) => {
                    at_login = true;
                    Err(e)
                }
            }
        };
        log.push(Sent {
            client: i,
            to,
            server,
            fresh,
            subject,
            text,
            phase_start,
            phase_end: phase.load(Ordering::SeqCst),
            ended: Instant::now(),
            at_login,
            outcome: outcome(result),
        });
        tokio::time::sleep(Duration::from_millis(rng.gen_range(40..120))).await;
    }
    for c in sessions.into_iter().flatten() {
        let _ = c.bye().await;
    }
    log
}

/// Logs client `i` in to `addr` and sends one message, retrying until `deadline`; the
/// send, once acknowledged, joins the ones checked afterwards.
async fn recovered(
    addr: &str,
    server: usize,
    i: usize,
    deadline: Instant,
) -> Result<Sent, TestError> {
    let to = (i + 1) % USERS.len();
    let text = format!("client {i} after the outage, through server {server}");
    let mut last = String::new();
    while Instant::now() < deadline {
        let result = match login(addr, i).await {
            Ok(mut c) => {
                let r = c.send_message(USERS[to].0, &text).await;
                let _ = c.bye().await;
                r
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(id) => {
                return Ok(Sent {
                    client: i,
                    to,
                    server,
                    fresh: true,
                    subject: None,
                    text,
                    phase_start: RESTARTED,
                    phase_end: RESTARTED,
                    ended: Instant::now(),
                    at_login: false,
                    outcome: Outcome::Acked(id),
                })
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "client {i} ({}) got no login and send through server {server} within {RECOVERY:?} \
         of the load's end; last error: {last}",
        source(i)
    )
    .into())
}

/// Reads user `user`'s inbox through `addr` and checks that every acknowledged item for
/// them is there with its exact content, and that every other item is one a refused send
/// may have left (the ambiguous commit docs/FLEET.md names). Returns how many refused sends
/// were stored all the same.
async fn check_inbox(
    addr: &str,
    server: usize,
    user: usize,
    sends: &[Sent],
) -> Result<usize, TestError> {
    let mut c = login(addr, user).await?;
    let inbox = c.inbox().await?;
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for e in &inbox {
        *seen.entry(e.id).or_default() += 1;
    }
    if let Some((id, n)) = seen.iter().find(|(_, n)| **n > 1) {
        return Err(format!(
            "server {server}: item {id} listed {n} times in {}'s inbox",
            USERS[user].0
        )
        .into());
    }
    let mine: Vec<&Sent> = sends.iter().filter(|s| s.to == user).collect();
    let mut acked = HashMap::new();
    for s in &mine {
        if let Outcome::Acked(id) = s.outcome {
            if acked.insert(id, *s).is_some() {
                return Err(
                    format!("item id {id} acknowledged twice for {}", USERS[user].0).into(),
                );
            }
        }
    }
    for (id, s) in &acked {
        if !seen.contains_key(id) {
            return Err(format!(
                "server {server}: acknowledged item {id} ({s:?}) is missing from {}'s inbox",
                USERS[user].0
            )
            .into());
        }
        let view = c.fetch(*id).await?;
        let want_from = USERS[s.client].0;
        let ok = view.from == want_from
            && match (&view.body, &s.subject) {
                (ItemBody::Message { text }, None) => *text == s.text,
                (
                    ItemBody::Mail {
                        subject,
                        body,
                        attachments,
                    },
                    Some(want),
                ) => subject == want && *body == s.text && attachments.is_empty(),
                _ => false,
            };
        if !ok {
            return Err(format!(
                "server {server}: item {id} reads {view:?}, but {s:?} was acknowledged"
            )
            .into());
        }
    }
    // The rest must be refused sends that were committed before the connection broke.
    let mut stored_though_refused = 0;
    for e in inbox.iter().filter(|e| !acked.contains_key(&e.id)) {
        let view = c.fetch(e.id).await?;
        let (subject, text) = match &view.body {
            ItemBody::Message { text } => (None, text),
            ItemBody::Mail { subject, body, .. } => (Some(subject), body),
            ItemBody::File(_) => {
                return Err(format!("server {server}: unexpected file {view:?}").into())
            }
        };
        let refused = mine.iter().any(|s| {
            matches!(s.outcome, Outcome::Refused | Outcome::Failed(_))
                && s.text == *text
                && s.subject.as_ref() == subject
        });
        if !refused {
            return Err(format!("server {server}: item {view:?} matches no send").into());
        }
        stored_though_refused += 1;
    }
    let _ = c.bye().await;
    Ok(stored_though_refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_loses_no_acknowledged_item_and_takes_no_server_down() -> TestResult {
    let started = Instant::now();
    let Some(cluster) = tokio::task::spawn_blocking(Cluster::start).await?? else {
        return Ok(());
    };
    let cluster = Arc::new(cluster);
    eprintln!("cluster started: {} ms", started.elapsed().as_millis());
    let result = within(scenario(Arc::clone(&cluster), started)).await;
    // The guard stops the cluster on every path; here the servers are already gone.
    drop(cluster);
    eprintln!("whole test: {} ms", started.elapsed().as_millis());
    result
}

async fn scenario(cluster: Arc<Cluster>, started: Instant) -> TestResult {
    let at = |what: &str| eprintln!("{what}: {} ms", started.elapsed().as_millis());
    let seed = std::env::var("RAMPART_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_205_u64);
    eprintln!(
        "seed {seed} (set RAMPART_TEST_SEED to replay); PostgreSQL at {}",
        cluster.url
    );
    // The firewall on, as in production: a source it blocked would show.
    let mut config = common::firewall_config();
    config.store.url = Some(cluster.url.clone());
    let members = fleet(&config).await?;
    at("servers up");
    let addrs: Vec<String> = members
        .iter()
        .map(|(h, _)| h.local_addr().to_string())
        .collect();

    let phase = Arc::new(AtomicU8::new(UP));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..USERS.len())
        .map(|i| {
            tokio::spawn(client(
                i,
                addrs.clone(),
                seed,
                Arc::clone(&phase),
                Arc::clone(&stop),
            ))
        })
        .collect();

    tokio::time::sleep(BEFORE).await;
    phase.store(STOPPING, Ordering::SeqCst);
    let stopping = Instant::now();
    let c = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || c.crash()).await??;
    at("PostgreSQL stopped");
    tokio::time::sleep(DOWN).await;
    let c = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || c.restart()).await??;
    at("PostgreSQL restarted");
    phase.store(RESTARTED, Ordering::SeqCst);
    let restarted = Instant::now();
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::SeqCst);
    let mut sends = Vec::new();
    for c in clients {
        sends.extend(c.await?);
    }

    at("load stopped");
    // Every server serves a login and a send again, from every client's address.
    let deadline = Instant::now() + RECOVERY;
    for (server, addr) in addrs.iter().enumerate() {
        for i in 0..USERS.len() {
            sends.push(recovered(addr, server, i, deadline).await?);
        }
    }

    at("every server served every client again");
    let count = |f: &dyn Fn(&Sent) -> bool| sends.iter().filter(|s| f(s)).count();
    let acked = count(&|s| matches!(s.outcome, Outcome::Acked(_)));
    let refused = count(&|s| matches!(s.outcome, Outcome::Refused));
    let failed: Vec<&Sent> = sends
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Failed(_)))
        .collect();
    let refused_after_restart =
        count(&|s| s.phase_start == RESTARTED && !matches!(s.outcome, Outcome::Acked(_)));
    let by_kind = |fresh: bool| {
        let acked = count(&|s| s.fresh == fresh && matches!(s.outcome, Outcome::Acked(_)));
        let refused = count(&|s| s.fresh == fresh && matches!(s.outcome, Outcome::Refused));
        (acked, refused)
    };
    let refused_at_login = count(&|s| s.at_login && matches!(s.outcome, Outcome::Refused));
    let mails = count(&|s| s.subject.is_some() && matches!(s.outcome, Outcome::Acked(_)));
    let per_server: BTreeMap<usize, (usize, usize)> = (0..SERVERS)
        .map(|k| {
            (
                k,
                (
                    count(&|s| s.server == k && matches!(s.outcome, Outcome::Acked(_))),
                    count(&|s| s.server == k && matches!(s.outcome, Outcome::Refused)),
                ),
            )
        })
        .collect();
    let since = |t: Instant, s: &Sent| s.ended.saturating_duration_since(t).as_millis();
    let refusals = || {
        sends
            .iter()
            .filter(|s| !matches!(s.outcome, Outcome::Acked(_)))
    };
    eprintln!(
        "refusals ended between {:?} and {:?} ms after the stop began; the restart \
         returned {} ms after it; first acknowledgement after the restart: {:?} ms after it",
        refusals().map(|s| since(stopping, s)).min(),
        refusals().map(|s| since(stopping, s)).max(),
        restarted.duration_since(stopping).as_millis(),
        sends
            .iter()
            .filter(|s| s.ended >= restarted && matches!(s.outcome, Outcome::Acked(_)))
            .map(|s| since(restarted, s))
            .min(),
    );
    eprintln!(
        "sends: {} in all, {acked} acknowledged ({mails} of them mails), {refused} refused \
         with internal ({refused_at_login} of them at the login), {} failed otherwise; new connection each: {:?}, kept sessions: {:?} \
         (acked, refused); per server (acked, refused): {per_server:?}; not acknowledged \
         though started after the restart: {refused_after_restart}",
        sends.len(),
        failed.len(),
        by_kind(true),
        by_kind(false),
    );

    let failures: Vec<String> = failed
        .iter()
        .filter_map(|s| match &s.outcome {
            Outcome::Failed(why) => Some(format!(
                "client {} through server {} (phase {} to {}, at login: {}): {why}",
                s.client, s.server, s.phase_start, s.phase_end, s.at_login
            )),
            _ => None,
        })
        .collect();
    assert!(
        failures.is_empty(),
        "sends that failed other than with `internal`: {failures:#?}"
    );
    let early: Vec<&Sent> = sends
        .iter()
        .filter(|s| s.phase_end == UP && !matches!(s.outcome, Outcome::Acked(_)))
        .collect();
    assert!(
        early.is_empty(),
        "refused before the outage began: {early:#?}"
    );
    assert!(
        refused > 0,
        "no send was refused: the outage did not happen (or was not noticed)"
    );

    // Every acknowledged item, read through each server, with its exact content.
    let mut stored_though_refused = Vec::new();
    for (server, addr) in addrs.iter().enumerate() {
        let mut n = 0;
        for user in 0..USERS.len() {
            n += check_inbox(addr, server, user, &sends).await?;
        }
        stored_though_refused.push(n);
    }
    eprintln!(
        "every acknowledged item read back through all {SERVERS} servers; refused sends \
         stored all the same (per server's view): {stored_though_refused:?}"
    );

    at("inboxes checked");
    // No client's address was blocked for the database's fault.
    for (server, (handle, _)) in members.iter().enumerate() {
        for i in 0..USERS.len() {
            assert!(
                !handle.guard().is_blocked(source(i)),
                "server {server} blocked client {i} ({}): {:#?}",
                source(i),
                handle.firewall().decisions()
            );
        }
    }
    for (handle, _dir) in members {
        handle.shutdown().await;
    }
    at("servers shut down");
    Ok(())
}
