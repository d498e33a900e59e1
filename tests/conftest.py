import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    """``../shared/data`` (real data for tests); skip when this checkout has none beside it."""
    if not SHARED.is_dir():
        pytest.skip(f"real data folder {SHARED} not found")
    return SHARED
