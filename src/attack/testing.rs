//! Test support for the attackers: a real server on 127.0.0.1:0 with an attacker account, a
//! victim with a planted canary, and a way to run one attack against it for a short while.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::run::Env;
use super::{run_kind, Attack, AttackContext, AttackReport, AttackSpec, Canary, Observations};
use crate::client::{Client, ClientOptions};
use crate::config::Config;
use crate::server::auth::hash_password;
use crate::server::{Server, ServerHandle};

pub(crate) type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The canary secret planted in every test server.
pub(crate) const SECRET: &str = "CANARY-SECRET-5b1f0e2d";
const VICTIM_PW: &str = "victim-pw-9c41";

/// Evasion slots the test server has accounts for.
pub(crate) const EVASION_SLOTS: usize = 4;

/// A canary with made-up secrets, for tests that need no server.
pub(crate) fn canary() -> Canary {
    Canary {
        secret: "CANARY-7f3a9c".into(),
        victim: "victim".into(),
        victim_password: "hunter2-victim".into(),
        victim_item_ids: vec![1],
    }
}

/// A server for attack tests.
pub(crate) struct Bench {
    pub(crate) handle: ServerHandle,
    _dir: tempfile::TempDir,
    pub(crate) canary: Canary,
    /// Set by [`bench_tls`]: the attackers' TLS configuration.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Defaults with cheap password hashing.
pub(crate) fn config() -> Config {
    let mut c = Config::default();
    c.auth.argon2_memory_kib = 64;
    c.auth.argon2_iterations = 1;
    c
}

/// Starts a server with users mallory, alice, victim and the first [`EVASION_SLOTS`]
/// evasion accounts, and plants the canary: a private
/// message from alice to the victim containing [`SECRET`].
pub(crate) async fn bench(config: Config) -> TestResult<Bench> {
    start(config, false).await
}

/// [`bench`] serving TLS with a fresh self-signed certificate; the attackers connect through
/// TLS.
pub(crate) async fn bench_tls(config: Config) -> TestResult<Bench> {
    start(config, true).await
}

async fn start(mut config: Config, tls: bool) -> TestResult<Bench> {
    let dir = tempfile::tempdir()?;
    let mut opts = ClientOptions::default().source("127.0.0.1".parse()?);
    if tls {
        let cert =
            crate::tls::generate_self_signed(&["127.0.0.1".into()], &dir.path().join("tls"))?;
        config.tls.cert = Some(cert.cert.clone());
        config.tls.key = Some(cert.key);
        opts.tls = Some(crate::client::TlsOptions::new(
            &crate::tls::ClientTrust::Ca(cert.cert),
            "127.0.0.1:0",
            crate::tls::MinVersion::Tls13,
        )?);
    }
    let server = Server::open(config.clone(), dir.path())?;
    for (user, pw) in [
        ("mallory", "mallory-pw"),
        ("alice", "alice-pw"),
        ("victim", VICTIM_PW),
    ] {
        server
            .store()
            .add_user(user, &hash_password(&config.auth, pw.as_bytes())?)?;
    }
    // The evasion attack's own accounts, for its first slots.
    for slot in 0..EVASION_SLOTS {
        let (user, pw) = super::crowd_account(&("mallory".into(), "mallory-pw".into()), slot);
        server
            .store()
            .add_user(&user, &hash_password(&config.auth, pw.as_bytes())?)?;
    }
    let handle = server.bind("127.0.0.1:0".parse()?).await?;
    let mut alice = Client::login(handle.local_addr(), "alice", b"alice-pw", opts).await?;
    let secret_item = alice
        .send_message("victim", &format!("private: {SECRET}"))
        .await?;
    let file_item = alice
        .send_file_bytes("victim", "private.txt", SECRET.as_bytes())
        .await?;
    alice.bye().await?;
    Ok(Bench {
        handle,
        _dir: dir,
        canary: Canary {
            secret: SECRET.into(),
            victim: "victim".into(),
            victim_password: VICTIM_PW.into(),
            victim_item_ids: vec![secret_item, file_item],
        },
        tls: if tls {
            Some(crate::tls::attacker_client_config()?)
        } else {
            None
        },
    })
}

impl Bench {
    /// A context starting now.
    pub(crate) fn context(&self, seed: u64) -> AttackContext {
        AttackContext {
            target: self.handle.local_addr(),
            t0: Instant::now(),
            seed,
            stop: CancellationToken::new(),
            account: ("mallory".into(), "mallory-pw".into()),
            canary: self.canary.clone(),
            observations: Arc::new(Observations::default()),
            tls: self.tls.clone(),
        }
    }

    /// Runs the attack described by `toml` for `secs` seconds through [`super::run`].
    pub(crate) async fn run(&self, toml: &str, secs: f64) -> TestResult<AttackReport> {
        let attack = parse(toml, secs)?;
        Ok(super::run(&attack, self.context(7)).await)
    }

    /// Runs the attack for `secs` seconds and returns the report and the run's state, whose
    /// counts the tests inspect.
    pub(crate) async fn run_env(
        &self,
        toml: &str,
        secs: f64,
    ) -> TestResult<(AttackReport, Arc<Env>)> {
        let attack = parse(toml, secs)?;
        let ctx = self.context(7);
        let env = Arc::new(Env::new(&attack, &ctx));
        let halt = env.halt.clone();
        let stop_at = env.stop_at;
        let timer = tokio::spawn(async move {
            tokio::time::sleep_until(stop_at).await;
            halt.cancel();
        });
        let work = run_kind(Arc::clone(&env), attack.params.clone());
        let halt = env.halt.clone();
        tokio::select! {
            _ = work => {}
            _ = async { halt.cancelled().await; tokio::time::sleep(Duration::from_secs(1)).await } => {}
        }
        timer.abort();
        env.halt.cancel();
        let totals = super::Totals::read(&ctx.observations);
        Ok((env.report(totals), env))
    }

    /// Shuts the server down.
    pub(crate) async fn stop(self) {
        self.handle.shutdown().await;
    }
}

fn parse(toml: &str, secs: f64) -> TestResult<Attack> {
    let spec: AttackSpec = toml::from_str(toml)?;
    Ok(spec.check(secs)?)
}
