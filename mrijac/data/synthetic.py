"""fastMRI-format synthetic datasets (``mrijac data synth``).

Writes train/val/test folders of volumes that ``fastmri.data.SliceDataset`` reads without any
patching.  Images are seeded anatomy-like phantoms (:mod:`mrijac.data.phantoms`), placed in
the centre of the k-space matrix (readout oversampling as in fastMRI knee: 640×368 k-space,
320×320 targets); multi-coil data use sigpy's birdcage coil maps; k-space gets complex
Gaussian thermal noise; targets are computed from the noisy fully sampled k-space exactly as
fastMRI's are (ESC magnitude for single-coil, RSS for multi-coil, centre-cropped).  Test files
carry their own ``mask`` and masked k-space and no target.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import sigpy.mri
import torch
from fastmri.data.transforms import center_crop
from tqdm.auto import tqdm

from ..operators.masks import fastmri_mask
from ..operators.mri import fft2c, ifft2c
from .h5format import claim_dataset_folder, write_volume
from .phantoms import phantom_volume

ACQ = {"knee": "CORPD_FBK", "brain": "AXT2"}


def fft2c_np(x: np.ndarray) -> np.ndarray:
    """fastmri's centred orthonormal FFT (via :func:`mrijac.operators.fft2c`) on NumPy arrays."""
    return fft2c(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def ifft2c_np(k: np.ndarray) -> np.ndarray:
    """Inverse of :func:`fft2c_np` (fastmri's centred orthonormal inverse FFT) on NumPy arrays."""
    return ifft2c(torch.from_numpy(np.ascontiguousarray(k))).numpy()


def targets_from_kspace(kspace: np.ndarray, recon_size: tuple[int, int]) -> np.ndarray:
    """fastMRI targets: ``|ifft2c(k)|`` (single-coil ``(S,H,W)``) or RSS over coils
    (``(S,C,H,W)``), centre-cropped to ``recon_size``; float32 ``(S, h, w)``."""
    im = ifft2c_np(kspace)
    mag = np.abs(im) if kspace.ndim == 3 else np.sqrt((np.abs(im) ** 2).sum(axis=1))
    H, W = mag.shape[-2:]
    h, w = recon_size
    if h > H or w > W:  # fastMRI pads nothing: the recon must fit (brain files: H < 320 rare)
        raise ValueError(f"recon size {recon_size} is larger than the image {H}x{W}")
    return np.asarray(center_crop(mag, recon_size), dtype=np.float32)


def synth_volume(
    kind: str,
    challenge: str,
    n_slices: int,
    kspace_shape: tuple[int, int],
    recon_size: tuple[int, int],
    seed: int,
    num_coils: int = 8,
    noise: float = 0.002,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic volume: ``(kspace, target)`` (complex64, float32).

    The phantom fills the central ``recon_size`` region of an ``kspace_shape`` image; coil
    maps are birdcage maps of ``num_coils`` coils; ``noise`` is the standard deviation of the
    complex k-space noise relative to the image's peak.
    """
    H, W = kspace_shape
    h, w = min(recon_size[0], H), min(recon_size[1], W)
    img = np.zeros((n_slices, H, W), np.complex128)
    img[..., (H - h) // 2 : (H - h) // 2 + h, (W - w) // 2 : (W - w) // 2 + w] = phantom_volume(
        kind, n_slices, (h, w), seed
    )
    rng = np.random.default_rng(seed + 7919)
    if challenge == "multicoil":
        maps = sigpy.mri.birdcage_maps((num_coils, H, W), r=1.5 + 0.5 * rng.random(), nzz=num_coils)
        coil_img = maps[None] * img[:, None]
    else:
        coil_img = img
    k = fft2c_np(coil_img)
    sigma = noise * np.abs(img).max()  # the orthonormal FFT keeps the noise level
    k = k + sigma / np.sqrt(2) * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
    k = k.astype(np.complex64)
    return k, targets_from_kspace(k, recon_size)


def write_split_volume(
    out: str | Path,
    split: str,
    name: str,
    k: np.ndarray,
    target: np.ndarray,
    challenge: str,
    acquisition: str,
    recon_size: tuple[int, int],
    seed: int,
    test_acceleration: int = 4,
    test_center_fraction: float = 0.08,
    extra_attrs: dict | None = None,
) -> Path:
    """Write ``out/<split>/<name>``; a test volume in fastMRI's challenge format.

    Train/val: fully sampled ``k`` with its ``target``.  Test: masked k-space, its ``mask``
    ``(W,)`` (random for single-coil, equispaced for multi-coil, as fastMRI), no target; the
    target is kept apart in ``out/test_targets/<name>`` as fastMRI's organisers do.
    """
    out, path = Path(out), Path(out) / split / name
    if split != "test":
        return write_volume(path, k, target, challenge, acquisition, recon_size, extra_attrs=extra_attrs)
    mask, num_low = fastmri_mask(
        "equispaced_fraction" if challenge == "multicoil" else "random",
        k.shape[-1],
        test_center_fraction,
        test_acceleration,
        seed=seed,
    )
    m = mask.numpy().astype(bool)
    write_volume(
        path,
        k * m,
        None,
        challenge,
        acquisition,
        recon_size,
        mask=m,
        acceleration=test_acceleration,
        num_low_frequency=num_low,
        extra_attrs=extra_attrs,
    )
    write_volume(out / "test_targets" / name, k, target, challenge, acquisition, recon_size, extra_attrs=extra_attrs)
    return path


def write_synthetic_dataset(
    out: str | Path,
    kind: str = "knee",
    challenge: str = "singlecoil",
    volumes: dict | None = None,
    n_slices: int = 8,
    kspace_shape: tuple[int, int] = (64, 48),
    recon_size: tuple[int, int] = (32, 32),
    num_coils: int = 8,
    seed: int = 0,
    test_acceleration: int = 4,
    test_center_fraction: float = 0.08,
    noise: float = 0.002,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, list[Path]]:
    """Write ``out/{train,val,test}/*.h5`` in fastMRI format; returns the written paths.

    ``volumes`` maps split -> number of volumes (default ``{"train": 4, "val": 2, "test": 1}``);
    each volume has its own seed, derived from ``seed``, the split and its index.  A folder
    that already holds volumes is refused unless ``overwrite`` (:func:`claim_dataset_folder`).
    """
    volumes = {"train": 4, "val": 2, "test": 1} if volumes is None else dict(volumes)
    bad = set(volumes) - {"train", "val", "test"}
    if bad:
        raise ValueError(f"splits must be train, val or test; got {sorted(bad)}")
    out = claim_dataset_folder(out, overwrite)
    written = {s: [] for s in volumes}
    todo = [(s, i) for s, n in volumes.items() for i in range(n)]
    split_code = {"train": 0, "val": 1, "test": 2}
    for split, i in tqdm(todo, desc=f"synth {kind} {challenge}", disable=not progress):
        vseed = seed * 100_003 + split_code[split] * 10_007 + i
        k, target = synth_volume(kind, challenge, n_slices, kspace_shape, recon_size, vseed, num_coils, noise)
        name = f"{'file' if kind == 'knee' else 'file_brain'}_{challenge}_{split}_{i:04d}.h5"
        path = write_split_volume(
            out,
            split,
            name,
            k,
            target,
            challenge,
            ACQ[kind],
            recon_size,
            vseed,
            test_acceleration,
            test_center_fraction,
            {"synthetic_seed": vseed},
        )
        written[split].append(path)
    return written
