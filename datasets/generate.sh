#!/usr/bin/env bash
# Regenerates datasets/train.csv and datasets/test.csv from recorded scenario runs:
# every scenario in scenarios/ is run with --record for seeds 1 and 2 (train) and 3 (test),
# and each recording is exported as 1 s feature windows, labelled by the runner (the attack
# kind of each attacking source, `benign` for everything else). The recordings run with
# --no-model, so that what the data shows of an attack does not depend on an earlier model's
# blocks; then the default model (datasets/model.json) is trained on train.csv.
#
#   bash datasets/generate.sh            # about twelve minutes on 2 cores
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
combine datasets/train.csv "$work"/seed1-*.csv "$work"/seed2-*.csv
combine datasets/test.csv "$work"/seed3-*.csv
for f in datasets/train.csv datasets/test.csv; do
  echo "$f: $(($(wc -l < "$f") - 1)) rows"
  tail -n +2 "$f" | awk -F, '{print $NF}' | sort | uniq -c
done
# The default model every scenario run and `rampart serve` use unless told otherwise.
"$bin" model train datasets/train.csv --out datasets/model.json
"$bin" model eval --model datasets/model.json datasets/test.csv
