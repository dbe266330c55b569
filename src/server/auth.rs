//! Password hashing and verification.
//!
//! argon2 is slow on purpose, which makes a login flood a CPU attack. Verification therefore
//! runs on a small bounded pool (a semaphore of `auth.login_workers` permits in front of
//! `spawn_blocking`), and only after the per-source and per-user login limits admitted it.
//! Unknown users are verified against a dummy hash so that timing does not reveal which
//! names exist.

use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::config::AuthConfig;

/// Errors from hashing.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The argon2 parameters in the configuration are invalid.
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    /// Hashing failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
}

fn argon2(cfg: &AuthConfig) -> Result<Argon2<'static>, AuthError> {
    let params = Params::new(
        cfg.argon2_memory_kib,
        cfg.argon2_iterations,
        cfg.argon2_parallelism,
        None,
    )
    .map_err(|e| AuthError::Params(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password into a PHC string (`$argon2id$...`) with a fresh random salt.
pub fn hash_password(cfg: &AuthConfig, password: &[u8]) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2(cfg)?
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Checks a password against a stored PHC string. A malformed stored hash never matches.
pub fn verify_password(stored: &str, password: &[u8]) -> bool {
    match PasswordHash::new(stored) {
        // The parameters come from the stored hash itself.
        Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
        Err(_) => false,
    }
}

/// The bounded verification pool.
#[derive(Debug, Clone)]
pub struct Verifier {
    permits: Arc<Semaphore>,
    dummy_hash: Arc<str>,
}

impl Verifier {
    /// A pool of `cfg.login_workers` concurrent verifications.
    pub fn new(cfg: &AuthConfig) -> Result<Verifier, AuthError> {
        let dummy = hash_password(cfg, b"rampart dummy password for unknown users")?;
        Ok(Verifier {
            permits: Arc::new(Semaphore::new(cfg.login_workers.max(1) as usize)),
            dummy_hash: dummy.into(),
        })
    }

    /// Verifies `password` against `stored`, or against the dummy hash when the user does not
    /// exist (the answer is then always false). Waits for a pool permit first.
    pub async fn verify(&self, stored: Option<String>, password: Vec<u8>) -> bool {
        let Ok(_permit) = self.permits.clone().acquire_owned().await else {
            return false;
        };
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let ok = tokio::task::spawn_blocking(move || verify_password(&hash, &password))
            .await
            .unwrap_or(false);
        ok && known
    }
}
