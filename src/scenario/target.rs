//! Where a scenario runs, and how its legit clients talk to a server that is not rampart.
//!
//! A scenario file's `[target]` table ([`TargetSpec`]) and the command line's `--target URL`,
//! `--legit DRIVER` and `--legit-opt KEY=VALUE` (a [`TargetSpec`] too, whose keys win) say
//! where the scenario runs:
//!
//! - no target: the in-process rampart server, as always;
//! - `rampart://HOST:PORT` (or a bare `HOST:PORT`): an external `rampart serve`;
//! - `tcp://HOST:PORT`: any TCP server, driven by a legit [`Driver`]: `resp` (redis and its
//!   kin), `http` (any web server), `line` (a line in, a line out: echo, SMTP-like) or
//!   `script` (send/expect byte steps, for anything else).
//!
//! [`resolve`] merges the file's table with the command line's and checks the result into a
//! [`Resolved`] target; a [`GenericTarget`] is what the generic runner
//! ([`super::generic`]) runs against. Every key is checked when the file is loaded
//! ([`TargetSpec::check`]), so a bad hex string or status fails before anything runs.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::attack::{AttackKind, Wire};

/// Default `value_bytes` of the `resp` driver: a small value, as a cache holds.
pub const DEFAULT_VALUE_BYTES: u32 = 64;
/// Largest `value_bytes`: the legit load measures a server's service, not its bandwidth.
pub const MAX_VALUE_BYTES: u32 = 1024 * 1024;
/// Default `key` of the `resp` driver; client `i` uses `KEY:i`.
pub const DEFAULT_KEY: &str = "rampart:legit";
/// Default line of the `line` driver; `{n}` is the operation's number.
pub const DEFAULT_LINE: &str = "hello {n}";
/// Longest text option (a line, a path, a key, a step): a legit request is small.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Most steps of a `script`.
pub const MAX_STEPS: usize = 64;

/// The `[target]` table as read from TOML (and the command line's overrides), unchecked.
/// docs/SCENARIOS.md describes every key.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// `tcp://HOST:PORT`, `rampart://HOST:PORT`, or a bare `HOST:PORT` (rampart).
    pub url: Option<String>,
    /// The legit driver of a `tcp://` target: `resp`, `http`, `line` or `script`.
    pub legit: Option<String>,
    /// `resp`: the key prefix; client `i` sets and gets `KEY:i`.
    pub key: Option<String>,
    /// `resp`: bytes of each value written.
    pub value_bytes: Option<u32>,
    /// `http`: the path to GET.
    pub path: Option<String>,
    /// `http`: the status every reply must have.
    pub status: Option<u16>,
    /// `http`: the Host header (default: the target's address).
    pub host: Option<String>,
    /// `line`: the line to send, `{n}` replaced by the operation's number.
    pub line: Option<String>,
    /// `line`: text the reply line must contain (`{n}` replaced too); default the line sent.
    pub expect: Option<String>,
    /// `line`: the line ending sent (default `"\r\n"`).
    pub eol: Option<String>,
    /// `line`: read one greeting line after connecting (SMTP-like servers speak first).
    pub greeting: Option<bool>,
    /// `script`: the steps of one operation, in order.
    pub steps: Option<Vec<StepSpec>>,
}

/// One `script` step: exactly one of the four keys.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Text to send (TOML escapes such as `\r\n` apply).
    pub send: Option<String>,
    /// Bytes to send, in hex (spaces allowed).
    pub send_hex: Option<String>,
    /// Text the next reply bytes must equal.
    pub expect: Option<String>,
    /// Bytes the next reply bytes must equal, in hex.
    pub expect_hex: Option<String>,
}

/// A checked `script` step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Read exactly this many bytes and compare.
    Expect(Vec<u8>),
}

/// How the legit clients of a `tcp://` target work: one operation is one exchange, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Driver {
    /// `SET KEY:i <value>` then `GET KEY:i`, which must return the value.
    Resp {
        /// Key prefix.
        key: String,
        /// Value size.
        value_bytes: usize,
    },
    /// `GET path` on a keep-alive connection, expecting `status`.
    Http {
        /// Request path.
        path: String,
        /// Expected status.
        status: u16,
        /// Host header; `None`: the target's address.
        host: Option<String>,
    },
    /// A line out, a line back that contains `expect`.
    Line {
        /// The line template (`{n}`: the operation number).
        line: String,
        /// What the reply must contain (`{n}` too).
        expect: String,
        /// Line ending.
        eol: String,
        /// Read a greeting line after connecting.
        greeting: bool,
    },
    /// Send/expect steps.
    Script {
        /// The steps, at least one `Send`.
        steps: Vec<Step>,
    },
}

impl Driver {
    /// The driver's name, as in `legit = "..."`.
    pub fn name(&self) -> &'static str {
        match self {
            Driver::Resp { .. } => "resp",
            Driver::Http { .. } => "http",
            Driver::Line { .. } => "line",
            Driver::Script { .. } => "script",
        }
    }

    /// What the generic attackers send in this protocol ([`Wire`]).
    pub fn wire(&self, addr: SocketAddr) -> Wire {
        match self {
            Driver::Resp { key, .. } => Wire::Resp { key: key.clone() },
            Driver::Http { path, host, .. } => Wire::Http {
                path: path.clone(),
                host: host.clone().unwrap_or_else(|| addr.to_string()),
            },
            Driver::Line { line, eol, .. } => Wire::Line {
                line: line.replace("{n}", "0"),
                eol: eol.clone(),
            },
            Driver::Script { steps } => Wire::Script {
                request: steps
                    .iter()
                    .find_map(|s| match s {
                        Step::Send(b) => Some(b.clone()),
                        Step::Expect(_) => None,
                    })
                    .unwrap_or_default(),
            },
        }
    }
}

/// The driver names, for errors and `--help`.
pub const DRIVERS: [&str; 4] = ["resp", "http", "line", "script"];

/// A target URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetUrl {
    /// `rampart://HOST:PORT` or `HOST:PORT`: an external rampart server.
    Rampart(SocketAddr),
    /// `tcp://HOST:PORT`: any TCP server.
    Tcp(SocketAddr),
}

impl TargetUrl {
    /// Parses `tcp://127.0.0.1:6379`, `rampart://127.0.0.1:7878` or `127.0.0.1:7878`. The
    /// address must be IPv4 loopback: the attackers' sources are 127.x addresses, which reach
    /// only this host.
    pub fn parse(text: &str) -> Result<TargetUrl, String> {
        let (tcp, rest) = if let Some(rest) = text.strip_prefix("tcp://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("rampart://") {
            (false, rest)
        } else if text.contains("://") {
            return Err(format!(
                "unknown target scheme in {text:?}: use tcp://HOST:PORT or rampart://HOST:PORT"
            ));
        } else {
            (false, text)
        };
        let addr: SocketAddr = rest
            .trim_end_matches('/')
            .parse()
            .map_err(|_| format!("target {text:?} is not HOST:PORT with a numeric IPv4 host"))?;
        if !matches!(addr.ip(), IpAddr::V4(ip) if ip.is_loopback()) {
            return Err(format!(
                "the target must be an address in 127.0.0.0/8 (sources are loopback addresses), got {addr}"
            ));
        }
        Ok(if tcp {
            TargetUrl::Tcp(addr)
        } else {
            TargetUrl::Rampart(addr)
        })
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        match self {
            TargetUrl::Rampart(a) | TargetUrl::Tcp(a) => *a,
        }
    }
}

impl std::fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetUrl::Rampart(a) => write!(f, "rampart://{a}"),
            TargetUrl::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// A `tcp://` target and its driver: what the generic runner needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenericTarget {
    /// The server.
    pub addr: SocketAddr,
    /// The legit driver.
    pub driver: Driver,
}

impl GenericTarget {
    /// `tcp://ADDR (DRIVER)`, as reports name it.
    pub fn name(&self) -> String {
        format!("tcp://{} ({})", self.addr, self.driver.name())
    }
}

/// Where one scenario runs, once the file and the command line are merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// The in-process rampart server.
    InProcess,
    /// An external rampart server.
    Rampart(SocketAddr),
    /// Any TCP server.
    Tcp(GenericTarget),
}

/// The attack kinds that have a generic form: they need no rampart account, frame or
/// firewall. Every other kind (tamper, brute-force, preauth-buffer, low-and-slow, the TLS
/// ones, and any kind added later until it says otherwise) is refused against a `tcp://`
/// target before anything runs.
pub const GENERIC_KINDS: [AttackKind; 9] = [
    AttackKind::Flood,
    AttackKind::RawFlood,
    AttackKind::Oversized,
    AttackKind::Slowloris,
    AttackKind::SlowRead,
    AttackKind::ConnChurn,
    AttackKind::ConnExhaust,
    AttackKind::Malformed,
    AttackKind::Probe,
];

/// Whether `kind` can run against a `tcp://` target.
pub fn generic_kind(kind: AttackKind) -> bool {
    GENERIC_KINDS.contains(&kind)
}

impl TargetSpec {
    /// Checks every key that is set (names the key on error, without the `target.` prefix).
    pub fn check(&self) -> Result<(), (String, String)> {
        if let Some(url) = &self.url {
            match TargetUrl::parse(url).map_err(|e| ("url".to_string(), e))? {
                TargetUrl::Tcp(_) => {}
                TargetUrl::Rampart(_) => {
                    return Err((
                        "url".into(),
                        format!("a file names only tcp:// targets; for an external rampart server give --target rampart://ADDR --target-data-dir DIR, got {url:?}"),
                    ))
                }
            }
        }
        if let Some(name) = &self.legit {
            if !DRIVERS.contains(&name.as_str()) {
                return Err((
                    "legit".into(),
                    format!("must be one of {}, got {name:?}", DRIVERS.join(", ")),
                ));
            }
        }
        if let Some(v) = self.value_bytes {
            if v == 0 || v > MAX_VALUE_BYTES {
                return Err((
                    "value_bytes".into(),
                    format!("must be between 1 and {MAX_VALUE_BYTES}, got {v}"),
                ));
            }
        }
        if let Some(s) = self.status {
            if !(100..=599).contains(&s) {
                return Err((
                    "status".into(),
                    format!("must be an HTTP status, 100 to 599, got {s}"),
                ));
            }
        }
        if let Some(p) = &self.path {
            if !p.starts_with('/') || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err((
                    "path".into(),
                    format!(
                        "must start with '/' and hold no space or control character, got {p:?}"
                    ),
                ));
            }
        }
        for (key, text) in [
            ("key", &self.key),
            ("host", &self.host),
            ("line", &self.line),
            ("expect", &self.expect),
            ("eol", &self.eol),
        ] {
            if let Some(t) = text {
                check_text(key, t)?;
            }
        }
        for (key, text) in [("key", &self.key), ("host", &self.host)] {
            if text
                .as_ref()
                .is_some_and(|t| t.is_empty() || t.bytes().any(|b| b <= b' ' || b == 0x7f))
            {
                return Err((
                    key.into(),
                    "must be non-empty, with no space or control character".into(),
                ));
            }
        }
        if let Some(line) = &self.line {
            if line.contains(['\r', '\n']) {
                return Err(("line".into(), "must not contain a line break".into()));
            }
        }
        if let Some(eol) = &self.eol {
            if eol.is_empty() {
                return Err(("eol".into(), "must not be empty".into()));
            }
        }
        if let Some(steps) = &self.steps {
            check_steps(steps)?;
        }
        Ok(())
    }

    /// This table with every key `over` sets replaced by `over`'s.
    pub fn merged(&self, over: &TargetSpec) -> TargetSpec {
        TargetSpec {
            url: over.url.clone().or_else(|| self.url.clone()),
            legit: over.legit.clone().or_else(|| self.legit.clone()),
            key: over.key.clone().or_else(|| self.key.clone()),
            value_bytes: over.value_bytes.or(self.value_bytes),
            path: over.path.clone().or_else(|| self.path.clone()),
            status: over.status.or(self.status),
            host: over.host.clone().or_else(|| self.host.clone()),
            line: over.line.clone().or_else(|| self.line.clone()),
            expect: over.expect.clone().or_else(|| self.expect.clone()),
            eol: over.eol.clone().or_else(|| self.eol.clone()),
            greeting: over.greeting.or(self.greeting),
            steps: over.steps.clone().or_else(|| self.steps.clone()),
        }
    }

    /// The driver this table describes (checked with [`TargetSpec::check`] first).
    pub fn driver(&self) -> Result<Driver, String> {
        self.check().map_err(|(k, r)| format!("target.{k}: {r}"))?;
        let Some(name) = &self.legit else {
            return Err(format!(
                "a tcp:// target needs a legit driver: `legit = \"...\"` in [target] or --legit, one of {}",
                DRIVERS.join(", ")
            ));
        };
        Ok(match name.as_str() {
            "resp" => Driver::Resp {
                key: self.key.clone().unwrap_or_else(|| DEFAULT_KEY.into()),
                value_bytes: self.value_bytes.unwrap_or(DEFAULT_VALUE_BYTES) as usize,
            },
            "http" => Driver::Http {
                path: self.path.clone().unwrap_or_else(|| "/".into()),
                status: self.status.unwrap_or(200),
                host: self.host.clone(),
            },
            "line" => {
                let line = self.line.clone().unwrap_or_else(|| DEFAULT_LINE.into());
                Driver::Line {
                    expect: self.expect.clone().unwrap_or_else(|| line.clone()),
                    line,
                    eol: self.eol.clone().unwrap_or_else(|| "\r\n".into()),
                    greeting: self.greeting.unwrap_or(false),
                }
            }
            _ => {
                let steps = self
                    .steps
                    .as_deref()
                    .map(check_steps)
                    .transpose()
                    .map_err(|(k, r)| format!("target.{k}: {r}"))?
                    .unwrap_or_default();
                if !steps.iter().any(|s| matches!(s, Step::Send(_))) {
                    return Err(
                        "the script driver needs `steps` with at least one `send` or `send_hex` step (in [target] or --legit-opt)".into(),
                    );
                }
                Driver::Script { steps }
            }
        })
    }
}

fn check_text(key: &str, text: &str) -> Result<(), (String, String)> {
    if text.len() > MAX_TEXT_BYTES {
        return Err((
            key.into(),
            format!("at most {MAX_TEXT_BYTES} bytes, got {}", text.len()),
        ));
    }
    Ok(())
}

/// Checks script steps and decodes them.
fn check_steps(steps: &[StepSpec]) -> Result<Vec<Step>, (String, String)> {
    if steps.len() > MAX_STEPS {
        return Err((
            "steps".into(),
            format!("at most {MAX_STEPS} steps, got {}", steps.len()),
        ));
    }
    let mut out = Vec::with_capacity(steps.len());
    for (i, s) in steps.iter().enumerate() {
        let key = |k: &str| format!("steps[{i}].{k}");
        let set = [&s.send, &s.send_hex, &s.expect, &s.expect_hex]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if set != 1 {
            return Err((
                format!("steps[{i}]"),
                "needs exactly one of send, send_hex, expect, expect_hex".into(),
            ));
        }
        let step = if let Some(t) = &s.send {
            check_text(&key("send"), t)?;
            Step::Send(t.as_bytes().to_vec())
        } else if let Some(h) = &s.send_hex {
            Step::Send(hex(h).map_err(|e| (key("send_hex"), e))?)
        } else if let Some(t) = &s.expect {
            check_text(&key("expect"), t)?;
            Step::Expect(t.as_bytes().to_vec())
        } else {
            let h = s.expect_hex.as_deref().unwrap_or_default();
            Step::Expect(hex(h).map_err(|e| (key("expect_hex"), e))?)
        };
        if matches!(&step, Step::Send(b) | Step::Expect(b) if b.is_empty()) {
            return Err((format!("steps[{i}]"), "must not be empty".into()));
        }
        out.push(step);
    }
    Ok(out)
}

/// Decodes hex digits, ignoring ASCII whitespace.
pub fn hex(text: &str) -> Result<Vec<u8>, String> {
    if text.len() > 2 * MAX_TEXT_BYTES {
        return Err(format!(
            "at most {MAX_TEXT_BYTES} bytes, got {} hex digits",
            text.len()
        ));
    }
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .map(|b| match b {
            b'0'..=b'9' => Ok(b - b'0'),
            b'a'..=b'f' => Ok(b - b'a' + 10),
            b'A'..=b'F' => Ok(b - b'A' + 10),
            _ => Err(format!("not a hex digit: {:?}", char::from(b))),
        })
        .collect::<Result<_, _>>()?;
    if digits.len() % 2 != 0 {
        return Err(format!("an odd number of hex digits ({})", digits.len()));
    }
    Ok(digits
        .chunks_exact(2)
        .map(|p| match p {
            [hi, lo] => hi << 4 | lo,
            _ => 0,
        })
        .collect())
}

/// Where a scenario runs: the command line's URL (`cli_url`) over the file's `url`, and for
/// a `tcp://` target the driver from the file's table with the command line's keys
/// (`cli`) on top. Also checks that every attack of the scenario has a generic form and
/// that it is not a TLS scenario, naming the scenario, the kind and the target.
pub fn resolve(
    scenario: &super::Scenario,
    cli_url: Option<TargetUrl>,
    cli: Option<&TargetSpec>,
) -> Result<Resolved, String> {
    let file = scenario.target().cloned().unwrap_or_default();
    let spec = match cli {
        Some(over) => file.merged(over),
        None => file,
    };
    let url = match cli_url {
        Some(u) => Some(u),
        None => spec.url.as_deref().map(TargetUrl::parse).transpose()?,
    };
    let at = || {
        format!(
            "scenario {} ({})",
            scenario.name(),
            scenario.file().display()
        )
    };
    match url {
        None => Ok(Resolved::InProcess),
        Some(TargetUrl::Rampart(addr)) => Ok(Resolved::Rampart(addr)),
        Some(TargetUrl::Tcp(addr)) => {
            let driver = spec.driver().map_err(|e| format!("{}: {e}", at()))?;
            if scenario.tls() {
                return Err(format!(
                    "{}: a TLS scenario needs the in-process rampart server; it cannot run against tcp://{addr}",
                    at()
                ));
            }
            for a in scenario.attacks() {
                if !generic_kind(a.kind()) {
                    return Err(format!(
                        "{}: attack kind `{}` needs rampart's protocol and cannot run against tcp://{addr}; a tcp:// target takes {}",
                        at(),
                        a.kind(),
                        GENERIC_KINDS.map(|k| k.as_str()).join(", ")
                    ));
                }
            }
            Ok(Resolved::Tcp(GenericTarget { addr, driver }))
        }
    }
}

/// Reads one `--legit-opt KEY=VALUE` into `spec`: VALUE is a TOML value (`status=204`,
/// `greeting=true`, `steps=[{send="PING\r\n"},{expect="+PONG\r\n"}]`), or else taken as a
/// string (`path=/health`).
pub fn set_option(spec: &mut TargetSpec, option: &str) -> Result<(), String> {
    let Some((key, value)) = option.split_once('=') else {
        return Err(format!("--legit-opt wants KEY=VALUE, got {option:?}"));
    };
    let key = key.trim();
    if !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') || key.is_empty() {
        return Err(format!("--legit-opt: bad key {key:?}"));
    }
    let as_toml = format!("{key} = {value}");
    let parsed: Result<TargetSpec, _> = toml::from_str(&as_toml);
    let one = match parsed {
        Ok(one) => one,
        Err(_) => {
            // Not a TOML value: a bare string such as a path.
            let quoted = toml::Value::String(value.to_string()).to_string();
            toml::from_str(&format!("{key} = {quoted}"))
                .map_err(|e| format!("--legit-opt {key}: {}", e.message()))?
        }
    };
    *spec = spec.merged(&one);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_by_scheme_and_stay_on_loopback() {
        let a: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 6379));
        assert_eq!(
            TargetUrl::parse("tcp://127.0.0.1:6379"),
            Ok(TargetUrl::Tcp(a))
        );
        assert_eq!(
            TargetUrl::parse("rampart://127.0.0.1:6379"),
            Ok(TargetUrl::Rampart(a))
        );
        assert_eq!(
            TargetUrl::parse("127.0.0.1:6379"),
            Ok(TargetUrl::Rampart(a))
        );
        assert!(TargetUrl::parse("tcp://10.0.0.1:80").is_err_and(|e| e.contains("127.0.0.0/8")));
        assert!(TargetUrl::parse("udp://127.0.0.1:53").is_err_and(|e| e.contains("scheme")));
        assert!(TargetUrl::parse("tcp://localhost:80").is_err());
        assert_eq!(TargetUrl::Tcp(a).to_string(), "tcp://127.0.0.1:6379");
    }

    #[test]
    fn hex_ignores_spaces_and_rejects_junk() {
        assert_eq!(hex("52 4d\n01"), Ok(vec![0x52, 0x4d, 0x01]));
        assert!(hex("abc").is_err());
        assert!(hex("zz").is_err());
    }

    #[test]
    fn drivers_fill_in_defaults() {
        let spec = |legit: &str| TargetSpec {
            legit: Some(legit.into()),
            ..TargetSpec::default()
        };
        assert_eq!(
            spec("resp").driver(),
            Ok(Driver::Resp {
                key: DEFAULT_KEY.into(),
                value_bytes: 64
            })
        );
        assert_eq!(
            spec("line").driver(),
            Ok(Driver::Line {
                line: DEFAULT_LINE.into(),
                expect: DEFAULT_LINE.into(),
                eol: "\r\n".into(),
                greeting: false
            })
        );
        assert!(spec("script")
            .driver()
            .is_err_and(|e| e.contains("at least one `send`")));
        assert!(TargetSpec::default()
            .driver()
            .is_err_and(|e| e.contains("--legit")));
        assert!(spec("gopher")
            .driver()
            .is_err_and(|e| e.contains("target.legit")));
    }

    #[test]
    fn options_override_the_file_and_take_bare_strings() -> Result<(), String> {
        let file = TargetSpec {
            legit: Some("http".into()),
            path: Some("/a".into()),
            status: Some(204),
            ..TargetSpec::default()
        };
        let mut cli = TargetSpec::default();
        set_option(&mut cli, "path=/health")?;
        set_option(&mut cli, "greeting=true")?;
        set_option(
            &mut cli,
            r#"steps=[{send="PING\r\n"},{expect_hex="2b504f4e470d0a"}]"#,
        )?;
        let merged = file.merged(&cli);
        assert_eq!(merged.path.as_deref(), Some("/health"));
        assert_eq!(merged.status, Some(204));
        assert_eq!(merged.greeting, Some(true));
        let script = TargetSpec {
            legit: Some("script".into()),
            ..merged
        };
        assert_eq!(
            script.driver()?,
            Driver::Script {
                steps: vec![
                    Step::Send(b"PING\r\n".to_vec()),
                    Step::Expect(b"+PONG\r\n".to_vec())
                ]
            }
        );
        assert!(set_option(&mut cli, "nope").is_err());
        assert!(set_option(&mut cli, "colour=red").is_err());
        Ok(())
    }

    #[test]
    fn bad_values_name_their_key() {
        let check = |spec: TargetSpec| spec.check().err().map(|(k, _)| k);
        let bad_step = TargetSpec {
            steps: Some(vec![StepSpec {
                send: Some("a".into()),
                expect: Some("b".into()),
                ..StepSpec::default()
            }]),
            ..TargetSpec::default()
        };
        assert_eq!(check(bad_step), Some("steps[0]".into()));
        let bad_hex = TargetSpec {
            steps: Some(vec![StepSpec {
                send_hex: Some("0".into()),
                ..StepSpec::default()
            }]),
            ..TargetSpec::default()
        };
        assert_eq!(check(bad_hex), Some("steps[0].send_hex".into()));
        let bad_status = TargetSpec {
            status: Some(42),
            ..TargetSpec::default()
        };
        assert_eq!(check(bad_status), Some("status".into()));
        let bad_path = TargetSpec {
            path: Some("x y".into()),
            ..TargetSpec::default()
        };
        assert_eq!(check(bad_path), Some("path".into()));
    }
}
