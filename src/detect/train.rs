//! Training: checked hyperparameters, the fit, and the threshold.
//!
//! 1. Rows: the benign ones (every row when the data is unlabelled), unless
//!    [`TrainSpec::benign_only`] is off.
//! 2. A seeded shuffle splits them into fit rows and held-out calibration rows
//!    ([`TrainSpec::calibration_fraction`], 20 % by default).
//! 3. `slog1p`, then the robust scaler, fitted on the fit rows.
//! 4. k-means: linfa-clustering's `KMeans` (k-means++, seeded) on a seeded sample of at most
//!    [`INIT_SAMPLE`] rows picks the starting centroids, then Lloyd iterations run over every
//!    fit row with scikit-learn's stopping rule (labels unchanged, or the squared centroid
//!    shift at most `tolerance` × the mean feature variance). linfa's own Lloyd loop walks
//!    ndarray views row by row and costs about 0.3 s per iteration on a million rows, so it
//!    cannot train a million rows in 2 s; the loop here works on flat arrays over fixed
//!    blocks, in parallel, with a result that does not depend on the thread count.
//!    Or a Gaussian mixture: linfa-clustering's `GaussianMixtureModel` on a seeded sample of
//!    at most [`TrainSpec::gmm_max_rows`] rows.
//! 5. Per-cluster normalization (k-means): each cluster's spread of each feature (the
//!    `spread_quantile` of its own fit rows' absolute deviations from the centroid, at least
//!    `cluster_min_spread`), then its radius:
//!    the `quantile` of its own fit rows' spread-normalized distances, at least
//!    [`RADIUS_FLOOR`].
//! 6. Threshold: the `quantile` of the fit rows' scores × `margin`, raised if needed so that
//!    at most `target_fpr` of the held-out benign rows score above it.

use std::time::{Duration, Instant};

use linfa::prelude::*;
use linfa_clustering::{GaussianMixtureModel, KMeans};
use ndarray::{Array2, ArrayView2};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::model::{
    round15, Algo, Baseline, Detector, Model, Schema, TrainingSummary, MAX_FEATURES, MAX_K,
};
use super::scaler::{slog1p, Scaler};
use super::{kernel, par, Dataset, DetectError};

/// Rows of the sample linfa's k-means++ and first Lloyd runs see to choose the starting
/// centroids: enough for k ≤ 32 well-separated behaviours, small enough to cost milliseconds.
pub const INIT_SAMPLE: usize = 16_384;

/// Most rows per cluster its per-feature spreads are estimated from (evenly spaced).
pub const SPREAD_SAMPLE: usize = 32_768;

/// Smallest per-cluster radius, in scaled units: a cluster of identical rows (idle windows)
/// would otherwise have radius 0 and flag any change at all.
pub const RADIUS_FLOOR: f64 = 1.0;

/// Features summed by the rate-threshold baseline (those the data has).
pub const BASELINE_FEATURES: [&str; 3] = ["frames_in", "decode_errors", "refused"];

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
    /// Too many features for the scorer.
    #[error("at most {MAX_FEATURES} features are supported, the data has {0}")]
    Features(usize),
}

/// Training hyperparameters as given (CLI flags, a file): unchecked. [`TrainSpec::check`]
/// turns them into [`TrainParams`], the only thing [`train`] accepts. Builder methods are
/// named after the quantity they set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSpec {
    algo: Algo,
    k: usize,
    seed: u64,
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
            k: 4,
            seed: 42,
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
    /// Clusters or mixture components, 1 to [`MAX_K`] (default 4).
    k: usize;
    /// Seed of every random choice: the split, the sample, the initialization (default 42).
    seed: u64;
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
    /// [`train`], which knows the data.
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

/// Checked hyperparameters (see [`TrainSpec`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainParams(TrainSpec);

impl TrainParams {
    /// The spec these were checked from.
    pub fn spec(&self) -> &TrainSpec {
        &self.0
    }
}

/// How long each training stage took (not stored in the model).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Selecting, splitting, transforming and scaling rows.
    pub prepare: Duration,
    /// Fitting the clusters.
    pub fit: Duration,
    /// Radii, scores and threshold.
    pub calibrate: Duration,
    /// Everything.
    pub total: Duration,
}

/// A trained model and how training went.
#[derive(Debug, Clone)]
pub struct Trained {
    /// The model.
    pub model: Model,
    /// Stage timings.
    pub timings: Timings,
}

/// Trains a model on `data` (see the module docs for the steps).
pub fn train(data: &Dataset, params: &TrainParams) -> Result<Trained, DetectError> {
    let t0 = Instant::now();
    let p = params.spec();
    let d = data.features().len();
    if d > MAX_FEATURES {
        return Err(ParamError::Features(d).into());
    }
    let benign: Vec<usize> = (0..data.rows()).filter(|&i| data.is_benign(i)).collect();
    let mut rows: Vec<usize> = if p.benign_only {
        benign.clone()
    } else {
        (0..data.rows()).collect()
    };
    let mut rng = StdRng::seed_from_u64(p.seed);
    rows.shuffle(&mut rng);
    let n_cal = ((rows.len() as f64) * p.calibration_fraction).round() as usize;
    let n_cal = n_cal.min(rows.len().saturating_sub(p.k));
    let (cal, fit) = rows.split_at_mut(n_cal);
    if fit.len() < p.k || fit.is_empty() {
        return Err(ParamError::KAboveRows {
            k: p.k,
            rows: fit.len(),
        }
        .into());
    }
    // Original order within each part: memory locality, and the fit does not depend on the
    // shuffle beyond which rows were drawn.
    fit.sort_unstable();
    cal.sort_unstable();
    let (cal, fit) = (&*cal, &*fit);

    // Transform and scale the fit rows.
    let x = data.values();
    let mut z = gather_transformed(x.view(), fit);
    let scaler = Scaler::fit(
        ArrayView2::from_shape((fit.len(), d), &z).map_err(shape_err)?,
        p.min_scale,
    );
    scaler.scale_rows(&mut z);
    let prepare = t0.elapsed();

    let t1 = Instant::now();
    let (detector, iterations, converged, inertia) = match p.algo {
        Algo::Kmeans => {
            let km = kmeans(&z, d, p.k, p.n_init, p.max_iterations, p.tolerance, p.seed)?;
            let (det, inertia) = kmeans_detector(&km, &z, d, p, &scaler, x.view(), fit)?;
            (det, Some(km.iterations), km.converged, Some(inertia))
        }
        Algo::Gmm => (gmm(&z, d, p)?, None, true, None),
    };
    let fit_time = t1.elapsed();

    let t2 = Instant::now();
    let schema = Schema {
        version: crate::activity::features::FEATURE_SCHEMA_VERSION,
        features: data.features().to_vec(),
    };
    let all: Vec<usize> = (0..data.rows()).collect();
    let baseline = fit_baseline(data, &all, p.target_fpr);
    let summary = TrainingSummary {
        rows: data.rows(),
        benign_rows: benign.len(),
        fit_rows: fit.len(),
        calibration_rows: cal.len(),
        seed: p.seed,
        window_ms: common_window(data),
        params: p.clone(),
        iterations,
        converged,
        inertia,
        fit_quantile_score: 0.0,
        threshold_rule: String::new(),
        fit_fpr: 0.0,
        calibration_fpr: 0.0,
    };
    drop(z);
    let model = Model::assemble(schema, scaler, detector, 0.0, baseline, summary.clone())?;
    // Scores through the public scorer, exactly as live windows will be scored.
    let fit_scores = score_raw_rows(&model, x.view(), fit);
    let cal_scores = score_raw_rows(&model, x.view(), cal);
    let (threshold, q, rule) =
        choose_threshold(&fit_scores, &cal_scores, p.quantile, p.margin, p.target_fpr);
    let above = |s: &[f64]| {
        if s.is_empty() {
            0.0
        } else {
            s.iter().filter(|&&v| v > threshold).count() as f64 / s.len() as f64
        }
    };
    let summary = TrainingSummary {
        fit_quantile_score: q,
        threshold_rule: rule.into(),
        fit_fpr: above(&fit_scores),
        calibration_fpr: above(&cal_scores),
        ..summary
    };
    let model = model.finish(threshold, summary)?;
    let calibrate = t2.elapsed();
    Ok(Trained {
        model,
        timings: Timings {
            prepare,
            fit: fit_time,
            calibrate,
            total: t0.elapsed(),
        },
    })
}

/// The window length shared by every row, if there is one.
fn common_window(data: &Dataset) -> Option<u64> {
    let first = (data.rows() > 0).then(|| data.window_ms(0))?;
    (1..data.rows())
        .all(|i| data.window_ms(i) == first)
        .then_some(first)
}

fn shape_err(e: ndarray::ShapeError) -> DetectError {
    DetectError::BadModel(format!("inconsistent matrix shape: {e}"))
}

/// `slog1p` of the chosen rows, row-major.
fn gather_transformed(x: ArrayView2<'_, f64>, rows: &[usize]) -> Vec<f64> {
    let d = x.ncols();
    let mut out = vec![0.0; rows.len() * d];
    par::for_rows_mut(&mut out, d, |first, chunk| {
        for (r, o) in chunk.chunks_exact_mut(d).enumerate() {
            for (o, &v) in o.iter_mut().zip(x.row(rows[first + r]).iter()) {
                *o = slog1p(v);
            }
        }
    });
    out
}

/// Scores of raw rows through the public scorer, in order.
pub(crate) fn score_raw_rows(model: &Model, x: ArrayView2<'_, f64>, rows: &[usize]) -> Vec<f64> {
    let mut out = vec![0.0; rows.len()];
    par::for_rows_mut(&mut out, 1, |first, chunk| {
        for (i, o) in chunk.iter_mut().enumerate() {
            let row = x.row(rows[first + i]);
            *o = match row.as_slice() {
                Some(s) => model.score(s),
                None => model.score(&row.to_vec()),
            };
        }
    });
    out
}

/// The threshold, the fit quantile it started from, and the rule that set it.
fn choose_threshold(
    fit: &[f64],
    cal: &[f64],
    quantile: f64,
    margin: f64,
    target_fpr: f64,
) -> (f64, f64, &'static str) {
    let mut f = fit.to_vec();
    let q = par::quantiles(&mut f, &[quantile])[0];
    let mut t = q * margin;
    let mut rule = "quantile_x_margin";
    if !cal.is_empty() {
        // At most `allowed` held-out rows may score strictly above the threshold.
        let allowed = (target_fpr * cal.len() as f64).floor() as usize;
        if allowed < cal.len() {
            let mut c = cal.to_vec();
            c.sort_unstable_by(|a, b| b.total_cmp(a));
            // Just above that row's score: rows equal to the threshold are not flagged, and
            // the margin survives the model file's 15-digit rounding.
            let need = c[allowed] + c[allowed].abs() * 1e-12;
            if need > t {
                t = need;
                rule = "raised_for_calibration_fpr";
            }
        }
    }
    (round15(t), q, rule)
}

/// Chooses the rate-threshold baseline on the training rows (all of them, labels included: a
/// baseline tuned with labels is a stronger opponent for the unsupervised model): with attack
/// rows present, the
/// threshold with the best F1 among those that keep the benign FPR within `target_fpr`;
/// otherwise the lowest threshold that keeps the benign FPR within `target_fpr`.
pub(crate) fn fit_baseline(data: &Dataset, rows: &[usize], target_fpr: f64) -> Option<Baseline> {
    let cols: Vec<(usize, String)> = BASELINE_FEATURES
        .iter()
        .filter_map(|f| data.feature_index(f).map(|j| (j, (*f).to_owned())))
        .collect();
    if cols.is_empty() || rows.is_empty() {
        return None;
    }
    let x = data.values();
    let mut rated: Vec<(f64, bool)> = rows
        .iter()
        .map(|&i| {
            let sum: f64 = cols.iter().map(|(j, _)| x[[i, *j]]).sum();
            let rate = sum * 1000.0 / data.window_ms(i).max(1) as f64;
            (rate, !data.is_benign(i))
        })
        .collect();
    let positives = rated.iter().filter(|r| r.1).count();
    let negatives = rated.len() - positives;
    // Descending rate; predict positive for rate > t. Sweep t down through distinct rates.
    rated.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    let allowed_fp = (target_fpr * negatives as f64).floor() as usize;
    let mut best: Option<(f64, f64)> = None; // (f1, threshold)
    let (mut tp, mut fp) = (0usize, 0usize);
    // Threshold above the maximum: nothing flagged.
    let top = rated.first().map_or(0.0, |r| r.0);
    let mut lowest_ok = top;
    let mut i = 0;
    while i < rated.len() {
        let v = rated[i].0;
        // Flag every row with rate ≥ v, i.e. threshold just below v: the next lower rate.
        while i < rated.len() && rated[i].0 == v {
            if rated[i].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        if fp > allowed_fp {
            break;
        }
        let t = rated.get(i).map_or(f64::NEG_INFINITY, |r| r.0);
        if !t.is_finite() {
            break;
        }
        lowest_ok = t;
        if positives > 0 {
            let f1 = 2.0 * tp as f64 / (2 * tp + fp + (positives - tp)) as f64;
            if best.map_or(true, |(b, _)| f1 > b) {
                best = Some((f1, t));
            }
        }
    }
    let (threshold, chosen_by) = match best {
        Some((_, t)) => (t, "max_f1_within_fpr"),
        None => (lowest_ok, "benign_fpr"),
    };
    Some(Baseline {
        features: cols.into_iter().map(|c| c.1).collect(),
        threshold,
        chosen_by: chosen_by.into(),
    })
}

/// The result of [`kmeans`].
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansFit {
    /// Centroids, row-major `k × d` (empty clusters included).
    pub centroids: Vec<f64>,
    /// Clusters.
    pub k: usize,
    /// Lloyd iterations over all rows.
    pub iterations: u64,
    /// Whether it stopped before `max_iterations`.
    pub converged: bool,
    /// Each row's cluster after the last iteration.
    pub labels: Vec<u32>,
    /// Each row's squared distance to its centroid.
    pub sq_dists: Vec<f64>,
}

/// Partial sums of one block of rows in one Lloyd iteration.
struct Partial {
    sums: Vec<f64>,
    counts: Vec<u64>,
    labels: Vec<u32>,
    sq: Vec<f64>,
    changed: usize,
}

/// k-means on row-major scaled rows: linfa's `KMeans` (k-means++, `n_init` runs, seeded) on a
/// sample of at most [`INIT_SAMPLE`] rows for the starting centroids, then Lloyd iterations
/// over all rows until the labels stop changing, the squared centroid shift is at most
/// `tolerance` × the mean feature variance (scikit-learn's rule), or `max_iterations`.
pub fn kmeans(
    z: &[f64],
    d: usize,
    k: usize,
    n_init: usize,
    max_iterations: u64,
    tolerance: f64,
    seed: u64,
) -> Result<KMeansFit, DetectError> {
    let n = z.len() / d.max(1);
    if k == 0 || k > n || k > MAX_K {
        return Err(ParamError::KAboveRows { k, rows: n }.into());
    }
    let tol = tolerance * mean_variance(z, d);
    let mut centroids = init_centroids(z, d, k, n_init, max_iterations, tol, seed)?;
    let mut labels = vec![u32::MAX; n];
    let mut iterations = 0;
    let mut converged = false;
    while iterations < max_iterations {
        iterations += 1;
        let parts = lloyd_pass(z, d, k, &centroids, &labels);
        let mut sums = vec![0.0; k * d];
        let mut counts = vec![0u64; k];
        let mut changed = 0;
        let mut next = Vec::with_capacity(n);
        for p in parts {
            for (s, v) in sums.iter_mut().zip(&p.sums) {
                *s += v;
            }
            for (c, v) in counts.iter_mut().zip(&p.counts) {
                *c += v;
            }
            changed += p.changed;
            next.extend_from_slice(&p.labels);
        }
        labels = next;
        let mut shift = 0.0;
        for c in 0..k {
            if counts[c] == 0 {
                // An empty cluster keeps its centroid; it is dropped from the model.
                continue;
            }
            let inv = 1.0 / counts[c] as f64;
            for j in 0..d {
                let new = sums[c * d + j] * inv;
                let old = centroids[c * d + j];
                shift += (new - old) * (new - old);
                centroids[c * d + j] = new;
            }
        }
        if changed == 0 {
            converged = true;
            break;
        }
        if shift <= tol {
            converged = true;
            break;
        }
    }
    // Final assignment against the final centroids (scikit-learn does the same).
    let parts = lloyd_pass(z, d, k, &centroids, &labels);
    let mut sq_dists = Vec::with_capacity(n);
    let mut labels = Vec::with_capacity(n);
    for p in parts {
        labels.extend_from_slice(&p.labels);
        sq_dists.extend_from_slice(&p.sq);
    }
    Ok(KMeansFit {
        centroids,
        k,
        iterations,
        converged,
        labels,
        sq_dists,
    })
}

/// One assignment pass: per block, each row's nearest centroid, its squared distance, and the
/// block's per-cluster sums and counts.
fn lloyd_pass(z: &[f64], d: usize, k: usize, centroids: &[f64], old: &[u32]) -> Vec<Partial> {
    let kp = kernel::padded(k);
    let ct = kernel::transpose(centroids, k, d, kp, 0.0);
    let init = kernel::start(k, kp);
    let n = z.len() / d;
    par::map_blocks(n, |range| {
        let mut p = Partial {
            sums: vec![0.0; k * d],
            counts: vec![0; k],
            labels: Vec::with_capacity(range.len()),
            sq: Vec::with_capacity(range.len()),
            changed: 0,
        };
        for (row, &was) in z[range.start * d..range.end * d]
            .chunks_exact(d)
            .zip(&old[range])
        {
            let (best, dist) = kernel::nearest_plain(kp, row, &ct, &init);
            if was != best as u32 {
                p.changed += 1;
            }
            p.labels.push(best as u32);
            p.sq.push(dist);
            p.counts[best] += 1;
            for (s, &x) in p.sums[best * d..(best + 1) * d].iter_mut().zip(row) {
                *s += x;
            }
        }
        p
    })
}

/// Mean over features of each feature's variance (population), computed per block and
/// combined in block order.
fn mean_variance(z: &[f64], d: usize) -> f64 {
    let n = z.len() / d;
    if n == 0 {
        return 0.0;
    }
    let parts = par::map_blocks(n, |range| {
        let mut s = vec![0.0; d];
        let mut s2 = vec![0.0; d];
        for i in range {
            for ((a, b), &x) in s.iter_mut().zip(s2.iter_mut()).zip(&z[i * d..(i + 1) * d]) {
                *a += x;
                *b += x * x;
            }
        }
        (s, s2)
    });
    let mut s = vec![0.0; d];
    let mut s2 = vec![0.0; d];
    for (a, b) in parts {
        s.iter_mut().zip(&a).for_each(|(x, y)| *x += y);
        s2.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
    }
    let nf = n as f64;
    s.iter()
        .zip(&s2)
        .map(|(a, b)| (b / nf - (a / nf) * (a / nf)).max(0.0))
        .sum::<f64>()
        / d as f64
}

/// A seeded sample of at most `max` row indices, in ascending order.
fn sample_rows(n: usize, max: usize, seed: u64) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut idx = rand::seq::index::sample(&mut rng, n, max).into_vec();
    idx.sort_unstable();
    idx
}

fn sample_matrix(z: &[f64], d: usize, rows: &[usize]) -> Result<Array2<f64>, DetectError> {
    let mut flat = Vec::with_capacity(rows.len() * d);
    for &i in rows {
        flat.extend_from_slice(&z[i * d..(i + 1) * d]);
    }
    Array2::from_shape_vec((rows.len(), d), flat).map_err(shape_err)
}

/// Starting centroids from linfa's k-means on a sample.
fn init_centroids(
    z: &[f64],
    d: usize,
    k: usize,
    n_init: usize,
    max_iterations: u64,
    tol: f64,
    seed: u64,
) -> Result<Vec<f64>, DetectError> {
    let n = z.len() / d;
    let sample = sample_matrix(z, d, &sample_rows(n, INIT_SAMPLE, seed))?;
    let fit = KMeans::params_with_rng(k, StdRng::seed_from_u64(seed))
        .n_runs(n_init)
        .max_n_iterations(max_iterations)
        // linfa compares the (unsquared) centroid shift with its tolerance.
        .tolerance(tol.sqrt().max(f64::MIN_POSITIVE))
        .fit(&DatasetBase::from(sample))
        .map_err(|e| DetectError::Fit {
            algo: "kmeans",
            reason: e.to_string(),
        })?;
    Ok(fit.centroids().iter().copied().collect())
}

/// The model's k-means part from a fit: the non-empty clusters, each with its per-feature
/// spread, assignment penalty and radius, and the mean squared distance (inertia per row).
/// `x` and `fit` are the raw rows the fit was made on, for the radii: they are measured with
/// the scorer itself, so that training and live scoring agree exactly.
fn kmeans_detector(
    km: &KMeansFit,
    z: &[f64],
    d: usize,
    p: &TrainSpec,
    scaler: &Scaler,
    x: ArrayView2<'_, f64>,
    fit: &[usize],
) -> Result<(Detector, f64), DetectError> {
    let k = km.k;
    let n = km.labels.len();
    let cent = &km.centroids;
    // Rows of each cluster, in order.
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (i, &l) in km.labels.iter().enumerate() {
        members[l as usize].push(i);
    }
    let kept: Vec<usize> = (0..k).filter(|&c| !members[c].is_empty()).collect();
    // Spread of each feature in each cluster: the `quantile` of the absolute deviations of
    // (at most SPREAD_SAMPLE evenly spaced) member rows from the centroid. A quantile rather
    // than a standard deviation: a feature that benign rows of the cluster use only rarely
    // (one failed login in a hundred windows) gets the spread of that rare value, so it does
    // not dominate every distance, while a value far beyond anything benign still stands out.
    let mut spread: Vec<Vec<f64>> = vec![vec![1.0; d]; kept.len()];
    if p.normalize {
        par::for_each_mut(&mut spread, |ci, out| {
            let rows = &members[kept[ci]];
            let centre = &cent[kept[ci] * d..(kept[ci] + 1) * d];
            let m = rows.len().min(SPREAD_SAMPLE);
            let sample: Vec<usize> = (0..m).map(|i| rows[i * rows.len() / m]).collect();
            let mut dev = vec![0.0; m];
            for (j, o) in out.iter_mut().enumerate() {
                for (v, &i) in dev.iter_mut().zip(&sample) {
                    *v = (z[i * d + j] - centre[j]).abs();
                }
                *o = par::quantiles(&mut dev, &[p.spread_quantile])[0].max(p.cluster_min_spread);
            }
        });
    }
    let penalty: Vec<f64> = kept
        .iter()
        .zip(&spread)
        .map(|(&c, s)| {
            if p.normalize {
                2.0 * s.iter().map(|v| v.ln()).sum::<f64>()
                    - 2.0 * (members[c].len() as f64 / n as f64).ln()
            } else {
                0.0
            }
        })
        .collect();
    let centroids: Vec<Vec<f64>> = kept
        .iter()
        .map(|&c| cent[c * d..(c + 1) * d].to_vec())
        .collect();
    let sizes: Vec<u64> = kept.iter().map(|&c| members[c].len() as u64).collect();
    // Radii: score every fit row with radius 1, then take the `quantile` of the distances of
    // the rows each cluster claims.
    let mut radius = vec![1.0; kept.len()];
    if p.normalize {
        let unit = Model::assemble(
            Schema {
                version: 0,
                features: (0..d).map(|j| j.to_string()).collect(),
            },
            scaler.clone(),
            Detector::Kmeans {
                centroids: centroids.clone(),
                spread: spread.clone(),
                penalty: penalty.clone(),
                radius: radius.clone(),
                sizes: sizes.clone(),
            },
            0.0,
            None,
            empty_summary(p),
        )?;
        let claims = claim_rows(&unit, x, fit);
        let mut per: Vec<Vec<f64>> = vec![Vec::new(); kept.len()];
        for (c, s) in claims {
            per[c].push(s);
        }
        for (r, dists) in radius.iter_mut().zip(per.iter_mut()) {
            if !dists.is_empty() {
                *r = par::quantiles(dists, &[p.quantile])[0].max(RADIUS_FLOOR);
            } else {
                *r = RADIUS_FLOOR;
            }
        }
    }
    let inertia = km.sq_dists.iter().sum::<f64>() / km.sq_dists.len().max(1) as f64;
    Ok((
        Detector::Kmeans {
            centroids,
            spread,
            penalty,
            radius,
            sizes,
        },
        inertia,
    ))
}

/// A summary with nothing in it yet (for intermediate models).
fn empty_summary(p: &TrainSpec) -> TrainingSummary {
    TrainingSummary {
        rows: 0,
        benign_rows: 0,
        fit_rows: 0,
        calibration_rows: 0,
        seed: p.seed,
        window_ms: None,
        params: p.clone(),
        iterations: None,
        converged: false,
        inertia: None,
        fit_quantile_score: 0.0,
        threshold_rule: String::new(),
        fit_fpr: 0.0,
        calibration_fpr: 0.0,
    }
}

/// For each row, the cluster the scorer assigns it to and its score there, in order.
fn claim_rows(model: &Model, x: ArrayView2<'_, f64>, rows: &[usize]) -> Vec<(usize, f64)> {
    let mut out = vec![(0, 0.0); rows.len()];
    par::for_rows_mut(&mut out, 1, |first, chunk| {
        for (i, o) in chunk.iter_mut().enumerate() {
            let row = x.row(rows[first + i]);
            *o = match row.as_slice() {
                Some(s) => model.claim(s),
                None => model.claim(&row.to_vec()),
            };
        }
    });
    out
}

/// linfa's Gaussian mixture on a seeded sample of the scaled fit rows.
fn gmm(z: &[f64], d: usize, p: &TrainSpec) -> Result<Detector, DetectError> {
    let n = z.len() / d;
    let sample = sample_matrix(z, d, &sample_rows(n, p.gmm_max_rows, p.seed))?;
    let fit = GaussianMixtureModel::params_with_rng(p.k, StdRng::seed_from_u64(p.seed))
        .n_runs(p.n_init as u64)
        .max_n_iterations(p.max_iterations)
        .tolerance(p.gmm_tolerance)
        .reg_covariance(p.gmm_reg_covariance)
        .fit(&DatasetBase::from(sample))
        .map_err(|e| DetectError::Fit {
            algo: "gmm",
            reason: e.to_string(),
        })?;
    let weights: Vec<f64> = fit.weights().to_vec();
    let total: f64 = weights.iter().sum();
    Ok(Detector::Gmm {
        weights: weights.iter().map(|w| w / total).collect(),
        means: fit.means().outer_iter().map(|r| r.to_vec()).collect(),
        covariances: fit
            .covariances()
            .outer_iter()
            .map(|m| m.outer_iter().map(|r| r.to_vec()).collect())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::data::RowSpec;
    use crate::detect::eval::evaluate;
    use rand::Rng;

    /// Benign: a tight blob around a few "behaviours"; attacks: far away in a few features.
    pub(crate) fn synthetic(n_benign: usize, n_attack: usize, seed: u64) -> Dataset {
        let features: Vec<String> = (0..12).map(|j| format!("f{j}")).collect();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut rows: Vec<(Vec<f64>, &str)> = Vec::new();
        for i in 0..n_benign {
            let behaviour = (i % 3) as f64;
            let v: Vec<f64> = (0..12)
                .map(|j| {
                    if j < 6 {
                        (10.0 + 40.0 * behaviour) * rng.gen_range(0.8..1.25)
                    } else if rng.gen_bool(0.02) {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect();
            rows.push((v, BENIGN_LABEL));
        }
        for i in 0..n_attack {
            let mut v: Vec<f64> = (0..12).map(|j| if j < 6 { 20.0 } else { 0.0 }).collect();
            let kind = if i % 2 == 0 {
                v[0] = 5000.0 * rng.gen_range(0.5..2.0);
                "flood"
            } else {
                v[7] = 40.0 * rng.gen_range(0.5..2.0);
                "brute-force"
            };
            rows.push((v, kind));
        }
        let specs = rows.iter().enumerate().map(|(i, (v, l))| RowSpec {
            source: if *l == BENIGN_LABEL {
                "127.0.0.1"
            } else {
                "127.0.1.1"
            },
            window_start_ms: i as i64 * 1000,
            window_ms: 1000,
            values: v,
            label: Some(l),
        });
        Dataset::from_rows(features, true, specs).expect("synthetic rows are valid")
    }

    const BENIGN_LABEL: &str = crate::detect::BENIGN;

    #[test]
    fn tight_benign_far_attacks_give_high_f1() -> Result<(), DetectError> {
        let train_data = synthetic(3000, 200, 1);
        let test_data = synthetic(3000, 200, 2);
        for algo in [Algo::Kmeans, Algo::Gmm] {
            let params = TrainSpec::default().algo(algo).k(3).seed(7).check()?;
            let model = train(&train_data, &params)?.model;
            let report = evaluate(&model, &test_data)?;
            assert!(report.metrics.f1 >= 0.95, "{algo}: {report:?}");
            assert!(report.metrics.fpr <= 0.02, "{algo}: {report:?}");
            assert!(model.training().calibration_fpr <= 0.01);
            for (kind, k) in &report.per_kind {
                assert!(k.rate >= 0.9, "{algo} {kind}: {k:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn a_model_survives_a_save_and_load() -> Result<(), Box<dyn std::error::Error>> {
        let data = synthetic(2000, 100, 4);
        for algo in [Algo::Kmeans, Algo::Gmm] {
            let model = train(&data, &TrainSpec::default().algo(algo).k(3).check()?)?.model;
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("model.json");
            model.save(&path)?;
            let back = Model::load(&path)?;
            assert_eq!(back, model);
            for i in 0..data.rows() {
                let row = data.row(i).to_vec();
                assert_eq!(back.score(&row).to_bits(), model.score(&row).to_bits());
            }
        }
        Ok(())
    }

    #[test]
    fn data_with_other_columns_is_refused_naming_the_first_difference(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let data = synthetic(500, 0, 5);
        let model = train(&data, &TrainSpec::default().k(2).check()?)?.model;
        let mut names: Vec<String> = data.features().to_vec();
        names[4] = "frames_sideways".into();
        let renamed = Dataset::from_rows(
            names,
            true,
            (0..10).map(|i| RowSpec {
                source: "127.0.0.1",
                window_start_ms: 0,
                window_ms: 1000,
                values: data.row(i).to_slice().unwrap_or(&[]),
                label: Some(BENIGN_LABEL),
            }),
        )?;
        let err = evaluate(&model, &renamed)
            .err()
            .ok_or("accepted other columns")?;
        assert!(
            matches!(&err, DetectError::SchemaMismatch { position: 5, found: Some(f), .. } if f == "frames_sideways"),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("feature column 5 is `frames_sideways` but the model expects `f4`"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn training_is_deterministic() -> Result<(), DetectError> {
        let data = synthetic(2000, 0, 3);
        let params = TrainSpec::default().k(4).seed(11).check()?;
        let a = train(&data, &params)?.model;
        let b = train(&data, &params)?.model;
        assert_eq!(a, b);
        Ok(())
    }

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

    #[test]
    fn k_above_the_rows_is_refused() -> Result<(), DetectError> {
        let data = synthetic(10, 0, 1);
        let params = TrainSpec::default().k(20).check()?;
        assert!(matches!(
            train(&data, &params),
            Err(DetectError::Param(ParamError::KAboveRows { k: 20, .. }))
        ));
        Ok(())
    }

    #[test]
    fn kmeans_finds_separated_blobs() -> Result<(), DetectError> {
        let mut rng = StdRng::seed_from_u64(5);
        let d = 3;
        let mut z = Vec::new();
        for i in 0..30_000 {
            let c = (i % 3) as f64 * 10.0;
            for _ in 0..d {
                z.push(c + rng.gen_range(-1.0..1.0));
            }
        }
        let km = kmeans(&z, d, 3, 1, 300, 1e-4, 1)?;
        assert!(km.converged);
        let mut firsts: Vec<i64> = (0..3).map(|c| km.centroids[c * d].round() as i64).collect();
        firsts.sort_unstable();
        assert_eq!(firsts, vec![0, 10, 20]);
        Ok(())
    }

    #[test]
    fn baseline_prefers_the_best_f1_within_the_fpr() -> Result<(), DetectError> {
        let features = vec!["frames_in".to_owned(), "other".to_owned()];
        let mut rows = Vec::new();
        let values: Vec<[f64; 2]> = (0..200)
            .map(|i| [if i < 180 { (i % 10) as f64 } else { 100.0 }, 0.0])
            .collect();
        for (i, v) in values.iter().enumerate() {
            rows.push(RowSpec {
                source: "127.0.0.1",
                window_start_ms: 0,
                window_ms: 1000,
                values: v,
                label: Some(if i < 180 { BENIGN_LABEL } else { "flood" }),
            });
        }
        let ds = Dataset::from_rows(features, true, rows)?;
        let b = fit_baseline(&ds, &(0..200).collect::<Vec<_>>(), 0.01).ok_or(
            DetectError::NoLabels, // unreachable: the data has frames_in
        )?;
        assert_eq!(b.features, vec!["frames_in"]);
        assert_eq!(b.chosen_by, "max_f1_within_fpr");
        assert_eq!(b.threshold, 9.0);
        Ok(())
    }
}
