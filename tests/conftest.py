import os
from pathlib import Path

import pytest
import torch

# MRIJAC_TEST_THREADS: e.g. 1 to leave a core to a benchmark running beside the tests
torch.set_num_threads(int(os.environ.get("MRIJAC_TEST_THREADS", 0)) or max(1, min(2, os.cpu_count() or 1)))

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _dataset_cache_dir(tmp_path_factory):
    """Slice-list caches of the tests' data folders go to a temporary folder, not ~/.cache."""
    old = os.environ.get("MRIJAC_CACHE")
    os.environ["MRIJAC_CACHE"] = str(tmp_path_factory.mktemp("mrijac_cache"))
    yield
    if old is None:
        os.environ.pop("MRIJAC_CACHE", None)
    else:
        os.environ["MRIJAC_CACHE"] = old


@pytest.fixture(scope="session")
def shared_data():
    """``../shared/data`` (real data for tests); skip when this checkout has none beside it."""
    if not SHARED.is_dir():
        pytest.skip(f"real data folder {SHARED} not found")
    return SHARED


@pytest.fixture(scope="session")
def synthetic_knee(tmp_path_factory):
    """One small fastMRI-format single-coil dataset for the whole session (read-only for the
    tests): ``train/`` 2 volumes × 4 slices, ``val/`` 2 × 4, ``test/`` 2 × 4 (challenge
    format, with ``test_targets/``); 40×36 k-space, 32×32 targets."""
    from mrijac.data import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic_knee")
    write_synthetic_dataset(
        root,
        "knee",
        "singlecoil",
        {"train": 2, "val": 2, "test": 2},
        n_slices=4,
        kspace_shape=(40, 36),
        recon_size=(32, 32),
        progress=False,
    )
    return root
