"""Real data into fastMRI format (``mrijac data convert``, ``data_prep/``).

* raw k-space (BART/MATLAB/NumPy), single- or multi-coil -> fastMRI ``.h5`` with the RSS target
  (multi-coil) or the magnitude / emulated-single-coil (ESC) target (single-coil);
* magnitude image sets -> fastMRI volumes with simulated k-space (optional smooth phase and
  coils), for training on real anatomy without raw data.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import sigpy.mri

from .h5format import write_volume
from .phantoms import smooth_field
from .synthetic import fft2c_np, ifft2c_np, targets_from_kspace

AXES = ("x", "y", "coil", "slice")


BART_DIMS = ("x", "y", "z", "coil", "maps")


def bart_axes(shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    """Axes of a BART array in BART's own dimension order (READ, PHS1, PHS2, COIL, MAPS, …).

    Singleton dimensions are dropped; of the spatial dimensions READ/PHS1/PHS2 the two
    non-singleton ones become ``x, y`` (so ``1×H×W×C`` works as well as ``H×W×1×C``).
    Returns ``(axes, squeezed shape)`` for :func:`reorder_kspace`.
    """
    names, keep = [], []
    spatial = [i for i in range(min(3, len(shape))) if shape[i] > 1]
    if len(spatial) > 2:
        raise ValueError(
            f"BART array {tuple(shape)}: READ, PHS1 and PHS2 are all > 1, i.e. 3-D k-space in BART's order; "
            "if dimension 2 holds coils (not BART's order) pass --axes x,y,coil, if it is 3-D k-space "
            "inverse-FFT it along the readout and convert the slices (--axes slice,x,y,coil)"
        )
    if len(spatial) < 2:
        raise ValueError(f"BART array {tuple(shape)}: needs two spatial dimensions > 1")
    for i, n in enumerate(shape):
        if n == 1:
            continue
        if i < 3:
            names.append("x" if i == spatial[0] else "y")
        elif i == 3:
            names.append("coil")
        else:
            what = BART_DIMS[i] if i < len(BART_DIMS) else f"dimension {i}"
            raise ValueError(f"BART array {tuple(shape)}: {what} = {n}; only READ, PHS1, PHS2 and COIL may exceed 1")
        keep.append(n)
    return ",".join(names), tuple(keep)


def reorder_kspace(k: np.ndarray, axes: str) -> np.ndarray:
    """Reorder raw k-space to ``(S, C, H, W)``.

    ``axes`` names the input axes in order, comma separated, from ``x`` (readout, becomes H),
    ``y`` (phase encode, becomes W), ``coil``, ``slice`` and ``1`` (a singleton to drop); e.g.
    ``x,y,coil`` or ``1,x,y,coil``.  ``axes="bart"`` reads BART's dimension order
    (:func:`bart_axes`).
    """
    if axes.strip().lower() == "bart":
        axes, shape = bart_axes(k.shape)
        k = k.reshape(shape)
    names = [a.strip() for a in axes.split(",") if a.strip()]
    if len(names) != k.ndim:
        raise ValueError(
            f"--axes {axes!r} names {len(names)} axes but the k-space has {k.ndim} (shape {k.shape}); "
            "use 1 for a singleton axis, or 'bart' for BART's dimension order"
        )
    ones = [i for i, a in enumerate(names) if a == "1"]
    if any(k.shape[i] != 1 for i in ones):
        raise ValueError(f"--axes {axes!r}: an axis named 1 has size {[k.shape[i] for i in ones]} in shape {k.shape}")
    k = k.reshape([n for i, n in enumerate(k.shape) if i not in ones])
    names = [a for a in names if a != "1"]
    if sorted(set(names)) != sorted(names) or not set(names) <= set(AXES) or not {"x", "y"} <= set(names):
        raise ValueError(f"--axes must name x, y and optionally coil, slice (and 1) once each, got {axes!r}")
    for extra in ("coil", "slice"):
        if extra not in names:
            k = k[..., None]
            names.append(extra)
    return np.transpose(k, [names.index(a) for a in ("slice", "coil", "x", "y")])


class Sampling(NamedTuple):
    """Which k-space samples a raw array holds (:func:`sampling_of`).

    ``present`` ``(S, H, W)`` bool: non-zero in some coil; ``missing``: fraction structurally
    missing (zero in every coil); ``columns`` ``(W,)`` bool when the pattern is Cartesian
    (whole phase-encode columns present or absent), else ``None``; ``padding``: the missing
    columns are only a zero-padded border (fully sampled data, as fastMRI's own files).
    """

    present: np.ndarray
    missing: float
    columns: np.ndarray | None
    padding: bool


def sampling_of(k: np.ndarray) -> Sampling:
    """The sampling pattern of k-space ``(S, C, H, W)``: a sample is missing when it is exactly
    zero in every coil (measured samples are never exactly zero)."""
    present = (k != 0).any(axis=1)
    missing = 1.0 - float(present.mean())
    col = present.any(axis=(0, 1))  # (W,)
    cartesian = bool((present == col[None, None, :]).all())
    padding = False
    if cartesian and not col.all():
        idx = np.flatnonzero(col)
        padding = idx.size > 0 and bool(col[idx[0] : idx[-1] + 1].all())
    return Sampling(present, missing, col if cartesian else None, padding)


def central_run(columns: np.ndarray) -> int:
    """Length of the contiguous run of sampled columns through the centre ``W // 2``."""
    c = len(columns) // 2
    if not columns[c]:
        return 0
    lo, hi = c, c
    while lo > 0 and columns[lo - 1]:
        lo -= 1
    while hi < len(columns) - 1 and columns[hi + 1]:
        hi += 1
    return hi - lo + 1


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
    challenge: str | None = None,
    recon_size: tuple[int, int] | None = None,
    acquisition: str = "CONVERTED",
    fft_axes_are_image: bool = False,
    undersampled: bool = False,
    max_missing: float = 0.05,
) -> tuple[Path, list[str]]:
    """Write raw k-space as one fastMRI volume; returns its path and notes on what was inferred.

    ``challenge="multicoil"``: kspace ``(S, C, H, W)``, target RSS.  ``"singlecoil"``: a
    single-coil input is kept, a multi-coil one becomes its emulated single coil
    (:func:`emulated_single_coil`); target ``|ifft2c(k)|``.  ``None``: single-coil when the
    input has one coil (or no coil axis), else multi-coil.  ``fft_axes_are_image``: the input
    holds images, not k-space (transformed with the centred FFT first).

    Sampling is checked (:func:`sampling_of`): fully sampled data (a zero-padded border of
    columns allowed) is written with its target.  Data with more than ``max_missing`` of its
    samples structurally missing is undersampled — its zero-filled image is no ground truth —
    and is refused unless ``undersampled``, which writes a test file (masked k-space, the
    inferred column ``mask``, no target); non-Cartesian patterns are always refused.
    """
    k = reorder_kspace(np.asarray(k), axes).astype(np.complex64)
    notes = []
    if fft_axes_are_image:
        k = fft2c_np(k).astype(np.complex64)
    if not np.isfinite(k).all():
        raise ValueError(f"{out}: input k-space contains NaN or Inf")
    if challenge is None:
        challenge = "singlecoil" if k.shape[1] == 1 else "multicoil"
        notes.append(f"{k.shape[1]} coil(s): written as {challenge} (--challenge overrides)")
    if challenge not in ("singlecoil", "multicoil"):
        raise ValueError(f"--challenge must be 'singlecoil' or 'multicoil', got {challenge!r}")
    H, W = k.shape[-2:]
    recon_size = tuple(recon_size or (min(H, W), min(H, W)))
    data = k if challenge == "multicoil" else (k[:, 0] if k.shape[1] == 1 else emulated_single_coil(k))
    samp = sampling_of(k)
    if samp.missing > max_missing and not samp.padding:
        if samp.columns is None:
            raise ValueError(
                f"{out}: {samp.missing:.0%} of the k-space samples are zero in every coil in a non-Cartesian "
                "(2-D) pattern: the data is undersampled and fastMRI files hold only column masks; "
                "convert fully sampled k-space, or reconstruct it with another tool first"
            )
        if not undersampled:
            raise ValueError(
                f"{out}: {samp.missing:.0%} of the k-space is missing (zero in every coil; "
                f"{int(samp.columns.sum())} of {W} phase-encode columns sampled): the data is undersampled, so its "
                "zero-filled image is no ground truth. Pass --undersampled to store it as a test file "
                "with the inferred mask (no target), or convert fully sampled k-space"
            )
        nlf = central_run(samp.columns)
        if nlf == 0:
            raise ValueError(f"{out}: the centre column of k-space is not sampled; no calibration region")
        accel = W / samp.columns.sum()
        notes.append(
            f"undersampled Cartesian k-space: test file with the inferred mask ({int(samp.columns.sum())}/{W} "
            f"columns, acceleration {accel:.1f}, {nlf} central columns), no target"
        )
        mask = samp.columns
        return write_volume(
            out,
            data * mask,
            None,
            challenge,
            acquisition,
            recon_size,
            mask=mask,
            acceleration=accel,
            num_low_frequency=nlf,
        ), notes
    if samp.missing > 0.001:
        notes.append(f"{samp.missing:.1%} of k-space is a zero-padded border: treated as fully sampled")
    if undersampled:
        raise ValueError(f"{out}: --undersampled given but the k-space is fully sampled ({samp.missing:.1%} missing)")
    target = targets_from_kspace(data, recon_size)
    return write_volume(out, data, target, challenge, acquisition, recon_size), notes


def simulate_kspace(
    images: np.ndarray,
    challenge: str = "singlecoil",
    phase: bool = True,
    num_coils: int = 8,
    seed: int = 0,
    kspace_shape: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Simulated k-space of images ``(S, h, w)``: returns ``(kspace, target, phase)``.

    Each image is scaled to a peak magnitude of 1.  A complex input keeps its own phase
    (k-space = ``fft2c`` of the complex image), as does a real input with negative values; a
    magnitude input gets a smooth random phase if ``phase``, else none — the returned
    ``phase`` says which (``"source"``, ``"synthetic"``, ``"none"``).  The image is placed in
    the centre of ``kspace_shape`` (default: its size), multiplied by birdcage coil maps
    (multi-coil, ``(S, C, H, W)``) and Fourier transformed; the target ``(S, h, w)`` is
    recomputed from that k-space, so it is what fastMRI's target would be.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must be (S, h, w), got {images.shape}")
    S, h, w = images.shape
    H, W = kspace_shape or (h, w)
    if H < h or W < w:
        raise ValueError(f"kspace_shape {(H, W)} is smaller than the images {(h, w)}")
    rng = np.random.default_rng(seed)
    img = np.zeros((S, H, W), np.complex128)
    peak = np.abs(images).reshape(S, -1).max(1).clip(min=1e-12)[:, None, None]
    x = images / peak
    inner = (slice((H - h) // 2, (H - h) // 2 + h), slice((W - w) // 2, (W - w) // 2 + w))
    if np.iscomplexobj(images) or bool((images < 0).any()):
        img[(slice(None), *inner)], how = x, "source"
    elif phase:
        yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
        for s in range(S):
            c = rng.uniform(-1, 1, 4)
            ph = np.pi * (c[0] + 0.5 * c[1] * xx + 0.5 * c[2] * yy) + 0.5 * c[3] * smooth_field(
                (h, w), max(h, w) / 8, rng
            )
            img[s][inner] = x[s] * np.exp(1j * ph)
        how = "synthetic"
    else:
        img[(slice(None), *inner)], how = x, "none"
    if challenge == "multicoil":
        maps = sigpy.mri.birdcage_maps((num_coils, H, W), r=1.5, nzz=num_coils)
        k = fft2c_np(maps[None] * img[:, None])
    elif challenge == "singlecoil":
        k = fft2c_np(img)
    else:
        raise ValueError(f"challenge must be 'singlecoil' or 'multicoil', got {challenge!r}")
    k = k.astype(np.complex64)
    return k, targets_from_kspace(k, (h, w)), how


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
    """Images ``(S, h, w)`` -> one fastMRI volume ``out`` with k-space from
    :func:`simulate_kspace`; attribute ``phase`` records the phase's origin, ``sources`` the
    source files."""
    k, target, how = simulate_kspace(images, challenge, phase, num_coils, seed, kspace_shape)
    extra = {"phase": how}
    if names:
        extra["sources"] = ",".join(sorted(set(names)))[:60000]
    return write_volume(out, k, target, challenge, acquisition, tuple(target.shape[-2:]), extra_attrs=extra)
