//! What a generic attacker knows of the target's protocol ([`Wire`]): a valid request, a
//! partial one, an oversized one, slow-read's store-and-fetch pair; and [`mutate`], the
//! malformed kind's seeded mutations of a valid request.

use rand::rngs::StdRng;
use rand::{Rng, RngCore};

/// A target protocol, as far as an attacker needs it: bytes to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    /// RESP (redis and its kin); keys start with `key`.
    Resp {
        /// Key prefix.
        key: String,
    },
    /// HTTP/1.1.
    Http {
        /// Path of the requests.
        path: String,
        /// Host header.
        host: String,
    },
    /// One line per request.
    Line {
        /// The line, without its ending.
        line: String,
        /// The line ending.
        eol: String,
    },
    /// A script's first `send` step.
    Script {
        /// Its bytes.
        request: Vec<u8>,
    },
}

/// One RESP command: an array of bulk strings.
pub fn resp_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl Wire {
    /// The protocol's name in notes.
    pub fn name(&self) -> &'static str {
        match self {
            Wire::Resp { .. } => "resp",
            Wire::Http { .. } => "http",
            Wire::Line { .. } => "line",
            Wire::Script { .. } => "script",
        }
    }

    /// Valid request number `k`: for RESP a PING, GET, SET (of one of 256 keys, so memory
    /// stays bounded) or EXISTS in turn; for HTTP a GET of the path; a line with `{n}`
    /// replaced by `k`; the script's first send step.
    pub fn request(&self, k: u64) -> Vec<u8> {
        match self {
            Wire::Resp { key } => {
                let flood = format!("{key}:flood");
                match k % 4 {
                    0 => resp_command(&[b"PING"]),
                    1 => resp_command(&[b"GET", flood.as_bytes()]),
                    2 => {
                        let one = format!("{key}:flood:{}", k / 4 % 256);
                        resp_command(&[b"SET", one.as_bytes(), &[b'v'; 32]])
                    }
                    _ => resp_command(&[b"EXISTS", flood.as_bytes()]),
                }
            }
            Wire::Http { path, host } => format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: rampart-attack\r\nAccept: */*\r\n\r\n"
            )
            .into_bytes(),
            Wire::Line { line, eol } => {
                format!("{}{eol}", line.replace("{n}", &k.to_string())).into_bytes()
            }
            Wire::Script { request } => request.clone(),
        }
    }

    /// slow-read's setup, where the protocol can store a value (RESP): the request that
    /// stores `value` under the key the big replies come from.
    pub fn store_big(&self, value: &[u8]) -> Option<Vec<u8>> {
        match self {
            Wire::Resp { key } => Some(resp_command(&[
                b"SET",
                format!("{key}:big").as_bytes(),
                value,
            ])),
            _ => None,
        }
    }

    /// slow-read's request after [`Wire::store_big`]: one that returns the whole value.
    pub fn fetch_big(&self) -> Option<Vec<u8>> {
        match self {
            Wire::Resp { key } => Some(resp_command(&[b"GET", format!("{key}:big").as_bytes()])),
            _ => None,
        }
    }

    /// slowloris: the start of a request the server must wait on, and the filler dripped
    /// after it that never completes it (empty: nothing more is sent). RESP declares a bulk
    /// string of `declared_len` bytes; HTTP sends its request line and Host, then header
    /// lines; a line never ends; a script sends its step but the last byte.
    pub fn partial(&self, declared_len: u32) -> (Vec<u8>, Vec<u8>) {
        match self {
            Wire::Resp { key } => {
                let k = format!("{key}:slow");
                let head = format!(
                    "*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${declared_len}\r\n",
                    k.len()
                );
                (head.into_bytes(), b"x".to_vec())
            }
            Wire::Http { path, host } => (
                format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n").into_bytes(),
                b"X-a: b\r\n".to_vec(),
            ),
            Wire::Line { .. } => (Vec::new(), b"a".to_vec()),
            Wire::Script { request } => {
                let keep = request.len().saturating_sub(1);
                (request.get(..keep).unwrap_or_default().to_vec(), Vec::new())
            }
        }
    }

    /// oversized: the head of a huge request, the byte repeated as its body, and its tail.
    /// RESP declares `declared_len` for the bulk string; HTTP puts the body in one header
    /// value; a line is the body; a script's step gets the body before its last byte.
    pub fn oversized(&self, declared_len: u32) -> (Vec<u8>, u8, Vec<u8>) {
        match self {
            Wire::Resp { key } => {
                let k = format!("{key}:oversized");
                let head = format!(
                    "*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${declared_len}\r\n",
                    k.len()
                );
                (head.into_bytes(), b'x', b"\r\n".to_vec())
            }
            Wire::Http { path, host } => (
                format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Oversized: ").into_bytes(),
                b'a',
                b"\r\n\r\n".to_vec(),
            ),
            Wire::Line { eol, .. } => (Vec::new(), b'a', eol.as_bytes().to_vec()),
            Wire::Script { request } => {
                let keep = request.len().saturating_sub(1);
                let (head, tail) = request.split_at(keep);
                (head.to_vec(), b'A', tail.to_vec())
            }
        }
    }
}

/// One seeded mutation of `bytes`, and its name for the report.
pub fn mutate(rng: &mut StdRng, bytes: &[u8]) -> (Vec<u8>, &'static str) {
    let mut b = bytes.to_vec();
    if b.is_empty() {
        b.push(0);
    }
    let at = rng.gen_range(0..b.len());
    let label = match rng.gen_range(0..8u8) {
        0 => {
            for _ in 0..rng.gen_range(1..=4) {
                let i = rng.gen_range(0..b.len());
                if let Some(x) = b.get_mut(i) {
                    *x ^= 1 << rng.gen_range(0..8);
                }
            }
            "bit flips"
        }
        1 => {
            b.truncate(at.max(1));
            "truncated"
        }
        2 => {
            let mut junk = vec![0u8; rng.gen_range(1..=16)];
            rng.fill_bytes(&mut junk);
            b.splice(at..at, junk);
            "random bytes inserted"
        }
        3 => {
            let end = (at + rng.gen_range(1..=8)).min(b.len());
            let piece = b.get(at..end).unwrap_or_default().to_vec();
            for _ in 0..rng.gen_range(2..=64) {
                b.splice(at..at, piece.iter().copied());
            }
            "bytes repeated"
        }
        4 => {
            let end = (at + rng.gen_range(1..=8)).min(b.len());
            b.drain(at..end);
            "bytes deleted"
        }
        5 => {
            // A length or count made huge or negative, where the protocol has digits.
            match b.iter().position(u8::is_ascii_digit) {
                Some(i) => {
                    let end = b
                        .iter()
                        .skip(i)
                        .position(|c| !c.is_ascii_digit())
                        .map_or(b.len(), |n| i + n);
                    let huge: &[u8] = if rng.gen_bool(0.5) {
                        b"99999999999999999999"
                    } else {
                        b"-1"
                    };
                    b.splice(i..end, huge.iter().copied());
                    "number made huge or negative"
                }
                None => {
                    b.splice(at..at, b"99999999999999999999".iter().copied());
                    "digits inserted"
                }
            }
        }
        6 => {
            let stray: &[u8] = match rng.gen_range(0..3) {
                0 => b"\r",
                1 => b"\n",
                _ => b"\r\n\r\n",
            };
            b.splice(at..at, stray.iter().copied());
            "stray line end"
        }
        _ => {
            rng.fill_bytes(&mut b);
            "random bytes of the same length"
        }
    };
    (b, label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn resp() -> Wire {
        Wire::Resp { key: "k".into() }
    }

    #[test]
    fn resp_commands_are_arrays_of_bulk_strings() {
        assert_eq!(
            resp_command(&[b"GET", b"k"]),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        );
        assert_eq!(resp().request(0), b"*1\r\n$4\r\nPING\r\n");
    }

    #[test]
    fn partial_requests_never_complete() {
        let (head, filler) = resp().partial(1000);
        assert!(head.ends_with(b"$1000\r\n"), "{head:?}");
        assert_eq!(filler, b"x");
        let http = Wire::Http {
            path: "/".into(),
            host: "h".into(),
        };
        let (head, filler) = http.partial(0);
        assert_eq!(head, b"GET / HTTP/1.1\r\nHost: h\r\n");
        assert!(!filler.windows(4).any(|w| w == b"\r\n\r\n"));
        let script = Wire::Script {
            request: b"PING\r\n".to_vec(),
        };
        assert_eq!(script.partial(0), (b"PING\r".to_vec(), Vec::new()));
    }

    #[test]
    fn oversized_requests_declare_and_wrap_the_body() {
        let (head, fill, tail) = resp().oversized(u32::MAX);
        assert!(head.ends_with(b"$4294967295\r\n"));
        assert_eq!((fill, tail.as_slice()), (b'x', &b"\r\n"[..]));
        let line = Wire::Line {
            line: "x".into(),
            eol: "\n".into(),
        };
        assert_eq!(line.oversized(0), (Vec::new(), b'a', b"\n".to_vec()));
    }

    #[test]
    fn mutations_are_seeded_and_change_the_bytes() {
        let req = resp().request(1);
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..64).map(|_| mutate(&mut rng, &req)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        let labels: std::collections::BTreeSet<&str> = run(7).iter().map(|(_, l)| *l).collect();
        assert!(labels.len() >= 6, "{labels:?}");
        assert!(run(7).iter().filter(|(b, _)| *b != req).count() >= 56);
        let mut rng = StdRng::seed_from_u64(1);
        assert!(!mutate(&mut rng, &[]).0.is_empty());
    }
}
