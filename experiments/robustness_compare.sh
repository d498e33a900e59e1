#!/usr/bin/env bash
# Robustness of several trained runs on the same data, side by side (issue "stability report"):
# `mrijac evaluate --robustness full` for each run, then `mrijac compare` of the evaluations.
# usage: bash experiments/robustness_compare.sh NAME DATA_DIR RUN_DIR... [-- extra evaluate args]
# writes experiments/results/robustness_NAME/ (comparison report + figures, each run's
# robustness report under runs/<run>/).
set -euo pipefail
cd "$(dirname "$0")/.."
NAME="$1"; DATA="$2"; shift 2
OUT="experiments/results/robustness_$NAME"
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
EVALS=(); NAMES=()
for RUN in "$@"; do
  N="$(basename "$RUN")"
  mrijac evaluate --checkpoint "$RUN/checkpoints/final.pt" --data "$DATA" --out "$TMP/$N" --robustness full --jac-batches 2
  EVALS+=("$TMP/$N"); NAMES+=("$N")
done
mrijac compare "${EVALS[@]}" --out "$TMP/compare" --names "$(IFS=,; echo "${NAMES[*]}")"
rm -rf "$OUT"; mkdir -p "$OUT/runs"
cp -r "$TMP/compare/." "$OUT/"
for N in "${NAMES[@]}"; do
  mkdir -p "$OUT/runs/$N"
  cp "$TMP/$N/robustness/report.md" "$TMP/$N/robustness/robustness.json" "$OUT/runs/$N/"
  cp -r "$TMP/$N/robustness/figures" "$OUT/runs/$N/"
done
echo "command: bash experiments/robustness_compare.sh $NAME $DATA $*" > "$OUT/COMMAND"
ls "$OUT"
