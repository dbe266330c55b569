//! tamper: a logged-in user going after someone else's data. Each slot repeats a cycle:
//!
//! 1. **Main session** (logged in with the attack account, its AUTH frame's bytes kept):
//!    FETCH, DOWNLOAD (parts 0 and 1) and DELETE of the victim's item ids and their
//!    neighbours, and of extreme ids; uploads named with path traversal, absolute paths, NUL,
//!    control characters and SQL metacharacters, delivered to itself and fetched back to check
//!    the name was sanitized; SQL metacharacters in every string field (recipients, texts,
//!    subjects, bodies); a message whose text claims to come from the victim, fetched back to
//!    check the sender is still the session's user; AUTH as the victim (and as itself) on the
//!    authenticated session; and last, the "send 1 instead of 0" frame: a FETCH of the
//!    victim's item with a flag bit set.
//! 2. **Victim logins**: a fresh connection tries AUTH as the victim with SQL-injection
//!    passwords, and AUTH with SQL-injection user names.
//! 3. **Replay**: the main session's AUTH frame, byte for byte, on a new connection, then the
//!    victim's items requested again.
//! 4. **Flags**: FETCHes with other flag bits (0x0002, 0x8000, 0xFFFF) on fresh, unauthenticated
//!    connections.
//!
//! Every byte received is scanned for the canary; besides, an ITEM or DATA for one of the
//! victim's ids, an OK to deleting one, or an AUTH_OK as the victim counts as a leak. Only
//! items the attacker itself created are ever deleted besides the victim's, so legitimate
//! items sent to the attack account are left alone.

use std::sync::Arc;
use std::time::Duration;

use crate::sim::net::{ConnRead, ConnWrite};
use bytes::Bytes;
use rand::rngs::StdRng;
use tokio::time::Instant;

use super::canary::{Got, Inbox};
use super::run::{bump, run_slots, Counts, Env};
use super::wire::{raw_frame, request_bytes, Ids, REPLY_LIMITS};
use crate::protocol::{ErrorCode, ItemBody, Kind, Password, Reply, Request};

/// Longest wait for one reply (an ACCEPTED waits for an fsync).
const REPLY_WAIT: Duration = Duration::from_secs(10);

/// Pause between cycles.
const CYCLE_PAUSE: Duration = Duration::from_millis(200);

/// File names that try to escape the blob store or confuse whoever saves the file.
const EVIL_NAMES: [&str; 12] = [
    "../../etc/passwd",
    "/etc/passwd",
    "..\\..\\windows\\system32\\config\\sam",
    "C:\\boot.ini",
    "a\0b.txt",
    "blobs/../../rampart.db",
    "....//....//etc/shadow",
    "..",
    "CON",
    "report\u{202E}gpj.exe",
    "name\r\nX-Injected: 1",
    "x'; DROP TABLE items;--.txt",
];

/// SQL metacharacters, each at most 32 bytes so it fits a user-name field.
const SQLI: [&str; 8] = [
    "' OR '1'='1",
    "'; DROP TABLE items;--",
    "\" OR \"\"=\"",
    "victim'--",
    "1; SELECT * FROM users",
    "' UNION SELECT 1,2,3--",
    "%' OR 1=1 --",
    "\\'; --",
];

/// Passwords that would let a login through a query built by string concatenation.
const SQLI_PASSWORDS: [&str; 8] = [
    "' OR '1'='1",
    "' OR 1=1--",
    "\" OR \"\"=\"",
    "admin'--",
    "' UNION SELECT password_hash FROM users--",
    "",
    "\0",
    "*",
];

/// An answer to one request.
enum Answer {
    Reply(Reply),
    /// A frame that does not decode as a reply.
    Undecodable,
    /// The connection ended or the wait ran out.
    Ended(Got),
}

impl Answer {
    fn code(&self) -> Option<ErrorCode> {
        match self {
            Answer::Reply(Reply::Error { code, .. }) => Some(*code),
            _ => None,
        }
    }

    fn ended(&self) -> bool {
        matches!(self, Answer::Ended(_))
    }
}

/// One connection, used request by request.
struct Conn {
    rd: ConnRead,
    wr: ConnWrite,
    inbox: Inbox,
    ids: Ids,
    opened: Instant,
    source: std::net::IpAddr,
}

impl Conn {
    async fn open(env: &Env, rng: &mut StdRng) -> Option<Conn> {
        let (stream, source) = env.open_next(rng).await?;
        let (rd, wr) = stream.into_split();
        Some(Conn {
            rd,
            wr,
            inbox: Inbox::new(source),
            ids: Ids::new(),
            opened: Instant::now(),
            source,
        })
    }

    /// Marks this connection's source as attacking from its next frame on (the main
    /// session's own login before it is an honest one).
    fn attacking(&self, env: &Env) {
        env.attacking(self.source);
    }

    /// Writes `bytes` (one frame) and reads one reply.
    async fn raw(&mut self, env: &Env, bytes: &[u8]) -> Answer {
        if env.write(&mut self.wr, bytes, 1).await.is_err() {
            return Answer::Ended(Got::Reset);
        }
        match self.inbox.next(&mut self.rd, env, REPLY_WAIT).await {
            Got::Frame(f) => match Reply::decode(&f, &REPLY_LIMITS) {
                Ok(r) => Answer::Reply(r),
                Err(_) => Answer::Undecodable,
            },
            end => Answer::Ended(end),
        }
    }

    async fn call(&mut self, env: &Env, req: &Request) -> Answer {
        let bytes = request_bytes(self.ids.next(), req);
        self.raw(env, &bytes).await
    }

    /// Reads whatever the server still sends until it closes (up to `wait`).
    async fn settle(&mut self, env: &Env, wait: Duration) -> Got {
        loop {
            match self.inbox.next(&mut self.rd, env, wait).await {
                Got::Frame(_) => continue,
                end => return end,
            }
        }
    }

    async fn close(mut self, env: &Env, end: Got, rng: &mut StdRng) {
        self.inbox.finish(env, &end);
        let opened = self.opened;
        drop(self);
        env.pace(opened, rng).await;
    }
}

fn auth(user: &str, password: &str) -> Request {
    Request::Auth {
        user: user.to_string(),
        password: Password(Bytes::copy_from_slice(password.as_bytes())),
    }
}

/// What a slot keeps between cycles.
struct Memory {
    /// The main session's AUTH frame, as sent.
    auth_frame: Option<Bytes>,
    /// Whether the message to the victim claiming to be from the victim was sent.
    wrote_to_victim: bool,
}

pub(crate) async fn run(env: Arc<Env>) {
    run_slots(&env, slot_loop).await;
}

async fn slot_loop(env: Arc<Env>, slot: usize) {
    let mut rng = env.rng(slot as u64);
    let mut mem = Memory {
        auth_frame: None,
        wrote_to_victim: false,
    };
    while env.live() {
        main_session(&env, &mut rng, &mut mem).await;
        victim_logins(&env, &mut rng).await;
        replay(&env, &mut rng, &mem).await;
        flags(&env, &mut rng).await;
        env.merge(&Counts::from([("tamper cycles", 1)]));
        if !env.sleep(CYCLE_PAUSE).await {
            break;
        }
    }
}

/// The ids worth trying: the victim's, their neighbours, and extremes.
fn target_ids(env: &Env) -> Vec<u64> {
    let mut ids: Vec<u64> = Vec::new();
    for &v in &env.canary.victim_item_ids {
        for d in -2i64..=2 {
            if let Some(id) = v.checked_add_signed(d) {
                ids.push(id);
            }
        }
    }
    ids.extend([0, 1, 2, 3, u64::MAX, u64::MAX / 2, 1 << 63]);
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn is_victims(env: &Env, id: u64) -> bool {
    env.canary.victim_item_ids.contains(&id)
}

async fn main_session(env: &Env, rng: &mut StdRng, mem: &mut Memory) {
    if !env.logins.acquire(env).await {
        return;
    }
    let Some(mut c) = Conn::open(env, rng).await else {
        return;
    };
    let me = env.account.0.clone();
    let auth_bytes = request_bytes(c.ids.next(), &auth(&me, &env.account.1));
    match c.raw(env, &auth_bytes).await {
        Answer::Reply(Reply::AuthOk { .. }) => mem.auth_frame = Some(auth_bytes),
        Answer::Ended(end) => return c.close(env, end, rng).await,
        _ => {
            // Not logged in (rate limited): the rest of the session still tries, and is
            // refused as unauthenticated.
        }
    }
    let end = main_steps(env, &mut c, &me, mem).await;
    c.close(env, end, rng).await;
}

/// The main session's steps; returns how the connection ended.
async fn main_steps(env: &Env, c: &mut Conn, me: &str, mem: &mut Memory) -> Got {
    let mut counts = Counts::new();
    c.attacking(env);
    // Other users' ids: read, download, delete.
    for id in target_ids(env) {
        let fetched = c.call(env, &Request::Fetch { item_id: id }).await;
        if let Answer::Reply(Reply::Item(_)) = &fetched {
            if is_victims(env, id) {
                env.leak(format!("FETCH of the victim's item {id} returned it"));
            }
        }
        if let Answer::Ended(end) = fetched {
            return end;
        }
        for part in [0u16, 1] {
            let req = Request::Download {
                item_id: id,
                part,
                offset: 0,
                max_len: 1 << 20,
            };
            match c.call(env, &req).await {
                Answer::Reply(Reply::Data { .. }) if is_victims(env, id) => {
                    env.leak(format!("DOWNLOAD of the victim's item {id} returned data"));
                }
                Answer::Ended(end) => return end,
                _ => {}
            }
        }
        // Delete only what is not ours: another user's item, or an id that does not exist.
        if matches!(
            fetched.code(),
            Some(ErrorCode::PermissionDenied | ErrorCode::NotFound)
        ) || is_victims(env, id)
        {
            match c.call(env, &Request::Delete { item_id: id }).await {
                Answer::Reply(Reply::Ok) => env.leak(format!(
                    "DELETE of item {id}, which FETCH said was not ours, succeeded"
                )),
                Answer::Ended(end) => return end,
                _ => {}
            }
        }
    }
    // Evil file names, delivered to ourselves and read back.
    let names = EVIL_NAMES.iter().chain(SQLI.iter());
    for name in names {
        match upload_named(env, c, me, name, &mut counts).await {
            Ok(()) => {}
            Err(end) => {
                env.merge(&counts);
                return end;
            }
        }
    }
    // SQL metacharacters in every string field.
    for s in SQLI {
        for req in [
            Request::SendMessage {
                to: s.to_string(),
                text: s.to_string(),
            },
            Request::SendMail {
                to: s.to_string(),
                subject: s.to_string(),
                body: s.to_string(),
                attachments: Vec::new(),
            },
        ] {
            let answer = c.call(env, &req).await;
            if let Answer::Reply(Reply::Accepted { item_id }) = answer {
                env.note(format!(
                    "a message to the user {s:?} was accepted as item {item_id}"
                ));
                bump(&mut counts, "sql: odd recipient accepted");
            }
            if let Answer::Ended(end) = answer {
                env.merge(&counts);
                return end;
            }
        }
        // Stored and returned literally?
        let text = format!("sql {s}");
        if let Err(end) = send_and_check(env, c, me, &text, me, &mut counts).await {
            env.merge(&counts);
            return end;
        }
    }
    // A forged sender: the text claims the victim wrote it; the item must say we did.
    let forged = format!(
        "From: {v}\r\nSender: {v}\r\nX-Original-From: {v}\r\n\r\nplease send me your password",
        v = env.canary.victim
    );
    if let Err(end) = send_and_check(env, c, me, &forged, me, &mut counts).await {
        env.merge(&counts);
        return end;
    }
    if !mem.wrote_to_victim {
        mem.wrote_to_victim = true;
        let req = Request::SendMessage {
            to: env.canary.victim.clone(),
            text: format!(
                "From: {}\r\n\r\n(this message was written by the tamper attacker)",
                env.canary.victim
            ),
        };
        if let Answer::Ended(end) = c.call(env, &req).await {
            env.merge(&counts);
            return end;
        }
    }
    // Re-authentication on an authenticated session.
    for pw in ["' OR '1'='1", "x"] {
        match c.call(env, &auth(&env.canary.victim, pw)).await {
            Answer::Reply(Reply::AuthOk { user }) => env.leak(format!(
                "re-AUTH on an authenticated session made it {user}'s"
            )),
            Answer::Ended(end) => {
                env.merge(&counts);
                return end;
            }
            _ => {}
        }
    }
    let _ = c.call(env, &auth(me, &env.account.1)).await;
    // Last: "send 1 instead of 0": a flag bit on a FETCH of the victim's item. The server
    // must reject the header and close.
    let victim_item = env.canary.victim_item_ids.first().copied().unwrap_or(1);
    let id = c.ids.next();
    let frame = raw_frame(Kind::Fetch, id, 0x0001, &victim_item.to_be_bytes());
    let answer = c.raw(env, &frame).await;
    check_flagged(env, &answer, victim_item, 0x0001);
    env.merge(&counts);
    if answer.ended() {
        return Got::Closed;
    }
    c.settle(env, Duration::from_millis(500)).await
}

fn check_flagged(env: &Env, answer: &Answer, id: u64, flags: u16) {
    match answer {
        Answer::Reply(Reply::Item(_)) | Answer::Reply(Reply::Data { .. }) => env.leak(format!(
            "a FETCH of item {id} with flags {flags:#06x} was answered with the item"
        )),
        Answer::Reply(Reply::Error {
            code: ErrorCode::BadFrame,
            ..
        }) => env.merge(&Counts::from([("flags rejected", 1)])),
        _ => env.merge(&Counts::from([("flags: other answer", 1)])),
    }
}

/// Sends `text` to `to` and, if it was to ourselves, fetches it back: the sender must be the
/// session's user and the text must come back unchanged. Then deletes it.
async fn send_and_check(
    env: &Env,
    c: &mut Conn,
    me: &str,
    text: &str,
    to: &str,
    counts: &mut Counts,
) -> Result<(), Got> {
    let req = Request::SendMessage {
        to: to.to_string(),
        text: text.to_string(),
    };
    let item_id = match c.call(env, &req).await {
        Answer::Reply(Reply::Accepted { item_id }) => item_id,
        Answer::Ended(end) => return Err(end),
        _ => return Ok(()),
    };
    match c.call(env, &Request::Fetch { item_id }).await {
        Answer::Reply(Reply::Item(view)) => {
            if view.from != me {
                bump(counts, "forged sender accepted");
                env.note(format!(
                    "item {item_id} sent by {me} shows sender {:?}",
                    view.from
                ));
            } else {
                bump(counts, "sender taken from the session");
            }
            if !matches!(&view.body, ItemBody::Message { text: t } if t == text) {
                bump(counts, "text changed in storage");
                env.note(format!("item {item_id}'s text came back changed"));
            }
        }
        Answer::Ended(end) => return Err(end),
        _ => {}
    }
    match c.call(env, &Request::Delete { item_id }).await {
        Answer::Ended(end) => Err(end),
        _ => Ok(()),
    }
}

/// Uploads 5 bytes under `name`, delivers them to ourselves, fetches the item and checks the
/// name came back sanitized, then deletes it.
async fn upload_named(
    env: &Env,
    c: &mut Conn,
    me: &str,
    name: &str,
    counts: &mut Counts,
) -> Result<(), Got> {
    const DATA: &[u8] = b"owned";
    let begin = Request::UploadBegin {
        name: name.to_string(),
        size: DATA.len() as u64,
    };
    let upload_id = match c.call(env, &begin).await {
        Answer::Reply(Reply::UploadReady { upload_id, .. }) => upload_id,
        Answer::Ended(end) => return Err(end),
        _ => return Ok(()),
    };
    let steps = [
        Request::UploadChunk {
            upload_id,
            offset: 0,
            data: Bytes::from_static(DATA),
        },
        Request::UploadEnd {
            upload_id,
            digest: *blake3::hash(DATA).as_bytes(),
        },
    ];
    for req in &steps {
        match c.call(env, req).await {
            Answer::Reply(Reply::Error { .. }) | Answer::Undecodable => return Ok(()),
            Answer::Ended(end) => return Err(end),
            Answer::Reply(_) => {}
        }
    }
    let send = Request::SendFile {
        to: me.to_string(),
        upload_id,
    };
    let item_id = match c.call(env, &send).await {
        Answer::Reply(Reply::Accepted { item_id }) => item_id,
        Answer::Ended(end) => return Err(end),
        _ => return Ok(()),
    };
    match c.call(env, &Request::Fetch { item_id }).await {
        Answer::Reply(Reply::Item(view)) => {
            if let ItemBody::File(att) = &view.body {
                if is_unsafe_name(&att.name) {
                    bump(counts, "unsanitized file name");
                    env.note(format!(
                        "file name {name:?} came back unsanitized as {:?}",
                        att.name
                    ));
                } else {
                    bump(counts, "file name sanitized");
                }
            }
        }
        Answer::Ended(end) => return Err(end),
        _ => {}
    }
    match c.call(env, &Request::Delete { item_id }).await {
        Answer::Ended(end) => Err(end),
        _ => Ok(()),
    }
}

/// A name that could escape a directory or hide its real extension.
fn is_unsafe_name(name: &str) -> bool {
    name.contains(['/', '\\'])
        || name == ".."
        || name == "."
        || name.is_empty()
        || name.chars().any(|c| c.is_control() || c == '\u{202E}')
}

async fn victim_logins(env: &Env, rng: &mut StdRng) {
    let Some(mut c) = Conn::open(env, rng).await else {
        return;
    };
    c.attacking(env);
    let victim = env.canary.victim.clone();
    let mut end = Got::Timeout;
    let attempts = SQLI_PASSWORDS
        .iter()
        .map(|pw| (victim.clone(), (*pw).to_string()))
        .chain(SQLI.iter().map(|u| ((*u).to_string(), "x".to_string())));
    for (user, pw) in attempts {
        match c.call(env, &auth(&user, &pw)).await {
            Answer::Reply(Reply::AuthOk { user: who }) => {
                env.leak(format!(
                    "AUTH as {user:?} with an injection password logged in as {who}"
                ));
                break;
            }
            Answer::Ended(e) => {
                end = e;
                break;
            }
            _ => {}
        }
    }
    c.close(env, end, rng).await;
}

async fn replay(env: &Env, rng: &mut StdRng, mem: &Memory) {
    let Some(frame) = mem.auth_frame.clone() else {
        return;
    };
    if !env.logins.acquire(env).await {
        return;
    }
    let Some(mut c) = Conn::open(env, rng).await else {
        return;
    };
    c.attacking(env);
    let mut end = Got::Timeout;
    let replayed = c.raw(env, &frame).await;
    if let Answer::Ended(e) = replayed {
        return c.close(env, e, rng).await;
    }
    env.merge(&Counts::from([("auth frames replayed", 1)]));
    for &id in &env.canary.victim_item_ids {
        match c.call(env, &Request::Fetch { item_id: id }).await {
            Answer::Reply(Reply::Item(_)) => {
                env.leak(format!(
                    "after a replayed AUTH, FETCH of the victim's item {id} returned it"
                ));
            }
            Answer::Ended(e) => {
                end = e;
                break;
            }
            _ => {}
        }
    }
    // The same frame again on the now authenticated session.
    if !matches!(end, Got::Closed | Got::Reset | Got::Halted) {
        if let Answer::Ended(e) = c.raw(env, &frame).await {
            end = e;
        }
    }
    c.close(env, end, rng).await;
}

async fn flags(env: &Env, rng: &mut StdRng) {
    let victim_item = env.canary.victim_item_ids.first().copied().unwrap_or(1);
    for flags in [0x0002u16, 0x8000, 0xFFFF] {
        let Some(mut c) = Conn::open(env, rng).await else {
            return;
        };
        c.attacking(env);
        let frame = raw_frame(Kind::Fetch, 1, flags, &victim_item.to_be_bytes());
        let answer = c.raw(env, &frame).await;
        check_flagged(env, &answer, victim_item, flags);
        let end = match answer {
            Answer::Ended(e) => e,
            _ => c.settle(env, Duration::from_millis(500)).await,
        };
        c.close(env, end, rng).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::testing::{bench, config, TestResult};

    #[test]
    fn unsafe_names() {
        for bad in ["../x", "a/b", "a\\b", "..", "", "a\0b", "x\u{202E}y"] {
            assert!(is_unsafe_name(bad), "{bad:?}");
        }
        for good in ["passwd", "boot.ini", "report.pdf", "_CON"] {
            assert!(!is_unsafe_name(good), "{good:?}");
        }
    }

    #[tokio::test]
    async fn tamper_is_denied_everywhere_and_leaks_nothing() -> TestResult {
        let mut cfg = config();
        // Let every step run instead of being blocked after the first denials.
        cfg.firewall.enabled = false;
        let b = bench(cfg).await?;
        let (report, env) = b
            .run_env("kind = \"tamper\"\nsources = \"127.0.13.0/30\"\n", 2.0)
            .await?;
        assert_eq!(report.canary_leaks, 0, "{report:?}");
        assert!(env.count("permission_denied") >= 4, "{report:?}");
        assert!(env.count("file name sanitized") >= 10, "{report:?}");
        assert_eq!(env.count("unsanitized file name"), 0, "{report:?}");
        assert!(
            env.count("sender taken from the session") >= 2,
            "{report:?}"
        );
        assert_eq!(env.count("forged sender accepted"), 0, "{report:?}");
        assert!(env.count("unknown_recipient") >= 8, "{report:?}");
        assert!(env.count("bad_request") >= 2, "{report:?}");
        assert!(env.count("flags rejected") >= 1, "{report:?}");
        assert!(env.count("auth_failed") >= 1, "{report:?}");
        assert!(env.count("auth frames replayed") >= 1, "{report:?}");
        // Every source it used sent an attacking frame, after the main session's login.
        let first = env.obs.first_attack.lock().map_err(|_| "poisoned")?.clone();
        for ip in &report.sources_used {
            let at = first.get(ip).ok_or(format!("{ip}: no first attack"))?;
            assert!(*at <= Duration::from_secs(3), "{ip}: {at:?}");
        }
        // The victim's items are all still there.
        let store = b.handle.server().store();
        let victim = store.user_id("victim")?.ok_or("no victim")?;
        for &id in &b.canary.victim_item_ids {
            assert!(store.item(victim, id)?.is_some(), "item {id} gone");
        }
        b.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn tamper_is_blocked_by_the_firewall() -> TestResult {
        let b = bench(config()).await?;
        let report = b
            .run("kind = \"tamper\"\nsources = \"127.0.13.8/32\"\n", 1.5)
            .await?;
        assert_eq!(report.canary_leaks, 0, "{report:?}");
        assert!(report.refused >= 1, "{report:?}");
        b.stop().await;
        Ok(())
    }
}
