//! Training data from a server's own recording: the activity database of a data directory
//! run through the same [`Extractor`] as `rampart activity export`, in memory, keeping only
//! the windows of sources that gave no reason for suspicion.
//!
//! A source is kept only if it was never decided on (no `block`, `shadow_block` or
//! `allowed` row in `decisions`), is not labelled as an attack, and none of its windows
//! holds a rule event ([`RULE_FEATURES`]: broken frames, auth failures, permission
//! denials, rate limits, timeouts, refusals). The model then learns what this server's
//! users do, which a bench recording cannot know; a source with one bad window is dropped
//! whole, since its other windows belong to the same behaviour.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use super::data::{Dataset, RowSpec};
use super::DetectError;
use crate::activity::db;
use crate::activity::export::{self, BENIGN, EXPORT_MAX_SOURCES};
use crate::activity::features::{feature_index, Extractor, FeatureRow, FEATURES};
use crate::guard::SourceKey;

/// Features that count rule events: a window with any of them above zero hit a rule.
pub const RULE_FEATURES: [&str; 10] = [
    "refused",
    "decode_errors",
    "header_errors",
    "frame_too_large",
    "auth_failures",
    "permission_denials",
    "rate_limit_hits",
    "timeouts",
    "frame_timeouts",
    "write_timeouts",
];

/// Decision actions that mark a source as suspect.
const SUSPECT_ACTIONS: [&str; 3] = ["block", "shadow_block", "allowed"];

/// What [`clean_windows`] kept and dropped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordedSummary {
    /// Events read.
    pub events: u64,
    /// Windows the extractor produced.
    pub windows: u64,
    /// Sources seen.
    pub sources: u64,
    /// Sources dropped because a decision named them or a label called them an attack.
    pub decided_sources: u64,
    /// Sources dropped because one of their windows hit a rule.
    pub rule_sources: u64,
    /// Windows kept.
    pub kept_windows: u64,
}

fn source_key(text: &str, ipv6_prefix: u8) -> Option<SourceKey> {
    match text.parse::<IpAddr>() {
        Ok(ip) => Some(SourceKey::from_ip(ip, ipv6_prefix)),
        Err(_) => text.parse::<SourceKey>().ok(),
    }
}

/// Whether `row` holds a rule event.
pub fn hit_a_rule(values: &[f64]) -> bool {
    RULE_FEATURES
        .iter()
        .filter_map(|f| feature_index(f))
        .any(|i| values.get(i).is_some_and(|v| *v > 0.0))
}

/// The windows (of `window`) of the clean sources of `data_dir`'s activity database, as an
/// unlabelled dataset with the extractor's features, and what was kept. Fails if the
/// directory has no activity database or fewer than `min_windows` windows are clean.
pub fn clean_windows(
    data_dir: &Path,
    window: Duration,
    min_windows: usize,
) -> Result<(Dataset, RecordedSummary), DetectError> {
    let path = db::path(data_dir);
    let db_err = |e: db::ActivityError| DetectError::Recorded {
        path: path.clone(),
        reason: e.to_string(),
    };
    if !path.is_file() {
        return Err(DetectError::Recorded {
            path: path.clone(),
            reason: "no activity database: run `rampart serve` with activity.enabled = true first"
                .into(),
        });
    }
    let conn = db::open(data_dir).map_err(db_err)?;
    let mut extractor = Extractor::new(window, EXPORT_MAX_SOURCES);
    let prefix = extractor.ipv6_prefix();
    let mut suspect: BTreeSet<SourceKey> = BTreeSet::new();
    for d in db::decisions(&conn).map_err(db_err)? {
        if SUSPECT_ACTIONS.contains(&d.action.as_str()) {
            suspect.extend(source_key(&d.source, prefix));
        }
    }
    for (source, label) in db::labels(&conn).map_err(db_err)? {
        if label != BENIGN {
            suspect.extend(source_key(&source, prefix));
        }
    }
    let mut rows: Vec<FeatureRow> = Vec::new();
    let events =
        export::replay(&conn, &mut extractor, |closed| rows.extend(closed)).map_err(db_err)?;
    let mut by_source: BTreeMap<SourceKey, bool> = BTreeMap::new();
    for r in &rows {
        *by_source.entry(r.source).or_insert(false) |= hit_a_rule(&r.values);
    }
    let mut summary = RecordedSummary {
        events,
        windows: rows.len() as u64,
        sources: by_source.len() as u64,
        ..RecordedSummary::default()
    };
    for (source, hit) in &by_source {
        if suspect.contains(source) {
            summary.decided_sources += 1;
        } else if *hit {
            summary.rule_sources += 1;
        }
    }
    let texts: Vec<String> = rows.iter().map(|r| r.source.to_string()).collect();
    let kept = rows.iter().zip(&texts).filter(|(r, _)| {
        !suspect.contains(&r.source) && !by_source.get(&r.source).copied().unwrap_or(true)
    });
    let features: Vec<String> = FEATURES.iter().map(|f| (*f).to_owned()).collect();
    let data = Dataset::from_rows(
        features,
        false,
        kept.map(|(r, text)| RowSpec {
            source: text,
            window_start_ms: r.window_start_ms,
            window_ms: r.window_ms,
            values: &r.values,
            label: None,
        }),
    )?;
    summary.kept_windows = data.rows() as u64;
    if data.rows() < min_windows {
        return Err(DetectError::NotEnoughRows {
            what: format!(
                "training on the recording in {} ({} windows of {} sources; {} sources \
                 dropped for a firewall decision or attack label, {} for hitting a rule)",
                data_dir.display(),
                summary.windows,
                summary.sources,
                summary.decided_sources,
                summary.rule_sources
            ),
            needed: min_windows,
            have: data.rows(),
        });
    }
    Ok((data, summary))
}
