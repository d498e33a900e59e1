"""Image folders for super-resolution (Set5/Set14, DIV2K, …): patches and full images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from ..operators.noise import sphere_noise
from ..operators.sr import BlurDownsample
from .readers import IMAGE_SUFFIXES, read_image


class ImageFolderSR(torch.utils.data.Dataset):
    """``(y, x)`` pairs: ``x`` a greyscale HR image or patch ``(1, P, P)`` in [0, 1] and
    ``y = A x`` its blurred, decimated version ``(1, P/f, P/f)`` (``A`` a
    :class:`BlurDownsample`, exposed as ``self.A``).

    Args:
        folder: image folder (PNG/JPEG/TIFF/BMP).
        factor, kernel: the degradation (Gaussian 5×5 by default, as in the paper).
        patch: HR patch size (a multiple of ``factor``); ``None`` returns whole images cropped
            to a multiple of ``factor`` (evaluation).
        patches_per_image: random patches per image and epoch (training).
        flips: training patches are flipped horizontally/vertically at random (torchvision's
            ``crop``/``horizontal_flip``/``vertical_flip``), as EDSR trains.
        seed: patch positions are drawn from ``seed`` and the index (reproducible epochs).
        eps: noise uniform on the ℓ2 sphere of radius ``eps`` added to each ``y`` (image range
            [0, 1]: the paper's ε = 3 on the 0–255 scale is ``3/255``); drawn from ``seed``, the
            epoch and the index for training patches, from ``seed`` and the index for whole images.
        resample: new patches (and noise) every epoch; ``False``: the same patches every epoch —
            a finite training sample, as generalization bounds assume.
    """

    def __init__(
        self,
        folder,
        factor: int = 2,
        kernel: str = "gaussian",
        patch: int | None = 48,
        patches_per_image: int = 16,
        seed: int = 0,
        flips: bool = True,
        eps: float = 0.0,
        resample: bool = True,
    ):
        if not eps >= 0:
            raise ValueError(f"eps (noise radius) must be >= 0, got {eps}")
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: image folder not found")
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise ValueError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
        if patch is not None and patch % factor:
            raise ValueError(f"patch {patch} is not a multiple of factor {factor}")
        self.images = [read_image(p).astype(np.float32) for p in self.files]
        if patch is not None:
            small = [p.name for p, im in zip(self.files, self.images) if min(im.shape) < patch]
            if small:
                raise ValueError(f"{folder}: images smaller than patch {patch}: {small}")
        self.factor, self.patch, self.ppi, self.seed, self.flips = factor, patch, patches_per_image, seed, flips
        self.eps, self.resample = float(eps), bool(resample)
        self.A = BlurDownsample(factor, kernel, shape=(1, patch, patch) if patch else None)
        self.epoch = 0

    def __len__(self):
        return len(self.images) * (self.ppi if self.patch else 1)

    def set_epoch(self, epoch: int):
        """New patch positions for each epoch (same epoch, same patches)."""
        self.epoch = epoch

    def __getitem__(self, i):
        f = self.factor
        if self.patch is None:
            im = self.images[i]
            h, w = (im.shape[0] // f) * f, (im.shape[1] // f) * f
            x = torch.from_numpy(im[:h, :w].copy())[None]
        else:
            im = torch.from_numpy(self.images[i // self.ppi])[None]
            rng = np.random.default_rng((self.seed, self.epoch if self.resample else 0, i))
            t = int(rng.integers(0, im.shape[-2] - self.patch + 1))
            left = int(rng.integers(0, im.shape[-1] - self.patch + 1))
            x = TF.crop(im, t, left, self.patch, self.patch)
            if self.flips:  # EDSR's augmentation: random horizontal/vertical flips
                h, v = rng.integers(0, 2, 2)
                x = TF.horizontal_flip(x) if h else x
                x = TF.vertical_flip(x) if v else x
            x = x.contiguous()
        y = self.A(x[None])[0]
        if self.eps > 0:
            key = (self.seed, self.epoch if self.resample else 0, i, 1) if self.patch else (self.seed, i, 1)
            g = torch.Generator().manual_seed(int(np.random.default_rng(key).integers(2**62)))
            y = y + sphere_noise(y[None], self.eps, g)[0]
        return y, x
