//! Training hyperparameters: [`TrainSpec`] as given (CLI flags, a file), checked into
//! [`TrainParams`], the only thing [`train`](fn@super::train) accepts, and the limits they are
//! held to.
//!
//! This is the lowest layer of training: the model file stores the spec it was trained with,
//! so [`model`](super::model) imports this module and this module imports no other part of
//! detection (linfa keeps its `hyperparams.rs` apart for the same reason).

use serde::{Deserialize, Serialize};

/// Most clusters or mixture components a model may have: the scorer keeps one running sum
/// per cluster on the stack.
pub const MAX_K: usize = 32;

/// Most candidate models one training may try ([`TrainSpec::candidates`]).
pub const MAX_CANDIDATES: usize = 256;

/// Most features a model may have: the mixture scorer keeps the scaled vector on the stack.
pub const MAX_FEATURES: usize = 256;

/// The clustering algorithm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algo {
    /// k-means; score = distance to the nearest centroid in scaled space, each feature
    /// divided by that cluster's spread of it and the whole by the cluster's radius.
    #[default]
    Kmeans,
    /// Gaussian mixture (full covariances); score = negative log-likelihood above its
    /// minimum.
    Gmm,
}

impl Algo {
    /// The name used on the command line and in files.
    pub fn as_str(self) -> &'static str {
        match self {
            Algo::Kmeans => "kmeans",
            Algo::Gmm => "gmm",
        }
    }
}

impl std::fmt::Display for Algo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Algo {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kmeans" => Ok(Algo::Kmeans),
            "gmm" => Ok(Algo::Gmm),
            _ => Err(format!("unknown algorithm `{s}`: expected kmeans or gmm")),
        }
    }
}

/// Why hyperparameters were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    /// `k` is 0 or above [`MAX_K`].
    #[error("k must be between 1 and {max}, got {k}")]
    K {
        /// The value given.
        k: usize,
        /// [`MAX_K`].
        max: usize,
    },
    /// More clusters than fit rows.
    #[error("k = {k} needs at least {k} fit rows, the data has {rows}")]
    KAboveRows {
        /// Clusters asked for.
        k: usize,
        /// Fit rows available.
        rows: usize,
    },
    /// `n_init` is 0.
    #[error("n_init must be at least 1")]
    NInit,
    /// `max_iterations` is 0.
    #[error("max_iterations must be at least 1")]
    MaxIterations,
    /// A positive finite number was required.
    #[error("{name} must be a positive finite number, got {value}")]
    NotPositive {
        /// Parameter name.
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// A fraction was outside its range.
    #[error("{name} must be in {range}, got {value}")]
    OutOfRange {
        /// Parameter name.
        name: &'static str,
        /// The allowed range, as text.
        range: &'static str,
        /// The value given.
        value: f64,
    },
    /// `candidates` is 0 or above [`MAX_CANDIDATES`].
    #[error("candidates must be 1 to {MAX_CANDIDATES}, got {0}")]
    Candidates(usize),
    /// Too many features for the scorer.
    #[error("at most {MAX_FEATURES} features are supported, the data has {0}")]
    Features(usize),
}

/// Training hyperparameters as given (CLI flags, a file): unchecked. [`TrainSpec::check`]
/// turns them into [`TrainParams`], the only thing [`train`](fn@super::train) accepts. Builder methods are
/// named after the quantity they set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSpec {
    algo: Algo,
    k: usize,
    seed: u64,
    /// Left out of files when 1, so that a model trained without a choice is written as
    /// before `candidates` existed.
    #[serde(skip_serializing_if = "is_one")]
    candidates: usize,
    n_init: usize,
    max_iterations: u64,
    tolerance: f64,
    normalize: bool,
    cluster_min_spread: f64,
    spread_quantile: f64,
    min_scale: f64,
    quantile: f64,
    margin: f64,
    target_fpr: f64,
    calibration_fraction: f64,
    benign_only: bool,
    gmm_reg_covariance: f64,
    gmm_tolerance: f64,
    gmm_max_rows: usize,
}

impl Default for TrainSpec {
    fn default() -> TrainSpec {
        TrainSpec {
            algo: Algo::Kmeans,
            k: 16,
            seed: 42,
            candidates: 1,
            n_init: 1,
            max_iterations: 300,
            tolerance: 1e-4,
            normalize: true,
            cluster_min_spread: 0.5,
            spread_quantile: 0.999,
            min_scale: 0.1,
            quantile: 0.995,
            margin: 1.1,
            target_fpr: 0.01,
            calibration_fraction: 0.2,
            benign_only: true,
            gmm_reg_covariance: 1e-3,
            gmm_tolerance: 1e-3,
            gmm_max_rows: 50_000,
        }
    }
}

macro_rules! setters {
    ($( $(#[$doc:meta])* $name:ident: $ty:ty; )*) => {
        impl TrainSpec {
            $(
                $(#[$doc])*
                pub fn $name(mut self, $name: $ty) -> TrainSpec {
                    self.$name = $name;
                    self
                }
            )*
        }
        impl TrainParams {
            $(
                $(#[$doc])*
                pub fn $name(&self) -> $ty {
                    self.0.$name
                }
            )*
        }
    };
}

setters! {
    /// The algorithm (default k-means).
    algo: Algo;
    /// Clusters or mixture components, 1 to [`MAX_K`] (default 16).
    k: usize;
    /// Seed of every random choice: the split, the sample, the initialization (default 42).
    seed: u64;
    /// Models trained, with seeds `seed`, `seed + 1`, ...; above 1, the one that best meets
    /// the detection targets on the training file's own labelled rows is kept
    /// ([`select`](super::select)), which needs attack rows (default 1: the model of `seed`).
    candidates: usize;
    /// Initializations tried on the sample; the best is refined on all rows (default 1).
    n_init: usize;
    /// Most Lloyd (or EM) iterations (default 300, as scikit-learn).
    max_iterations: u64;
    /// k-means stops when the squared centroid shift is at most this × the mean feature
    /// variance, scikit-learn's rule (default 1e-4).
    tolerance: f64;
    /// Per-cluster normalization (default on): divide each feature's deviation from a
    /// centroid by that cluster's spread of the feature, and each cluster's distances by its
    /// radius. Off: plain Euclidean distance in scaled space.
    normalize: bool;
    /// Smallest per-cluster spread of a feature, in scaled units (default 0.5: a feature that
    /// is constant within a cluster still tolerates small changes, such as one kind fewer).
    cluster_min_spread: f64;
    /// Quantile of a cluster's absolute deviations in a feature that is its spread, in
    /// (0, 1] (default 0.999: a value one benign window in a thousand shows is still normal).
    spread_quantile: f64;
    /// Smallest feature scale after `slog1p` (default 0.1).
    min_scale: f64;
    /// Quantile of fit scores the threshold starts from, in (0, 1] (default 0.995).
    quantile: f64;
    /// Factor on that quantile, at least 1 (default 1.1).
    margin: f64;
    /// Highest false-positive rate allowed on held-out benign rows, in [0, 1) (default 0.01).
    target_fpr: f64;
    /// Fraction of the training rows held out for calibration, in [0, 0.9] (default 0.2).
    calibration_fraction: f64;
    /// Fit on benign rows only (default on); off fits on every row, attacks included.
    benign_only: bool;
    /// Added to the mixture's covariance diagonals (default 1e-3).
    gmm_reg_covariance: f64;
    /// EM stops when the lower bound changes by less than this (default 1e-3).
    gmm_tolerance: f64;
    /// Most rows the mixture is fitted on (a seeded sample; default 50 000).
    gmm_max_rows: usize;
}

impl TrainSpec {
    /// Checks every value; see [`ParamError`]. `k` against the number of rows is checked by
    /// [`train`](fn@super::train), which knows the data.
    pub fn check(self) -> Result<TrainParams, ParamError> {
        let positive = |name, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err(ParamError::NotPositive { name, value })
            }
        };
        if self.k == 0 || self.k > MAX_K {
            return Err(ParamError::K {
                k: self.k,
                max: MAX_K,
            });
        }
        if self.n_init == 0 {
            return Err(ParamError::NInit);
        }
        if self.candidates == 0 || self.candidates > MAX_CANDIDATES {
            return Err(ParamError::Candidates(self.candidates));
        }
        if self.max_iterations == 0 {
            return Err(ParamError::MaxIterations);
        }
        positive("tolerance", self.tolerance)?;
        positive("min_scale", self.min_scale)?;
        positive("cluster_min_spread", self.cluster_min_spread)?;
        positive("gmm_reg_covariance", self.gmm_reg_covariance)?;
        positive("gmm_tolerance", self.gmm_tolerance)?;
        if !(self.quantile > 0.0 && self.quantile <= 1.0) {
            return Err(ParamError::OutOfRange {
                name: "quantile",
                range: "(0, 1]",
                value: self.quantile,
            });
        }
        if !(self.spread_quantile > 0.0 && self.spread_quantile <= 1.0) {
            return Err(ParamError::OutOfRange {
                name: "spread_quantile",
                range: "(0, 1]",
                value: self.spread_quantile,
            });
        }
        if !(self.margin >= 1.0 && self.margin.is_finite()) {
            return Err(ParamError::OutOfRange {
                name: "margin",
                range: "[1, inf)",
                value: self.margin,
            });
        }
        if !(0.0..1.0).contains(&self.target_fpr) {
            return Err(ParamError::OutOfRange {
                name: "target_fpr",
                range: "[0, 1)",
                value: self.target_fpr,
            });
        }
        if !(0.0..=0.9).contains(&self.calibration_fraction) {
            return Err(ParamError::OutOfRange {
                name: "calibration_fraction",
                range: "[0, 0.9]",
                value: self.calibration_fraction,
            });
        }
        if self.gmm_max_rows < self.k {
            return Err(ParamError::KAboveRows {
                k: self.k,
                rows: self.gmm_max_rows,
            });
        }
        Ok(TrainParams(self))
    }
}

/// Whether `n` is 1 (for `skip_serializing_if`).
fn is_one(n: &usize) -> bool {
    *n == 1
}

/// Checked hyperparameters (see [`TrainSpec`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainParams(TrainSpec);

impl TrainParams {
    /// The spec these were checked from.
    pub fn spec(&self) -> &TrainSpec {
        &self.0
    }

    /// The same parameters with another seed (a candidate's).
    pub(crate) fn with_seed(&self, seed: u64) -> TrainParams {
        TrainParams(self.0.clone().seed(seed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyperparameters_are_checked() {
        assert!(matches!(
            TrainSpec::default().k(0).check(),
            Err(ParamError::K { k: 0, .. })
        ));
        assert!(matches!(
            TrainSpec::default().quantile(1.5).check(),
            Err(ParamError::OutOfRange {
                name: "quantile",
                ..
            })
        ));
        assert!(matches!(
            TrainSpec::default().margin(0.5).check(),
            Err(ParamError::OutOfRange { name: "margin", .. })
        ));
        assert!(matches!(
            TrainSpec::default().tolerance(f64::NAN).check(),
            Err(ParamError::NotPositive { .. })
        ));
    }
}
