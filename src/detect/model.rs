//! The model file and the hot path that scores one feature vector.
//!
//! A [`Model`] is what `rampart model train` writes (JSON): the feature schema, the scaler, the
//! clusters (k-means centroids with per-cluster radii, or a Gaussian mixture), the decision
//! threshold, the rate-threshold baseline and a summary of the training run. Loading checks
//! every length and number, then precomputes flat arrays so that [`Model::score`] touches
//! only contiguous memory and allocates nothing.
//!
//! Scores are "higher = more anomalous"; a window is anomalous when its score is strictly
//! above the threshold.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::kernel;
use super::params::TrainSpec;
use super::scaler::{slog1p, slog1p_inv, Scaler};
use super::{first_difference, Dataset, DetectError};
use crate::activity::features::FeatureRow;

// The algorithm and the scorer's limits live with the hyperparameters (the lowest layer, which
// the model file stores); a model's users find them here too.
pub use super::params::{Algo, MAX_FEATURES, MAX_K};

/// Version of the model file layout. Bump it on any incompatible change.
pub const MODEL_FORMAT: u32 = 1;

/// Features listed in a verdict's explanation.
pub const TOP_FEATURES: usize = 5;

/// The feature schema a model was trained on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    /// The extractor's feature schema version
    /// ([`FEATURE_SCHEMA_VERSION`](crate::activity::features::FEATURE_SCHEMA_VERSION)).
    pub version: u32,
    /// Feature names, in column order.
    pub features: Vec<String>,
}

/// The fitted clusters, in scaled space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "algo", rename_all = "lowercase")]
pub enum Detector {
    /// k-means.
    Kmeans {
        /// One centroid per cluster (empty clusters are dropped).
        centroids: Vec<Vec<f64>>,
        /// Each cluster's spread per feature (the `spread_quantile` of its fit rows' absolute
        /// deviations from the centroid, at least `cluster_min_spread`): each feature's
        /// deviation from the centroid is divided by it (all 1 when per-cluster normalization
        /// is off).
        spread: Vec<Vec<f64>>,
        /// Each cluster's assignment penalty, `2 Σ_j ln spread_cj − 2 ln(size_c / rows)`: a
        /// window belongs to the cluster with the smallest spread-normalized squared distance
        /// plus penalty (the most likely cluster under diagonal Gaussians). All 0 when
        /// normalization is off: plain nearest centroid.
        penalty: Vec<f64>,
        /// Each cluster's radius: the `quantile` of the spread-normalized distances of the fit
        /// rows that belong to it, at least 1; the score is the spread-normalized distance
        /// divided by it (all 1 when normalization is off).
        radius: Vec<f64>,
        /// Training rows assigned to each cluster.
        sizes: Vec<u64>,
    },
    /// Gaussian mixture.
    Gmm {
        /// Mixing weights (sum 1).
        weights: Vec<f64>,
        /// Component means.
        means: Vec<Vec<f64>>,
        /// Component covariance matrices (full, regularized).
        covariances: Vec<Vec<Vec<f64>>>,
    },
}

impl Detector {
    /// Clusters or components.
    pub fn k(&self) -> usize {
        match self {
            Detector::Kmeans { centroids, .. } => centroids.len(),
            Detector::Gmm { weights, .. } => weights.len(),
        }
    }

    /// The algorithm.
    pub fn algo(&self) -> Algo {
        match self {
            Detector::Kmeans { .. } => Algo::Kmeans,
            Detector::Gmm { .. } => Algo::Gmm,
        }
    }
}

/// The plain rate-threshold baseline the model is compared against: a window is flagged
/// when the sum of a few rate features, per second, is above a threshold chosen on the
/// training data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Features summed (those of `frames_in`, `decode_errors`, `refused` the data has).
    pub features: Vec<String>,
    /// Events per second above which a window is flagged.
    pub threshold: f64,
    /// How the threshold was chosen: `max_f1_within_fpr` (labelled training data with
    /// attacks) or `benign_fpr` (benign-only training data).
    pub chosen_by: String,
}

/// What the training run saw and did (stored in the model; no timings, so that the same
/// data and seed give the same file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    /// Rows in the training data.
    pub rows: usize,
    /// Rows labelled benign (all rows when unlabelled).
    pub benign_rows: usize,
    /// Rows the clusters were fitted on.
    pub fit_rows: usize,
    /// Held-out rows the threshold was checked on.
    pub calibration_rows: usize,
    /// The seed of every random choice (split, initialization).
    pub seed: u64,
    /// The window length of every training row, if they all had the same one (the live
    /// extractor must use it).
    pub window_ms: Option<u64>,
    /// The hyperparameters, as checked.
    pub params: TrainSpec,
    /// Lloyd iterations on all fit rows (k-means), if known.
    pub iterations: Option<u64>,
    /// Whether the fit converged before the iteration limit.
    pub converged: bool,
    /// Mean squared distance of fit rows to their centroid (k-means).
    pub inertia: Option<f64>,
    /// The `params.quantile` quantile of the fit rows' scores.
    pub fit_quantile_score: f64,
    /// `quantile_x_margin`, or `raised_for_calibration_fpr` when the held-out rows needed
    /// a higher threshold to stay within `params.target_fpr`.
    pub threshold_rule: String,
    /// Fraction of fit rows above the threshold.
    pub fit_fpr: f64,
    /// Fraction of held-out benign rows above the threshold.
    pub calibration_fpr: f64,
    /// With [`TrainSpec::candidates`] above 1: every candidate and which was kept
    /// (`seed` is the kept one's). Absent from files trained without a choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<super::select::Selection>,
}

/// The model file as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ModelFile {
    pub(crate) format: u32,
    pub(crate) schema: Schema,
    /// The fixed per-value transform before scaling (always `slog1p`).
    pub(crate) transform: String,
    pub(crate) scaler: Scaler,
    pub(crate) detector: Detector,
    pub(crate) threshold: f64,
    pub(crate) baseline: Option<Baseline>,
    pub(crate) training: TrainingSummary,
}

/// Precomputed flat arrays for scoring.
#[derive(Debug, Clone, PartialEq)]
enum Fast {
    Kmeans {
        /// The `f32` scorer's arrays.
        scorer: kernel::Scorer32,
        /// Centroids, row-major `k × d` (explanations, in `f64`).
        centroids: Vec<f64>,
        /// Weights `1 / (spread[c][j]² · radius[c]²)`, row-major `k × d` (explanations).
        weights: Vec<f64>,
    },
    Gmm {
        /// Means, row-major `k × d`.
        means: Vec<f64>,
        /// Inverse Cholesky factors `L⁻¹` (lower triangular, row-major `d × d` each).
        linv: Vec<f64>,
        /// `ln w_c − ½(d ln 2π + ln |Σ_c|)` per component.
        log_norm: Vec<f64>,
        /// The lowest possible negative log-likelihood bound, subtracted so scores are ≥ 0.
        nll_min: f64,
        /// Covariance diagonals, row-major `k × d` (for explanations).
        var: Vec<f64>,
    },
}

/// A trained detector. Cheap to share behind an `Arc`; scoring takes `&self`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ModelFile", into = "ModelFile")]
pub struct Model {
    file: ModelFile,
    d: usize,
    k: usize,
    center: Vec<f64>,
    inv_scale: Vec<f64>,
    fast: Fast,
}

/// One feature's part in a verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Contribution {
    /// Feature name.
    pub feature: String,
    /// The window's value.
    pub value: f64,
    /// The nearest cluster's value for this feature, in raw units.
    pub typical: f64,
    /// This feature's term in the squared score (k-means: the terms add up to score²).
    pub contribution: f64,
}

/// A scored window, with the reasons.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// `score > threshold`.
    pub anomalous: bool,
    /// The model's score (higher = more anomalous).
    pub score: f64,
    /// The model's threshold.
    pub threshold: f64,
    /// The nearest cluster (k-means) or most likely component (mixture).
    pub cluster: usize,
    /// The features that contributed most, largest first (at most [`TOP_FEATURES`]).
    pub top: Vec<Contribution>,
}

impl Verdict {
    /// The score left once the terms of `features` among the top contributions are taken
    /// out of its square (k-means scores only, whose terms add up to score²): how anomalous
    /// the window is beyond that evidence. Terms outside the top contributions stay in, so
    /// this never understates the rest.
    pub fn score_without(&self, features: &[&str]) -> f64 {
        let taken: f64 = self
            .top
            .iter()
            .filter(|c| features.contains(&c.feature.as_str()))
            .map(|c| c.contribution)
            .sum();
        (self.score * self.score - taken).max(0.0).sqrt()
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} score {:.3} (threshold {:.3})",
            if self.anomalous {
                "anomalous"
            } else {
                "normal"
            },
            self.score,
            self.threshold
        )?;
        for c in &self.top {
            write!(
                f,
                "; {}={} (typical {:.1}, +{:.2})",
                c.feature, c.value, c.typical, c.contribution
            )?;
        }
        Ok(())
    }
}

impl TryFrom<ModelFile> for Model {
    type Error = DetectError;

    fn try_from(file: ModelFile) -> Result<Model, DetectError> {
        Model::from_file(file)
    }
}

impl From<Model> for ModelFile {
    fn from(m: Model) -> ModelFile {
        m.file
    }
}

/// Fails with [`DetectError::BadModel`] unless `cond`.
fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), DetectError> {
    if cond {
        Ok(())
    } else {
        Err(DetectError::BadModel(what()))
    }
}

fn all_finite(v: &[f64]) -> bool {
    v.iter().all(|x| x.is_finite())
}

impl Model {
    /// Checks a model file's contents and precomputes the scoring arrays.
    pub(crate) fn from_file(file: ModelFile) -> Result<Model, DetectError> {
        ensure(file.format == MODEL_FORMAT, || {
            format!(
                "model format {} is not supported (this build reads format {MODEL_FORMAT})",
                file.format
            )
        })?;
        ensure(file.transform == "slog1p", || {
            format!("unknown transform `{}`", file.transform)
        })?;
        let d = file.schema.features.len();
        ensure((1..=MAX_FEATURES).contains(&d), || {
            format!("{d} features (expected 1 to {MAX_FEATURES})")
        })?;
        let mut names: Vec<&String> = file.schema.features.iter().collect();
        names.sort();
        names.dedup();
        ensure(names.len() == d, || "duplicate feature names".into())?;
        let s = &file.scaler;
        ensure(s.center.len() == d && s.scale.len() == d, || {
            format!("the scaler has {} values for {d} features", s.center.len())
        })?;
        ensure(
            all_finite(&s.center) && s.scale.iter().all(|v| v.is_finite() && *v > 0.0),
            || "the scaler has a non-finite or non-positive value".into(),
        )?;
        ensure(file.threshold.is_finite(), || {
            "the threshold is not finite".into()
        })?;
        if let Some(b) = &file.baseline {
            for f in &b.features {
                ensure(file.schema.features.contains(f), || {
                    format!("the baseline uses `{f}`, which is not a model feature")
                })?;
            }
            ensure(b.threshold.is_finite(), || {
                "the baseline threshold is not finite".into()
            })?;
        }
        let k = file.detector.k();
        ensure((1..=MAX_K).contains(&k), || {
            format!("{k} clusters (expected 1 to {MAX_K})")
        })?;
        let fast = match &file.detector {
            Detector::Kmeans {
                centroids,
                spread,
                penalty,
                radius,
                sizes,
            } => {
                ensure(
                    centroids.iter().all(|c| c.len() == d && all_finite(c)),
                    || "a centroid has the wrong length or a non-finite value".into(),
                )?;
                ensure(
                    spread.len() == k
                        && spread
                            .iter()
                            .all(|s| s.len() == d && s.iter().all(|v| v.is_finite() && *v > 0.0)),
                    || "the spreads do not match the clusters".into(),
                )?;
                ensure(
                    radius.len() == k && radius.iter().all(|r| r.is_finite() && *r > 0.0),
                    || "the radii do not match the clusters".into(),
                )?;
                ensure(sizes.len() == k, || {
                    "the cluster sizes do not match the clusters".into()
                })?;
                ensure(penalty.len() == k && all_finite(penalty), || {
                    "the penalties do not match the clusters".into()
                })?;
                let flat: Vec<f64> = centroids.iter().flatten().copied().collect();
                let weights: Vec<f64> = (0..k * d)
                    .map(|i| {
                        let s = spread[i / d][i % d] * radius[i / d];
                        1.0 / (s * s)
                    })
                    .collect();
                ensure(all_finite(&weights), || {
                    "a spread or radius is too small".into()
                })?;
                let inv_spread2: Vec<f64> =
                    spread.iter().flatten().map(|s| 1.0 / (s * s)).collect();
                let scorer = kernel::Scorer32::new(
                    k,
                    d,
                    &file.scaler.center,
                    &file.scaler.inv_scale(),
                    &flat,
                    &inv_spread2,
                    penalty,
                    radius,
                );
                ensure(
                    scorer
                        .wt
                        .iter()
                        .chain(&scorer.inv_r2)
                        .all(|w| w.is_finite()),
                    || "a spread or radius is too small for the f32 scorer".into(),
                )?;
                Fast::Kmeans {
                    scorer,
                    centroids: flat,
                    weights,
                }
            }
            Detector::Gmm {
                weights,
                means,
                covariances,
            } => gmm_fast(d, weights, means, covariances)?,
        };
        Ok(Model {
            d,
            k,
            center: file.scaler.center.clone(),
            inv_scale: file.scaler.inv_scale(),
            fast,
            file,
        })
    }

    /// Reads a model file.
    pub fn load(path: &Path) -> Result<Model, DetectError> {
        let bytes = std::fs::read(path).map_err(|source| DetectError::Io {
            path: path.to_owned(),
            source,
        })?;
        Model::from_json(&bytes, path)
    }

    /// Reads a model from the bytes of a model file; `path` names it in errors.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Model, DetectError> {
        serde_json::from_slice::<ModelFile>(bytes)
            .map_err(|source| DetectError::ModelJson {
                path: path.to_owned(),
                source,
            })
            .and_then(Model::from_file)
    }

    /// Writes the model file (pretty JSON) atomically: to a temporary file beside it, then
    /// renamed over `path`.
    pub fn save(&self, path: &Path) -> Result<(), DetectError> {
        let io = |source| DetectError::Io {
            path: path.to_owned(),
            source,
        };
        let json =
            serde_json::to_vec_pretty(&self.file).map_err(|source| DetectError::ModelJson {
                path: path.to_owned(),
                source,
            })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        std::io::Write::write_all(&mut tmp, &json).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }

    /// The feature schema.
    pub fn schema(&self) -> &Schema {
        &self.file.schema
    }

    /// Feature names, in order.
    pub fn features(&self) -> &[String] {
        &self.file.schema.features
    }

    /// The decision threshold.
    pub fn threshold(&self) -> f64 {
        self.file.threshold
    }

    /// The algorithm.
    pub fn algo(&self) -> Algo {
        self.file.detector.algo()
    }

    /// Clusters or components.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The scaler.
    pub fn scaler(&self) -> &Scaler {
        &self.file.scaler
    }

    /// The fitted clusters.
    pub fn detector(&self) -> &Detector {
        &self.file.detector
    }

    /// The rate-threshold baseline chosen on the training data, if the data had any of its
    /// features.
    pub fn baseline(&self) -> Option<&Baseline> {
        self.file.baseline.as_ref()
    }

    /// The window length the model was trained on, if all training rows had the same one.
    pub fn window(&self) -> Option<std::time::Duration> {
        self.file
            .training
            .window_ms
            .map(std::time::Duration::from_millis)
    }

    /// The training summary.
    pub fn training(&self) -> &TrainingSummary {
        &self.file.training
    }

    /// Records how the model was chosen among candidates, and the hyperparameters as given
    /// (the base seed, not the kept candidate's).
    pub(crate) fn set_selection(&mut self, params: TrainSpec, selection: super::select::Selection) {
        self.file.training.params = params;
        self.file.training.selection = Some(selection);
    }

    /// Fails with a [`DetectError::SchemaMismatch`] naming the first differing column unless
    /// the data has exactly the model's features, in order.
    pub fn check_data(&self, data: &Dataset) -> Result<(), DetectError> {
        data.check_features(self.features(), "the model")
    }

    /// Fails unless `names` are exactly the model's features, in order, and `version` is the
    /// model's schema version (the live extractor's schema).
    pub fn check_schema(&self, version: u32, names: &[&str]) -> Result<(), DetectError> {
        if version != self.file.schema.version {
            return Err(DetectError::SchemaVersion {
                model: self.file.schema.version,
                code: version,
            });
        }
        let found: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        match first_difference(self.features(), &found) {
            None => Ok(()),
            Some((position, expected, found)) => Err(DetectError::SchemaMismatch {
                path: "<extractor>".into(),
                what: "the model".into(),
                position,
                expected,
                found,
            }),
        }
    }

    /// The anomaly score of one raw feature vector (one value per feature, in order; NaN if
    /// the length differs). Higher is more anomalous. Allocation-free, O(features × k); the
    /// k-means scorer computes in `f32` (see the `kernel` module).
    #[inline]
    pub fn score(&self, values: &[f64]) -> f64 {
        if values.len() != self.d {
            return f64::NAN;
        }
        match &self.fast {
            Fast::Kmeans { scorer, .. } => f64::from(scorer.nearest(values).1.sqrt()),
            Fast::Gmm { .. } => {
                let mut z = [0.0f64; MAX_FEATURES];
                self.scale_into(values, &mut z[..self.d]);
                self.gmm_score(&z[..self.d]).0
            }
        }
    }

    /// The cluster a raw vector belongs to and its score there (k-means; the most likely
    /// component and the score for a mixture).
    pub(crate) fn claim(&self, values: &[f64]) -> (usize, f64) {
        match &self.fast {
            Fast::Kmeans { scorer, .. } => {
                let (c, s2) = scorer.nearest(values);
                (c, f64::from(s2.sqrt()))
            }
            Fast::Gmm { .. } => {
                let mut z = vec![0.0; self.d];
                self.scale_into(values, &mut z);
                let (s, c) = self.gmm_score(&z);
                (c, s)
            }
        }
    }

    /// `values` in scaled space, in `f64`.
    fn scale_into(&self, values: &[f64], z: &mut [f64]) {
        for (((o, &v), &c), &is) in z
            .iter_mut()
            .zip(values)
            .zip(&self.center)
            .zip(&self.inv_scale)
        {
            *o = (slog1p(v) - c) * is;
        }
    }

    /// Mixture score of a scaled vector and the most likely component.
    fn gmm_score(&self, z: &[f64]) -> (f64, usize) {
        let Fast::Gmm {
            means,
            linv,
            log_norm,
            nll_min,
            ..
        } = &self.fast
        else {
            return (f64::NAN, 0);
        };
        let d = self.d;
        let mut lp = [0.0f64; MAX_K];
        let mut v = [0.0f64; MAX_FEATURES];
        let v = &mut v[..d];
        for (c, lp) in lp.iter_mut().enumerate().take(self.k) {
            for ((o, &z), &m) in v.iter_mut().zip(z).zip(&means[c * d..(c + 1) * d]) {
                *o = z - m;
            }
            let l = &linv[c * d * d..(c + 1) * d * d];
            let mut maha = 0.0;
            for i in 0..d {
                let row = &l[i * d..i * d + i + 1];
                let y: f64 = row.iter().zip(&v[..=i]).map(|(a, b)| a * b).sum();
                maha += y * y;
            }
            *lp = log_norm[c] - 0.5 * maha;
        }
        let lp = &lp[..self.k];
        let (best, max) =
            lp.iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv {
                        (i, v)
                    } else {
                        (bi, bv)
                    }
                });
        if !max.is_finite() {
            return (f64::INFINITY, best);
        }
        let sum: f64 = lp.iter().map(|v| (v - max).exp()).sum();
        let nll = -(max + sum.ln());
        (nll - nll_min, best)
    }

    /// The verdict on one window from the live extractor.
    pub fn verdict(&self, row: &FeatureRow) -> Verdict {
        self.verdict_values(&row.values)
    }

    /// The verdict on one raw feature vector: score, threshold, and the features that
    /// contributed most (k-means: each feature's squared deviation from the nearest
    /// centroid, in scaled space, divided by the cluster's spread² and radius², so the terms
    /// add up to score²; mixture: each feature's squared z-score within the most likely
    /// component).
    pub fn verdict_values(&self, values: &[f64]) -> Verdict {
        let score = self.score(values);
        let threshold = self.threshold();
        let mut verdict = Verdict {
            anomalous: score > threshold,
            score,
            threshold,
            cluster: 0,
            top: Vec::new(),
        };
        if values.len() != self.d {
            return verdict;
        }
        let mut z = vec![0.0; self.d];
        self.scale_into(values, &mut z);
        let (cluster, terms, centre): (usize, Vec<f64>, Vec<f64>) = match &self.fast {
            Fast::Kmeans {
                scorer,
                centroids,
                weights,
            } => {
                let d = self.d;
                let c = scorer.nearest(values).0;
                let centre = centroids[c * d..(c + 1) * d].to_vec();
                let terms = z
                    .iter()
                    .zip(&centre)
                    .zip(&weights[c * d..(c + 1) * d])
                    .map(|((z, m), w)| w * (z - m) * (z - m))
                    .collect();
                (c, terms, centre)
            }
            Fast::Gmm { means, var, .. } => {
                let d = self.d;
                let c = self.gmm_score(&z).1;
                let centre = means[c * d..(c + 1) * d].to_vec();
                let terms = z
                    .iter()
                    .zip(&centre)
                    .zip(&var[c * d..(c + 1) * d])
                    .map(|((z, m), v)| (z - m) * (z - m) / v)
                    .collect();
                (c, terms, centre)
            }
        };
        let mut order: Vec<usize> = (0..self.d).collect();
        order.sort_by(|&a, &b| terms[b].total_cmp(&terms[a]).then(a.cmp(&b)));
        let s = &self.file.scaler;
        verdict.cluster = cluster;
        verdict.top = order
            .into_iter()
            .take(TOP_FEATURES)
            .filter(|&j| terms[j] > 0.0)
            .map(|j| Contribution {
                feature: self.features()[j].clone(),
                value: values[j],
                typical: slog1p_inv(s.center[j] + centre[j] * s.scale[j]),
                contribution: terms[j],
            })
            .collect();
        verdict
    }

    /// The baseline's rate for one raw feature vector (events per second), if the model has a
    /// baseline.
    pub fn baseline_rate(&self, values: &[f64], window_ms: u64) -> Option<f64> {
        let b = self.baseline()?;
        let sum: f64 = b
            .features
            .iter()
            .filter_map(|f| self.features().iter().position(|g| g == f))
            .map(|j| values.get(j).copied().unwrap_or(0.0))
            .sum();
        Some(sum * 1000.0 / window_ms.max(1) as f64)
    }

    /// A copy with another threshold (tuning, tests).
    pub fn with_threshold(mut self, threshold: f64) -> Result<Model, DetectError> {
        ensure(threshold.is_finite(), || {
            "the threshold is not finite".into()
        })?;
        self.file.threshold = threshold;
        Ok(self)
    }

    /// Builds a model from its parts (the trainer). Every number is rounded to 15
    /// significant digits first: serde_json (without its `float_roundtrip` feature) parses
    /// longer decimals to within one ulp only, and the model must come back from its file
    /// exactly as it was, bit for bit.
    pub(crate) fn assemble(
        schema: Schema,
        scaler: Scaler,
        detector: Detector,
        threshold: f64,
        baseline: Option<Baseline>,
        training: TrainingSummary,
    ) -> Result<Model, DetectError> {
        Model::from_file(canonical(ModelFile {
            format: MODEL_FORMAT,
            schema,
            transform: "slog1p".into(),
            scaler,
            detector,
            threshold,
            baseline,
            training,
        })?)
    }

    /// Replaces the threshold and the summary (the trainer, after calibration).
    pub(crate) fn finish(
        mut self,
        threshold: f64,
        training: TrainingSummary,
    ) -> Result<Model, DetectError> {
        self.file.threshold = threshold;
        self.file.training = training;
        Model::from_file(canonical(self.file)?)
    }
}

/// `v` rounded to 15 significant digits (see [`Model::assemble`]).
pub(crate) fn round15(v: f64) -> f64 {
    if v.is_finite() && v != 0.0 {
        format!("{v:.14e}").parse().unwrap_or(v)
    } else {
        v
    }
}

/// Every floating-point number in a JSON value rounded to 15 significant digits.
fn round_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => {
            if let Some(x) = n
                .as_f64()
                .and_then(|x| serde_json::Number::from_f64(round15(x)))
            {
                *n = x;
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(round_json),
        serde_json::Value::Object(o) => o.values_mut().for_each(round_json),
        _ => {}
    }
}

/// The model file with every number as it will read back from JSON.
fn canonical(file: ModelFile) -> Result<ModelFile, DetectError> {
    let bad = |e: serde_json::Error| DetectError::BadModel(format!("cannot encode the model: {e}"));
    let mut v = serde_json::to_value(&file).map_err(bad)?;
    round_json(&mut v);
    serde_json::from_value(v).map_err(bad)
}

/// Precomputes a mixture's scoring arrays.
fn gmm_fast(
    d: usize,
    weights: &[f64],
    means: &[Vec<f64>],
    covariances: &[Vec<Vec<f64>>],
) -> Result<Fast, DetectError> {
    let k = weights.len();
    ensure(
        means.len() == k && means.iter().all(|m| m.len() == d && all_finite(m)),
        || "the component means do not match the features".into(),
    )?;
    ensure(
        covariances.len() == k
            && covariances
                .iter()
                .all(|c| c.len() == d && c.iter().all(|r| r.len() == d && all_finite(r))),
        || "the covariances do not match the features".into(),
    )?;
    ensure(
        weights.iter().all(|w| w.is_finite() && *w > 0.0)
            && (weights.iter().sum::<f64>() - 1.0).abs() < 1e-6,
        || "the mixture weights are not positive numbers adding up to 1".into(),
    )?;
    let ln_2pi = (2.0 * std::f64::consts::PI).ln();
    let mut linv = Vec::with_capacity(k * d * d);
    let mut log_norm = Vec::with_capacity(k);
    let mut var = Vec::with_capacity(k * d);
    for (c, cov) in covariances.iter().enumerate() {
        let flat: Vec<f64> = cov.iter().flatten().copied().collect();
        let l = cholesky(&flat, d).ok_or_else(|| {
            DetectError::BadModel(format!("covariance {c} is not positive definite"))
        })?;
        let log_det: f64 = 2.0 * (0..d).map(|i| l[i * d + i].ln()).sum::<f64>();
        linv.extend(invert_lower(&l, d));
        log_norm.push(weights[c].ln() - 0.5 * (d as f64 * ln_2pi + log_det));
        var.extend((0..d).map(|i| cov[i][i]));
    }
    let max = log_norm.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let nll_min = -(max + log_norm.iter().map(|v| (v - max).exp()).sum::<f64>().ln());
    ensure(all_finite(&linv) && nll_min.is_finite(), || {
        "the mixture is numerically degenerate".into()
    })?;
    Ok(Fast::Gmm {
        means: means.iter().flatten().copied().collect(),
        linv,
        log_norm,
        nll_min,
        var,
    })
}

/// The lower Cholesky factor of a symmetric positive definite `d × d` matrix (row-major), or
/// `None` if it is not positive definite.
fn cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (0..j).map(|p| l[i * d + p] * l[j * d + p]).sum();
            if i == j {
                let v = a[i * d + i] - s;
                if v.is_nan() || v <= 0.0 {
                    return None;
                }
                l[i * d + i] = v.sqrt();
            } else {
                l[i * d + j] = (a[i * d + j] - s) / l[j * d + j];
            }
        }
    }
    Some(l)
}

/// The inverse of a lower-triangular `d × d` matrix with a positive diagonal.
fn invert_lower(l: &[f64], d: usize) -> Vec<f64> {
    let mut inv = vec![0.0; d * d];
    for col in 0..d {
        inv[col * d + col] = 1.0 / l[col * d + col];
        for i in col + 1..d {
            let s: f64 = (col..i).map(|p| l[i * d + p] * inv[p * d + col]).sum();
            inv[i * d + col] = -s / l[i * d + i];
        }
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> TrainingSummary {
        TrainingSummary {
            rows: 0,
            benign_rows: 0,
            fit_rows: 0,
            calibration_rows: 0,
            seed: 0,
            window_ms: Some(1000),
            params: TrainSpec::default(),
            iterations: None,
            converged: true,
            inertia: None,
            fit_quantile_score: 0.0,
            threshold_rule: "quantile_x_margin".into(),
            fit_fpr: 0.0,
            selection: None,
            calibration_fpr: 0.0,
        }
    }

    fn two_feature_model() -> Result<Model, DetectError> {
        Model::assemble(
            Schema {
                version: 1,
                features: vec!["a".into(), "b".into()],
            },
            Scaler {
                center: vec![0.0, 0.0],
                scale: vec![1.0, 1.0],
            },
            Detector::Kmeans {
                centroids: vec![vec![0.0, 0.0], vec![5.0, 5.0]],
                spread: vec![vec![1.0, 1.0], vec![1.0, 1.0]],
                penalty: vec![0.0, 0.0],
                radius: vec![1.0, 2.0],
                sizes: vec![10, 10],
            },
            3.0,
            None,
            summary(),
        )
    }

    #[test]
    fn kmeans_score_is_the_normalized_distance_to_the_nearest_centroid() -> Result<(), DetectError>
    {
        let m = two_feature_model()?;
        // Raw values whose slog1p is exactly (3, 4): distance 5 from centroid 0 (radius 1),
        // distance sqrt(4 + 1) from centroid 1 (radius 2).
        let raw = [slog1p_inv(3.0), slog1p_inv(4.0)];
        let s = m.score(&raw);
        let want = (5.0f64 / 4.0).sqrt();
        // The k-means scorer computes in f32.
        assert!((s - want).abs() < 1e-5, "{s} vs {want}");
        assert!(m.score(&[1.0]).is_nan());
        let v = m.verdict_values(&raw);
        assert_eq!(v.cluster, 1);
        assert!(!v.anomalous);
        let total: f64 = v.top.iter().map(|c| c.contribution).sum();
        assert!((total - s * s).abs() < 1e-5);
        assert_eq!(v.top[0].feature, "a");
        Ok(())
    }

    #[test]
    fn verdict_names_the_feature_that_is_off() -> Result<(), DetectError> {
        let m = two_feature_model()?;
        let v = m.verdict_values(&[0.0, 1e6]);
        assert!(v.anomalous);
        assert_eq!(v.top[0].feature, "b");
        assert_eq!(v.top[0].value, 1e6);
        assert!(v.to_string().starts_with("anomalous score"));
        Ok(())
    }

    #[test]
    fn a_score_without_the_feature_that_is_off_is_what_is_left() -> Result<(), DetectError> {
        let m = two_feature_model()?;
        let v = m.verdict_values(&[0.0, 1e6]);
        let total: f64 = v.top.iter().map(|c| c.contribution).sum();
        // Scores are single precision; the terms are summed in double.
        assert!(
            (total - v.score * v.score).abs() <= 1e-4 * total,
            "terms {total} vs score² {}",
            v.score * v.score
        );
        let b = v
            .top
            .iter()
            .find(|c| c.feature == "b")
            .map_or(0.0, |c| c.contribution);
        let left = v.score_without(&["b"]);
        assert!((left * left - (v.score * v.score - b)).abs() <= 1e-6 * total.max(1.0));
        assert!(left < v.threshold, "only b was off: {left}");
        assert_eq!(v.score_without(&[]), v.score);
        assert_eq!(v.score_without(&["a", "b"]), 0.0);
        Ok(())
    }

    #[test]
    fn inconsistent_files_are_refused() -> Result<(), DetectError> {
        let m = two_feature_model()?;
        let mut f: ModelFile = m.clone().into();
        f.scaler.scale[1] = 0.0;
        assert!(matches!(Model::from_file(f), Err(DetectError::BadModel(_))));
        let mut f: ModelFile = m.into();
        f.format = 99;
        assert!(matches!(Model::from_file(f), Err(DetectError::BadModel(_))));
        Ok(())
    }

    #[test]
    fn gmm_score_is_zero_at_the_mean_of_a_single_component() -> Result<(), DetectError> {
        let m = Model::assemble(
            Schema {
                version: 1,
                features: vec!["a".into(), "b".into()],
            },
            Scaler {
                center: vec![0.0, 0.0],
                scale: vec![1.0, 1.0],
            },
            Detector::Gmm {
                weights: vec![1.0],
                means: vec![vec![1.0, 2.0]],
                covariances: vec![vec![vec![4.0, 1.0], vec![1.0, 2.0]]],
            },
            10.0,
            None,
            summary(),
        )?;
        let at_mean = [slog1p_inv(1.0), slog1p_inv(2.0)];
        assert!(m.score(&at_mean).abs() < 1e-9);
        // Half the Mahalanobis distance squared: v = (2, 0), Σ⁻¹ = [[2, -1], [-1, 4]] / 7.
        let off = [slog1p_inv(3.0), slog1p_inv(2.0)];
        let want = 0.5 * (4.0 * 2.0 / 7.0);
        assert!((m.score(&off) - want).abs() < 1e-9);
        Ok(())
    }
}
