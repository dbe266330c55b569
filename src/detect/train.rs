//! Training: from a dataset and checked hyperparameters to a calibrated model.
//!
//! 1. Rows: the benign ones (every row when the data is unlabelled), unless
//!    [`TrainSpec::benign_only`] is off.
//! 2. A seeded shuffle splits them into fit rows and held-out calibration rows
//!    ([`TrainSpec::calibration_fraction`], 20 % by default).
//! 3. `slog1p`, then the robust scaler, fitted on the fit rows.
//! 4. The fit: [`kmeans`](super::kmeans) (linfa's k-means++ on a sample, then Lloyd iterations
//!    over every fit row), or a Gaussian mixture: linfa-clustering's `GaussianMixtureModel`
//!    on a seeded sample of at most [`TrainSpec::gmm_max_rows`] rows.
//! 5. Per-cluster normalization (k-means): each cluster's spread of each feature (the
//!    `spread_quantile` of its own fit rows' absolute deviations from the centroid, at least
//!    `cluster_min_spread`), then its radius:
//!    the `quantile` of its own fit rows' spread-normalized distances, at least
//!    [`RADIUS_FLOOR`].
//! 6. Threshold: the `quantile` of the fit rows' scores × `margin`, raised if needed so that
//!    at most `target_fpr` of the held-out benign rows score above it.
//!
//! The parallel steps run on the current rayon pool in fixed blocks (`par.rs`), so
//! the model is the same whatever the pool's size: call [`train`] inside
//! `rayon::ThreadPool::install` to choose the thread count.

use std::time::{Duration, Instant};

use linfa::prelude::*;
use linfa_clustering::GaussianMixtureModel;
use ndarray::ArrayView2;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use super::model::{round15, Baseline, Detector, Model, Schema, TrainingSummary};
use super::params::{Algo, MAX_FEATURES};
use super::quantile::quantiles;
use super::sample::{sample_matrix, sample_rows};
use super::scaler::{slog1p, Scaler};
use super::{par, select, shape_err, Dataset, DetectError};

// The hyperparameters and the k-means fit have modules of their own; re-exported so that
// `detect::train::...` paths keep working.
pub use super::kmeans::{kmeans, KMeansFit, INIT_SAMPLE};
pub use super::params::{ParamError, TrainParams, TrainSpec};

/// Most rows per cluster its per-feature spreads are estimated from (evenly spaced).
pub const SPREAD_SAMPLE: usize = 32_768;

/// Smallest per-cluster radius, in scaled units: a cluster of identical rows (idle windows)
/// would otherwise have radius 0 and flag any change at all.
pub const RADIUS_FLOOR: f64 = 1.0;

/// Features summed by the rate-threshold baseline (those the data has).
pub const BASELINE_FEATURES: [&str; 3] = ["frames_in", "decode_errors", "refused"];

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

/// Trains a model on `data` (see the module docs for the steps). With
/// [`TrainSpec::candidates`] above 1, trains one model per seed (`seed`, `seed + 1`, ...)
/// and keeps the one [`mod@super::select`] judges best on `data`'s own labelled rows;
/// that needs attack rows in `data`.
pub fn train(data: &Dataset, params: &TrainParams) -> Result<Trained, DetectError> {
    let n = params.candidates();
    if n <= 1 {
        return train_one(data, params);
    }
    let attacks = (0..data.rows()).filter(|&i| !data.is_benign(i)).count();
    if !data.is_labelled() || attacks == 0 {
        return Err(DetectError::NotEnoughRows {
            what: "choosing among candidates (labelled attack rows to judge them on)".into(),
            needed: 1,
            have: attacks,
        });
    }
    let mut timings = Timings::default();
    let mut candidates = Vec::with_capacity(n);
    let mut kept: Option<(usize, Trained)> = None;
    for i in 0..n {
        let seed = params.seed().wrapping_add(i as u64);
        let trained = train_one(data, &params.with_seed(seed))?;
        timings.prepare += trained.timings.prepare;
        timings.fit += trained.timings.fit;
        timings.calibrate += trained.timings.calibrate;
        timings.total += trained.timings.total;
        let judged = select::judge(&trained.model, data, seed, params.target_fpr());
        // Only the best so far is kept in memory.
        if kept
            .as_ref()
            .map_or(true, |(b, _)| select::better(&judged, &candidates[*b]))
        {
            kept = Some((i, trained));
        }
        candidates.push(judged);
    }
    // n > 1, so the first candidate at least was kept.
    let (chosen, mut kept) = kept.ok_or(DetectError::NotEnoughRows {
        what: "choosing among candidates".into(),
        needed: 1,
        have: 0,
    })?;
    kept.model.set_selection(
        params.spec().clone(),
        select::Selection { candidates, chosen },
    );
    kept.timings = timings;
    Ok(kept)
}

/// Trains one model with `params.seed()`.
fn train_one(data: &Dataset, params: &TrainParams) -> Result<Trained, DetectError> {
    let t0 = Instant::now();
    let p = params;
    let d = data.features().len();
    if d > MAX_FEATURES {
        return Err(ParamError::Features(d).into());
    }
    let benign: Vec<usize> = (0..data.rows()).filter(|&i| data.is_benign(i)).collect();
    let mut rows: Vec<usize> = if p.benign_only() {
        benign.clone()
    } else {
        (0..data.rows()).collect()
    };
    let mut rng = StdRng::seed_from_u64(p.seed());
    rows.shuffle(&mut rng);
    let n_cal = ((rows.len() as f64) * p.calibration_fraction()).round() as usize;
    let n_cal = n_cal.min(rows.len().saturating_sub(p.k()));
    let (cal, fit) = rows.split_at_mut(n_cal);
    if fit.len() < p.k() || fit.is_empty() {
        return Err(ParamError::KAboveRows {
            k: p.k(),
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
        p.min_scale(),
    );
    scaler.scale_rows(&mut z);
    let prepare = t0.elapsed();

    let t1 = Instant::now();
    let (detector, iterations, converged, inertia) = match p.algo() {
        Algo::Kmeans => {
            let km = kmeans(
                &z,
                d,
                p.k(),
                p.n_init(),
                p.max_iterations(),
                p.tolerance(),
                p.seed(),
            )?;
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
    let baseline = fit_baseline(data, &all, p.target_fpr());
    let summary = TrainingSummary {
        rows: data.rows(),
        benign_rows: benign.len(),
        fit_rows: fit.len(),
        calibration_rows: cal.len(),
        seed: p.seed(),
        window_ms: common_window(data),
        params: p.spec().clone(),
        iterations,
        converged,
        inertia,
        fit_quantile_score: 0.0,
        threshold_rule: String::new(),
        fit_fpr: 0.0,
        calibration_fpr: 0.0,
        selection: None,
    };
    drop(z);
    let model = Model::assemble(schema, scaler, detector, 0.0, baseline, summary.clone())?;
    // Scores through the public scorer, exactly as live windows will be scored.
    let fit_scores = score_raw_rows(&model, x.view(), fit);
    let cal_scores = score_raw_rows(&model, x.view(), cal);
    let (threshold, q, rule) = choose_threshold(
        &fit_scores,
        &cal_scores,
        p.quantile(),
        p.margin(),
        p.target_fpr(),
    );
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
    let q = quantiles(&mut f, &[quantile])[0];
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

/// The model's k-means part from a fit: the non-empty clusters, each with its per-feature
/// spread, assignment penalty and radius, and the mean squared distance (inertia per row).
/// `x` and `fit` are the raw rows the fit was made on, for the radii: they are measured with
/// the scorer itself, so that training and live scoring agree exactly.
fn kmeans_detector(
    km: &KMeansFit,
    z: &[f64],
    d: usize,
    p: &TrainParams,
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
    if p.normalize() {
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
                *o = quantiles(&mut dev, &[p.spread_quantile()])[0].max(p.cluster_min_spread());
            }
        });
    }
    let penalty: Vec<f64> = kept
        .iter()
        .zip(&spread)
        .map(|(&c, s)| {
            if p.normalize() {
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
    if p.normalize() {
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
                *r = quantiles(dists, &[p.quantile()])[0].max(RADIUS_FLOOR);
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
fn empty_summary(p: &TrainParams) -> TrainingSummary {
    TrainingSummary {
        rows: 0,
        benign_rows: 0,
        fit_rows: 0,
        calibration_rows: 0,
        seed: p.seed(),
        window_ms: None,
        params: p.spec().clone(),
        iterations: None,
        converged: false,
        inertia: None,
        fit_quantile_score: 0.0,
        threshold_rule: String::new(),
        fit_fpr: 0.0,
        calibration_fpr: 0.0,
        selection: None,
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
fn gmm(z: &[f64], d: usize, p: &TrainParams) -> Result<Detector, DetectError> {
    let n = z.len() / d;
    let sample = sample_matrix(z, d, &sample_rows(n, p.gmm_max_rows(), p.seed()))?;
    let fit = GaussianMixtureModel::params_with_rng(p.k(), StdRng::seed_from_u64(p.seed()))
        .n_runs(p.n_init() as u64)
        .max_n_iterations(p.max_iterations())
        .tolerance(p.gmm_tolerance())
        .reg_covariance(p.gmm_reg_covariance())
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
    fn candidates_keep_the_best_judged_seed_and_record_them_all() -> Result<(), DetectError> {
        let data = synthetic(2000, 100, 5);
        let spec = TrainSpec::default().k(3).seed(10);
        let picked = train(&data, &spec.clone().candidates(4).check()?)?.model;
        let sel = picked.training().selection.clone().expect("a selection");
        let seeds: Vec<u64> = sel.candidates.iter().map(|c| c.seed).collect();
        assert_eq!(seeds, [10, 11, 12, 13]);
        assert_eq!(Some(sel.chosen), select::best(&sel.candidates));
        let chosen = &sel.candidates[sel.chosen];
        assert_eq!(picked.training().seed, chosen.seed);
        // The base spec is recorded, so that the same command reproduces the file.
        assert_eq!(picked.training().params, spec.clone().candidates(4));
        // Every candidate's figures are what judging its own single-seed model gives, and
        // the kept model is that model.
        for c in &sel.candidates {
            let one = train(&data, &spec.clone().seed(c.seed).check()?)?.model;
            assert_eq!(&select::judge(&one, &data, c.seed, 0.01), c);
            if c.seed == chosen.seed {
                assert_eq!(one.threshold(), picked.threshold());
                assert_eq!(one.k(), picked.k());
            }
        }
        Ok(())
    }

    #[test]
    fn candidates_need_attack_rows_to_judge_them() -> Result<(), DetectError> {
        let data = synthetic(500, 0, 6);
        let params = TrainSpec::default().k(3).candidates(2).check()?;
        let err = train(&data, &params).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("labelled attack rows"), "{err}");
        assert!(TrainSpec::default().candidates(0).check().is_err());
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

    /// The model file that training on `data` writes, with `threads` worker threads.
    fn model_file(
        data: &Dataset,
        params: &TrainParams,
        threads: usize,
    ) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let model = par::with_threads(threads, || train(data, params))??.model;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("model.json");
        model.save(&path)?;
        Ok(std::fs::read(path)?)
    }

    #[test]
    fn training_ignores_the_thread_count() -> Result<(), Box<dyn std::error::Error>> {
        // 36 000 rows leave 28 800 fit rows: four blocks, so that 2 and 3 threads would each
        // group the sums differently if anything grouped them by thread.
        let data = crate::detect::synth::dataset(&["f0", "f1", "f2", "f3"], 36_000, 0.0, 3)?;
        let params = TrainSpec::default().k(4).seed(11).check()?;
        let one = model_file(&data, &params, 1)?;
        for threads in [2, 3] {
            assert!(
                model_file(&data, &params, threads)? == one,
                "{threads} threads wrote another model file than 1 thread"
            );
        }
        Ok(())
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
