//! Embedding the hardened server in another program, with custom limits.
//!
//! Run with `cargo run --example embed`. It starts a server on 127.0.0.1 with tighter limits
//! than the defaults, creates two users, exchanges a message through the client library, and
//! shuts down cleanly. It needs nothing of the command line: `cargo build --no-default-features
//! --example embed` builds it without the `cli` feature.

use std::time::Duration;

use rampart::client::{Client, ClientOptions};
use rampart::config::Config;
use rampart::server::auth::hash_password;
use rampart::server::Server;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Every limit lives in Config; these would normally come from a TOML file.
    let mut config = Config::default();
    config.limits.max_connections = 1_000;
    config.limits.max_connections_per_ip = 32;
    config.limits.max_file_bytes = 64 * 1024 * 1024;
    config.limits.user_quota_bytes = 256 * 1024 * 1024;
    config.timeouts.idle_ms = 30_000;
    config.rates.frames_per_s_per_conn = 500;
    config.check()?;

    let data = tempfile::tempdir()?;
    let server = Server::open(config.clone(), data.path())?;
    for (user, password) in [("ana", "ana-pw"), ("ben", "ben-pw")] {
        server
            .store()
            .add_user(user, &hash_password(&config.auth, password.as_bytes())?)?;
    }
    let handle = server.bind("127.0.0.1:0".parse()?).await?;
    let addr = handle.local_addr().to_string();
    println!("embedded rampart listening on {addr}");

    let opts = ClientOptions::default();
    let mut ana = Client::login(&addr, "ana", b"ana-pw", opts.clone()).await?;
    let id = ana
        .send_message("ben", "hello from an embedded server")
        .await?;
    let mut ben = Client::login(&addr, "ben", b"ben-pw", opts).await?;
    let inbox = ben.inbox().await?;
    println!(
        "ben has {} item(s); item {id} came from {}",
        inbox.len(),
        inbox[0].from
    );

    let metrics = handle.metrics().snapshot();
    println!(
        "connections accepted: {}, items delivered: {}",
        metrics.connections_accepted, metrics.items_delivered
    );
    drop((ana, ben));
    tokio::time::timeout(Duration::from_secs(10), handle.shutdown()).await?;
    Ok(())
}
