"""MNIST (IDX files) for the Gaussian compressed-sensing module."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from ..operators.cs import GaussianCS
from ..operators.noise import sphere_noise

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.int16, 0x0C: np.int32, 0x0D: np.float32, 0x0E: np.float64}


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (``.gz`` or raw) as a NumPy array (MNIST images ``(N, 28, 28)`` uint8)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: IDX file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ValueError(f"{path}: cannot read ({err})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    dims = np.frombuffer(data, ">i4", count=ndim, offset=4).astype(int)
    dtype = np.dtype(IDX_DTYPES[data[2]]).newbyteorder(">")
    expected = int(np.prod(dims)) * dtype.itemsize + 4 + 4 * ndim
    if len(data) != expected:
        raise ValueError(f"{path}: {len(data)} bytes, header promises {expected} (truncated?)")
    return np.frombuffer(data, dtype, offset=4 + 4 * ndim).reshape(dims).astype(dtype.newbyteorder("="))


def find_mnist(folder: str | Path, split: str = "t10k") -> tuple[Path, Path]:
    """Image and label files ``{split}-images-idx3-ubyte[.gz]`` / ``-labels-idx1-ubyte[.gz]``."""
    folder = Path(folder)
    out = []
    for kind in ("images-idx3", "labels-idx1"):
        cands = [folder / f"{split}-{kind}-ubyte{s}" for s in (".gz", "")]
        hit = next((c for c in cands if c.exists()), None)
        if hit is None:
            raise FileNotFoundError(f"{folder}: no {split}-{kind}-ubyte[.gz] (MNIST IDX files)")
        out.append(hit)
    return out[0], out[1]


class MNISTCompressedSensing(torch.utils.data.Dataset):
    """``(y, x, label)`` with ``x`` the image in [0, 1] as ``(784,)`` and ``y = A x + n``.

    ``A`` = :class:`GaussianCS` ``(q, 784)`` from ``seed``; ``n`` uniform on the sphere of
    radius ``eps`` (the paper's bounded noise), redrawn at each access from ``noise_seed`` and the
    index (so a given epoch is reproducible).  ``indices`` selects a subset (e.g. ``m`` training
    images).
    """

    def __init__(
        self,
        folder,
        split: str = "t10k",
        q: int = 160,
        eps: float = 0.0,
        seed: int = 0,
        indices=None,
        noise_seed: int = 0,
    ):
        imgs, labels = find_mnist(folder, split)
        x = read_idx(imgs).astype(np.float32) / 255.0
        self.x = torch.from_numpy(x.reshape(len(x), -1))
        self.labels = torch.from_numpy(read_idx(labels).astype(np.int64))
        if indices is not None:
            idx = torch.as_tensor(indices)
            self.x, self.labels = self.x[idx], self.labels[idx]
        self.A = GaussianCS(q, self.x.shape[1], seed=seed)
        self.y_clean = self.A(self.x)
        self.eps, self.noise_seed = float(eps), noise_seed

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        y = self.y_clean[i]
        if self.eps > 0:
            g = torch.Generator().manual_seed(self.noise_seed * 1_000_003 + int(i))
            y = y + sphere_noise(y[None], self.eps, g)[0]
        return y, self.x[i], self.labels[i]
