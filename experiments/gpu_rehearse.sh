#!/usr/bin/env bash
# Offline rehearsal of gpu_check.sh, here: a fresh clone and a fresh virtual environment with
# torch and the GPU image's packages that mrijac touches (installed now, as the image has them),
# the four missing wheels from gpu_wheels.sh for THIS Python, then the check itself with pip cut
# off from every index (PIP_NO_INDEX=1) at CPU sizes (DEVICE=cpu). Needs the registry for the
# set-up only; ~3 min on 2 cores with the machine to itself.
# usage: bash experiments/gpu_rehearse.sh [WORKDIR (/tmp/gpu_rehearse)]
set -euo pipefail
SRC="$(cd "$(dirname "$0")/.." && pwd)"
R="${1:-/tmp/gpu_rehearse}"
rm -rf "$R"; mkdir -p "$R"
git clone -q "$SRC" "$R/repo"
python3 -m venv "$R/venv"; . "$R/venv/bin/activate"
pip install -q torch==2.14.1 torchvision==0.29.1 h5py scikit-image scipy numba pyyaml matplotlib \
  tensorboard tqdm requests pytest pandas setuptools
python -c "import fastmri" 2>/dev/null && { echo "fastmri is installed: not the GPU image"; exit 1; }
cd "$R/repo"
PYV=$(python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
bash experiments/gpu_wheels.sh "$PYV" experiments/wheels > /dev/null && ls experiments/wheels
export PIP_NO_INDEX=1
DEVICE=cpu OUT="$R/out" bash experiments/gpu_check.sh
