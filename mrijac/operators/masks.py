"""Sampling masks, seeded and reproducible.

Cartesian column masks (phase encoding along the last axis) come from
``fastmri.data.subsample``; 2-D variable-density Poisson-disc masks from ``sigpy.mri.poisson``;
the 1-D Gaussian variable-density mask is ours.  All return a float32 tensor: ``(W,)`` for
column masks, ``(H, W)`` for 2-D masks.
"""

from __future__ import annotations

import numpy as np
import torch
from fastmri.data import subsample

from ..names import COLUMN_MASKS, MASK_TYPES  # noqa: F401  (re-exported)


def check_mask_params(acceleration: float, center_fraction: float | None = None, num_cols: int | None = None) -> None:
    """Raise ``ValueError`` for an acceleration < 1 or a centre fraction outside (0, 1]."""
    if not np.isfinite(acceleration) or acceleration < 1:
        raise ValueError(f"acceleration must be >= 1, got {acceleration}")
    if center_fraction is not None and not (0 < center_fraction <= 1):
        raise ValueError(f"center_fraction must be in (0, 1], got {center_fraction}")
    if (
        center_fraction is not None
        and num_cols is not None
        and round(num_cols * center_fraction) > num_cols / acceleration + 1e-9
    ):
        raise ValueError(
            f"center_fraction {center_fraction} samples more than 1/acceleration "
            f"= 1/{acceleration} of the {num_cols} columns"
        )


def fastmri_mask(
    kind: str, num_cols: int, center_fraction: float, acceleration: int, seed: int | None = None, num_rows: int = 1
) -> tuple[torch.Tensor, int]:
    """A fastMRI column mask ``(W,)`` and its number of low-frequency lines.

    ``kind``: ``random`` (RandomMaskFunc), ``equispaced`` (EquiSpacedMaskFunc),
    ``equispaced_fraction`` (EquispacedMaskFractionFunc, the public multi-coil masks),
    ``magic``/``magic_fraction``.  Same seed, same mask.
    """
    check_mask_params(acceleration, center_fraction, num_cols)
    func = subsample.create_mask_for_mask_type(kind, [center_fraction], [acceleration])
    mask, num_low = func((1, num_rows, num_cols, 2), seed=seed)
    return mask.reshape(num_cols).to(torch.float32), int(num_low)


def gaussian1d_mask(
    num_cols: int,
    acceleration: float,
    center_fraction: float = 0.08,
    sigma: float | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """1-D Gaussian variable-density column mask ``(W,)``.

    The ``round(W·center_fraction)`` central columns are always sampled; the remaining
    ``round(W/acceleration)`` − centre columns are drawn without replacement with probability
    ``∝ exp(-k²/2σ²)``, ``k`` the distance to the centre (σ = W/6 by default).
    """
    check_mask_params(acceleration, center_fraction, num_cols)
    rng = np.random.default_rng(seed)
    n_total = int(round(num_cols / acceleration))
    n_center = int(round(num_cols * center_fraction))
    mask = np.zeros(num_cols, dtype=np.float32)
    c0 = (num_cols - n_center + 1) // 2
    mask[c0 : c0 + n_center] = 1
    k = np.arange(num_cols) - num_cols // 2
    s = num_cols / 6 if sigma is None else sigma
    p = np.exp(-(k**2) / (2 * s**2)) * (1 - mask)
    n_rest = max(0, n_total - n_center)
    if n_rest:
        idx = rng.choice(num_cols, size=n_rest, replace=False, p=p / p.sum())
        mask[idx] = 1
    return torch.from_numpy(mask)


def poisson_mask(
    shape: tuple[int, int],
    acceleration: float,
    calib: tuple[int, int] = (16, 16),
    seed: int = 0,
    tol: float = 0.1,
    max_steps: int = 60,
) -> torch.Tensor:
    """2-D variable-density Poisson-disc mask ``(H, W)`` (sigpy's sampler).

    The same algorithm as ``sigpy.mri.poisson`` (bisection on the density slope around
    sigpy's ``_poisson`` sampler, same seed -> same mask when it converges), but with at most
    ``max_steps`` bisection steps: sigpy's own loop never ends when no slope meets ``tol``
    (seen on small images); then the mask closest to the acceleration is returned.
    """
    from sigpy.mri.samp import _poisson

    check_mask_params(acceleration)
    ny, nx = shape
    y, x = np.mgrid[:ny, :nx]
    x = np.maximum(abs(x - nx / 2) - calib[-1] / 2, 0)
    x /= max(x.max(), 1e-12)
    y = np.maximum(abs(y - ny / 2) - calib[-2] / 2, 0)
    y /= max(y.max(), 1e-12)
    r = np.sqrt(x**2 + y**2)
    lo, hi = 0.0, float(max(nx, ny))
    best, best_err = None, np.inf
    seed = int(seed if seed is not None else 0)
    state = np.random.get_state()  # sigpy's sampler seeds NumPy's global RNG
    try:
        for _ in range(max_steps):
            slope = (lo + hi) / 2
            rx = np.clip((1 + r * slope) * nx / max(nx, ny), 1, None)
            ry = np.clip((1 + r * slope) * ny / max(nx, ny), 1, None)
            m = _poisson(nx, ny, 30, rx, ry, tuple(calib), seed) * (r < 1)
            accel = nx * ny / max(m.sum(), 1)
            if abs(accel - acceleration) < best_err:
                best, best_err = m, abs(accel - acceleration)
            if best_err < tol:
                break
            lo, hi = (slope, hi) if accel < acceleration else (lo, slope)
    finally:
        np.random.set_state(state)
    return torch.from_numpy(np.ascontiguousarray(np.abs(best).reshape(shape)).astype(np.float32))


def make_mask(
    kind: str,
    shape: tuple[int, int],
    acceleration: float,
    center_fraction: float = 0.08,
    seed: int | None = None,
    calib: int | None = None,
) -> torch.Tensor:
    """Dispatch on ``kind`` (one of :data:`MASK_TYPES`); returns ``(W,)`` or ``(H, W)``."""
    H, W = shape
    if kind in ("random", "equispaced", "equispaced_fraction", "magic", "magic_fraction"):
        return fastmri_mask(kind, W, center_fraction, int(acceleration), seed, num_rows=H)[0]
    if kind == "gaussian1d":
        return gaussian1d_mask(W, acceleration, center_fraction, seed=seed)
    if kind == "poisson":
        c = calib if calib is not None else max(2, int(round(min(H, W) * center_fraction)))
        return poisson_mask((H, W), acceleration, (c, c), seed=seed or 0)
    raise ValueError(f"mask type must be one of {MASK_TYPES}, got {kind!r}")
