//! The faults a simulated run schedules (`[[sim.fault]]`): the in-process server crashes and
//! restarts on the same data directory, its disk fails its fsyncs, fills up or slows down,
//! its activity recorder stalls, some hosts are cut off by a partition, or the wall clock
//! jumps.
//!
//! `run` is one task beside the load. It takes the faults in `at_s` order (the scenario
//! check refuses overlapping ones), waits for each one's time, puts it in force, and for
//! one that lasts, lifts it `duration_s` later, or at once when the load ends: the
//! read-back and the alive check always meet a healthy server. Each fault becomes a
//! [`FaultReport`]; one that could not be carried out (a restart that failed) fails the
//! run.
//!
//! Disk faults go through the store's trait ([`FaultyStore`]), so the server meets them
//! where a real disk would fail it. A crash drops every session task where it stands
//! ([`ServerHandle::crash`]); the restart opens the data directory as `rampart serve`
//! would after a `kill -9`. What a process crash does to the kernel's page cache is not
//! modelled: the real-socket crash tests cover it (docs/SIMULATION.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::round;
use super::spec::{FaultKind, FaultSpec};
use crate::config::Config;
use crate::detect::Model;
use crate::server::{Server, ServerError, ServerHandle};
use crate::store::fault::{DiskFault, DiskFaults, FaultyStore};
use crate::store::StoreError;

/// The in-process server, which a crash takes away and a restart puts back (`None` while
/// it is down).
pub(super) type Slot = Arc<Mutex<Option<ServerHandle>>>;

/// The server in `slot` now, if it is up, through `f`.
pub(super) fn with_server<T>(slot: &Slot, f: impl FnOnce(&ServerHandle) -> T) -> Option<T> {
    slot.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .map(f)
}

/// Longest a restart waits for the crashed server's last task to let go of the data
/// directory's lock.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// How the in-process server is opened, and opened again after a crash.
pub(super) struct Opener {
    /// The server's configuration.
    pub(super) config: Config,
    /// Its data directory.
    pub(super) dir: PathBuf,
    /// The model it scores with.
    pub(super) model: Option<Arc<Model>>,
    /// The switch of the disk faults its store meets.
    pub(super) disk: Arc<DiskFaults>,
}

impl Opener {
    /// Opens the server over a store that fails as [`Opener::disk`] says.
    pub(super) fn open(&self) -> Result<Server, ServerError> {
        let disk = Arc::clone(&self.disk);
        Server::open_layered(
            self.config.clone(),
            &self.dir,
            self.model.clone(),
            |store| Arc::new(FaultyStore::new(store, disk)),
        )
    }
}

/// One fault as it happened.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FaultReport {
    /// `crash`, `fsync-fail`, `disk-full`, `slow-disk`, `recorder-stall`, `partition` or
    /// `clock-jump`.
    pub kind: String,
    /// When it began, seconds into the load.
    pub at_s: f64,
    /// How long it lasted, seconds (0 for a clock jump).
    pub lasted_s: f64,
    /// Writes it failed (disk faults), deliveries it slowed (`slow-disk`), or activity
    /// records shed (`recorder-stall`).
    pub writes_affected: u64,
    /// `crash`: uploads in progress when the server died.
    pub uploads_cut: u64,
    /// Whether it was carried out: false for a restart that failed, or a fault the load
    /// ended before.
    pub done: bool,
    /// What happened, in words.
    pub outcome: String,
}

impl FaultReport {
    /// The failure text for a fault that was not carried out.
    pub fn failure(&self) -> Option<String> {
        (!self.done).then(|| format!("fault {} at {} s: {}", self.kind, self.at_s, self.outcome))
    }
}

/// Carries out `faults` (sorted by `at_s`, not overlapping) on the server in `slot`,
/// starting from `t0`, until they are done or `stop` is cancelled.
pub(super) async fn run(
    faults: Vec<FaultSpec>,
    t0: Instant,
    stop: CancellationToken,
    slot: Slot,
    opener: Arc<Opener>,
    addr: SocketAddr,
) -> Vec<FaultReport> {
    let mut reports = Vec::with_capacity(faults.len());
    for f in faults {
        let mut report = FaultReport {
            kind: f.kind.as_str().to_string(),
            at_s: f.at_s,
            lasted_s: 0.0,
            writes_affected: 0,
            uploads_cut: 0,
            done: false,
            outcome: String::new(),
        };
        let start = t0 + Duration::from_secs_f64(f.at_s);
        if !sleep_or_stop(start, &stop).await {
            report.outcome = "the load ended first".into();
            reports.push(report);
            continue;
        }
        let lasts = Duration::from_secs_f64(f.duration_s);
        match f.kind {
            FaultKind::Crash => crash(&slot, &opener, addr, lasts, &stop, &mut report).await,
            FaultKind::FsyncFail | FaultKind::DiskFull | FaultKind::SlowDisk => {
                let fault = match f.kind {
                    FaultKind::FsyncFail => DiskFault::FsyncFail,
                    FaultKind::DiskFull => DiskFault::Full,
                    _ => DiskFault::Slow(Duration::from_millis(f.delay_ms)),
                };
                let (failed, delayed) = (opener.disk.failed(), opener.disk.delayed());
                opener.disk.set(fault);
                sleep_or_stop(start + lasts, &stop).await;
                opener.disk.set(DiskFault::Healthy);
                report.writes_affected =
                    (opener.disk.failed() - failed) + (opener.disk.delayed() - delayed);
                report.done = true;
                report.outcome = match fault {
                    DiskFault::Slow(d) => {
                        format!("every delivery took {} ms longer", d.as_millis())
                    }
                    DiskFault::FsyncFail => "every write failed as a failed fsync does".into(),
                    DiskFault::Unreachable => {
                        "every call failed: the database could not be reached".into()
                    }
                    _ => "every write was refused: no space left on the device".into(),
                };
            }
            FaultKind::Partition => match (crate::sim::current(), f.hosts()) {
                (Some(ctx), Some(net)) => {
                    ctx.net().change(|c| c.partitioned.push(net));
                    sleep_or_stop(start + lasts, &stop).await;
                    ctx.net().change(|c| c.partitioned.retain(|n| *n != net));
                    report.done = true;
                    report.outcome = format!("{net} was cut off from the server");
                }
                _ => report.outcome = "a partition needs a simulation and its hosts".into(),
            },
            FaultKind::RecorderStall => {
                let recorder = with_server(&slot, |h| h.server().recorder().clone());
                match recorder {
                    Some(recorder) => {
                        let shed = recorder.stats().shed;
                        recorder.stall(lasts);
                        sleep_or_stop(start + lasts, &stop).await;
                        // Lifted early if the load ended first.
                        recorder.stall(Duration::ZERO);
                        report.writes_affected = recorder.stats().shed - shed;
                        report.done = true;
                        report.outcome = "the recorder's writer took nothing from its queue".into();
                    }
                    None => report.outcome = "no server was running".into(),
                }
            }
            FaultKind::ClockJump => {
                if let Some(ctx) = crate::sim::current() {
                    // Checked at parse time: at most a day either way.
                    ctx.jump_clock((f.jump_s * 1000.0) as i64);
                    report.done = true;
                    report.outcome = format!("the wall clock jumped {} s", f.jump_s);
                } else {
                    report.outcome = "a clock jump needs a simulation".into();
                }
            }
        }
        report.lasted_s = round(Instant::now().duration_since(start).as_secs_f64(), 3);
        reports.push(report);
    }
    reports
}

/// Sleeps until `at`; false if `stop` came first.
async fn sleep_or_stop(at: Instant, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep_until(at) => true,
    }
}

/// Crashes the server in `slot`, keeps it down for `down` (or until `stop`), and starts a
/// new one on the same data directory and address.
async fn crash(
    slot: &Slot,
    opener: &Opener,
    addr: SocketAddr,
    down: Duration,
    stop: &CancellationToken,
    report: &mut FaultReport,
) {
    let old = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    let Some(old) = old else {
        report.outcome = "no server was running".into();
        return;
    };
    let crashed_at = Instant::now();
    report.uploads_cut = old
        .metrics()
        .open_uploads
        .load(std::sync::atomic::Ordering::Relaxed);
    old.crash().await;
    sleep_or_stop(crashed_at + down, stop).await;
    match restart(opener, addr).await {
        Ok(handle) => {
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
            report.done = true;
            report.outcome = format!(
                "restarted on the same data directory after {} s down",
                round(crashed_at.elapsed().as_secs_f64(), 3)
            );
        }
        Err(e) => report.outcome = format!("the restart failed: {e:#}"),
    }
}

/// Opens and binds the server again, waiting (at most [`RELEASE_WAIT`]) for the crashed
/// one's last task to release the data directory's lock.
async fn restart(opener: &Opener, addr: SocketAddr) -> anyhow::Result<ServerHandle> {
    let give_up = Instant::now() + RELEASE_WAIT;
    loop {
        match opener.open() {
            Ok(server) => return Ok(server.bind(addr).await?),
            Err(ServerError::Store(StoreError::InUse { .. })) if Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
