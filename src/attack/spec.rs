//! What a scenario file's `[[attack]]` table says ([`AttackSpec`]), and the checked [`Attack`]
//! it becomes. Only an [`Attack`] can run.
//!
//! Every kind shares four keys: `connections` (most connections open at once, default 1),
//! `sources` (an IPv4 network inside 127.0.0.0/8 whose hosts the attacker binds, default
//! `127.0.1.0/24`, or in a simulation an IPv6 network, each of whose /64s is one host),
//! `start_s` (default 0) and `stop_s` (default: the end of the scenario), plus `rotate`
//! (IPv6 only: each connection from a host uses a new address in its /64).
//! Kind-specific keys all have defaults; [`AttackSpec::check`] fills them in and rejects bad
//! values with an error naming the key. A key the kind does not know is rejected by serde,
//! naming it, because the enum denies unknown fields.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::protocol::limits::MAX_USER_NAME;

/// Most connections one attack may hold open at once.
pub const MAX_CONNECTIONS: u32 = 20_000;

/// The longest scenario an attack accepts, in seconds (a year; keeps every instant
/// representable).
const MAX_DURATION_S: f64 = 365.0 * 86_400.0;

/// Most source hosts one attack expands its `sources` network to: addresses of an IPv4
/// network, /64s of an IPv6 one.
pub const MAX_SOURCES: usize = 4096;

/// The prefix of one IPv6 host's network: an ISP hands a customer a /64 (or more), and
/// every address in it is the customer's to use.
pub const IPV6_HOST_PREFIX: u8 = 64;

/// The `sources` network when a table names none.
pub const DEFAULT_SOURCES: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 1, 0), 24);

/// Every attack source must lie inside this network (Linux routes all of it to loopback).
const LOOPBACK_NET: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8);

// Kind-specific defaults, each with where its number comes from.

/// flood: frames written per batch; 32 small frames fill one loopback segment or so.
const DEFAULT_PIPELINE: u32 = 32;
/// raw-flood: bytes per write; a typical socket-send loop writes a few pages at a time.
const DEFAULT_CHUNK_BYTES: u64 = 16 * 1024;
/// oversized: bytes streamed after a header that declares more than the frame limit; twice
/// the default frame limit, so a server that buffered toward the declared length would show.
const DEFAULT_BODY_BYTES: u64 = 4 * 1024 * 1024;
/// slowloris: one byte a second, the classic drip.
const DEFAULT_INTERVAL_MS: u64 = 1000;
/// tls-slow-handshake: milliseconds between writes, and bytes per write. A ClientHello of a
/// few hundred bytes at 4 bytes every 250 ms takes well over 10 s, twice the default
/// handshake budget.
const DEFAULT_HELLO_INTERVAL_MS: u64 = 250;
const DEFAULT_HELLO_BYTES_PER_WRITE: u64 = 4;
/// plaintext-on-tls: milliseconds between connections of one slot.
const DEFAULT_PLAINTEXT_INTERVAL_MS: u64 = 200;
/// slowloris: a SEND_MAIL that declares about 1 MB, under the default frame limit, so the
/// server must wait for it rather than reject the header.
const DEFAULT_SLOWLORIS_DECLARED: u32 = 1_000_000;
/// preauth-buffer: 1 MiB - 1, the red team's SEND_MAIL, under the default frame limit.
const DEFAULT_PREAUTH_DECLARED: u32 = 1024 * 1024 - 1;
/// slow-read: a 4 MiB file, sixteen default chunks, far below the default quota.
const DEFAULT_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// slow-read: DOWNLOAD requests pipelined per connection: 256 x 256 KiB = 64 MiB of replies,
/// far more than any socket buffer.
const DEFAULT_REQUESTS_PER_CONN: u32 = 256;
/// slow-read: bytes asked for per DOWNLOAD, the default chunk size.
const DEFAULT_MAX_LEN: u32 = 256 * 1024;
/// conn-churn: connections per second per source, under the default accept rate (50/s).
const DEFAULT_PER_SOURCE_RATE: f64 = 20.0;
/// brute-force: total password guesses.
const DEFAULT_GUESSES: u32 = 1000;
/// probe: pause between probes on one connection slot.
const DEFAULT_PROBE_INTERVAL_MS: u64 = 200;
/// low-and-slow: one request a second, far under every frame rate limit.
const DEFAULT_LOW_RATE: f64 = 1.0;

/// Default guesses per hour per evasion slot.
const DEFAULT_EVASION_GUESSES_PER_HOUR: f64 = 6.0;

/// A closed vocabulary of a scenario key: an enum whose names serde reads and writes, so a
/// misspelled value is refused with the names it could have been ("unknown variant `pong`,
/// expected one of `ping`, ..."), with every variant in order ([`Self::ALL`]) and its name.
macro_rules! vocabulary {
    (
        $(#[$doc:meta])*
        $name:ident {
            $( $(#[$vdoc:meta])* $variant:ident = $text:literal, )*
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$vdoc])* #[serde(rename = $text)] $variant, )*
        }

        impl $name {
            /// Every value, in the order the docs list them.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The name used in scenario files.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

vocabulary! {
    /// Frames the flood attacker cycles through (`frames` key).
    FloodFrame {
        /// PING.
        Ping = "ping",
        /// LIST_INBOX of one entry.
        ListInbox = "list-inbox",
        /// SEND_MESSAGE of a short text to itself.
        SendMessage = "send-message",
        /// FETCH of a low item id.
        Fetch = "fetch",
    }
}

vocabulary! {
    /// The frame a preauth-buffer connection starts (`frame` key).
    PreauthFrame {
        /// SEND_MAIL, which needs a login.
        SendMail = "send-mail",
        /// AUTH, the one frame a stranger may send.
        Auth = "auth",
    }
}

vocabulary! {
    /// The malformed cases (`cases` key). Each is sent on a fresh connection.
    MalformedCase {
        /// A PING header whose first byte is 0x00.
        BadMagic = "bad-magic",
        /// A PING header with 0x52 where 0x4D is expected ("RR...").
        BadMagicSecond = "bad-magic-second",
        /// A PING header of version 2.
        BadVersion = "bad-version",
        /// A header of kind 0x7F, which names no kind.
        UnknownKind = "unknown-kind",
        /// A PONG (a reply kind) sent to the server.
        ReplyKind = "reply-kind",
        /// A PING with flags 0x0001.
        ReservedFlags = "reserved-flags",
        /// A PING declaring a 1-byte body.
        FixedTooLong = "fixed-too-long",
        /// A FETCH with a 4-byte body.
        FixedTooShort = "fixed-too-short",
        /// An AUTH whose user name declares 40 bytes.
        FieldTooLong = "field-too-long",
        /// An AUTH whose user name runs past the payload.
        FieldPastEnd = "field-past-end",
        /// A valid AUTH body followed by 3 more bytes.
        TrailingBytes = "trailing-bytes",
        /// An AUTH whose user name is not UTF-8.
        InvalidUtf8 = "invalid-utf8",
        /// A SEND_MAIL listing 255 attachments.
        TooManyItems = "too-many-items",
        /// A valid frame with one seeded random bit flipped.
        BitFlip = "bit-flip",
        /// A FETCH header and 3 of its 8 body bytes, then EOF.
        TruncatedFrame = "truncated-frame",
        /// 7 header bytes, then EOF.
        HeaderThenEof = "header-then-eof",
        /// A valid PING followed by garbage.
        GarbageAfterValid = "garbage-after-valid",
    }
}

vocabulary! {
    /// Operations the low-and-slow attacker mixes (`mix` keys).
    LowAndSlowOp {
        /// FETCH of the next id of an enumeration.
        Fetch = "fetch",
        /// DOWNLOAD of the next id of an enumeration.
        Download = "download",
        /// LIST_INBOX.
        List = "list",
        /// SEND_MESSAGE to itself.
        Message = "message",
        /// PING.
        Ping = "ping",
        /// A failed login as the victim, then a proper one.
        LoginFail = "login-fail",
        /// FETCH of an id that no item has (from 2^32 up): a NOT_FOUND, which no rule scores.
        Missing = "missing",
    }
}

macro_rules! attack_specs {
    ($(
        $(#[$vdoc:meta])*
        $variant:ident {
            $( $(#[$fdoc:meta])* $field:ident : $ty:ty, )*
        }
    )*) => {
        /// One `[[attack]]` table as read from TOML, internally tagged on `kind` (kebab-case).
        /// Unknown keys are rejected, naming the key. Every key is optional; the defaults are
        /// applied by [`AttackSpec::check`].
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
        pub enum AttackSpec {
            $(
                $(#[$vdoc])*
                $variant {
                    /// Most connections open at once (default 1, at most 20 000).
                    #[serde(default, skip_serializing_if = "Option::is_none")]
                    connections: Option<u32>,
                    /// Source network whose hosts are bound (default 127.0.1.0/24; at
                    /// most 4096 hosts are used): inside 127.0.0.0/8, or in a simulation
                    /// an IPv6 network, one host per /64 (per address below a /64).
                    #[serde(default, skip_serializing_if = "Option::is_none")]
                    sources: Option<IpNet>,
                    /// IPv6 `sources` of /64 or wider only: every connection from a host
                    /// uses a new address inside the host's /64 (default false: the
                    /// host's first address, `::1` of its /64).
                    #[serde(default, skip_serializing_if = "Option::is_none")]
                    rotate: Option<bool>,
                    /// Seconds after the scenario start when the attack begins (default 0).
                    #[serde(default, skip_serializing_if = "Option::is_none")]
                    start_s: Option<f64>,
                    /// Seconds after the scenario start when the attack ends (default: the
                    /// scenario's end).
                    #[serde(default, skip_serializing_if = "Option::is_none")]
                    stop_s: Option<f64>,
                    $(
                        $(#[$fdoc])*
                        #[serde(default, skip_serializing_if = "Option::is_none")]
                        $field: Option<$ty>,
                    )*
                },
            )*
        }

        impl AttackSpec {
            /// The kind of attack this table describes.
            pub fn kind(&self) -> AttackKind {
                match self {
                    $( AttackSpec::$variant { .. } => AttackKind::$variant, )*
                }
            }

            fn common(&self) -> CommonSpec {
                match self {
                    $(
                        AttackSpec::$variant {
                            connections, sources, rotate, start_s, stop_s, ..
                        } => {
                            CommonSpec {
                                connections: *connections,
                                sources: *sources,
                                rotate: *rotate,
                                start_s: *start_s,
                                stop_s: *stop_s,
                            }
                        }
                    )*
                }
            }
        }
    };
}

attack_specs! {
    /// Valid frames at full speed, pipelined; replies are drained unread.
    Flood {
        /// Frames written per batch (default 32, 1 to 4096).
        pipeline: u32,
        /// Frames to cycle through: "ping", "list-inbox", "send-message", "fetch" (of item 1,
        /// likely someone else's) (default ping, list-inbox, send-message).
        frames: Vec<FloodFrame>,
        /// Log in with the attack account first (default true); without it only PINGs make
        /// sense.
        auth: bool,
        /// Cap on frames per second per connection (default none: as fast as the server
        /// takes them). A flood kept under the server's frame rate limit is one no limiter
        /// answers, which only the detection model can catch.
        frames_per_s: u64,
    }
    /// Endless random bytes, the `while True: socket.send(data)` case.
    RawFlood {
        /// Cap on bytes per second for the whole attack, shared by its connections (default
        /// none: as fast as the socket takes them).
        bytes_per_s: u64,
        /// Bytes per write (default 16384, 1 to 1 MiB).
        chunk_bytes: u64,
    }
    /// A header declaring a length far over the limit, and a huge body.
    Oversized {
        /// The length the huge header declares (default u32::MAX).
        declared_len: u32,
        /// Bytes streamed after a header that declares the frame limit plus one (default
        /// 4 MiB, at most 1 GiB).
        body_bytes: u64,
    }
    /// Many connections, each sending one byte at a time; a header that declares a large
    /// frame, then a drip or a stall.
    Slowloris {
        /// Milliseconds between bytes (default 1000, 1 to 600 000).
        interval_ms: u64,
        /// Payload length the dripped SEND_MAIL header declares (default 1 000 000).
        declared_len: u32,
    }
    /// Many connections that never log in, each starting a frame and stalling, so that the
    /// server would hold whatever it buffered for a stranger.
    PreauthBuffer {
        /// The frame started: `send-mail` (default) or `auth`.
        frame: PreauthFrame,
        /// Payload length its header declares (default 1 048 575).
        declared_len: u32,
        /// Body bytes sent before the stall (default: all but the last byte of the declared
        /// payload, at most 16 MiB).
        body_bytes: u32,
    }
    /// Uploads a big file to itself, then pipelines DOWNLOADs of it and never reads.
    SlowRead {
        /// Size of the file uploaded first (default 4 MiB, 1 byte to 1 GiB).
        file_bytes: u64,
        /// DOWNLOAD requests pipelined per connection (default 256, 1 to 100 000).
        requests_per_conn: u32,
        /// Bytes asked for per DOWNLOAD (default 262144).
        max_len: u32,
    }
    /// A connect/disconnect storm from many sources.
    ConnChurn {
        /// Connections per second per source (default 20, above 0 and at most 10 000).
        per_source_rate: f64,
    }
    /// Holds as many connections as it is allowed.
    ConnExhaust {}
    /// Bad magic, version or kind, truncated frames, wrong lengths, invalid UTF-8, bit flips.
    Malformed {
        /// Case names to cycle through (default all of them).
        cases: Vec<MalformedCase>,
    }
    /// Tries to reach the victim's data: other users' ids, flag bits, path traversal, SQL
    /// metacharacters, forged senders, replayed AUTH frames.
    Tamper {}
    /// Password guessing against one user.
    BruteForce {
        /// Total guesses (default 1000).
        guesses: u32,
        /// The user attacked (default: the scenario's victim).
        target_user: String,
    }
    /// An HTTP request, a TLS ClientHello and an SSH banner sent to the port.
    Probe {
        /// Milliseconds between probes on one connection slot (default 200).
        interval_ms: u64,
    }
    /// Behaves almost like a legit user but enumerates ids and fails logins, staying under
    /// every rate limit and every rule's threshold.
    LowAndSlow {
        /// Requests per second per connection (default 1, above 0 and at most 20).
        rate_per_s: f64,
        /// Relative weights of "fetch", "download", "list", "message", "ping", "login-fail"
        /// and "missing" (default fetch 0.35, download 0.05, list 0.2, message 0.15, ping
        /// 0.15, login-fail 0.1, missing 0).
        mix: BTreeMap<LowAndSlowOp, f64>,
    }
    /// Complete TLS handshakes (the server's key exchange and signature), each connection
    /// closed right after; needs `tls = true`.
    TlsHandshakeFlood {}
    /// A real ClientHello dripped a few bytes at a time, a slowloris of the handshake; needs
    /// `tls = true`.
    TlsSlowHandshake {
        /// Milliseconds between writes (default 250, 1 to 600 000).
        interval_ms: u64,
        /// Bytes per write (default 4, 1 to 64).
        bytes_per_write: u64,
    }
    /// A plaintext rampart AUTH frame sent to the TLS port on each connection; needs
    /// `tls = true`.
    PlaintextOnTls {
        /// Milliseconds between connections of one slot (default 200, 1 to 600 000).
        interval_ms: u64,
    }
    /// Password guessing dressed as the crowd: each slot is a user on its own source, with
    /// an account of its own, at a user's pace and mix, and now and then tries one password
    /// on the target account before logging in to its own.
    Evasion {
        /// Requests per second of each slot's ordinary traffic (default 1, above 0 and at
        /// most 20).
        rate_per_s: f64,
        /// Guesses per hour per slot, at random moments (default 6, above 0 and at most
        /// 3600).
        guesses_per_hour: f64,
        /// The user attacked (default: the scenario's victim).
        target_user: String,
    }
}

struct CommonSpec {
    connections: Option<u32>,
    sources: Option<IpNet>,
    rotate: Option<bool>,
    start_s: Option<f64>,
    stop_s: Option<f64>,
}

/// The kinds of attack, in the order the docs list them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttackKind {
    /// Valid frames at full speed, replies ignored.
    Flood,
    /// Endless random bytes.
    RawFlood,
    /// Over-limit lengths and huge bodies.
    Oversized,
    /// One byte at a time on many connections.
    Slowloris,
    /// Strangers starting large frames and stalling before login.
    PreauthBuffer,
    /// Big downloads that are never read.
    SlowRead,
    /// A connect/disconnect storm.
    ConnChurn,
    /// Holds every connection it is allowed.
    ConnExhaust,
    /// Malformed frames.
    Malformed,
    /// Tampering with identity, ids, flags, names and strings.
    Tamper,
    /// Password guessing.
    BruteForce,
    /// Non-rampart protocols (HTTP, TLS, SSH) sent to the port.
    Probe,
    /// Enumeration and failed logins under every limit.
    LowAndSlow,
    /// Complete TLS handshakes, closed at once.
    TlsHandshakeFlood,
    /// A ClientHello dripped a few bytes at a time.
    TlsSlowHandshake,
    /// Plaintext rampart frames sent to the TLS port.
    PlaintextOnTls,
    /// Slow password guessing from many addresses, dressed as ordinary users.
    Evasion,
}

impl AttackKind {
    /// Every kind.
    pub const ALL: [AttackKind; 17] = [
        AttackKind::Flood,
        AttackKind::RawFlood,
        AttackKind::Oversized,
        AttackKind::Slowloris,
        AttackKind::PreauthBuffer,
        AttackKind::SlowRead,
        AttackKind::ConnChurn,
        AttackKind::ConnExhaust,
        AttackKind::Malformed,
        AttackKind::Tamper,
        AttackKind::BruteForce,
        AttackKind::Probe,
        AttackKind::LowAndSlow,
        AttackKind::TlsHandshakeFlood,
        AttackKind::TlsSlowHandshake,
        AttackKind::PlaintextOnTls,
        AttackKind::Evasion,
    ];

    /// The kebab-case name used in scenario files (`"raw-flood"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            AttackKind::Flood => "flood",
            AttackKind::RawFlood => "raw-flood",
            AttackKind::Oversized => "oversized",
            AttackKind::Slowloris => "slowloris",
            AttackKind::PreauthBuffer => "preauth-buffer",
            AttackKind::SlowRead => "slow-read",
            AttackKind::ConnChurn => "conn-churn",
            AttackKind::ConnExhaust => "conn-exhaust",
            AttackKind::Malformed => "malformed",
            AttackKind::Tamper => "tamper",
            AttackKind::BruteForce => "brute-force",
            AttackKind::Probe => "probe",
            AttackKind::LowAndSlow => "low-and-slow",
            AttackKind::TlsHandshakeFlood => "tls-handshake-flood",
            AttackKind::TlsSlowHandshake => "tls-slow-handshake",
            AttackKind::PlaintextOnTls => "plaintext-on-tls",
            AttackKind::Evasion => "evasion",
        }
    }

    /// True for the kinds that attack the TLS handshake itself: they only make sense in a
    /// scenario with `tls = true`.
    pub fn needs_tls(&self) -> bool {
        matches!(
            self,
            AttackKind::TlsHandshakeFlood
                | AttackKind::TlsSlowHandshake
                | AttackKind::PlaintextOnTls
        )
    }

    /// True for the kinds that behave like a user (connect, log in, ordinary requests)
    /// before they attack, or that connect before they send anything (probe), and report
    /// each source's first attacking frame in [`super::Observations::first_attack`]. Every
    /// other kind attacks from its first frame.
    pub fn reports_first_attack(&self) -> bool {
        matches!(
            self,
            AttackKind::Tamper | AttackKind::LowAndSlow | AttackKind::Probe | AttackKind::Evasion
        )
    }
}

impl fmt::Display for AttackKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A bad value in an attack table. Its message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} attack: `{key}` {message}")]
pub struct AttackError {
    /// The attack's kind.
    pub kind: AttackKind,
    /// The offending key.
    pub key: &'static str,
    /// What is wrong with its value, in lower case.
    pub message: String,
}

/// Kind-specific values after checking, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Params {
    Flood {
        pipeline: u32,
        frames: Vec<FloodFrame>,
        auth: bool,
        frames_per_s: Option<u64>,
    },
    RawFlood {
        bytes_per_s: Option<u64>,
        chunk_bytes: usize,
    },
    Oversized {
        declared_len: u32,
        body_bytes: u64,
    },
    Slowloris {
        interval: Duration,
        declared_len: u32,
    },
    PreauthBuffer {
        /// The frame's kind byte (SEND_MAIL or AUTH).
        kind: u8,
        declared_len: u32,
        body_bytes: u32,
    },
    SlowRead {
        file_bytes: u64,
        requests_per_conn: u32,
        max_len: u32,
    },
    ConnChurn {
        per_source_rate: f64,
    },
    ConnExhaust,
    Malformed {
        cases: Vec<MalformedCase>,
    },
    Tamper,
    BruteForce {
        guesses: u32,
        target_user: Option<String>,
    },
    Probe {
        interval: Duration,
    },
    LowAndSlow {
        rate_per_s: f64,
        /// (operation, weight), in [`LowAndSlowOp::ALL`] order; weights sum to more than 0.
        mix: Vec<(LowAndSlowOp, f64)>,
    },
    TlsHandshakeFlood,
    TlsSlowHandshake {
        interval: Duration,
        bytes_per_write: usize,
    },
    PlaintextOnTls {
        interval: Duration,
    },
    Evasion {
        rate_per_s: f64,
        guesses_per_hour: f64,
        target_user: Option<String>,
    },
}

/// A checked attack, ready to run with [`run`](super::run).
#[derive(Debug, Clone, PartialEq)]
pub struct Attack {
    spec: AttackSpec,
    kind: AttackKind,
    pub(crate) params: Params,
    connections: u32,
    net: IpNet,
    sources: Vec<IpAddr>,
    rotate: bool,
    start: Duration,
    stop: Duration,
}

impl Attack {
    /// The kind of attack.
    pub fn kind(&self) -> AttackKind {
        self.kind
    }

    /// The attacker's source hosts, in order (the hosts of its `sources` network, at most
    /// [`MAX_SOURCES`]): for IPv4 each address; for an IPv6 network of /64 or wider, the
    /// first address (`::1`) of each /64, which stands for the host's whole /64.
    pub fn sources(&self) -> &[IpAddr] {
        &self.sources
    }

    /// The `sources` network.
    pub fn source_net(&self) -> IpNet {
        self.net
    }

    /// Whether each connection from an IPv6 host uses a new address of its /64 (`rotate`).
    pub fn rotates(&self) -> bool {
        self.rotate
    }

    /// Whether the attack runs only in a simulation: its sources are IPv6, which real
    /// sockets cannot bind (they bind loopback IPv4 addresses only).
    pub fn needs_sim(&self) -> bool {
        self.net.addr().is_ipv6()
    }

    /// When the attack begins, after the scenario start.
    pub fn start(&self) -> Duration {
        self.start
    }

    /// When the attack ends, after the scenario start.
    pub fn stop(&self) -> Duration {
        self.stop
    }

    /// Most connections open at once.
    pub fn connections(&self) -> u32 {
        self.connections
    }

    /// The table this attack was checked from.
    pub fn spec(&self) -> &AttackSpec {
        &self.spec
    }
}

/// The source hosts of a `sources` network, at most [`MAX_SOURCES`]: the addresses of an
/// IPv4 network inside 127.0.0.0/8 (without the network and broadcast addresses of
/// 127.0.0.0/8 itself); for an IPv6 network of /64 or wider, address `::1` of each of its
/// /64s, each standing for one host's /64; for a narrower IPv6 network, its addresses.
fn source_hosts(net: IpNet) -> Result<Vec<IpAddr>, String> {
    let hosts: Vec<IpAddr> = match net {
        IpNet::V4(net) => {
            if !LOOPBACK_NET.contains(&net) {
                return Err(format!(
                    "an IPv4 network must lie inside 127.0.0.0/8 (loopback), got {net}"
                ));
            }
            net.hosts()
                .filter(|ip| *ip != LOOPBACK_NET.network() && *ip != LOOPBACK_NET.broadcast())
                .take(MAX_SOURCES)
                .map(IpAddr::V4)
                .collect()
        }
        IpNet::V6(net) if net.prefix_len() <= IPV6_HOST_PREFIX => net
            .subnets(IPV6_HOST_PREFIX)
            .map_err(|e| e.to_string())?
            .take(MAX_SOURCES)
            .map(|host| IpAddr::V6(host_address(host.network(), 1)))
            .collect(),
        IpNet::V6(net) => net.hosts().take(MAX_SOURCES).map(IpAddr::V6).collect(),
    };
    if hosts.is_empty() {
        return Err(format!("{net} has no usable host address"));
    }
    Ok(hosts)
}

/// Address `interface` (the low 64 bits) of the /64 that holds `host`.
pub(crate) fn host_address(host: Ipv6Addr, interface: u64) -> Ipv6Addr {
    let prefix = u128::from(host) & !u128::from(u64::MAX);
    Ipv6Addr::from(prefix | u128::from(interface))
}

/// Builds [`AttackError`]s for one kind.
struct Checker {
    kind: AttackKind,
}

impl Checker {
    fn err(&self, key: &'static str, message: impl Into<String>) -> AttackError {
        AttackError {
            kind: self.kind,
            key,
            message: message.into(),
        }
    }

    fn range_u64(&self, key: &'static str, v: u64, lo: u64, hi: u64) -> Result<u64, AttackError> {
        if v < lo || v > hi {
            return Err(self.err(key, format!("must be between {lo} and {hi}, got {v}")));
        }
        Ok(v)
    }

    /// A `target_user` key: a valid user name, if given.
    fn target_user(&self, user: &Option<String>) -> Result<Option<String>, AttackError> {
        if let Some(user) = user {
            if user.is_empty() || user.len() > MAX_USER_NAME {
                return Err(self.err(
                    "target_user",
                    format!(
                        "must be 1 to {MAX_USER_NAME} bytes long, got {}",
                        user.len()
                    ),
                ));
            }
        }
        Ok(user.clone())
    }

    fn range_f64(&self, key: &'static str, v: f64, lo: f64, hi: f64) -> Result<f64, AttackError> {
        if !v.is_finite() || v <= lo || v > hi {
            return Err(self.err(key, format!("must be above {lo} and at most {hi}, got {v}")));
        }
        Ok(v)
    }
}

impl AttackSpec {
    /// Checks every value and fills in the defaults. `scenario_duration_s` is the scenario's
    /// `duration_s`, the default `stop_s`. The error names the offending key.
    pub fn check(&self, scenario_duration_s: f64) -> Result<Attack, AttackError> {
        let kind = self.kind();
        let c = Checker { kind };
        let common = self.common();
        if !scenario_duration_s.is_finite()
            || scenario_duration_s <= 0.0
            || scenario_duration_s > MAX_DURATION_S
        {
            return Err(c.err(
                "duration_s",
                format!(
                    "must be a positive number of seconds up to {MAX_DURATION_S}, got {scenario_duration_s}"
                ),
            ));
        }
        let connections = common.connections.unwrap_or(1);
        c.range_u64(
            "connections",
            u64::from(connections),
            1,
            u64::from(MAX_CONNECTIONS),
        )?;
        let net = common.sources.unwrap_or(IpNet::V4(DEFAULT_SOURCES));
        let rotate = common.rotate.unwrap_or(false);
        let sources = source_hosts(net).map_err(|m| c.err("sources", m))?;
        if rotate && !matches!(net, IpNet::V6(n) if n.prefix_len() <= IPV6_HOST_PREFIX) {
            return Err(c.err(
                "rotate",
                format!(
                    "needs IPv6 sources of /{IPV6_HOST_PREFIX} or wider (each host rotates \
                     inside its own /{IPV6_HOST_PREFIX}), got {net}"
                ),
            ));
        }
        let start_s = common.start_s.unwrap_or(0.0);
        if !start_s.is_finite() || start_s < 0.0 || start_s >= scenario_duration_s {
            return Err(c.err(
                "start_s",
                format!(
                    "must be at least 0 and below the scenario's duration_s ({scenario_duration_s}), got {start_s}"
                ),
            ));
        }
        let stop_s = common.stop_s.unwrap_or(scenario_duration_s);
        if !stop_s.is_finite() || stop_s <= start_s || stop_s > scenario_duration_s {
            return Err(c.err(
                "stop_s",
                format!(
                    "must be above start_s ({start_s}) and at most the scenario's duration_s ({scenario_duration_s}), got {stop_s}"
                ),
            ));
        }
        let params = self.check_params(&c)?;
        Ok(Attack {
            spec: self.clone(),
            kind,
            params,
            connections,
            net,
            sources,
            rotate,
            start: Duration::from_secs_f64(start_s),
            stop: Duration::from_secs_f64(stop_s),
        })
    }

    fn check_params(&self, c: &Checker) -> Result<Params, AttackError> {
        Ok(match self {
            AttackSpec::Flood {
                pipeline,
                frames,
                auth,
                frames_per_s,
                ..
            } => {
                if let Some(rate) = frames_per_s {
                    c.range_u64("frames_per_s", *rate, 1, u64::MAX)?;
                }
                let pipeline = c.range_u64(
                    "pipeline",
                    u64::from(pipeline.unwrap_or(DEFAULT_PIPELINE)),
                    1,
                    4096,
                )? as u32;
                let frames = match frames {
                    None => vec![
                        FloodFrame::Ping,
                        FloodFrame::ListInbox,
                        FloodFrame::SendMessage,
                    ],
                    Some(frames) => {
                        if frames.is_empty() {
                            return Err(c.err("frames", "must name at least one frame"));
                        }
                        frames.clone()
                    }
                };
                Params::Flood {
                    pipeline,
                    frames,
                    auth: auth.unwrap_or(true),
                    frames_per_s: *frames_per_s,
                }
            }
            AttackSpec::RawFlood {
                bytes_per_s,
                chunk_bytes,
                ..
            } => {
                if let Some(rate) = bytes_per_s {
                    c.range_u64("bytes_per_s", *rate, 1, u64::MAX)?;
                }
                let chunk = c.range_u64(
                    "chunk_bytes",
                    chunk_bytes.unwrap_or(DEFAULT_CHUNK_BYTES),
                    1,
                    1024 * 1024,
                )?;
                Params::RawFlood {
                    bytes_per_s: *bytes_per_s,
                    chunk_bytes: chunk as usize,
                }
            }
            AttackSpec::Oversized {
                declared_len,
                body_bytes,
                ..
            } => Params::Oversized {
                declared_len: declared_len.unwrap_or(u32::MAX),
                body_bytes: c.range_u64(
                    "body_bytes",
                    body_bytes.unwrap_or(DEFAULT_BODY_BYTES),
                    1,
                    1 << 30,
                )?,
            },
            AttackSpec::Slowloris {
                interval_ms,
                declared_len,
                ..
            } => Params::Slowloris {
                interval: Duration::from_millis(c.range_u64(
                    "interval_ms",
                    interval_ms.unwrap_or(DEFAULT_INTERVAL_MS),
                    1,
                    600_000,
                )?),
                declared_len: declared_len.unwrap_or(DEFAULT_SLOWLORIS_DECLARED),
            },
            AttackSpec::PreauthBuffer {
                frame,
                declared_len,
                body_bytes,
                ..
            } => {
                let kind = match frame.unwrap_or(PreauthFrame::SendMail) {
                    PreauthFrame::SendMail => crate::protocol::Kind::SendMail,
                    PreauthFrame::Auth => crate::protocol::Kind::Auth,
                };
                let declared_len = declared_len.unwrap_or(DEFAULT_PREAUTH_DECLARED);
                Params::PreauthBuffer {
                    kind: kind as u8,
                    declared_len,
                    body_bytes: c.range_u64(
                        "body_bytes",
                        u64::from(body_bytes.unwrap_or(declared_len.saturating_sub(1))),
                        0,
                        1 << 24,
                    )? as u32,
                }
            }
            AttackSpec::SlowRead {
                file_bytes,
                requests_per_conn,
                max_len,
                ..
            } => Params::SlowRead {
                file_bytes: c.range_u64(
                    "file_bytes",
                    file_bytes.unwrap_or(DEFAULT_FILE_BYTES),
                    1,
                    1 << 30,
                )?,
                requests_per_conn: c.range_u64(
                    "requests_per_conn",
                    u64::from(requests_per_conn.unwrap_or(DEFAULT_REQUESTS_PER_CONN)),
                    1,
                    100_000,
                )? as u32,
                max_len: c.range_u64(
                    "max_len",
                    u64::from(max_len.unwrap_or(DEFAULT_MAX_LEN)),
                    1,
                    u64::from(u32::MAX),
                )? as u32,
            },
            AttackSpec::ConnChurn {
                per_source_rate, ..
            } => Params::ConnChurn {
                per_source_rate: c.range_f64(
                    "per_source_rate",
                    per_source_rate.unwrap_or(DEFAULT_PER_SOURCE_RATE),
                    0.0,
                    10_000.0,
                )?,
            },
            AttackSpec::ConnExhaust { .. } => Params::ConnExhaust,
            AttackSpec::Malformed { cases, .. } => {
                let cases = match cases {
                    None => MalformedCase::ALL.to_vec(),
                    Some(cases) => {
                        if cases.is_empty() {
                            return Err(c.err("cases", "must name at least one case"));
                        }
                        cases.clone()
                    }
                };
                Params::Malformed { cases }
            }
            AttackSpec::Tamper { .. } => Params::Tamper,
            AttackSpec::BruteForce {
                guesses,
                target_user,
                ..
            } => Params::BruteForce {
                guesses: c.range_u64(
                    "guesses",
                    u64::from(guesses.unwrap_or(DEFAULT_GUESSES)),
                    1,
                    u64::from(u32::MAX),
                )? as u32,
                target_user: c.target_user(target_user)?,
            },
            AttackSpec::Evasion {
                rate_per_s,
                guesses_per_hour,
                target_user,
                ..
            } => Params::Evasion {
                rate_per_s: c.range_f64(
                    "rate_per_s",
                    rate_per_s.unwrap_or(DEFAULT_LOW_RATE),
                    0.0,
                    20.0,
                )?,
                guesses_per_hour: c.range_f64(
                    "guesses_per_hour",
                    guesses_per_hour.unwrap_or(DEFAULT_EVASION_GUESSES_PER_HOUR),
                    0.0,
                    3600.0,
                )?,
                target_user: c.target_user(target_user)?,
            },
            AttackSpec::TlsHandshakeFlood { .. } => Params::TlsHandshakeFlood,
            AttackSpec::TlsSlowHandshake {
                interval_ms,
                bytes_per_write,
                ..
            } => Params::TlsSlowHandshake {
                interval: Duration::from_millis(c.range_u64(
                    "interval_ms",
                    interval_ms.unwrap_or(DEFAULT_HELLO_INTERVAL_MS),
                    1,
                    600_000,
                )?),
                bytes_per_write: c.range_u64(
                    "bytes_per_write",
                    bytes_per_write.unwrap_or(DEFAULT_HELLO_BYTES_PER_WRITE),
                    1,
                    64,
                )? as usize,
            },
            AttackSpec::PlaintextOnTls { interval_ms, .. } => Params::PlaintextOnTls {
                interval: Duration::from_millis(c.range_u64(
                    "interval_ms",
                    interval_ms.unwrap_or(DEFAULT_PLAINTEXT_INTERVAL_MS),
                    1,
                    600_000,
                )?),
            },
            AttackSpec::Probe { interval_ms, .. } => Params::Probe {
                interval: Duration::from_millis(c.range_u64(
                    "interval_ms",
                    interval_ms.unwrap_or(DEFAULT_PROBE_INTERVAL_MS),
                    1,
                    600_000,
                )?),
            },
            AttackSpec::LowAndSlow {
                rate_per_s, mix, ..
            } => {
                let rate = c.range_f64(
                    "rate_per_s",
                    rate_per_s.unwrap_or(DEFAULT_LOW_RATE),
                    0.0,
                    20.0,
                )?;
                let mix = match mix {
                    None => vec![
                        (LowAndSlowOp::Fetch, 0.35),
                        (LowAndSlowOp::Download, 0.05),
                        (LowAndSlowOp::List, 0.2),
                        (LowAndSlowOp::Message, 0.15),
                        (LowAndSlowOp::Ping, 0.15),
                        (LowAndSlowOp::LoginFail, 0.1),
                    ],
                    Some(map) => {
                        for (op, w) in map {
                            if !w.is_finite() || *w < 0.0 {
                                return Err(c.err(
                                    "mix",
                                    format!(
                                        "weight of {:?} must be 0 or more, got {w}",
                                        op.as_str()
                                    ),
                                ));
                            }
                        }
                        let mix: Vec<(LowAndSlowOp, f64)> = LowAndSlowOp::ALL
                            .iter()
                            .map(|&op| (op, map.get(&op).copied().unwrap_or(0.0)))
                            .filter(|(_, w)| *w > 0.0)
                            .collect();
                        if mix.is_empty() {
                            return Err(c.err("mix", "must give some operation a weight above 0"));
                        }
                        mix
                    }
                };
                Params::LowAndSlow {
                    rate_per_s: rate,
                    mix,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AttackSpec, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn defaults_fill_in() -> Result<(), Box<dyn std::error::Error>> {
        let spec = parse(r#"kind = "raw-flood""#)?;
        let attack = spec.check(10.0)?;
        assert_eq!(attack.kind(), AttackKind::RawFlood);
        assert_eq!(attack.connections(), 1);
        assert_eq!(attack.sources().len(), 254);
        assert_eq!(attack.sources()[0], Ipv4Addr::new(127, 0, 1, 1));
        assert_eq!(attack.start(), Duration::ZERO);
        assert_eq!(attack.stop(), Duration::from_secs(10));
        assert_eq!(
            attack.params,
            Params::RawFlood {
                bytes_per_s: None,
                chunk_bytes: 16 * 1024
            }
        );
        Ok(())
    }

    #[test]
    fn kind_specific_keys_and_integers_as_seconds() -> Result<(), Box<dyn std::error::Error>> {
        let spec = parse(
            "kind = \"brute-force\"\nconnections = 4\nsources = \"127.0.2.0/25\"\nstart_s = 2\nstop_s = 7.5\nguesses = 30\n",
        )?;
        let attack = spec.check(10.0)?;
        assert_eq!(attack.sources().len(), 126);
        assert_eq!(attack.start(), Duration::from_secs(2));
        assert_eq!(attack.stop(), Duration::from_millis(7500));
        assert!(matches!(
            attack.params,
            Params::BruteForce { guesses: 30, .. }
        ));
        let one = parse("kind = \"probe\"\nsources = \"127.0.9.9/32\"\n")?.check(5.0)?;
        assert_eq!(one.sources(), &[Ipv4Addr::new(127, 0, 9, 9)]);
        Ok(())
    }

    #[test]
    fn ipv6_sources_are_one_host_per_64_and_rotate_inside_it(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let v6 = |s: &str| -> Result<IpAddr, std::net::AddrParseError> { s.parse() };
        let wide = parse("kind = \"brute-force\"\nsources = \"2001:db8::/48\"\nrotate = true\n")?
            .check(10.0)?;
        assert!(wide.needs_sim() && wide.rotates());
        // 65,536 /64s in a /48: the first MAX_SOURCES of them, each as its address ::1.
        assert_eq!(wide.sources().len(), MAX_SOURCES);
        assert_eq!(wide.sources()[0], v6("2001:db8::1")?);
        assert_eq!(wide.sources()[1], v6("2001:db8:0:1::1")?);
        assert_eq!(wide.sources()[4095], v6("2001:db8:0:fff::1")?);
        // A /62 is four hosts; without rotate each keeps its one address.
        let four = parse("kind = \"slowloris\"\nsources = \"2001:db8:7::/62\"\n")?.check(10.0)?;
        assert!(four.needs_sim() && !four.rotates());
        assert_eq!(four.sources().len(), 4);
        assert_eq!(four.sources()[3], v6("2001:db8:7:3::1")?);
        // Narrower than a /64: each address is a host, as in IPv4.
        let narrow = parse("kind = \"flood\"\nsources = \"2001:db8::/126\"\n")?.check(10.0)?;
        assert_eq!(narrow.sources().len(), 4);
        assert_eq!(narrow.sources()[0], v6("2001:db8::")?);
        // IPv4 runs in both modes and never rotates.
        let v4 = parse("kind = \"flood\"\n")?.check(10.0)?;
        assert!(!v4.needs_sim() && !v4.rotates());
        // Rotation happens inside the host's /64, whatever address stands for it.
        let host = match v6("2001:db8:0:5::1")? {
            IpAddr::V6(a) => a,
            IpAddr::V4(_) => return Err("not IPv6".into()),
        };
        assert_eq!(
            IpAddr::V6(host_address(host, 0xabc)),
            v6("2001:db8:0:5::abc")?
        );
        Ok(())
    }

    #[test]
    fn typo_is_rejected_naming_the_key() {
        let err = parse("kind = \"raw-flood\"\nbytes_per_sec = 5\n").err();
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("bytes_per_sec"), "{text}");
        let err = parse("kind = \"tamper\"\nconections = 5\n").err();
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("conections"), "{text}");
        let err = parse("kind = \"raw-flod\"\n").err();
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("raw-flod"), "{text}");
    }

    #[test]
    fn a_misspelled_value_names_the_ones_it_could_be() {
        let error = |text: &str| parse(text).err().map(|e| e.to_string()).unwrap_or_default();
        for (text, expected) in [
            (
                "kind = \"flood\"\nframes = [\"ping\", \"pong\"]\n",
                "unknown variant `pong`, expected one of `ping`, `list-inbox`, `send-message`, \
                 `fetch`",
            ),
            (
                "kind = \"malformed\"\ncases = [\"bad-magic\", \"nope\"]\n",
                "unknown variant `nope`, expected one of `bad-magic`, `bad-magic-second`,",
            ),
            (
                "kind = \"low-and-slow\"\nmix = { sneeze = 1.0 }\n",
                "unknown variant `sneeze`, expected one of `fetch`, `download`, `list`, \
                 `message`, `ping`, `login-fail`",
            ),
            (
                "kind = \"preauth-buffer\"\nframe = \"send_mail\"\n",
                "unknown variant `send_mail`, expected `send-mail` or `auth`",
            ),
        ] {
            let text = error(text);
            assert!(text.contains(expected), "{text}");
        }
    }

    /// Every vocabulary's names are the ones scenario files and docs/SCENARIOS.md use, read
    /// and written by serde in both directions.
    #[test]
    fn vocabularies_keep_their_names() -> Result<(), Box<dyn std::error::Error>> {
        fn names<T: Serialize + serde::de::DeserializeOwned + PartialEq + fmt::Debug + Copy>(
            all: &[T],
            as_str: fn(T) -> &'static str,
        ) -> Result<Vec<&'static str>, serde_json::Error> {
            for &v in all {
                let json = serde_json::to_string(&v)?;
                assert_eq!(json, format!("\"{}\"", as_str(v)));
                assert_eq!(serde_json::from_str::<T>(&json)?, v);
            }
            Ok(all.iter().map(|&v| as_str(v)).collect())
        }
        assert_eq!(
            names(FloodFrame::ALL, FloodFrame::as_str)?,
            ["ping", "list-inbox", "send-message", "fetch"]
        );
        assert_eq!(
            names(PreauthFrame::ALL, PreauthFrame::as_str)?,
            ["send-mail", "auth"]
        );
        assert_eq!(
            names(MalformedCase::ALL, MalformedCase::as_str)?,
            [
                "bad-magic",
                "bad-magic-second",
                "bad-version",
                "unknown-kind",
                "reply-kind",
                "reserved-flags",
                "fixed-too-long",
                "fixed-too-short",
                "field-too-long",
                "field-past-end",
                "trailing-bytes",
                "invalid-utf8",
                "too-many-items",
                "bit-flip",
                "truncated-frame",
                "header-then-eof",
                "garbage-after-valid",
            ]
        );
        assert_eq!(
            names(LowAndSlowOp::ALL, LowAndSlowOp::as_str)?,
            [
                "fetch",
                "download",
                "list",
                "message",
                "ping",
                "login-fail",
                "missing"
            ]
        );
        // Keyed by operation, `mix` still reads and writes as a table of names.
        let spec = parse("kind = \"low-and-slow\"\nmix = { login-fail = 0.5, fetch = 1.0 }\n")?;
        let text = toml::to_string(&spec)?;
        assert!(
            text.contains("[mix]\nfetch = 1.0\nlogin-fail = 0.5\n"),
            "{text}"
        );
        assert_eq!(parse(&text)?, spec);
        Ok(())
    }

    fn check_err(text: &str, key: &str) {
        let result = parse(text).map(|s| s.check(10.0));
        match result {
            Ok(Err(e)) => {
                assert_eq!(e.key, key, "{e}");
                assert!(e.to_string().contains(key), "{e}");
            }
            other => panic!("expected an error for `{key}`, got {other:?}"),
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        check_err("kind = \"flood\"\nsources = \"10.0.0.0/24\"\n", "sources");
        check_err("kind = \"flood\"\nsources = \"126.0.0.0/7\"\n", "sources");
        check_err("kind = \"flood\"\nrotate = true\n", "rotate");
        check_err(
            "kind = \"flood\"\nsources = \"2001:db8::/80\"\nrotate = true\n",
            "rotate",
        );
        check_err("kind = \"flood\"\nconnections = 0\n", "connections");
        check_err("kind = \"flood\"\nconnections = 20001\n", "connections");
        check_err("kind = \"flood\"\nstart_s = 5\nstop_s = 4\n", "stop_s");
        check_err("kind = \"flood\"\nstart_s = 10\n", "start_s");
        check_err("kind = \"flood\"\nstop_s = 11\n", "stop_s");
        check_err("kind = \"flood\"\npipeline = 0\n", "pipeline");
        check_err("kind = \"flood\"\nframes = []\n", "frames");
        check_err("kind = \"raw-flood\"\nchunk_bytes = 0\n", "chunk_bytes");
        check_err("kind = \"malformed\"\ncases = []\n", "cases");
        check_err(
            "kind = \"conn-churn\"\nper_source_rate = 0\n",
            "per_source_rate",
        );
        check_err("kind = \"low-and-slow\"\nmix = { ping = -1.0 }\n", "mix");
        check_err("kind = \"low-and-slow\"\nmix = { ping = 0.0 }\n", "mix");
        check_err(
            "kind = \"brute-force\"\ntarget_user = \"\"\n",
            "target_user",
        );
        check_err("kind = \"slowloris\"\ninterval_ms = 0\n", "interval_ms");
        for bad in [0.0, -1.0, f64::NAN, 1e30] {
            let err = parse("kind = \"probe\"").map(|s| s.check(bad).err());
            assert!(
                matches!(
                    err,
                    Ok(Some(AttackError {
                        key: "duration_s",
                        ..
                    }))
                ),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn kinds_round_trip_their_names() -> Result<(), Box<dyn std::error::Error>> {
        for kind in AttackKind::ALL {
            let json = serde_json::to_string(&kind)?;
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            let spec = parse(&format!("kind = \"{}\"", kind.as_str()))?;
            assert_eq!(spec.kind(), kind);
            spec.check(1.0)?;
        }
        Ok(())
    }
}
