#!/usr/bin/env python3
"""Time scikit-learn's KMeans on a rampart feature CSV, with rampart's settings.

Usage:
    python3 benches/sklearn_kmeans.py FILE.csv [--k 4] [--seed 42] [--max-iter 300]
                                               [--tol 1e-4] [--min-scale 0.1] [--repeat 3]

The CSV is what `rampart activity export` writes (or `cargo run --release --example
model_train -- --synth 1000000 --write FILE.csv`): source,window_start_ms,window_ms, the
features, and optionally label. Like `rampart model train`, it keeps the benign rows (all rows
without a label column), applies rampart's slog1p (sign(x)*ln(1+|x|) read from the float32
bits of 1+|x|, bit for bit as src/detect/scaler.rs computes it), and scales each feature by its median and
IQR/1.349 (the standard deviation where the IQR is 0, at least --min-scale), with the
quantiles taken on at most 100 000 evenly spaced rows. Then it fits
KMeans(n_clusters=k, init="k-means++", n_init=1, max_iter, tol, random_state=seed,
algorithm="lloyd") and prints the median fit time over --repeat runs. scikit-learn's `tol` is
relative to the mean feature variance, and so is rampart's.

The matching Rust figure is the "rampart kmeans" line of
`cargo run --release --example model_train -- --csv FILE.csv` (same rows, same transform, same
k, n_init, max_iter, tol, seed; k-means++ seeding differs: rampart seeds on a 16 384-row sample).

Exits 0 with a message on stderr if numpy or scikit-learn is missing, so benches/compare.sh can
skip the comparison.
"""

import argparse
import csv
import statistics
import sys
import time

SCALER_SAMPLE = 100_000
IQR_NORMAL = 1.349


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("csv")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--max-iter", type=int, default=300)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--min-scale", type=float, default=0.1)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    try:
        import numpy as np
        import sklearn
        from sklearn.cluster import KMeans
    except ImportError as e:
        print(f"sklearn_kmeans: skipped, {e.name} is not installed "
              "(pip install scikit-learn)", file=sys.stderr)
        return 0

    t = time.perf_counter()
    x, benign, features = read(args.csv, np)
    x = x[benign]
    print(f"read {len(benign)} rows x {len(features)} features from {args.csv} "
          f"in {time.perf_counter() - t:.3f} s; {len(x)} benign rows")

    t = time.perf_counter()
    z = slog1p(x, np)
    n = len(z)
    m = min(n, SCALER_SAMPLE)
    sample = z[(np.arange(m) * n) // max(m, 1)]
    q25, q50, q75 = np.percentile(sample, [25, 50, 75], axis=0)
    spread = (q75 - q25) / IQR_NORMAL
    spread = np.where(spread > 0, spread, sample.std(axis=0))
    spread = np.where(np.isfinite(spread), np.maximum(spread, args.min_scale), args.min_scale)
    z = (z - q50) * (1.0 / spread)
    z = np.ascontiguousarray(z, dtype=np.float64)
    prep = time.perf_counter() - t

    try:
        from threadpoolctl import threadpool_info
        threads = ", ".join(f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info())
    except ImportError:
        threads = "unknown"
    print(f"settings: k={args.k} n_init=1 max_iter={args.max_iter} tol={args.tol} "
          f"seed={args.seed} algorithm=lloyd; scikit-learn {sklearn.__version__}, "
          f"numpy {np.__version__}, threads: {threads}")
    times = []
    for _ in range(max(1, args.repeat)):
        km = KMeans(n_clusters=args.k, init="k-means++", n_init=1, max_iter=args.max_iter,
                    tol=args.tol, random_state=args.seed, algorithm="lloyd")
        t = time.perf_counter()
        km.fit(z)
        times.append(time.perf_counter() - t)
        print(f"  run: {times[-1]:.3f} s, {km.n_iter_} iterations, inertia {km.inertia_:.6e}")
    print(f"sklearn kmeans: fit {statistics.median(times):.3f} s (median of {len(times)}; "
          f"{km.n_iter_} iterations) on {n} rows; transform+scale {prep:.3f} s")
    return 0


def slog1p(x, np):
    """rampart's slog1p: Mitchell's logarithm of 1+|x| in float32, with the sign of x."""
    x32 = x.astype(np.float32)
    y = np.abs(x32) + np.float32(1.0)
    octaves = (y.view(np.int32) - np.int32(0x3F800000)).astype(np.float32)
    l = octaves * np.float32(np.log(2.0) / 8388608.0)
    return np.copysign(l, x32).astype(np.float64)


def read(path, np):
    """The feature matrix, a benign mask and the feature names."""
    try:
        import pandas as pd
    except ImportError:
        pd = None
    with open(path, newline="") as f:
        header = next(csv.reader(f))
    if header[:3] != ["source", "window_start_ms", "window_ms"]:
        sys.exit(f"{path}: not a rampart feature CSV (header starts {header[:3]})")
    labelled = header[-1] == "label"
    features = header[3:-1] if labelled else header[3:]
    if pd is not None:
        df = pd.read_csv(path)
        x = df[features].to_numpy(dtype=np.float64)
        benign = (df["label"] == "benign").to_numpy() if labelled else np.ones(len(df), bool)
        return x, benign, features
    rows, mask = [], []
    with open(path, newline="") as f:
        r = csv.reader(f)
        next(r)
        end = len(header) - 1 if labelled else len(header)
        for rec in r:
            rows.append([float(v) for v in rec[3:end]])
            mask.append(rec[-1] == "benign" if labelled else True)
    return np.array(rows, dtype=np.float64), np.array(mask, dtype=bool), features


if __name__ == "__main__":
    sys.exit(main())
