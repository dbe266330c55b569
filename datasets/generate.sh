#!/usr/bin/env bash
# Records the realistic datasets, datasets/realistic-train.csv and datasets/realistic-test.csv:
# every scenario in scenarios/ is run with --record for seeds 1 and 2 (train) and 3 (test),
# and each recording is exported as 1 s feature windows, labelled by the runner (the attack
# kind of each attacking source, `benign` for everything else) and grouped by behaviour
# family (the `[[legit]] name`). The recordings run with --no-model, so that what the data
# shows of an attack does not depend on an earlier model's blocks. Then it scores them with
# the default model and prints the per-family table.
#
# The default model itself (datasets/model.json) is trained on datasets/train.csv, the
# closed-world recording (see datasets/README.md); this script does not touch it.
#
#   bash datasets/generate.sh            # about fifteen minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
# RAMPART_BIN=path runs an already built binary instead of building one.
bin=${RAMPART_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release
  bin=./target/release/rampart
fi
work=target/datasets
rm -rf "$work"
mkdir -p "$work"
for seed in 1 2 3; do
  # The suite's pass/fail does not matter here, only the recordings.
  "$bin" --log error scenario run scenarios/ --seed "$seed" --record "$work/seed$seed" --quiet \
    --no-model --json "$work/seed$seed.json" || true
  for dir in "$work/seed$seed"/*/; do
    name=$(basename "$dir")
    "$bin" activity export --data-dir "$dir" --out "$work/seed$seed-$name.csv" --window 1s >/dev/null
  done
done
combine() {
  local out=$1; shift
  local first=1
  : > "$out"
  for f in "$@"; do
    if [ "$first" = 1 ]; then cat "$f" >> "$out"; first=0; else tail -n +2 "$f" >> "$out"; fi
  done
}
combine datasets/realistic-train.csv "$work"/seed1-*.csv "$work"/seed2-*.csv
combine datasets/realistic-test.csv "$work"/seed3-*.csv
for f in datasets/realistic-train.csv datasets/realistic-test.csv; do
  echo "$f: $(($(wc -l < "$f") - 1)) rows"
done
"$bin" model eval --model datasets/model.json --train datasets/realistic-train.csv \
  --by-group group datasets/realistic-test.csv
