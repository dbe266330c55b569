//! Well-behaved load: legit clients that send messages, mails and files on an open-loop
//! schedule, and the read-back that proves every acknowledged item survived.
//!
//! Each client is its own user (`legit0`, `legit1`, ...) on its own connection, bound to one
//! address of its group's source network. Its operations are due at fixed times
//! (`start + phase + k / rate_per_s`, the phase drawn from the seed); an operation that starts
//! late because the previous one was slow still counts from its due time, so a slow server
//! shows up as latency and lost goodput instead of as a lower offered rate. Contents and
//! recipients come from a seeded generator, so a run can be replayed; the runner keeps only
//! each item's blake3 digest, never its bytes.
//!
//! Every loop here ends by a deadline: the group's stop time plus the latency SLO for
//! starting operations, and the runner's hard end for finishing them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rand::distributions::Alphanumeric;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::time::Instant;

use super::metrics::{LiveCounters, OpKind, OpRecord};
use super::spec::{Legit, Scenario, CONTROL_SOURCE};
use crate::client::{Client, ClientError, ClientOptions};
use crate::protocol::{ErrorCode, ItemBody};

/// Wait for one reply of a legit client. Short enough that a stalled server is noticed
/// within a scenario, long enough for an fsync on a slow disk.
pub const LEGIT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between reconnection attempts of one client, so a refused client does not turn
/// into a login flood of its own.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// How long a login is retried while the server answers RATE_LIMITED (login limits are per
/// minute, so a burst of clients behind one address may have to wait a few seconds).
const LOGIN_PATIENCE: Duration = Duration::from_secs(30);

/// Recipients verified at once after the run.
const VERIFY_CONCURRENCY: usize = 16;

/// Lost items described in the report, at most.
const MAX_LOST_DESCRIBED: usize = 20;

/// One legit client: account, source address and load.
#[derive(Debug, Clone)]
pub struct ClientPlan {
    /// Index over all groups; the user is `legit{index}`.
    pub index: usize,
    /// User name.
    pub user: String,
    /// Password (seeded).
    pub password: String,
    /// The address the client binds.
    pub source: Ipv4Addr,
    /// Its group's load.
    pub load: Legit,
    /// Seed of its schedule and contents.
    pub seed: u64,
}

/// The legit clients of a scenario, in index order, with seeded passwords.
pub fn plan(scenario: &Scenario) -> Vec<ClientPlan> {
    let mut rng = StdRng::seed_from_u64(scenario.seed() ^ 0x6c65_6769_7421);
    let mut plans = Vec::new();
    for group in scenario.legit() {
        for i in 0..group.clients as usize {
            let index = plans.len();
            plans.push(ClientPlan {
                index,
                user: format!("legit{index}"),
                password: format!("legit-{:016x}", rng.gen::<u64>()),
                source: group.sources[i % group.sources.len()],
                load: group.clone(),
                seed: rng.gen(),
            });
        }
    }
    plans
}

/// Client options for the runner's own connections.
pub fn options(source: Ipv4Addr) -> ClientOptions {
    ClientOptions::default()
        .source(IpAddr::V4(source))
        .request_timeout(LEGIT_REQUEST_TIMEOUT)
        .connect_timeout(LEGIT_REQUEST_TIMEOUT)
        .chunk_size(64 * 1024)
}

/// Logs in from `source`, retrying while the server answers RATE_LIMITED (for up to
/// 30 s: login limits are per minute).
pub async fn login(
    target: SocketAddr,
    user: &str,
    password: &str,
    source: Ipv4Addr,
) -> Result<Client, ClientError> {
    let give_up = Instant::now() + LOGIN_PATIENCE;
    loop {
        match Client::login(target, user, password.as_bytes(), options(source)).await {
            Err(e) if e.code() == Some(ErrorCode::RateLimited) && Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            other => return other,
        }
    }
}

/// A short label for a failure, used as a key in `legit_errors`.
pub fn error_label(e: &ClientError) -> String {
    match e {
        ClientError::Server { code, .. } => code.name().to_string(),
        ClientError::Timeout => "timeout".into(),
        ClientError::Closed => "closed".into(),
        ClientError::Connect { .. } => "connect".into(),
        ClientError::Io(_) => "io".into(),
        ClientError::DigestMismatch { .. } => "digest_mismatch".into(),
        _ => "protocol".into(),
    }
}

/// What the recipient must find, by digest.
#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    /// A chat message with this text digest.
    Message {
        /// blake3 of the text.
        text: [u8; 32],
    },
    /// A mail.
    Mail {
        /// Subject, verbatim.
        subject: String,
        /// blake3 of the body.
        body: [u8; 32],
        /// (size, blake3) of each attachment.
        attachments: Vec<(u64, [u8; 32])>,
    },
    /// A file of this size and digest.
    File {
        /// Size.
        size: u64,
        /// blake3.
        digest: [u8; 32],
    },
}

/// An acknowledged item, to read back after the run.
#[derive(Debug, Clone)]
pub struct Acked {
    /// Sender's user name.
    pub from: String,
    /// Recipient's client index.
    pub to: usize,
    /// The id from ACCEPTED.
    pub item_id: u64,
    /// What it must contain.
    pub expected: Expected,
}

/// One operation with its contents.
enum Op {
    Message {
        text: String,
    },
    Mail {
        subject: String,
        body: String,
        attachment: Option<(String, Vec<u8>)>,
    },
    File {
        name: String,
        data: Vec<u8>,
    },
}

impl Op {
    fn kind(&self) -> OpKind {
        match self {
            Op::Message { .. } => OpKind::Message,
            Op::Mail { .. } => OpKind::Mail,
            Op::File { .. } => OpKind::File,
        }
    }

    fn expected(&self) -> Expected {
        let digest = |b: &[u8]| *blake3::hash(b).as_bytes();
        match self {
            Op::Message { text } => Expected::Message {
                text: digest(text.as_bytes()),
            },
            Op::Mail {
                subject,
                body,
                attachment,
            } => Expected::Mail {
                subject: subject.clone(),
                body: digest(body.as_bytes()),
                attachments: attachment
                    .iter()
                    .map(|(_, d)| (d.len() as u64, digest(d)))
                    .collect(),
            },
            Op::File { data, .. } => Expected::File {
                size: data.len() as u64,
                digest: digest(data),
            },
        }
    }

    async fn send(&self, client: &mut Client, to: &str) -> Result<u64, ClientError> {
        match self {
            Op::Message { text } => client.send_message(to, text).await,
            Op::Mail {
                subject,
                body,
                attachment,
            } => {
                let attachments: Vec<(String, Vec<u8>)> = attachment.iter().cloned().collect();
                client.send_mail_with(to, subject, body, &attachments).await
            }
            Op::File { name, data } => client.send_file_bytes(to, name, data).await,
        }
    }
}

fn text(rng: &mut StdRng, max: u32) -> String {
    let len = rng.gen_range(16..=max.max(16)) as usize;
    rng.sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn bytes(rng: &mut StdRng, max: u64) -> Vec<u8> {
    let len = rng.gen_range(1..=max.max(1)) as usize;
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    data
}

/// Draws operation `k` of a client: its kind from the mix, its contents, its recipient.
fn draw(rng: &mut StdRng, load: &Legit, k: u64, users: usize, me: usize) -> (Op, usize) {
    let x: f64 = rng.gen();
    let op = if x < load.mix[0] {
        Op::Message {
            text: text(rng, load.message_bytes),
        }
    } else if x < load.mix[0] + load.mix[1] {
        let with_attachment = rng.gen_bool(0.5);
        Op::Mail {
            subject: format!("legit mail {k}"),
            body: text(rng, load.message_bytes.saturating_mul(4)),
            attachment: with_attachment
                .then(|| (format!("attachment-{k}.bin"), bytes(rng, load.file_bytes))),
        }
    } else {
        Op::File {
            name: format!("file-{k}.bin"),
            data: bytes(rng, load.file_bytes),
        }
    };
    let to = if users <= 1 {
        me
    } else {
        // Anyone but oneself.
        let r = rng.gen_range(0..users - 1);
        if r >= me {
            r + 1
        } else {
            r
        }
    };
    (op, to)
}

/// What the load phase shares with every client.
pub struct LoadContext {
    /// The server.
    pub target: SocketAddr,
    /// Scenario start.
    pub t0: Instant,
    /// An operation acknowledged within this of its due time is delivered.
    pub slo: Duration,
    /// Every legit user name, by client index.
    pub users: Arc<Vec<String>>,
    /// Live counters for the progress display.
    pub live: Arc<LiveCounters>,
    /// Nothing runs past this instant.
    pub hard_end: Instant,
}

/// The outcome of one client's load.
pub struct ClientRun {
    /// Its index.
    pub index: usize,
    /// Every scheduled operation.
    pub records: Vec<OpRecord>,
    /// Every acknowledged item.
    pub acked: Vec<Acked>,
    /// The connection, if still usable, for the read-back.
    pub client: Option<Client>,
    /// A connection of this client was refused at accept (closed with no reply, or BUSY).
    pub refused_at_accept: bool,
    /// Logins during the run (reconnections and `relogin_every_s`).
    pub logins: u64,
    /// Of those, the ones that did not end in AUTH_OK.
    pub login_refusals: u64,
}

fn record(live: &LiveCounters, slo: Duration, r: &OpRecord) {
    LiveCounters::bump(&live.legit_attempted);
    if r.delivered(slo) {
        LiveCounters::bump(&live.legit_delivered);
    } else {
        LiveCounters::bump(&live.legit_failed);
    }
}

/// Runs one client's open-loop schedule, starting with an already logged-in connection.
pub async fn run_client(plan: &ClientPlan, client: Option<Client>, ctx: &LoadContext) -> ClientRun {
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let load = &plan.load;
    let interval = Duration::from_secs_f64(1.0 / load.rate_per_s);
    let phase = interval.mul_f64(rng.gen::<f64>());
    let first = load.start + phase;
    // Operations due before `load.stop`; none may start after `last_start`.
    let last_start = (ctx.t0 + load.stop + ctx.slo).min(ctx.hard_end);
    let me = plan.index;
    let mut run = ClientRun {
        index: me,
        records: Vec::new(),
        acked: Vec::new(),
        client,
        refused_at_accept: false,
        logins: 0,
        login_refusals: 0,
    };
    let mut next_login = Instant::now();
    // When the client's connection logged in, for `relogin_every`.
    let mut logged_in_at = Instant::now();
    let mut k: u64 = 0;
    loop {
        let due = first + interval.mul_f64(k as f64);
        if due >= load.stop {
            break;
        }
        let (op, to) = draw(&mut rng, load, k, ctx.users.len(), me);
        k += 1;
        let due_at = ctx.t0 + due;
        tokio::time::sleep_until(due_at).await;
        let mut rec = OpRecord {
            kind: op.kind(),
            scheduled: due,
            latency: None,
            error: None,
        };
        if Instant::now() >= last_start {
            rec.error = Some("missed".into());
            record(&ctx.live, ctx.slo, &rec);
            run.records.push(rec);
            continue;
        }
        if load
            .relogin_every
            .is_some_and(|every| logged_in_at.elapsed() >= every)
        {
            // A new login on a new connection, as a script running the command line client
            // once per command does; a failed BYE only means the connection was gone.
            if let Some(client) = run.client.take() {
                let _ = tokio::time::timeout_at(ctx.hard_end, client.bye()).await;
            }
        }
        if run.client.as_ref().map_or(true, Client::is_closed) {
            run.client = None;
            if Instant::now() < next_login {
                tokio::time::sleep_until(next_login.min(last_start)).await;
            }
            next_login = Instant::now() + RECONNECT_PAUSE;
            let attempt = tokio::time::timeout_at(
                ctx.hard_end,
                Client::login(
                    ctx.target,
                    &plan.user,
                    plan.password.as_bytes(),
                    options(plan.source),
                ),
            )
            .await;
            run.logins += 1;
            match attempt {
                Ok(Ok(c)) => {
                    run.client = Some(c);
                    logged_in_at = Instant::now();
                }
                Ok(Err(e)) => {
                    run.login_refusals += 1;
                    if matches!(e, ClientError::Closed)
                        || matches!(e.code(), Some(ErrorCode::Busy | ErrorCode::Blocked))
                    {
                        run.refused_at_accept = true;
                    }
                    rec.error = Some(error_label(&e));
                }
                Err(_) => {
                    run.login_refusals += 1;
                    rec.error = Some("timeout".into());
                }
            }
        }
        if let Some(client) = run.client.as_mut() {
            let to_name = &ctx.users[to];
            match tokio::time::timeout_at(ctx.hard_end, op.send(client, to_name)).await {
                Ok(Ok(item_id)) => {
                    rec.latency = Some(Instant::now().saturating_duration_since(due_at));
                    if rec.latency.is_some_and(|l| l > ctx.slo) {
                        rec.error = Some("late".into());
                    }
                    run.acked.push(Acked {
                        from: plan.user.clone(),
                        to,
                        item_id,
                        expected: op.expected(),
                    });
                }
                Ok(Err(e)) => rec.error = Some(error_label(&e)),
                Err(_) => {
                    // Cut off mid-request: the connection's state is unknown.
                    run.client = None;
                    rec.error = Some("timeout".into());
                }
            }
        }
        record(&ctx.live, ctx.slo, &rec);
        run.records.push(rec);
    }
    run
}

/// The outcome of reading back every acknowledged item.
#[derive(Debug, Default)]
pub struct Verification {
    /// Items read back intact.
    pub verified: u64,
    /// Items missing or different.
    pub lost: u64,
    /// The first lost items, described.
    pub lost_items: Vec<String>,
}

/// Reads back every acknowledged item as its recipient, on the recipient's own connection
/// when it is still usable, else on a new login from its source, else from the runner's
/// control address (so a falsely blocked source is not also counted as lost data).
pub async fn verify(
    plans: &[ClientPlan],
    runs: Vec<ClientRun>,
    target: SocketAddr,
) -> Verification {
    let mut by_recipient: Vec<Vec<Acked>> = vec![Vec::new(); plans.len()];
    let mut clients: Vec<Option<Client>> = Vec::with_capacity(plans.len());
    clients.resize_with(plans.len(), || None);
    for run in runs {
        for a in run.acked {
            if let Some(v) = by_recipient.get_mut(a.to) {
                v.push(a);
            }
        }
        if let Some(slot) = clients.get_mut(run.index) {
            *slot = run.client;
        }
    }
    let jobs = by_recipient
        .into_iter()
        .zip(clients)
        .enumerate()
        .filter(|(_, (items, _))| !items.is_empty())
        .map(|(i, (items, client))| verify_recipient(&plans[i], items, client, target));
    let results: Vec<(u64, Vec<String>)> = futures::stream::iter(jobs)
        .buffer_unordered(VERIFY_CONCURRENCY)
        .collect()
        .await;
    let mut out = Verification::default();
    for (verified, lost) in results {
        out.verified += verified;
        out.lost += lost.len() as u64;
        for l in lost {
            if out.lost_items.len() < MAX_LOST_DESCRIBED {
                out.lost_items.push(l);
            }
        }
    }
    out.lost_items.sort();
    out
}

async fn reconnect(plan: &ClientPlan, target: SocketAddr) -> Result<Client, ClientError> {
    match login(target, &plan.user, &plan.password, plan.source).await {
        Ok(c) => Ok(c),
        Err(_) => login(target, &plan.user, &plan.password, CONTROL_SOURCE).await,
    }
}

/// Verifies one recipient's items; returns (verified count, descriptions of lost items).
async fn verify_recipient(
    plan: &ClientPlan,
    mut items: Vec<Acked>,
    client: Option<Client>,
    target: SocketAddr,
) -> (u64, Vec<String>) {
    items.sort_by_key(|a| a.item_id);
    let mut client = client.filter(|c| !c.is_closed());
    let mut verified = 0;
    let mut lost = Vec::new();
    for item in &items {
        let mut outcome = Err("no connection".to_string());
        // One retry on a fresh connection if the transport failed; a few, after a pause, if
        // the server rate-limited the read (the read-back of many recipients sharing one
        // address is a burst of its own, and a refused read is not a lost item).
        let mut transport_failures = 0;
        for _ in 0..READ_BACK_ATTEMPTS {
            if client.is_none() {
                match reconnect(plan, target).await {
                    Ok(c) => client = Some(c),
                    Err(e) => {
                        outcome = Err(format!("cannot log in to read it back: {e}"));
                        break;
                    }
                }
            }
            let Some(c) = client.as_mut() else { break };
            match check_item(c, item).await {
                Ok(()) => {
                    outcome = Ok(());
                    break;
                }
                Err(Failure::Content(why)) => {
                    outcome = Err(why);
                    break;
                }
                Err(Failure::Transport(e)) => {
                    outcome = Err(e.to_string());
                    client = None;
                    transport_failures += 1;
                    if transport_failures == 2 {
                        break;
                    }
                }
                Err(Failure::Limited(e)) => {
                    outcome = Err(e.to_string());
                    tokio::time::sleep(READ_BACK_PAUSE).await;
                }
            }
        }
        match outcome {
            Ok(()) => verified += 1,
            Err(why) => lost.push(format!(
                "item {} from {} to {}: {why}",
                item.item_id, item.from, plan.user
            )),
        }
    }
    if let Some(c) = client {
        let _ = tokio::time::timeout(Duration::from_secs(1), c.bye()).await;
    }
    (verified, lost)
}

enum Failure {
    /// The item is missing or differs: lost.
    Content(String),
    /// The connection failed: retry.
    Transport(ClientError),
    /// The server rate-limited the read (nothing was applied): retry after a pause.
    Limited(ClientError),
}

/// Attempts to read back one item before it counts as lost.
const READ_BACK_ATTEMPTS: usize = 4;
/// The pause after a rate-limited read: a second refills any per-second limit.
const READ_BACK_PAUSE: Duration = Duration::from_secs(1);

fn classify(e: ClientError) -> Failure {
    match e {
        ClientError::Server {
            code: ErrorCode::RateLimited,
            ..
        } => Failure::Limited(e),
        ClientError::Server { .. } | ClientError::DigestMismatch { .. } => {
            Failure::Content(e.to_string())
        }
        other => Failure::Transport(other),
    }
}

async fn check_item(client: &mut Client, item: &Acked) -> Result<(), Failure> {
    let view = client.fetch(item.item_id).await.map_err(classify)?;
    if view.from != item.from {
        return Err(Failure::Content(format!(
            "sender is {} instead of {}",
            view.from, item.from
        )));
    }
    let digest = |b: &[u8]| *blake3::hash(b).as_bytes();
    let parts: Vec<(u16, u64, [u8; 32])> = match (&item.expected, &view.body) {
        (Expected::Message { text }, ItemBody::Message { text: got }) => {
            if digest(got.as_bytes()) != *text {
                return Err(Failure::Content("message text differs".into()));
            }
            Vec::new()
        }
        (
            Expected::Mail {
                subject,
                body,
                attachments,
            },
            ItemBody::Mail {
                subject: s,
                body: b,
                attachments: a,
            },
        ) => {
            if s != subject || digest(b.as_bytes()) != *body {
                return Err(Failure::Content("mail subject or body differs".into()));
            }
            if a.len() != attachments.len() {
                return Err(Failure::Content(format!(
                    "mail has {} attachments instead of {}",
                    a.len(),
                    attachments.len()
                )));
            }
            for (got, (size, d)) in a.iter().zip(attachments) {
                if got.size != *size || got.digest != *d {
                    return Err(Failure::Content("attachment size or digest differs".into()));
                }
            }
            attachments
                .iter()
                .enumerate()
                .map(|(i, (s, d))| (i as u16, *s, *d))
                .collect()
        }
        (Expected::File { size, digest: d }, ItemBody::File(a)) => {
            if a.size != *size || a.digest != *d {
                return Err(Failure::Content("file size or digest differs".into()));
            }
            vec![(0, *size, *d)]
        }
        (_, other) => {
            return Err(Failure::Content(format!(
                "item is a {} instead of the expected kind",
                other.kind().as_str()
            )))
        }
    };
    for (part, size, d) in parts {
        let data = client
            .download_bytes(item.item_id, part)
            .await
            .map_err(classify)?;
        if data.len() as u64 != size || digest(&data) != d {
            return Err(Failure::Content(format!(
                "part {part} downloads different bytes"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load() -> Legit {
        Legit {
            clients: 1,
            rate_per_s: 10.0,
            mix: [0.5, 0.3, 0.2],
            sources: vec![Ipv4Addr::new(127, 0, 0, 1)],
            net: ipnet::Ipv4Net::from(Ipv4Addr::new(127, 0, 0, 1)),
            message_bytes: 64,
            file_bytes: 1000,
            start: Duration::ZERO,
            stop: Duration::from_secs(1),
            relogin_every: None,
        }
    }

    #[test]
    fn draws_are_seeded_and_bounded() {
        let l = load();
        let kinds = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..50)
                .map(|k| {
                    let (op, to) = draw(&mut rng, &l, k, 5, 2);
                    assert_ne!(to, 2, "never to oneself");
                    assert!(to < 5);
                    match &op {
                        Op::Message { text } => assert!((16..=64).contains(&text.len())),
                        Op::Mail {
                            body, attachment, ..
                        } => {
                            assert!((16..=256).contains(&body.len()));
                            assert!(attachment
                                .as_ref()
                                .map_or(true, |(_, d)| (1..=1000).contains(&d.len())));
                        }
                        Op::File { data, .. } => assert!((1..=1000).contains(&data.len())),
                    }
                    (op.kind(), to, op.expected())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(kinds(7), kinds(7));
        assert_ne!(kinds(7), kinds(8));
        let all = kinds(7);
        for k in [OpKind::Message, OpKind::Mail, OpKind::File] {
            assert!(
                all.iter().any(|(kind, _, _)| *kind == k),
                "{k:?} never drawn"
            );
        }
    }

    #[test]
    fn a_single_user_writes_to_itself() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(draw(&mut rng, &load(), 0, 1, 0).1, 0);
    }
}
