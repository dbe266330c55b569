//! Prints what a decoder corpus reaches: frame kinds decoded, bodies decoded per kind, and
//! decode errors per reason. Run from `fuzz/`:
//!
//! ```text
//! cargo run --example corpus_stats -- corpus/decode_frame corpus/decode_bodies [more dirs]
//! ```
//!
//! A directory named `decode_bodies` is read as kind byte + payload; any other as the
//! decode_frame format (role byte + stream).

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use rampart::protocol::{DecodeError, Frame, Kind, Limits, Reply, Request};
use rampart_fuzz::checks::{decode_stream, role_of};

#[derive(Default)]
struct Stats {
    frames: BTreeMap<&'static str, u64>,
    bodies_ok: BTreeMap<&'static str, u64>,
    errors: BTreeMap<&'static str, u64>,
}

impl Stats {
    fn body(&mut self, f: &Frame, limits: &Limits) {
        let res = if f.kind.is_request() {
            Request::decode(f, limits).map(|_| ())
        } else {
            Reply::decode(f, limits).map(|_| ())
        };
        match res {
            Ok(()) => *self.bodies_ok.entry(f.kind.wire_name()).or_default() += 1,
            Err(e) => self.error(&e),
        }
    }

    fn error(&mut self, e: &DecodeError) {
        *self.errors.entry(e.reason()).or_default() += 1;
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let limits = Limits::default();
    let mut stats = Stats::default();
    let mut files = 0u64;
    for dir in std::env::args().skip(1) {
        let bodies = Path::new(&dir).ends_with("decode_bodies");
        for entry in std::fs::read_dir(&dir)? {
            let data = std::fs::read(entry?.path())?;
            files += 1;
            if bodies {
                let Some((&k, payload)) = data.split_first() else {
                    continue;
                };
                let Some(kind) = Kind::from_u8(k) else {
                    continue;
                };
                let f = Frame::new(kind, 1, Bytes::copy_from_slice(payload));
                stats.body(&f, &limits);
                // The wrong-direction decoder, as the decode_bodies target calls it.
                let wrong = if kind.is_request() {
                    Reply::decode(&f, &limits).err()
                } else {
                    Request::decode(&f, &limits).err()
                };
                if let Some(e) = wrong {
                    stats.error(&e);
                }
                continue;
            }
            let Some((&sel, stream)) = data.split_first() else {
                continue;
            };
            let d = decode_stream(stream, role_of(sel), &limits);
            for f in &d.frames {
                *stats.frames.entry(f.kind.wire_name()).or_default() += 1;
                stats.body(f, &limits);
            }
            if let Some(e) = &d.error {
                stats.error(e);
            }
        }
    }
    println!("{files} files");
    println!("\n| kind | frames decoded | bodies decoded |\n|---|---|---|");
    for k in Kind::ALL {
        let n = k.wire_name();
        println!(
            "| {n} | {} | {} |",
            stats.frames.get(n).copied().unwrap_or(0),
            stats.bodies_ok.get(n).copied().unwrap_or(0)
        );
    }
    println!("\n| decode error | inputs |\n|---|---|");
    for r in DecodeError::REASONS {
        println!("| {r} | {} |", stats.errors.get(r).copied().unwrap_or(0));
    }
    Ok(())
}
