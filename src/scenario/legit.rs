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

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rand::distributions::Alphanumeric;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::time::Instant;

use super::metrics::{LiveCounters, OpKind, OpRecord};
use super::spec::{ClientKind, Legit, Pace, Scenario, CONTROL_SOURCE};
use crate::client::{Client, ClientError, ClientOptions, TlsOptions};
use crate::protocol::{ErrorCode, ItemBody, Kind, Request};

/// Wait for one reply of a legit client. Short enough that a stalled server is noticed
/// within a scenario, long enough for an fsync on a slow disk.
pub const LEGIT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between reconnection attempts of one client, so a refused client does not turn
/// into a login flood of its own.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// How long a login is retried while the server answers RATE_LIMITED (login limits are per
/// minute, so a burst of clients behind one address may have to wait a few seconds).
const LOGIN_PATIENCE: Duration = Duration::from_secs(30);

/// Pause before a client with a resume ticket tries a blocked address again.
const BLOCKED_RESUME_PAUSE: Duration = Duration::from_millis(250);

/// Recipients verified at once after the run.
const VERIFY_CONCURRENCY: usize = 16;

/// Lost items described in the report, at most.
const MAX_LOST_DESCRIBED: usize = 20;

/// Entries an inbox check (`mix.read`) asks for: a screenful of new mail.
const READ_PAGE: u16 = 20;

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
    /// In a TLS run, how the client trusts the server; `None`: plaintext. The runner sets it
    /// once the server's certificate exists.
    pub tls: Option<TlsOptions>,
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
                source: group.source_of(i),
                load: group.clone(),
                seed: rng.gen(),
                tls: None,
            });
        }
    }
    plans
}

/// Client options for the runner's own connections, over TLS when `tls` is given.
pub fn options(source: Ipv4Addr, tls: Option<&TlsOptions>) -> ClientOptions {
    let mut opts = ClientOptions::default()
        .source(IpAddr::V4(source))
        .request_timeout(LEGIT_REQUEST_TIMEOUT)
        .connect_timeout(LEGIT_REQUEST_TIMEOUT)
        .chunk_size(64 * 1024);
    opts.tls = tls.cloned();
    opts
}

/// Client options of one legit client: [`options`], and for a `segmented` group the
/// segmented writes (seeded by the client) and a different pipelining: two upload chunks of
/// 16 KiB in flight instead of eight of 64 KiB.
pub fn client_options(plan: &ClientPlan) -> ClientOptions {
    let opts = options(plan.source, plan.tls.as_ref());
    match plan.load.client {
        ClientKind::Rampart => opts,
        ClientKind::Segmented => opts
            .segmented(plan.seed ^ SEGMENT_SEED)
            .upload_window(2)
            .chunk_size(16 * 1024),
    }
}

/// Mixed into a client's seed for its segmented writes.
const SEGMENT_SEED: u64 = 0x0073_6567_6d65_6e74;
/// Mixed into a client's seed for its mistakes (a separate generator, so a group without
/// mistakes draws exactly the operations it always did).
const MISTAKE_SEED: u64 = 0x006d_6973_7461_6b65;
/// Mixed into a client's seed for its pace and its read stalls.
const PACE_SEED: u64 = 0x7061_6365;

/// The kinds of honest mistake a legit client makes, as `legit_mistakes` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mistake {
    /// A mistyped password, then the right one.
    Typo,
    /// One send of a stale password (a client sends it `stale_password_retries` times).
    StalePassword,
    /// A fetch of one of the client's own items that it deleted.
    StaleFetch,
    /// A fetch of a mistyped item id.
    WrongId,
    /// A message to a user name that does not exist.
    UnknownRecipient,
}

impl Mistake {
    /// Every kind, in report order.
    pub const ALL: [Mistake; 5] = [
        Mistake::Typo,
        Mistake::StalePassword,
        Mistake::StaleFetch,
        Mistake::WrongId,
        Mistake::UnknownRecipient,
    ];

    /// The key in `legit_mistakes`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mistake::Typo => "typo",
            Mistake::StalePassword => "stale_password",
            Mistake::StaleFetch => "stale_fetch",
            Mistake::WrongId => "wrong_id",
            Mistake::UnknownRecipient => "unknown_recipient",
        }
    }

    /// Whether `e` is the server's honest answer to this mistake.
    fn expected(self, e: &ClientError) -> bool {
        matches!(
            (self, e.code()),
            (
                Mistake::Typo | Mistake::StalePassword,
                Some(ErrorCode::AuthFailed)
            ) | (Mistake::StaleFetch, Some(ErrorCode::NotFound))
                | (
                    Mistake::WrongId,
                    Some(ErrorCode::NotFound | ErrorCode::PermissionDenied)
                )
                | (Mistake::UnknownRecipient, Some(ErrorCode::UnknownRecipient))
        )
    }
}

/// What the login path of one client remembers between logins: its mistake generator, the
/// stale passwords it still has to send, and the mistakes the server answered honestly.
#[derive(Debug)]
pub struct LoginState {
    rng: StdRng,
    typo_rate: f64,
    stale_left: u32,
    /// Honest refusals of mistaken logins, by kind.
    pub mistakes: BTreeMap<Mistake, u64>,
    /// The resume ticket of the last login, if the server issued one.
    ticket: Option<Vec<u8>>,
}

impl LoginState {
    /// The state of `plan`'s client before its first login.
    pub fn new(plan: &ClientPlan) -> LoginState {
        LoginState {
            rng: StdRng::seed_from_u64(plan.seed ^ MISTAKE_SEED ^ 0x006c_6f67_696e),
            typo_rate: plan.load.typo_rate,
            stale_left: plan.load.stale_password_retries,
            mistakes: BTreeMap::new(),
            ticket: None,
        }
    }

    /// Asks the server for a resume ticket on `client`'s logged-in session, unless the
    /// client holds one already. A server with tickets off answers with an error: the client
    /// then keeps logging in with its password, as before tickets.
    pub async fn keep_ticket(&mut self, client: &mut Client) {
        if self.ticket.is_none() {
            if let Ok(t) = client.request_ticket().await {
                self.ticket = Some(t.ticket.to_vec());
            }
        }
    }

    /// The wrong passwords the next login sends before the right one: the stale password
    /// `stale_password_retries` times on the first login only, then a typo with
    /// probability `typo_rate` on every login (the first included).
    fn wrong_passwords(&mut self, right: &str) -> Vec<(Mistake, String)> {
        let mut wrong = Vec::new();
        for _ in 0..std::mem::take(&mut self.stale_left) {
            wrong.push((Mistake::StalePassword, format!("{right}-old")));
        }
        if self.typo_rate > 0.0 && self.rng.gen_bool(self.typo_rate.clamp(0.0, 1.0)) {
            wrong.push((Mistake::Typo, typo(&mut self.rng, right)));
        }
        wrong
    }
}

/// `password` with one character replaced by a different one, as a slipped finger does.
fn typo(rng: &mut StdRng, password: &str) -> String {
    let mut chars: Vec<char> = password.chars().collect();
    if chars.is_empty() {
        return "x".into();
    }
    let i = rng.gen_range(0..chars.len());
    chars[i] = if chars[i] == 'x' { 'y' } else { 'x' };
    chars.into_iter().collect()
}

/// Every login of a legit client during the run goes through here (reconnections,
/// `relogin_every_s`, `reconnect_every_s`, `per_command_login`, and the first login of a
/// group that makes login mistakes).
///
/// A client that holds a resume ticket logs back in with it, as the command line client
/// does: no password, no argon2, and it works from an address that was blocked because of
/// someone else behind it. A login that `state` says starts with a mistyped or stale
/// password is typed by hand instead: the wrong passwords first, each expecting
/// AUTH_FAILED on the same connection, then the right one, and if that login meets a
/// blocked address the ticket is the way back in. After a password login the client asks
/// for a ticket. The whole login is retried while the server answers RATE_LIMITED, for up
/// to 30 s (login limits are per minute).
pub async fn login_client(
    plan: &ClientPlan,
    target: SocketAddr,
    state: &mut LoginState,
) -> Result<Client, ClientError> {
    let give_up = Instant::now() + LOGIN_PATIENCE;
    let mut wrong = state.wrong_passwords(&plan.password);
    loop {
        let attempt = if wrong.is_empty() {
            match resume_attempt(plan, target, state).await {
                Some(resumed) => resumed,
                None => login_attempt(plan, target, &mut wrong, &mut state.mistakes).await,
            }
        } else {
            match login_attempt(plan, target, &mut wrong, &mut state.mistakes).await {
                Err(e) if e.code() == Some(ErrorCode::Blocked) => {
                    resume_attempt(plan, target, state).await.unwrap_or(Err(e))
                }
                other => other,
            }
        };
        match attempt {
            Err(e) if e.code() == Some(ErrorCode::RateLimited) && Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            // A blocked address reads a ticket on only a couple of connections at once, and
            // an attacker behind it may hold them: a client with a ticket tries again
            // shortly, as an app reconnecting in the background does.
            Err(e)
                if e.code() == Some(ErrorCode::Blocked)
                    && state.ticket.is_some()
                    && Instant::now() < give_up =>
            {
                tokio::time::sleep(BLOCKED_RESUME_PAUSE).await;
            }
            Ok(mut client) => {
                state.keep_ticket(&mut client).await;
                return Ok(client);
            }
            other => return other,
        }
    }
}

/// A login with the client's resume ticket, if it holds one: `None` when it holds none or
/// the server refused it as invalid, expired or revoked (the ticket is then dropped and the
/// caller logs in with the password).
async fn resume_attempt(
    plan: &ClientPlan,
    target: SocketAddr,
    state: &mut LoginState,
) -> Option<Result<Client, ClientError>> {
    let ticket = state.ticket.as_ref()?;
    match Client::resume(target, &plan.user, ticket, client_options(plan)).await {
        Err(e) if e.code() == Some(ErrorCode::AuthFailed) => {
            state.ticket = None;
            None
        }
        other => Some(other),
    }
}

/// One connection's login: the wrong passwords still due (removed as the server refuses
/// each), then the right one.
async fn login_attempt(
    plan: &ClientPlan,
    target: SocketAddr,
    wrong: &mut Vec<(Mistake, String)>,
    mistakes: &mut BTreeMap<Mistake, u64>,
) -> Result<Client, ClientError> {
    let mut client = Client::connect(target, client_options(plan)).await?;
    while let Some((mistake, password)) = wrong.first() {
        match client.auth(&plan.user, password.as_bytes()).await {
            Err(e) if mistake.expected(&e) => {
                *mistakes.entry(*mistake).or_insert(0) += 1;
                wrong.remove(0);
            }
            Err(e) => return Err(e),
            Ok(()) => {
                // A wrong password was accepted: that is the server's fault, not a mistake.
                return Err(ClientError::UnexpectedReply {
                    expected: "ERROR auth_failed",
                    got: Kind::AuthOk,
                });
            }
        }
    }
    client.auth(&plan.user, plan.password.as_bytes()).await?;
    Ok(client)
}

/// Logs in from `source`, retrying while the server answers RATE_LIMITED (for up to
/// 30 s: login limits are per minute).
pub async fn login(
    target: SocketAddr,
    user: &str,
    password: &str,
    source: Ipv4Addr,
) -> Result<Client, ClientError> {
    login_over(target, user, password, source, None).await
}

/// [`login`], over TLS when `tls` is given.
pub async fn login_over(
    target: SocketAddr,
    user: &str,
    password: &str,
    source: Ipv4Addr,
    tls: Option<&TlsOptions>,
) -> Result<Client, ClientError> {
    login_with(target, user, password, options(source, tls)).await
}

/// [`login`] with these client options.
pub async fn login_with(
    target: SocketAddr,
    user: &str,
    password: &str,
    opts: ClientOptions,
) -> Result<Client, ClientError> {
    let give_up = Instant::now() + LOGIN_PATIENCE;
    loop {
        match Client::login(target, user, password.as_bytes(), opts.clone()).await {
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
    /// An inbox check (`mix.read`): writes nothing.
    Read,
    /// A keepalive PING (`mix.ping`): writes nothing.
    Ping,
}

impl Op {
    fn kind(&self) -> OpKind {
        match self {
            Op::Message { .. } => OpKind::Message,
            Op::Mail { .. } => OpKind::Mail,
            Op::File { .. } => OpKind::File,
            Op::Read => OpKind::Read,
            Op::Ping => OpKind::Ping,
        }
    }

    /// What the recipient must find after the run; `None` for a read or a keepalive, which
    /// write nothing.
    fn expected(&self) -> Option<Expected> {
        let digest = |b: &[u8]| *blake3::hash(b).as_bytes();
        Some(match self {
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
            Op::Read | Op::Ping => return None,
        })
    }

    /// Carries the operation out: a write to `to` gives the item id from ACCEPTED, a read
    /// checks the inbox past `seen` and gives `None`.
    async fn run(
        &self,
        client: &mut Client,
        to: &str,
        seen: &mut u64,
    ) -> Result<Option<u64>, ClientError> {
        let id = match self {
            Op::Message { text } => client.send_message(to, text).await?,
            Op::Mail {
                subject,
                body,
                attachment,
            } => {
                let attachments: Vec<(String, Vec<u8>)> = attachment.iter().cloned().collect();
                client
                    .send_mail_with(to, subject, body, &attachments)
                    .await?
            }
            Op::File { name, data } => client.send_file_bytes(to, name, data).await?,
            Op::Read => {
                check_inbox(client, seen).await?;
                return Ok(None);
            }
            Op::Ping => {
                client.ping().await?;
                return Ok(None);
            }
        };
        Ok(Some(id))
    }
}

/// An inbox check: the page of entries above `seen` (the newest id the client has read),
/// and a FETCH of the newest of them; `seen` moves to it. An empty page is a check that
/// found nothing new, which is a success.
async fn check_inbox(client: &mut Client, seen: &mut u64) -> Result<(), ClientError> {
    let page = client.inbox_page(*seen, READ_PAGE).await?;
    if let Some(newest) = page.iter().map(|e| e.id).max().filter(|&id| id > *seen) {
        client.fetch(newest).await?;
        *seen = newest;
    }
    Ok(())
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

/// The index of the weight `x` (in [0, 1)) falls under in `mix` (normalized weights); past
/// the end, which rounding can leave, the last index with a weight above 0.
fn pick(mix: &[f64], x: f64) -> usize {
    let mut upto = 0.0;
    for (i, w) in mix.iter().enumerate() {
        upto += w;
        if x < upto && *w > 0.0 {
            return i;
        }
    }
    mix.iter().rposition(|w| *w > 0.0).unwrap_or(0)
}

/// Draws operation `k` of a client: its kind from the mix, its contents, its recipient.
fn draw(rng: &mut StdRng, load: &Legit, k: u64, users: usize, me: usize) -> (Op, usize) {
    let x: f64 = rng.gen();
    let op = match pick(&load.mix, x) {
        0 => Op::Message {
            text: text(rng, load.message_bytes),
        },
        1 => {
            let with_attachment = rng.gen_bool(0.5);
            Op::Mail {
                subject: format!("legit mail {k}"),
                body: text(rng, load.message_bytes.saturating_mul(4)),
                attachment: with_attachment
                    .then(|| (format!("attachment-{k}.bin"), bytes(rng, load.file_bytes))),
            }
        }
        2 => Op::File {
            name: format!("file-{k}.bin"),
            data: bytes(rng, load.file_bytes),
        },
        3 => Op::Read,
        _ => Op::Ping,
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
#[derive(Default)]
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
    /// Honest refusals of the client's deliberate mistakes, by kind.
    pub mistakes: BTreeMap<Mistake, u64>,
    /// The user logged in successfully at least once (before the run or during it).
    pub good_standing: bool,
    /// After that, a reply or refusal said `blocked`: the user was locked out.
    pub locked_out: bool,
}

/// Longest pause between two bursts' operations of a `bursty` client, and at most a quarter
/// of its mean interval: the burst is a user clicking through several things at once.
const BURST_GAP: Duration = Duration::from_millis(100);

/// How far a `diurnal` rate swings around its mean: from 0.2 to 1.8 times it.
const DIURNAL_SWING: f64 = 0.8;

/// When one client's operations are due, from the scenario start, in order; every pace has
/// the group's mean rate.
#[derive(Debug)]
pub struct Schedule {
    pace: Pace,
    interval: Duration,
    rate: f64,
    start: Duration,
    stop: Duration,
    /// The phase, as a fraction of one interval.
    phase: f64,
    /// The first operation's due time (steady and bursty).
    first: Duration,
    k: u64,
    rng: StdRng,
    burst_start: Duration,
    burst_len: u32,
    burst_pos: u32,
}

impl Schedule {
    /// The schedule of a client of `load` with phase `phase` (0..1, drawn by the caller
    /// from the client's own generator) and `seed` for the bursts.
    pub fn new(load: &Legit, phase: f64, seed: u64) -> Schedule {
        let interval = Duration::from_secs_f64(1.0 / load.rate_per_s);
        let first = load.start + interval.mul_f64(phase);
        let mut rng = StdRng::seed_from_u64(seed ^ PACE_SEED);
        let burst_len = rng.gen_range(2..=6);
        Schedule {
            pace: load.pace,
            interval,
            rate: load.rate_per_s,
            start: load.start,
            stop: load.stop,
            phase,
            first,
            k: 0,
            rng,
            burst_start: first,
            burst_len,
            burst_pos: 0,
        }
    }

    /// The diurnal due time of operation `k`: where the expected count of operations since
    /// the start, `rate * (t - swing * T / 2π * sin(2π t / T))`, reaches `k + phase`.
    fn diurnal(&self, k: u64) -> Option<Duration> {
        let span = self.stop.saturating_sub(self.start).as_secs_f64();
        let tau = std::f64::consts::TAU;
        let count = |t: f64| self.rate * (t - DIURNAL_SWING * span / tau * (tau * t / span).sin());
        let want = k as f64 + self.phase;
        if span <= 0.0 || want >= count(span) {
            return None;
        }
        // The count grows strictly (the rate never drops below 0.2 times the mean).
        let (mut lo, mut hi) = (0.0, span);
        for _ in 0..60 {
            let mid = (lo + hi) / 2.0;
            if count(mid) < want {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(self.start + Duration::from_secs_f64(hi))
    }
}

impl Iterator for Schedule {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let due = match self.pace {
            Pace::Steady => self.first + self.interval.mul_f64(self.k as f64),
            Pace::Bursty => {
                if self.burst_pos == self.burst_len {
                    // The next burst starts as many intervals later as the burst had
                    // operations: the same mean rate, in clumps.
                    self.burst_start += self.interval.mul_f64(f64::from(self.burst_len));
                    self.burst_len = self.rng.gen_range(2..=6);
                    self.burst_pos = 0;
                }
                let gap = BURST_GAP.min(self.interval / 4);
                let due = self.burst_start + gap * self.burst_pos;
                self.burst_pos += 1;
                due
            }
            Pace::Diurnal => self.diurnal(self.k)?,
        };
        self.k += 1;
        (due < self.stop).then_some(due)
    }
}

/// When a `stall_read_s` client stops reading: about every 10 s (7.5 to 12.5 s apart,
/// seeded), the first 2 to 10 s after the group starts.
#[derive(Debug)]
struct Stalls {
    next: Duration,
    length: Duration,
    rng: StdRng,
}

impl Stalls {
    fn new(load: &Legit, seed: u64) -> Option<Stalls> {
        let length = load.stall_read?;
        let mut rng = StdRng::seed_from_u64(seed ^ PACE_SEED ^ 0x0073_7461_6c6c);
        let next = load.start + Duration::from_secs_f64(rng.gen_range(2.0..10.0));
        Some(Stalls { next, length, rng })
    }

    /// Moves to the stall after the current one.
    fn advance(&mut self) {
        let gap = Duration::from_secs_f64(self.rng.gen_range(7.5..12.5));
        self.next += gap.max(self.length + Duration::from_secs(1));
    }
}

/// Writes a PING and a page of the inbox, then does not read for `length`, then reads both
/// replies: the server has to hold what it sent until the client reads again.
async fn stall_reading(client: &mut Client, length: Duration) -> Result<(), ClientError> {
    let ping = client.send_request(&Request::Ping).await?;
    let inbox = client
        .send_request(&Request::ListInbox {
            after: 0,
            limit: 50,
        })
        .await?;
    tokio::time::sleep(length).await;
    client.read_reply(ping).await?;
    client.read_reply(inbox).await?;
    Ok(())
}

/// Which deliberate mistake, if any, operation `k` makes instead of its drawn operation.
/// Draws from the mistake generator only when the group makes mistakes.
fn pick_mistake(rng: &mut StdRng, load: &Legit) -> Option<Mistake> {
    let total = load.stale_fetch_rate + load.wrong_id_rate + load.unknown_recipient_rate;
    if total <= 0.0 {
        return None;
    }
    let x: f64 = rng.gen();
    if x < load.stale_fetch_rate {
        Some(Mistake::StaleFetch)
    } else if x < load.stale_fetch_rate + load.wrong_id_rate {
        Some(Mistake::WrongId)
    } else if x < total {
        Some(Mistake::UnknownRecipient)
    } else {
        None
    }
}

/// What a client remembers for its mistakes: the item it deleted and will fetch again, and
/// the last item id it saw.
#[derive(Debug, Default)]
struct MistakeMemory {
    deleted: Option<u64>,
    last_id: u64,
}

/// The record kind of a mistake operation.
fn mistake_kind(m: Mistake) -> OpKind {
    match m {
        Mistake::StaleFetch | Mistake::WrongId => OpKind::Fetch,
        _ => OpKind::Message,
    }
}

/// Runs one mistake operation. `Ok(Some(m))`: the server gave the honest answer to mistake
/// `m`; `Ok(None)`: only the preparation ran (the first stale fetch deletes an item to fetch
/// later); `Err`: a failure, labelled as in `legit_errors`.
async fn run_mistake(
    client: &mut Client,
    mistake: Mistake,
    memory: &mut MistakeMemory,
    rng: &mut StdRng,
    me: &str,
    users: usize,
) -> Result<Option<Mistake>, ClientError> {
    let honest = |r: Result<(), ClientError>, m: Mistake| match r {
        Err(e) if m.expected(&e) => Ok(Some(m)),
        Err(e) => Err(e),
        Ok(()) => Err(ClientError::UnexpectedReply {
            expected: "ERROR",
            got: Kind::Ok,
        }),
    };
    match mistake {
        Mistake::StaleFetch => {
            let fetched = match memory.deleted.take() {
                Some(id) => Some(honest(client.fetch(id).await.map(drop), mistake)?),
                None => None,
            };
            // A note to oneself, deleted at once: the item the next stale fetch asks for.
            let id = client.send_message(me, "note to self").await?;
            client.delete(id).await?;
            memory.deleted = Some(id);
            memory.last_id = memory.last_id.max(id);
            Ok(fetched.flatten())
        }
        Mistake::WrongId => {
            // A digit off: near an id the client has seen, never one of the user's own
            // items for sure, so the honest answers are NOT_FOUND and PERMISSION_DENIED,
            // and a user's own item (which it may fetch) counts as honest too.
            let delta = rng.gen_range(1..=9u64);
            let id = if rng.gen_bool(0.5) {
                memory.last_id.saturating_add(delta)
            } else {
                memory.last_id.saturating_sub(delta).max(1)
            };
            match client.fetch(id).await {
                Ok(_) => Ok(Some(mistake)),
                Err(e) => honest(Err(e), mistake),
            }
        }
        Mistake::UnknownRecipient => {
            // A name no client has: past the last `legitN`, with a slip of the finger.
            let to = format!("legti{}", users + rng.gen_range(0..100usize));
            honest(client.send_message(&to, "hello?").await.map(drop), mistake)
        }
        Mistake::Typo | Mistake::StalePassword => Ok(None),
    }
}

fn record(live: &LiveCounters, slo: Duration, r: &OpRecord) {
    LiveCounters::bump(&live.legit_attempted);
    if r.delivered(slo) {
        LiveCounters::bump(&live.legit_delivered);
    } else {
        LiveCounters::bump(&live.legit_failed);
    }
}

/// Notes a failure: a `blocked` answer after the user was in good standing locks it out.
fn note_failure(run: &mut ClientRun, e: &ClientError) {
    if run.good_standing && e.code() == Some(ErrorCode::Blocked) {
        run.locked_out = true;
    }
}

/// Runs one client's open-loop schedule, starting with an already logged-in connection (or
/// none: the first operation logs in).
pub async fn run_client(plan: &ClientPlan, client: Option<Client>, ctx: &LoadContext) -> ClientRun {
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let load = &plan.load;
    let phase: f64 = rng.gen();
    let schedule = Schedule::new(load, phase, plan.seed);
    let mut stalls = Stalls::new(load, plan.seed);
    let mut mistake_rng = StdRng::seed_from_u64(plan.seed ^ MISTAKE_SEED);
    let mut memory = MistakeMemory::default();
    let mut login_state = LoginState::new(plan);
    let mut client = client;
    if let Some(c) = client.as_mut() {
        login_state.keep_ticket(c).await;
    }
    // Operations due before `load.stop`; none may start after `last_start`.
    let last_start = (ctx.t0 + load.stop + ctx.slo).min(ctx.hard_end);
    let me = plan.index;
    let mut run = ClientRun {
        index: me,
        good_standing: client.is_some(),
        client,
        ..ClientRun::default()
    };
    let mut next_login = Instant::now();
    // When the client's connection logged in, for `relogin_every` and `reconnect_every`.
    let mut logged_in_at = Instant::now();
    // Operations due before this are skipped: the client was not reading (a stall).
    let mut idle_until = Duration::ZERO;
    // The newest inbox entry an inbox check has read (`mix.read`).
    let mut seen = 0u64;
    for (k, due) in (0u64..).zip(schedule) {
        let (op, to) = draw(&mut rng, load, k, ctx.users.len(), me);
        let mistake = pick_mistake(&mut mistake_rng, load);
        if let Some(st) = stalls.as_mut() {
            if st.next <= due {
                let at = ctx.t0 + st.next;
                if at < last_start {
                    tokio::time::sleep_until(at).await;
                    if let Some(c) = run.client.as_mut().filter(|c| !c.is_closed()) {
                        let stalled =
                            tokio::time::timeout_at(ctx.hard_end, stall_reading(c, st.length))
                                .await;
                        match stalled {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => {
                                note_failure(&mut run, &e);
                                run.client = None;
                            }
                            Err(_) => run.client = None,
                        }
                    }
                }
                idle_until = st.next + st.length;
                st.advance();
            }
        }
        if due < idle_until {
            continue;
        }
        let due_at = ctx.t0 + due;
        tokio::time::sleep_until(due_at).await;
        let mut rec = OpRecord {
            kind: mistake.map_or(op.kind(), mistake_kind),
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
        if load
            .reconnect_every
            .is_some_and(|every| logged_in_at.elapsed() >= every)
        {
            // A phone changing networks: the old connection is just gone, no BYE.
            run.client = None;
        }
        if run.client.as_ref().map_or(true, Client::is_closed) {
            run.client = None;
            if Instant::now() < next_login {
                tokio::time::sleep_until(next_login.min(last_start)).await;
            }
            next_login = Instant::now() + RECONNECT_PAUSE;
            let attempt = tokio::time::timeout_at(
                ctx.hard_end,
                login_client(plan, ctx.target, &mut login_state),
            )
            .await;
            run.logins += 1;
            match attempt {
                Ok(Ok(c)) => {
                    run.client = Some(c);
                    run.good_standing = true;
                    logged_in_at = Instant::now();
                }
                Ok(Err(e)) => {
                    run.login_refusals += 1;
                    if matches!(e, ClientError::Closed)
                        || matches!(e.code(), Some(ErrorCode::Busy | ErrorCode::Blocked))
                    {
                        run.refused_at_accept = true;
                    }
                    note_failure(&mut run, &e);
                    rec.error = Some(error_label(&e));
                }
                Err(_) => {
                    run.login_refusals += 1;
                    rec.error = Some("timeout".into());
                }
            }
        }
        if let Some(client) = run.client.as_mut() {
            match mistake {
                Some(m) => {
                    let to_do = run_mistake(
                        client,
                        m,
                        &mut memory,
                        &mut mistake_rng,
                        &plan.user,
                        ctx.users.len(),
                    );
                    match tokio::time::timeout_at(ctx.hard_end, to_do).await {
                        Ok(Ok(honest)) => {
                            rec.acknowledged(due_at, ctx.slo);
                            if let Some(m) = honest {
                                *run.mistakes.entry(m).or_insert(0) += 1;
                            }
                        }
                        Ok(Err(e)) => {
                            note_failure(&mut run, &e);
                            rec.error = Some(error_label(&e));
                        }
                        Err(_) => {
                            run.client = None;
                            rec.error = Some("timeout".into());
                        }
                    }
                }
                None => {
                    let to_name = &ctx.users[to];
                    let done = op.run(client, to_name, &mut seen);
                    match tokio::time::timeout_at(ctx.hard_end, done).await {
                        Ok(Ok(item_id)) => {
                            rec.acknowledged(due_at, ctx.slo);
                            if let (Some(item_id), Some(expected)) = (item_id, op.expected()) {
                                memory.last_id = memory.last_id.max(item_id);
                                run.acked.push(Acked {
                                    from: plan.user.clone(),
                                    to,
                                    item_id,
                                    expected,
                                });
                            }
                        }
                        Ok(Err(e)) => {
                            note_failure(&mut run, &e);
                            rec.error = Some(error_label(&e));
                        }
                        Err(_) => {
                            // Cut off mid-request: the connection's state is unknown.
                            run.client = None;
                            rec.error = Some("timeout".into());
                        }
                    }
                }
            }
        }
        if load.per_command_login {
            // The command is done: the command line client says BYE and exits.
            if let Some(client) = run.client.take() {
                let _ = tokio::time::timeout_at(ctx.hard_end, client.bye()).await;
            }
        }
        record(&ctx.live, ctx.slo, &rec);
        run.records.push(rec);
    }
    for (m, n) in login_state.mistakes {
        *run.mistakes.entry(m).or_insert(0) += n;
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
///
/// The reads from each source keep to half of `frames_per_s_per_ip`, the server's
/// allowance per source: the read-back is the runner's, not a user's, and must not trip the
/// defences it measures. A real server's service time usually keeps it slower than that
/// anyway; a simulated server answers in no time at all.
pub async fn verify(
    plans: &[ClientPlan],
    runs: Vec<ClientRun>,
    target: SocketAddr,
    frames_per_s_per_ip: u32,
) -> Verification {
    let gap = Duration::from_secs_f64(2.0 / f64::from(frames_per_s_per_ip.max(1)));
    let pacers: std::collections::HashMap<Ipv4Addr, Pacer> =
        plans.iter().map(|p| (p.source, Pacer::new(gap))).collect();
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
        .map(|(i, (items, client))| {
            let plan = &plans[i];
            let pacer = pacers.get(&plan.source);
            verify_recipient(plan, items, client, target, pacer)
        });
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
    let tls = plan.tls.as_ref();
    match login_over(target, &plan.user, &plan.password, plan.source, tls).await {
        Ok(c) => Ok(c),
        Err(_) => login_over(target, &plan.user, &plan.password, CONTROL_SOURCE, tls).await,
    }
}

/// Verifies one recipient's items; returns (verified count, descriptions of lost items).
async fn verify_recipient(
    plan: &ClientPlan,
    mut items: Vec<Acked>,
    client: Option<Client>,
    target: SocketAddr,
    pacer: Option<&Pacer>,
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
            if let Some(p) = pacer {
                p.wait().await;
            }
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

/// Spaces out the reads of one source: each waits for the next free slot, `gap` apart.
struct Pacer {
    gap: Duration,
    next: std::sync::Mutex<Option<Instant>>,
}

impl Pacer {
    fn new(gap: Duration) -> Pacer {
        Pacer {
            gap,
            next: std::sync::Mutex::new(None),
        }
    }

    async fn wait(&self) {
        let at = {
            let mut next = self
                .next
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            let at = next.map_or(now, |n| n.max(now));
            *next = Some(at + self.gap);
            (at > now).then_some(at)
        };
        if let Some(at) = at {
            tokio::time::sleep_until(at).await;
        }
    }
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
            mix: [0.4, 0.25, 0.15, 0.1, 0.1],
            sources: vec![Ipv4Addr::new(127, 0, 0, 1)],
            net: ipnet::Ipv4Net::from(Ipv4Addr::new(127, 0, 0, 1)),
            message_bytes: 64,
            file_bytes: 1000,
            start: Duration::ZERO,
            stop: Duration::from_secs(1),
            relogin_every: None,
            typo_rate: 0.0,
            stale_password_retries: 0,
            stale_fetch_rate: 0.0,
            wrong_id_rate: 0.0,
            unknown_recipient_rate: 0.0,
            reconnect_every: None,
            per_command_login: false,
            behind_nat: 1,
            stall_read: None,
            pace: Pace::Steady,
            client: ClientKind::Rampart,
            name: "benign".into(),
        }
    }

    fn due_times(load: &Legit, phase: f64, seed: u64) -> Vec<Duration> {
        Schedule::new(load, phase, seed).collect()
    }

    #[test]
    fn steady_pace_is_the_old_schedule() {
        let l = load();
        let interval = Duration::from_secs_f64(0.1);
        let first = interval.mul_f64(0.37);
        let want: Vec<Duration> = (0..10)
            .map(|k| first + interval.mul_f64(k as f64))
            .collect();
        assert_eq!(due_times(&l, 0.37, 1), want);
    }

    #[test]
    fn every_pace_keeps_the_mean_rate() {
        let mut l = load();
        l.rate_per_s = 2.0;
        l.stop = Duration::from_secs(100);
        for pace in [Pace::Steady, Pace::Bursty, Pace::Diurnal] {
            l.pace = pace;
            let due = due_times(&l, 0.5, 9);
            assert!(
                (190..=210).contains(&due.len()),
                "{pace:?}: {} operations",
                due.len()
            );
            assert!(
                due.windows(2).all(|w| w[0] <= w[1]),
                "{pace:?} out of order"
            );
            assert!(due.iter().all(|d| *d < l.stop));
            assert_eq!(due, due_times(&l, 0.5, 9), "{pace:?} is seeded");
        }
        // Bursty: many gaps far shorter than the mean interval.
        l.pace = Pace::Bursty;
        let due = due_times(&l, 0.5, 9);
        let short = due
            .windows(2)
            .filter(|w| w[1] - w[0] <= Duration::from_millis(100))
            .count();
        assert!(short > due.len() / 2, "{short} short gaps");
        // Diurnal: the middle fifth of the run is far busier than the first fifth.
        l.pace = Pace::Diurnal;
        let due = due_times(&l, 0.5, 9);
        let within = |a: u64, b: u64| {
            due.iter()
                .filter(|d| **d >= Duration::from_secs(a) && **d < Duration::from_secs(b))
                .count()
        };
        assert!(
            within(40, 60) > 3 * within(0, 20),
            "{} vs {}",
            within(40, 60),
            within(0, 20)
        );
    }

    #[test]
    fn mistakes_are_drawn_at_their_rates_and_never_without_them() {
        let mut l = load();
        let mut rng = StdRng::seed_from_u64(3);
        assert!((0..100).all(|_| pick_mistake(&mut rng, &l).is_none()));
        l.stale_fetch_rate = 0.1;
        l.wrong_id_rate = 0.2;
        l.unknown_recipient_rate = 0.3;
        let mut counts = BTreeMap::new();
        for _ in 0..10_000 {
            *counts.entry(pick_mistake(&mut rng, &l)).or_insert(0) += 1;
        }
        let share = |m| f64::from(counts.get(&m).copied().unwrap_or(0)) / 10_000.0;
        assert!((share(Some(Mistake::StaleFetch)) - 0.1).abs() < 0.02);
        assert!((share(Some(Mistake::WrongId)) - 0.2).abs() < 0.02);
        assert!((share(Some(Mistake::UnknownRecipient)) - 0.3).abs() < 0.02);
        assert!((share(None) - 0.4).abs() < 0.02);
    }

    #[test]
    fn honest_answers_are_the_expected_error_codes() {
        let e = |code| ClientError::Server {
            code,
            message: String::new(),
        };
        assert!(Mistake::Typo.expected(&e(ErrorCode::AuthFailed)));
        assert!(Mistake::StalePassword.expected(&e(ErrorCode::AuthFailed)));
        assert!(Mistake::StaleFetch.expected(&e(ErrorCode::NotFound)));
        assert!(!Mistake::StaleFetch.expected(&e(ErrorCode::PermissionDenied)));
        assert!(Mistake::WrongId.expected(&e(ErrorCode::PermissionDenied)));
        assert!(Mistake::WrongId.expected(&e(ErrorCode::NotFound)));
        assert!(Mistake::UnknownRecipient.expected(&e(ErrorCode::UnknownRecipient)));
        for m in Mistake::ALL {
            assert!(!m.expected(&e(ErrorCode::Blocked)), "{m:?}");
            assert!(!m.expected(&e(ErrorCode::RateLimited)), "{m:?}");
            assert!(!m.expected(&ClientError::Timeout), "{m:?}");
        }
    }

    #[test]
    fn login_mistakes_stale_first_then_typos_at_their_rate() {
        let scenario = |extra: &str| {
            let text = format!("name = \"t\"\nduration_s = 3\n[[legit]]\nclients = 1\n{extra}");
            let path = std::path::Path::new("t.toml");
            crate::scenario::ScenarioSpec::from_toml_str(&text, path)
                .and_then(|s| s.check(path))
                .map(|s| plan(&s).remove(0))
        };
        let Ok(p) = scenario("stale_password_retries = 2\ntypo_rate = 1\n") else {
            panic!("scenario rejected");
        };
        let mut state = LoginState::new(&p);
        let first = state.wrong_passwords(&p.password);
        let kinds: Vec<Mistake> = first.iter().map(|(m, _)| *m).collect();
        assert_eq!(
            kinds,
            vec![
                Mistake::StalePassword,
                Mistake::StalePassword,
                Mistake::Typo
            ]
        );
        assert!(first.iter().all(|(_, pw)| *pw != p.password));
        // Later logins: no stale password any more, a typo every time at rate 1.
        let second = state.wrong_passwords(&p.password);
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].0, Mistake::Typo);
        let Ok(plain) = scenario("") else {
            panic!("scenario rejected");
        };
        let mut state = LoginState::new(&plain);
        assert!(state.wrong_passwords(&plain.password).is_empty());
    }

    #[test]
    fn a_typo_differs_in_one_character() {
        let mut rng = StdRng::seed_from_u64(5);
        for pw in ["legit-0123456789abcdef", "x", "xxxx"] {
            let t = typo(&mut rng, pw);
            assert_eq!(t.len(), pw.len());
            assert_eq!(t.chars().zip(pw.chars()).filter(|(a, b)| a != b).count(), 1);
        }
    }

    #[test]
    fn stalls_come_about_every_ten_seconds() {
        let mut l = load();
        l.stop = Duration::from_secs(100);
        assert!(Stalls::new(&l, 1).is_none());
        l.stall_read = Some(Duration::from_secs(2));
        let Some(mut st) = Stalls::new(&l, 1) else {
            panic!("no stalls");
        };
        let mut times = vec![st.next];
        for _ in 0..8 {
            st.advance();
            times.push(st.next);
        }
        assert!(times[0] >= Duration::from_secs(2) && times[0] < Duration::from_secs(10));
        for w in times.windows(2) {
            let gap = w[1] - w[0];
            assert!(gap >= Duration::from_millis(7500) && gap < Duration::from_millis(12500));
        }
    }

    #[test]
    fn segmented_groups_get_segmented_options() {
        let mut l = load();
        let mut p = ClientPlan {
            index: 0,
            user: "legit0".into(),
            password: "pw".into(),
            source: Ipv4Addr::new(127, 0, 0, 1),
            load: l.clone(),
            seed: 4,
            tls: None,
        };
        assert_eq!(client_options(&p), options(p.source, None));
        l.client = ClientKind::Segmented;
        p.load = l;
        let o = client_options(&p);
        assert_eq!(o.segmented, Some(4 ^ SEGMENT_SEED));
        assert_eq!(o.upload_window, 2);
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
                        Op::Read | Op::Ping => assert_eq!(op.expected(), None),
                    }
                    (op.kind(), to, op.expected())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(kinds(7), kinds(7));
        assert_ne!(kinds(7), kinds(8));
        let all = kinds(7);
        for k in [
            OpKind::Message,
            OpKind::Mail,
            OpKind::File,
            OpKind::Read,
            OpKind::Ping,
        ] {
            assert!(
                all.iter().any(|(kind, _, _)| *kind == k),
                "{k:?} never drawn"
            );
        }
    }

    #[test]
    fn pick_finds_the_weight_and_skips_empty_ones() {
        let mix = [0.5, 0.0, 0.25, 0.0, 0.25];
        assert_eq!(pick(&mix, 0.0), 0);
        assert_eq!(pick(&mix, 0.5), 2);
        assert_eq!(pick(&mix, 0.74), 2);
        assert_eq!(pick(&mix, 0.75), 4);
        // Past the end (rounding): the last weight above 0.
        assert_eq!(pick(&mix, 1.0), 4);
        assert_eq!(pick(&[0.5, 0.5, 0.0, 0.0, 0.0], 1.0), 1);
    }

    #[test]
    fn a_single_user_writes_to_itself() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(draw(&mut rng, &load(), 0, 1, 0).1, 0);
    }
}
