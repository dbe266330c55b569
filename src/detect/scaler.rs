//! The feature transform: `slog1p`, then a robust per-feature scaler.
//!
//! Counts, byte totals and variances span many orders of magnitude and are heavy-tailed, so
//! every value first goes through `slog1p(x) = sign(x)·ln(1 + |x|)` (0 stays 0; a flood of
//! 100 000 frames is 11.5, not 100 000). Each feature is then centred on its median and
//! divided by its spread: the interquartile range / 1.349 (equal to the standard deviation for
//! a normal distribution, but not moved by the outliers that attack rows are), the standard
//! deviation when the IQR is zero (a feature that is mostly 0), and never less than
//! `min_scale`, so that a feature benign traffic never uses (spread 0) turns any use into a
//! large distance instead of a division by zero.

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use super::par;
use super::quantile::quantiles;

/// Most rows the scaler's quantiles are computed on: medians and quartiles from 100 000
/// evenly spaced rows are within a fraction of a percentile rank of the exact ones, at a
/// tenth of the cost on a million rows.
pub const SCALER_SAMPLE: usize = 100_000;

/// IQR of a standard normal distribution: IQR / 1.349 estimates its standard deviation.
pub const IQR_NORMAL: f64 = 1.349;

/// `sign(x)·ln(1 + |x|)`, approximated by reading the `f32` bits of `1 + |x|` as an integer
/// (Mitchell's logarithm): exact at `x = ±(2ⁿ − 1)` (0 ↦ 0, 1 ↦ ln 2, 3 ↦ ln 4, ...), linear
/// in between, increasing, within 0.06 of `ln_1p` everywhere. That is ample for its job,
/// compressing counts and byte totals that span orders of magnitude, and it costs a handful of
/// SIMD instructions per value where libm's `ln_1p` costs tens of nanoseconds, which matters
/// on the verdict hot path. Training and scoring use this one function, so the model sees
/// exactly what it was trained on. Infinities and NaN map to about ±89 (very anomalous),
/// never to NaN.
#[inline]
pub fn slog1p(x: f64) -> f64 {
    f64::from(slog1p_f32(x as f32))
}

/// [`slog1p`] in `f32`, as the scorer computes it (four lanes per SSE register).
#[inline]
pub fn slog1p_f32(x: f32) -> f32 {
    // Bits of 1.0; y ≥ 1, so the difference is the non-negative offset of y above 1 in
    // units of 2⁻²³ of an octave.
    const ONE_BITS: i32 = 0x3f80_0000;
    let y = 1.0 + x.abs();
    let octaves = (y.to_bits() as i32).wrapping_sub(ONE_BITS) as f32;
    (octaves * (std::f32::consts::LN_2 / 8_388_608.0)).copysign(x)
}

/// The inverse of [`slog1p`] (for showing typical values in raw units, and for tests).
pub fn slog1p_inv(y: f64) -> f64 {
    const ONE_BITS: f64 = 1_065_353_216.0;
    let offset = (y.abs() / (std::f64::consts::LN_2 / 8_388_608.0)).round();
    let bits = (ONE_BITS + offset).min(f64::from(0x7f80_0000u32));
    let v = f64::from(f32::from_bits(bits as u32)) - 1.0;
    v.copysign(y)
}

/// Per-feature centre and scale, applied after [`slog1p`]: `z = (slog1p(x) - center) / scale`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    /// Median of each feature (after `slog1p`).
    pub center: Vec<f64>,
    /// Spread of each feature (after `slog1p`): IQR / 1.349, else the standard deviation,
    /// at least the training's `min_scale`.
    pub scale: Vec<f64>,
}

impl Scaler {
    /// Fits the scaler to already transformed rows (`slog1p` applied). Above
    /// [`SCALER_SAMPLE`] rows, the statistics come from that many evenly spaced rows.
    pub fn fit(t: ArrayView2<'_, f64>, min_scale: f64) -> Scaler {
        let (n, d) = t.dim();
        let m = n.min(SCALER_SAMPLE);
        let rows: Vec<usize> = (0..m).map(|i| i * n / m.max(1)).collect();
        let mut cols: Vec<(Vec<f64>, f64, f64)> = vec![(Vec::new(), 0.0, 1.0); d];
        par::for_each_mut(&mut cols, |j, (col, center, scale)| {
            col.reserve_exact(m);
            col.extend(rows.iter().map(|&i| t[[i, j]]));
            let (c, s) = center_and_scale(col, min_scale);
            *center = c;
            *scale = s;
            *col = Vec::new();
        });
        Scaler {
            center: cols.iter().map(|c| c.1).collect(),
            scale: cols.iter().map(|c| c.2).collect(),
        }
    }

    /// Number of features.
    pub fn len(&self) -> usize {
        self.center.len()
    }

    /// Whether the scaler has no features.
    pub fn is_empty(&self) -> bool {
        self.center.is_empty()
    }

    /// `1 / scale`, the factor the hot path multiplies by.
    pub fn inv_scale(&self) -> Vec<f64> {
        self.scale.iter().map(|s| 1.0 / s).collect()
    }

    /// Scales already transformed rows in place (row-major, `len()` values per row).
    pub fn scale_rows(&self, rows: &mut [f64]) {
        let inv = self.inv_scale();
        let d = self.len();
        par::for_rows_mut(rows, d, |_, chunk| {
            for row in chunk.chunks_exact_mut(d) {
                for ((v, c), i) in row.iter_mut().zip(&self.center).zip(&inv) {
                    *v = (*v - c) * i;
                }
            }
        });
    }

    /// One raw row into scaled space, into `out`.
    pub fn transform_into(&self, values: &[f64], out: &mut [f64]) {
        for (((o, &v), c), s) in out
            .iter_mut()
            .zip(values)
            .zip(&self.center)
            .zip(&self.scale)
        {
            *o = (slog1p(v) - c) * (1.0 / s);
        }
    }
}

/// Median and spread of one column (reorders it).
fn center_and_scale(col: &mut [f64], min_scale: f64) -> (f64, f64) {
    if col.is_empty() {
        return (0.0, 1.0);
    }
    let q = quantiles(col, &[0.25, 0.5, 0.75]);
    let mut spread = (q[2] - q[0]) / IQR_NORMAL;
    if spread.is_nan() || spread <= 0.0 {
        let n = col.len() as f64;
        let mean = col.iter().sum::<f64>() / n;
        spread = (col.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt();
    }
    let scale = if spread.is_finite() {
        spread.max(min_scale)
    } else {
        min_scale
    };
    (q[1], scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn slog1p_is_close_to_ln_1p_and_increasing() {
        let mut x = 0.0f64;
        let mut prev = -1.0;
        while x < 1e15 {
            let want = x.ln_1p();
            let got = slog1p(x);
            assert!((got - want).abs() <= 0.0597, "x = {x}: {got} vs {want}");
            assert!(got >= prev, "not increasing at {x}");
            assert_eq!(slog1p(-x), -got);
            assert_eq!(got, f64::from(slog1p_f32(x as f32)));
            prev = got;
            x = x * 1.01 + 0.013;
        }
        assert_eq!(slog1p(0.0), 0.0);
        assert!((slog1p(1.0) - std::f64::consts::LN_2).abs() < 1e-6);
        assert!((slog1p(1023.0) - 1024f64.ln()).abs() < 1e-5);
        assert!(slog1p(f64::INFINITY).is_finite() && slog1p(f64::NAN).is_finite());
        for v in [0.0, 1.0, 2.5, 12345.0, -7.0] {
            let back = slog1p_inv(slog1p(v));
            assert!((back - v).abs() <= 1e-6 * v.abs().max(1.0), "{v} -> {back}");
        }
    }

    #[test]
    fn robust_scaling_ignores_outliers_and_floors_zero_spread() {
        // Feature 0: quartiles 1 and 3 (after slog1p of e^v - 1); feature 1: constant.
        let t = array![
            [0.0, 5.0],
            [1.0, 5.0],
            [2.0, 5.0],
            [3.0, 5.0],
            [4.0, 5.0],
            [1000.0, 5.0]
        ];
        let s = Scaler::fit(t.view(), 0.1);
        assert_eq!(s.center, vec![2.5, 5.0]);
        assert!((s.scale[0] - (3.75 - 1.25) / IQR_NORMAL).abs() < 1e-12);
        assert_eq!(s.scale[1], 0.1);
    }

    #[test]
    fn zero_iqr_falls_back_to_the_standard_deviation() {
        let t = array![[0.0], [0.0], [0.0], [0.0], [0.0], [0.0], [0.0], [8.0]];
        let s = Scaler::fit(t.view(), 0.1);
        assert_eq!(s.center, vec![0.0]);
        assert!((s.scale[0] - 7.0f64.sqrt()).abs() < 1e-12);
    }
}
