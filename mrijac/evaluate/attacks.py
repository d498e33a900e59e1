"""Perturbations of the measurements: first-order worst case, PGD, random, small features.

The maths for one batch ``y`` ``(B, …)``, operator ``A``, reconstructor ``f``:

* the perturbation ``e`` lives on the *sampled* measurement entries (``support``: where
  ``A Aᴴ 1 ≠ 0`` — the mask, broadcast over coils) within the ℓ2 ball ``‖e_b‖ ≤ r_b``,
  ``r_b = ε ‖y_b‖``;
* **first order**: ``e = r A v / ‖A v‖`` with ``v`` the top right singular vector of ``J(y) A``
  (converged, :func:`~mrijac.jacobian.reference.reference_sigma`) — the image-space
  perturbation consistent with the acquisition that the linearised network amplifies most, by
  ``σ``; the *amplification* ``max_± ‖f(y ± e) − f(y)‖ / ‖e‖`` says how far the network departs
  from its linearisation;
* **PGD**: ``K`` normalised gradient-ascent steps on ``‖f(y + e) − x‖²`` (or on
  ``‖f(y + e) − f(y)‖²``), each followed by the projection onto the support and the ball;
  started from the first-order and from a random direction, the better kept per sample;
* **random**: a complex Gaussian on the support, scaled to ``r``;
* **small feature**: a disc of radius ``ρ`` and contrast ``c`` added to the image with the
  zero-filled image's local phase, ``y' = y + A(feature)``; the contrast kept is the mean of
  ``f(y') − f(y)`` over the disc divided by ``c``.
"""

from __future__ import annotations

import torch

from ..jacobian.reference import reference_sigma
from ..jacobian.vectors import normalize, randn_like
from ..operators.base import batch_norm2


def _bshape(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return s.view(-1, *[1] * (like.dim() - 1))


def support(A, y: torch.Tensor) -> torch.Tensor:
    """Sampled measurement entries of ``y``'s shape, 0/1 real: ``A Aᴴ 1 ≠ 0``."""
    with torch.no_grad():
        s = A(A.adjoint(torch.ones_like(y))).abs()
    return (s > 1e-6 * s.reshape(s.shape[0], -1).amax(1).clamp_min(1e-30).view(-1, *[1] * (s.dim() - 1))).to(
        y.real.dtype
    )


def project(e: torch.Tensor, radius: torch.Tensor, sup: torch.Tensor) -> torch.Tensor:
    """``e`` restricted to the support and scaled into the ball ``‖e_b‖ ≤ radius_b``."""
    e = e * sup
    n = batch_norm2(e).clamp_min(1e-30)
    return e * _bshape(torch.clamp(radius / n, max=1.0), e)


def first_order(model, y, A, tol: float = 1e-3, max_iter: int = 80, generator=None):
    """``(direction, sigma)``: the unit measurement-space direction ``A v / ‖A v‖`` of the top
    right singular vector of ``J(y) A`` (on the support by construction) and ``σ`` ``(B,)``."""
    model.eval()
    r = reference_sigma(model.as_function(A), y, A, tol, max_iter, generator=generator)
    with torch.no_grad():
        d = normalize(A(r.v.to(y.device)))
    return d, r.sigma


def amplification(model, y, A, direction, radius, f0=None, outputs: bool = False):
    """``max_± ‖f(y ± e) − f(y)‖ / ‖e‖`` with ``e = radius · direction`` ``(B,)``; with
    ``outputs`` also ``[f(y + e), f(y − e)]`` (so callers need not run them again).  ``f0``:
    ``f(y)`` if already known."""
    with torch.no_grad():
        f0 = model(y, A) if f0 is None else f0
        e = direction * _bshape(radius, direction)
        outs = [model(y + s * e, A) for s in (1.0, -1.0)]
        gain = torch.maximum(*[batch_norm2(o - f0) / radius.clamp_min(1e-30) for o in outs])
    return (gain, outs) if outputs else gain


def pgd(model, y, A, target, radius, steps: int, starts: list, sup=None) -> torch.Tensor:
    """Worst perturbation ``e`` ``(B, …)`` found by projected normalised gradient ascent on
    ``‖f(y + e) − target‖²`` from each of ``starts`` (unit directions, or ``None`` for ``e = 0``),
    keeping per sample the best iterate of all starts and steps.  Step ``e ← P(e + r ĝ)``: on a
    linear map with ``target = f(y)`` this is a damped power iteration on ``JᵀJ``, so it climbs to
    the top singular vector (``‖J e‖ → σ r``)."""
    sup = support(A, y) if sup is None else sup
    best, best_val = torch.zeros_like(y), torch.full((y.shape[0],), -1.0, dtype=y.real.dtype, device=y.device)

    def keep(e):
        nonlocal best, best_val
        with torch.no_grad():
            val = batch_norm2(model(y + e, A) - target)
        take = val > best_val
        best = torch.where(_bshape(take, best), e.detach(), best)
        best_val = torch.maximum(val, best_val)

    for d0 in starts:
        e = project(d0 * _bshape(radius, d0), radius, sup) if d0 is not None else torch.zeros_like(y)
        keep(e)
        for _ in range(steps):
            e = e.detach().requires_grad_()
            with torch.enable_grad():
                obj = (model(y + e, A) - target).reshape(y.shape[0], -1).pow(2).sum()
                (g,) = torch.autograd.grad(obj, e)  # complex: the steepest-ascent direction
            g = normalize(g * sup)
            e = project(e.detach() + g * _bshape(radius, g), radius, sup)
            keep(e)
    return best


def random_perturbation(y, radius, sup, generator=None) -> torch.Tensor:
    """A complex (or real) Gaussian on the support, scaled to ``radius``."""
    g = randn_like(y, generator) * sup
    return g * _bshape(radius / batch_norm2(g).clamp_min(1e-30), g)


def disc_feature(A, y, crop, radius_px: int, contrast, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A disc of ``radius_px`` pixels at a seeded position inside the anatomy (where the
    zero-filled magnitude exceeds 30 % of its maximum), as ``(k-space change A(feature),
    mask (B, h, w) of the disc in the cropped output)``.  The disc carries the zero-filled
    image's local phase, so it adds ``contrast`` to the magnitude."""
    with torch.no_grad():
        img = A.adjoint(y)  # (B, H, W) complex: the full image grid
        H, W = img.shape[-2:]
        h, w = crop if crop else (H, W)
        top, left = (H - h) // 2, (W - w) // 2
        mag = img.abs()
        yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        feat = torch.zeros_like(img)
        disc_out = torch.zeros(img.shape[0], h, w, dtype=mag.dtype)
        margin = radius_px + 2
        for b in range(img.shape[0]):
            m = mag[b, top + margin : top + h - margin, left + margin : left + w - margin].cpu()
            cand = torch.nonzero(m > 0.3 * m.max())
            if len(cand) == 0:
                cand = torch.nonzero(torch.ones_like(m))
            i, j = cand[int(torch.randint(len(cand), (), generator=generator))].tolist()
            ci, cj = top + margin + i, left + margin + j
            disc = ((yy - ci) ** 2 + (xx - cj) ** 2 <= radius_px**2).to(img.device)
            phase = torch.exp(1j * torch.angle(img[b][disc].mean())) if disc.any() else 1.0
            c = float(contrast[b]) if torch.is_tensor(contrast) else float(contrast)
            feat[b][disc] = c * phase
            disc_out[b] = disc[top : top + h, left : left + w].cpu()
        return A(feat), disc_out
