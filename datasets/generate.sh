#!/usr/bin/env bash
# Records the datasets: every scenario in scenarios/ is run with --record for seeds 1 and 2
# (datasets/train.csv) and 3 (datasets/test.csv), and scenarios/detection/evasion.toml (the
# evasion attack, which has no expectation to meet) for seed 3 (datasets/evasion.csv). Each
# recording is exported as 1 s feature windows, labelled by the runner (the attack kind of
# each attacking source from its first attacking frame, `benign` for everything else) and
# grouped by behaviour family (the `[[legit]] name`). The recordings run with --no-model, so
# that what the data shows of an attack does not depend on an earlier model's blocks. Then
# it trains the default model (datasets/model.json) on train.csv and scores test.csv with
# it, per family.
#
#   bash datasets/generate.sh            # about twenty minutes on 2 cores
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
record() {
  local seed=$1 name=$2; shift 2
  # The suite's pass/fail does not matter here, only the recordings.
  "$bin" --log error scenario run "$@" --seed "$seed" --record "$work/$name" --quiet \
    --no-model --json "$work/$name.json" || true
  for dir in "$work/$name"/*/; do
    "$bin" activity export --data-dir "$dir" --out "$work/$name-$(basename "$dir").csv" \
      --window 1s >/dev/null
  done
}
for seed in 1 2 3; do
  record "$seed" "seed$seed" scenarios/
done
record 3 evasion scenarios/detection/evasion.toml
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
combine datasets/evasion.csv "$work"/evasion-*.csv
for f in datasets/train.csv datasets/test.csv datasets/evasion.csv; do
  echo "$f: $(($(wc -l < "$f") - 1)) rows"
done
"$bin" model train datasets/train.csv --out datasets/model.json
"$bin" model eval --model datasets/model.json --train datasets/train.csv \
  --by-group group datasets/test.csv
