//! `rampart model ...`: train a detection model from feature CSVs, evaluate it, explain it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};

use rampart::detect::eval::{BaselineReport, KindRate, Metrics};
use rampart::detect::{self, Algo, Dataset, EvalReport, Model, TrainSpec};

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Train a model on feature CSVs and write it (JSON).
    #[command(
        after_help = "By default the model learns from the rows labelled benign (every \
row when there is no label column), holds 20% of them out to check the threshold, and \
prints the seed it used.\n\nExample:\n  rampart model train datasets/train.csv --out model.json \
--k 8 --seed 42\n\nWith --data-dir DIR instead of files, the model learns from the server's own \
recording (DIR/activity.db, exported in memory as `rampart activity export` does): only the \
windows of sources that were never blocked or shadow-blocked and never hit a rule in any \
window (decode or header errors, oversized frames, auth failures, permission denials, rate \
limits, timeouts, refusals). Too few such windows is an error.\n  rampart model train \
--data-dir ./data --out model.json"
    )]
    Train(TrainArgs),
    /// Evaluate a model against a labelled feature CSV.
    #[command(
        after_help = "Positive class: every label other than benign. With --json, \
prints one object with precision, recall, f1, fpr, roc_auc, pr_auc, confusion, per_kind, \
per_source (per attack kind: sources, detected, rate, first_window_median, first_window_max: \
how many attacking sources are flagged at all, and in which of their windows first), \
firewall_share (per attack kind: the mean share of firewall.weight_model_anomaly a window \
earns live, 0 to 1; a window just past the threshold is flagged but earns nothing), rows, \
threshold and baseline (the same figures for the rate-threshold baseline), and by_group \
with --by-group (per value: rows, benign, false_positives, fpr, attacks, detected, recall, \
firewall_share), and rule_baseline (thresholds and the same figures) with --train.\n\n\
Example:\n  rampart model eval --model model.json datasets/test.csv --json"
    )]
    Eval(EvalArgs),
    /// Print the highest-scoring windows of a feature CSV with the features behind each score.
    #[command(
        after_help = "Example:\n  rampart model explain --model model.json datasets/test.csv --limit 10"
    )]
    Explain(ExplainArgs),
}

/// The clustering algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AlgoArg {
    /// k-means; score = spread-normalized distance to the nearest centroid.
    Kmeans,
    /// Gaussian mixture; score = negative log-likelihood above its minimum.
    Gmm,
}

impl From<AlgoArg> for Algo {
    fn from(a: AlgoArg) -> Algo {
        match a {
            AlgoArg::Kmeans => Algo::Kmeans,
            AlgoArg::Gmm => Algo::Gmm,
        }
    }
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Feature CSVs (as written by `rampart activity export`), all with the same columns.
    #[arg(required_unless_present = "data_dir", conflicts_with = "data_dir")]
    files: Vec<PathBuf>,
    /// Train on a server's own recorded windows instead of CSVs: the activity database in
    /// this data directory, clean sources only (see below).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Leave out the rows whose `group` column is NAME (repeatable): train without one
    /// behaviour family, then evaluate on it (datasets/README.md).
    #[arg(long, value_name = "NAME")]
    exclude_group: Vec<String>,
    /// With --data-dir: fewest clean windows to train on.
    #[arg(long, default_value_t = 200, requires = "data_dir")]
    min_windows: usize,
    /// Where to write the model.
    #[arg(long)]
    out: PathBuf,
    /// Clustering algorithm.
    #[arg(long, value_enum, default_value = "kmeans")]
    algo: AlgoArg,
    /// Clusters or mixture components, 1 to 32 [default: 16].
    #[arg(long)]
    k: Option<usize>,
    /// Seed of every random choice (hold-out split, sample, initialization) [default: 42].
    #[arg(long)]
    seed: Option<u64>,
    /// Candidate models trained, with seeds --seed, --seed + 1, ...; above 1, the one that
    /// best meets the detection targets on the training data's own labelled rows is kept
    /// (fewest attack kinds under 0.9 and benign groups over --target-fpr, then the highest
    /// mean firewall share per kind, then the highest mean detection rate per kind, then the
    /// lowest false-positive rate). Needs attack rows.
    /// The test data is never looked at [default: 1].
    #[arg(long)]
    candidates: Option<usize>,
    /// k-means initializations (k-means++ on the sample) tried; the one of least inertia is
    /// refined on every row [default: 1].
    #[arg(long)]
    n_init: Option<usize>,
    /// Most Lloyd or EM iterations [default: 300].
    #[arg(long)]
    max_iter: Option<u64>,
    /// k-means stops when the squared centroid shift is at most this times the mean feature
    /// variance, as scikit-learn [default: 1e-4].
    #[arg(long)]
    tol: Option<f64>,
    /// Quantile of training scores the threshold starts from, and of each cluster's distances
    /// taken as its radius [default: 0.995].
    #[arg(long)]
    quantile: Option<f64>,
    /// Factor on that quantile [default: 1.1].
    #[arg(long)]
    margin: Option<f64>,
    /// Quantile of a cluster's deviations in a feature taken as its spread [default: 0.999].
    #[arg(long)]
    spread_quantile: Option<f64>,
    /// Highest false-positive rate allowed on held-out benign rows [default: 0.01].
    #[arg(long)]
    target_fpr: Option<f64>,
    /// Smallest spread of a feature within a cluster, in scaled units [default: 0.5].
    #[arg(long)]
    min_spread: Option<f64>,
    /// Fit on every row, attacks included (default: benign rows only).
    #[arg(long)]
    all_rows: bool,
    /// Plain Euclidean distance in scaled space, without per-cluster spreads and radii.
    #[arg(long)]
    no_normalize: bool,
    /// Print the training summary as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The model file.
    #[arg(long)]
    model: PathBuf,
    /// A labelled feature CSV with the model's feature columns.
    file: PathBuf,
    /// A labelled training CSV (the model's, never the evaluated file) to tune the rule
    /// baseline on: any decode or header error, oversized frame, permission denial,
    /// timeout, rate-limit hit or refusal, N or more auth failures, a request frame still
    /// arriving T ms past its one-second grace, more than C connections opened; N, T and C are chosen on this file for
    /// the best F1 at a false-positive rate of at most 1%. Reported beside the model
    /// (JSON: `rule_baseline`).
    #[arg(long, value_name = "FILE")]
    train: Option<PathBuf>,
    /// Also report the model's false-positive rate, recall and firewall share per value of
    /// this column: `group` (the behaviour family or attack kind, when the CSV has it),
    /// `label` or `source`. A benign family's firewall share is what the model's flags would
    /// cost its users live (0: nothing toward a block). JSON: an extra `by_group` object,
    /// keyed by value.
    #[arg(long, value_name = "COLUMN")]
    by_group: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The model file.
    #[arg(long)]
    model: PathBuf,
    /// A feature CSV with the model's feature columns.
    file: PathBuf,
    /// How many windows to show, highest score first.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// One JSON object per window instead of text.
    #[arg(long)]
    json: bool,
}

/// The false-positive rate the rule baseline is tuned to stay within: the model's default
/// target.
const RULE_TARGET_FPR: f64 = 0.01;

/// Window length of the recorded windows `--data-dir` trains on: the live detector's
/// default, and that of the datasets.
const RECORDED_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

pub fn run(cmd: ModelCommand) -> Result<ExitCode> {
    match cmd {
        ModelCommand::Train(a) => train(a),
        ModelCommand::Eval(a) => eval(a),
        ModelCommand::Explain(a) => explain(a),
    }
}

fn load_model(path: &std::path::Path) -> Result<Model> {
    Model::load(path).with_context(|| format!("cannot load the model {}", path.display()))
}

fn read_data(files: &[PathBuf]) -> Result<Dataset> {
    Ok(detect::read_csvs(files)?)
}

fn train(a: TrainArgs) -> Result<ExitCode> {
    let t = Instant::now();
    let mut spec = TrainSpec::default()
        .algo(a.algo.into())
        .benign_only(!a.all_rows)
        .normalize(!a.no_normalize);
    if let Some(k) = a.k {
        spec = spec.k(k);
    }
    if let Some(s) = a.seed {
        spec = spec.seed(s);
    }
    if let Some(n) = a.candidates {
        spec = spec.candidates(n);
    }
    if let Some(n) = a.n_init {
        spec = spec.n_init(n);
    }
    if let Some(m) = a.max_iter {
        spec = spec.max_iterations(m);
    }
    if let Some(v) = a.tol {
        spec = spec.tolerance(v);
    }
    if let Some(v) = a.quantile {
        spec = spec.quantile(v);
    }
    if let Some(v) = a.spread_quantile {
        spec = spec.spread_quantile(v);
    }
    if let Some(v) = a.min_spread {
        spec = spec.cluster_min_spread(v);
    }
    if let Some(v) = a.margin {
        spec = spec.margin(v);
    }
    if let Some(v) = a.target_fpr {
        spec = spec.target_fpr(v);
    }
    let params = spec.check()?;
    let (data, from) = match &a.data_dir {
        Some(dir) => {
            let (data, s) = detect::recorded::clean_windows(dir, RECORDED_WINDOW, a.min_windows)
                .with_context(|| format!("cannot train on the recording in {}", dir.display()))?;
            if !a.json {
                println!(
                    "recording {}: {} events, {} windows of {} sources; dropped {} sources \
                     decided on by the firewall or labelled attacks, {} that hit a rule; \
                     kept {} windows",
                    dir.display(),
                    s.events,
                    s.windows,
                    s.sources,
                    s.decided_sources,
                    s.rule_sources,
                    s.kept_windows
                );
            }
            (data, format!("the recording in {}", dir.display()))
        }
        None => (read_data(&a.files)?, format!("{} file(s)", a.files.len())),
    };
    let data = if a.exclude_group.is_empty() {
        data
    } else {
        if !data.has_groups() {
            anyhow::bail!("--exclude-group needs data with a `group` column");
        }
        let before = data.rows();
        let kept =
            data.filter_rows(|i| !a.exclude_group.iter().any(|g| data.group(i) == Some(g)))?;
        if kept.rows() == before {
            anyhow::bail!(
                "--exclude-group {}: no row has that group",
                a.exclude_group.join(",")
            );
        }
        kept
    };
    let trained = detect::train(&data, &params)?;
    let model = trained.model;
    model
        .save(&a.out)
        .with_context(|| format!("cannot write the model {}", a.out.display()))?;
    let s = model.training();
    if a.json {
        let summary = serde_json::json!({
            "model": a.out,
            "algo": model.algo(),
            "k": model.k(),
            "seed": s.seed,
            "features": model.features().len(),
            "threshold": model.threshold(),
            "training": s,
            "baseline": model.baseline(),
            "seconds": t.elapsed().as_secs_f64(),
        });
        println!("{summary}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "read {} rows x {} features from {}{}",
        data.rows(),
        data.features().len(),
        from,
        label_counts(&data)
    );
    println!(
        "trained {} with k={} (kept {}) seed={} on {} {} rows, {} held out; {}",
        model.algo(),
        params.k(),
        model.k(),
        s.seed,
        s.fit_rows,
        if params.benign_only() {
            "benign"
        } else {
            "(all)"
        },
        s.calibration_rows,
        match (s.iterations, s.converged) {
            (Some(i), true) => format!("converged in {i} iterations"),
            (Some(i), false) => format!("stopped after {i} iterations without converging"),
            (None, _) => "converged".to_owned(),
        }
    );
    println!(
        "threshold {:.4} ({}; training FPR {:.2}%, held-out benign FPR {:.2}%)",
        model.threshold(),
        s.threshold_rule,
        100.0 * s.fit_fpr,
        100.0 * s.calibration_fpr
    );
    if let Some(sel) = &s.selection {
        print_selection(sel);
    }
    if let Some(b) = model.baseline() {
        println!(
            "baseline: {} > {:.2}/s ({})",
            b.features.join("+"),
            b.threshold,
            b.chosen_by
        );
    }
    println!(
        "wrote {} in {:.2} s",
        a.out.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// The candidates `--candidates` judged on the training data, the kept one marked.
fn print_selection(sel: &detect::select::Selection) {
    println!(
        "{} candidates judged on the training data (misses: attack kinds under {}, benign \
         groups over the target FPR; fw share: the mean share of the firewall's model weight \
         an attack kind's windows earn):",
        sel.candidates.len(),
        detect::select::KIND_RECALL_TARGET
    );
    println!(
        "  {:>6} {:>6} {:>8} {:>10} {:>8}  {:<28} worst benign group",
        "seed", "misses", "fw share", "mean kind", "fpr", "worst kind"
    );
    for (i, c) in sel.candidates.iter().enumerate() {
        let kind = c
            .worst_kind
            .as_ref()
            .map_or("-".to_owned(), |(k, r)| format!("{k} {r:.3}"));
        let family = c
            .worst_family
            .as_ref()
            .map_or("-".to_owned(), |(g, f)| format!("{g} {:.2}%", 100.0 * f));
        println!(
            "{} {:>6} {:>6} {:>8.3} {:>10.4} {:>7.2}%  {:<28} {}",
            if i == sel.chosen { "*" } else { " " },
            c.seed,
            c.misses,
            c.mean_firewall_share,
            c.mean_kind_recall,
            100.0 * c.fpr,
            kind,
            family
        );
    }
}

/// ", labels: benign 9000, raw-flood 120" (sorted by label), or "" when unlabelled.
fn label_counts(data: &Dataset) -> String {
    if !data.is_labelled() {
        return String::new();
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..data.rows() {
        *counts
            .entry(data.label(i).unwrap_or(detect::BENIGN))
            .or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(l, n)| format!("{l} {n}")).collect();
    format!(", labels: {}", parts.join(", "))
}

fn eval(a: EvalArgs) -> Result<ExitCode> {
    let model = load_model(&a.model)?;
    let data = detect::read_csv(&a.file)?;
    let mut report = detect::evaluate(&model, &data)?;
    if let Some(train) = &a.train {
        let train_data = detect::read_csv(train)?;
        let rules = detect::rules::RuleBaseline::fit(&train_data, RULE_TARGET_FPR)
            .with_context(|| format!("cannot tune the rule baseline on {}", train.display()))?;
        report.rule_baseline = Some(detect::eval::rule_report(&rules, &data)?);
    }
    let groups = match a.by_group.as_deref() {
        None => None,
        Some(column) => {
            let groups = match column {
                "group" if data.has_groups() => {
                    detect::eval::by_group(&model, &data, |i| data.group(i))?
                }
                "group" => anyhow::bail!(
                    "--by-group group: {} has no `group` column",
                    a.file.display()
                ),
                "label" => detect::eval::by_group(&model, &data, |i| data.label(i))?,
                "source" => detect::eval::by_group(&model, &data, |i| Some(data.source(i)))?,
                other => anyhow::bail!(
                    "--by-group {other}: not a column to group by (group, label or source)"
                ),
            };
            Some((column, groups))
        }
    };
    let mut json = serde_json::to_value(&report)?;
    if let (Some((_, g)), Some(obj)) = (&groups, json.as_object_mut()) {
        obj.insert("by_group".into(), serde_json::to_value(g)?);
    }
    with_stdout(|out| {
        if a.json {
            return writeln!(out, "{json}");
        }
        print_report(out, &report)?;
        if let Some((column, groups)) = &groups {
            print_groups(out, column, groups)?;
        }
        Ok(())
    })
}

/// Runs `f` on stdout; a reader that closes the pipe early (`| head`) ends the command
/// quietly instead of with a panic.
fn with_stdout(f: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match f(&mut out).and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e).context("cannot write to stdout"),
    }
}

/// `v`, or "-" for none.
/// A value as `Display` writes it, or `-` when there is none.
fn opt(v: Option<impl std::fmt::Display>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// A ratio to four places, or `-` when there is none.
fn fmt_opt(v: Option<f64>) -> String {
    opt(v.map(|v| format!("{v:.4}")))
}

fn metrics_line(out: &mut dyn Write, name: &str, m: &Metrics) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<10} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9} {:>9}",
        name,
        m.precision,
        m.recall,
        m.f1,
        m.fpr,
        fmt_opt(m.roc_auc),
        fmt_opt(m.pr_auc)
    )
}

fn confusion_line(out: &mut dyn Write, name: &str, m: &Metrics) -> std::io::Result<()> {
    let c = m.confusion;
    writeln!(
        out,
        "{:<10} {:>9} {:>9} {:>9} {:>9}",
        name, c.tp, c.fp, c.tn, c.fn_
    )
}

fn print_report(out: &mut dyn Write, r: &EvalReport) -> std::io::Result<()> {
    writeln!(
        out,
        "{} rows: {} attack, {} benign; model threshold {:.4}",
        r.rows, r.positives, r.negatives, r.threshold
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "", "precision", "recall", "f1", "fpr", "roc_auc", "pr_auc"
    )?;
    metrics_line(out, "model", &r.metrics)?;
    if let Some(b) = &r.baseline {
        metrics_line(out, "baseline", &b.metrics)?;
    }
    if let Some(b) = &r.rule_baseline {
        metrics_line(out, "rules", &b.metrics)?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<10} {:>9} {:>9} {:>9} {:>9}",
        "confusion", "tp", "fp", "tn", "fn"
    )?;
    confusion_line(out, "model", &r.metrics)?;
    if let Some(b) = &r.baseline {
        confusion_line(out, "baseline", &b.metrics)?;
    }
    if let Some(b) = &r.rule_baseline {
        confusion_line(out, "rules", &b.metrics)?;
    }
    if !r.per_kind.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "{:<24} {:>9} {:>9} {:>9} {:>14} {:>11} {:>9}",
            "attack kind", "rows", "detected", "rate", "baseline rate", "rules rate", "fw share"
        )?;
        for (kind, k) in &r.per_kind {
            let base = r
                .baseline
                .as_ref()
                .and_then(|b: &BaselineReport| b.per_kind.get(kind))
                .map_or_else(|| "-".to_owned(), |b: &KindRate| format!("{:.4}", b.rate));
            let rules = r
                .rule_baseline
                .as_ref()
                .and_then(|b| b.per_kind.get(kind))
                .map_or_else(|| "-".to_owned(), |b: &KindRate| format!("{:.4}", b.rate));
            let share = r
                .firewall_share
                .get(kind)
                .map_or_else(|| "-".to_owned(), |s| format!("{s:.2}"));
            writeln!(
                out,
                "{:<24} {:>9} {:>9} {:>9.4} {:>14} {:>11} {:>9}",
                kind, k.rows, k.detected, k.rate, base, rules, share
            )?;
        }
        writeln!(
            out,
            "(fw share: the mean share of firewall.weight_model_anomaly a window of the kind \
             earns live, its score taken without what the rules score themselves)"
        )?;
    }
    if !r.per_source.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "{:<24} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11}",
            "attacking sources",
            "sources",
            "detected",
            "first",
            "latest",
            "rules det.",
            "rules first"
        )?;
        for (kind, k) in &r.per_source {
            let rules = r
                .rule_baseline
                .as_ref()
                .and_then(|b| b.per_source.get(kind));
            writeln!(
                out,
                "{:<24} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11}",
                kind,
                k.sources,
                k.detected,
                opt(k.first_window_median),
                opt(k.first_window_max),
                opt(rules.map(|b| b.detected)),
                opt(rules.and_then(|b| b.first_window_median)),
            )?;
        }
        writeln!(
            out,
            "(first: median window of a detected source's first flag, 1 = its first attacking \
             window; latest: the last such window)"
        )?;
    }
    if let Some(b) = &r.baseline {
        writeln!(out)?;
        writeln!(
            out,
            "baseline (rate-threshold baseline): {} > {:.2}/s; the model {} the baseline on F1",
            b.features.join("+"),
            b.threshold,
            if r.beats_baseline() {
                "beats or ties"
            } else {
                "does NOT beat"
            }
        )?;
    }
    if let Some(b) = &r.rule_baseline {
        let t = b.thresholds;
        writeln!(
            out,
            "rules: any decode/header error, oversized frame, permission denial, timeout, \
             rate limit or refusal; auth_failures >= {}; slow_frame_ms_max > {}; \
             connections_opened > {} (tuned on the training file); the model {} the rules on F1",
            t.auth_failures_min,
            t.slow_frame_ms_over,
            t.connections_opened_over,
            if r.metrics.f1 >= b.metrics.f1 {
                "beats or ties"
            } else {
                "does NOT beat"
            }
        )?;
    }
    Ok(())
}

/// The per-group table: FPR for groups of benign rows, recall for groups of attack rows.
fn print_groups(
    out: &mut dyn Write,
    column: &str,
    groups: &BTreeMap<String, detect::eval::GroupRate>,
) -> std::io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "{:<24} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        format!("by {column}"),
        "rows",
        "benign",
        "fpr",
        "attack",
        "recall",
        "fw share"
    )?;
    let rate = |n: u64, r: f64| {
        if n == 0 {
            "-".to_owned()
        } else {
            format!("{r:.4}")
        }
    };
    for (name, g) in groups {
        writeln!(
            out,
            "{:<24} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9.2}",
            if name.is_empty() { "(none)" } else { name },
            g.rows,
            g.benign,
            rate(g.benign, g.fpr),
            g.attacks,
            rate(g.attacks, g.recall),
            g.firewall_share
        )?;
    }
    Ok(())
}

fn explain(a: ExplainArgs) -> Result<ExitCode> {
    let model = load_model(&a.model)?;
    let data = detect::read_csv(&a.file)?;
    model.check_data(&data)?;
    let values = data.values();
    let mut scored: Vec<(f64, usize)> = (0..data.rows())
        .map(|i| {
            let row = values.row(i);
            let s = match row.as_slice() {
                Some(v) => model.score(v),
                None => model.score(&row.to_vec()),
            };
            (s, i)
        })
        .collect();
    scored.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    let anomalous = scored
        .iter()
        .filter(|(s, _)| *s > model.threshold())
        .count();
    with_stdout(|out| {
        if !a.json {
            writeln!(
                out,
                "{} of {} windows above the threshold {:.4}; the {} highest scores:",
                anomalous,
                data.rows(),
                model.threshold(),
                a.limit.min(scored.len())
            )?;
        }
        for &(_, i) in scored.iter().take(a.limit) {
            let v = model.verdict_values(&values.row(i).to_vec());
            if a.json {
                let line = serde_json::json!({
                    "source": data.source(i),
                    "window_start_ms": data.window_start_ms(i),
                    "window_ms": data.window_ms(i),
                    "label": data.label(i),
                    "verdict": v,
                });
                writeln!(out, "{line}")?;
            } else {
                writeln!(
                    out,
                    "{} @{} ({} ms){}: {}",
                    data.source(i),
                    data.window_start_ms(i),
                    data.window_ms(i),
                    data.label(i).map(|l| format!(" [{l}]")).unwrap_or_default(),
                    v
                )?;
            }
        }
        Ok(())
    })
}
