//! The hardened server: accept loop, connection tasks, session handlers.
//!
//! - [`Server`] opens the data directory and holds everything connections share; opening
//!   it raises the file descriptor limit and fits `max_connections` to it ([`fds`]).
//! - [`Server::bind`] starts the accept loop on a TCP address and returns a [`ServerHandle`].
//! - [`Server::serve_connection`] drives one connection over any transport (tests, fuzzing).
//!
//! Each accepted connection is admitted by the [`Guard`] before a byte is read, then runs in
//! its own task. A panic in a task is caught there: that connection closes, the panic is
//! counted and logged, and every other connection carries on.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use rampart::config::Config;
//! use rampart::server::Server;
//!
//! let mut config = Config::default();
//! config.limits.max_connections_per_ip = 16;
//! let server = Server::open(config, std::path::Path::new("/tmp/rampart-data"))?;
//! let handle = server.bind("127.0.0.1:0".parse()?).await?;
//! println!("listening on {}", handle.local_addr());
//! handle.shutdown().await;
//! # Ok(())
//! # }
//! ```

// Peer input reaches every line here: a panic would cost a connection, so none may hide in
// an unwrap or an index. Tests may use them.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod auth;
mod connection;
pub(crate) mod detector;
pub mod fds;
pub mod metrics;
pub mod prom;
pub mod session;
mod sessions;
pub mod tickets;
mod tls;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::sim::net::{NetListener, NetStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::activity::{Event, EventKind, Recorder};
use crate::config::reload::{self, KeyChange, Live};
use crate::config::{Config, ConfigError};
use crate::detect::Model;
use crate::firewall::{Firewall, Signal};
use crate::guard::{ConnTicket, Guard, Refusal, ResumeBudget, ResumePermit};
use crate::protocol::{self, ErrorCode, FrameDecoder, Limits, Reply, Request, Role};
use crate::store::{
    BlobStore, Blobs, DataDirLock, DirBlobs, FreeSpace, SqliteStore, Store, StoreError,
};

pub use detector::DetectionStats;
pub use metrics::{Metrics, MetricsSnapshot, StallSample, Stalls};
pub use session::CloseReason;

/// A test-only hook run on every decoded request before it is handled; a hook that panics
/// proves that a panicking handler is contained.
#[cfg(feature = "fault-injection")]
pub type FaultHook = Arc<dyn Fn(&protocol::Request) + Send + Sync>;

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The data directory could not be opened. The store's error is part of this message,
    /// not a separate source, so a chain printed with `{:#}` says it once.
    #[error("cannot open data directory: {0}")]
    Store(StoreError),
    /// The activity database could not be opened.
    #[error(transparent)]
    Activity(#[from] crate::activity::db::ActivityError),
    /// Password hashing could not be set up.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// The detection model cannot score this server's windows.
    #[error("cannot use the detection model: {0}")]
    Detect(#[from] crate::detect::DetectError),
    /// The detection model was given but activity recording is off, so it would see
    /// nothing.
    #[error("the detection model needs activity recording: set activity.enabled = true")]
    DetectWithoutActivity,
    /// A server thread could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be used.
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// Plaintext on an address other hosts can reach, without `tls.insecure_plaintext`.
    #[error(
        "refusing to listen on {addr} without TLS: passwords would cross the network in clear \
         text. Give a certificate (--tls-cert FILE --tls-key FILE, or [tls] cert and key), or \
         --insecure-plaintext if the network itself is trusted"
    )]
    Plaintext {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Everything connections share.
pub(crate) struct Shared {
    /// The running configuration; [`Server::reload`] replaces it, so read a snapshot where
    /// a value is needed rather than keep one.
    pub(crate) config: Live<Config>,
    pub(crate) limits: Limits,
    /// Decodes every connection's requests under `limits`.
    pub(crate) decoder: FrameDecoder,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) blobs: Blobs,
    pub(crate) guard: Arc<Guard>,
    pub(crate) firewall: Arc<Firewall>,
    pub(crate) recorder: Recorder,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) verifier: auth::Verifier,
    /// Open sessions per user (`limits.max_sessions_per_user`).
    pub(crate) user_sessions: Arc<sessions::UserSessions>,
    pub(crate) detection: Option<detector::Detection>,
    /// The fleet link, on a server whose store is a fleet's PostgreSQL database.
    #[cfg(feature = "postgres")]
    pub(crate) fleet: std::sync::OnceLock<crate::fleet::FleetLink>,
    /// Resume tickets: the key, the revoked set, sessions admitted from blocked sources.
    pub(crate) tickets: Arc<tickets::Tickets>,
    /// Connections from blocked sources that may still present a ticket.
    pub(crate) resume_budget: Arc<ResumeBudget>,
    /// TLS on the protocol port, when configured.
    pub(crate) tls: Option<Arc<tls::TlsState>>,
    pub(crate) shutdown: CancellationToken,
    /// Cancelled by [`ServerHandle::crash`]: every session is dropped where it stands.
    pub(crate) crashed: CancellationToken,
    #[cfg(feature = "fault-injection")]
    pub(crate) fault_hook: Option<FaultHook>,
}

impl Shared {
    /// Records an activity event (never blocks; a full recorder sheds and counts).
    pub(crate) fn record(&self, conn: u64, peer: SocketAddr, kind: EventKind) {
        self.recorder.record(Event {
            t_ms: crate::activity::now_ms(),
            conn,
            ip: peer.ip(),
            kind,
        });
    }

    /// Reports a signal about `peer`, seen on connection `conn` (0 for none), to the
    /// firewall. A session admitted by resume ticket from a blocked source is not scored: it
    /// loses its tickets and is closed instead ([`tickets::Tickets::misbehaved`]). Otherwise
    /// the connection is marked as having offended first, so that a block of its source cuts
    /// it even if it has logged in (a session that never offended outlives the block), and a
    /// session that offends while its source is blocked is cut. A failed login does not mark
    /// it: a connection that has not logged in is cut anyway, and one that then logs in had
    /// its failures forgiven as typos.
    pub(crate) fn signal(&self, peer: SocketAddr, conn: u64, signal: Signal) {
        if self
            .tickets
            .misbehaved(peer, signal, crate::activity::now_ms())
        {
            return;
        }
        if signal != Signal::AuthFailed {
            self.guard.offended(peer.ip(), conn);
        }
        self.firewall.signal(peer.ip(), signal);
    }

    /// Reports a signal about `peer` that counts against its address only: the session is
    /// not marked as having offended, and a session resumed by ticket from a blocked source
    /// keeps its tickets. For evidence that says little about the session that sent it.
    pub(crate) fn signal_address(&self, peer: SocketAddr, signal: Signal) {
        self.firewall.signal(peer.ip(), signal);
    }

    /// Counts a refusal at accept; refusals the source caused feed the firewall.
    fn refused(&self, peer: SocketAddr, refusal: &Refusal) {
        self.metrics.refused(refusal);
        self.record(
            0,
            peer,
            EventKind::Refused {
                reason: refusal.reason(),
            },
        );
        tracing::debug!(peer = %peer, reason = refusal.reason(), "connection refused");
        if matches!(refusal, Refusal::TooManyFromSource | Refusal::AcceptRate) {
            self.signal(peer, 0, Signal::Refused);
        }
    }
}

/// A configured server, ready to bind or to serve connections.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").finish_non_exhaustive()
    }
}

impl Server {
    /// Checks `config`, takes the data directory's lock (refused with
    /// [`StoreError::InUse`] while another server holds it; released when the server is
    /// dropped), opens (creating on first start) and checks the SQLite store and blob store
    /// in `data_dir`, removes half-finished uploads left by a crash, and moves blobs no item
    /// references to `DATA/lost+found`.
    pub fn open(config: Config, data_dir: &Path) -> Result<Server, ServerError> {
        Server::open_with_model(config, data_dir, None)
    }

    /// [`Server::open`], with the detection model scoring every source's activity windows
    /// live: each anomalous window feeds the firewall up to `firewall.weight_model_anomaly`
    /// points, by how far past the model's threshold it scored. Fails if the model was
    /// trained on another feature schema, or if activity recording is off.
    pub fn open_with_model(
        config: Config,
        data_dir: &Path,
        model: Option<Arc<Model>>,
    ) -> Result<Server, ServerError> {
        Server::open_layered(config, data_dir, model, |store| store)
    }

    /// [`Server::open_with_model`], with the opened store passed through `layer` before the
    /// server uses it: a wrapper that counts, or injects faults
    /// ([`crate::store::fault::FaultyStore`]).
    pub fn open_layered(
        config: Config,
        data_dir: &Path,
        model: Option<Arc<Model>>,
        layer: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
    ) -> Result<Server, ServerError> {
        config.check()?;
        let config = fit_to_descriptors(config)?;
        // A fleet server ships the windows its detector closes to the fleet's database.
        #[cfg(feature = "postgres")]
        let (window_tap, window_inbox) = match &config.store.url {
            Some(_) => {
                let (tap, inbox) = crate::fleet::window_channel();
                (Some(tap), Some(inbox))
            }
            None => (None, None),
        };
        #[cfg(not(feature = "postgres"))]
        let window_tap: Option<crate::detect::OnWindow> = None;
        let detection = match model {
            Some(_) if !config.activity.enabled => return Err(ServerError::DetectWithoutActivity),
            Some(m) => Some(detector::scorer(m, &config, window_tap)?),
            None => None,
        };
        // The lock comes first: nothing below may touch a directory another server owns.
        let lock = Arc::new(DataDirLock::acquire(data_dir)?);
        let min_free = config.storage.min_free_bytes;
        let opened = open_store_and_key(&config, data_dir, min_free, Some(&lock))?;
        let (store, shared_key) = (opened.store, opened.key);
        // Blobs go where `store.blobs` says: the fleet's database, or this directory.
        let backend: Arc<dyn BlobStore> = match opened.db_blobs {
            Some(db) => db,
            None => Arc::new(DirBlobs::open(data_dir)?),
        };
        let blobs = Blobs::new(backend)
            .holding(lock)
            .with_min_free_bytes(min_free);
        let referenced: HashSet<String> = store.referenced_blobs()?.into_iter().collect();
        blobs.sweep_orphans(&referenced)?;
        // Blocks survive a restart: decisions are stored, and those still in force return.
        let restored = restore_blocks(data_dir)?;
        // Tickets users hold stay valid across restarts: the key lives in the data directory.
        // A fleet shares one key (in its database), so any server honours any ticket.
        let ticket_key = match shared_key {
            Some(key) => key,
            None => crate::store::load_or_create_ticket_key(data_dir)?,
        };
        let (sink, relay) = match detection {
            Some((sink, pending, counters)) => (Some(sink), Some((pending, counters))),
            None => (None, None),
        };
        let recorder = if config.activity.enabled {
            Recorder::start(
                data_dir,
                config.activity.channel_capacity as usize,
                config.activity.flush(),
                sink,
            )?
            .shed_below(FreeSpace::new(data_dir, min_free))
            .retaining(config.activity.retention())
        } else {
            Recorder::disabled()
        };
        let server = Server::assemble(
            config,
            layer(store),
            blobs,
            recorder,
            relay,
            Some(ticket_key),
        )?;
        #[cfg(feature = "postgres")]
        if let Some(url) = &server.shared.config.load().store.url {
            // Blocks are shared by the servers on one database: see src/fleet.rs.
            let retain = server.shared.config.load().activity.retention().max_age;
            let link = crate::fleet::start(url, &server.shared.firewall, window_inbox, retain)?;
            let _ = server.shared.fleet.set(link);
        }
        for (source, left, reason) in restored {
            if let Ok(ip) = source.parse() {
                server
                    .shared
                    .guard
                    .block(ip, Duration::from_secs(left), &reason);
            }
        }
        Ok(server)
    }

    /// A server over an already opened store (another [`Store`] backend, say), with
    /// activity recording off.
    pub fn with_store(
        config: Config,
        store: Arc<dyn Store>,
        blobs: Blobs,
    ) -> Result<Server, ServerError> {
        Server::with_parts(config, store, blobs, Recorder::disabled())
    }

    /// A server over an opened store and a started recorder. Its resume tickets are signed
    /// with a per-process random key, so they end with the process.
    pub fn with_parts(
        config: Config,
        store: Arc<dyn Store>,
        blobs: Blobs,
        recorder: Recorder,
    ) -> Result<Server, ServerError> {
        Server::assemble(config, store, blobs, recorder, None, None)
    }

    /// Builds the shared state; with `detection`, starts the relay from the live scorer
    /// (already installed in `recorder`) to the firewall. Without `ticket_key`, tickets are
    /// signed with a per-process random key.
    fn assemble(
        config: Config,
        store: Arc<dyn Store>,
        blobs: Blobs,
        recorder: Recorder,
        detection: Option<(detector::Pending, detector::Detection)>,
        ticket_key: Option<[u8; crate::store::TICKET_KEY_LEN]>,
    ) -> Result<Server, ServerError> {
        config.check()?;
        let guard = Arc::new(Guard::new(&config));
        let firewall =
            Arc::new(Firewall::new(&config, Arc::clone(&guard)).with_recorder(recorder.clone()));
        // Operators unblock through the activity database (`rampart firewall unblock`).
        let g = Arc::clone(&guard);
        // Weak: the firewall holds the recorder, which holds this hook.
        let fw = Arc::downgrade(&firewall);
        recorder.on_unblock(Box::new(move |ip| {
            if g.unblock(ip) {
                if let Some(fw) = fw.upgrade() {
                    fw.count_operator_unblock();
                }
                tracing::info!(source = %ip, "unblocked by an operator");
            }
        }));
        let verifier = auth::Verifier::new(&config.auth)?;
        let detection = match detection {
            Some((pending, counters)) => {
                pending
                    .start(Arc::downgrade(&firewall))
                    .map_err(|source| ServerError::Thread {
                        what: "detection relay",
                        source,
                    })?;
                Some(counters)
            }
            None => None,
        };
        let tls = tls::TlsState::from_config(&config.tls)?;
        let user_sessions = sessions::UserSessions::new(config.limits.max_sessions_per_user);
        let tickets = Arc::new(tickets::Tickets::new(
            ticket_key.unwrap_or_else(tickets::Tickets::random_key),
            config.auth.ticket_ttl_s,
        ));
        Ok(Server {
            shared: Arc::new(Shared {
                limits: config.limits.protocol(),
                decoder: FrameDecoder::new(config.limits.protocol(), Role::Server),
                config: Live::new(config),
                store,
                blobs,
                guard,
                firewall,
                recorder,
                metrics: Arc::new(Metrics::default()),
                verifier,
                user_sessions,
                detection,
                #[cfg(feature = "postgres")]
                fleet: std::sync::OnceLock::new(),
                tickets,
                resume_budget: ResumeBudget::standard(),
                tls,
                shutdown: CancellationToken::new(),
                crashed: CancellationToken::new(),
                #[cfg(feature = "fault-injection")]
                fault_hook: None,
            }),
        })
    }

    /// Installs a fault hook (tests only). Must be called before the server is cloned or
    /// bound.
    #[cfg(feature = "fault-injection")]
    pub fn with_fault_hook(mut self, hook: FaultHook) -> Server {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.fault_hook = Some(hook);
        }
        self
    }

    /// The admission guard (connection caps, rate limiters, blocklist).
    pub fn guard(&self) -> Arc<Guard> {
        Arc::clone(&self.shared.guard)
    }

    /// The live counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// The firewall (rule signals, decisions).
    pub fn firewall(&self) -> Arc<Firewall> {
        Arc::clone(&self.shared.firewall)
    }

    /// What the live detection model has scored, if the server runs one.
    pub fn detection(&self) -> Option<DetectionStats> {
        self.shared
            .detection
            .as_ref()
            .map(detector::Detection::stats)
    }

    /// What the fleet link has done, on a server whose store is a fleet's PostgreSQL
    /// database (`None` otherwise).
    #[cfg(feature = "postgres")]
    pub fn fleet(&self) -> Option<crate::fleet::FleetStats> {
        self.shared.fleet.get().map(crate::fleet::FleetLink::stats)
    }

    /// The activity recorder.
    pub fn recorder(&self) -> &Recorder {
        &self.shared.recorder
    }

    /// The store.
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.shared.store)
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.shared.config.load()
    }

    /// Reloads the configuration from `new` without dropping connections: checks it, and
    /// applies the keys a running server can change (connection caps, timeouts, rates, the
    /// allow and deny lists, the firewall's settings, the per-request limits; see
    /// [`reload::is_live`]), keeping every other key at its running value and reporting it
    /// as needing a restart. `limits.max_connections` is fitted to the file descriptor limit
    /// as at start.
    ///
    /// On an error nothing changes. Open connections from an address the new deny list
    /// names are cut; a rate limiter whose quota changed starts afresh. Each change is
    /// logged.
    pub fn reload(&self, mut new: Config) -> Result<ReloadReport, ConfigError> {
        let old = self.shared.config.load();
        fit_reload_to_descriptors(&mut new, &old);
        let plan = reload::plan(&old, &new).inspect_err(|e| {
            tracing::error!(error = %e, "configuration not reloaded, the running one stays");
        })?;
        let guard = self.shared.guard.reload(&plan.config);
        self.shared.firewall.reload(&plan.config);
        self.shared.config.store(plan.config);
        for c in &plan.applied {
            tracing::info!(key = %c.key, old = %c.old, new = %c.new, "configuration reloaded");
        }
        for c in &plan.restart {
            tracing::warn!(
                key = %c.key,
                running = %c.old,
                file = %c.new,
                "configuration key needs a restart, the running value stays"
            );
        }
        if guard.limiters_rebuilt > 0 {
            tracing::info!(
                limiters = guard.limiters_rebuilt,
                "rate limiters with a new quota start afresh"
            );
        }
        if guard.cut > 0 {
            tracing::info!(
                cut = guard.cut,
                "connections from newly denied addresses cut"
            );
        }
        Ok(ReloadReport {
            applied: plan.applied,
            restart: plan.restart,
            cut: guard.cut,
        })
    }

    /// Binds `addr` and starts accepting connections in the background.
    pub async fn bind(self, addr: SocketAddr) -> Result<ServerHandle, ServerError> {
        if self.shared.tls.is_none() && !addr.ip().is_loopback() {
            if !self.shared.config.load().tls.insecure_plaintext {
                return Err(ServerError::Plaintext { addr });
            }
            tracing::warn!(%addr, "serving plaintext on a non-loopback address (insecure_plaintext): passwords cross the network in clear text");
        }
        let listener = NetListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        let metrics_addr = self.bind_metrics(local_addr).await?;
        let tracker = TaskTracker::new();
        let purge = tokio::spawn(purge_loop(Arc::clone(&self.shared)));
        tracker.spawn(lag_probe(Arc::downgrade(&self.shared)));
        let accept = tokio::spawn(accept_loop(self.clone(), listener, tracker.clone()));
        Ok(ServerHandle {
            server: self,
            local_addr,
            metrics_addr,
            accept,
            purge,
            tracker,
        })
    }

    /// Binds and starts the metrics endpoint if `metrics.listen` is set (a port of its own:
    /// an address equal to the protocol port's is refused). Returns its bound address.
    async fn bind_metrics(&self, protocol: SocketAddr) -> Result<Option<SocketAddr>, ServerError> {
        let Some(addr) = self.shared.config.load().metrics.listen else {
            return Ok(None);
        };
        let bind_err = |source| ServerError::Bind { addr, source };
        if addr == protocol {
            return Err(bind_err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "metrics are never served on the protocol port",
            )));
        }
        let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
        let bound = listener.local_addr().map_err(bind_err)?;
        tracing::info!(%bound, "serving metrics on http://{bound}/metrics");
        tokio::spawn(prom::serve(listener, Arc::downgrade(&self.shared)));
        Ok(Some(bound))
    }

    /// Admits and serves one connection over any transport, to its end. Returns why it
    /// ended, or why it was refused. Used by the accept loop, tests and fuzz targets.
    pub async fn serve_connection<T>(&self, io: T, peer: SocketAddr) -> Result<CloseReason, Refusal>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let ticket = self
            .shared
            .guard
            .admit(peer.ip())
            .inspect_err(|refusal| self.shared.refused(peer, refusal))?;
        Ok(self.run_admitted(io, peer, ticket, None).await)
    }

    /// Runs an admitted connection to its end. With `resumed`, the connection came from a
    /// blocked source and its first frame, a RESUME, was already redeemed: the session starts
    /// logged in, its AUTH_OK is the first reply, and the bytes read after the RESUME are the
    /// start of its input.
    async fn run_admitted<T>(
        &self,
        io: T,
        peer: SocketAddr,
        ticket: ConnTicket,
        resumed: Option<ResumedStart>,
    ) -> CloseReason
    where
        T: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let shared = Arc::clone(&self.shared);
        Metrics::bump(&shared.metrics.connections_accepted);
        let conn = ticket.id();
        shared.record(conn, peer, EventKind::Accept);
        let cut = ticket.cut_token();
        let (session, start, _entry) = match resumed {
            None => (
                session::Session::new(Arc::clone(&shared), peer, ticket.source(), conn),
                connection::Start::default(),
                None,
            ),
            Some(r) => {
                let entry =
                    shared
                        .tickets
                        .register_resumed(peer, conn, &r.redeemed.claims, cut.clone());
                let name = r.redeemed.name.clone();
                let session = session::Session::resumed(
                    Arc::clone(&shared),
                    peer,
                    ticket.source(),
                    conn,
                    r.redeemed,
                );
                let start = connection::Start {
                    reply: Some((r.request_id, Reply::AuthOk { user: name })),
                    input: r.input,
                };
                (session, start, Some(entry))
            }
        };
        let task = connection::run(Arc::clone(&shared), &ticket, io, session, cut, start);
        // The ticket lives until the task ends or unwinds, so its slot is always released.
        let (reason, unread_bytes) = match std::panic::AssertUnwindSafe(task).catch_unwind().await {
            Ok(ended) => ended,
            Err(payload) => {
                Metrics::bump(&shared.metrics.panics);
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".into());
                tracing::error!(peer = %peer, panic = %what, "connection task panicked; connection closed");
                (CloseReason::Panic, 0)
            }
        };
        shared.record(
            conn,
            peer,
            EventKind::Close {
                reason: reason.as_str(),
                unread_bytes,
            },
        );
        drop(ticket);
        shared.metrics.closed(reason);
        tracing::debug!(peer = %peer, reason = reason.as_str(), "connection closed");
        reason
    }
}

/// Below this many connections, a `max_connections` lowered to fit the descriptor limit is
/// worth a warning even when it was the default.
const SMALL_SERVER_CONNECTIONS: u32 = 1024;

/// Raises the file descriptor limit to the hard limit and lowers `limits.max_connections`
/// (and the per-source cap with it) to what the limit can serve ([`fds::connection_cap`]),
/// logging the outcome: lowered, at warning level when the operator chose the value or the
/// server is left small, at info level otherwise.
fn fit_to_descriptors(mut config: Config) -> Result<Config, ServerError> {
    let limit = fds::raise_limit();
    let shown = |n: Option<u64>| n.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    let Some(cap) = fds::connection_cap(limit.soft, config.limits.max_open_uploads) else {
        return Err(crate::config::ConfigError::Invalid {
            key: "limits.max_connections",
            reason: format!(
                "the file descriptor limit ({}) leaves room for no connection after the {} \
                 descriptors the server reserves; raise it (ulimit -n)",
                shown(limit.soft),
                fds::RESERVED_FDS
            ),
        }
        .into());
    };
    let wanted = config.limits.max_connections;
    if cap < wanted {
        config.limits.max_connections = cap;
        config.limits.max_connections_per_ip = config.limits.max_connections_per_ip.min(cap);
        let message = format!(
            "max_connections lowered from {wanted} to {cap} to fit the file descriptor limit \
             of {} (hard {}, {} reserved, {} per connection)",
            shown(limit.soft),
            shown(limit.hard),
            fds::RESERVED_FDS,
            2 + u64::from(config.limits.max_open_uploads)
        );
        // Fitting the default to a machine that still leaves room for thousands of
        // connections is ordinary, not a warning on every start; lowering a value the
        // operator chose, or leaving a small server, is.
        let chosen = wanted != crate::config::LimitsConfig::default().max_connections;
        if chosen || cap < SMALL_SERVER_CONNECTIONS {
            tracing::warn!("{message}");
        } else {
            tracing::info!("{message}");
        }
    } else {
        tracing::info!(
            soft = %shown(limit.soft),
            hard = %shown(limit.hard),
            raised_from = %shown(limit.before),
            max_connections = wanted,
            "file descriptor limit fits max_connections"
        );
    }
    Ok(config)
}

/// Fits a reloaded `new.limits.max_connections` to the file descriptor limit as
/// [`fit_to_descriptors`] did at start (quietly: a file unchanged since start must not read
/// as a change every reload). `max_open_uploads` is the running one: it is restart-only.
fn fit_reload_to_descriptors(new: &mut Config, running: &Config) {
    // Read, not raised: start-up raised it already, and a reload changes no process state.
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    if let Some(cap) = fds::connection_cap(soft, running.limits.max_open_uploads) {
        new.limits.max_connections = new.limits.max_connections.min(cap);
        new.limits.max_connections_per_ip = new.limits.max_connections_per_ip.min(cap);
    }
}

/// Blocks recorded in the activity database that are still in force.
fn restore_blocks(data_dir: &Path) -> Result<Vec<(String, u64, String)>, ServerError> {
    let conn = crate::activity::db::open(data_dir)?;
    Ok(crate::activity::db::active_blocks(
        &conn,
        crate::activity::now_ms(),
    )?)
}

/// Purges keyed limiter state and expired blocks once a second, so that sources rotating
/// through many addresses cannot grow memory.
async fn purge_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {
                shared.guard.purge();
                shared.firewall.purge();
            }
        }
    }
}

/// Measures event-loop lag: wakes every [`metrics::LAG_PROBE_EVERY`] and notes how late it
/// woke in [`metrics::Stalls::loop_lag_us`]. It holds the server weakly, so a server dropped
/// without a shutdown does not keep it (or itself) alive.
async fn lag_probe(shared: std::sync::Weak<Shared>) {
    let shutdown = match shared.upgrade() {
        Some(s) => s.shutdown.clone(),
        None => return,
    };
    let mut due = tokio::time::Instant::now() + metrics::LAG_PROBE_EVERY;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(due) => {}
        }
        let now = tokio::time::Instant::now();
        let Some(s) = shared.upgrade() else { return };
        let lag = now.saturating_duration_since(due);
        metrics::Stalls::note(&s.metrics.stalls.loop_lag_us, lag);
        s.metrics.loop_lag.observe(lag);
        due = now + metrics::LAG_PROBE_EVERY;
    }
}

/// The store `config.store.url` names: PostgreSQL, or SQLite in `data_dir` (with the disk's
/// free-space floor) when it is unset.
pub fn open_store(
    config: &Config,
    data_dir: &Path,
    min_free: u64,
) -> Result<Arc<dyn Store>, StoreError> {
    open_store_and_key(config, data_dir, min_free, None).map(|opened| opened.store)
}

/// What [`open_store`] opens for a server.
struct Opened {
    store: Arc<dyn Store>,
    /// The ticket key a fleet's database holds (`None` for SQLite: the key lives in the
    /// data directory).
    key: Option<[u8; crate::store::TICKET_KEY_LEN]>,
    /// The blobs in the fleet's database, when `store.blobs` puts them there (`None`: in
    /// the data directory).
    db_blobs: Option<Arc<dyn BlobStore>>,
}

/// With `lock`, a SQLite store holds the data directory's lock for as long as it lives
/// ([`SqliteStore::holding`]).
fn open_store_and_key(
    config: &Config,
    data_dir: &Path,
    min_free: u64,
    lock: Option<&Arc<DataDirLock>>,
) -> Result<Opened, StoreError> {
    match &config.store.url {
        #[cfg(feature = "postgres")]
        Some(url) => {
            let store = Arc::new(crate::store::PgStore::open(url)?);
            let key = store.shared_ticket_key()?;
            // On the store's own connections: blobs add no pool of their own.
            let db_blobs = config.store.blobs_in_postgres().then(|| {
                Arc::new(crate::store::PgBlobs::new(Arc::clone(&store))) as Arc<dyn BlobStore>
            });
            Ok(Opened {
                store,
                key: Some(key),
                db_blobs,
            })
        }
        #[cfg(not(feature = "postgres"))]
        Some(_) => Err(StoreError::Database(
            "this build of rampart has no PostgreSQL store (the `postgres` feature is off)"
                .to_owned(),
        )),
        None => {
            let store = SqliteStore::open(data_dir)?.with_min_free_bytes(min_free);
            let store = match lock {
                Some(lock) => store.holding(Arc::clone(lock)),
                None => store,
            };
            Ok(Opened {
                store: Arc::new(store),
                key: None,
                db_blobs: None,
            })
        }
    }
}

impl From<StoreError> for ServerError {
    fn from(e: StoreError) -> Self {
        ServerError::Store(e)
    }
}

/// Tells a refused peer why, without waiting: at most one non-blocking write, then close.
/// Nothing is read. A blocked source gets ERROR `blocked` with the seconds left and the
/// offence, within its share of notices (`guard::NOTICES_PER_S_PER_SOURCE`), and a bare
/// close past it, so a flood from it costs what it cost before. A source on the static deny
/// list gets a bare close: the operator listed it for good, and there is nothing it can wait
/// out. On a TLS port every refusal is a bare close: a notice would cost a handshake, and
/// admission comes before any cryptography.
fn refuse(stream: &mut NetStream, peer: SocketAddr, refusal: &Refusal, shared: &Shared) {
    if shared.tls.is_some() {
        return;
    }
    if let Some(buf) = refusal_reply(peer, refusal, &shared.guard) {
        let _ = stream.try_write(&buf);
    }
}

/// The encoded reply that tells a refused peer why, if it gets one ([`refuse`]).
fn refusal_reply(peer: SocketAddr, refusal: &Refusal, guard: &Guard) -> Option<bytes::BytesMut> {
    let reply = match refusal {
        Refusal::Denied => return None,
        Refusal::Blocked { .. } => Reply::error(
            ErrorCode::Blocked,
            guard.blocked_notice(peer.ip())?.to_string(),
        ),
        other => Reply::error(
            ErrorCode::Busy,
            format!("connection refused: {}", other.reason()),
        ),
    };
    let mut buf = bytes::BytesMut::new();
    protocol::encode_reply(0, &reply, &mut buf).ok()?;
    Some(buf)
}

/// Longest a notice to a connection from a blocked source may take to write: it is a few
/// dozen bytes on a fresh connection, so anything slower is a peer that does not read.
const NOTICE_WRITE: Duration = Duration::from_millis(500);

/// Writes `buf` within [`NOTICE_WRITE`], ignoring failure: the connection is closed next.
async fn write_notice<T: AsyncWrite + Unpin>(stream: &mut T, buf: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(NOTICE_WRITE, async {
        stream.write_all(buf).await?;
        stream.flush().await
    })
    .await;
}

/// The `blocked` notice as an encoded reply.
fn notice_reply(notice: &crate::protocol::BlockedNotice) -> Option<bytes::BytesMut> {
    let reply = Reply::error(ErrorCode::Blocked, notice.to_string());
    let mut buf = bytes::BytesMut::new();
    protocol::encode_reply(0, &reply, &mut buf).ok()?;
    Some(buf)
}

/// Refuses a connection from a blocked source that did not resume. After a RESUME was read
/// and refused (`resumed`) the notice is repeated (outside the share: it costs the client a
/// whole RESUME), so that a refused ticket reads as `blocked`; anything else is closed
/// without another word.
async fn refuse_unresumed<T: AsyncWrite + Unpin>(
    shared: &Shared,
    peer: SocketAddr,
    refusal: &Refusal,
    stream: &mut T,
    resumed: bool,
) {
    shared.refused(peer, refusal);
    if resumed {
        if let Some(buf) = shared
            .guard
            .block_notice(peer.ip())
            .as_ref()
            .and_then(notice_reply)
        {
            write_notice(stream, &buf).await;
        }
    }
}

/// A connection from a blocked source whose RESUME was redeemed before it was admitted.
struct ResumedStart {
    redeemed: tickets::Redeemed,
    /// The RESUME's request id, echoed by the AUTH_OK.
    request_id: u32,
    /// Bytes that arrived after the RESUME.
    input: bytes::BytesMut,
}

/// Reads the first frame of a connection from a blocked source: at most
/// [`crate::guard::RESUME_FIRST_FRAME_BYTES`], and only a RESUME (any other kind is refused
/// on its kind byte, before the rest arrives). Returns the frame and the bytes after it, or
/// `None` for anything else. The caller bounds the wait.
async fn read_first_frame<R: AsyncRead + Unpin>(
    stream: &mut R,
    limits: &Limits,
) -> Option<(protocol::Frame, bytes::BytesMut)> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; crate::guard::RESUME_FIRST_FRAME_BYTES];
    let mut have = 0;
    loop {
        let n = stream.read(buf.get_mut(have..)?).await.ok()?;
        if n == 0 {
            return None;
        }
        have += n;
        let got = buf.get(..have)?;
        if got
            .get(3)
            .is_some_and(|&k| k != protocol::Kind::Resume as u8)
        {
            return None;
        }
        let mut bytes = bytes::BytesMut::from(got);
        match protocol::decode_frame(&mut bytes, limits, Role::Server) {
            Ok(Some(frame)) => return Some((frame, bytes)),
            Ok(None) if have < buf.len() => continue,
            _ => return None,
        }
    }
}

impl Server {
    /// Serves a connection from a blocked source that got a place in the resume budget:
    /// a valid RESUME as its first frame, within the budget's size and time, logs it in as
    /// the ticket's user; anything else gets the `blocked` refusal it would have got at
    /// accept. The place is given back once the first frame is judged. On a TLS port the
    /// handshake comes first, within the same place.
    async fn admit_blocked(
        &self,
        stream: NetStream,
        peer: SocketAddr,
        refusal: Refusal,
        permit: ResumePermit,
    ) {
        let _ = stream.set_nodelay(true);
        match &self.shared.tls {
            None => self.admit_blocked_over(stream, peer, refusal, permit).await,
            Some(tls) => match tls
                .handshake(stream, self.shared.guard.source_of(peer.ip()))
                .await
            {
                Ok(stream) => self.admit_blocked_over(stream, peer, refusal, permit).await,
                Err(_) => self.shared.refused(peer, &refusal),
            },
        }
    }

    async fn admit_blocked_over<T>(
        &self,
        mut stream: T,
        peer: SocketAddr,
        refusal: Refusal,
        permit: ResumePermit,
    ) where
        T: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let shared = Arc::clone(&self.shared);
        // The notice goes out at once, before anything is read: a client without a ticket
        // (or a probe) learns it is blocked as fast as a refusal at accept tells it, and a
        // client with one sends its RESUME regardless and reads past the notice. It comes
        // out of the source's share of notices: past it the connection is refused unread
        // with a bare close, as at accept, so a flood costs what it did before tickets.
        let Some(notice) = shared.guard.blocked_notice(peer.ip()) else {
            shared.refused(peer, &refusal);
            return;
        };
        if let Some(buf) = notice_reply(&notice) {
            write_notice(&mut stream, &buf).await;
        }
        let first = tokio::select! {
            _ = shared.shutdown.cancelled() => None,
            read = tokio::time::timeout(
                crate::guard::RESUME_FIRST_FRAME_WAIT,
                read_first_frame(&mut stream, &shared.limits),
            ) => read.ok().flatten(),
        };
        let Some((frame, input)) = first else {
            return refuse_unresumed(&shared, peer, &refusal, &mut stream, false).await;
        };
        let Ok(Request::Resume { user, ticket }) = Request::decode(&frame, &shared.limits) else {
            return refuse_unresumed(&shared, peer, &refusal, &mut stream, false).await;
        };
        let source = shared.guard.source_of(peer.ip());
        let verified = match tickets::verify(&shared, &user, &ticket).await {
            Ok(v) => v,
            Err(e) => {
                tickets::refused(&shared, source, 0, peer, &user, e);
                return refuse_unresumed(&shared, peer, &refusal, &mut stream, true).await;
            }
        };
        let admitted = match shared.guard.admit_resumed(peer.ip()) {
            Ok(t) => t,
            Err(other) => {
                shared.refused(peer, &other);
                if let Some(buf) = refusal_reply(peer, &other, &shared.guard) {
                    write_notice(&mut stream, &buf).await;
                }
                return;
            }
        };
        drop(permit);
        let redeemed = match tickets::log_in(&shared, source, admitted.id(), peer, verified) {
            Ok(r) => r,
            Err(reply) => {
                let mut buf = bytes::BytesMut::new();
                if protocol::encode_reply(frame.request_id, &reply, &mut buf).is_ok() {
                    write_notice(&mut stream, &buf).await;
                }
                return;
            }
        };
        let start = ResumedStart {
            redeemed,
            request_id: frame.request_id,
            input,
        };
        self.run_admitted(stream, peer, admitted, Some(start)).await;
    }

    /// Runs an admitted TCP connection: on a TLS port, its handshake first.
    async fn run_accepted(&self, stream: NetStream, peer: SocketAddr, ticket: ConnTicket) {
        let _ = stream.set_nodelay(true);
        match &self.shared.tls {
            None => {
                self.run_admitted(stream, peer, ticket, None).await;
            }
            Some(tls) => match tls
                .handshake(stream, self.shared.guard.source_of(peer.ip()))
                .await
            {
                Ok(stream) => {
                    Metrics::bump(&self.shared.metrics.tls_handshakes);
                    self.run_admitted(stream, peer, ticket, None).await;
                }
                Err(failure) => tls::failed(&self.shared, ticket.id(), peer, &failure),
            },
        }
    }
}

async fn accept_loop(server: Server, mut listener: NetListener, tracker: TaskTracker) {
    let shared = Arc::clone(&server.shared);
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            res = listener.accept() => res,
        };
        let (mut stream, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(5);
                pair
            }
            Err(e) => {
                // Usually EMFILE/ENFILE: back off instead of spinning, and keep serving the
                // connections already open.
                Metrics::bump(&shared.metrics.accept_errors);
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let ticket = match shared.guard.admit(peer.ip()) {
            Ok(t) => t,
            // A blocked source may still present a resume ticket, within the budget; past
            // it, it is refused as before, unread.
            Err(refusal @ Refusal::Blocked { .. })
                if shared.tickets.enabled() && shared.config.load().auth.resume_when_blocked =>
            {
                let source = shared.guard.source_of(peer.ip());
                match shared.resume_budget.try_take(source) {
                    Some(permit) => {
                        let server = server.clone();
                        spawn_session(&tracker, &shared, async move {
                            server.admit_blocked(stream, peer, refusal, permit).await;
                        });
                    }
                    None => {
                        shared.refused(peer, &refusal);
                        refuse(&mut stream, peer, &refusal, &shared);
                    }
                }
                continue;
            }
            Err(refusal) => {
                shared.refused(peer, &refusal);
                refuse(&mut stream, peer, &refusal, &shared);
                continue;
            }
        };
        let server = server.clone();
        spawn_session(&tracker, &shared, async move {
            server.run_accepted(stream, peer, ticket).await;
        });
    }
}

/// Spawns one accepted connection's task, which a crash ([`ServerHandle::crash`]) drops
/// wherever it stands.
fn spawn_session<F>(tracker: &TaskTracker, shared: &Shared, session: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let crashed = shared.crashed.clone();
    tracker.spawn(async move {
        tokio::select! {
            biased;
            _ = crashed.cancelled() => {}
            _ = session => {}
        }
    });
}

/// What [`Server::reload`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// The keys changed and applied.
    pub applied: Vec<KeyChange>,
    /// The keys changed in the file that need a restart; they keep their running values.
    pub restart: Vec<KeyChange>,
    /// Open connections cut because the new deny list names their address.
    pub cut: u32,
}

/// A running server. Dropping it does not stop the server; call [`ServerHandle::shutdown`].
pub struct ServerHandle {
    server: Server,
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    accept: JoinHandle<()>,
    purge: JoinHandle<()>,
    tracker: TaskTracker,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// The bound address (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the metrics endpoint listens, if `metrics.listen` is set (useful after
    /// binding port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The server (guard, metrics, store).
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The admission guard.
    pub fn guard(&self) -> Arc<Guard> {
        self.server.guard()
    }

    /// The firewall.
    pub fn firewall(&self) -> Arc<Firewall> {
        self.server.firewall()
    }

    /// The live counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.server.metrics()
    }

    /// Reloads the configuration ([`Server::reload`]); `rampart serve` calls it on SIGHUP.
    pub fn reload(&self, new: Config) -> Result<ReloadReport, ConfigError> {
        self.server.reload(new)
    }

    /// Kills the server the way a crash would, for fault injection: it stops accepting, and
    /// every session is dropped where it stands, with no reply, no goodbye and no flush, so
    /// its peer just sees the connection close. Returns once every session task has
    /// ended and the data directory is released (as [`ServerHandle::shutdown`]); what is
    /// still queued in memory (activity events, firewall state not yet written) is lost with
    /// the server. A committed delivery stays committed: the store acknowledges nothing
    /// before its commit is durable.
    pub async fn crash(self) {
        self.server.shared.crashed.cancel();
        self.server.shared.shutdown.cancel();
        self.accept.abort();
        self.purge.abort();
        let _ = self.accept.await;
        let _ = self.purge.await;
        self.tracker.close();
        self.tracker.wait().await;
        let grace = self.server.shared.config.load().timeouts.shutdown_grace();
        release_data_dir(self.server, tokio::time::Instant::now() + grace).await;
    }

    /// Stops accepting, tells every session the server is shutting down, and waits up to
    /// `timeouts.shutdown_grace` for them to finish and for the data directory to be
    /// released (its lock dropped, its database closed).
    pub async fn shutdown(self) {
        let ServerHandle {
            server,
            accept,
            purge,
            tracker,
            ..
        } = self;
        server.shared.shutdown.cancel();
        let _ = accept.await;
        let _ = purge.await;
        tracker.close();
        let grace = server.shared.config.load().timeouts.shutdown_grace();
        let deadline = tokio::time::Instant::now() + grace;
        if tokio::time::timeout_at(deadline, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("sessions still open after the shutdown grace period");
        }
        release_data_dir(server, deadline).await;
    }
}

/// Drops `server` and waits, up to `deadline`, until nothing holds its data directory's lock.
/// Work a session started can outlive the session on a blocking thread (a batch of
/// deliveries being led, a blob read whose reader is gone), and with it a handle on the store
/// or the blobs, which hold the lock. Once this returns the directory is free: a server
/// opened on it next does not find it locked, nor this one's database connections open.
async fn release_data_dir(server: Server, deadline: tokio::time::Instant) {
    let Some(lock) = server.shared.blobs.held_lock() else {
        return;
    };
    drop(server);
    let released = async {
        while lock.strong_count() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    if tokio::time::timeout_at(deadline, released).await.is_err() {
        tracing::warn!("the data directory is still held after the shutdown grace period");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Work a session started may hold the store past the session (a batch leader on a
    /// blocking thread): shutdown waits for it, so the data directory is free, and its
    /// database closed, once shutdown returns. This process spawns no children, so no forked
    /// copy of the lock's descriptor can hold the lock in its place.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_returns_once_the_data_directory_is_released() -> TestResult {
        let dir = tempfile::tempdir()?;
        let server = Server::open(Config::default(), dir.path())?;
        let lingering = server.store();
        let handle = server.bind("127.0.0.1:0".parse()?).await?;
        let store = Arc::downgrade(&lingering);
        let holder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(lingering);
        });
        handle.shutdown().await;
        // The store is gone (its connections closed) and nothing holds the lock.
        assert_eq!(store.strong_count(), 0);
        let lock = DataDirLock::acquire(dir.path());
        assert!(lock.is_ok(), "{lock:?}");
        holder.join().map_err(|_| "the holder panicked")?;
        Ok(())
    }
}
