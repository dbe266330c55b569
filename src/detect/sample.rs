//! Seeded samples of row-major scaled rows: linfa's k-means++ and Gaussian mixture fit on at
//! most a fixed number of rows, drawn here.

use ndarray::Array2;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::{shape_err, DetectError};

/// A seeded sample of at most `max` row indices of `0..n`, in ascending order.
pub(super) fn sample_rows(n: usize, max: usize, seed: u64) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut idx = rand::seq::index::sample(&mut rng, n, max).into_vec();
    idx.sort_unstable();
    idx
}

/// The chosen rows of row-major `z` (`d` values each), as a matrix.
pub(super) fn sample_matrix(
    z: &[f64],
    d: usize,
    rows: &[usize],
) -> Result<Array2<f64>, DetectError> {
    let mut flat = Vec::with_capacity(rows.len() * d);
    for &i in rows {
        flat.extend_from_slice(&z[i * d..(i + 1) * d]);
    }
    Array2::from_shape_vec((rows.len(), d), flat).map_err(shape_err)
}
