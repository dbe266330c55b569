//! Shared code of rampart's fuzz targets.
//!
//! - [`alloc`]: a counting global allocator, so decoder targets can bound what a declared
//!   length makes the decoders allocate.
//! - [`checks`]: pure invariant checks over bytes; `tests/fuzz_regressions.rs` includes the
//!   same file, so `cargo test` replays crashes and the seed corpus through them.
//! - [`arb`]: `arbitrary` builders for requests and replies within limits.
//! - [`session`]: one real server and store, driven over an in-memory pipe, with checks on
//!   every reply (no panics or hangs, well-formed replies, no leaked secrets, limits hold).
//!
//! One target per file under `fuzz_targets/`; docs/FUZZING.md says how to run them.

pub mod alloc;
pub mod arb;
pub mod checks;
pub mod session;
