//! Quantiles of a sample, as numpy computes them by default: the robust scaler's quartiles,
//! the clusters' spreads and radii, and the threshold all use this one definition.

/// Linearly interpolated quantiles of `v` (numpy's default method) for ascending `qs` in
/// [0, 1]. Reorders `v`. Returns NaN for each quantile of an empty slice.
pub(super) fn quantiles(v: &mut [f64], qs: &[f64]) -> Vec<f64> {
    let n = v.len();
    if n == 0 {
        return vec![f64::NAN; qs.len()];
    }
    let mut lo = 0;
    qs.iter()
        .map(|&q| {
            let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let i = (pos.floor() as usize).clamp(lo, n - 1);
            let frac = pos - i as f64;
            // Everything before `lo` is at most v[lo], so the i-th smallest of all is the
            // (i - lo)-th smallest of v[lo..].
            let (_, nth, right) = v[lo..].select_nth_unstable_by(i - lo, f64::total_cmp);
            let a = *nth;
            let b = if frac > 0.0 {
                right.iter().copied().fold(f64::INFINITY, f64::min)
            } else {
                a
            };
            lo = i;
            if b.is_finite() {
                a + (b - a) * frac
            } else {
                a
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(values: &[f64], qs: &[f64], expected: &[f64]) {
        let mut v = values.to_vec();
        let got = quantiles(&mut v, qs);
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-12, "{values:?} {qs:?}: got {got:?}");
        }
    }

    #[test]
    fn quantiles_match_numpy_linear() {
        check(
            &[3.0, 1.0, 2.0, 4.0],
            &[0.25, 0.5, 0.75],
            &[1.75, 2.5, 3.25],
        );
        check(&[5.0], &[0.0, 0.5, 1.0], &[5.0, 5.0, 5.0]);
        check(&[0.0, 0.0, 0.0, 10.0], &[0.5, 0.99], &[0.0, 9.7]);
        check(&[9.0, 7.0, 8.0], &[0.0, 1.0], &[7.0, 9.0]);
    }
}
