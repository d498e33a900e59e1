"""Seeded anatomy-like phantoms (complex images) for fastMRI-format synthetic data.

Not one Shepp–Logan copied: each volume draws its own geometry (sizes, positions, rotation),
tissue intensities, textures (smooth random fields) and a smooth phase from its seed; slices
vary smoothly through the volume.  Two families: ``knee`` (femur, tibia with marrow texture and
cortical rim, cartilage, fat, muscle) and ``brain`` (scalp, skull, CSF, grey/white matter,
ventricles, lesions).  Intensities lie in [0, 1] before the phase.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

KINDS = ("knee", "brain")


def smooth_field(shape, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std random field with correlation length ``scale`` pixels."""
    f = gaussian_filter(rng.standard_normal(shape), sigma=max(scale, 0.5), mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-12)


def _ellipse(X, Y, cx, cy, a, b, theta=0.0, edge=0.02):
    """Soft indicator (0..1) of an ellipse in normalised coordinates; ``edge`` = edge width."""
    c, s = np.cos(theta), np.sin(theta)
    u = ((X - cx) * c + (Y - cy) * s) / a
    v = (-(X - cx) * s + (Y - cy) * c) / b
    r = np.sqrt(u * u + v * v)
    return 1.0 / (1.0 + np.exp((r - 1.0) * min(a, b) / edge))


class _Params:
    """Per-volume random parameters (drawn once, reused by every slice)."""

    def __init__(self, kind, rng):
        self.kind = kind
        self.rot = rng.uniform(-0.25, 0.25)
        self.shift = rng.uniform(-0.04, 0.04, 2)
        self.scale = rng.uniform(0.85, 1.05)
        self.i = {
            k: rng.uniform(lo, hi)
            for k, (lo, hi) in {
                "soft": (0.35, 0.5),
                "fat": (0.7, 0.95),
                "marrow": (0.45, 0.7),
                "cart": (0.75, 1.0),
                "csf": (0.15, 0.3),
                "gm": (0.45, 0.6),
                "wm": (0.65, 0.85),
                "scalp": (0.6, 0.9),
                "lesion": (0.85, 1.0),
            }.items()
        }
        self.aspect = rng.uniform(0.8, 1.15)
        self.gap = rng.uniform(0.03, 0.07)
        self.n_lesions = int(rng.integers(0, 4))
        self.lesions = rng.uniform(-0.35, 0.35, (self.n_lesions, 2))
        self.lesion_r = rng.uniform(0.02, 0.06, self.n_lesions)
        self.phase = rng.uniform(-1, 1, 5)
        self.seed = int(rng.integers(2**31))


def _slice(p: _Params, shape, z: float) -> np.ndarray:
    h, w = shape
    rng = np.random.default_rng(p.seed)  # same textures through the volume
    y, x = np.meshgrid(np.linspace(-0.5, 0.5, h), np.linspace(-0.5, 0.5, w), indexing="ij")
    c, s = np.cos(p.rot), np.sin(p.rot)
    X = (c * x + s * y) / p.scale - p.shift[0]
    Y = (-s * x + c * y) / p.scale - p.shift[1]
    taper = np.sqrt(max(1 - 0.7 * z * z, 0.05))
    # texture correlation lengths scale with the image but stay above pixel noise
    tex = smooth_field(shape, max(max(h, w) / 40, 3.0), rng)
    fine = smooth_field(shape, max(max(h, w) / 120, 1.5), rng)
    img = np.zeros(shape)
    if p.kind == "knee":
        body = _ellipse(X, Y, 0, 0, 0.3 * p.aspect * taper + 0.08, 0.42, edge=0.01)
        inner = _ellipse(X, Y, 0, 0, 0.3 * p.aspect * taper + 0.05, 0.39, edge=0.01)
        img += p.i["fat"] * (body - inner)
        img += p.i["soft"] * inner * (1 + 0.08 * tex + 0.05 * np.sin(40 * X + 3 * tex))
        bw = 0.18 * p.aspect * taper
        for cy, sign in ((-0.2 - p.gap, -1), (0.2 + p.gap, 1)):
            bone = _ellipse(X, Y, 0, cy, bw, 0.2, edge=0.006)
            marrow = _ellipse(X, Y, 0, cy, bw - 0.015, 0.185, edge=0.006)
            img = img * (1 - bone) + 0.03 * (bone - marrow)
            img += marrow * p.i["marrow"] * (1 + 0.15 * fine)
            cart = _ellipse(X, Y, 0, cy - sign * 0.012, bw * 0.95, 0.2, edge=0.006) * (1 - bone)
            cart *= np.abs(Y) < p.gap + 0.03
            img += p.i["cart"] * cart
    else:
        e = 0.006
        scalp = _ellipse(X, Y, 0, 0, 0.36 * p.aspect * taper + 0.05, 0.45 * taper + 0.03, edge=e)
        skull = _ellipse(X, Y, 0, 0, 0.34 * p.aspect * taper + 0.05, 0.43 * taper + 0.03, edge=e)
        csf = _ellipse(X, Y, 0, 0, 0.32 * p.aspect * taper + 0.05, 0.41 * taper + 0.03, edge=e)
        brain = _ellipse(X, Y, 0, 0, 0.3 * p.aspect * taper + 0.05, 0.39 * taper + 0.03, edge=e)
        img += p.i["scalp"] * (scalp - skull) + 0.05 * (skull - csf) + p.i["csf"] * (csf - brain)
        wm = 1 / (1 + np.exp(-4 * (tex + 0.3)))  # white matter where the field is high
        wm *= _ellipse(X, Y, 0, 0, 0.24 * p.aspect * taper, 0.32 * taper)
        img += brain * (p.i["gm"] * (1 - wm) + p.i["wm"] * wm) * (1 + 0.04 * fine)
        for sx in (-1, 1):
            v = _ellipse(X, Y, sx * 0.045, -0.03, 0.03 * taper, 0.11 * taper, theta=sx * 0.3, edge=e)
            img = img * (1 - v) + p.i["csf"] * v
        for (lx, ly), r in zip(p.lesions, p.lesion_r):
            les = _ellipse(X, Y, lx * p.aspect * taper, ly * taper, r, r * 1.3, edge=0.01) * brain
            img = img * (1 - les) + p.i["lesion"] * les
    img = np.clip(img, 0, None)
    ph = np.pi * (
        p.phase[0] + 0.6 * p.phase[1] * X + 0.6 * p.phase[2] * Y + 0.8 * p.phase[3] * X * Y + 0.3 * p.phase[4] * tex
    )
    return img * np.exp(1j * ph)


def phantom_volume(kind: str, n_slices: int, shape: tuple[int, int], seed: int) -> np.ndarray:
    """Complex phantom volume ``(S, h, w)`` (complex128) drawn from ``seed``."""
    if kind not in KINDS:
        raise ValueError(f"phantom kind must be one of {KINDS}, got {kind!r}")
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    p = _Params(kind, np.random.default_rng(seed))
    zs = np.linspace(-0.8, 0.8, n_slices) if n_slices > 1 else np.zeros(1)
    return np.stack([_slice(p, shape, z) for z in zs])
