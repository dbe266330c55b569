//! `rampart client ...`: one request (or a short exchange) as a logged-in user.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use rampart::client::download::Placement;
use rampart::client::{hex, Client, ClientError, ClientOptions, TlsOptions};
use rampart::protocol::{ErrorCode, InboxEntry, ItemBody, ItemKind, ItemView};
use rampart::store::sanitize_file_name;
use rampart::tls::{ClientTrust, MinVersion};

use super::terminal::{json_line, visible, Shape};
use super::time::rfc3339_ms;

mod tickets;

#[derive(Debug, Args)]
#[command(
    after_help = "The password is read from the environment variable RAMPART_PASSWORD.\n\n\
Examples:\n  \
RAMPART_PASSWORD=s3cret rampart client --server 127.0.0.1:7878 --user alice message bob 'hola'\n  \
RAMPART_PASSWORD=s3cret rampart client --server 127.0.0.1:7878 --user alice mail bob --subject Minutes --body-file notes.txt --attach report.pdf\n  \
RAMPART_PASSWORD=s3cret rampart client --server 127.0.0.1:7878 --user bob fetch 3 --attachments ./saved\n  \
RAMPART_PASSWORD=s3cret rampart client --server 127.0.0.1:7878 --user alice --bind 127.0.0.77 inbox\n\n\
A source address that the server has blocked is refused with \"error: your address is blocked \
for N s (REASON)\".\n\n\
Resume tickets: after a password login the client asks the server for a resume ticket and \
keeps it, per server and user, in a file readable only by you ($XDG_CONFIG_HOME/rampart/tickets \
or ~/.config/rampart/tickets; --tickets FILE or RAMPART_TICKETS overrides it). The next command \
logs in with the ticket first, without the password (and, within a small budget, even from an \
address the server has blocked because of someone else at it); if the server refuses the \
ticket (expired, or revoked by `rampart user passwd`) it falls back to RAMPART_PASSWORD. Keep \
the file like a password."
)]
pub struct ClientArgs {
    /// Server address, e.g. 127.0.0.1:7878.
    #[arg(long)]
    server: String,
    /// User name to log in as (every command but ping needs one).
    #[arg(long)]
    user: Option<String>,
    /// Local address to connect from, e.g. 127.0.0.77: see the server as a user at that
    /// address does (its blocks, its limits). Default: the operating system chooses.
    #[arg(long, value_name = "ADDR")]
    bind: Option<IpAddr>,
    /// Password (read from the environment only, never from the command line).
    #[arg(
        long = "password-from-env",
        env = "RAMPART_PASSWORD",
        hide = true,
        hide_env_values = true
    )]
    password: Option<String>,
    /// Where resume tickets are kept (default: $XDG_CONFIG_HOME/rampart/tickets or
    /// ~/.config/rampart/tickets).
    #[arg(long, value_name = "FILE", env = "RAMPART_TICKETS")]
    tickets: Option<PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
    /// Send the password (or a resume ticket) in plain text to a server that is not on this
    /// machine. Without TLS the client refuses to: anyone on the path could read it.
    #[arg(long)]
    insecure_plaintext: bool,
    #[command(subcommand)]
    command: ClientCommand,
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Send a chat message.
    Message {
        /// Recipient.
        to: String,
        /// Text.
        text: String,
    },
    /// Send a mail, optionally with attachments.
    Mail {
        /// Recipient.
        to: String,
        /// Subject line.
        #[arg(long)]
        subject: String,
        /// Body text.
        #[arg(
            long,
            conflicts_with = "body_file",
            required_unless_present = "body_file"
        )]
        body: Option<String>,
        /// Read the body from this file.
        #[arg(long)]
        body_file: Option<PathBuf>,
        /// Attach a file (repeatable).
        #[arg(long = "attach")]
        attach: Vec<PathBuf>,
    },
    /// Send a file (image, document, any bytes).
    SendFile {
        /// Recipient.
        to: String,
        /// The file.
        path: PathBuf,
    },
    /// List your inbox.
    Inbox {
        /// One JSON object per line: id, kind, from, size, received_at, subject or name.
        #[arg(long)]
        json: bool,
    },
    /// Show or save one item: prints message and mail text; writes a file's bytes to --out.
    Fetch {
        /// Item id (from inbox).
        id: u64,
        /// Where to write a file item's bytes; a file already there is replaced once the
        /// download is complete and verified (default: its sanitized name in the current
        /// directory, never overwriting). With --json, the path is the `saved_to` key.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Save a mail's attachments into this directory under their sanitized names.
        #[arg(long)]
        attachments: Option<PathBuf>,
        /// Print the item as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Delete one item from your inbox.
    Delete {
        /// Item id.
        id: u64,
    },
    /// Check that the server answers (no password needed).
    Ping,
}

/// An item as a person reads it. Everything the sender chose (and the server relayed) goes
/// through [`visible`], so it cannot drive the reader's terminal.
fn item_text(item: &ItemView) -> String {
    let line = |s: &str| visible(s, Shape::Line).into_owned();
    let mut out = format!(
        "From: {}\nDate: {}\n",
        line(&item.from),
        rfc3339_ms(item.received_at_ms)
    );
    match &item.body {
        ItemBody::Message { text } => {
            out += &format!("\n{}\n", visible(text, Shape::Block));
        }
        ItemBody::Mail {
            subject,
            body,
            attachments,
        } => {
            out += &format!("Subject: {}\n", line(subject));
            for (i, a) in attachments.iter().enumerate() {
                out += &format!(
                    "Attachment {i}: {} ({} bytes, blake3 {})\n",
                    line(&a.name),
                    a.size,
                    hex(&a.digest)
                );
            }
            out += &format!("\n{}\n", visible(body, Shape::Block));
        }
        ItemBody::File(a) => {
            out += &format!(
                "File: {} ({} bytes, blake3 {})\n",
                line(&a.name),
                a.size,
                hex(&a.digest)
            );
        }
    }
    out
}

/// The header line of the human-readable inbox listing.
fn inbox_header() -> String {
    format!(
        "{:>8}  {:<7}  {:<16}  {:>12}  {:<24}  SUBJECT/NAME",
        "ID", "KIND", "FROM", "SIZE", "RECEIVED"
    )
}

/// One inbox entry as a line of the listing, the sender's name and the title escaped.
fn inbox_line(e: &InboxEntry) -> String {
    format!(
        "{:>8}  {:<7}  {:<16}  {:>12}  {:<24}  {}",
        e.id,
        e.kind.as_str(),
        visible(&e.from, Shape::Line),
        e.size,
        rfc3339_ms(e.received_at_ms),
        visible(&e.title, Shape::Line)
    )
}

/// One inbox entry as JSON (one line, hazardous characters as `\uXXXX`).
fn inbox_json(e: &InboxEntry) -> String {
    let mut v = serde_json::json!({
        "id": e.id,
        "kind": e.kind.as_str(),
        "from": e.from,
        "size": e.size,
        "received_at": rfc3339_ms(e.received_at_ms),
        "received_at_ms": e.received_at_ms,
    });
    match e.kind {
        ItemKind::Mail => v["subject"] = e.title.clone().into(),
        ItemKind::File => v["name"] = e.title.clone().into(),
        ItemKind::Message => {}
    }
    json_line(&v)
}

fn item_json(item: &ItemView) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": item.id,
        "kind": item.body.kind().as_str(),
        "from": item.from,
        "received_at": rfc3339_ms(item.received_at_ms),
        "received_at_ms": item.received_at_ms,
    });
    let attachment = |a: &rampart::protocol::Attachment| serde_json::json!({"name": a.name, "size": a.size, "blake3": hex(&a.digest)});
    match &item.body {
        ItemBody::Message { text } => v["text"] = text.clone().into(),
        ItemBody::Mail {
            subject,
            body,
            attachments,
        } => {
            v["subject"] = subject.clone().into();
            v["body"] = body.clone().into();
            v["attachments"] = attachments.iter().map(attachment).collect();
        }
        ItemBody::File(a) => {
            v["name"] = a.name.clone().into();
            v["size"] = a.size.into();
            v["blake3"] = hex(&a.digest).into();
        }
    }
    v
}

async fn write_file_item(
    client: &mut Client,
    item: &ItemView,
    out: Option<PathBuf>,
) -> Result<PathBuf> {
    let ItemBody::File(a) = &item.body else {
        bail!("item {} is not a file; --out applies to files", item.id);
    };
    // The file takes its name only once its digest matched: a failed download leaves
    // nothing at the path (and an existing --out file untouched).
    match out {
        Some(p) => {
            client
                .download_to_file(item.id, 0, &p, Placement::Replace)
                .await?;
            Ok(p)
        }
        None => {
            let p = PathBuf::from(sanitize_file_name(&a.name));
            client
                .download_to_file(item.id, 0, &p, Placement::NoClobber)
                .await
                .with_context(|| {
                    format!("cannot create {} (use --out to choose a path)", p.display())
                })?;
            Ok(p)
        }
    }
}

async fn read_body(body: Option<String>, body_file: Option<&Path>) -> Result<String> {
    match (body, body_file) {
        (Some(b), _) => Ok(b),
        (None, Some(p)) => tokio::fs::read_to_string(p)
            .await
            .with_context(|| format!("cannot read body file {}", p.display())),
        (None, None) => bail!("give --body or --body-file"),
    }
}

/// How the client speaks to `args.server`: TLS options, or `None` for plaintext, which is
/// refused (before anything is sent) for a credential bound to a server off this machine.
async fn transport(args: &ClientArgs) -> Result<Option<TlsOptions>> {
    if let Some(tls) = args.tls.options(&args.server)? {
        return Ok(Some(tls));
    }
    let sends_credentials = !matches!(args.command, ClientCommand::Ping);
    if sends_credentials && !args.insecure_plaintext && !is_loopback(&args.server).await? {
        bail!(
            "refusing to send a password in plain text to {}, which is not on this machine: \
             use --tls (with --ca FILE to verify the server), or --insecure-plaintext if the \
             network is trusted",
            args.server
        );
    }
    Ok(None)
}

/// How a client trusts a TLS server: the flags `rampart client` and `rampart load` share.
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// Speak TLS. The server is verified against --ca, or else trusted on first use: its
    /// certificate's fingerprint is recorded in --known-servers and a changed certificate is
    /// refused later.
    #[arg(long)]
    tls: bool,
    /// Trust only certificates issued by the CA certificates in this PEM file (implies --tls).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Trust the system's root certificates instead of trusting on first use (implies --tls).
    #[arg(long, conflicts_with = "ca")]
    system_roots: bool,
    /// Where trust-on-first-use fingerprints are kept (default:
    /// $XDG_CONFIG_HOME/rampart/known_servers or ~/.config/rampart/known_servers).
    #[arg(long, value_name = "FILE", env = "RAMPART_KNOWN_SERVERS")]
    known_servers: Option<PathBuf>,
}

impl TlsArgs {
    /// The TLS options for `server` (`HOST:PORT`), or `None` when no TLS flag was given.
    pub fn options(&self, server: &str) -> Result<Option<TlsOptions>> {
        if !(self.tls || self.ca.is_some() || self.system_roots) {
            return Ok(None);
        }
        let trust = match (&self.ca, self.system_roots) {
            (Some(ca), _) => ClientTrust::Ca(ca.clone()),
            (None, true) => ClientTrust::SystemRoots,
            (None, false) => {
                let Some(file) = self
                    .known_servers
                    .clone()
                    .or_else(|| tickets::config_file("known_servers"))
                else {
                    bail!("no home directory for the known-servers file: give --known-servers FILE or --ca FILE");
                };
                ClientTrust::FirstUse(file)
            }
        };
        Ok(Some(TlsOptions::new(&trust, server, MinVersion::Tls13)?))
    }
}

/// Whether every address `server` resolves to is a loopback address. Resolution asks the
/// system resolver; nothing is sent to the server.
async fn is_loopback(server: &str) -> Result<bool> {
    let addrs: Vec<_> = tokio::net::lookup_host(server)
        .await
        .with_context(|| format!("cannot resolve {server}"))?
        .collect();
    Ok(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()))
}

pub async fn run(args: ClientArgs) -> Result<ExitCode> {
    let opts = ClientOptions {
        source: args.bind,
        tls: transport(&args).await?,
        ..ClientOptions::default()
    };
    let server = args.server.clone();
    match run_with(args, opts.clone()).await {
        // The server cuts a session without a word when it blocks the source (PROTOCOL.md
        // 9.1); a new connection is told why, so ask once and say it.
        Err(e) if cut_off(&e) => Err(match blocked_notice(&server, opts).await {
            Some(notice) => e.context(notice),
            None => e,
        }),
        other => other,
    }
}

/// Whether `e` is a connection that ended under a request.
fn cut_off(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<ClientError>(),
            Some(ClientError::Closed | ClientError::Io(_))
        )
    })
}

/// What a new connection to `server` is told, if it is that the source is blocked.
async fn blocked_notice(server: &str, opts: ClientOptions) -> Option<String> {
    let probe = async {
        let mut c = Client::connect(server, opts).await?;
        c.ping().await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), probe).await {
        Ok(Err(
            e @ ClientError::Server {
                code: ErrorCode::Blocked,
                ..
            },
        )) => Some(e.to_string()),
        _ => None,
    }
}

async fn run_with(args: ClientArgs, opts: ClientOptions) -> Result<ExitCode> {
    if let ClientCommand::Ping = args.command {
        let mut c = Client::connect(&args.server, opts).await?;
        c.ping().await?;
        println!("pong");
        return Ok(ExitCode::SUCCESS);
    }
    let Some(user) = args.user.clone() else {
        bail!("--user is required: name the user to log in as");
    };
    let store = tickets::TicketFile::locate(args.tickets.clone());
    let saved = store
        .as_ref()
        .and_then(|f| f.get(&args.server, &user).ok().flatten());
    if args.password.is_none() && saved.is_none() {
        bail!("set RAMPART_PASSWORD to the password of {user}");
    }
    let logged = Client::resume_or_login(
        args.server.clone(),
        &user,
        args.password.as_deref().map(str::as_bytes),
        saved.as_ref(),
        opts,
    )
    .await;
    let logged = match logged {
        // Only a saved ticket was tried: say how to log in instead.
        Err(e) if args.password.is_none() && e.code() == Some(ErrorCode::AuthFailed) => {
            return Err(anyhow::Error::new(e).context(format!(
                "the saved resume ticket was not accepted; set RAMPART_PASSWORD to the password of {}",
                user
            )))
        }
        other => other?,
    };
    if let (Some(file), Some(t)) = (&store, &logged.ticket) {
        // A ticket that cannot be kept costs the next command a password, nothing more.
        if let Err(e) = file.put(&args.server, t) {
            eprintln!("warning: cannot keep the resume ticket: {e:#}");
        }
    }
    let mut c = logged.client;
    match args.command {
        // Answered above, before logging in.
        ClientCommand::Ping => {}
        ClientCommand::Message { to, text } => {
            let id = c.send_message(&to, &text).await?;
            println!("sent message {id} to {}", visible(&to, Shape::Line));
        }
        ClientCommand::Mail {
            to,
            subject,
            body,
            body_file,
            attach,
        } => {
            let body = read_body(body, body_file.as_deref()).await?;
            let id = c.send_mail(&to, &subject, &body, &attach).await?;
            println!(
                "sent mail {id} to {} with {} attachment(s)",
                visible(&to, Shape::Line),
                attach.len()
            );
        }
        ClientCommand::SendFile { to, path } => {
            let id = c.send_file(&to, &path).await?;
            println!("sent file {id} to {}", visible(&to, Shape::Line));
        }
        ClientCommand::Inbox { json } => {
            let entries = c.inbox().await?;
            if !json {
                println!("{}", inbox_header());
            }
            for e in &entries {
                let line = if json { inbox_json(e) } else { inbox_line(e) };
                println!("{line}");
            }
        }
        ClientCommand::Fetch {
            id,
            out,
            attachments,
            json,
        } => {
            let item = c.fetch(id).await?;
            match &item.body {
                ItemBody::File(_) => {
                    if attachments.is_some() {
                        bail!(
                            "item {id} is a file, not a mail; --attachments applies to mails \
                             (--out names where a file is saved)"
                        );
                    }
                    let path = write_file_item(&mut c, &item, out).await?;
                    if json {
                        let mut v = item_json(&item);
                        v["saved_to"] = path.display().to_string().into();
                        println!("{}", json_line(&v));
                    } else {
                        print!("{}", item_text(&item));
                        println!(
                            "saved to {}",
                            visible(&path.display().to_string(), Shape::Line)
                        );
                    }
                }
                _ => {
                    if out.is_some() {
                        bail!(
                            "item {id} is a {}, not a file; --out applies to files",
                            item.body.kind().as_str()
                        );
                    }
                    if json {
                        println!("{}", json_line(&item_json(&item)));
                    } else {
                        print!("{}", item_text(&item));
                    }
                    if let Some(dir) = attachments {
                        tokio::fs::create_dir_all(&dir)
                            .await
                            .with_context(|| format!("cannot create {}", dir.display()))?;
                        for p in c.save_attachments(id, &dir).await? {
                            if !json {
                                println!(
                                    "saved {}",
                                    visible(&p.display().to_string(), Shape::Line)
                                );
                            }
                        }
                    }
                }
            }
        }
        ClientCommand::Delete { id } => {
            c.delete(id).await?;
            println!("deleted {id}");
        }
    }
    let _ = c.bye().await;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::terminal::hazardous;

    /// A window-title change and a screen clear, an OSC 8 fake hyperlink, the C1 form of CSI
    /// and a right-to-left override: what a hostile sender (or server) puts in every field.
    const TITLE: &str = "\x1b]0;pwned\x07\x1b[2J";
    const LINK: &str = "\x1b]8;;https://evil.example/\x1b\\bank\x1b]8;;\x1b\\";
    const CSI: &str = "red\u{9b}31m";
    const RLO: &str = "invoice\u{202e}fdp.exe";

    /// Fails if `out` holds any raw control or bidi character other than line breaks.
    #[track_caller]
    fn assert_inert(out: &str) {
        if let Some(c) = out.chars().find(|&c| c != '\n' && hazardous(c)) {
            panic!("raw {c:?} in {out:?}");
        }
    }

    fn attachment(name: &str) -> rampart::protocol::Attachment {
        rampart::protocol::Attachment {
            name: name.into(),
            size: 3,
            digest: [7; 32],
        }
    }

    fn hostile_items() -> Vec<ItemView> {
        let bodies = [
            ItemBody::Message {
                text: format!("{TITLE}\n{LINK}\n{CSI}\r{RLO}"),
            },
            ItemBody::Mail {
                subject: TITLE.into(),
                body: format!("{LINK}\n{CSI}\n{RLO}"),
                attachments: vec![attachment(RLO), attachment(TITLE), attachment(CSI)],
            },
            ItemBody::File(attachment(LINK)),
        ];
        bodies
            .into_iter()
            .map(|body| ItemView {
                id: 1,
                from: RLO.into(),
                received_at_ms: 0,
                body,
            })
            .collect()
    }

    #[test]
    fn fetch_output_escapes_every_field() {
        for item in hostile_items() {
            let out = item_text(&item);
            assert_inert(&out);
            assert!(out.contains("From: invoice\\u{202e}fdp.exe\n"), "{out}");
        }
        let mail = item_text(&hostile_items()[1]);
        assert!(
            mail.contains("Subject: \\x1b]0;pwned\\x07\\x1b[2J\n"),
            "{mail}"
        );
        assert!(
            mail.contains("Attachment 2: red\\u{9b}31m (3 bytes"),
            "{mail}"
        );
        // The body keeps its own line breaks.
        assert!(
            mail.contains("\\x1b\\\\bank\\x1b]8;;\\x1b\\\\\nred\\u{9b}31m\n"),
            "{mail}"
        );
    }

    #[test]
    fn fetch_json_is_exact_and_inert() -> Result<(), serde_json::Error> {
        for item in hostile_items() {
            let line = json_line(&item_json(&item));
            assert_inert(&line);
            let back: serde_json::Value = serde_json::from_str(&line)?;
            assert_eq!(back, item_json(&item));
            assert_eq!(back["from"], RLO);
        }
        Ok(())
    }

    #[test]
    fn inbox_lines_escape_sender_and_title() -> Result<(), serde_json::Error> {
        for (kind, title) in [
            (ItemKind::Mail, TITLE),
            (ItemKind::File, RLO),
            (ItemKind::Mail, LINK),
            (ItemKind::Message, CSI),
        ] {
            let e = InboxEntry {
                id: 9,
                kind,
                from: CSI.into(),
                size: 1,
                received_at_ms: 0,
                title: title.into(),
            };
            let line = inbox_line(&e);
            assert_inert(&line);
            assert!(!line.contains('\n'), "{line}");
            let json = inbox_json(&e);
            assert_inert(&json);
            let back: serde_json::Value = serde_json::from_str(&json)?;
            assert_eq!(back["from"], CSI);
            if kind != ItemKind::Message {
                let key = if kind == ItemKind::Mail {
                    "subject"
                } else {
                    "name"
                };
                assert_eq!(back[key], title);
            }
        }
        Ok(())
    }
}
