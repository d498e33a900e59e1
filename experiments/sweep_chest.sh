#!/usr/bin/env bash
# λ sweep at real size (issue "true Jacobian norm", §2): `mrijac sweep` on 40 real chest MR
# slices (256×256, ../shared/data/mri/chest100 converted with simulated single-coil k-space)
# with 20 validation slices, the default penalty, λ1 = λ2 ∈ LAMBDAS (and 0). Copies the report,
# table and figure (not the checkpoints) to OUT. SEEDS training seeds per λ (default 1; 3 is what
# the recommendation needs at this size: see mrijac/sweep.py).
#   bash experiments/sweep_chest.sh [OUT] [LAMBDAS] [SEEDS]
set -euo pipefail
OUT=${1:-experiments/results/sweep_chest}
LAMBDAS=${2:-0.05,0.1,0.2,0.5}
SEEDS=${3:-1}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mrijac data convert images ../shared/data/mri/chest100 --out "$TMP/all" --per-volume 1 \
  --split 0.8,0.2,0 --key im_ori > /dev/null
mkdir -p "$TMP/chest/train" "$TMP/chest/val"
for f in $(ls "$TMP"/all/train/*.h5 | sort | head -40); do ln -s "$f" "$TMP/chest/train/"; done
for f in $(ls "$TMP"/all/val/*.h5 | sort | head -20); do ln -s "$f" "$TMP/chest/val/"; done
mrijac sweep --config experiments/configs/sweep_chest.yaml "data.root=$TMP/chest" \
  --lambdas "$LAMBDAS" --seeds "$SEEDS" --out "$TMP/sweep"
mkdir -p "$OUT"
cp -r "$TMP/sweep/report.md" "$TMP/sweep/sweep.csv" "$TMP/sweep/sweep.json" "$TMP/sweep/figures" "$OUT/"
echo "λ sweep written to $OUT"
