//! Features per (source, window): the one extractor that both the live detector (a
//! [`WindowSink`](super::WindowSink) on the recorder's writer thread) and `rampart activity
//! export` run, so the model scores in production exactly what it was trained on (no
//! training/serving skew). Every feature is documented in `docs/DETECTION.md`.
//!
//! - `schema`: [`FEATURES`] and [`FEATURE_SCHEMA_VERSION`], what each event adds to a
//!   window, and the decayed per-source history; a [`FeatureRow`] holds one row's values.
//! - `window`: the [`Extractor`]: aligned windows per source, idle rows, late events,
//!   bounded memory ([`ExtractorStats`]), and window lengths ([`parse_window`]).

mod schema;
mod window;

pub use schema::{
    feature_index, FeatureRow, FEATURES, FEATURE_SCHEMA_VERSION, GAP_CAP_MS, HISTORY_HALF_LIFE_MS,
    SLOW_FRAME_GRACE_MS,
};
pub use window::{
    format_window, parse_window, Extractor, ExtractorStats, WindowError, DEFAULT_IPV6_PREFIX,
    FORGET_AFTER_MS, IDLE_ROWS_MAX_MS, IDLE_ROWS_MAX_WINDOWS, MAX_WINDOW,
};

#[cfg(test)]
mod tests;
