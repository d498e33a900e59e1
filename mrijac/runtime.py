"""Run-time helpers shared by training, evaluation and prediction: device choice and seeds."""

from __future__ import annotations

import random

import numpy as np
import torch


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"`` (an error without
    a CUDA device)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("config key train.device is 'cuda' but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def progress(loader, **kwargs):
    """``tqdm`` over a data loader that creates exactly one iterator of it.

    ``tqdm.auto``'s class calls ``iter()`` on its argument when constructed and again when
    iterated: for a ``DataLoader`` that is two iterators — worker processes started twice, and
    a shuffling generator consumed once more by the first (prefetching) one, so the batch
    order depended on ``num_workers``.  Pass the one iterator, with the length."""
    from tqdm.auto import tqdm

    total = len(loader) if hasattr(loader, "__len__") else None
    return tqdm(iter(loader), total=total, **kwargs)
