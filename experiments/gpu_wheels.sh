#!/usr/bin/env bash
# Preparation for gpu_check.sh, run HERE (it needs the package registry): download exactly the
# wheels the GPU machine lacks — fastmri, sigpy, runstats, PyWavelets (the versions the dev
# environment resolves); it has torch 2.11, pandas,
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
  --implementation cp --abi "cp${PYV/./}" --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 \
  -d "$DEST" "fastmri==0.3.0" "sigpy==0.1.27" "PyWavelets>=1.8"
# runstats 2.0.0 is published as source only: build it here into a pure-Python wheel (its
# optional Cython extension is not built without Cython in the isolated build environment)
python3 -m pip wheel -q --no-deps "runstats==2.0.0" -w "$DEST"
ls "$DEST"/runstats-2.0.0-py3-none-any.whl > /dev/null || { echo "runstats wheel is not pure Python"; exit 1; }
ls -la "$DEST"
du -sh "$DEST"
