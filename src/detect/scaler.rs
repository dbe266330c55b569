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

/// IQR of a standard normal distribution: IQR / 1.349 estimates its standard deviation.
pub const IQR_NORMAL: f64 = 1.349;

/// `sign(x)·ln(1 + |x|)`, computed without calling libm so that a verdict costs a few
/// nanoseconds per feature (accurate to about 1e-11 relative; training and scoring both use
/// this one function, so what matters is that it is the same, not that it is exact).
#[inline]
pub fn slog1p(x: f64) -> f64 {
    const LN_2: f64 = std::f64::consts::LN_2;
    const SQRT_2: f64 = std::f64::consts::SQRT_2;
    let y = 1.0 + x.abs();
    // y = m · 2^e with m in [1, 2): read both from the bits (y ≥ 1 is normal and positive).
    let bits = y.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    // Move m into [√2/2, √2) so that s below stays within ±0.172.
    let big = m > SQRT_2;
    let m = if big { m * 0.5 } else { m };
    let e = (e + i64::from(big)) as f64;
    // ln m = 2·atanh(s) = 2(s + s³/3 + s⁵/5 + ...), s = (m - 1)/(m + 1).
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let series = 1.0
        + s2 * (1.0 / 3.0
            + s2 * (1.0 / 5.0
                + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0 + s2 * (1.0 / 11.0 + s2 / 13.0)))));
    let l = e * LN_2 + 2.0 * s * series;
    if x < 0.0 {
        -l
    } else {
        l
    }
}

/// The inverse of [`slog1p`] (for showing typical values in raw units).
pub fn slog1p_inv(y: f64) -> f64 {
    let v = y.abs().exp_m1();
    if y < 0.0 {
        -v
    } else {
        v
    }
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
    /// Fits the scaler to already transformed rows (`slog1p` applied).
    pub fn fit(t: ArrayView2<'_, f64>, min_scale: f64) -> Scaler {
        let (n, d) = t.dim();
        let mut cols: Vec<(Vec<f64>, f64, f64)> = vec![(Vec::new(), 0.0, 1.0); d];
        par::for_each_mut(&mut cols, |j, (col, center, scale)| {
            col.reserve_exact(n);
            col.extend(t.column(j).iter().copied());
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
    let q = par::quantiles(col, &[0.25, 0.5, 0.75]);
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
    fn slog1p_matches_libm() {
        let mut x = 0.0f64;
        while x < 1e12 {
            let want = x.ln_1p();
            let got = slog1p(x);
            assert!(
                (got - want).abs() <= 1e-10 * want.max(1e-300) + 1e-15,
                "x = {x}: {got} vs {want}"
            );
            assert_eq!(slog1p(-x), -got);
            x = x * 1.37 + 0.013;
        }
        assert_eq!(slog1p(0.0), 0.0);
        assert!((slog1p_inv(slog1p(12345.0)) - 12345.0).abs() < 1e-6);
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
