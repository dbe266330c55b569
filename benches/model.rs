//! The detection model's costs: a verdict per feature vector, and training on a million rows.
//!
//! - `score`: [`Model::score`] over a fixed batch of 1024 feature vectors (seeded synthetic
//!   rows of the extractor's schema, benign and attack mixed), for k-means with k = 1, 4, 8
//!   and 16, with the extractor's 38 features and with the first 20 of them, and for the
//!   Gaussian mixture with k = 4. Criterion reports time per batch and vectors per second;
//!   time per vector is the batch time / 1024.
//! - `verdict`: [`Model::verdict_values`] on one anomalous vector (score plus the top-feature
//!   explanation, which allocates; only anomalous windows pay it).
//! - `train`: [`detect::train`] on 1 000 000 seeded synthetic benign rows with the default
//!   hyperparameters but k = 8 (seed 42, tolerance 1e-4, max 300 iterations): the 80/20 split,
//!   transform, scaling, k-means and calibration. The rows are generated once, outside the
//!   measurement.
//!
//! docs/PERFORMANCE.md records the results and how they were taken; benches/sklearn_kmeans.py
//! times scikit-learn's KMeans on the same rows.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use rampart::activity::features::FEATURES;
use rampart::detect::{self, synth, Algo, Model, TrainSpec};

/// Vectors per scoring batch.
const BATCH: usize = 1024;

/// Rows in the training benchmark.
const TRAIN_ROWS: usize = 1_000_000;

fn model(features: &[&str], algo: Algo, k: usize) -> Model {
    let data = synth::dataset(features, 20_000, 0.0, 1).expect("synthetic rows are valid");
    let params = TrainSpec::default()
        .algo(algo)
        .k(k)
        .seed(42)
        .check()
        .expect("valid parameters");
    detect::train(&data, &params)
        .expect("training succeeds on synthetic rows")
        .model
}

fn vectors(features: &[&str]) -> Vec<Vec<f64>> {
    let data = synth::dataset(features, BATCH, 0.1, 2).expect("synthetic rows are valid");
    (0..BATCH).map(|i| data.row(i).to_vec()).collect()
}

fn score(c: &mut Criterion) {
    let mut g = c.benchmark_group("score");
    g.throughput(Throughput::Elements(BATCH as u64));
    for d in [FEATURES.len(), 20] {
        let features = &FEATURES[..d];
        let batch = vectors(features);
        let mut cases: Vec<(Algo, usize)> = [1, 4, 8, 16].map(|k| (Algo::Kmeans, k)).to_vec();
        cases.push((Algo::Gmm, 4));
        for (algo, k) in cases {
            let m = model(features, algo, k);
            g.bench_with_input(
                BenchmarkId::new(format!("{algo}/d{d}"), k),
                &batch,
                |b, batch| {
                    b.iter(|| {
                        let mut s = 0.0;
                        for v in batch {
                            s += m.score(black_box(v));
                        }
                        s
                    })
                },
            );
        }
    }
    g.finish();
}

fn verdict(c: &mut Criterion) {
    let m = model(FEATURES, Algo::Kmeans, 8);
    let mut v = vectors(FEATURES)[0].clone();
    v[0] = 1e6;
    c.bench_function("verdict/kmeans/d38/8", |b| {
        b.iter(|| m.verdict_values(black_box(&v)))
    });
}

fn train(c: &mut Criterion) {
    let data = synth::dataset(FEATURES, TRAIN_ROWS, 0.0, 42).expect("synthetic rows are valid");
    let params = TrainSpec::default().k(8).check().expect("valid parameters");
    let mut g = c.benchmark_group("train");
    g.sample_size(10);
    g.throughput(Throughput::Elements(TRAIN_ROWS as u64));
    g.bench_function(BenchmarkId::new("kmeans/d38/8", TRAIN_ROWS), |b| {
        b.iter(|| detect::train(black_box(&data), &params).expect("training succeeds"))
    });
    g.finish();
}

criterion_group!(benches, score, verdict, train);
criterion_main!(benches);
