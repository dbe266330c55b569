//! rampart: a test-bench for server robustness, built around a real, hardened messaging server.
//!
//! Data flows through the modules in this order:
//!
//! - [`protocol`]: frames on the wire, their limits, pure incremental encode/decode (no IO).
//! - [`guard`]: admission: connection caps, rate limiters, the IP blocklist.
//! - [`server`]: accept loop, per-connection budgets and timeouts, session state machine, handlers.
//! - [`store`]: persistence behind a trait; SQLite plus fsynced blob files is the embedded default.
//! - [`client`]: the well-behaved client library used by the CLI and the tests.
//! - [`activity`]: every connection event, recorded in batches; features per source window.
//! - [`detect`]: the clustering model: trained from feature CSVs, scores windows live, evaluated.
//! - [`firewall`]: turns rule signals (frame errors, limit hits, auth failures) into blocks.
//! - [`attack`]: the attacker clients that scenarios run against the server.
//! - [`scenario`]: scenario files, the runner, its measurements and reports.
//! - [`load`]: the load generator behind `rampart load`.
//! - [`config`]: every limit above, read from TOML and checked before the server starts.
//! - [`sim`]: the deterministic simulation: a virtual clock and an in-memory network under
//!   all of the above, on one thread.
//!
//! Lower layers never import higher ones: `protocol` imports nothing of rampart, `store` and
//! `guard` import only `protocol` and `config`, `server` imports everything below it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod activity;
pub mod attack;
pub mod client;
pub mod config;
pub mod detect;
pub mod firewall;
#[cfg(feature = "postgres")]
pub mod fleet;
pub mod guard;
pub mod load;
pub mod protocol;
pub mod scenario;
pub mod server;
pub mod sim;
pub mod store;
pub mod tls;
