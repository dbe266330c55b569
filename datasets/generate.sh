#!/usr/bin/env bash
# Records the datasets, in two sessions that share nothing but the binary and the scenarios.
#
# The training session (no argument): every scenario in scenarios/ is run with --record for
# seeds 1 and 2 (datasets/train.csv) and 3 (datasets/test-same-run.csv, a split of the same
# session), and scenarios/detection/evasion.toml (the evasion attack, which has no expectation
# to meet) for seed 3 (datasets/evasion.csv). Then it trains the default model
# (datasets/model.json) on train.csv and scores test-same-run.csv with it, per family.
#
# The test session (`test`): seed 3 of every scenario in scenarios/, with the login storm and
# the quiet flood of scenarios/detection/ (two families no training file holds), recorded
# apart (datasets/test.csv, the file the model's targets are judged on), then scored with the
# committed model. Run it at another time than the training session, so that the two do not
# share the machine's load (datasets/README.md, "Two sessions").
#
# Each recording is exported as 1 s feature windows, labelled by the runner (the attack kind
# of each attacking source from its first attacking frame, `benign` for everything else) and
# grouped by behaviour family (the `[[legit]] name`). The recordings run with --no-model, so
# that what the data shows of an attack does not depend on an earlier model's blocks.
#
#   bash datasets/generate.sh            # about twenty minutes on 2 cores
#   bash datasets/generate.sh test       # about eight minutes
set -euo pipefail
case "${1:-}" in
  "" | test) ;;
  *) echo "usage: bash datasets/generate.sh [test]" >&2; exit 2 ;;
esac
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
combine() {
  local out=$1; shift
  local first=1
  : > "$out"
  for f in "$@"; do
    if [ "$first" = 1 ]; then cat "$f" >> "$out"; first=0; else tail -n +2 "$f" >> "$out"; fi
  done
}
if [ "${1:-}" = test ]; then
  record 3 test scenarios/ scenarios/detection/login-storm.toml \
    scenarios/detection/quiet-flood.toml
  combine datasets/test.csv "$work"/test-*.csv
  echo "datasets/test.csv: $(($(wc -l < datasets/test.csv) - 1)) rows"
  "$bin" model eval --model datasets/model.json --train datasets/train.csv \
    --by-group group datasets/test.csv
  exit 0
fi
for seed in 1 2 3; do
  record "$seed" "seed$seed" scenarios/
done
record 3 evasion scenarios/detection/evasion.toml
combine datasets/train.csv "$work"/seed1-*.csv "$work"/seed2-*.csv
combine datasets/test-same-run.csv "$work"/seed3-*.csv
combine datasets/evasion.csv "$work"/evasion-*.csv
for f in datasets/train.csv datasets/test-same-run.csv datasets/evasion.csv; do
  echo "$f: $(($(wc -l < "$f") - 1)) rows"
done
"$bin" model train datasets/train.csv --out datasets/model.json
"$bin" model eval --model datasets/model.json --train datasets/train.csv \
  --by-group group datasets/test-same-run.csv
