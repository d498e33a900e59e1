"""Vectors of the Jacobian tools: real views, random and unit vectors per sample, operator
application where ``None`` stands for the identity (the model-agnostic ``‖J‖`` terms)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Optional

import torch

from ..operators.base import batch_norm2

if TYPE_CHECKING:
    from ..operators.base import LinearOperator


def to_real(t: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def randn_like(t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal tensor like ``t`` (complex: standard normal real and imaginary parts)."""
    if t.is_complex():
        z = torch.randn(t.shape + (2,), generator=generator, dtype=t.real.dtype)
        return torch.view_as_complex(z).to(t.device)
    return torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device)


def apply_op(op, v):
    return v if op is None else op(v)


def adjoint_op(op, g):
    return g if op is None else op.adjoint(g)


def normalize(v: torch.Tensor) -> torch.Tensor:
    return v / batch_norm2(v).clamp_min(1e-30).view(-1, *[1] * (v.dim() - 1))


def fd_steps(y: torch.Tensor, d: torch.Tensor, h: float) -> torch.Tensor:
    """Forward-difference steps ``t_b = h·‖y_b‖/‖d_b‖`` ``(B,)`` (real dtype of ``y``): a step of
    relative size ``h`` from ``y`` along ``d``, for ``J d ≈ (f(y + t d) − f(y)) / t``."""
    tiny = torch.finfo(y.real.dtype).tiny
    return h * batch_norm2(y).clamp_min(tiny) / batch_norm2(d).clamp_min(tiny)


def input_dim(v: torch.Tensor) -> int:
    return v[0].numel() * (2 if v.is_complex() else 1)


def random_input(op, y: torch.Tensor, generator=None) -> torch.Tensor:
    """Standard normal vector in A's input space (shaped like ``Aᴴ y``)."""
    with torch.no_grad():
        like = y if op is None else op.adjoint(y)
    return randn_like(like, generator)


def unit_start(op, y: torch.Tensor, v: torch.Tensor | None, generator=None) -> torch.Tensor:
    """A power iteration's start in the input space of ``op``: ``v`` (e.g. a carried vector) or,
    when ``None``, a random one, detached, on ``y``'s device, normalised per sample."""
    v = random_input(op, y, generator) if v is None else v
    return normalize(v.detach().to(y.device))


# Types of the Jacobian tools' arguments: a network on a batch, and a forward operator (or
# ``None`` for the identity, i.e. the model-agnostic ‖J‖ terms).
Network = Callable[[torch.Tensor], torch.Tensor]
Operator = Optional["LinearOperator"]
