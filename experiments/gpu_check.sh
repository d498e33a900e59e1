#!/usr/bin/env bash
# One prepared GPU check (about 8 minutes): install, the test suite with CUDA visible, the key
# rows of the Jacobian benchmark at fastMRI sizes on CUDA, and the data wait of U-Net training
# at fastMRI size with the default loader workers. Prints everything; copies the tables to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e ".[test]" 2>&1 | tail -2
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
timeout 200 python3 -m pytest -q -x 2>&1 | tail -5   # tests/test_cuda.py runs when CUDA is visible
timeout 200 python3 experiments/bench_jacobian.py --quick --device cuda --models dncnn5_64,unet_320 \
  --only "sja n=1,sja+sj n=1 fd,sja+sj n=1 warm on,every 4" --out experiments/results/bench_cuda
timeout 100 python3 experiments/data_wait.py --device cuda --slices 24
if [ -n "${OUT:-}" ]; then cp experiments/results/bench_cuda.* experiments/results/data_wait_* "$OUT"/ 2>/dev/null; fi
