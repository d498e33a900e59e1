#!/usr/bin/env bash
# One prepared GPU check, ≤ 8 minutes, that needs no package registry: install the carried
# wheels (experiments/wheels, made by gpu_wheels.sh) and mrijac itself without dependencies,
# run the CUDA tests, the cost of the default penalty against plain training at fastMRI size
# (U-Net 32 ch / 4 pools, 640×368 k-space -> 320×320, batch 1 and 4, with the reference σ time)
# and the throughput table (slices/s, data wait, peak memory; knee and 16-coil brain); tables to
# $OUT (and experiments/results/).
#   run(command="bash experiments/gpu_check.sh", carry=["experiments/wheels"], timeout_s=540)
# DEVICE=cpu bash experiments/gpu_check.sh rehearses it here (smaller sizes, no CUDA tests).
# COST_ROWS=plain,lz3fd,default (rows of cost_default.py; lz3fd is the default since 2026-11-28,
# default the one before), COST_BATCHES=1,2,4, COST_EPOCHS=6,
# COST_REF=2 (reference-σ probe slices; 0: monitor off), COST_TIMEOUT=s, THROUGHPUT=0 (skip the
# throughput table, unchanged since its last run), LANCZOS=0 (skip lanczos_cost.py: the warm
# Lanczos steps, forward-mode vs fd JVPs), SHARE=0 (skip bench_fd_share.py: the default's step
# with and without the Lanczos steps' shared forward pass), PASS=0 (skip pass_costs.py: the floor of
# the default's step time, plain + its Lanczos steps) fit the check to what a session measures.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"
OUT="${OUT:-experiments/results}"
T0=$(date +%s)
if ls experiments/wheels/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps experiments/wheels/*.whl 2>&1 | tail -3
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/mrijac_install.log 2>&1 \
  || grep -iE "error|requires" /tmp/mrijac_install.log | head -5
# the image's pip could not build the editable install on 2026-11-27 (without a registry): then
# import mrijac from the checkout itself (subprocesses inherit PYTHONPATH)
(cd / && python3 -c "import mrijac" 2> /dev/null) || { export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"; echo "mrijac from PYTHONPATH"; }
python3 - <<'PY'
import torch, fastmri, sigpy, mrijac, torchvision
print("torch", torch.__version__, "torchvision", torchvision.__version__, "fastmri", fastmri.__version__,
      "sigpy", sigpy.__version__, "| cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
PY
echo "install: $(( $(date +%s) - T0 )) s"
if [ "$DEVICE" = cuda ]; then
  timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -4
  SIZE="synthetic:640x368:320x320"; CH=32; PO=4; BATCHES=${COST_BATCHES:-1,4}
else
  timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_operators.py tests/test_cuda.py 2>&1 | tail -3
  SIZE="synthetic:96x80:64x64"; CH=8; PO=2; BATCHES=${COST_BATCHES:-1,2}
fi
echo "tests: $(( $(date +%s) - T0 )) s"
timeout "${COST_TIMEOUT:-270}" python3 experiments/cost_default.py --data "$SIZE" --chans $CH --pools $PO --batches $BATCHES \
  --rows "${COST_ROWS:-plain,lz3fd,default}" --epochs "${COST_EPOCHS:-6}" --train-slices 8 --ref-slices "${COST_REF:-2}" --out "$OUT/cost_$DEVICE" 2>&1 | grep -v "it/s" | tail -12
echo "cost: $(( $(date +%s) - T0 )) s"
# the warm Lanczos steps of reg.n_iter=3, forward-mode vs finite-difference JVPs (reg.lanczos_jvp)
LSIZE=$([ "$DEVICE" = cuda ] && echo 320 || echo 64)
if [ "${LANCZOS:-1}" != 0 ]; then
  timeout 120 python3 experiments/lanczos_cost.py --device "$DEVICE" --size $LSIZE --chans $CH --pools $PO \
    --batches "$BATCHES" --out "$OUT/lanczos_cost_$DEVICE" 2>&1 | grep "^batch"
  echo "lanczos: $(( $(date +%s) - T0 )) s"
fi
if [ "${SHARE:-1}" != 0 ]; then
  timeout 120 python3 experiments/bench_fd_share.py --device "$DEVICE" --size $LSIZE --chans $CH --pools $PO \
    --batches "$BATCHES" --reps 12 --out "$OUT/bench_fd_share_$DEVICE" 2>&1 | grep "^batch"
  echo "share: $(( $(date +%s) - T0 )) s"
fi
# the floor of the default's step time: plain + its Lanczos steps on every row (pass_costs.py)
if [ "${PASS:-1}" != 0 ]; then
  timeout 120 python3 experiments/pass_costs.py --device "$DEVICE" --size $LSIZE --chans $CH --pools $PO \
    --batches "$BATCHES" --out "$OUT/pass_costs_$DEVICE" 2>&1 | grep "^batch"
  echo "passes: $(( $(date +%s) - T0 )) s"
fi
SMALL=$([ "$DEVICE" = cuda ] || echo --small)
# slices/s, data wait and peak memory, single-coil knee and 16-coil brain, plain and default
[ "${THROUGHPUT:-1}" = 0 ] || timeout 150 python3 experiments/throughput.py --device "$DEVICE" --slices 6 $SMALL --out "$OUT" 2>&1 | tail -9
echo "total: $(( $(date +%s) - T0 )) s"
