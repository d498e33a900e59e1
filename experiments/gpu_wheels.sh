#!/usr/bin/env bash
# Preparation for gpu_check.sh, run HERE (it needs the package registry): download exactly the
# wheels the GPU machine lacks — fastmri, sigpy, runstats, PyWavelets; it has torch 2.11,
# torchvision, h5py, scikit-image, scipy, numba, PyYAML, matplotlib, tensorboard, tqdm,
# requests and pytest — for its Python (3.12 by default), without dependencies (torch is never
# pulled in), into experiments/wheels/ (git-ignored, about 5 MB). Then carry that folder:
#   run(command="bash experiments/gpu_check.sh", carry=["experiments/wheels"])
# usage: bash experiments/gpu_wheels.sh [PYTHON_VERSION (3.12)] [DEST (experiments/wheels)]
set -euo pipefail
cd "$(dirname "$0")/.."
PYV="${1:-3.12}"
DEST="${2:-experiments/wheels}"
mkdir -p "$DEST"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" \
  --implementation cp --abi "cp${PYV/./}" --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST" "fastmri==0.3.0" "sigpy==0.1.27" "runstats==0.6.0" "PyWavelets>=1.6"
ls -la "$DEST"
du -sh "$DEST"
