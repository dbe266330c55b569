//! Password hashing and verification.
//!
//! argon2 is slow on purpose, which makes a login flood a CPU attack. Verification therefore
//! runs on a small bounded pool (`auth.login_workers` threads fed by two bounded queues, the
//! [`Lane`] of logins from sources in good standing for the account first), and only after
//! the per-source login limit and the account's failure backoff admitted it.
//! Unknown users are verified against a dummy hash so that timing does not reveal which
//! names exist.

use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

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

/// The most argon2 memory a stored hash may ask a verifier for (1 GiB in 1 KiB blocks): the
/// hashes are the server's own, but a corrupt one must not make it allocate without bound.
const MAX_VERIFY_BLOCKS: usize = 1 << 20;

/// Like [`verify_password`], but hashing in `memory`, which is grown as needed and kept, so
/// a verification thread allocates its argon2 memory once instead of once per login.
fn verify_in(stored: &str, password: &[u8], memory: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm),
        Params::try_from(&parsed),
    ) else {
        return false;
    };
    let version = parsed
        .version
        .and_then(|v| Version::try_from(v).ok())
        .unwrap_or(Version::V0x13);
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let blocks = params.block_count();
    if blocks > MAX_VERIFY_BLOCKS {
        return false;
    }
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let expected = expected.as_bytes();
    let mut out = vec![0u8; expected.len()];
    let Some(work) = memory.get_mut(..blocks) else {
        return false;
    };
    if Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, &mut out, work)
        .is_err()
    {
        return false;
    }
    // Constant time: every byte is compared whatever the earlier ones were.
    out.len() == expected.len()
        && out
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// One verification for the pool.
struct Job {
    hash: Arc<str>,
    password: Vec<u8>,
    reply: std::sync::mpsc::SyncSender<bool>,
}

/// Logins that may wait for a verifier in each lane before new ones are turned away.
const QUEUE: usize = 1024;

/// Which queue a verification waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// A login from a source that logged in to the account recently
    /// ([`crate::guard::Standing::Proven`]): served before the other lane, and with a queue
    /// of its own, so guessers keeping the pool busy delay the account's owner by at most
    /// one verification and never turn them away.
    Proven,
    /// Every other login.
    Other,
}

/// The two queues of waiting verifications, and whether the pool is shutting down.
#[derive(Default)]
struct Lanes {
    proven: std::collections::VecDeque<Job>,
    other: std::collections::VecDeque<Job>,
    closed: bool,
}

/// What the pool's threads share: the lanes, and a condition variable they wait on.
#[derive(Default)]
struct Queue {
    lanes: std::sync::Mutex<Lanes>,
    ready: std::sync::Condvar,
}

impl Queue {
    /// Locks the lanes. A poisoned lock is recovered: pushing and popping leave the queues
    /// valid, and a verification itself runs outside the lock.
    fn lock(&self) -> std::sync::MutexGuard<'_, Lanes> {
        self.lanes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next job, proven lane first, waiting while both are empty; `None` once the pool
    /// is closed and drained.
    fn next(&self) -> Option<Job> {
        let mut lanes = self.lock();
        loop {
            if let Some(job) = lanes.proven.pop_front().or_else(|| lanes.other.pop_front()) {
                return Some(job);
            }
            if lanes.closed {
                return None;
            }
            lanes = self
                .ready
                .wait(lanes)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// Closes the queue when the last [`Verifier`] clone is dropped, so its threads finish the
/// jobs already queued and exit.
struct Closer(Arc<Queue>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.ready.notify_all();
    }
}

/// The bounded verification pool: `auth.login_workers` dedicated threads.
///
/// Dedicated threads, each hashing in one buffer it allocates once, rather than tokio's
/// blocking pool: argon2 needs its whole memory cost (19 MiB by default) per verification,
/// and allocating it per login left freed 19 MiB blocks in many allocator arenas (measured:
/// about 1 GB resident after 64 concurrent logins, 350 MB even on two plain threads). With a
/// reused buffer the pool holds exactly `login_workers` times the memory cost.
#[derive(Clone)]
pub struct Verifier {
    queue: Arc<Queue>,
    /// Shared by every clone; the last one dropped closes the queue.
    _closer: Arc<Closer>,
    dummy_hash: Arc<str>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

/// Why a verification did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// Every worker is busy and the queue is full.
    Busy,
}

impl Verifier {
    /// A pool of `cfg.login_workers` verification threads.
    pub fn new(cfg: &AuthConfig) -> Result<Verifier, AuthError> {
        let dummy = hash_password(cfg, b"rampart dummy password for unknown users")?;
        let queue = Arc::new(Queue::default());
        // Made before the threads: if one cannot start, dropping it lets the others exit.
        let closer = Arc::new(Closer(Arc::clone(&queue)));
        for i in 0..cfg.login_workers.max(1) {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("rampart-argon2-{i}"))
                .spawn(move || {
                    let mut memory = Vec::new();
                    while let Some(job) = queue.next() {
                        let ok = verify_in(&job.hash, &job.password, &mut memory);
                        let _ = job.reply.send(ok);
                    }
                })
                .map_err(|e| AuthError::Hash(format!("cannot start a verification thread: {e}")))?;
        }
        Ok(Verifier {
            queue,
            _closer: closer,
            dummy_hash: dummy.into(),
        })
    }

    /// Verifies `password` against `stored`, or against the dummy hash when the user does not
    /// exist (the answer is then always false). Waits for a worker in `lane`; fails with
    /// [`VerifyError::Busy`] if that lane's queue of waiting logins is full.
    pub async fn verify(
        &self,
        stored: Option<String>,
        password: Vec<u8>,
        lane: Lane,
    ) -> Result<bool, VerifyError> {
        let known = stored.is_some();
        let hash: Arc<str> = match stored {
            Some(h) => h.into(),
            None => Arc::clone(&self.dummy_hash),
        };
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        {
            let mut lanes = self.queue.lock();
            let queue = match lane {
                Lane::Proven => &mut lanes.proven,
                Lane::Other => &mut lanes.other,
            };
            if queue.len() >= QUEUE {
                return Err(VerifyError::Busy);
            }
            queue.push_back(Job {
                hash,
                password,
                reply,
            });
        }
        self.queue.ready.notify_one();
        // Waiting on the blocking pool (a parked thread, no allocation) rather than on an
        // async channel: tokio then knows work is in progress, so a runtime with a paused
        // clock (tests, the session fuzz target) does not jump its timers while argon2 runs.
        let ok = tokio::task::spawn_blocking(move || answer.recv().unwrap_or(false))
            .await
            .unwrap_or(false);
        Ok(ok && known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> AuthConfig {
        AuthConfig {
            argon2_memory_kib: 64,
            argon2_iterations: 1,
            ..AuthConfig::default()
        }
    }

    #[test]
    fn reused_memory_verifies_like_the_library() -> Result<(), AuthError> {
        let hash = hash_password(&cheap(), b"s3cret")?;
        let mut memory = Vec::new();
        for (pw, want) in [(&b"s3cret"[..], true), (b"s3creT", false), (b"", false)] {
            assert_eq!(verify_password(&hash, pw), want);
            assert_eq!(verify_in(&hash, pw, &mut memory), want);
        }
        assert_eq!(
            memory.len(),
            64,
            "one 1 KiB block per KiB of memory cost, kept"
        );
        assert!(!verify_in(
            "$argon2id$v=19$m=99999999,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
            b"x",
            &mut memory
        ));
        assert!(!verify_in("not a hash", b"x", &mut memory));
        Ok(())
    }

    #[tokio::test]
    async fn the_pool_answers_and_unknown_users_never_match() -> Result<(), AuthError> {
        let cfg = cheap();
        let pool = Verifier::new(&cfg)?;
        let hash = hash_password(&cfg, b"pw")?;
        assert_eq!(
            pool.verify(Some(hash.clone()), b"pw".to_vec(), Lane::Proven)
                .await,
            Ok(true)
        );
        assert_eq!(
            pool.verify(Some(hash), b"no".to_vec(), Lane::Other).await,
            Ok(false)
        );
        let dummy_pw = b"rampart dummy password for unknown users".to_vec();
        assert_eq!(pool.verify(None, dummy_pw, Lane::Other).await, Ok(false));
        Ok(())
    }

    fn job(tag: &str) -> Job {
        let (reply, _) = std::sync::mpsc::sync_channel(1);
        Job {
            hash: tag.into(),
            password: Vec::new(),
            reply,
        }
    }

    #[test]
    fn the_proven_lane_goes_first_and_a_closed_queue_drains() {
        let queue = Queue::default();
        {
            let mut lanes = queue.lock();
            lanes.other.extend([job("other 1"), job("other 2")]);
            lanes.proven.push_back(job("proven"));
            lanes.closed = true;
        }
        let order: Vec<String> = std::iter::from_fn(|| queue.next())
            .map(|j| j.hash.to_string())
            .collect();
        assert_eq!(order, ["proven", "other 1", "other 2"]);
    }
}
