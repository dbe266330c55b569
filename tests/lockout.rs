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
