//! Password hashing and verification.
//!
//! argon2 is slow on purpose, which makes a login flood a CPU attack. Verification therefore
//! runs on a small bounded pool (`auth.login_workers` threads fed by two bounded queues, the
//! [`Lane`] of logins from sources in good standing for the account first), and only after
//! the per-source login limit and the account's failure backoff admitted it.
//! Unknown users are verified against a dummy hash so that timing does not reveal which
//! names exist. A stored hash carries its own argon2 parameters, so after the settings change
//! a known user would still cost the old parameters while the dummy costs the new ones: the
//! difference tells names apart. The dummy therefore uses the current parameters, and a
//! successful login whose stored hash has other parameters re-hashes the password with the
//! current ones, so every active account converges on the dummy's cost.

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

/// The most argon2 memory a stored hash may ask a verifier for, in 1 KiB blocks: the
/// largest memory cost the configuration accepts. The hashes are the server's own, but a
/// corrupt one must not make it allocate without bound.
const MAX_VERIFY_BLOCKS: usize = crate::config::MAX_ARGON2_MEMORY_KIB as usize;

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

/// Whether `stored` was hashed with exactly the parameters `cfg` now asks for (argon2id,
/// version 0x13, the same memory, passes and lanes).
fn current_parameters(stored: &str, cfg: &AuthConfig) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    Algorithm::try_from(parsed.algorithm) == Ok(Algorithm::Argon2id)
        && parsed.version == Some(Version::V0x13.into())
        && params.m_cost() == cfg.argon2_memory_kib
        && params.t_cost() == cfg.argon2_iterations
        && params.p_cost() == cfg.argon2_parallelism
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The password is right (never for an unknown user).
    pub matches: bool,
    /// For a right password whose stored hash used other argon2 parameters than the current
    /// ones: the password hashed with the current parameters, to replace the stored hash.
    pub rehashed: Option<String>,
}

/// One verification for the pool.
struct Job {
    hash: Arc<str>,
    password: Vec<u8>,
    /// A real user's hash (not the dummy), which may be re-hashed on a match.
    known: bool,
    reply: Answer,
    /// False once the login that queued it is gone (its connection closed): the job is
    /// then skipped, so a guesser that queues logins and hangs up costs no argon2 work.
    wanted: Arc<std::sync::atomic::AtomicBool>,
}

impl Job {
    fn wanted(&self) -> bool {
        self.wanted.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Marks a job unwanted when the verification that queued it is dropped.
struct Unwanted(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Unwanted {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Where a job's result goes: a parked blocking-pool thread, or in a simulation
/// ([`crate::sim`]) a task on the simulation's thread.
enum Answer {
    Thread(std::sync::mpsc::SyncSender<Verified>),
    Sim(tokio::sync::oneshot::Sender<Verified>),
}

impl Answer {
    fn send(self, v: Verified) {
        match self {
            Answer::Thread(tx) => drop(tx.send(v)),
            Answer::Sim(tx) => drop(tx.send(v)),
        }
    }
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
    /// What a simulation's worker tasks wait on instead of `ready`.
    sim_ready: tokio::sync::Notify,
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
        self.0.sim_ready.notify_waiters();
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

/// Runs one verification, and re-hashes on a match if the stored hash's parameters are
/// not the configured ones.
fn run_job(job: &Job, cfg: &AuthConfig, memory: &mut Vec<Block>) -> Verified {
    let matches = verify_in(&job.hash, &job.password, memory);
    // Only after a match: the password is known to be right, and the extra hash costs the
    // user, once, not a guesser.
    let rehashed = (matches && job.known && !current_parameters(&job.hash, cfg))
        .then(|| hash_password(cfg, &job.password).ok())
        .flatten();
    Verified {
        matches: matches && job.known,
        rehashed,
    }
}

impl Verifier {
    /// A pool of `cfg.login_workers` verification threads.
    pub fn new(cfg: &AuthConfig) -> Result<Verifier, AuthError> {
        let dummy = hash_password(cfg, b"rampart dummy password for unknown users")?;
        let queue = Arc::new(Queue::default());
        // Made before the threads: if one cannot start, dropping it lets the others exit.
        let closer = Arc::new(Closer(Arc::clone(&queue)));
        let sim = crate::sim::current();
        for i in 0..cfg.login_workers.max(1) {
            let queue = Arc::clone(&queue);
            let cfg = cfg.clone();
            if let Some(sim) = &sim {
                // In a simulation each worker is a task; the hash runs inline, and the
                // verification's cost is a sleep of virtual time.
                let cost = sim.argon2_cost();
                tokio::spawn(async move {
                    let mut memory = Vec::new();
                    loop {
                        let job = {
                            let mut lanes = queue.lock();
                            match lanes.proven.pop_front().or_else(|| lanes.other.pop_front()) {
                                Some(job) => Some(job),
                                None if lanes.closed => return,
                                None => None,
                            }
                        };
                        match job {
                            Some(job) if !job.wanted() => {}
                            Some(job) => {
                                let v = run_job(&job, &cfg, &mut memory);
                                tokio::time::sleep(cost).await;
                                job.reply.send(v);
                            }
                            None => queue.sim_ready.notified().await,
                        }
                    }
                });
                continue;
            }
            std::thread::Builder::new()
                .name(format!("rampart-argon2-{i}"))
                .spawn(move || {
                    let mut memory = Vec::new();
                    while let Some(job) = queue.next() {
                        if !job.wanted() {
                            continue;
                        }
                        let v = run_job(&job, &cfg, &mut memory);
                        job.reply.send(v);
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
    /// exist (it then never matches). Waits for a worker in `lane`; fails with
    /// [`VerifyError::Busy`] if that lane's queue of waiting logins is full.
    pub async fn verify(
        &self,
        stored: Option<String>,
        password: Vec<u8>,
        lane: Lane,
    ) -> Result<Verified, VerifyError> {
        let known = stored.is_some();
        let hash: Arc<str> = match stored {
            Some(h) => h.into(),
            None => Arc::clone(&self.dummy_hash),
        };
        let wanted = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let _unwanted = Unwanted(Arc::clone(&wanted));
        let sim = crate::sim::active();
        let (reply, answer, sim_answer) = if sim {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Answer::Sim(tx), None, Some(rx))
        } else {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            (Answer::Thread(tx), Some(rx), None)
        };
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
                known,
                reply,
                wanted: Arc::clone(&wanted),
            });
        }
        self.queue.ready.notify_one();
        self.queue.sim_ready.notify_one();
        // Waiting on the blocking pool (a parked thread, no allocation) rather than on an
        // async channel: tokio then knows work is in progress, so a runtime with a paused
        // clock (tests, the session fuzz target) does not jump its timers while argon2 runs.
        let refused = Verified {
            matches: false,
            rehashed: None,
        };
        if let Some(rx) = sim_answer {
            return Ok(rx.await.unwrap_or(refused));
        }
        let Some(answer) = answer else {
            return Ok(refused);
        };
        let verified = tokio::task::spawn_blocking(move || answer.recv().unwrap_or(refused))
            .await
            .unwrap_or(Verified {
                matches: false,
                rehashed: None,
            });
        Ok(verified)
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
        let right = |rehashed| {
            Ok(Verified {
                matches: true,
                rehashed,
            })
        };
        let wrong = Ok(Verified {
            matches: false,
            rehashed: None,
        });
        assert_eq!(
            pool.verify(Some(hash.clone()), b"pw".to_vec(), Lane::Proven)
                .await,
            right(None)
        );
        assert_eq!(
            pool.verify(Some(hash), b"no".to_vec(), Lane::Other).await,
            wrong
        );
        let dummy_pw = b"rampart dummy password for unknown users".to_vec();
        assert_eq!(pool.verify(None, dummy_pw, Lane::Other).await, wrong);
        Ok(())
    }

    #[tokio::test]
    async fn a_right_password_under_old_parameters_is_rehashed_with_the_current_ones(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let old = AuthConfig {
            argon2_memory_kib: 256,
            argon2_iterations: 2,
            ..AuthConfig::default()
        };
        let cfg = cheap();
        let pool = Verifier::new(&cfg)?;
        let stale = hash_password(&old, b"pw")?;
        assert!(!current_parameters(&stale, &cfg));
        // A wrong password changes nothing: a guesser must not get to rewrite the hash.
        let wrong = pool
            .verify(Some(stale.clone()), b"no".to_vec(), Lane::Other)
            .await;
        assert_eq!(wrong.map(|v| v.rehashed), Ok(None));
        let right = pool
            .verify(Some(stale), b"pw".to_vec(), Lane::Proven)
            .await
            .map_err(|e| format!("{e:?}"))?;
        assert!(right.matches);
        let fresh = right.rehashed.ok_or("no rehash for a stale hash")?;
        assert!(current_parameters(&fresh, &cfg), "{fresh}");
        assert!(current_parameters(&pool.dummy_hash, &cfg));
        assert!(verify_password(&fresh, b"pw"));
        Ok(())
    }

    fn job(tag: &str) -> Job {
        let (reply, _) = std::sync::mpsc::sync_channel(1);
        Job {
            hash: tag.into(),
            password: Vec::new(),
            known: false,
            reply: Answer::Thread(reply),
            wanted: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }

    #[test]
    fn a_login_whose_caller_is_gone_costs_no_verification() -> Result<(), Box<dyn std::error::Error>>
    {
        let opts = crate::sim::SimOptions::default();
        let took = crate::sim::run(opts, || async {
            let cfg = AuthConfig {
                login_workers: 1,
                ..cheap()
            };
            let v = Verifier::new(&cfg)?;
            let started = tokio::time::Instant::now();
            let verify = |pw: &'static [u8]| {
                let v = v.clone();
                tokio::spawn(async move { v.verify(None, pw.to_vec(), Lane::Other).await })
            };
            let first = verify(b"first");
            let gone: Vec<_> = (0..5).map(|_| verify(b"gone")).collect();
            // Every task queues its job before this one goes on.
            tokio::task::yield_now().await;
            gone.iter().for_each(|t| t.abort());
            let last = v.verify(None, b"last".to_vec(), Lane::Other).await;
            assert!(last.is_ok() && first.await.is_ok_and(|r| r.is_ok()));
            Ok::<_, AuthError>(started.elapsed())
        })??;
        // The first and the last each held the worker; the five abandoned ones did not.
        assert_eq!(took, opts.argon2 * 2);
        Ok(())
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
