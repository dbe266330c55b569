//! The rule baseline `model eval --train FILE` puts next to the model: the obvious signals
//! a hand-written detector would check, with their thresholds tuned on a training file only.
//!
//! A window is flagged when any of these holds:
//!
//! - a decode or header error, or a frame over its cap (`decode_errors`, `header_errors`,
//!   `frame_too_large` above 0);
//! - a permission denial, a timeout of any kind, a rate-limit hit or a refusal at accept;
//! - `auth_failures` at least N;
//! - `slow_frame_ms_max` (a request frame still arriving past the grace) over T ms;
//! - `connections_opened` over C.
//!
//! N, T and C are chosen on the training rows (labels included: a baseline tuned with labels
//! is a stronger opponent for the unsupervised model) for the best F1 with a false-positive
//! rate at most the target, or the lowest false-positive rate if no choice meets it.

use serde::Serialize;

use super::{Dataset, DetectError};

/// Features whose mere presence flags a window.
pub const ANY_OF: [&str; 9] = [
    "decode_errors",
    "header_errors",
    "frame_too_large",
    "permission_denials",
    "timeouts",
    "frame_timeouts",
    "write_timeouts",
    "rate_limit_hits",
    "refused",
];

/// Candidate N for `auth_failures >= N`.
const AUTH_FAILURES: [f64; 8] = [1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 13.0, f64::INFINITY];
/// Candidate T for `slow_frame_ms_max > T`.
const SLOW_FRAME_MS: [f64; 9] = [
    0.0,
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_000.0,
    5_000.0,
    10_000.0,
    f64::INFINITY,
];
/// Candidate C for `connections_opened > C`.
const CONNECTIONS: [f64; 10] = [
    1.0,
    2.0,
    3.0,
    5.0,
    8.0,
    13.0,
    20.0,
    50.0,
    100.0,
    f64::INFINITY,
];

/// The tuned thresholds (infinite: the rule is off).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RuleThresholds {
    /// N: flagged at `auth_failures >= N`.
    pub auth_failures_min: f64,
    /// T: flagged at `slow_frame_ms_max > T`.
    pub slow_frame_ms_over: f64,
    /// C: flagged at `connections_opened > C`.
    pub connections_opened_over: f64,
}

/// The rule baseline, ready to flag rows of data with the same features.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleBaseline {
    /// The thresholds.
    pub thresholds: RuleThresholds,
    any: Vec<usize>,
    auth: Option<usize>,
    slow_frame: Option<usize>,
    conns: Option<usize>,
}

fn column(data: &Dataset, name: &str) -> Option<usize> {
    data.feature_index(name)
}

impl RuleBaseline {
    fn columns(data: &Dataset, thresholds: RuleThresholds) -> RuleBaseline {
        RuleBaseline {
            thresholds,
            any: ANY_OF.iter().filter_map(|f| column(data, f)).collect(),
            auth: column(data, "auth_failures"),
            slow_frame: column(data, "slow_frame_ms_max"),
            conns: column(data, "connections_opened"),
        }
    }

    /// Tunes N, T and C on `train` (which must be labelled) for the best F1 with a
    /// false-positive rate at most `target_fpr`.
    pub fn fit(train: &Dataset, target_fpr: f64) -> Result<RuleBaseline, DetectError> {
        if !train.is_labelled() {
            return Err(DetectError::NoLabels);
        }
        let base = RuleBaseline::columns(
            train,
            RuleThresholds {
                auth_failures_min: f64::INFINITY,
                slow_frame_ms_over: f64::INFINITY,
                connections_opened_over: f64::INFINITY,
            },
        );
        let positive: Vec<bool> = (0..train.rows()).map(|i| !train.is_benign(i)).collect();
        // (meets the target, f1, -fpr) is maximised; ties keep the first, most permissive
        // rule off, candidate (the lists run from strict to off).
        let mut best: Option<((bool, f64, f64), RuleThresholds)> = None;
        for &n in &AUTH_FAILURES {
            for &t in &SLOW_FRAME_MS {
                for &c in &CONNECTIONS {
                    let th = RuleThresholds {
                        auth_failures_min: n,
                        slow_frame_ms_over: t,
                        connections_opened_over: c,
                    };
                    let r = RuleBaseline {
                        thresholds: th,
                        ..base.clone()
                    };
                    let flags: Vec<f64> = r.flags(train);
                    let m = super::eval::metrics(&flags, &positive, 0.5);
                    let key = (m.fpr <= target_fpr, m.f1, -m.fpr);
                    if best.as_ref().map_or(true, |(k, _)| key > *k) {
                        best = Some((key, th));
                    }
                }
            }
        }
        let thresholds = best.map(|(_, t)| t).unwrap_or(base.thresholds);
        Ok(RuleBaseline { thresholds, ..base })
    }

    /// The same rules over another dataset's columns (found by name).
    pub fn for_data(&self, data: &Dataset) -> RuleBaseline {
        RuleBaseline::columns(data, self.thresholds)
    }

    /// Whether row `values` is flagged.
    pub fn flag(&self, values: &[f64]) -> bool {
        let at = |i: Option<usize>| i.and_then(|i| values.get(i).copied()).unwrap_or(0.0);
        self.any
            .iter()
            .any(|&i| values.get(i).is_some_and(|v| *v > 0.0))
            || at(self.auth) >= self.thresholds.auth_failures_min
            || at(self.slow_frame) > self.thresholds.slow_frame_ms_over
            || at(self.conns) > self.thresholds.connections_opened_over
    }

    /// 1.0 for each flagged row of `data`, 0.0 for the others (scores for the metrics).
    pub fn flags(&self, data: &Dataset) -> Vec<f64> {
        (0..data.rows())
            .map(|i| {
                let row = data.row(i);
                let flagged = match row.as_slice() {
                    Some(v) => self.flag(v),
                    None => self.flag(&row.to_vec()),
                };
                if flagged {
                    1.0
                } else {
                    0.0
                }
            })
            .collect()
    }
}
