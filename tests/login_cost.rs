//! Logins cost the same whether or not the user exists, also after the argon2 settings
//! change: a stored hash carries the parameters it was made with, so a successful login
//! moves it to the current ones, which the dummy hash for unknown users uses too.

mod common;

use std::sync::{Arc, Mutex};

use rampart::client::{Client, ClientOptions};
use rampart::config::AuthConfig;
use rampart::protocol::ErrorCode;
use rampart::server::auth::hash_password;
use rampart::store::Store;

use common::TestResult;

/// The `m=..,t=..,p=..` part of a PHC string.
fn parameters(phc: &str) -> String {
    phc.split('$').nth(3).unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_login_moves_a_stale_hash_to_the_current_parameters() -> TestResult {
    common::within(async {
        let config = common::test_config();
        // carol's hash predates a settings change: other memory and pass counts.
        let old = AuthConfig {
            argon2_memory_kib: 128,
            argon2_iterations: 2,
            ..config.auth.clone()
        };
        let stale = hash_password(&old, b"carol-pw")?;
        let held: Arc<Mutex<Option<Arc<dyn Store>>>> = Arc::default();
        let keep = Arc::clone(&held);
        let srv = common::start(config.clone(), move |s| {
            let store = s.store();
            store.add_user("carol", &stale).expect("add carol");
            *keep.lock().expect("lock") = Some(store);
            s
        })
        .await;
        let store = held.lock().expect("lock").clone().ok_or("no store")?;
        let stored = |name: &str| -> Result<String, common::TestError> {
            Ok(store.credentials(name)?.ok_or("no user")?.1)
        };
        let current = parameters(&hash_password(&config.auth, b"x")?);
        assert_eq!(parameters(&stored("carol")?), "m=128,t=2,p=1");

        // A wrong password leaves the stored hash alone.
        let opts = ClientOptions::default();
        let wrong = Client::login(&srv.target(), "carol", b"nope", opts.clone()).await;
        assert_eq!(
            wrong.err().and_then(|e| e.code()),
            Some(ErrorCode::AuthFailed)
        );
        assert_eq!(parameters(&stored("carol")?), "m=128,t=2,p=1");

        // The right one re-hashes it with the current parameters, and still works after.
        let c = Client::login(&srv.target(), "carol", b"carol-pw", opts.clone()).await?;
        c.bye().await?;
        assert_eq!(parameters(&stored("carol")?), current);
        let c = Client::login(&srv.target(), "carol", b"carol-pw", opts).await?;
        c.bye().await?;
        Ok(())
    })
    .await
}
