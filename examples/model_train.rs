//! Times model training on a feature CSV, side by side with `benches/sklearn_kmeans.py`.
//!
//! ```sh
//! # Write 1M synthetic rows (the extractor's 38 features) and time training on them:
//! cargo run --release --example model_train -- --synth 1000000 --write /tmp/synth.csv
//! # Time training on an existing CSV, then scikit-learn on the same file and settings:
//! cargo run --release --example model_train -- --csv /tmp/synth.csv --k 8 --seed 42
//! python3 benches/sklearn_kmeans.py /tmp/synth.csv --k 8 --seed 42
//! ```
//!
//! It prints two timings: `rampart model train` as a whole (split, scaling, k-means on the
//! fit rows, calibration), and k-means alone on every benign row after the same transform and
//! scaling the Python script applies, which is what scikit-learn's `KMeans.fit` is timed on.

use std::path::PathBuf;
use std::time::Instant;

use rampart::activity::features::FEATURES;
use rampart::detect::{self, kmeans::kmeans, scaler::Scaler, slog1p, TrainSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut synth, mut write, mut csv) = (None, None, None);
    let mut attacks = 0.0;
    let mut repeat = 1;
    let mut spec = TrainSpec::default();
    let mut d = FEATURES.len();
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--synth" => synth = Some(val()?.parse::<usize>()?),
            "--attacks" => attacks = val()?.parse::<f64>()?,
            "--repeat" => repeat = val()?.parse::<usize>()?.max(1),
            "--features" => d = val()?.parse::<usize>()?.min(FEATURES.len()),
            "--write" => write = Some(PathBuf::from(val()?)),
            "--csv" => csv = Some(PathBuf::from(val()?)),
            "--k" => spec = spec.k(val()?.parse()?),
            "--seed" => spec = spec.seed(val()?.parse()?),
            "--max-iter" => spec = spec.max_iterations(val()?.parse()?),
            "--tol" => spec = spec.tolerance(val()?.parse()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let params = spec.check()?;
    let t = Instant::now();
    let data = match (synth, &csv) {
        (Some(n), _) => {
            let ds = detect::synth::dataset(&FEATURES[..d], n, attacks, params.seed())?;
            println!("generated {n} rows x {d} features in {:.3} s", secs(t));
            if let Some(p) = &write {
                let t = Instant::now();
                ds.write_csv(p)?;
                println!("wrote {} in {:.3} s", p.display(), secs(t));
            }
            ds
        }
        (None, Some(p)) => {
            let ds = detect::read_csv(p)?;
            println!(
                "read {} rows x {} features from {} in {:.3} s",
                ds.rows(),
                ds.features().len(),
                p.display(),
                secs(t)
            );
            ds
        }
        (None, None) => return Err("give --synth ROWS or --csv FILE".into()),
    };
    println!(
        "settings: k={} n_init={} max_iter={} tol={} seed={}",
        params.k(),
        params.n_init(),
        params.max_iterations(),
        params.tolerance(),
        params.seed()
    );

    let mut totals = Vec::new();
    for _ in 0..repeat {
        let trained = detect::train(&data, &params)?;
        let tm = trained.timings;
        let s = trained.model.training();
        println!(
            "  train run: {:.3} s (prepare {:.3} s, fit {:.3} s in {} iterations, calibrate {:.3} s) on {} fit rows",
            tm.total.as_secs_f64(),
            tm.prepare.as_secs_f64(),
            tm.fit.as_secs_f64(),
            s.iterations.unwrap_or(0),
            tm.calibrate.as_secs_f64(),
            s.fit_rows
        );
        totals.push(tm.total.as_secs_f64());
    }
    println!(
        "rampart model train: {:.3} s (median of {repeat})",
        median(&mut totals)
    );

    // k-means alone on every benign row, after the transform the Python script applies.
    let t = Instant::now();
    let d = data.features().len();
    let rows: Vec<usize> = (0..data.rows()).filter(|&i| data.is_benign(i)).collect();
    let mut z: Vec<f64> = Vec::with_capacity(rows.len() * d);
    for &i in &rows {
        z.extend(data.row(i).iter().map(|&v| slog1p(v)));
    }
    let scaler = Scaler::fit(
        ndarray::ArrayView2::from_shape((rows.len(), d), &z)?,
        params.min_scale(),
    );
    scaler.scale_rows(&mut z);
    let prep = secs(t);
    let mut fits = Vec::new();
    let mut iterations = 0;
    for _ in 0..repeat {
        let t = Instant::now();
        let km = kmeans(
            &z,
            d,
            params.k(),
            params.n_init(),
            params.max_iterations(),
            params.tolerance(),
            params.seed(),
        )?;
        fits.push(secs(t));
        iterations = km.iterations;
        let inertia: f64 = km.sq_dists.iter().sum();
        println!(
            "  kmeans run: {:.3} s, {} iterations, converged {}, inertia {inertia:.6e}",
            fits[fits.len() - 1],
            km.iterations,
            km.converged
        );
    }
    println!(
        "rampart kmeans: fit {:.3} s (median of {repeat}; {iterations} iterations) on {} rows; transform+scale {prep:.3} s",
        median(&mut fits),
        rows.len()
    );
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}
