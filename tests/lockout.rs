//! Distributed password guessing against one account must slow the guessers without locking
//! the account's owner out or getting the owner's address blocked.
//!
//! Each test starts a real server on 127.0.0.1:0 with the firewall on, as in production, and
//! sends every login from its own 127.0.x.y address, so the per-source limits and scores
//! of guessers and owner are apart exactly as on a network.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use rampart::client::{Client, ClientError, ClientOptions};
use rampart::config::Config;
use rampart::protocol::ErrorCode;
use rampart::server::auth::hash_password;

use common::{
    firewall_config, refused, start_server_with, test_config, within, TestError, TestResult,
    TestServer,
};

/// The account under attack and its password.
const VICTIM: (&str, &str) = ("victim", "victim-correct-horse");

/// 127.0.a.b, a loopback source address of its own.
fn ip(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, a, b))
}

fn from(source: IpAddr) -> ClientOptions {
    ClientOptions::default().source(source)
}

/// A server with `config` and the test users plus [`VICTIM`].
async fn server_with_victim(config: Config) -> Result<TestServer, TestError> {
    let server = start_server_with(config.clone()).await;
    let hash = hash_password(&config.auth, VICTIM.1.as_bytes())?;
    server.handle.server().store().add_user(VICTIM.0, &hash)?;
    Ok(server)
}

/// One guesser: one connection from `source`, `guesses` wrong passwords for the victim.
/// Returns the error code of each answer, stopping early if the server cuts the connection
/// (a firewall block); a guess never gets in.
async fn guess(
    server: &TestServer,
    source: IpAddr,
    guesses: u32,
) -> Result<Vec<ErrorCode>, TestError> {
    let mut codes = Vec::new();
    let Ok(mut c) = Client::connect(server.target(), from(source)).await else {
        return Ok(codes);
    };
    for n in 0..guesses {
        match c.auth(VICTIM.0, format!("guess-{n}").as_bytes()).await {
            Err(ClientError::Server { code, .. }) => codes.push(code),
            Ok(()) => return Err("a wrong password logged in".into()),
            Err(_) => break,
        }
    }
    Ok(codes)
}

/// Asserts that `source` is not blocked and has no firewall score at all.
fn clean(server: &TestServer, source: IpAddr) -> TestResult {
    assert!(
        !server.handle.guard().is_blocked(source),
        "{source} blocked"
    );
    let score = server.handle.firewall().score(source);
    assert!(score == 0.0, "{source} has a firewall score of {score}");
    Ok(())
}

/// The outside red team's sequence, with default settings: four addresses try three wrong
/// passwords each, then the real victim logs in from a fifth, clean address. It used to get
/// `rate_limited` on the first try, and that address was blocked for 300 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_guessing_does_not_lock_out_the_real_user() -> TestResult {
    within(async {
        let server = server_with_victim(firewall_config()).await?;
        for a in 1..=4 {
            let codes = guess(&server, ip(20, a), 3).await?;
            assert!(
                codes
                    .iter()
                    .all(|c| matches!(c, ErrorCode::AuthFailed | ErrorCode::RateLimited)),
                "{codes:?}"
            );
        }
        let owner = ip(20, 5);
        // The right password from a clean address gets in at once, twice in a row (a script
        // running the command line client once per command logs in each time).
        for n in 0..2 {
            let mut victim =
                Client::login(server.target(), VICTIM.0, VICTIM.1.as_bytes(), from(owner))
                    .await
                    .map_err(|e| format!("login {n} of the real victim refused: {e}"))?;
            victim.ping().await?;
            victim.bye().await?;
        }
        clean(&server, owner)
    })
    .await
}

/// A source whose login is refused by the account's failure backoff is not scored for the
/// refusal: only its own failures count against it, however often it is refused. (A source
/// is held back only once its own failures are as many as the firewall blocks for; here
/// they come far enough apart to decay below the threshold, as a slow typist's would.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_wide_refusals_never_block_the_refused_source() -> TestResult {
    within(async {
        let mut cfg = firewall_config();
        // One failure a minute after the burst: the backoff cannot end during the test.
        cfg.rates.logins_per_min_per_user = 1;
        // Two failures reach the threshold, and a score halves every second.
        cfg.firewall.weight_auth_failed = cfg.firewall.threshold / 2;
        cfg.firewall.half_life_s = 1;
        let server = server_with_victim(cfg).await?;
        for a in 1..=5 {
            assert_eq!(guess(&server, ip(21, a), 1).await?, [ErrorCode::AuthFailed]);
        }
        // A new address mistypes twice, 1.5 s apart (it is verified both times: it had
        // fewer failures than the firewall blocks for), then keeps trying and is held back
        // by the account's backoff.
        let typo = ip(21, 10);
        let mut c = Client::connect(server.target(), from(typo)).await?;
        refused(c.auth(VICTIM.0, b"wrong").await, ErrorCode::AuthFailed)?;
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        refused(c.auth(VICTIM.0, b"wronger").await, ErrorCode::AuthFailed)?;
        let own = server.handle.firewall().score(typo);
        for _ in 0..6 {
            let message = refused(
                c.auth(VICTIM.0, VICTIM.1.as_bytes()).await,
                ErrorCode::RateLimited,
            )?;
            assert!(message.contains("login_rate_user"), "{message}");
        }
        assert!(!server.handle.guard().is_blocked(typo));
        let score = server.handle.firewall().score(typo);
        assert!(
            score <= own,
            "score {score}: more than its own failures left ({own})"
        );
        // Everyone else still gets in: another clean address, and the other users.
        let mut victim = Client::login(
            server.target(),
            VICTIM.0,
            VICTIM.1.as_bytes(),
            from(ip(21, 11)),
        )
        .await?;
        victim.ping().await?;
        clean(&server, ip(21, 11))
    })
    .await
}

/// An address the owner logged in from recently is in good standing: during an attack, its
/// typo is answered (`auth_failed`, not a refusal) and the right password after it gets in.
/// An address that failed and never logged in is held back meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proven_address_gets_in_after_its_own_typo_during_an_attack() -> TestResult {
    within(async {
        // The firewall off, so that only the backoff can hold anyone back; two failures of
        // its own (what the firewall would block for) hold a source back.
        let mut cfg = test_config();
        cfg.rates.logins_per_min_per_user = 1;
        cfg.firewall.weight_auth_failed = cfg.firewall.threshold / 2;
        let server = server_with_victim(cfg).await?;
        let home = ip(22, 1);
        let victim =
            Client::login(server.target(), VICTIM.0, VICTIM.1.as_bytes(), from(home)).await?;
        victim.bye().await?;
        for a in 2..=7 {
            guess(&server, ip(22, a), 2).await?;
        }
        // A guesser that failed twice is held back.
        let message = refused(
            Client::login(server.target(), VICTIM.0, b"guess-x", from(ip(22, 2))).await,
            ErrorCode::RateLimited,
        )?;
        assert!(message.contains("login_rate_user"), "{message}");
        let mut c = Client::connect(server.target(), from(home)).await?;
        refused(c.auth(VICTIM.0, b"typo").await, ErrorCode::AuthFailed)?;
        c.auth(VICTIM.0, VICTIM.1.as_bytes()).await?;
        c.ping().await?;
        assert!(!server.handle.guard().is_blocked(home));
        Ok(())
    })
    .await
}

/// A script that runs the command-line client once per command keeps logging in while the
/// server's database is down. Every login is answered `internal` (the server could not
/// look the user up), and none may count against the script's login allowance: once the
/// database is back its next login gets in, and its address was never scored. It used to
/// keep each attempt as a failure, so the script hit `login_rate_ip`, was scored for it and
/// blocked for 300 s by the outage of the server's own database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_during_a_database_outage_cost_the_client_nothing() -> TestResult {
    within(async {
        use rampart::store::fault::{DiskFault, DiskFaults, FaultyStore};
        use std::sync::Arc;
        let config = firewall_config();
        let faults = Arc::new(DiskFaults::default());
        let switch = Arc::clone(&faults);
        let dir = tempfile::tempdir()?;
        let opened =
            rampart::server::Server::open_layered(config.clone(), dir.path(), None, |inner| {
                Arc::new(FaultyStore::new(inner, switch))
            })?;
        common::add_users(&*opened.store(), &config);
        let handle = opened.bind("127.0.0.1:0".parse()?).await?;
        let server = TestServer {
            addr: handle.local_addr(),
            handle,
            dir,
        };
        let script = ip(8, 1);
        faults.set(DiskFault::Unreachable);
        // Twice the default burst of logins from one address.
        let attempts = 2 * config.rates.logins_burst_per_ip;
        for n in 0..attempts {
            let login = Client::login(server.target(), "alice", b"alice-pw", from(script)).await;
            refused(login, ErrorCode::Internal)
                .map_err(|e| format!("attempt {n} during the outage: {e}"))?;
        }
        faults.set(DiskFault::Healthy);
        let mut alice = Client::login(server.target(), "alice", b"alice-pw", from(script)).await?;
        alice.ping().await?;
        clean(&server, script)
    })
    .await
}
