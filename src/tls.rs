//! TLS on the protocol port: the server's and the client's rustls configurations, self-signed
//! certificates for tests and small deployments, trust on first use, and the defences of the
//! handshake itself.
//!
//! - **Serving** ([`server_config`]): a PEM certificate chain and key, TLS 1.3 only unless
//!   TLS 1.2 is asked for. Every error names the file it came from.
//! - **Certificates** ([`generate_self_signed`]): rcgen, one ECDSA P-256 key, the names given
//!   as subject alternative names; the key file is written 0600.
//! - **Trusting the server** ([`ClientTrust`]): a CA file, the system's roots, or trust on
//!   first use. The last records the server certificate's SHA-256 fingerprint per `HOST:PORT`
//!   in a known-servers file (0600), as ssh does with known_hosts, and refuses a changed
//!   certificate later with both fingerprints in the error. A first-use fingerprint is written
//!   only after the handshake proved the server holds the certificate's key
//!   ([`TofuVerifier::confirm`]).
//! - **The handshake is attack surface** ([`HandshakeGuard`]): it runs after admission (the
//!   blocklist and the per-source caps cost no cryptography), within a time budget (a
//!   ClientHello dripped a byte at a time is a slowloris), and within caps on concurrent
//!   handshakes per source and in total (key exchange is the CPU cost a flood aims at).
//!   [`sniff`] tells TLS from anything else on the first bytes, so that plaintext on the TLS
//!   port is refused before any cryptography.
//!
//! The ring provider is used throughout: it needs only a C compiler, where aws-lc-rs also
//! needs cmake.

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// Why a TLS configuration, certificate or known-servers file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A PEM file held no certificate, or no private key, or could not be parsed.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        what: String,
    },
    /// rustls refused the configuration (for example, a key that does not match the
    /// certificate).
    #[error("{context}: {source}")]
    Rustls {
        /// Which files or which step.
        context: String,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// The certificate could not be generated.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// Refusing to overwrite a file.
    #[error("{0} already exists; remove it or choose another directory")]
    Exists(PathBuf),
    /// No trusted root certificate could be loaded from the system.
    #[error("no trusted root certificates found on this system; pass --ca FILE")]
    NoSystemRoots,
    /// An unknown TLS version name.
    #[error("unknown TLS version {0:?}: expected \"1.3\" or \"1.2\"")]
    Version(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The lowest TLS version a server accepts or a client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinVersion {
    /// TLS 1.3 only (the default).
    #[default]
    Tls13,
    /// TLS 1.2 and 1.3: only for peers that cannot do 1.3.
    Tls12,
}

impl MinVersion {
    /// Parses `"1.3"` or `"1.2"`.
    pub fn parse(s: &str) -> Result<MinVersion, TlsError> {
        match s {
            "1.3" => Ok(MinVersion::Tls13),
            "1.2" => Ok(MinVersion::Tls12),
            other => Err(TlsError::Version(other.to_string())),
        }
    }

    fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        static TLS13_AND_12: [&rustls::SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        match self {
            MinVersion::Tls13 => &TLS13_ONLY,
            MinVersion::Tls12 => &TLS13_AND_12,
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file; at least one is required.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: format!("not a PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "no certificate (expected a \"BEGIN CERTIFICATE\" block)".into(),
        });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no private key (expected a \"BEGIN PRIVATE KEY\" block)".into()
            }
            other => format!("not a PEM private key file: {other}"),
        },
    })
}

/// The server's TLS configuration from a PEM certificate chain and key.
pub fn server_config(
    cert: &Path,
    key: &Path,
    min: MinVersion,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certs(cert)?;
    let key_der = read_key(key)?;
    let context = || format!("{} with {}", cert.display(), key.display());
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(min.versions())
        .map_err(|source| TlsError::Rustls {
            context: "TLS versions".into(),
            source,
        })?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|source| TlsError::Rustls {
            context: context(),
            source,
        })?;
    Ok(Arc::new(config))
}

/// The files [`generate_self_signed`] wrote.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The certificate, PEM.
    pub cert: PathBuf,
    /// The private key, PEM, mode 0600.
    pub key: PathBuf,
    /// The certificate's fingerprint ([`fingerprint`]).
    pub fingerprint: String,
}

/// Writes a self-signed certificate for `names` (DNS names or IP addresses) and its key to
/// `dir/cert.pem` and `dir/key.pem`. Refuses to overwrite either file.
pub fn generate_self_signed(names: &[String], dir: &Path) -> Result<Generated, TlsError> {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(names.to_vec())?;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(TlsError::Exists(p.clone()));
        }
    }
    write_new(&key_path, signing_key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(Generated {
        fingerprint: fingerprint(cert.der()),
        cert: cert_path,
        key: key_path,
    })
}

/// Creates `path` (never overwriting it) with `mode` on unix, and writes `bytes`.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// A certificate's SHA-256 fingerprint over its DER bytes: `sha256:` and 64 hex digits, the
/// form the known-servers file stores and errors show.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in digest.as_ref() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// How a client decides to trust a server's certificate.
#[derive(Debug, Clone)]
pub enum ClientTrust {
    /// Only certificates that chain to the CA certificates in this PEM file.
    Ca(PathBuf),
    /// The system's trusted roots.
    SystemRoots,
    /// Trust on first use: the fingerprint recorded for the server in this known-servers
    /// file, or, the first time, whatever the server presents (then recorded).
    FirstUse(PathBuf),
}

/// A client's TLS configuration, and, under trust on first use, the verifier whose
/// [`TofuVerifier::confirm`] records a first-seen certificate once the handshake succeeded.
pub struct ClientTls {
    /// The rustls configuration to connect with.
    pub config: Arc<ClientConfig>,
    /// Present under [`ClientTrust::FirstUse`].
    pub first_use: Option<Arc<TofuVerifier>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("first_use", &self.first_use)
            .finish_non_exhaustive()
    }
}

/// The client configuration for connecting to `server` (`HOST:PORT`, the known-servers key).
pub fn client_config(
    trust: &ClientTrust,
    server: &str,
    min: MinVersion,
) -> Result<ClientTls, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(min.versions())
        .map_err(|source| TlsError::Rustls {
            context: "TLS versions".into(),
            source,
        })?;
    let roots = |certs: Vec<CertificateDer<'static>>, origin: &str| {
        let mut store = RootCertStore::empty();
        let (added, _ignored) = store.add_parsable_certificates(certs);
        if added == 0 {
            return Err(TlsError::Pem {
                path: PathBuf::from(origin),
                what: "no usable CA certificate".into(),
            });
        }
        Ok(store)
    };
    match trust {
        ClientTrust::Ca(path) => {
            let store = roots(read_certs(path)?, &path.display().to_string())?;
            Ok(ClientTls {
                config: Arc::new(builder.with_root_certificates(store).with_no_client_auth()),
                first_use: None,
            })
        }
        ClientTrust::SystemRoots => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err(TlsError::NoSystemRoots);
            }
            let store =
                roots(found.certs, "the system's roots").map_err(|_| TlsError::NoSystemRoots)?;
            Ok(ClientTls {
                config: Arc::new(builder.with_root_certificates(store).with_no_client_auth()),
                first_use: None,
            })
        }
        ClientTrust::FirstUse(path) => {
            let verifier = Arc::new(TofuVerifier::new(path.clone(), server.to_string())?);
            let config = builder
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone())
                .with_no_client_auth();
            Ok(ClientTls {
                config: Arc::new(config),
                first_use: Some(verifier),
            })
        }
    }
}

/// The known-servers file: one `HOST:PORT sha256:HEX` line per server; `#` starts a comment.
#[derive(Debug, Clone)]
pub struct KnownServers {
    path: PathBuf,
}

impl KnownServers {
    /// The file at `path` (it need not exist yet).
    pub fn new(path: PathBuf) -> KnownServers {
        KnownServers { path }
    }

    /// Every recorded fingerprint, by server; empty if the file does not exist. The last line
    /// for a server wins.
    pub fn read(&self) -> Result<HashMap<String, String>, TlsError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
            Err(e) => return Err(io_err(&self.path)(e)),
        };
        let mut map = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            if let (Some(server), Some(fp)) = (parts.next(), parts.next()) {
                map.insert(server.to_string(), fp.to_string());
            }
        }
        Ok(map)
    }

    /// Appends `server`'s fingerprint, creating the file (0600) and its directory if needed.
    pub fn remember(&self, server: &str, fingerprint: &str) -> Result<(), TlsError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&self.path).map_err(io_err(&self.path))?;
        writeln!(f, "{server} {fingerprint}").map_err(io_err(&self.path))?;
        f.sync_all().map_err(io_err(&self.path))
    }
}

/// The text of the error a changed certificate gives, with both fingerprints.
pub fn changed_message(server: &str, known: &str, presented: &str, file: &Path) -> String {
    format!(
        "the certificate of {server} changed: {file} has {known}, the server presented \
         {presented}. If the server's certificate was replaced on purpose, remove its line \
         from {file}; otherwise someone may be intercepting the connection",
        file = file.display()
    )
}

/// Trust on first use for one server: accepts the certificate recorded for it, refuses any
/// other, and accepts (pending [`TofuVerifier::confirm`]) the first one seen. Signatures are
/// still checked against the presented certificate, so the server must hold its key.
pub struct TofuVerifier {
    known: KnownServers,
    server: String,
    recorded: Option<String>,
    pending: Mutex<Option<String>>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl fmt::Debug for TofuVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TofuVerifier")
            .field("server", &self.server)
            .field("recorded", &self.recorded)
            .finish_non_exhaustive()
    }
}

impl TofuVerifier {
    /// The verifier for `server`, reading its recorded fingerprint from `path`.
    pub fn new(path: PathBuf, server: String) -> Result<TofuVerifier, TlsError> {
        let known = KnownServers::new(path);
        let recorded = known.read()?.remove(&server);
        Ok(TofuVerifier {
            known,
            server,
            recorded,
            pending: Mutex::new(None),
            algorithms: provider().signature_verification_algorithms,
        })
    }

    /// The fingerprint recorded for this server before this connection, if any.
    pub fn recorded(&self) -> Option<&str> {
        self.recorded.as_deref()
    }

    /// After a successful handshake: records a first-seen certificate. Returns its
    /// fingerprint if it was new.
    pub fn confirm(&self) -> Result<Option<String>, TlsError> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match pending {
            Some(fp) => {
                self.known.remember(&self.server, &fp)?;
                Ok(Some(fp))
            }
            None => Ok(None),
        }
    }
}

impl ServerCertVerifier for TofuVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = fingerprint(end_entity.as_ref());
        match &self.recorded {
            Some(known) if *known == presented => Ok(ServerCertVerified::assertion()),
            Some(known) => Err(rustls::Error::General(changed_message(
                &self.server,
                known,
                &presented,
                &self.known.path,
            ))),
            None => {
                *self
                    .pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(presented);
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// **Attackers only**: a client configuration that accepts any server certificate
/// (signatures are still checked against the certificate presented, so the handshake is the
/// real one). The scenario attackers ([`crate::attack`]) speak TLS to cost the server what a
/// real attacker's handshake costs; they do not care who the server is. Never use it for a
/// client that sends a password or reads data: that client must trust the server by CA or
/// by first use ([`client_config`]).
pub fn attacker_client_config() -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(MinVersion::Tls13.versions())
        .map_err(|source| TlsError::Rustls {
            context: "TLS versions".into(),
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate {
            algorithms: provider().signature_verification_algorithms,
        }))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The verifier of [`attacker_client_config`]: every certificate is accepted.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What the first bytes of a connection on a TLS port are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// A TLS handshake record (content type 22, version 3.x).
    Tls,
    /// rampart's own plaintext frame header: a client that forgot `--tls`.
    PlaintextRampart,
    /// Anything else.
    Other,
    /// No bytes: the peer closed before sending any.
    NeedMore,
}

/// Classifies the first bytes of a connection, deciding on the first byte where it can (a
/// server peeks once, and a byte is all a peek is sure to return): a TLS record starts with
/// content type 22 (handshake), then a 3.x version; rampart's frames start with `RM`.
pub fn sniff(first: &[u8]) -> Sniffed {
    match first {
        [] => Sniffed::NeedMore,
        [0x16] | [0x16, 0x03, ..] => Sniffed::Tls,
        [b'R'] | [b'R', b'M', ..] => Sniffed::PlaintextRampart,
        _ => Sniffed::Other,
    }
}

/// The handshake's budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Longest a handshake may take, from accept to its end: a ClientHello dripped slowly
    /// is cut at this point.
    pub timeout: Duration,
    /// Most handshakes in progress at once, over all sources.
    pub max_total: usize,
    /// Most handshakes in progress at once from one source address.
    pub max_per_source: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits {
            timeout: Duration::from_secs(5),
            max_total: 256,
            max_per_source: 8,
        }
    }
}

/// Why a handshake was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeCap {
    /// [`HandshakeLimits::max_total`] handshakes are already running.
    Total,
    /// [`HandshakeLimits::max_per_source`] handshakes from this source are already running.
    PerSource,
}

impl HandshakeCap {
    /// A stable snake_case label for counting refusals.
    pub fn reason(self) -> &'static str {
        match self {
            HandshakeCap::Total => "tls_handshakes",
            HandshakeCap::PerSource => "tls_handshakes_per_ip",
        }
    }
}

/// Counts the handshakes in progress, in total and per source, against [`HandshakeLimits`].
///
/// A handshake past a cap waits for a place, first in line first served, for at most the
/// time it is given ([`HandshakeGuard::acquire`]); only then is it refused. Ten users behind
/// one NAT who reconnect at the same moment then queue for a millisecond or two instead of
/// losing their connections, while a flood from one address still runs at most
/// `max_per_source` key exchanges at a time, and waits with nothing but a socket (which the
/// per-source connection caps bound) until it is cut.
#[derive(Debug)]
pub struct HandshakeGuard {
    limits: HandshakeLimits,
    total: Arc<Semaphore>,
    /// One semaphore per source with a handshake running or waiting; removed when idle.
    per_source: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
}

impl HandshakeGuard {
    /// A guard with these limits.
    pub fn new(limits: HandshakeLimits) -> HandshakeGuard {
        HandshakeGuard {
            limits,
            total: Arc::new(Semaphore::new(limits.max_total)),
            per_source: Mutex::new(HashMap::new()),
        }
    }

    /// The limits.
    pub fn limits(&self) -> HandshakeLimits {
        self.limits
    }

    fn source(&self, ip: IpAddr) -> Arc<Semaphore> {
        let mut map = self
            .per_source
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(
            map.entry(ip)
                .or_insert_with(|| Arc::new(Semaphore::new(self.limits.max_per_source))),
        )
    }

    /// A place for one handshake from `ip` now, given back when the permit drops; or which
    /// cap is full.
    pub fn start(self: &Arc<Self>, ip: IpAddr) -> Result<HandshakePermit, HandshakeCap> {
        // The source's semaphore is held only by its permits and waiters, so that a failed
        // try leaves nothing behind for the permit's drop to miss.
        let mut permit = HandshakePermit::new(self, ip);
        permit.source = Some(
            self.source(ip)
                .try_acquire_owned()
                .map_err(|_| HandshakeCap::PerSource)?,
        );
        permit.total = Some(
            Arc::clone(&self.total)
                .try_acquire_owned()
                .map_err(|_| HandshakeCap::Total)?,
        );
        Ok(permit)
    }

    /// A place for one handshake from `ip`, waiting up to `wait` for one to come free (in
    /// arrival order); or the cap that stayed full.
    pub async fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        wait: Duration,
    ) -> Result<HandshakePermit, HandshakeCap> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut permit = HandshakePermit::new(self, ip);
        permit.source = Some(
            tokio::time::timeout_at(deadline, self.source(ip).acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
                .ok_or(HandshakeCap::PerSource)?,
        );
        permit.total = Some(
            tokio::time::timeout_at(deadline, Arc::clone(&self.total).acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
                .ok_or(HandshakeCap::Total)?,
        );
        Ok(permit)
    }

    /// Handshakes in progress, in total.
    pub fn running(&self) -> usize {
        self.limits
            .max_total
            .saturating_sub(self.total.available_permits())
    }

    /// Sources with a handshake running or waiting.
    pub fn sources(&self) -> usize {
        self.per_source
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

/// One handshake's place in the [`HandshakeGuard`]; given back on drop.
#[derive(Debug)]
pub struct HandshakePermit {
    guard: Arc<HandshakeGuard>,
    ip: IpAddr,
    source: Option<OwnedSemaphorePermit>,
    total: Option<OwnedSemaphorePermit>,
}

impl HandshakePermit {
    fn new(guard: &Arc<HandshakeGuard>, ip: IpAddr) -> HandshakePermit {
        HandshakePermit {
            guard: Arc::clone(guard),
            ip,
            source: None,
            total: None,
        }
    }
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        drop(self.total.take());
        drop(self.source.take());
        // Forget a source nobody else is running or waiting on: only the map holds its
        // semaphore then (a waiter holds a clone, so it stays).
        let mut map = self
            .guard
            .per_source
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.get(&self.ip).is_some_and(|s| Arc::strong_count(s) == 1) {
            map.remove(&self.ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn cert_in(dir: &Path) -> Generated {
        generate_self_signed(&["localhost".into(), "127.0.0.1".into()], dir).expect("generate")
    }

    /// Runs one handshake over an in-memory pipe and echoes one byte; returns the client's
    /// result.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> Result<(), std::io::Error> {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let srv = tokio::spawn(async move {
            let mut tls = acceptor.accept(s).await?;
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await?;
            tls.write_all(&b).await?;
            tls.flush().await?;
            Ok::<_, std::io::Error>(())
        });
        let connector = tokio_rustls::TlsConnector::from(client);
        let name = ServerName::try_from("localhost").expect("name");
        let mut tls = connector.connect(name, c).await?;
        tls.write_all(b"x").await?;
        tls.flush().await?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await?;
        let _ = srv.await;
        Ok(())
    }

    #[tokio::test]
    async fn a_client_trusting_the_ca_connects_and_a_wrong_ca_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = cert_in(&dir.path().join("good"));
        let other = cert_in(&dir.path().join("other"));
        let server = server_config(&good.cert, &good.key, MinVersion::Tls13).expect("server");
        let ok = client_config(
            &ClientTrust::Ca(good.cert.clone()),
            "localhost:1",
            MinVersion::Tls13,
        )
        .expect("client");
        handshake(server.clone(), ok.config)
            .await
            .expect("trusted CA");
        let wrong = client_config(
            &ClientTrust::Ca(other.cert),
            "localhost:1",
            MinVersion::Tls13,
        )
        .expect("client");
        let err = handshake(server, wrong.config).await.expect_err("wrong CA");
        // The other certificate has the same issuer name, so rustls finds the wrong CA and
        // its signature check fails; a CA of another name gives UnknownIssuer. Both are
        // refusals of the peer's certificate.
        assert!(
            err.to_string().contains("invalid peer certificate"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn first_use_records_the_certificate_and_refuses_a_changed_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = cert_in(&dir.path().join("first"));
        let second = cert_in(&dir.path().join("second"));
        let known = dir.path().join("conf/known_servers");
        let trust = ClientTrust::FirstUse(known.clone());
        let s1 = server_config(&first.cert, &first.key, MinVersion::Tls13).expect("server");

        let c = client_config(&trust, "127.0.0.1:7878", MinVersion::Tls13).expect("client");
        handshake(s1.clone(), c.config).await.expect("first use");
        let v = c.first_use.expect("first-use verifier");
        assert_eq!(
            v.confirm().expect("confirm"),
            Some(first.fingerprint.clone())
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&known)
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // The same certificate again: accepted, nothing new recorded.
        let c = client_config(&trust, "127.0.0.1:7878", MinVersion::Tls13).expect("client");
        handshake(s1, c.config).await.expect("known certificate");
        assert_eq!(
            c.first_use.expect("verifier").confirm().expect("confirm"),
            None
        );

        // A different certificate on the same server: refused, with both fingerprints.
        let s2 = server_config(&second.cert, &second.key, MinVersion::Tls13).expect("server");
        let c = client_config(&trust, "127.0.0.1:7878", MinVersion::Tls13).expect("client");
        let err = handshake(s2.clone(), c.config).await.expect_err("changed");
        let text = err.to_string();
        assert!(text.contains(&first.fingerprint), "{text}");
        assert!(text.contains(&second.fingerprint), "{text}");

        // Another server is a first use of its own.
        let c = client_config(&trust, "127.0.0.1:7879", MinVersion::Tls13).expect("client");
        handshake(s2, c.config).await.expect("other server");
        assert_eq!(
            c.first_use.expect("verifier").confirm().expect("confirm"),
            Some(second.fingerprint.clone())
        );
        let map = KnownServers::new(known).read().expect("read");
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn certificate_and_key_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = cert_in(dir.path());
        let missing = dir.path().join("nope.pem");
        let e = server_config(&missing, &g.key, MinVersion::Tls13).expect_err("missing");
        assert!(e.to_string().contains("nope.pem"), "{e}");
        // The key given as the certificate, and the certificate as the key.
        let e = server_config(&g.key, &g.key, MinVersion::Tls13).expect_err("swapped");
        assert!(
            e.to_string().contains("key.pem") && e.to_string().contains("no certificate"),
            "{e}"
        );
        let e = server_config(&g.cert, &g.cert, MinVersion::Tls13).expect_err("swapped");
        assert!(
            e.to_string().contains("cert.pem") && e.to_string().contains("no private key"),
            "{e}"
        );
        // A key that is not the certificate's.
        let other = cert_in(&dir.path().join("other"));
        let e = server_config(&g.cert, &other.key, MinVersion::Tls13).expect_err("mismatch");
        assert!(e.to_string().contains("cert.pem"), "{e}");
        // Generating into the same directory again does not overwrite.
        let e = generate_self_signed(&["x".into()], dir.path()).expect_err("exists");
        assert!(matches!(e, TlsError::Exists(_)), "{e}");
    }

    #[test]
    fn sniffing_tells_tls_from_plaintext_on_the_first_bytes() {
        assert_eq!(sniff(&[0x16, 0x03, 0x01, 0x02, 0x00]), Sniffed::Tls);
        assert_eq!(sniff(&[0x16]), Sniffed::Tls);
        assert_eq!(sniff(&[0x16, 0x03]), Sniffed::Tls);
        assert_eq!(sniff(b"RM\x01\x03"), Sniffed::PlaintextRampart);
        assert_eq!(sniff(b"GET / HTTP/1.1"), Sniffed::Other);
        assert_eq!(sniff(&[0x16, 0x04, 0x00]), Sniffed::Other);
        assert_eq!(sniff(&[]), Sniffed::NeedMore);
    }

    #[test]
    fn handshakes_are_capped_per_source_and_in_total() {
        let g = Arc::new(HandshakeGuard::new(HandshakeLimits {
            timeout: Duration::from_secs(1),
            max_total: 3,
            max_per_source: 2,
        }));
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        let b: IpAddr = "127.0.0.2".parse().expect("ip");
        let a1 = g.start(a).expect("a1");
        let _a2 = g.start(a).expect("a2");
        assert_eq!(g.start(a).expect_err("a3"), HandshakeCap::PerSource);
        let _b1 = g.start(b).expect("b1");
        assert_eq!(g.start(b).expect_err("total"), HandshakeCap::Total);
        drop(a1);
        assert_eq!(g.running(), 2);
        let _a3 = g.start(a).expect("a place came back");
    }

    #[tokio::test]
    async fn a_handshake_past_the_cap_waits_for_a_place_then_gives_up() {
        let g = Arc::new(HandshakeGuard::new(HandshakeLimits {
            timeout: Duration::from_secs(1),
            max_total: 8,
            max_per_source: 2,
        }));
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        let a1 = g.start(a).expect("a1");
        let _a2 = g.start(a).expect("a2");
        // The third waits, and gets the first place given back.
        let waiter = {
            let g = Arc::clone(&g);
            tokio::spawn(async move { g.acquire(a, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "it waits while the cap is full");
        drop(a1);
        let a3 = waiter.await.expect("join").expect("a place came free");
        assert_eq!(g.running(), 2);
        // With nothing given back in time, the cap is the answer.
        let started = std::time::Instant::now();
        assert_eq!(
            g.acquire(a, Duration::from_millis(50))
                .await
                .expect_err("full"),
            HandshakeCap::PerSource
        );
        assert!(started.elapsed() >= Duration::from_millis(50));
        drop(a3);
        drop(_a2);
        // An idle source is forgotten.
        assert_eq!(g.running(), 0);
        assert_eq!(g.sources(), 0);

        // A source refused at the total cap, with no handshake of its own, leaves nothing.
        let full: Vec<_> = (1..=8u8)
            .map(|i| g.start(IpAddr::from([127, 0, 1, i])).expect("a place"))
            .collect();
        assert_eq!(
            g.start("127.0.2.1".parse().expect("ip"))
                .expect_err("total"),
            HandshakeCap::Total
        );
        assert_eq!(
            g.acquire("127.0.2.2".parse().expect("ip"), Duration::from_millis(20))
                .await
                .expect_err("total"),
            HandshakeCap::Total
        );
        assert_eq!(g.sources(), 8);
        drop(full);
        assert_eq!(g.sources(), 0);
    }

    #[test]
    fn versions_parse() {
        assert_eq!(MinVersion::parse("1.3").expect("1.3"), MinVersion::Tls13);
        assert_eq!(MinVersion::parse("1.2").expect("1.2"), MinVersion::Tls12);
        assert!(MinVersion::parse("1.1").is_err());
    }
}
