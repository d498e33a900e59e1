"""Real data into fastMRI format (``mrijac data convert``, ``data_prep/``).

* raw k-space (BART/MATLAB/NumPy), single- or multi-coil -> fastMRI ``.h5`` with the RSS target
  (multi-coil) or the magnitude / emulated-single-coil (ESC) target (single-coil);
* magnitude image sets -> fastMRI volumes with simulated k-space (optional smooth phase and
  coils), for training on real anatomy without raw data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import sigpy.mri

from .h5format import write_volume
from .phantoms import smooth_field
from .synthetic import fft2c_np, ifft2c_np, targets_from_kspace

AXES = ("x", "y", "coil", "slice")


def reorder_kspace(k: np.ndarray, axes: str) -> np.ndarray:
    """Reorder raw k-space to ``(S, C, H, W)``.

    ``axes`` names the input axes in order, comma separated, from ``x`` (readout, becomes H),
    ``y`` (phase encode, becomes W), ``coil`` and ``slice``; e.g. BART's ``x,y,coil``.
    """
    names = [a.strip() for a in axes.split(",") if a.strip()]
    if sorted(set(names)) != sorted(names) or not set(names) <= set(AXES) or not {"x", "y"} <= set(names):
        raise ValueError(f"axes must name x, y and optionally coil, slice once each, got {axes!r}")
    if len(names) != k.ndim:
        raise ValueError(f"axes {axes!r} name {len(names)} axes but the k-space has {k.ndim} (shape {k.shape})")
    for extra in ("coil", "slice"):
        if extra not in names:
            k = k[..., None]
            names.append(extra)
    return np.transpose(k, [names.index(a) for a in ("slice", "coil", "x", "y")])


def emulated_single_coil(kspace: np.ndarray) -> np.ndarray:
    """ESC k-space ``(S, H, W)`` from multi-coil ``(S, C, H, W)``.

    Per slice, the complex coil combination ``Σ_c w_c x_c`` that best fits the RSS image in
    least squares (Tygert & Zbontar 2020's emulated single coil), back to k-space.
    """
    out = []
    for ks in kspace:
        X = ifft2c_np(ks).reshape(ks.shape[0], -1).T  # (pixels, coils)
        rss = np.sqrt((np.abs(X) ** 2).sum(1))
        w, *_ = np.linalg.lstsq(X, rss.astype(X.dtype), rcond=None)
        out.append(fft2c_np((X @ w).reshape(ks.shape[1:])))
    return np.stack(out).astype(np.complex64)


def convert_kspace(
    k: np.ndarray,
    out: str | Path,
    axes: str,
    challenge: str = "multicoil",
    recon_size: tuple[int, int] | None = None,
    acquisition: str = "CONVERTED",
    fft_axes_are_image: bool = False,
) -> Path:
    """Write raw k-space as one fastMRI volume.

    ``challenge="multicoil"``: kspace ``(S, C, H, W)``, target RSS.  ``"singlecoil"``: a
    single-coil input is kept, a multi-coil one becomes its emulated single coil
    (:func:`emulated_single_coil`); target ``|ifft2c(k)|``.  ``fft_axes_are_image``: the input
    holds images, not k-space (transformed with the centred FFT first).
    """
    k = reorder_kspace(np.asarray(k), axes).astype(np.complex64)
    if fft_axes_are_image:
        k = fft2c_np(k).astype(np.complex64)
    if not np.isfinite(k).all():
        raise ValueError(f"{out}: input k-space contains NaN or Inf")
    H, W = k.shape[-2:]
    recon_size = tuple(recon_size or (min(H, W), min(H, W)))
    if challenge == "multicoil":
        data = k
    elif challenge == "singlecoil":
        data = k[:, 0] if k.shape[1] == 1 else emulated_single_coil(k)
    else:
        raise ValueError(f"challenge must be 'singlecoil' or 'multicoil', got {challenge!r}")
    target = targets_from_kspace(data, recon_size)
    return write_volume(out, data, target, challenge, acquisition, recon_size)


def convert_images(
    images: np.ndarray,
    out: str | Path,
    challenge: str = "singlecoil",
    phase: bool = True,
    num_coils: int = 8,
    seed: int = 0,
    kspace_shape: tuple[int, int] | None = None,
    acquisition: str = "IMAGES",
    names: list[str] | None = None,
) -> Path:
    """Magnitude images ``(S, h, w)`` -> one fastMRI volume with simulated k-space.

    Each image is scaled to a peak of 1, optionally given a smooth random phase, placed in the
    centre of ``kspace_shape`` (default: the image size), multiplied by birdcage coil maps
    (multi-coil) and Fourier transformed.  The target is recomputed from that k-space, so it is
    exactly what fastMRI's target would be.
    """
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 3:
        raise ValueError(f"{out}: images must be (S, h, w), got {images.shape}")
    S, h, w = images.shape
    H, W = kspace_shape or (h, w)
    if H < h or W < w:
        raise ValueError(f"kspace_shape {(H, W)} is smaller than the images {(h, w)}")
    rng = np.random.default_rng(seed)
    img = np.zeros((S, H, W), np.complex128)
    peak = images.reshape(S, -1).max(1).clip(min=1e-12)[:, None, None]
    x = images / peak
    if phase:
        yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
        for s in range(S):
            c = rng.uniform(-1, 1, 4)
            ph = np.pi * (c[0] + 0.5 * c[1] * xx + 0.5 * c[2] * yy) + 0.5 * c[3] * smooth_field(
                (h, w), max(h, w) / 8, rng
            )
            img[s, (H - h) // 2 : (H - h) // 2 + h, (W - w) // 2 : (W - w) // 2 + w] = x[s] * np.exp(1j * ph)
    else:
        img[:, (H - h) // 2 : (H - h) // 2 + h, (W - w) // 2 : (W - w) // 2 + w] = x
    if challenge == "multicoil":
        maps = sigpy.mri.birdcage_maps((num_coils, H, W), r=1.5, nzz=num_coils)
        k = fft2c_np(maps[None] * img[:, None])
    elif challenge == "singlecoil":
        k = fft2c_np(img)
    else:
        raise ValueError(f"challenge must be 'singlecoil' or 'multicoil', got {challenge!r}")
    k = k.astype(np.complex64)
    extra = {"sources": ",".join(sorted(set(names)))[:60000]} if names else None
    return write_volume(out, k, targets_from_kspace(k, (h, w)), challenge, acquisition, (h, w), extra_attrs=extra)
