//! oversized: lengths far over the limits. Connections cycle through three cases:
//!
//! - `declared-huge`: a SEND_MESSAGE header declaring `declared_len` (u32::MAX by default),
//!   followed by as much body as the server takes, up to `body_bytes`;
//! - `over-frame-limit`: a SEND_MAIL header declaring the default frame limit plus one, then
//!   `body_bytes` of body streamed after it;
//! - `fields-huge`: logged in, well-framed requests whose fields declare huge lengths or
//!   sizes (a text field declaring 4 GiB, an upload of u64::MAX bytes, 255 attachments, a
//!   message one byte over the default limit, a download asking for 4 GiB).
//!
//! A hardened server rejects the first two from the header alone and answers each request
//! of the third with an error, without buffering toward any declared length.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::Instant;

use super::canary::{Drain, Got, Inbox};
use super::run::{bump, run_slots, Counts, Env};
use super::wire::{encode_into, raw_frame, Ids};
use crate::protocol::{raw_header, Kind, Limits, Password, Request, VERSION};

/// Bytes per write of a streamed body.
const BODY_WRITE: usize = 64 * 1024;

/// Longest wait for any one reply.
const REPLY_WAIT: Duration = Duration::from_secs(5);

const CASES: [&str; 3] = ["declared-huge", "over-frame-limit", "fields-huge"];

pub(crate) async fn run(env: Arc<Env>, declared_len: u32, body_bytes: u64) {
    run_slots(&env, move |env, slot| {
        slot_loop(env, slot, declared_len, body_bytes)
    })
    .await;
}

async fn slot_loop(env: Arc<Env>, slot: usize, declared_len: u32, body_bytes: u64) {
    let mut rng = env.rng(slot as u64);
    let mut n = slot;
    while env.live() {
        let case = CASES[n % CASES.len()];
        n = n.wrapping_add(1);
        let Some((stream, source)) = env.open_next(&mut rng).await else {
            break;
        };
        let opened = Instant::now();
        env.merge(&Counts::from([(case, 1)]));
        let (mut rd, mut wr) = stream.into_split();
        let mut inbox = Inbox::new(source);
        match case {
            "declared-huge" | "over-frame-limit" => {
                let head = if case == "declared-huge" {
                    raw_header(VERSION, Kind::SendMessage as u8, 1, 0, declared_len)
                } else {
                    let over = Limits::default().max_frame_bytes.saturating_add(1);
                    raw_header(VERSION, Kind::SendMail as u8, 1, 0, over)
                };
                let drain = Drain::spawn(&env, rd, inbox);
                if env.write(&mut wr, &head, 1).await.is_ok() {
                    let filler = vec![b'A'; BODY_WRITE];
                    let mut left = body_bytes;
                    while left > 0 && env.live() && !drain.closed.is_cancelled() {
                        let len = (left.min(BODY_WRITE as u64)) as usize;
                        let piece = filler.get(..len).unwrap_or(&[]);
                        let ok = tokio::select! {
                            r = env.write(&mut wr, piece, 0) => r.is_ok(),
                            _ = drain.closed.cancelled() => false,
                        };
                        if !ok {
                            break;
                        }
                        left -= len as u64;
                    }
                }
                // Hold the connection until the server ends it (or briefly, if it does not).
                drop(wr);
                drain.finish(Duration::from_secs(2)).await;
            }
            _ => {
                let end = fields_huge(&env, &mut rd, &mut wr, &mut inbox).await;
                inbox.finish(&env, &end);
            }
        }
        env.pace(opened, &mut rng).await;
    }
}

/// The logged-in case: each request declares something huge; returns how the connection
/// ended.
async fn fields_huge(
    env: &Env,
    rd: &mut crate::sim::net::ConnRead,
    wr: &mut crate::sim::net::ConnWrite,
    inbox: &mut Inbox,
) -> Got {
    let mut ids = Ids::new();
    let mut out = BytesMut::new();
    let (user, pw) = &env.account;
    encode_into(
        ids.next(),
        &Request::Auth {
            user: user.clone(),
            password: Password(Bytes::copy_from_slice(pw.as_bytes())),
        },
        &mut out,
    );
    let mut frames = 1u64;
    for payload in huge_field_payloads(user) {
        out.extend_from_slice(&raw_frame(payload.0, ids.next(), 0, &payload.1));
        frames += 1;
    }
    for req in [
        Request::UploadBegin {
            name: "huge.bin".into(),
            size: u64::MAX,
        },
        Request::Download {
            item_id: 1,
            part: 0,
            offset: 0,
            max_len: u32::MAX,
        },
        Request::ListInbox {
            after: 0,
            limit: u16::MAX,
        },
        Request::SendMessage {
            to: user.clone(),
            text: "x".repeat(Limits::default().max_text_bytes as usize + 1),
        },
    ] {
        encode_into(ids.next(), &req, &mut out);
        frames += 1;
    }
    if env.write(wr, &out, frames).await.is_err() {
        return Got::Reset;
    }
    let mut counts = Counts::new();
    for _ in 0..frames {
        match inbox.next(rd, env, REPLY_WAIT).await {
            Got::Frame(_) => bump(&mut counts, "fields-huge replies"),
            end => {
                env.merge(&counts);
                return end;
            }
        }
    }
    env.merge(&counts);
    Got::Timeout
}

/// Well-framed bodies whose fields declare far more than they hold or than the limits allow.
fn huge_field_payloads(me: &str) -> Vec<(Kind, Vec<u8>)> {
    let mut out = Vec::new();
    // SEND_MESSAGE whose text declares 4 GiB but carries 16 bytes.
    let mut p = Vec::new();
    p.put_u8(me.len() as u8);
    p.put_slice(me.as_bytes());
    p.put_u32(u32::MAX);
    p.put_slice(&[b'x'; 16]);
    out.push((Kind::SendMessage, p));
    // SEND_MAIL whose body declares 2 GiB.
    let mut p = Vec::new();
    p.put_u8(me.len() as u8);
    p.put_slice(me.as_bytes());
    p.put_u16(4);
    p.put_slice(b"huge");
    p.put_u32(0x7FFF_FFFF);
    p.put_slice(b"body");
    p.put_u8(0);
    out.push((Kind::SendMail, p));
    // SEND_MAIL listing 255 attachments (all present on the wire).
    let mut p = Vec::new();
    p.put_u8(me.len() as u8);
    p.put_slice(me.as_bytes());
    p.put_u16(0);
    p.put_u32(0);
    p.put_u8(255);
    for i in 0..255u32 {
        p.put_u32(i + 1);
    }
    out.push((Kind::SendMail, p));
    // UPLOAD_BEGIN whose name declares 64 KiB but carries 8 bytes.
    let mut p = Vec::new();
    p.put_u16(u16::MAX);
    p.put_slice(b"name.bin");
    p.put_u64(1);
    out.push((Kind::UploadBegin, p));
    out
}

#[cfg(test)]
mod tests {
    use crate::attack::testing::{bench, config, TestResult};

    #[tokio::test]
    async fn oversized_is_rejected_without_buffering() -> TestResult {
        let mut cfg = config();
        cfg.firewall.enabled = false;
        let b = bench(cfg).await?;
        let (report, env) = b
            .run_env(
                "kind = \"oversized\"\nconnections = 3\nsources = \"127.0.5.0/30\"\nbody_bytes = 2097152\n",
                1.5,
            )
            .await?;
        assert!(env.count("declared-huge") >= 1, "{report:?}");
        assert!(env.count("over-frame-limit") >= 1, "{report:?}");
        assert!(env.count("fields-huge") >= 1, "{report:?}");
        // Header cases are cut with ERROR BAD_FRAME (id 0).
        assert!(env.count("conn cut: bad_frame") >= 2, "{report:?}");
        // The huge fields get errors, not acceptance.
        assert!(env.count("too_large") >= 1, "{report:?}");
        assert!(env.count("ACCEPTED") == 0, "{report:?}");
        // The server stopped reading at each bad header: it read a small part of what the
        // kernel accepted from us.
        let read = b
            .handle
            .metrics()
            .bytes_in
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            read < report.bytes_sent / 4,
            "server read {read}: {report:?}"
        );
        b.stop().await;
        Ok(())
    }
}
