#!/usr/bin/env bash
# The GPU session's second part, after gpu_check.sh in the same call: true_sigma.py on the real
# chest slices on CUDA, runs in parallel processes (the 256² U-Net 8/3 leaves an H100 mostly idle,
# so processes share it well), each stopped at DEADLINE (epoch seconds); every process rewrites
# its report after each run, so a stopped one keeps its finished rows.  Per process (λ = 0.2
# unless named): seeds 0, 1, 2 × (plain, default, forward n = 10); seed 0 × (fd2, forward n = 1);
# seed 0 at λ = 0.5 × (default, forward10); with PHASE=2 (a second call): seeds 1, 2 at λ = 0.5
# and seed 0 at λ = 1 × (default, forward10); PHASE=3 … 7: see their branches.  Their step × plain
# ratios share the GPU: not cost
# figures (gpu_check.sh's cost table is).  Merge here afterwards with true_sigma.py --merge
# (results/true_sigma_gpu*.md list the commands; plain runs are λ-independent and merged in).
# usage: bash experiments/gpu_true_sigma.sh SHARED_DATA DEADLINE RESULTS [extra true_sigma args]
#   SHARED_DATA holds mri/chest100 (carry a copy: ../shared does not travel)
set -uo pipefail
cd "$(dirname "$0")/.."
SHARED="$1"; END="$2"; RES="$3"; shift 3
mkdir -p "$RES"
left=$(( END - $(date +%s) ))
[ "$left" -gt 90 ] || { echo "true_sigma: only $left s left, not started"; exit 0; }
echo "true_sigma: $left s"
ts() {  # name, then true_sigma args
  local name="$1"; shift
  timeout "$left" python3 experiments/true_sigma.py --tasks real --epochs 12 --seeds 1 --threads 2 \
    --shared "$SHARED" --out "$RES/true_sigma_gpu_$name" "$@" > "$RES/ts_$name.log" 2>&1 &
}
if [ "${PHASE:-1}" = 1 ]; then
  for s in 0 1 2; do ts "s$s" --rows plain,default,forward10 --seed-start "$s" --lam 0.2 "$@"; done
  ts x --rows fd2,forward1 --seed-start 0 --lam 0.2 "$@"
  ts lam05 --rows default,forward10 --seed-start 0 --lam 0.5 "$@"
elif [ "$PHASE" = 2 ]; then  # a second call: the other seeds at λ = 0.5, and λ = 1
  for s in 1 2; do ts "lam05_s$s" --rows default,forward10 --seed-start "$s" --lam 0.5 "$@"; done
  ts lam1 --rows default,forward10 --seed-start 0 --lam 1.0 "$@"
elif [ "$PHASE" = 3 ]; then  # the estimate/reference ratio at the step's own weights (2026-11-27):
  # the default and the default + 2 Lanczos steps per visit at λ = 0.5 (6 processes; 11 at once
  # did not finish 12 epochs in 251 s)
  for s in 0 1 2; do
    ts "def05_s$s" --rows default --seed-start "$s" --lam 0.5 "$@"
    ts "lz3_s$s" --rows lz3 --seed-start "$s" --lam 0.5 "$@"
  done
elif [ "$PHASE" = 4 ]; then  # 4 Lanczos steps per visit at λ = 0.5, and the default at λ = 1, seeds 1, 2
  for s in 0 1 2; do ts "lz5_s$s" --rows lz5 --seed-start "$s" --lam 0.5 "$@"; done
  for s in 1 2; do ts "lam1_s$s" --rows default --seed-start "$s" --lam 1.0 "$@"; done
elif [ "$PHASE" = 6 ]; then  # 30 epochs (2026-11-27): does the accurate estimate (2 Lanczos steps per
  # visit) hold σ where the default's drifts?  plain, default and lz3 × seeds 0–2 at λ = 0.5, 9
  # processes; --keep puts each run's folder under $RES/keep, so that a process stopped at the
  # deadline leaves its history.csv (copied to $RES/hist) for the report
  for s in 0 1 2; do
    for r in plain default lz3; do ts "${r}30_s$s" --rows "$r" --seed-start "$s" --lam 0.5 --epochs 30 --keep "$RES/keep/${r}_s$s" "$@"; done
  done
elif [ "$PHASE" = 7 ]; then  # 30 epochs (session 19): the accurate estimate with fd JVPs (lz3fd) at
  # λ = 0.1, 0.15 and 0.2, seeds 0–2 (9 processes, as PHASE=6): does a λ hold σ ≤ 0.85× plain for 30 epochs within
  # 0.2 dB?  plain's 30-epoch runs of these seeds are in results/true_sigma_gpu_30ep.json
  for s in 0 1 2; do
    for l in 0.1 0.15 0.2; do ts "lz3fd${l#0.}_s$s" --rows lz3fd --seed-start "$s" --lam "$l" --epochs 30 --keep "$RES/keep/lz3fd${l#0.}_s$s" "$@"; done
  done
else  # PHASE=5: the default at the sweep's recommended λ = 1, seeds 0, 1, 2 (3 processes; seed 0
  # again for the estimate/reference at the step's own weights, which its 2026-11-26 run lacks)
  for s in 0 1 2; do ts "lam1_s$s" --rows default --seed-start "$s" --lam 1.0 "$@"; done
fi
wait
if [ -d "$RES/keep" ]; then  # histories only (the folders hold data and checkpoints)
  for h in "$RES"/keep/*/*/history.csv; do
    d="$RES/hist/$(basename "$(dirname "$(dirname "$h")")")"; mkdir -p "$d"; cp "$h" "$d/"
  done
  rm -rf "$RES/keep"
fi
grep -h "seed" "$RES"/ts_*.log
tail -n 3 "$RES"/ts_*.log | grep -i -B2 "error" || true
