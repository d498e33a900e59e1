"""Measurement noise models."""

from __future__ import annotations

import torch

from .base import batch_norm2


def sphere_noise(
    like: torch.Tensor, eps: float | torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Noise uniform on the ℓ2 sphere of radius ``eps`` per sample (the paper's ``||n||₂ = ε``).

    ``like``: ``(B, …)`` real or complex (complex = real vector of twice the length).
    Returns a tensor of the same shape, dtype and device with ``||n_b||₂ = eps`` for every b.
    """
    rdtype = like.real.dtype
    shape = like.shape + ((2,) if like.is_complex() else ())
    z = torch.randn(shape, generator=generator, dtype=rdtype).to(like.device)
    if like.is_complex():
        z = torch.view_as_complex(z)
    eps = torch.as_tensor(eps, dtype=rdtype, device=like.device).reshape(-1)
    scale = eps / batch_norm2(z)
    return z * scale.view(-1, *[1] * (like.dim() - 1))


def complex_gaussian_noise(like: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Circular complex Gaussian noise with ``E|n_i|² = σ²`` (σ/√2 per real component).

    For a real ``like`` this is real Gaussian noise of standard deviation σ.
    """
    rdtype = like.real.dtype
    if like.is_complex():
        z = torch.randn(like.shape + (2,), generator=generator, dtype=rdtype) * (sigma / 2**0.5)
        return torch.view_as_complex(z).to(like.device)
    return (torch.randn(like.shape, generator=generator, dtype=rdtype) * sigma).to(like.device)


def add_noise(
    y: torch.Tensor, kind: str, level: float, mask: torch.Tensor | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``y + n`` with ``kind`` ``"sphere"`` (||n|| = level) or ``"gaussian"`` (σ = level).

    If ``mask`` is given the noise is restricted to sampled entries (multiplied by the mask).
    """
    if level < 0:
        raise ValueError(f"noise level must be >= 0, got {level}")
    if kind == "sphere":
        n = sphere_noise(y, level, generator) if mask is None else None
        if n is None:  # the sphere lives on the sampled entries
            n = complex_gaussian_noise(y, 1.0, generator) * mask
            n = n * (level / batch_norm2(n).clamp_min(1e-30)).view(-1, *[1] * (y.dim() - 1))
    elif kind == "gaussian":
        n = complex_gaussian_noise(y, level, generator)
        if mask is not None:
            n = n * mask
    else:
        raise ValueError(f"noise kind must be 'sphere' or 'gaussian', got {kind!r}")
    return y + n
