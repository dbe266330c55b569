//! Synthetic feature rows, for tests, benchmarks and the scikit-learn comparison: never for a
//! real model (datasets/ holds recorded traffic for that).
//!
//! Benign rows come from a few "behaviours", each a level per feature spread over orders of
//! magnitude, with log-normal noise; every fourth feature is a sparse count that benign rows
//! rarely use. Attack rows are benign rows with one to three features pushed far off.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::data::{Dataset, RowSpec};
use super::{DetectError, BENIGN};

/// Attack labels used, in turn.
pub const ATTACK_KINDS: [&str; 3] = ["flood", "probe", "slow"];

/// `rows` rows over `features`, of which about `attack_fraction` are attacks, from `seed`.
pub fn dataset(
    features: &[&str],
    rows: usize,
    attack_fraction: f64,
    seed: u64,
) -> Result<Dataset, DetectError> {
    const BEHAVIOURS: usize = 5;
    let d = features.len();
    // Behaviour levels: a seeded profile that does not depend on `rows`.
    let mut prof = StdRng::seed_from_u64(0x005e_ed0f_5eed);
    let levels: Vec<f64> = (0..BEHAVIOURS * d)
        .map(|i| {
            if (i % d) % 4 == 3 {
                0.0
            } else {
                10f64.powf(prof.gen_range(0.0..4.0))
            }
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut flat = Vec::with_capacity(rows * d);
    let mut labels = Vec::with_capacity(rows);
    for _ in 0..rows {
        let b = rng.gen_range(0..BEHAVIOURS);
        for j in 0..d {
            let level = levels[b * d + j];
            let v = if level == 0.0 {
                if rng.gen_bool(0.01) {
                    f64::from(rng.gen_range(1..3u8))
                } else {
                    0.0
                }
            } else {
                // Log-normal noise, about ±30 %.
                let n: f64 = (0..4).map(|_| rng.gen_range(-0.5..0.5)).sum::<f64>() * 0.5;
                (level * n.exp()).round()
            };
            flat.push(v);
        }
        let label = if rng.gen_bool(attack_fraction) {
            let kind = rng.gen_range(0..ATTACK_KINDS.len());
            let start = flat.len() - d;
            let row = &mut flat[start..];
            for _ in 0..=kind {
                let j = rng.gen_range(0..d);
                row[j] = (row[j] + 50.0) * rng.gen_range(100.0..1000.0);
            }
            ATTACK_KINDS[kind]
        } else {
            BENIGN
        };
        labels.push(label);
    }
    let specs = (0..rows).map(|i| RowSpec {
        source: if labels[i] == BENIGN {
            "127.0.0.1"
        } else {
            "127.0.1.1"
        },
        window_start_ms: i as i64 * 1000,
        window_ms: 1000,
        values: &flat[i * d..(i + 1) * d],
        label: Some(labels[i]),
    });
    Dataset::from_rows(
        features.iter().map(|f| (*f).to_owned()).collect(),
        true,
        specs,
    )
}
