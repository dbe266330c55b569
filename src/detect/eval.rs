//! Evaluation against labels: the model's figures and the same figures for the rate-threshold
//! baseline, so the model has to earn its place.
//!
//! The positive class is every label other than `benign`. Rates with an empty denominator
//! (precision with nothing flagged, FPR with no benign rows) are 0, as scikit-learn's
//! `zero_division=0`; the AUCs are `None` (JSON `null`) when one class is absent.

use std::collections::BTreeMap;

use serde::Serialize;

use super::quantile::quantiles;
use super::rules::{RuleBaseline, RuleThresholds};
use super::train::score_raw_rows;
use super::{Dataset, DetectError, Model, BENIGN};
use crate::firewall::anomaly_strength;
use crate::server::detector;

/// Counts of right and wrong decisions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Confusion {
    /// Attack rows flagged.
    pub tp: u64,
    /// Benign rows flagged.
    pub fp: u64,
    /// Benign rows not flagged.
    pub tn: u64,
    /// Attack rows not flagged.
    #[serde(rename = "fn")]
    pub fn_: u64,
}

/// The figures for one detector on one dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    /// tp / (tp + fp).
    pub precision: f64,
    /// tp / (tp + fn), the detection rate.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// fp / (fp + tn), the false-positive rate.
    pub fpr: f64,
    /// Area under the ROC curve of the scores (ties count one half).
    pub roc_auc: Option<f64>,
    /// Area under the precision-recall curve: average precision, as scikit-learn's
    /// `average_precision_score`.
    pub pr_auc: Option<f64>,
    /// The confusion matrix.
    pub confusion: Confusion,
}

/// Detection of one attack kind.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct KindRate {
    /// Rows with this label.
    pub rows: u64,
    /// Of those, rows flagged.
    pub detected: u64,
    /// detected / rows.
    pub rate: f64,
}

/// How soon the model flags the sources of one attack kind ([`per_source`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SourceRate {
    /// Attacking sources: runs of a source's windows with this label, a gap of more than
    /// [`EPISODE_GAP_MS`] starting a new one (the same address in two recordings).
    pub sources: u64,
    /// Of those, sources with at least one window flagged.
    pub detected: u64,
    /// detected / sources.
    pub rate: f64,
    /// Over the detected sources, the median window in which the first flag came: 1 is the
    /// source's first attacking window, 2 the window after it (`null` when none was flagged).
    pub first_window_median: Option<f64>,
    /// The latest such window over the detected sources (`null` when none was flagged).
    pub first_window_max: Option<u64>,
}

/// Windows of one source and label further apart than this belong to separate attacks.
pub const EPISODE_GAP_MS: i64 = 60_000;

/// The baseline's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineReport {
    /// Features summed into the rate.
    pub features: Vec<String>,
    /// Events per second above which a window is flagged.
    pub threshold: f64,
    /// The figures.
    #[serde(flatten)]
    pub metrics: Metrics,
    /// Detection rate per attack kind.
    pub per_kind: BTreeMap<String, KindRate>,
}

/// What `rampart model eval` reports (`--json` prints it as one object).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    /// Rows evaluated.
    pub rows: u64,
    /// Attack rows.
    pub positives: u64,
    /// Benign rows.
    pub negatives: u64,
    /// The model's threshold.
    pub threshold: f64,
    /// The model's figures.
    #[serde(flatten)]
    pub metrics: Metrics,
    /// Detection rate per attack kind (label).
    pub per_kind: BTreeMap<String, KindRate>,
    /// Per attack kind, how many attacking sources the model flags and how soon
    /// ([`per_source`]).
    pub per_source: BTreeMap<String, SourceRate>,
    /// Per attack kind, the mean share of `firewall.weight_model_anomaly` its windows would
    /// earn live ([`firewall_share`]): what the firewall acts on, where `per_kind` counts
    /// what the model flags.
    pub firewall_share: BTreeMap<String, f64>,
    /// The rate-threshold baseline's figures (absent if the model has no baseline).
    pub baseline: Option<BaselineReport>,
    /// The rule baseline's figures, tuned on a training file (`model eval --train FILE`;
    /// absent without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_baseline: Option<RuleBaselineReport>,
}

/// The rule baseline's figures ([`RuleBaseline`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleBaselineReport {
    /// The thresholds tuned on the training file.
    pub thresholds: RuleThresholds,
    /// The figures.
    #[serde(flatten)]
    pub metrics: Metrics,
    /// Detection rate per attack kind.
    pub per_kind: BTreeMap<String, KindRate>,
    /// Per attack kind, the attacking sources the rules flag and how soon ([`per_source`]).
    pub per_source: BTreeMap<String, SourceRate>,
}

/// The figures of `rules` (tuned elsewhere) on labelled `data`.
pub fn rule_report(
    rules: &RuleBaseline,
    data: &Dataset,
) -> Result<RuleBaselineReport, DetectError> {
    if !data.is_labelled() {
        return Err(DetectError::NoLabels);
    }
    let flags = rules.for_data(data).flags(data);
    let positive: Vec<bool> = (0..data.rows()).map(|i| !data.is_benign(i)).collect();
    let labels: Vec<&str> = (0..data.rows())
        .map(|i| data.label(i).unwrap_or(BENIGN))
        .collect();
    Ok(RuleBaselineReport {
        thresholds: rules.thresholds,
        metrics: metrics(&flags, &positive, 0.5),
        per_kind: per_kind(&flags, &labels, 0.5),
        per_source: per_source(data, &flags.iter().map(|&f| f > 0.5).collect::<Vec<_>>()),
    })
}

impl EvalReport {
    /// Whether the model is at least as good as the baseline on F1 (true without a
    /// baseline).
    pub fn beats_baseline(&self) -> bool {
        match &self.baseline {
            None => true,
            Some(b) => self.metrics.f1 >= b.metrics.f1,
        }
    }
}

/// Scores every row of `data` and compares with its labels. Fails if the data has no labels
/// or other features than the model.
pub fn evaluate(model: &Model, data: &Dataset) -> Result<EvalReport, DetectError> {
    if !data.is_labelled() {
        return Err(DetectError::NoLabels);
    }
    model.check_data(data)?;
    let rows: Vec<usize> = (0..data.rows()).collect();
    let scores = score_raw_rows(model, data.values().view(), &rows);
    let positive: Vec<bool> = rows.iter().map(|&i| !data.is_benign(i)).collect();
    let labels: Vec<&str> = rows
        .iter()
        .map(|&i| data.label(i).unwrap_or(BENIGN))
        .collect();
    let model_metrics = metrics(&scores, &positive, model.threshold());
    let model_per_kind = per_kind(&scores, &labels, model.threshold());
    let flagged: Vec<bool> = scores.iter().map(|&s| s > model.threshold()).collect();
    let model_per_source = per_source(data, &flagged);
    let shares = firewall_share(model, data, &scores, &labels);
    let baseline = model.baseline().map(|b| {
        let rates: Vec<f64> = rows
            .iter()
            .map(|&i| {
                let row = data.row(i);
                model
                    .baseline_rate(row.as_slice().unwrap_or(&row.to_vec()), data.window_ms(i))
                    .unwrap_or(0.0)
            })
            .collect();
        BaselineReport {
            features: b.features.clone(),
            threshold: b.threshold,
            metrics: metrics(&rates, &positive, b.threshold),
            per_kind: per_kind(&rates, &labels, b.threshold),
        }
    });
    let positives = positive.iter().filter(|p| **p).count() as u64;
    Ok(EvalReport {
        rows: rows.len() as u64,
        positives,
        negatives: rows.len() as u64 - positives,
        threshold: model.threshold(),
        metrics: model_metrics,
        per_kind: model_per_kind,
        per_source: model_per_source,
        firewall_share: shares,
        baseline,
        rule_baseline: None,
    })
}

/// Per attack kind, the mean share of `firewall.weight_model_anomaly` a window earns live:
/// nothing for a window the model does not flag or that is silent
/// (`server::detector::silent`), else `firewall::anomaly_strength` of its score without the
/// terms the rules score themselves (`server::detector::live_score`). Two models with the
/// same per-window recall can differ widely here: a window just past the threshold is
/// flagged but earns nothing, so an attack only the model blocks is blocked late or never.
pub fn firewall_share(
    model: &Model,
    data: &Dataset,
    scores: &[f64],
    labels: &[&str],
) -> BTreeMap<String, f64> {
    let mut sums: BTreeMap<String, (f64, u64)> = BTreeMap::new();
    for (i, (&score, &label)) in scores.iter().zip(labels).enumerate() {
        if label == BENIGN {
            continue;
        }
        let e = sums.entry(label.to_owned()).or_insert((0.0, 0));
        e.0 += live_share(model, data, i, score);
        e.1 += 1;
    }
    sums.into_iter()
        .map(|(k, (sum, n))| (k, if n == 0 { 0.0 } else { sum / n as f64 }))
        .collect()
}

/// The share of `firewall.weight_model_anomaly` row `i` (scored `score`) would earn live:
/// nothing unless the model flags it and it is not silent, else `anomaly_strength` of its
/// score without the rule-scored terms.
fn live_share(model: &Model, data: &Dataset, i: usize, score: f64) -> f64 {
    if score <= model.threshold() {
        return 0.0;
    }
    let values = data.row(i).to_vec();
    let at = |name: &str| data.feature_index(name).map_or(0.0, |c| values[c]);
    if detector::silent_by(at) {
        return 0.0;
    }
    let verdict = model.verdict_values(&values);
    anomaly_strength(
        detector::live_score(model.algo(), &verdict),
        verdict.threshold,
    )
}

/// How the model did on one group of rows (`model eval --by-group`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct GroupRate {
    /// Rows in the group.
    pub rows: u64,
    /// Of those, benign rows.
    pub benign: u64,
    /// Benign rows flagged (false positives).
    pub false_positives: u64,
    /// false_positives / benign: the group's false-positive rate (0 without benign rows).
    pub fpr: f64,
    /// Attack rows.
    pub attacks: u64,
    /// Attack rows flagged.
    pub detected: u64,
    /// detected / attacks: the group's recall (0 without attack rows).
    pub recall: f64,
    /// The mean share of `firewall.weight_model_anomaly` the group's windows would earn live,
    /// as [`firewall_share`] computes it for an attack kind: for a family of honest users,
    /// what the model's flags would cost them (0: nothing toward a block).
    pub firewall_share: f64,
}

/// The model's false-positive rate and recall per group of rows, groups named by
/// `group_of(row)` (rows it names `None` are left out). Fails as [`evaluate`] does.
pub fn by_group<'a>(
    model: &Model,
    data: &'a Dataset,
    group_of: impl Fn(usize) -> Option<&'a str>,
) -> Result<BTreeMap<String, GroupRate>, DetectError> {
    if !data.is_labelled() {
        return Err(DetectError::NoLabels);
    }
    model.check_data(data)?;
    let rows: Vec<usize> = (0..data.rows()).collect();
    let scores = score_raw_rows(model, data.values().view(), &rows);
    let mut out: BTreeMap<String, GroupRate> = BTreeMap::new();
    for (&i, &score) in rows.iter().zip(&scores) {
        let Some(g) = group_of(i) else { continue };
        let e = out.entry(g.to_owned()).or_default();
        let flagged = score > model.threshold();
        e.rows += 1;
        e.firewall_share += live_share(model, data, i, score);
        if data.is_benign(i) {
            e.benign += 1;
            e.false_positives += u64::from(flagged);
        } else {
            e.attacks += 1;
            e.detected += u64::from(flagged);
        }
    }
    for e in out.values_mut() {
        e.fpr = ratio(e.false_positives, e.benign);
        e.recall = ratio(e.detected, e.attacks);
        e.firewall_share /= e.rows as f64;
    }
    Ok(out)
}

/// The confusion matrix of `score > threshold` against `positive`.
pub fn confusion(scores: &[f64], positive: &[bool], threshold: f64) -> Confusion {
    let mut c = Confusion::default();
    for (&s, &p) in scores.iter().zip(positive) {
        match (s > threshold, p) {
            (true, true) => c.tp += 1,
            (true, false) => c.fp += 1,
            (false, false) => c.tn += 1,
            (false, true) => c.fn_ += 1,
        }
    }
    c
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// All figures for `score > threshold` against `positive`.
pub fn metrics(scores: &[f64], positive: &[bool], threshold: f64) -> Metrics {
    let c = confusion(scores, positive, threshold);
    let precision = ratio(c.tp, c.tp + c.fp);
    let recall = ratio(c.tp, c.tp + c.fn_);
    let f1 = ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn_);
    Metrics {
        precision,
        recall,
        f1,
        fpr: ratio(c.fp, c.fp + c.tn),
        roc_auc: roc_auc(scores, positive),
        pr_auc: average_precision(scores, positive),
        confusion: c,
    }
}

/// Detection rate per non-benign label.
pub fn per_kind(scores: &[f64], labels: &[&str], threshold: f64) -> BTreeMap<String, KindRate> {
    let mut out: BTreeMap<String, KindRate> = BTreeMap::new();
    for (&s, &l) in scores.iter().zip(labels) {
        if l == BENIGN {
            continue;
        }
        let e = out.entry(l.to_owned()).or_insert(KindRate {
            rows: 0,
            detected: 0,
            rate: 0.0,
        });
        e.rows += 1;
        if s > threshold {
            e.detected += 1;
        }
    }
    for k in out.values_mut() {
        k.rate = ratio(k.detected, k.rows);
    }
    out
}

/// Per attack kind, how many attacking sources have a window in `flagged` (one flag per row
/// of `data`) and in which of their windows the first flag came. A window counts from the
/// source's first window with that label, idle windows between included, so 2 means one
/// window after the attack's first.
///
/// Per-window recall counts every window alike; this says whether, and how soon, each
/// attacker is seen, which is what a firewall acts on. A distributed guesser's first window
/// holds one login frame and nothing else, exactly like an honest login: per-window recall
/// misses it, while the source is still caught one window later.
pub fn per_source(data: &Dataset, flagged: &[bool]) -> BTreeMap<String, SourceRate> {
    // (window start, window length, flagged) per (label, source).
    type Windows = Vec<(i64, u64, bool)>;
    let mut windows: BTreeMap<(&str, &str), Windows> = BTreeMap::new();
    for (i, &flag) in flagged.iter().enumerate().take(data.rows()) {
        let label = data.label(i).unwrap_or(BENIGN);
        if label == BENIGN {
            continue;
        }
        windows.entry((label, data.source(i))).or_default().push((
            data.window_start_ms(i),
            data.window_ms(i).max(1),
            flag,
        ));
    }
    let mut firsts: BTreeMap<&str, Vec<Option<u64>>> = BTreeMap::new();
    for ((label, _), mut w) in windows {
        w.sort_unstable();
        let out = firsts.entry(label).or_default();
        let mut start = 0;
        for end in 1..=w.len() {
            if end < w.len() && w[end].0.saturating_sub(w[end - 1].0) <= EPISODE_GAP_MS {
                continue;
            }
            let episode = &w[start..end];
            let t0 = episode[0].0;
            out.push(
                episode
                    .iter()
                    .find(|x| x.2)
                    .map(|&(t, len, _)| 1 + u64::try_from(t.saturating_sub(t0)).unwrap_or(0) / len),
            );
            start = end;
        }
    }
    firsts
        .into_iter()
        .map(|(label, f)| {
            let seen: Vec<u64> = f.iter().flatten().copied().collect();
            let mut windows: Vec<f64> = seen.iter().map(|&w| w as f64).collect();
            let median = (!seen.is_empty()).then(|| quantiles(&mut windows, &[0.5])[0]);
            let rate = SourceRate {
                sources: f.len() as u64,
                detected: seen.len() as u64,
                rate: ratio(seen.len() as u64, f.len() as u64),
                first_window_median: median,
                first_window_max: seen.iter().max().copied(),
            };
            (label.to_owned(), rate)
        })
        .collect()
}

/// Indices of `scores` in ascending order (NaN last, ties by index).
fn ascending(scores: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    idx
}

/// ROC AUC: the probability that a random attack row scores above a random benign row, ties
/// counting one half (Mann-Whitney U with mid-ranks). `None` without both classes.
pub fn roc_auc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let n_pos = positive.iter().filter(|p| **p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let idx = ascending(scores);
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j < idx.len() && scores[idx[j]].total_cmp(&scores[idx[i]]).is_eq() {
            j += 1;
        }
        // Ranks i+1 ..= j share their mean.
        let mid = (i + 1 + j) as f64 / 2.0;
        rank_sum += mid * idx[i..j].iter().filter(|&&r| positive[r]).count() as f64;
        i = j;
    }
    let p = n_pos as f64;
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n_neg as f64))
}

/// Average precision: Σ (Rₙ − Rₙ₋₁)·Pₙ over the distinct score thresholds, highest first
/// (scikit-learn's `average_precision_score`). `None` without attack rows.
pub fn average_precision(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let n_pos = positive.iter().filter(|p| **p).count();
    if n_pos == 0 {
        return None;
    }
    let mut idx = ascending(scores);
    idx.reverse();
    let (mut tp, mut fp) = (0u64, 0u64);
    let mut prev_recall = 0.0;
    let mut ap = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j < idx.len() && scores[idx[j]].total_cmp(&scores[idx[i]]).is_eq() {
            if positive[idx[j]] {
                tp += 1;
            } else {
                fp += 1;
            }
            j += 1;
        }
        let recall = tp as f64 / n_pos as f64;
        let precision = tp as f64 / (tp + fp) as f64;
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
        i = j;
    }
    Some(ap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auc(scores: &[f64], labels: &[u8]) -> (Option<f64>, Option<f64>) {
        let pos: Vec<bool> = labels.iter().map(|&l| l == 1).collect();
        (roc_auc(scores, &pos), average_precision(scores, &pos))
    }

    fn check(scores: &[f64], labels: &[u8], roc: f64, ap: f64) {
        let (r, a) = auc(scores, labels);
        let (r, a) = (r.unwrap_or(f64::NAN), a.unwrap_or(f64::NAN));
        assert!(
            (r - roc).abs() < 1e-12,
            "{scores:?} {labels:?}: roc {r} != {roc}"
        );
        assert!(
            (a - ap).abs() < 1e-12,
            "{scores:?} {labels:?}: ap {a} != {ap}"
        );
    }

    #[test]
    fn auc_on_known_cases() {
        // Perfect ranking.
        check(&[0.1, 0.2, 0.8, 0.9], &[0, 0, 1, 1], 1.0, 1.0);
        // Inverted: every attack below every benign row.
        check(&[0.9, 0.8, 0.2, 0.1], &[0, 0, 1, 1], 0.0, 5.0 / 12.0);
        // All tied: no information.
        check(&[0.5; 4], &[0, 1, 0, 1], 0.5, 0.5);
        // scikit-learn's documentation example.
        check(&[0.1, 0.4, 0.35, 0.8], &[0, 0, 1, 1], 0.75, 5.0 / 6.0);
        // A tie across classes in the middle counts one half.
        check(&[0.1, 0.5, 0.5, 0.9], &[0, 0, 1, 1], 0.875, 5.0 / 6.0);
    }

    #[test]
    fn auc_is_undefined_with_one_class() {
        assert_eq!(auc(&[0.1, 0.2], &[0, 0]), (None, None));
        assert_eq!(auc(&[0.1, 0.2], &[1, 1]).0, None);
    }

    #[test]
    fn metrics_from_the_confusion_matrix() {
        let scores = [0.0, 2.0, 0.0, 2.0, 2.0, 0.0];
        let pos = [false, false, false, true, true, true];
        let m = metrics(&scores, &pos, 1.0);
        assert_eq!(
            m.confusion,
            Confusion {
                tp: 2,
                fp: 1,
                tn: 2,
                fn_: 1
            }
        );
        assert!((m.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.f1 - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.fpr - 1.0 / 3.0).abs() < 1e-12);
        let empty = metrics(&[0.0], &[false], 1.0);
        assert_eq!((empty.precision, empty.recall, empty.f1), (0.0, 0.0, 0.0));
    }

    #[test]
    fn per_kind_counts_each_attack_label() {
        let k = per_kind(&[5.0, 0.0, 5.0, 5.0], &["benign", "a", "a", "b"], 1.0);
        assert_eq!(k.len(), 2);
        assert_eq!((k["a"].rows, k["a"].detected, k["a"].rate), (2, 1, 0.5));
        assert_eq!(k["b"].rate, 1.0);
    }

    #[test]
    fn per_source_counts_attackers_and_how_soon_they_are_flagged() -> Result<(), DetectError> {
        use crate::detect::data::RowSpec;
        let v = [0.0];
        let row = |source, t, label| RowSpec {
            source,
            window_start_ms: t,
            window_ms: 1000,
            values: &v,
            label: Some(label),
        };
        // A: flagged in its third window (an idle second between counts as a window).
        // B: never flagged. A again, two minutes later: a second attack, flagged at once.
        // C: a benign source, flagged, and not counted.
        let data = Dataset::from_rows(
            vec!["x".into()],
            true,
            [
                row("a", 0, "brute-force"),
                row("a", 2000, "brute-force"),
                row("b", 0, "brute-force"),
                row("b", 1000, "brute-force"),
                row("a", 1000, "brute-force"),
                row("a", 120_000, "brute-force"),
                row("c", 0, BENIGN),
                row("d", 5000, "flood"),
            ],
        )?;
        let flagged = [false, true, false, false, false, true, true, false];
        let r = per_source(&data, &flagged);
        assert_eq!(r.len(), 2, "{r:?}");
        let bf = r["brute-force"];
        assert_eq!((bf.sources, bf.detected), (3, 2));
        assert!((bf.rate - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(bf.first_window_median, Some(2.0));
        assert_eq!(bf.first_window_max, Some(3));
        let flood = r["flood"];
        assert_eq!((flood.sources, flood.detected), (1, 0));
        assert_eq!(
            (flood.first_window_median, flood.first_window_max),
            (None, None)
        );
        Ok(())
    }
}
