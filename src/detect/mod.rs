//! Detection: learn what normal traffic looks like from feature CSVs, and score new windows
//! against it (unsupervised novelty detection; docs/DETECTION.md, "Model", says why).
//!
//! Data flows through the submodules in this order:
//!
//! - [`data`]: feature CSVs (`source,window_start_ms,window_ms,<features...>[,label]`) read
//!   into one row-major matrix, every value checked finite.
//! - [`scaler`]: the fixed `slog1p` transform and the robust per-feature scaler.
//! - [`params`]: hyperparameters as given ([`TrainSpec`]), checked into [`TrainParams`].
//! - [`kmeans`](mod@kmeans): linfa's k-means++ on a sample for the starting centroids, then
//!   Lloyd iterations over every row, in fixed blocks on rayon's pool.
//! - [`train`](mod@train): the pipeline: split, scale, fit (k-means or linfa's Gaussian
//!   mixture), per-cluster spreads and radii, and the threshold calibrated on held-out
//!   benign rows.
//! - [`model`]: the [`Model`] file (JSON) and its fast, allocation-free [`Model::score`];
//!   [`Model::verdict`] explains a score with the features that contributed most.
//! - [`eval`]: precision, recall, F1, FPR, ROC AUC, PR AUC, the confusion matrix, per-kind
//!   detection rates, and the same figures for a plain rate-threshold baseline.
//! - [`select`]: with several candidate seeds, which model to keep, judged on the training
//!   file's own labelled rows.
//! - [`rules`]: the rule baseline (decode errors, auth failures, timeouts, ...), its
//!   thresholds tuned on a training file, reported next to the model.
//! - [`synth`]: synthetic rows for tests, benches and the scikit-learn comparison.
//! - [`recorded`]: training windows from a server's own activity database, of the sources
//!   that never hit a rule and were never decided on.
//! - [`live`]: a [`WindowSink`](crate::activity::WindowSink) that runs the one feature
//!   extractor on the recorder's batches and reports anomalous sources.
//!
//! Invariant: nothing here does network IO; scoring one window runs on the caller's thread
//! and is O(features × clusters) with no allocation, so a peer cannot make the detector do
//! unbounded work (DESIGN.md, decision 9). Only training and evaluation use rayon's pool.

pub mod data;
pub mod eval;
mod kernel;
pub mod kmeans;
pub mod live;
pub mod model;
mod par;
pub mod params;
mod quantile;
pub mod recorded;
pub mod rules;
mod sample;
pub mod scaler;
pub mod select;
pub mod synth;
pub mod train;

use std::path::PathBuf;

pub use data::{read_csv, read_csvs, Dataset, BENIGN};
pub use eval::{evaluate, EvalReport, Metrics};
pub use live::{LiveCounters, LiveScorer, LiveStats, OnAnomaly, OnWindow};
pub use model::{Contribution, Model, Schema, Verdict};
pub use params::{Algo, ParamError, TrainParams, TrainSpec};
pub use scaler::{slog1p, Scaler};
pub use train::{train, Trained};

/// Where the default model came from, for messages and reports.
pub const DEFAULT_MODEL_NAME: &str = "datasets/model.json";

/// The default model file, built into the binary: `rampart model train datasets/train.csv`
/// with every setting at its default (datasets/README.md regenerates it; a test checks it is
/// exactly what that command writes).
pub const DEFAULT_MODEL_JSON: &str = include_str!("../../datasets/model.json");

/// The default model, read from [`DEFAULT_MODEL_JSON`].
pub fn default_model() -> Result<Model, DetectError> {
    Model::from_json(
        DEFAULT_MODEL_JSON.as_bytes(),
        std::path::Path::new(DEFAULT_MODEL_NAME),
    )
}

/// Everything that can go wrong while reading data, training, loading a model or scoring.
/// Variants say which file, row and column; messages are lower case, without a period.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The CSV reader failed (broken quoting, invalid UTF-8, a row with the wrong number of
    /// fields).
    #[error("{path}: {source}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: csv::Error,
    },
    /// The header lacks one of the fixed leading columns (`source`, `window_start_ms`,
    /// `window_ms`), in that order.
    #[error("{path}: column {position} of the header must be `{expected}`, found `{found}`")]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// 1-based column number.
        position: usize,
        /// The column the schema needs there.
        expected: &'static str,
        /// What the header has there (empty if the header is too short).
        found: String,
    },
    /// The header has no feature columns at all.
    #[error("{path}: the header has no feature columns")]
    NoFeatures {
        /// The file.
        path: PathBuf,
    },
    /// A feature column name appears twice.
    #[error("{path}: feature column `{column}` appears twice")]
    DuplicateColumn {
        /// The file.
        path: PathBuf,
        /// The repeated name.
        column: String,
    },
    /// Two input files, or a model and a file, disagree on the feature columns. `position` is
    /// the 1-based feature number (not counting the leading columns); `None` on one side
    /// means that side has fewer features.
    #[error(
        "{path}: feature column {position} is {} but {what} expects {}",
        show(.found), show(.expected)
    )]
    SchemaMismatch {
        /// The file whose header differs.
        path: PathBuf,
        /// What it was compared against ("the model", or the first file's name).
        what: String,
        /// 1-based position of the first differing feature.
        position: usize,
        /// The expected name there.
        expected: Option<String>,
        /// The name found there.
        found: Option<String>,
    },
    /// A model's feature schema version differs from the extractor's.
    #[error("the model's feature schema is version {model}, this build extracts version {code}: retrain the model")]
    SchemaVersion {
        /// Version stored in the model.
        model: u32,
        /// [`FEATURE_SCHEMA_VERSION`](crate::activity::features::FEATURE_SCHEMA_VERSION).
        code: u32,
    },
    /// A field is not a number (or not an integer where one is required).
    #[error("{path}: line {line}, column `{column}`: `{value}` is not {expected}")]
    NotANumber {
        /// The file.
        path: PathBuf,
        /// 1-based line number in the file (the header is line 1).
        line: u64,
        /// Column name.
        column: String,
        /// The field as read.
        value: String,
        /// "a number" or "an integer".
        expected: &'static str,
    },
    /// A feature value is NaN or infinite.
    #[error("{path}: line {line}, column `{column}`: `{value}` is not a finite number")]
    NotFinite {
        /// The file.
        path: PathBuf,
        /// 1-based line number in the file.
        line: u64,
        /// Column name.
        column: String,
        /// The field as read.
        value: String,
    },
    /// A label is empty.
    #[error("{path}: line {line}: empty label (use `benign` or an attack kind)")]
    EmptyLabel {
        /// The file.
        path: PathBuf,
        /// 1-based line number in the file.
        line: u64,
    },
    /// The operation needs a `label` column and the data has none.
    #[error("the data has no `label` column: evaluation needs labelled rows")]
    NoLabels,
    /// Too few rows for what was asked.
    #[error("not enough rows: {what} needs at least {needed}, the data has {have}")]
    NotEnoughRows {
        /// What needed them.
        what: String,
        /// Rows needed.
        needed: usize,
        /// Rows available.
        have: usize,
    },
    /// A server's recording could not be read for training.
    #[error("{path}: {reason}")]
    Recorded {
        /// The activity database.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A hyperparameter is out of range.
    #[error("invalid parameter: {0}")]
    Param(#[from] params::ParamError),
    /// linfa's k-means or Gaussian mixture failed.
    #[error("{algo} fit failed: {reason}")]
    Fit {
        /// "kmeans" or "gmm".
        algo: &'static str,
        /// linfa's message.
        reason: String,
    },
    /// A model file is not valid JSON of the expected shape.
    #[error("{path}: not a rampart model file: {source}")]
    ModelJson {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// A model file parses but its contents are inconsistent (wrong lengths, non-finite
    /// numbers, an unknown format version).
    #[error("invalid model: {0}")]
    BadModel(String),
}

/// Formats one side of a schema comparison.
fn show(name: &Option<String>) -> String {
    match name {
        Some(n) => format!("`{n}`"),
        None => "missing".to_owned(),
    }
}

/// A matrix built from rows of the wrong length: a bug, reported rather than panicking.
pub(crate) fn shape_err(e: ndarray::ShapeError) -> DetectError {
    DetectError::BadModel(format!("inconsistent matrix shape: {e}"))
}

/// Compares feature names position by position and returns the first difference as
/// `(1-based position, expected, found)`.
pub(crate) fn first_difference(
    expected: &[String],
    found: &[String],
) -> Option<(usize, Option<String>, Option<String>)> {
    let n = expected.len().max(found.len());
    (0..n).find_map(|i| {
        let e = expected.get(i);
        let f = found.get(i);
        (e != f).then(|| (i + 1, e.cloned(), f.cloned()))
    })
}
