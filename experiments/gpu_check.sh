#!/usr/bin/env bash
# One prepared GPU check: install, the test suite with CUDA visible, the Jacobian benchmark at
# fastMRI sizes on CUDA. Prints everything; copies the tables to $OUT when that is set.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e ".[test]" 2>&1 | tail -2
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
timeout 300 python3 -m pytest -q -x 2>&1 | tail -5   # tests/test_cuda.py runs when CUDA is visible
timeout 240 python3 experiments/bench_jacobian.py --device cuda --models fc,dncnn5_64,unet_320 \
  --out experiments/results/bench_cuda
if [ -n "${OUT:-}" ]; then cp experiments/results/bench_cuda.* "$OUT"/ 2>/dev/null; fi
