//! Server configuration: every limit, timeout and rate, read from TOML and checked.
//!
//! [`Config`] is what serde reads; [`Config::check`] validates ranges and cross-field rules and
//! names the offending key. [`Config::from_toml_str`] and [`Config::load`] both check, so a
//! `Config` obtained from them is ready to run. `rampart.example.toml` at the crate root lists
//! every key with its default and parses to exactly [`Config::default`].
//!
//! Every table uses `deny_unknown_fields`, so a misspelt key is an error rather than a silently
//! ignored setting that leaves a defence at its default.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

use crate::protocol::limits::HARD_MAX_FRAME;

pub mod reload;

/// Bytes reserved in a frame for the fields that travel next to a data chunk (request id,
/// upload id, offset, flags). 64 is generous: those fields take about 30 bytes today.
pub const CHUNK_HEADROOM_BYTES: u32 = 64;

/// Smallest accepted `limits.max_frame_bytes`: below one 4 KiB page, a login or an error
/// reply with its message might no longer fit in one frame.
pub const MIN_FRAME_BYTES: u32 = 4096;

/// Longest accepted timeout. A day is far beyond any sane value (a larger number is usually
/// seconds typed as milliseconds) and keeps `Instant + timeout` far away from overflow.
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;

/// Longest accepted runtime block, one year. Longer belongs in the static deny list, and the
/// cap keeps deadline arithmetic far from overflow.
pub const MAX_BLOCK_SECS: u64 = 365 * 24 * 3600;

/// Largest `limits.max_inbox_page`: the protocol carries the page size as a u16.
pub const MAX_INBOX_PAGE: u32 = u16::MAX as u32;

/// argon2's own bound (RFC 9106, section 3.1): at least 8 KiB of memory per lane.
const ARGON2_MIN_KIB_PER_LANE: u32 = 8;

// Upper bounds. Each keeps a value that parses from being one that kills or stalls the
// server (an allocation that aborts, a start-up that hashes for hours, a thread per login),
// and sits far above any sensible setting so that no real deployment meets it.

/// Largest `limits.max_file_bytes`, 16 TiB: the largest file ext4 can hold.
pub const MAX_FILE_BYTES: u64 = 1 << 44;

/// Largest `limits.user_quota_bytes`, 1 PiB: usage is kept as a signed 64-bit number in
/// SQLite, so the quota must stay far below `i64::MAX`.
pub const MAX_USER_QUOTA_BYTES: u64 = 1 << 50;

/// Largest `limits.max_open_uploads`: each staged upload holds an open file.
pub const MAX_OPEN_UPLOADS: u16 = 64;

/// Largest `limits.max_connections`, Linux's default `fs.nr_open`: no process can hold more
/// descriptors than this anyway.
pub const MAX_CONNECTIONS: u32 = 1 << 20;

/// Largest `limits.outbound_queue_bytes`, four maximum frames per connection.
pub const MAX_OUTBOUND_QUEUE_BYTES: u32 = 4 * HARD_MAX_FRAME;

/// Largest `limits.max_tracked_sources`: about 1 GB of limiter state at ~100 bytes a key.
pub const MAX_TRACKED_SOURCES: u32 = 10_000_000;

/// Largest `timeouts.frame_min_rate_bytes_per_s`, 10 Gbit/s: a higher minimum would cut
/// clients on any real link.
pub const MAX_FRAME_MIN_RATE_BYTES_PER_S: u64 = 1_250_000_000;

/// Largest rate, burst, strike count, firewall threshold or weight: a billion per second is
/// already "no limit", and the cap keeps quota and score arithmetic far from overflow.
pub const MAX_RATE: u32 = 1_000_000_000;

/// Largest `auth.argon2_memory_kib`, 1 GiB: a verifier refuses stored hashes asking for
/// more, so a larger cost would lock every user out (and 4 GiB aborted on allocation).
pub const MAX_ARGON2_MEMORY_KIB: u32 = 1 << 20;

/// Largest `auth.argon2_iterations`. RFC 9106 recommends 1 to 3 passes, OWASP up to 5.
pub const MAX_ARGON2_ITERATIONS: u32 = 64;

/// Largest `auth.argon2_memory_kib` x `auth.argon2_iterations`, in KiB passes (4 GiB):
/// a few seconds of one core per login. The server hashes once at start-up and per login, so
/// a million passes hung start-up.
pub const MAX_ARGON2_WORK_KIB: u64 = 1 << 22;

/// Largest `auth.argon2_parallelism`: lanes beyond the cores only cost memory.
pub const MAX_ARGON2_PARALLELISM: u32 = 64;

/// Largest `auth.login_workers`: each is a thread holding its own argon2 buffer.
pub const MAX_LOGIN_WORKERS: u32 = 256;

/// Longest `auth.ticket_ttl_s`, 30 days: a resume ticket is a bearer credential, and a
/// stolen one should not outlive a month without a password change.
pub const MAX_TICKET_TTL_S: u64 = 30 * 24 * 3600;

/// Largest `auth.login_workers` x `auth.argon2_memory_kib`, in KiB (8 GiB): the memory the
/// verification threads hold between them.
pub const MAX_LOGIN_MEMORY_KIB: u64 = 8 << 20;

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        /// The file that was being read.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The text is not valid TOML or does not fit the schema (unknown key, wrong type). The
    /// message is toml's own, which names the key and shows the line.
    #[error("config parse error: {0}")]
    Parse(String),
    /// A value is out of range or contradicts another value.
    #[error("config key {key}: {reason}")]
    Invalid {
        /// Dotted key, e.g. `limits.max_chunk_bytes`.
        key: &'static str,
        /// What is wrong with it, including the value that was given.
        reason: String,
    },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// Fails unless `lo <= value <= hi`, naming the key and the value.
fn in_range<T: PartialOrd + fmt::Display>(
    key: &'static str,
    value: T,
    lo: T,
    hi: T,
) -> Result<(), ConfigError> {
    if value < lo || value > hi {
        return Err(invalid(
            key,
            format!("must be between {lo} and {hi}, got {value}"),
        ));
    }
    Ok(())
}

/// Fails unless `value <= hi`, naming the key and the value.
fn at_most<T: PartialOrd + fmt::Display>(
    key: &'static str,
    value: T,
    hi: T,
) -> Result<(), ConfigError> {
    if value > hi {
        return Err(invalid(key, format!("must be at most {hi}, got {value}")));
    }
    Ok(())
}

/// Fails unless `1 <= value <= hi`, naming the key and the value.
fn one_to<T: PartialOrd + From<u8> + fmt::Display + Copy>(
    key: &'static str,
    value: T,
    hi: T,
) -> Result<(), ConfigError> {
    at_least_one(key, value)?;
    at_most(key, value, hi)
}

/// Fails unless `value >= 1`, naming the key.
fn at_least_one<T: PartialOrd + From<u8> + fmt::Display>(
    key: &'static str,
    value: T,
) -> Result<(), ConfigError> {
    if value < T::from(1) {
        return Err(invalid(key, format!("must be at least 1, got {value}")));
    }
    Ok(())
}

/// toml's error as one line: `line L column C: message` (its own Display spans several
/// lines with a code excerpt, and command-line errors must be one line).
fn one_line(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    let Some(span) = e.span() else {
        return message;
    };
    let before = text.get(..span.start).unwrap_or("");
    let line_no = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    // toml's message does not always name the key (a wrong type does not): name it from the
    // offending line and the table header above it.
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    let table = text
        .lines()
        .take(line_no - 1)
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .map(|t| t.trim_matches(['[', ']']).trim().to_string())
        })
        .last();
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string());
    let place = match (table, key) {
        (Some(t), Some(k)) => format!(", key {t}.{k}"),
        (None, Some(k)) => format!(", key {k}"),
        _ => String::new(),
    };
    format!("line {line_no} column {column}{place}: {message}")
}

/// The whole server configuration. Build it with [`Config::from_toml_str`] or
/// [`Config::load`], which check it; a hand-built value should go through [`Config::check`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Sizes, counts and connection caps.
    pub limits: LimitsConfig,
    /// Timeouts and time budgets.
    pub timeouts: TimeoutsConfig,
    /// Rate limits.
    pub rates: RatesConfig,
    /// Static allow and deny lists and runtime blocking.
    pub ip: IpConfig,
    /// Password hashing and login concurrency.
    pub auth: AuthConfig,
    /// Rule-based blocking of misbehaving sources.
    pub firewall: FirewallConfig,
    /// Activity recording.
    pub activity: ActivityConfig,
    /// Disk space.
    pub storage: StorageConfig,
    /// Where users and items live: SQLite in the data directory, or PostgreSQL.
    pub store: StoreConfig,
    /// TLS on the protocol port.
    pub tls: TlsConfig,
    /// The Prometheus metrics endpoint.
    pub metrics: MetricsConfig,
}

impl Config {
    /// Parses TOML text and checks the result. Missing keys keep their defaults.
    pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(s).map_err(|e| ConfigError::Parse(one_line(s, &e)))?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Reads a TOML file and checks it. Parse errors are prefixed with the file's path.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|e| {
            ConfigError::Parse(format!("{}: {}", path.display(), one_line(&text, &e)))
        })?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Checks ranges and cross-field rules. The error names the first offending key.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.limits.check()?;
        self.timeouts.check()?;
        self.rates.check()?;
        self.ip.check()?;
        self.auth.check()?;
        self.firewall.check()?;
        self.activity.check()?;
        self.storage.check()?;
        self.store.check()?;
        self.tls.check()?;
        self.metrics.check()?;
        Ok(())
    }
}

// Defaults for [limits], each with where its number comes from.

// 1 MiB (a full mail body) plus 64 KiB for the headers and fields that travel with it.
const DEFAULT_MAX_FRAME_BYTES: u32 = 1_114_112;
// 64 KiB of chat text: several pages, above Slack's 40,000-character message cap.
const DEFAULT_MAX_MESSAGE_BYTES: u32 = 65_536;
// 1 MiB of mail text; anything bigger belongs in an attachment.
const DEFAULT_MAX_MAIL_BODY_BYTES: u32 = 1_048_576;
// Enough for any real mail, few enough that listing and checking them stays cheap.
const DEFAULT_MAX_ATTACHMENTS: u16 = 16;
// 2 GiB, a common upload ceiling (free WeTransfer) and the end of 32-bit signed offsets.
const DEFAULT_MAX_FILE_BYTES: u64 = 2 * 1024 * 1024 * 1024;
// Four maximum-size files.
const DEFAULT_USER_QUOTA_BYTES: u64 = 4 * DEFAULT_MAX_FILE_BYTES;
// 256 KiB keeps per-frame overhead under 0.1% while 4 staged uploads pin only 1 MiB.
const DEFAULT_MAX_CHUNK_BYTES: u32 = 262_144;
// 4 parallel uploads per session, like a browser's handful of parallel requests per host.
const DEFAULT_MAX_OPEN_UPLOADS: u16 = 4;
// A screenful and more; bounds one inbox reply to 256 entries.
const DEFAULT_MAX_INBOX_PAGE: u32 = 256;
// A quarter of the common 65,536 file-descriptor hard limit, leaving room for blobs and the
// database.
const DEFAULT_MAX_CONNECTIONS: u32 = 16_384;
// A NAT'd office fits; one host can hold at most 1/64 of all slots.
const DEFAULT_MAX_CONNECTIONS_PER_IP: u32 = 256;
// An AUTH with the longest name (32 bytes) and password (1,024 bytes) has a 1,059-byte
// body; nothing else a stranger may send is larger.
const DEFAULT_PREAUTH_FRAME_BYTES: u32 = 1_088;
// Connections that have not logged in yet: a login takes about 0.1 s, so even a large office
// behind one address rarely has more than a handful in flight. 64 x 16 KiB (the measured
// bound on one such connection, docs/PERFORMANCE.md) is 1 MiB per source.
const DEFAULT_PREAUTH_CONNECTIONS_PER_IP: u32 = 64;
// 2,048 x 16 KiB: 32 MiB for every stranger together.
const DEFAULT_PREAUTH_CONNECTIONS: u32 = 2_048;
// A person's devices and scripts, with room for parallel transfers; 32 sessions each holding
// at most a frame (1.06 MiB) and an outbound queue (1 MiB) is about 70 MiB for one account.
const DEFAULT_MAX_SESSIONS_PER_USER: u32 = 32;
// Four download chunks; a client this far behind is not reading its replies.
const DEFAULT_OUTBOUND_QUEUE_BYTES: u32 = 1_048_576;
// About 100 bytes of limiter state per key: at most ~10 MB per keyed limiter.
const DEFAULT_MAX_TRACKED_SOURCES: u32 = 100_000;

/// `[limits]`: sizes, counts and connection caps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest frame payload in bytes; between [`MIN_FRAME_BYTES`] and the protocol's hard
    /// maximum ([`HARD_MAX_FRAME`], 16 MiB).
    pub max_frame_bytes: u32,
    /// Largest chat message text in bytes.
    pub max_message_bytes: u32,
    /// Largest mail body in bytes.
    pub max_mail_body_bytes: u32,
    /// Most attachments on one mail.
    pub max_attachments: u16,
    /// Largest file or attachment in bytes.
    pub max_file_bytes: u64,
    /// Bytes a user may have sent that still exist (files, attachments, messages).
    pub user_quota_bytes: u64,
    /// Largest upload or download chunk in bytes; at most `max_frame_bytes - 64`.
    pub max_chunk_bytes: u32,
    /// Staged (unfinished) uploads per session.
    pub max_open_uploads: u16,
    /// Most entries in one inbox page.
    pub max_inbox_page: u32,
    /// Open connections in total.
    pub max_connections: u32,
    /// Open connections from one source (an IPv4 address or an IPv6 prefix).
    pub max_connections_per_ip: u32,
    /// Largest frame payload accepted before login. A larger header is refused from its
    /// header alone, before any of its body is buffered, and the connection is closed:
    /// memory for large frames is granted only to authenticated sessions.
    pub preauth_frame_bytes: u32,
    /// Connections that have not logged in yet, from one source. With the receive buffer
    /// bounded by `preauth_frame_bytes`, this is the per-source pre-login memory budget.
    pub preauth_connections_per_ip: u32,
    /// Connections that have not logged in yet, in total: the server's pre-login memory
    /// budget.
    pub preauth_connections: u32,
    /// Sessions one user may have logged in at once. Each may buffer up to one frame, so
    /// this is the user's memory budget for large frames; a login past it is refused
    /// (`busy`) and does not count as a failure.
    pub max_sessions_per_user: u32,
    /// Reply bytes buffered for one connection before the server stops reading from it.
    pub outbound_queue_bytes: u32,
    /// Most keys one keyed rate limiter may hold after a purge; beyond that it is cleared.
    pub max_tracked_sources: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_mail_body_bytes: DEFAULT_MAX_MAIL_BODY_BYTES,
            max_attachments: DEFAULT_MAX_ATTACHMENTS,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            user_quota_bytes: DEFAULT_USER_QUOTA_BYTES,
            max_chunk_bytes: DEFAULT_MAX_CHUNK_BYTES,
            max_open_uploads: DEFAULT_MAX_OPEN_UPLOADS,
            max_inbox_page: DEFAULT_MAX_INBOX_PAGE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            preauth_frame_bytes: DEFAULT_PREAUTH_FRAME_BYTES,
            preauth_connections_per_ip: DEFAULT_PREAUTH_CONNECTIONS_PER_IP,
            preauth_connections: DEFAULT_PREAUTH_CONNECTIONS,
            max_sessions_per_user: DEFAULT_MAX_SESSIONS_PER_USER,
            outbound_queue_bytes: DEFAULT_OUTBOUND_QUEUE_BYTES,
            max_tracked_sources: DEFAULT_MAX_TRACKED_SOURCES,
        }
    }
}

impl LimitsConfig {
    /// The limits the protocol codec enforces, derived from these.
    pub fn protocol(&self) -> crate::protocol::Limits {
        crate::protocol::Limits {
            max_frame_bytes: self.max_frame_bytes,
            max_text_bytes: self.max_message_bytes,
            max_mail_body_bytes: self.max_mail_body_bytes,
            max_chunk_bytes: self.max_chunk_bytes,
            max_attachments: self.max_attachments,
            max_inbox_page: u16::try_from(self.max_inbox_page).unwrap_or(u16::MAX),
        }
    }

    /// Checks ranges and the rules between these limits.
    pub fn check(&self) -> Result<(), ConfigError> {
        in_range(
            "limits.max_frame_bytes",
            self.max_frame_bytes,
            MIN_FRAME_BYTES,
            HARD_MAX_FRAME,
        )?;
        // Cannot underflow: max_frame_bytes >= MIN_FRAME_BYTES > CHUNK_HEADROOM_BYTES.
        let frame_room = self.max_frame_bytes - CHUNK_HEADROOM_BYTES;
        // A message or body that cannot fit in one frame could never be sent: the limit
        // would be a lie.
        for (key, value) in [
            ("limits.max_message_bytes", self.max_message_bytes),
            ("limits.max_mail_body_bytes", self.max_mail_body_bytes),
            ("limits.max_chunk_bytes", self.max_chunk_bytes),
        ] {
            at_least_one(key, value)?;
            if value > frame_room {
                return Err(invalid(
                    key,
                    format!(
                        "must be at most limits.max_frame_bytes - {CHUNK_HEADROOM_BYTES} \
                         ({frame_room}), got {value}"
                    ),
                ));
            }
        }
        if self.max_attachments > u16::from(u8::MAX) {
            return Err(invalid(
                "limits.max_attachments",
                format!(
                    "must be at most 255 (the wire carries the count in one byte), got {}",
                    self.max_attachments
                ),
            ));
        }
        one_to("limits.max_file_bytes", self.max_file_bytes, MAX_FILE_BYTES)?;
        one_to(
            "limits.user_quota_bytes",
            self.user_quota_bytes,
            MAX_USER_QUOTA_BYTES,
        )?;
        if self.user_quota_bytes < self.max_file_bytes {
            return Err(invalid(
                "limits.user_quota_bytes",
                format!(
                    "must be at least limits.max_file_bytes ({}), got {}",
                    self.max_file_bytes, self.user_quota_bytes
                ),
            ));
        }
        one_to(
            "limits.max_open_uploads",
            self.max_open_uploads,
            MAX_OPEN_UPLOADS,
        )?;
        in_range(
            "limits.max_inbox_page",
            self.max_inbox_page,
            1,
            MAX_INBOX_PAGE,
        )?;
        // Every request and reply these limits allow must fit in one frame, or the server
        // would accept a mail it can never show, or list an inbox page it cannot send.
        let (kind, needed) = self.protocol().largest_body();
        if needed > u64::from(self.max_frame_bytes) {
            return Err(invalid(
                "limits.max_frame_bytes",
                format!(
                    "must be at least {needed} to carry the largest {} frame the other limits allow \
                     (lower max_mail_body_bytes, max_attachments or max_inbox_page), got {}",
                    kind.wire_name(),
                    self.max_frame_bytes
                ),
            ));
        }
        one_to(
            "limits.max_connections",
            self.max_connections,
            MAX_CONNECTIONS,
        )?;
        at_least_one("limits.max_connections_per_ip", self.max_connections_per_ip)?;
        if self.max_connections_per_ip > self.max_connections {
            return Err(invalid(
                "limits.max_connections_per_ip",
                format!(
                    "must be at most limits.max_connections ({}), got {}",
                    self.max_connections, self.max_connections_per_ip
                ),
            ));
        }
        in_range(
            "limits.preauth_frame_bytes",
            self.preauth_frame_bytes,
            64,
            65_536,
        )?;
        one_to(
            "limits.preauth_connections_per_ip",
            self.preauth_connections_per_ip,
            MAX_CONNECTIONS,
        )?;
        one_to(
            "limits.preauth_connections",
            self.preauth_connections,
            MAX_CONNECTIONS,
        )?;
        one_to(
            "limits.max_sessions_per_user",
            self.max_sessions_per_user,
            MAX_CONNECTIONS,
        )?;
        // One download reply (a chunk and its fields) must fit, or every download would
        // look like a client that does not read.
        let chunk_reply = u64::from(self.max_chunk_bytes) + u64::from(CHUNK_HEADROOM_BYTES);
        at_most(
            "limits.outbound_queue_bytes",
            self.outbound_queue_bytes,
            MAX_OUTBOUND_QUEUE_BYTES,
        )?;
        if u64::from(self.outbound_queue_bytes) < chunk_reply {
            return Err(invalid(
                "limits.outbound_queue_bytes",
                format!(
                    "must be at least limits.max_chunk_bytes + {CHUNK_HEADROOM_BYTES} \
                     ({chunk_reply}), got {}",
                    self.outbound_queue_bytes
                ),
            ));
        }
        // Every connected source needs its limiter state kept; a smaller cap would clear
        // the limiters on every purge and forgive everyone.
        at_most(
            "limits.max_tracked_sources",
            self.max_tracked_sources,
            MAX_TRACKED_SOURCES,
        )?;
        if self.max_tracked_sources < self.max_connections {
            return Err(invalid(
                "limits.max_tracked_sources",
                format!(
                    "must be at least limits.max_connections ({}), got {}",
                    self.max_connections, self.max_tracked_sources
                ),
            ));
        }
        Ok(())
    }
}

// Defaults for [timeouts], each with where its number comes from.

// A maximum frame (1.06 MiB) in 10 s needs ~110 KB/s, slower than any broadband link.
const DEFAULT_FRAME_BUDGET_MS: u64 = 10_000;
// Eight times Apache mod_reqtimeout's default MinRate of 500 bytes/s.
const DEFAULT_FRAME_MIN_RATE_BYTES_PER_S: u64 = 4096;
// One second covers a few round trips and TCP slow start before the rate is judged.
const DEFAULT_FRAME_GRACE_MS: u64 = 1_000;
// Below nginx's 75 s keepalive_timeout; clients ping well within a minute.
const DEFAULT_IDLE_MS: u64 = 60_000;
// One login round trip plus an argon2 verification (tens of ms), with a wide margin.
const DEFAULT_AUTH_MS: u64 = 10_000;
// Same as the frame budget: a client that cannot take a reply in 10 s is not reading.
const DEFAULT_WRITE_MS: u64 = 10_000;
// Long enough to finish in-flight requests, short enough for a restart in CI.
const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 5_000;

/// `[timeouts]`: time budgets, all in milliseconds. Use the getters for [`Duration`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// A frame, once its first byte arrived, must complete within this.
    pub frame_budget_ms: u64,
    /// And arrive at least this fast (bytes per second), judged after the grace period.
    pub frame_min_rate_bytes_per_s: u64,
    /// Time after a frame's first byte before its rate is judged.
    pub frame_grace_ms: u64,
    /// No complete frame for this long ends the session.
    pub idle_ms: u64,
    /// A connection must authenticate within this after accept.
    pub auth_ms: u64,
    /// A write blocked this long (the client does not read) cuts the connection.
    pub write_ms: u64,
    /// Time open sessions get to finish when the server shuts down.
    pub shutdown_grace_ms: u64,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            frame_budget_ms: DEFAULT_FRAME_BUDGET_MS,
            frame_min_rate_bytes_per_s: DEFAULT_FRAME_MIN_RATE_BYTES_PER_S,
            frame_grace_ms: DEFAULT_FRAME_GRACE_MS,
            idle_ms: DEFAULT_IDLE_MS,
            auth_ms: DEFAULT_AUTH_MS,
            write_ms: DEFAULT_WRITE_MS,
            shutdown_grace_ms: DEFAULT_SHUTDOWN_GRACE_MS,
        }
    }
}

impl TimeoutsConfig {
    /// Checks that every timeout is positive and at most [`MAX_TIMEOUT_MS`], and that the
    /// grace period fits in the frame budget.
    pub fn check(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("timeouts.frame_budget_ms", self.frame_budget_ms),
            ("timeouts.frame_grace_ms", self.frame_grace_ms),
            ("timeouts.idle_ms", self.idle_ms),
            ("timeouts.auth_ms", self.auth_ms),
            ("timeouts.write_ms", self.write_ms),
            ("timeouts.shutdown_grace_ms", self.shutdown_grace_ms),
        ] {
            in_range(key, value, 1, MAX_TIMEOUT_MS)?;
        }
        one_to(
            "timeouts.frame_min_rate_bytes_per_s",
            self.frame_min_rate_bytes_per_s,
            MAX_FRAME_MIN_RATE_BYTES_PER_S,
        )?;
        // A grace period as long as the budget would mean the rate is never judged.
        if self.frame_grace_ms >= self.frame_budget_ms {
            return Err(invalid(
                "timeouts.frame_grace_ms",
                format!(
                    "must be less than timeouts.frame_budget_ms ({}), got {}",
                    self.frame_budget_ms, self.frame_grace_ms
                ),
            ));
        }
        Ok(())
    }

    /// [`Self::frame_budget_ms`] as a [`Duration`].
    pub fn frame_budget(&self) -> Duration {
        Duration::from_millis(self.frame_budget_ms)
    }

    /// [`Self::frame_grace_ms`] as a [`Duration`].
    pub fn frame_grace(&self) -> Duration {
        Duration::from_millis(self.frame_grace_ms)
    }

    /// [`Self::idle_ms`] as a [`Duration`].
    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms)
    }

    /// [`Self::auth_ms`] as a [`Duration`].
    pub fn auth(&self) -> Duration {
        Duration::from_millis(self.auth_ms)
    }

    /// [`Self::write_ms`] as a [`Duration`].
    pub fn write(&self) -> Duration {
        Duration::from_millis(self.write_ms)
    }

    /// [`Self::shutdown_grace_ms`] as a [`Duration`].
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

// Defaults for [rates], each with where its number comes from.

// 2,000 frames/s is 500 MB/s of 256 KiB chunks, beyond any real client; a burst of 500
// absorbs a pipelined batch.
const DEFAULT_FRAMES_PER_S_PER_CONN: u32 = 2_000;
const DEFAULT_FRAMES_BURST_PER_CONN: u32 = 500;
// Two busy connections' worth, so a user with a phone and a laptop is never limited.
const DEFAULT_FRAMES_PER_S_PER_USER: u32 = 4_000;
const DEFAULT_FRAMES_BURST_PER_USER: u32 = 1_000;
// The same for a source: two busy connections behind one address.
const DEFAULT_FRAMES_PER_S_PER_IP: u32 = 4_000;
const DEFAULT_FRAMES_BURST_PER_IP: u32 = 1_000;
// Failed logins from one source: a NAT'd office mistyping after lunch, 30 a minute, 10 at
// once. An attempt holds one of these while it is verified, so at most 10 verifications per
// source are in flight however many connections it opens.
const DEFAULT_LOGINS_PER_MIN_PER_IP: u32 = 30;
const DEFAULT_LOGINS_BURST_PER_IP: u32 = 10;
// Successful logins from one source: a script that runs the command-line client once per
// command logs in every time, a few a second at most; 300 a minute (five a second, a tenth
// of a core of argon2 at the default cost) with 60 at once never stops it, and still bounds
// what a stolen password can make the server hash.
const DEFAULT_LOGINS_OK_PER_MIN_PER_IP: u32 = 300;
const DEFAULT_LOGINS_OK_BURST_PER_IP: u32 = 60;
// Failures for one user name: one person retyping a password makes a handful, 10 a minute
// and 5 at once (OWASP: slow down after a handful of failures rather than lock out). Only
// sources whose own failures reach the firewall's threshold are held back (`guard::login`).
const DEFAULT_LOGINS_PER_MIN_PER_USER: u32 = 10;
const DEFAULT_LOGINS_BURST_PER_USER: u32 = 5;
// Reconnect storms after a restart: 100 at once from one host, then 50 a second.
const DEFAULT_ACCEPTS_PER_S_PER_IP: u32 = 50;
const DEFAULT_ACCEPTS_BURST_PER_IP: u32 = 100;
// A client that briefly overshoots sees a handful of refusals; 64 is sustained abuse.
const DEFAULT_STRIKES_TO_CLOSE: u32 = 64;

/// `[rates]`: rate limits, each a sustained rate and a burst.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RatesConfig {
    /// Frames per second on one connection.
    pub frames_per_s_per_conn: u32,
    /// Frames one connection may send at once.
    pub frames_burst_per_conn: u32,
    /// Frames per second from one authenticated user over all connections.
    pub frames_per_s_per_user: u32,
    /// Frames one user may send at once.
    pub frames_burst_per_user: u32,
    /// Frames per second from one source over all connections.
    pub frames_per_s_per_ip: u32,
    /// Frames one source may send at once.
    pub frames_burst_per_ip: u32,
    /// Failed logins per minute from one source (a repeat of the same wrong password counts
    /// once; successes count against `logins_ok_per_min_per_ip` instead).
    pub logins_per_min_per_ip: u32,
    /// Failed logins one source may make at once; also the most logins from one source
    /// being verified at once.
    pub logins_burst_per_ip: u32,
    /// Successful logins per minute from one source (never fewer than
    /// `logins_per_min_per_ip`: a larger failures' allowance raises this one with it).
    pub logins_ok_per_min_per_ip: u32,
    /// Successful logins one source may make at once (never fewer than
    /// `logins_burst_per_ip`).
    pub logins_ok_burst_per_ip: u32,
    /// Failed logins per minute for one user name before its failure backoff holds back
    /// sources whose own failures reach the firewall's threshold (successes never count).
    pub logins_per_min_per_user: u32,
    /// Failed logins for one user name at once before its failure backoff starts.
    pub logins_burst_per_user: u32,
    /// Accepted connections per second from one source.
    pub accepts_per_s_per_ip: u32,
    /// Connections one source may open at once.
    pub accepts_burst_per_ip: u32,
    /// Rate-limited or malformed requests on one connection before it is cut.
    pub strikes_to_close: u32,
}

impl Default for RatesConfig {
    fn default() -> Self {
        RatesConfig {
            frames_per_s_per_conn: DEFAULT_FRAMES_PER_S_PER_CONN,
            frames_burst_per_conn: DEFAULT_FRAMES_BURST_PER_CONN,
            frames_per_s_per_user: DEFAULT_FRAMES_PER_S_PER_USER,
            frames_burst_per_user: DEFAULT_FRAMES_BURST_PER_USER,
            frames_per_s_per_ip: DEFAULT_FRAMES_PER_S_PER_IP,
            frames_burst_per_ip: DEFAULT_FRAMES_BURST_PER_IP,
            logins_per_min_per_ip: DEFAULT_LOGINS_PER_MIN_PER_IP,
            logins_burst_per_ip: DEFAULT_LOGINS_BURST_PER_IP,
            logins_ok_per_min_per_ip: DEFAULT_LOGINS_OK_PER_MIN_PER_IP,
            logins_ok_burst_per_ip: DEFAULT_LOGINS_OK_BURST_PER_IP,
            logins_per_min_per_user: DEFAULT_LOGINS_PER_MIN_PER_USER,
            logins_burst_per_user: DEFAULT_LOGINS_BURST_PER_USER,
            accepts_per_s_per_ip: DEFAULT_ACCEPTS_PER_S_PER_IP,
            accepts_burst_per_ip: DEFAULT_ACCEPTS_BURST_PER_IP,
            strikes_to_close: DEFAULT_STRIKES_TO_CLOSE,
        }
    }
}

impl RatesConfig {
    /// Checks that every rate, burst and the strike count is between 1 (governor quotas
    /// cannot be zero; "off" is a large number) and [`MAX_RATE`].
    pub fn check(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("rates.frames_per_s_per_conn", self.frames_per_s_per_conn),
            ("rates.frames_burst_per_conn", self.frames_burst_per_conn),
            ("rates.frames_per_s_per_user", self.frames_per_s_per_user),
            ("rates.frames_burst_per_user", self.frames_burst_per_user),
            ("rates.frames_per_s_per_ip", self.frames_per_s_per_ip),
            ("rates.frames_burst_per_ip", self.frames_burst_per_ip),
            ("rates.logins_per_min_per_ip", self.logins_per_min_per_ip),
            ("rates.logins_burst_per_ip", self.logins_burst_per_ip),
            (
                "rates.logins_ok_per_min_per_ip",
                self.logins_ok_per_min_per_ip,
            ),
            ("rates.logins_ok_burst_per_ip", self.logins_ok_burst_per_ip),
            (
                "rates.logins_per_min_per_user",
                self.logins_per_min_per_user,
            ),
            ("rates.logins_burst_per_user", self.logins_burst_per_user),
            ("rates.accepts_per_s_per_ip", self.accepts_per_s_per_ip),
            ("rates.accepts_burst_per_ip", self.accepts_burst_per_ip),
            ("rates.strikes_to_close", self.strikes_to_close),
        ] {
            one_to(key, value, MAX_RATE)?;
        }
        Ok(())
    }
}

// Defaults for [ip], each with where its number comes from.

// Half of fail2ban's default bantime (600 s): long enough to stop a run, short enough that a
// wrongly blocked NAT recovers quickly.
const DEFAULT_BLOCK_SECS: u64 = 300;
// /64 is the smallest allocation to an end site (RFC 6177): one host controls a whole /64.
const DEFAULT_IPV6_PREFIX: u8 = 64;

/// `[ip]`: static allow and deny lists and runtime blocking.
///
/// The deny list is absolute. The allow list only exempts from runtime blocks (the firewall's
/// and the operator's), never from the deny list, caps or rate limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpConfig {
    /// Networks never blocked at runtime. A bare address means that one address.
    #[serde(deserialize_with = "nets")]
    pub allow: Vec<IpNet>,
    /// Networks refused at accept, always. A bare address means that one address.
    #[serde(deserialize_with = "nets")]
    pub deny: Vec<IpNet>,
    /// Default duration of a runtime block, in seconds.
    pub block_secs: u64,
    /// IPv6 sources are grouped by this prefix length for all per-source accounting.
    pub ipv6_prefix: u8,
}

impl Default for IpConfig {
    fn default() -> Self {
        IpConfig {
            allow: Vec::new(),
            deny: Vec::new(),
            block_secs: DEFAULT_BLOCK_SECS,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }
}

impl IpConfig {
    /// Checks the block duration and the IPv6 prefix length.
    pub fn check(&self) -> Result<(), ConfigError> {
        in_range("ip.block_secs", self.block_secs, 1, MAX_BLOCK_SECS)?;
        in_range("ip.ipv6_prefix", self.ipv6_prefix, 1, 128)?;
        Ok(())
    }

    /// [`Self::block_secs`] as a [`Duration`].
    pub fn block(&self) -> Duration {
        Duration::from_secs(self.block_secs)
    }
}

/// Reads a list of networks, accepting a bare address as a single-address network, so
/// `"10.0.0.1"` works as well as `"10.0.0.1/32"`.
fn nets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let raw: Vec<String> = Vec::deserialize(d)?;
    raw.iter()
        .map(|s| {
            if let Ok(net) = s.parse::<IpNet>() {
                return Ok(net);
            }
            s.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                serde::de::Error::custom(format!("invalid ip network or address `{s}`"))
            })
        })
        .collect()
}

// Defaults for [auth], each with where its number comes from.

// OWASP Password Storage Cheat Sheet minimum for argon2id: m=19 MiB, t=2, p=1.
const DEFAULT_ARGON2_MEMORY_KIB: u32 = 19_456;
const DEFAULT_ARGON2_ITERATIONS: u32 = 2;
const DEFAULT_ARGON2_PARALLELISM: u32 = 1;
// Two cores of hashing: a login flood costs at most 2 x 19 MiB and two cores.
const DEFAULT_LOGIN_WORKERS: u32 = 2;
// A working day and a night: a user who logged in yesterday resumes without the password.
const DEFAULT_TICKET_TTL_S: u64 = 24 * 3600;

/// `[auth]`: password hashing cost and login concurrency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// argon2 memory cost in KiB.
    pub argon2_memory_kib: u32,
    /// argon2 time cost (passes over memory).
    pub argon2_iterations: u32,
    /// argon2 lanes.
    pub argon2_parallelism: u32,
    /// Password verifications that may run at once (a bounded pool).
    pub login_workers: u32,
    /// How long a resume ticket (TICKET, RESUME) stays valid, in seconds; 0 turns tickets
    /// off (TICKET and RESUME are then refused).
    pub ticket_ttl_s: u64,
    /// Whether a connection from a blocked source may present a resume ticket in its first
    /// frame (docs/PROTOCOL.md, 9.4) instead of being refused unread at accept. Such a
    /// connection is sent the `blocked` notice at once, before its first frame is read, so
    /// a client without a ticket (or a tool judging a block) sees the refusal as early.
    pub resume_when_blocked: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            argon2_memory_kib: DEFAULT_ARGON2_MEMORY_KIB,
            argon2_iterations: DEFAULT_ARGON2_ITERATIONS,
            argon2_parallelism: DEFAULT_ARGON2_PARALLELISM,
            login_workers: DEFAULT_LOGIN_WORKERS,
            ticket_ttl_s: DEFAULT_TICKET_TTL_S,
            resume_when_blocked: true,
        }
    }
}

impl AuthConfig {
    /// Checks argon2's own lower bounds (not OWASP's: tests may use cheaper hashes), upper
    /// bounds that keep hashing from exhausting memory or time, and the login workers.
    pub fn check(&self) -> Result<(), ConfigError> {
        in_range(
            "auth.argon2_parallelism",
            self.argon2_parallelism,
            1,
            MAX_ARGON2_PARALLELISM,
        )?;
        in_range(
            "auth.argon2_iterations",
            self.argon2_iterations,
            1,
            MAX_ARGON2_ITERATIONS,
        )?;
        at_most(
            "auth.argon2_memory_kib",
            self.argon2_memory_kib,
            MAX_ARGON2_MEMORY_KIB,
        )?;
        // Cannot overflow: parallelism <= 64, times 8.
        let min_memory = ARGON2_MIN_KIB_PER_LANE * self.argon2_parallelism;
        if self.argon2_memory_kib < min_memory {
            return Err(invalid(
                "auth.argon2_memory_kib",
                format!(
                    "must be at least {ARGON2_MIN_KIB_PER_LANE} x auth.argon2_parallelism \
                     ({min_memory}), got {}",
                    self.argon2_memory_kib
                ),
            ));
        }
        let work = u64::from(self.argon2_memory_kib) * u64::from(self.argon2_iterations);
        if work > MAX_ARGON2_WORK_KIB {
            return Err(invalid(
                "auth.argon2_iterations",
                format!(
                    "auth.argon2_memory_kib x auth.argon2_iterations must be at most \
                     {MAX_ARGON2_WORK_KIB} (seconds of hashing per login), got {} x {} = {work}",
                    self.argon2_memory_kib, self.argon2_iterations
                ),
            ));
        }
        one_to("auth.login_workers", self.login_workers, MAX_LOGIN_WORKERS)?;
        at_most("auth.ticket_ttl_s", self.ticket_ttl_s, MAX_TICKET_TTL_S)?;
        let held = u64::from(self.login_workers) * u64::from(self.argon2_memory_kib);
        if held > MAX_LOGIN_MEMORY_KIB {
            return Err(invalid(
                "auth.login_workers",
                format!(
                    "auth.login_workers x auth.argon2_memory_kib must be at most \
                     {MAX_LOGIN_MEMORY_KIB} KiB (the memory the verifiers hold), got {} x {} = {held}",
                    self.login_workers, self.argon2_memory_kib
                ),
            ));
        }
        Ok(())
    }
}

// Defaults for [firewall]. Scores are in points; a source whose decayed score reaches the
// threshold is blocked. The weights encode how sure one event makes us, and no single event
// is sure enough: a client of another protocol version sends a broken frame header once, a
// laptop that sleeps mid-download stops reading once, so the heaviest weights are half the
// threshold and a block needs two such events (two connections' worth). A typo'd password is
// common, so four failures; a mistyped item id weighs less than a typo, so that a typo, a
// wrong id and any one other event together stay under the threshold (see
// `FirewallConfig::check`).
const DEFAULT_FW_THRESHOLD: u32 = 100;
// A minute: a scanner that pauses a minute still carries half its score.
const DEFAULT_FW_HALF_LIFE_S: u64 = 60;
// Each repeat block of the same source lasts this many times longer...
const DEFAULT_FW_ESCALATION: u32 = 2;
// ...up to a day.
const DEFAULT_FW_MAX_BLOCK_SECS: u64 = 86_400;

/// `[firewall] model`: what the detection model's verdicts do.
///
/// A novelty model flags whatever it has not seen, and a client it was not trained on (a
/// third-party client, a new feature) looks novel; so by default its verdicts are recorded
/// and explained but do not block, while the rules keep enforcing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelMode {
    /// Verdicts add points to a separate, model-only score; a source it tips is recorded
    /// with action `shadow_block` and the model's explanation, and never blocked.
    #[default]
    Shadow,
    /// Verdicts add points to the enforcing score, next to the rule signals.
    Enforce,
    /// No model runs, even if one is given (`--no-model` does the same).
    Off,
}

impl ModelMode {
    /// The configured name.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelMode::Shadow => "shadow",
            ModelMode::Enforce => "enforce",
            ModelMode::Off => "off",
        }
    }
}

/// `[firewall]`: rule signals, their weights, and how blocks escalate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallConfig {
    /// Whether rule signals may block sources at all.
    pub enabled: bool,
    /// Log and record decisions without enforcing them.
    pub shadow: bool,
    /// What the detection model's verdicts do: `shadow` (the default: recorded and
    /// explained, never blocking), `enforce` (they add to the blocking score) or `off`.
    pub model: ModelMode,
    /// Score at which a source is blocked.
    pub threshold: u32,
    /// Scores halve after this many seconds without new signals.
    pub half_life_s: u64,
    /// Each repeat block of a source lasts this many times the previous one.
    pub escalation: u32,
    /// The longest block escalation may reach, in seconds.
    pub max_block_secs: u64,
    /// Points for a broken frame header (bad magic, version, kind, flags, length).
    pub weight_fatal_frame: u32,
    /// Points for a malformed body in a well-framed request.
    pub weight_bad_body: u32,
    /// Points for a request refused by a frame rate limiter, and for a login refused because
    /// the source logged in successfully more often than `rates.logins_ok_per_min_per_ip`.
    pub weight_rate_limited: u32,
    /// Points for a login refused because the source failed more logins than
    /// `rates.logins_per_min_per_ip` allows.
    pub weight_login_rate_limited: u32,
    /// Points for a failed login.
    pub weight_auth_failed: u32,
    /// Points for asking for another user's item.
    pub weight_permission_denied: u32,
    /// Points for asking for an item id that no item ever had (FETCH, DOWNLOAD or DELETE;
    /// an id above the highest handed out): a typo now and then, an enumeration when it
    /// keeps coming. The id of a deleted item earns nothing, so a stale cache costs nothing.
    pub weight_unknown_id: u32,
    /// Points for a frame cut by its time budget or minimum rate (slowloris).
    pub weight_slow_frame: u32,
    /// Points for not authenticating in time.
    pub weight_auth_timeout: u32,
    /// Points for a connection cut because it did not read its replies.
    pub weight_write_timeout: u32,
    /// Points for a connection refused at accept by a per-source cap or the accept rate.
    pub weight_refused: u32,
    /// Points for an activity window the detection model scores at twice its threshold or
    /// more; a window between 1.25 times the threshold and twice it earns a proportional
    /// share, and one closer to the threshold nothing (`firewall::WEAK_ANOMALY`).
    pub weight_model_anomaly: u32,
    /// Points for a well-formed request over its kind's maximum from a logged-in session
    /// (before login, such a frame counts as a malformed body or a broken header).
    pub weight_too_large: u32,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        FirewallConfig {
            enabled: true,
            shadow: false,
            model: ModelMode::Shadow,
            threshold: DEFAULT_FW_THRESHOLD,
            half_life_s: DEFAULT_FW_HALF_LIFE_S,
            escalation: DEFAULT_FW_ESCALATION,
            max_block_secs: DEFAULT_FW_MAX_BLOCK_SECS,
            weight_fatal_frame: 50,
            weight_bad_body: 20,
            weight_rate_limited: 1,
            weight_login_rate_limited: 50,
            weight_auth_failed: 25,
            // 19, not 25: a typo (25), a wrong id and any one other event (at most 50) add
            // up to 94, under the 95 points that the firewall's 5% decay tolerance counts as
            // reaching the threshold. A tamperer asking for others' ids still needs only six.
            weight_permission_denied: 19,
            // 5: an enumeration past the highest id, five a second, is blocked in about 4 s,
            // and one at a sustained 0.22 a second in the end, while 18 mistyped ids in a
            // burst stay under the threshold. Deleted items' ids earn nothing.
            weight_unknown_id: 5,
            weight_slow_frame: 50,
            weight_auth_timeout: 25,
            weight_write_timeout: 50,
            weight_refused: 10,
            // Two clearly anomalous windows within a half-life block: one may be a false
            // positive, and windows just past the threshold earn only a share.
            weight_model_anomaly: 50,
            // A user who tries to send a mail over the server's limit, and tries again: it
            // takes twenty to block, while a malformed body takes five.
            weight_too_large: 5,
        }
    }
}

impl FirewallConfig {
    /// Checks that the threshold, half-life, escalation and weights are usable, and that no
    /// weight is more than half the threshold: one event, however suspicious, never blocks a
    /// source on its own, so a block always rests on at least two (two connections' broken
    /// headers, a pattern sustained over time). A weight that would let one event block is
    /// refused rather than quietly capped, so the operator sees the config does not mean
    /// what it says.
    pub fn check(&self) -> Result<(), ConfigError> {
        one_to("firewall.threshold", self.threshold, MAX_RATE)?;
        for (key, value) in self.weights() {
            // Zero switches a signal off.
            at_most(key, value, MAX_RATE)?;
            let half = self.threshold / 2;
            if value > half {
                return Err(invalid(
                    key,
                    format!(
                        "must be at most half of firewall.threshold ({half}), so that no \
                         single event blocks a source; got {value}"
                    ),
                ));
            }
        }
        in_range(
            "firewall.half_life_s",
            self.half_life_s,
            1,
            MAX_TIMEOUT_MS / 1000,
        )?;
        in_range("firewall.escalation", self.escalation, 1, 16)?;
        in_range(
            "firewall.max_block_secs",
            self.max_block_secs,
            1,
            MAX_BLOCK_SECS,
        )?;
        Ok(())
    }

    /// Every weight with its dotted key.
    fn weights(&self) -> [(&'static str, u32); 13] {
        [
            ("firewall.weight_fatal_frame", self.weight_fatal_frame),
            ("firewall.weight_bad_body", self.weight_bad_body),
            ("firewall.weight_rate_limited", self.weight_rate_limited),
            (
                "firewall.weight_login_rate_limited",
                self.weight_login_rate_limited,
            ),
            ("firewall.weight_auth_failed", self.weight_auth_failed),
            (
                "firewall.weight_permission_denied",
                self.weight_permission_denied,
            ),
            ("firewall.weight_unknown_id", self.weight_unknown_id),
            ("firewall.weight_slow_frame", self.weight_slow_frame),
            ("firewall.weight_auth_timeout", self.weight_auth_timeout),
            ("firewall.weight_write_timeout", self.weight_write_timeout),
            ("firewall.weight_refused", self.weight_refused),
            ("firewall.weight_model_anomaly", self.weight_model_anomaly),
            ("firewall.weight_too_large", self.weight_too_large),
        ]
    }
}

/// `[activity]`: recording every connection event into `DATA/activity.db`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActivityConfig {
    /// Whether events are recorded at all.
    pub enabled: bool,
    /// Events the recorder's channel holds; past that, events are shed and counted.
    pub channel_capacity: u32,
    /// How long, in milliseconds, an event may wait before the writer commits it. Events
    /// are committed together once per interval (or sooner, in batches of 8,192), so the
    /// activity database is written in a few large transactions rather than many small ones.
    pub flush_ms: u64,
    /// Events older than this many days are deleted, a few thousand at a time between
    /// commits (0: kept forever).
    pub retain_days: u32,
    /// Past this many bytes in use, the oldest events are deleted the same way (0: no cap).
    /// The file then stops growing: freed pages are reused.
    pub max_bytes: u64,
}

impl Default for ActivityConfig {
    fn default() -> Self {
        ActivityConfig {
            enabled: true,
            // About a quarter second of events at 250,000 events per second.
            channel_capacity: 65_536,
            // Short next to the live model's 1 s windows, long enough that a commit carries
            // many events: at 20 ms a lightly loaded server committed almost every event on
            // its own, rewriting the same pages into the WAL (docs/PERFORMANCE.md, item 9).
            flush_ms: 100,
            // A month of history for `activity export` and retraining.
            retain_days: 30,
            // 1 GiB: about 30 million events (schema 2 rows are about 35 bytes).
            max_bytes: 1 << 30,
        }
    }
}

impl ActivityConfig {
    /// Checks the channel size and flush interval.
    pub fn check(&self) -> Result<(), ConfigError> {
        in_range(
            "activity.channel_capacity",
            self.channel_capacity,
            1,
            16_777_216,
        )?;
        in_range("activity.flush_ms", self.flush_ms, 1, 60_000)?;
        in_range("activity.retain_days", self.retain_days, 0, 36_500)?;
        if self.max_bytes != 0 {
            in_range("activity.max_bytes", self.max_bytes, 1 << 20, 1 << 50)?;
        }
        Ok(())
    }

    /// The flush interval.
    pub fn flush(&self) -> Duration {
        Duration::from_millis(self.flush_ms)
    }

    /// How much activity the database keeps.
    pub fn retention(&self) -> crate::activity::Retention {
        crate::activity::Retention {
            max_age: (self.retain_days > 0)
                .then(|| Duration::from_secs(u64::from(self.retain_days) * 86_400)),
            max_bytes: (self.max_bytes > 0).then_some(self.max_bytes),
        }
    }
}

// 64 MiB: room for a few hundred deletes, the activity recorder's next checkpoint and the
// WAL, on any disk big enough to run a server; small next to the disks it protects.
const DEFAULT_MIN_FREE_BYTES: u64 = 64 * 1024 * 1024;
/// Largest accepted `storage.min_free_bytes`, 1 TiB: beyond any sane floor, and a floor
/// larger than the disk would refuse every upload.
pub const MAX_MIN_FREE_BYTES: u64 = 1 << 40;

/// `[storage]`: the disk under the data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Free bytes the server keeps on the data directory's file system: below this, new
    /// uploads, chunks and deliveries are refused with `storage_full` and the activity
    /// recorder sheds, while reads and deletes go on. 0 turns the floor off (only a really
    /// full disk refuses).
    pub min_free_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
        }
    }
}

impl StorageConfig {
    /// Checks that the floor is at most [`MAX_MIN_FREE_BYTES`].
    pub fn check(&self) -> Result<(), ConfigError> {
        in_range(
            "storage.min_free_bytes",
            self.min_free_bytes,
            0,
            MAX_MIN_FREE_BYTES,
        )
    }
}

/// `[store]`: where users, items, quotas and blobs live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `postgres://user:password@host:port/database`: keep users, items and quotas in this
    /// PostgreSQL database, which every server that names it shares (docs/FLEET.md). Unset:
    /// SQLite in the data directory, the default.
    pub url: Option<String>,
    /// Where uploaded files and attachments live: `"auto"` (the default) puts them where
    /// the store is, so PostgreSQL when `url` names it and the data directory otherwise;
    /// `"local"` keeps them in the data directory (`DATA/blobs/`) either way; `"postgres"`
    /// puts them in the database `url` names. The servers of a fleet must all use the
    /// database, or each finds the others' items without their files.
    pub blobs: String,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            url: None,
            blobs: "auto".to_owned(),
        }
    }
}

impl StoreConfig {
    /// Checks that `url` names PostgreSQL and that this build can reach it, and that
    /// `blobs` is one of its values and has the database it asks for.
    pub fn check(&self) -> Result<(), ConfigError> {
        match self.blobs.as_str() {
            "auto" | "local" => {}
            "postgres" if self.url.is_none() => {
                return Err(invalid(
                    "store.blobs",
                    "\"postgres\" keeps blobs in the database store.url names, and store.url \
                     is unset: set it to the fleet's PostgreSQL URL, or use \"auto\" or \
                     \"local\""
                        .to_owned(),
                ));
            }
            "postgres" => {}
            other => {
                return Err(invalid(
                    "store.blobs",
                    format!(
                        "{other:?} is not a place for blobs: expected \"auto\" (where the \
                         store is), \"local\" (the data directory) or \"postgres\" (the \
                         database store.url names)"
                    ),
                ));
            }
        }
        let Some(url) = &self.url else {
            return Ok(());
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid(
                "store.url",
                "expected a PostgreSQL URL, postgres://user:password@host:port/database \
                 (leave it unset for SQLite in the data directory)"
                    .to_owned(),
            ));
        }
        if !cfg!(feature = "postgres") {
            return Err(invalid(
                "store.url",
                "this build of rampart has no PostgreSQL store (the `postgres` feature is off)"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// Whether blobs go to the PostgreSQL database ([`StoreConfig::blobs`]), in a checked
    /// configuration.
    pub fn blobs_in_postgres(&self) -> bool {
        match self.blobs.as_str() {
            "postgres" => true,
            "local" => false,
            _ => self.url.is_some(),
        }
    }
}

/// `[metrics]`: the Prometheus endpoint (`GET /metrics` over HTTP). Off unless `listen` is
/// set, so that a server never opens a second port nobody asked for, and servers started by
/// the dozen (tests, scenarios) never race for one fixed port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where to serve the endpoint (`"127.0.0.1:9100"`), never the protocol port. Unset: no
    /// endpoint.
    pub listen: Option<std::net::SocketAddr>,
    /// Serve the endpoint on an address other hosts can reach. Metrics say what attacks the
    /// server sees and how it copes, and the endpoint has no authentication, so a
    /// non-loopback `listen` is refused without this.
    pub allow_remote: bool,
}

impl MetricsConfig {
    /// Refuses a non-loopback `listen` unless `allow_remote` is set.
    pub fn check(&self) -> Result<(), ConfigError> {
        match self.listen {
            Some(addr) if !addr.ip().is_loopback() && !self.allow_remote => Err(invalid(
                "metrics.listen",
                format!(
                    "{addr} is not a loopback address: anyone who can reach it reads the \
                     server's metrics. Listen on 127.0.0.1, or set metrics.allow_remote = true \
                     if the network itself is trusted"
                ),
            )),
            _ => Ok(()),
        }
    }
}

// Defaults for [tls].
// A TLS 1.3 handshake on loopback takes about a millisecond and over a slow mobile link a few
// round trips: 5 s is generous for any client and short for a ClientHello dripped slowly.
const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
// Key exchange costs about 0.1 ms of CPU per handshake (ECDHE P-256 with ring): 256 at once
// is a fraction of a second of work, however many connections a flood opens.
const DEFAULT_MAX_HANDSHAKES: u32 = 256;
// A NAT'd office reconnecting all at once rarely has more than a few handshakes in flight, and
// those past the cap wait for a place (`HandshakeGuard::acquire`) rather than being refused.
const DEFAULT_MAX_HANDSHAKES_PER_IP: u32 = 8;

/// `[tls]`: TLS on the protocol port. Off unless `cert` and `key` are both set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The certificate chain, PEM. With `key`, turns TLS on.
    pub cert: Option<PathBuf>,
    /// The certificate's private key, PEM.
    pub key: Option<PathBuf>,
    /// Lowest TLS version accepted: `"1.3"` (the default) or `"1.2"`.
    pub min_version: String,
    /// A handshake must complete within this, from its first byte's arrival.
    pub handshake_timeout_ms: u64,
    /// Most handshakes in progress at once, over all sources.
    pub max_handshakes: u32,
    /// Most handshakes in progress at once from one source address.
    pub max_handshakes_per_ip: u32,
    /// Serve plaintext on a non-loopback address anyway (passwords cross the network in
    /// clear text). Without TLS the server refuses to listen anywhere but loopback unless
    /// this is set (`rampart serve --insecure-plaintext`).
    pub insecure_plaintext: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: None,
            key: None,
            min_version: "1.3".into(),
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_handshakes_per_ip: DEFAULT_MAX_HANDSHAKES_PER_IP,
            insecure_plaintext: false,
        }
    }
}

impl TlsConfig {
    /// Checks that `cert` and `key` come together, the version is known, and the budgets are
    /// in range.
    pub fn check(&self) -> Result<(), ConfigError> {
        match (&self.cert, &self.key) {
            (Some(_), None) => {
                return Err(invalid("tls.key", "tls.cert is set but tls.key is not"))
            }
            (None, Some(_)) => {
                return Err(invalid("tls.cert", "tls.key is set but tls.cert is not"))
            }
            _ => {}
        }
        crate::tls::MinVersion::parse(&self.min_version)
            .map_err(|e| invalid("tls.min_version", e.to_string()))?;
        in_range(
            "tls.handshake_timeout_ms",
            self.handshake_timeout_ms,
            100,
            60_000,
        )?;
        in_range(
            "tls.max_handshakes",
            u64::from(self.max_handshakes),
            1,
            1_000_000,
        )?;
        in_range(
            "tls.max_handshakes_per_ip",
            u64::from(self.max_handshakes_per_ip),
            1,
            u64::from(self.max_handshakes),
        )
    }

    /// Whether TLS is on.
    pub fn enabled(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }

    /// The handshake's budgets.
    pub fn handshake_limits(&self) -> crate::tls::HandshakeLimits {
        crate::tls::HandshakeLimits {
            timeout: Duration::from_millis(self.handshake_timeout_ms),
            max_total: self.max_handshakes as usize,
            max_per_source: self.max_handshakes_per_ip as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../rampart.example.toml");

    /// Parses `toml`, expects an `Invalid` error naming `key`, and returns its reason.
    fn invalid_key(toml: &str, key: &str) -> String {
        match Config::from_toml_str(toml) {
            Err(ConfigError::Invalid { key: k, reason }) => {
                assert_eq!(k, key, "wrong key for {toml:?}: {reason}");
                reason
            }
            other => panic!("expected invalid {key} for {toml:?}, got {other:?}"),
        }
    }

    /// Parses `toml`, expects a parse error, and returns its message.
    fn parse_error(toml: &str) -> String {
        match Config::from_toml_str(toml) {
            Err(ConfigError::Parse(msg)) => msg,
            other => panic!("expected a parse error for {toml:?}, got {other:?}"),
        }
    }

    #[test]
    fn defaults_pass_check() -> Result<(), ConfigError> {
        Config::default().check()
    }

    #[test]
    fn example_file_equals_defaults() -> Result<(), ConfigError> {
        assert_eq!(Config::from_toml_str(EXAMPLE)?, Config::default());
        Ok(())
    }

    #[test]
    fn example_file_names_every_key() -> Result<(), Box<dyn std::error::Error>> {
        // Serializing the defaults lists every key; each must appear in the example.
        let all = toml::to_string(&Config::default())?;
        for line in all.lines() {
            if let Some((key, _)) = line.split_once(" = ") {
                let needle = format!("\n{key} = ");
                assert!(EXAMPLE.contains(&needle), "example lacks key {key}");
            }
        }
        Ok(())
    }

    #[test]
    fn empty_file_is_defaults() -> Result<(), ConfigError> {
        assert_eq!(Config::from_toml_str("")?, Config::default());
        Ok(())
    }

    #[test]
    fn serialized_defaults_round_trip() -> Result<(), Box<dyn std::error::Error>> {
        let text = toml::to_string(&Config::default())?;
        assert_eq!(Config::from_toml_str(&text)?, Config::default());
        Ok(())
    }

    #[test]
    fn store_blobs_follow_the_store_unless_told_and_need_its_database() -> Result<(), ConfigError> {
        let url = "url = \"postgres://rampart@127.0.0.1/rampart\"";
        let place = |toml: &str| Config::from_toml_str(toml).map(|c| c.store.blobs_in_postgres());
        assert!(!place("")?);
        assert!(!place("[store]\nblobs = \"local\"")?);
        if cfg!(feature = "postgres") {
            assert!(place(&format!("[store]\n{url}"))?);
            assert!(place(&format!("[store]\n{url}\nblobs = \"postgres\""))?);
            assert!(!place(&format!("[store]\n{url}\nblobs = \"local\""))?);
        }
        let why = invalid_key("[store]\nblobs = \"postgres\"", "store.blobs");
        assert!(why.contains("store.url is unset"), "{why}");
        let why = invalid_key("[store]\nblobs = \"s3\"", "store.blobs");
        assert!(why.contains("\"s3\" is not a place for blobs"), "{why}");
        Ok(())
    }

    #[test]
    fn partial_file_keeps_other_defaults() -> Result<(), ConfigError> {
        let cfg = Config::from_toml_str("[limits]\nmax_connections = 100\nmax_connections_per_ip = 10\n\n[ip]\nipv6_prefix = 56\n")?;
        let mut want = Config::default();
        want.limits.max_connections = 100;
        want.limits.max_connections_per_ip = 10;
        want.ip.ipv6_prefix = 56;
        assert_eq!(cfg, want);
        Ok(())
    }

    #[test]
    fn unknown_key_is_named() {
        let msg = parse_error("[limits]\nmax_frme_bytes = 5000\n");
        assert!(msg.contains("unknown field `max_frme_bytes`"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
        let msg = parse_error("[limitz]\n");
        assert!(msg.contains("unknown field `limitz`"), "{msg}");
    }

    #[test]
    fn wrong_type_is_named() {
        let msg = parse_error("[limits]\nmax_frame_bytes = \"big\"\n");
        assert!(msg.contains("max_frame_bytes"), "{msg}");
        assert!(msg.contains("invalid type"), "{msg}");
        let msg = parse_error("[ip]\nipv6_prefix = 300\n");
        assert!(msg.contains("ipv6_prefix"), "{msg}");
    }

    #[test]
    fn ip_lists_take_networks_and_bare_addresses() -> Result<(), Box<dyn std::error::Error>> {
        let cfg = Config::from_toml_str(
            "[ip]\nallow = [\"127.0.0.1\", \"10.0.0.0/8\"]\ndeny = [\"2001:db8::/32\"]\n",
        )?;
        assert_eq!(
            cfg.ip.allow,
            vec!["127.0.0.1/32".parse()?, "10.0.0.0/8".parse()?]
        );
        assert_eq!(cfg.ip.deny, vec!["2001:db8::/32".parse::<IpNet>()?]);
        let msg = parse_error("[ip]\ndeny = [\"10.0.0.300\"]\n");
        assert!(
            msg.contains("invalid ip network or address `10.0.0.300`"),
            "{msg}"
        );
        Ok(())
    }

    #[test]
    fn load_reads_file_and_reports_path() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("rampart.toml");
        std::fs::write(&path, "[timeouts]\nidle_ms = 1234\n")?;
        assert_eq!(
            Config::load(&path)?.timeouts.idle(),
            Duration::from_millis(1234)
        );

        std::fs::write(&path, "[timeouts]\nidle = 1\n")?;
        match Config::load(&path) {
            Err(ConfigError::Parse(msg)) => {
                assert!(msg.contains("rampart.toml"), "{msg}");
                assert!(msg.contains("unknown field `idle`"), "{msg}");
            }
            other => panic!("expected parse error, got {other:?}"),
        }

        let missing = dir.path().join("missing.toml");
        let err = Config::load(&missing).err().ok_or("missing file loaded")?;
        assert!(matches!(err, ConfigError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("missing.toml"), "{err}");
        Ok(())
    }

    #[test]
    fn error_display_names_the_key() {
        let err = Config::from_toml_str("[limits]\nmax_chunk_bytes = 2000000\n")
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "config key limits.max_chunk_bytes: must be at most limits.max_frame_bytes - 64 \
                 (1114048), got 2000000"
            )
        );
    }

    #[test]
    fn each_rule_names_its_key() {
        let cases: &[(&str, &str)] = &[
            ("[limits]\nmax_frame_bytes = 4095", "limits.max_frame_bytes"),
            (
                "[limits]\nmax_frame_bytes = 16777217",
                "limits.max_frame_bytes",
            ),
            (
                "[limits]\nmax_chunk_bytes = 2000000",
                "limits.max_chunk_bytes",
            ),
            ("[limits]\nmax_chunk_bytes = 0", "limits.max_chunk_bytes"),
            (
                "[limits]\nmax_message_bytes = 1114049",
                "limits.max_message_bytes",
            ),
            (
                "[limits]\nmax_mail_body_bytes = 0",
                "limits.max_mail_body_bytes",
            ),
            ("[limits]\nmax_file_bytes = 0", "limits.max_file_bytes"),
            (
                "[limits]\nuser_quota_bytes = 1000",
                "limits.user_quota_bytes",
            ),
            ("[limits]\nmax_open_uploads = 0", "limits.max_open_uploads"),
            ("[limits]\nmax_inbox_page = 0", "limits.max_inbox_page"),
            ("[limits]\nmax_inbox_page = 2000", "limits.max_frame_bytes"),
            ("[limits]\nmax_attachments = 256", "limits.max_attachments"),
            (
                "[limits]\nmax_mail_body_bytes = 1114048",
                "limits.max_frame_bytes",
            ),
            ("[limits]\nmax_inbox_page = 65536", "limits.max_inbox_page"),
            ("[limits]\nmax_connections = 0", "limits.max_connections"),
            (
                "[limits]\nmax_connections = 10",
                "limits.max_connections_per_ip",
            ),
            (
                "[limits]\noutbound_queue_bytes = 262207",
                "limits.outbound_queue_bytes",
            ),
            (
                "[limits]\nmax_tracked_sources = 16383",
                "limits.max_tracked_sources",
            ),
            (
                "[timeouts]\nframe_budget_ms = 0",
                "timeouts.frame_budget_ms",
            ),
            ("[timeouts]\nidle_ms = 0", "timeouts.idle_ms"),
            ("[timeouts]\nauth_ms = 0", "timeouts.auth_ms"),
            ("[timeouts]\nwrite_ms = 0", "timeouts.write_ms"),
            (
                "[timeouts]\nshutdown_grace_ms = 0",
                "timeouts.shutdown_grace_ms",
            ),
            ("[timeouts]\nidle_ms = 86400001", "timeouts.idle_ms"),
            ("[timeouts]\nframe_grace_ms = 0", "timeouts.frame_grace_ms"),
            (
                "[timeouts]\nframe_grace_ms = 10000",
                "timeouts.frame_grace_ms",
            ),
            (
                "[timeouts]\nframe_min_rate_bytes_per_s = 0",
                "timeouts.frame_min_rate_bytes_per_s",
            ),
            (
                "[rates]\nframes_per_s_per_conn = 0",
                "rates.frames_per_s_per_conn",
            ),
            (
                "[rates]\nframes_burst_per_ip = 0",
                "rates.frames_burst_per_ip",
            ),
            (
                "[rates]\nlogins_per_min_per_user = 0",
                "rates.logins_per_min_per_user",
            ),
            (
                "[rates]\naccepts_burst_per_ip = 0",
                "rates.accepts_burst_per_ip",
            ),
            ("[rates]\nstrikes_to_close = 0", "rates.strikes_to_close"),
            ("[ip]\nipv6_prefix = 0", "ip.ipv6_prefix"),
            ("[ip]\nipv6_prefix = 129", "ip.ipv6_prefix"),
            ("[ip]\nblock_secs = 0", "ip.block_secs"),
            ("[auth]\nargon2_iterations = 0", "auth.argon2_iterations"),
            ("[auth]\nargon2_parallelism = 0", "auth.argon2_parallelism"),
            (
                "[auth]\nargon2_parallelism = 4\nargon2_memory_kib = 31",
                "auth.argon2_memory_kib",
            ),
            ("[auth]\nlogin_workers = 0", "auth.login_workers"),
            // Values that parsed before and then killed or stalled the server.
            (
                "[auth]\nargon2_memory_kib = 4294967295",
                "auth.argon2_memory_kib",
            ),
            (
                "[auth]\nargon2_iterations = 1000000",
                "auth.argon2_iterations",
            ),
            ("[auth]\nlogin_workers = 20000", "auth.login_workers"),
            ("[auth]\nticket_ttl_s = 2592001", "auth.ticket_ttl_s"),
            ("[auth]\nargon2_parallelism = 65", "auth.argon2_parallelism"),
            (
                "[auth]\nargon2_memory_kib = 1048576\nargon2_iterations = 5",
                "auth.argon2_iterations",
            ),
            (
                "[auth]\nargon2_memory_kib = 1048576\nlogin_workers = 9",
                "auth.login_workers",
            ),
            (
                "[limits]\nmax_file_bytes = 17592186044417\nuser_quota_bytes = 17592186044417",
                "limits.max_file_bytes",
            ),
            (
                "[limits]\nuser_quota_bytes = 9223372036854775807",
                "limits.user_quota_bytes",
            ),
            ("[limits]\nmax_open_uploads = 65", "limits.max_open_uploads"),
            (
                "[limits]\nmax_connections = 4294967295",
                "limits.max_connections",
            ),
            (
                "[limits]\noutbound_queue_bytes = 4294967295",
                "limits.outbound_queue_bytes",
            ),
            (
                "[limits]\nmax_tracked_sources = 4294967295",
                "limits.max_tracked_sources",
            ),
            (
                "[timeouts]\nframe_min_rate_bytes_per_s = 9223372036854775807",
                "timeouts.frame_min_rate_bytes_per_s",
            ),
            (
                "[rates]\nframes_per_s_per_conn = 4294967295",
                "rates.frames_per_s_per_conn",
            ),
            (
                "[rates]\nstrikes_to_close = 4294967295",
                "rates.strikes_to_close",
            ),
            ("[firewall]\nthreshold = 4294967295", "firewall.threshold"),
            // No single event may block: a weight over half the threshold is refused.
            (
                "[firewall]\nweight_fatal_frame = 100",
                "firewall.weight_fatal_frame",
            ),
            (
                "[firewall]\nthreshold = 200\nweight_write_timeout = 101",
                "firewall.weight_write_timeout",
            ),
            ("[firewall]\nthreshold = 60", "firewall.weight_fatal_frame"),
            (
                "[rates]\nlogins_ok_per_min_per_ip = 0",
                "rates.logins_ok_per_min_per_ip",
            ),
            (
                "[firewall]\nweight_refused = 4294967295",
                "firewall.weight_refused",
            ),
        ];
        for (toml, key) in cases {
            invalid_key(toml, key);
        }
    }

    #[test]
    fn rules_accept_their_boundaries() -> Result<(), ConfigError> {
        Config::from_toml_str("[limits]\nmax_frame_bytes = 4096\nmax_message_bytes = 4032\nmax_mail_body_bytes = 1900\nmax_attachments = 1\nmax_inbox_page = 2\nmax_chunk_bytes = 4032\noutbound_queue_bytes = 4096\n")?;
        Config::from_toml_str("[limits]\nmax_frame_bytes = 16777216\n")?;
        Config::from_toml_str("[ip]\nipv6_prefix = 128\n")?;
        Config::from_toml_str("[timeouts]\nframe_grace_ms = 9999\n")?;
        Config::from_toml_str("[auth]\nargon2_memory_kib = 8\n")?;
        // Every upper bound is itself accepted.
        Config::from_toml_str(&format!(
            "[auth]\nargon2_memory_kib = {MAX_ARGON2_MEMORY_KIB}\nargon2_iterations = 4\nlogin_workers = 8\n"
        ))?;
        Config::from_toml_str(&format!(
            "[auth]\nargon2_memory_kib = 32768\nargon2_iterations = {MAX_ARGON2_ITERATIONS}\n\
             argon2_parallelism = {MAX_ARGON2_PARALLELISM}\nlogin_workers = {MAX_LOGIN_WORKERS}\n"
        ))?;
        Config::from_toml_str(&format!(
            "[limits]\nmax_file_bytes = {MAX_FILE_BYTES}\nuser_quota_bytes = {MAX_USER_QUOTA_BYTES}\n\
             max_open_uploads = {MAX_OPEN_UPLOADS}\nmax_connections = {MAX_CONNECTIONS}\n\
             max_connections_per_ip = {MAX_CONNECTIONS}\nmax_tracked_sources = {MAX_TRACKED_SOURCES}\n\
             outbound_queue_bytes = {MAX_OUTBOUND_QUEUE_BYTES}\n\
             [timeouts]\nframe_min_rate_bytes_per_s = {MAX_FRAME_MIN_RATE_BYTES_PER_S}\n\
             [rates]\nframes_per_s_per_conn = {MAX_RATE}\nstrikes_to_close = {MAX_RATE}\n\
             [firewall]\nthreshold = {MAX_RATE}\nweight_refused = 0\n"
        ))?;
        Ok(())
    }

    #[test]
    fn reason_quotes_the_value() {
        let reason = invalid_key("[ip]\nipv6_prefix = 129", "ip.ipv6_prefix");
        assert_eq!(reason, "must be between 1 and 128, got 129");
        let reason = invalid_key(
            "[rates]\nframes_per_s_per_conn = 0",
            "rates.frames_per_s_per_conn",
        );
        assert_eq!(reason, "must be at least 1, got 0");
    }

    #[test]
    fn duration_getters() {
        let t = TimeoutsConfig::default();
        assert_eq!(t.frame_budget(), Duration::from_secs(10));
        assert_eq!(t.frame_grace(), Duration::from_secs(1));
        assert_eq!(t.idle(), Duration::from_secs(60));
        assert_eq!(t.auth(), Duration::from_secs(10));
        assert_eq!(t.write(), Duration::from_secs(10));
        assert_eq!(t.shutdown_grace(), Duration::from_secs(5));
        assert_eq!(IpConfig::default().block(), Duration::from_secs(300));
    }
}
