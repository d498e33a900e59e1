"""A lower bound on ``σ(J(y) A)`` and ``σ(J(y))`` that needs one JVP and no iteration.

For any direction ``v ≠ 0``, ``‖J A‖₂ ≥ ‖J A v‖ / ‖v‖`` (a Rayleigh quotient).  The
direction that matters is the measurement's own: ``v = Aᴴ y`` (``v = y`` for ``‖J‖``).  If the
reconstructor is *positively homogeneous* — ``f(c·y) = c·f(y)`` for ``c > 0``, which every
:class:`~mrijac.models.Reconstructor` with ``normalize=True`` is exactly (instance
normalisation divides the scale out and multiplies it back) — Euler's identity gives
``J(y) y = f(y)``; where moreover ``A Aᴴ y = y`` (a 0/1 sampling mask with an orthonormal FFT:
single-coil Cartesian MRI) the bound is

    σ(J(y) A) ≥ ‖f(y)‖ / ‖y‖   and   σ(J(y)) ≥ ‖f(y)‖ / ‖y‖.

A reconstructor with error ``e = ‖f(y) − x‖`` therefore has ``σ(J A) ≥ (‖x‖ − e) / ‖y‖``, and an
accurate one ``σ(J A) ≳ ‖x‖ / ‖y‖`` (:func:`data_floor`): the norm of the image over the norm of
what was measured of its k-space — 1.02–1.06 on average over the probe slices of the real 256² chest
task at 4× (``experiments/results/true_sigma_gpu_30ep.json``, ``data_floor``).  No penalty can
push σ below that without giving up accuracy, so a target such as "σ ≤ 0.85 × the unpenalised
network's" cannot be met where the unpenalised σ is within 1/0.85 of the floor (early epochs,
when σ is near 1.2).
"""

from __future__ import annotations

import torch

from ..operators.base import batch_norm2
from .products import jvp
from .vectors import Network, Operator, adjoint_op, apply_op


def sigma_floor(f: Network, y: torch.Tensor, A: Operator = None) -> torch.Tensor:
    """Per-sample lower bound ``‖J(y) A v‖ / ‖v‖ ≤ σ(J(y) A)`` at ``v = Aᴴ y``.

    Args:
        f: network on a batch ``(B, …)`` whose samples do not interact.
        y: measurements ``(B, …)``, real or complex.
        A: forward operator, or ``None`` for ``σ(J(y))`` (then ``v = y``).
    Returns:
        ``(B,)`` detached, in ``y``'s real dtype (0 for an all-zero ``y``).  One forward-mode
        pass; valid for any ``f`` (it is a Rayleigh quotient), equal to ``‖f(y)‖/‖y‖`` for a
        positively homogeneous ``f`` with ``A Aᴴ y = y``.
    """
    with torch.no_grad():
        v = adjoint_op(A, y.detach())
        d = apply_op(A, v)  # A Aᴴ y (= y where A Aᴴ is the identity on y)
    _, jv = jvp(f, y, d.to(y.dtype))
    nv = batch_norm2(v)
    return (batch_norm2(jv) / nv.clamp_min(torch.finfo(nv.dtype).tiny)).detach()


def data_floor(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``‖x_b‖ / ‖y_b‖`` per sample ``(B,)``: the floor of :func:`sigma_floor` for a
    homogeneous reconstructor that returns the target ``x`` exactly (``A Aᴴ y = y``)."""
    return (batch_norm2(x) / batch_norm2(y).clamp_min(torch.finfo(y.real.dtype).tiny)).detach()
