//! Attack scenarios: scenario files, the runner, its measurements and its reports.
//!
//! A scenario file (`scenarios/*.toml`, schema in docs/SCENARIOS.md) describes a server
//! configuration, well-behaved load, attacks and expectations. The runner starts the server
//! (in-process on 127.0.0.1:0, or uses an external one), drives the legit clients and the
//! attackers concurrently, measures, reads back every acknowledged item, and turns every
//! broken expectation into a failure line.
//!
//! In the order data flows:
//!
//! - [`spec`]: [`ScenarioSpec`] (what serde reads) and [`ScenarioSpec::check`], which makes
//!   the only runnable value, a [`Scenario`]. Errors name the file and the key.
//! - [`legit`]: the open-loop legit clients and the read-back verification.
//! - [`runner`]: one scenario's run, [`run_files`] for a suite, [`RunOptions`], the
//!   [`Progress`] hooks.
//! - [`mod@judge`]: `measure` sums up what a run collected, and [`judge()`] turns every
//!   broken expectation into a failure line; both pure, tested without sockets.
//! - [`metrics`]: operation records, the per-second [`Timeline`], memory sampling and the
//!   [`ScenarioMetrics`] of the JSON contract.
//! - [`report`]: [`SuiteReport`]: summary table, JSON, JUnit XML and self-contained HTML.
//! - [`target`]: where a scenario runs (`[target]`, `--target URL`): the in-process server,
//!   an external rampart, or any TCP server with a legit driver (`resp`, `http`, `line`,
//!   `script`); [`generic`] runs a scenario against the last kind.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use rampart::scenario::{run_files, RunOptions, Silent};
//!
//! let report = run_files(&["scenarios".into()], &RunOptions::default(), &Silent).await?;
//! print!("{}", report.summary_table());
//! report.write_json(std::path::Path::new("report.json"))?;
//! assert!(report.passed);
//! # Ok(())
//! # }
//! ```
//!
//! Invariant: every loop the runner starts ends by itself: legit clients at their stop time
//! plus the latency SLO (and a hard end), attacks when cancelled at the scenario's end (or
//! aborted after a grace period), the read-back and the alive check by deadlines.

pub mod faults;
pub mod fleet;
pub mod generic;
pub mod judge;
pub mod legit;
pub mod metrics;
pub mod report;
pub mod runner;
pub mod spec;
pub mod target;

pub use judge::judge;
pub use metrics::{ScenarioMetrics, Timeline};
pub use report::{ScenarioReport, SimReport, SuiteReport, HOST_FIELDS};
pub use runner::{
    check_sources, check_targets, collect_files, load_all, run_all, run_files, run_scenario,
    LiveStats, Progress, RunError, RunModel, RunOptions, Silent,
};
pub use spec::{
    Expect, ExpectSpec, Legit, LegitSpec, NetworkSpec, Scenario, ScenarioError, ScenarioSpec,
    SimSpec,
};
