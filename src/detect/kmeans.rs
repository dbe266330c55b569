//! k-means on scaled rows: linfa picks the starting centroids, then Lloyd iterations of our own
//! run over every row.
//!
//! linfa-clustering's `KMeans` (k-means++, seeded, `n_init` runs) sees a seeded sample of at
//! most [`INIT_SAMPLE`] rows and picks the starting centroids. Lloyd iterations then run over
//! every fit row with scikit-learn's stopping rule (labels unchanged, or the squared centroid
//! shift at most `tolerance` × the mean feature variance). linfa's own Lloyd loop walks
//! ndarray views row by row and costs about 0.3 s per iteration on a million rows (and 1 s
//! for k-means++ on all of them), so it cannot train a million rows in 2 s
//! (docs/PERFORMANCE.md has the measurements); the loop here works on flat arrays over the
//! fixed blocks of `par.rs`, in parallel, with a result that does not depend on the
//! thread count.

use linfa::prelude::*;
use linfa_clustering::KMeans;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::params::{ParamError, MAX_K};
use super::sample::{sample_matrix, sample_rows};
use super::{kernel, par, DetectError};

/// Rows of the sample linfa's k-means++ and first Lloyd runs see to choose the starting
/// centroids: enough for k ≤ 32 well-separated behaviours, small enough to cost milliseconds.
pub const INIT_SAMPLE: usize = 16_384;

/// The result of [`kmeans`].
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansFit {
    /// Centroids, row-major `k × d` (empty clusters included).
    pub centroids: Vec<f64>,
    /// Clusters.
    pub k: usize,
    /// Lloyd iterations over all rows.
    pub iterations: u64,
    /// Whether it stopped before `max_iterations`.
    pub converged: bool,
    /// Each row's cluster after the last iteration.
    pub labels: Vec<u32>,
    /// Each row's squared distance to its centroid.
    pub sq_dists: Vec<f64>,
}

/// Partial sums of one block of rows in one Lloyd iteration.
struct Partial {
    sums: Vec<f64>,
    counts: Vec<u64>,
    labels: Vec<u32>,
    sq: Vec<f64>,
    changed: usize,
}

/// k-means on row-major scaled rows: linfa's `KMeans` (k-means++, `n_init` runs, seeded) on a
/// sample of at most [`INIT_SAMPLE`] rows for the starting centroids, then Lloyd iterations
/// over all rows until the labels stop changing, the squared centroid shift is at most
/// `tolerance` × the mean feature variance (scikit-learn's rule), or `max_iterations`.
pub fn kmeans(
    z: &[f64],
    d: usize,
    k: usize,
    n_init: usize,
    max_iterations: u64,
    tolerance: f64,
    seed: u64,
) -> Result<KMeansFit, DetectError> {
    let n = z.len() / d.max(1);
    if k == 0 || k > n || k > MAX_K {
        return Err(ParamError::KAboveRows { k, rows: n }.into());
    }
    let tol = tolerance * mean_variance(z, d);
    let mut centroids = init_centroids(z, d, k, n_init, max_iterations, tol, seed)?;
    let mut labels = vec![u32::MAX; n];
    let mut iterations = 0;
    let mut converged = false;
    while iterations < max_iterations {
        iterations += 1;
        let parts = lloyd_pass(z, d, k, &centroids, &labels);
        let mut sums = vec![0.0; k * d];
        let mut counts = vec![0u64; k];
        let mut changed = 0;
        let mut next = Vec::with_capacity(n);
        for p in parts {
            for (s, v) in sums.iter_mut().zip(&p.sums) {
                *s += v;
            }
            for (c, v) in counts.iter_mut().zip(&p.counts) {
                *c += v;
            }
            changed += p.changed;
            next.extend_from_slice(&p.labels);
        }
        labels = next;
        let mut shift = 0.0;
        for c in 0..k {
            if counts[c] == 0 {
                // An empty cluster keeps its centroid; it is dropped from the model.
                continue;
            }
            let inv = 1.0 / counts[c] as f64;
            for j in 0..d {
                let new = sums[c * d + j] * inv;
                let old = centroids[c * d + j];
                shift += (new - old) * (new - old);
                centroids[c * d + j] = new;
            }
        }
        if changed == 0 {
            converged = true;
            break;
        }
        if shift <= tol {
            converged = true;
            break;
        }
    }
    // Final assignment against the final centroids (scikit-learn does the same).
    let parts = lloyd_pass(z, d, k, &centroids, &labels);
    let mut sq_dists = Vec::with_capacity(n);
    let mut labels = Vec::with_capacity(n);
    for p in parts {
        labels.extend_from_slice(&p.labels);
        sq_dists.extend_from_slice(&p.sq);
    }
    Ok(KMeansFit {
        centroids,
        k,
        iterations,
        converged,
        labels,
        sq_dists,
    })
}

/// One assignment pass: per block, each row's nearest centroid, its squared distance, and the
/// block's per-cluster sums and counts.
fn lloyd_pass(z: &[f64], d: usize, k: usize, centroids: &[f64], old: &[u32]) -> Vec<Partial> {
    let kp = kernel::padded(k);
    let ct = kernel::transpose(centroids, k, d, kp, 0.0);
    let init = kernel::start(k, kp);
    let n = z.len() / d;
    par::map_blocks(n, |range| {
        let mut p = Partial {
            sums: vec![0.0; k * d],
            counts: vec![0; k],
            labels: Vec::with_capacity(range.len()),
            sq: Vec::with_capacity(range.len()),
            changed: 0,
        };
        for (row, &was) in z[range.start * d..range.end * d]
            .chunks_exact(d)
            .zip(&old[range])
        {
            let (best, dist) = kernel::nearest_plain(kp, row, &ct, &init);
            if was != best as u32 {
                p.changed += 1;
            }
            p.labels.push(best as u32);
            p.sq.push(dist);
            p.counts[best] += 1;
            for (s, &x) in p.sums[best * d..(best + 1) * d].iter_mut().zip(row) {
                *s += x;
            }
        }
        p
    })
}

/// Mean over features of each feature's variance (population), computed per block and
/// combined in block order.
fn mean_variance(z: &[f64], d: usize) -> f64 {
    let n = z.len() / d;
    if n == 0 {
        return 0.0;
    }
    let parts = par::map_blocks(n, |range| {
        let mut s = vec![0.0; d];
        let mut s2 = vec![0.0; d];
        for i in range {
            for ((a, b), &x) in s.iter_mut().zip(s2.iter_mut()).zip(&z[i * d..(i + 1) * d]) {
                *a += x;
                *b += x * x;
            }
        }
        (s, s2)
    });
    let mut s = vec![0.0; d];
    let mut s2 = vec![0.0; d];
    for (a, b) in parts {
        s.iter_mut().zip(&a).for_each(|(x, y)| *x += y);
        s2.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
    }
    let nf = n as f64;
    s.iter()
        .zip(&s2)
        .map(|(a, b)| (b / nf - (a / nf) * (a / nf)).max(0.0))
        .sum::<f64>()
        / d as f64
}

/// Starting centroids from linfa's k-means on a sample.
fn init_centroids(
    z: &[f64],
    d: usize,
    k: usize,
    n_init: usize,
    max_iterations: u64,
    tol: f64,
    seed: u64,
) -> Result<Vec<f64>, DetectError> {
    let n = z.len() / d;
    let sample = sample_matrix(z, d, &sample_rows(n, INIT_SAMPLE, seed))?;
    let fit = KMeans::params_with_rng(k, StdRng::seed_from_u64(seed))
        .n_runs(n_init)
        .max_n_iterations(max_iterations)
        // linfa compares the (unsquared) centroid shift with its tolerance.
        .tolerance(tol.sqrt().max(f64::MIN_POSITIVE))
        .fit(&DatasetBase::from(sample))
        .map_err(|e| DetectError::Fit {
            algo: "kmeans",
            reason: e.to_string(),
        })?;
    Ok(fit.centroids().iter().copied().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn kmeans_finds_separated_blobs() -> Result<(), DetectError> {
        let mut rng = StdRng::seed_from_u64(5);
        let d = 3;
        let mut z = Vec::new();
        for i in 0..30_000 {
            let c = (i % 3) as f64 * 10.0;
            for _ in 0..d {
                z.push(c + rng.gen_range(-1.0..1.0));
            }
        }
        let km = kmeans(&z, d, 3, 1, 300, 1e-4, 1)?;
        assert!(km.converged);
        let mut firsts: Vec<i64> = (0..3).map(|c| km.centroids[c * d].round() as i64).collect();
        firsts.sort_unstable();
        assert_eq!(firsts, vec![0, 10, 20]);
        Ok(())
    }
}
