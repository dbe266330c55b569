//! The inner loops: squared distances from one vector to every cluster at once.
//!
//! Centroids are stored transposed (`ct[j * kp + c]`, feature-major), so that for each feature
//! the loop over clusters is a fixed-width run of independent lanes the compiler vectorizes.
//! The width `kp` is k rounded up to 8, 16 or 32 ([`padded`]; a width of 4 measured slower
//! than 8 on this machine); the padding clusters start at +∞ and so never win. Monomorphizing on the width removes every bound check and loop
//! tail from the hot loops.
//!
//! Training (Lloyd's assignment step) runs in `f64`. The verdict path runs in `f32`: the
//! machine baseline (x86-64 without AVX) has 128-bit vectors, so `f32` halves the work per
//! vector, and a distance in units of cluster spreads needs no more than 7 digits. The
//! trainer calibrates the threshold with this same `f32` scorer, so scores and threshold
//! agree exactly.

use super::scaler::slog1p_f32;

/// Widths the kernels are compiled for.
pub(crate) const WIDTHS: [usize; 3] = [8, 16, 32];

/// k rounded up to a kernel width (k ≤ 32).
pub(crate) fn padded(k: usize) -> usize {
    WIDTHS.iter().copied().find(|&w| w >= k).unwrap_or(32)
}

/// Starting sums: 0 for the `k` real clusters, +∞ for the padding.
pub(crate) fn start<T: From<f32>>(k: usize, kp: usize) -> Vec<T> {
    (0..kp)
        .map(|c| T::from(if c < k { 0.0 } else { f32::INFINITY }))
        .collect()
}

/// Transposes row-major `k × d` values into `d × kp` lanes, padding with `pad`.
pub(crate) fn transpose<T: Copy>(rows: &[T], k: usize, d: usize, kp: usize, pad: T) -> Vec<T> {
    let mut out = vec![pad; d * kp];
    for c in 0..k {
        for j in 0..d {
            out[j * kp + c] = rows[c * d + j];
        }
    }
    out
}

/// The index and value of the smallest sum (the first one on ties).
#[inline(always)]
fn argmin<T: PartialOrd + Copy, const K: usize>(acc: &[T; K]) -> (usize, T) {
    let mut best = (0, acc[0]);
    for (c, &v) in acc.iter().enumerate().skip(1) {
        if v < best.1 {
            best = (c, v);
        }
    }
    best
}

/// A lane slice as an array (`chunks_exact(K)` only yields slices of length K).
#[inline(always)]
fn lanes<T: Copy + Default, const K: usize>(s: &[T]) -> [T; K] {
    <[T; K]>::try_from(s).unwrap_or([T::default(); K])
}

/// Squared Euclidean distances of a scaled row to every cluster; the nearest.
#[inline(always)]
fn plain_k<const K: usize>(z: &[f64], ct: &[f64], init: &[f64]) -> (usize, f64) {
    let mut acc: [f64; K] = lanes(init);
    for (&x, col) in z.iter().zip(ct.chunks_exact(K)) {
        let m: [f64; K] = lanes(col);
        for c in 0..K {
            let t = x - m[c];
            acc[c] += t * t;
        }
    }
    argmin(&acc)
}

/// Features transformed per block. The scorer's arrays are padded to a whole number of
/// blocks (padding features have weight 0), so both inner loops have a fixed trip count and
/// vectorize without scalar tails.
pub(crate) const BLOCK: usize = 8;

/// The flat arrays of the `f32` scorer, each padded to a multiple of [`BLOCK`] features.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scorer32 {
    /// Kernel width.
    pub(crate) kp: usize,
    /// Scaler centre per feature.
    pub(crate) center: Vec<f32>,
    /// 1 / scale per feature.
    pub(crate) inv_scale: Vec<f32>,
    /// Centroids, `d × kp` lanes.
    pub(crate) ct: Vec<f32>,
    /// Weights 1 / spread², `d × kp` lanes.
    pub(crate) wt: Vec<f32>,
    /// Assignment penalty per cluster (+∞ for padding).
    pub(crate) pen: Vec<f32>,
    /// 1 / radius² per cluster.
    pub(crate) inv_r2: Vec<f32>,
}

impl Scorer32 {
    /// Builds the scorer from the scaler, row-major `k × d` centroids and weights, and the
    /// per-cluster penalties and radii.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        k: usize,
        d: usize,
        center: &[f64],
        inv_scale: &[f64],
        centroids: &[f64],
        weights: &[f64],
        penalty: &[f64],
        radius: &[f64],
    ) -> Scorer32 {
        let kp = padded(k);
        let dp = d.div_ceil(BLOCK) * BLOCK;
        let pad = |v: &[f64]| {
            let mut out: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            out.resize(dp, 0.0);
            out
        };
        let lanes = |rows: &[f64]| {
            let mut out = transpose(
                &rows.iter().map(|&x| x as f32).collect::<Vec<f32>>(),
                k,
                d,
                kp,
                0.0,
            );
            out.resize(dp * kp, 0.0);
            out
        };
        let per_cluster = |v: &[f64], f: fn(f64) -> f64, pad: f32| {
            (0..kp)
                .map(|c| v.get(c).map_or(pad, |&x| f(x) as f32))
                .collect::<Vec<f32>>()
        };
        Scorer32 {
            kp,
            center: pad(center),
            inv_scale: pad(inv_scale),
            ct: lanes(centroids),
            wt: lanes(weights),
            pen: per_cluster(penalty, |p| p, f32::INFINITY),
            inv_r2: per_cluster(radius, |r| 1.0 / (r * r), 0.0),
        }
    }
}

/// The cluster of a raw vector (transformed and scaled on the fly) and its score². The
/// cluster is the one with the smallest `Σ_j ((z_j − m_cj) / spread_cj)² + penalty_c` (the
/// most likely one under per-cluster diagonal Gaussians: the penalty charges wide and rare
/// clusters for their volume, so a wide cluster cannot claim far points just by being wide);
/// the score² is that sum without the penalty, divided by the cluster's radius². `A`
/// independent sets of sums take the features in turn, so that the additions are not one
/// long dependency chain.
#[inline(always)]
fn raw_k<const K: usize, const A: usize>(s: &Scorer32, values: &[f64]) -> (usize, f32) {
    let mut acc = [[0.0f32; K]; A];
    for (b, ((cs, is), (cts, wts))) in s
        .center
        .chunks_exact(BLOCK)
        .zip(s.inv_scale.chunks_exact(BLOCK))
        .zip(
            s.ct.chunks_exact(BLOCK * K)
                .zip(s.wt.chunks_exact(BLOCK * K)),
        )
        .enumerate()
    {
        let lo = (b * BLOCK).min(values.len());
        let hi = (lo + BLOCK).min(values.len());
        let src = &values[lo..hi];
        // A whole block is read as one array (kept in registers); only the last block of a
        // feature count that is not a multiple of BLOCK is padded with zeros.
        let v: [f64; BLOCK] = if src.len() == BLOCK {
            lanes(src)
        } else {
            let mut v = [0.0; BLOCK];
            v[..src.len()].copy_from_slice(src);
            v
        };
        let c: [f32; BLOCK] = lanes(cs);
        let i: [f32; BLOCK] = lanes(is);
        let mut z = [0.0f32; BLOCK];
        for j in 0..BLOCK {
            z[j] = (slog1p_f32(v[j] as f32) - c[j]) * i[j];
        }
        for (j, ((&x, col), ws)) in z
            .iter()
            .zip(cts.chunks_exact(K))
            .zip(wts.chunks_exact(K))
            .enumerate()
        {
            let m: [f32; K] = lanes(col);
            let w: [f32; K] = lanes(ws);
            let a = &mut acc[j % A];
            for c in 0..K {
                let t = x - m[c];
                a[c] += w[c] * t * t;
            }
        }
    }
    let mut total = acc[0];
    for part in &acc[1..] {
        for c in 0..K {
            total[c] += part[c];
        }
    }
    let pen: [f32; K] = lanes(&s.pen);
    let mut key = [0.0f32; K];
    for c in 0..K {
        key[c] = total[c] + pen[c];
    }
    let (best, _) = argmin(&key);
    (
        best,
        total[best] * s.inv_r2.get(best).copied().unwrap_or(0.0),
    )
}

macro_rules! dispatch {
    ($kp:expr, $f:ident, $($arg:expr),*) => {
        match $kp {
            8 => $f::<8>($($arg),*),
            16 => $f::<16>($($arg),*),
            _ => $f::<32>($($arg),*),
        }
    };
}

/// Nearest cluster of a scaled row by squared distance (Lloyd's assignment step).
#[inline]
pub(crate) fn nearest_plain(kp: usize, z: &[f64], ct: &[f64], init: &[f64]) -> (usize, f64) {
    dispatch!(kp, plain_k, z, ct, init)
}

impl Scorer32 {
    /// The cluster of a raw vector (transform and scaling included) and its score²: the
    /// verdict hot path. `values.len()` must be the feature count.
    #[inline]
    pub(crate) fn nearest(&self, values: &[f64]) -> (usize, f32) {
        // Independent sums per width: about four chains of additions in flight, within the
        // 16 vector registers.
        match self.kp {
            8 => raw_k::<8, 2>(self, values),
            16 => raw_k::<16, 1>(self, values),
            _ => raw_k::<32, 1>(self, values),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_width_finds_the_same_nearest_cluster() {
        let d = 5;
        for k in 1..=32 {
            let kp = padded(k);
            let rows: Vec<f64> = (0..k * d).map(|i| ((i * 7919) % 13) as f64).collect();
            let ct = transpose(&rows, k, d, kp, 0.0);
            let z = [3.0, 1.0, 4.0, 1.0, 5.0];
            let naive = (0..k)
                .map(|c| {
                    let s: f64 = (0..d).map(|j| (z[j] - rows[c * d + j]).powi(2)).sum();
                    (c, s)
                })
                .fold((0, f64::INFINITY), |b, x| if x.1 < b.1 { x } else { b });
            assert_eq!(nearest_plain(kp, &z, &ct, &start(k, kp)), naive, "k = {k}");
            // The f32 scorer with an identity scaler on values whose slog1p is z.
            let s = Scorer32::new(
                k,
                d,
                &[0.0; 5],
                &[1.0; 5],
                &rows,
                &vec![1.0; k * d],
                &vec![0.0; k],
                &vec![1.0; k],
            );
            let raw: Vec<f64> = z
                .iter()
                .map(|&v| super::super::scaler::slog1p_inv(v))
                .collect();
            let (c, dist) = s.nearest(&raw);
            assert!(c < k, "k = {k}");
            assert!(
                (f64::from(dist) - naive.1).abs() < 1e-3 * naive.1.max(1.0),
                "k = {k}"
            );
        }
    }
}
