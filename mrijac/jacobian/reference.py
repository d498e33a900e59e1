"""Converged largest singular value of ``J(y) A`` per sample (the reference σ).

A fixed number of power iterations is an estimate from below whose error depends on how flat
the top of the spectrum is — and the spectrum of a trained reconstructor's Jacobian is flat
(σ₂/σ₁ close to 1), so ``n = 10`` can still be 5–30 % low.  The reference instead runs
Golub–Kahan–Lanczos bidiagonalization with full reorthogonalization, batched over samples and
driven by the same products as training (one forward-mode JVP ``J A v`` and one VJP
``Aᴴ Jᵀ u`` per step), until the relative residual of the top Ritz triple is below ``tol``:

    A_b V_k = U_k B_k,     (J A)ᵀ U_k = V_k B_kᵀ + β_{k+1} v_{k+1} e_kᵀ,

``B_k`` upper bidiagonal (``α`` on the diagonal, ``β`` above).  With ``B_k = P Σ Qᵀ`` the
Ritz triple ``(σ₁, ũ = U_k p₁, ṽ = V_k q₁)`` satisfies ``J A ṽ = σ₁ ũ`` exactly and
``‖(J A)ᵀ ũ − σ₁ ṽ‖ = β_{k+1} |p₁[k]|`` — the returned residual (divided by σ₁).  A small
residual guarantees a singular value of ``J A`` within ``residual·σ₁`` of the estimate; Lanczos
converges to the *top* one at a rate governed by the gap relative to the spread of the
spectrum, far faster than power iteration's ``(σ₂/σ₁)^{2k}`` on a flat top.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .products import jvp, third_order_hint
from .vectors import Network, Operator, adjoint_op, apply_op, fd_steps, normalize, random_input, to_real


@dataclass
class ReferenceSigma:
    """Result of :func:`reference_sigma`, per sample ``b`` of the batch.

    Attributes:
        sigma: ``(B,)`` float64, top singular value of ``J(y_b) A_b`` (Ritz value).
        residual: ``(B,)`` float64, ``‖(J A)ᵀ ũ − σ ṽ‖ / σ`` (relative residual).
        converged: ``(B,)`` bool, ``residual <= tol``.
        iterations: Lanczos steps taken (each one JVP + one VJP of the whole batch).
        v: ``(B, …)`` unit right singular vector in ``A``'s input space (image space; the
            measurement space when ``A`` is ``None``) — a warm start for the next call.
        u: ``(B, …)`` unit left singular vector in the output space of ``f``.
        v_next: ``(B, …)`` unit vector of ``span V_{k+1}`` (the last VJP included) that
            maximizes ``‖U_kᴴ J A v‖ = σ_max(C)``, ``C`` the ``(k+1)×k`` lower bidiagonal of
            ``(J A)ᴴ U_k = V_{k+1} C``; for ``k = 1`` exactly one power step ``Mᴴ M v₀ / ‖·‖``
            — the start for a next step (``bound``: ``σ_max(C) ≤ ‖J A v_next‖ ≤ σ₁``, ``(B,)``).
    """

    sigma: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor
    iterations: int
    v: torch.Tensor
    u: torch.Tensor
    v_next: torch.Tensor
    bound: torch.Tensor


def _dots(a: torch.Tensor, basis: list[torch.Tensor]) -> torch.Tensor:
    """Real inner products ``⟨basis_j[b], a[b]⟩`` as ``(B, k)`` float64."""
    ar = to_real(a).reshape(a.shape[0], -1).double()
    return torch.stack([(to_real(q).reshape(q.shape[0], -1).double() * ar).sum(1) for q in basis], 1)


def _orthogonalize(a: torch.Tensor, basis: list[torch.Tensor]) -> torch.Tensor:
    """Remove the components of ``a`` along the (orthonormal) ``basis``, twice (CGS2)."""
    if not basis:
        return a
    for _ in range(2):
        c = _dots(a, basis).to(a.real.dtype)
        a = a - sum(c[:, j].view(_bshape(q)) * q for j, q in enumerate(basis))
    return a


def _combine(basis: list[torch.Tensor], coef: torch.Tensor) -> torch.Tensor:
    """``Σ_j coef[b, j] · basis_j[b]`` for ``coef`` ``(B, k)``."""
    c = coef.to(basis[0].real.dtype)
    return sum(c[:, j].view(_bshape(q)) * q for j, q in enumerate(basis))


def reference_sigma(
    f: Network,
    y: torch.Tensor,
    A: Operator = None,
    tol: float = 1e-3,
    max_iter: int = 60,
    v0: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    stall_tol: float | None = None,
    fd_step: float | None = None,
    graph: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> ReferenceSigma:
    """Converged ``σ_b = ‖J_f(y_b) A_b‖₂`` per sample by Lanczos bidiagonalization.

    Args:
        f: network ``y -> x̂`` on a batch ``(B, …)`` whose samples do not interact (a closure
            over the batch's operator, e.g. ``Reconstructor.as_function(A)``).
        y: measurements ``(B, …)``, real or complex.
        A: forward operator (images -> measurements), or ``None`` for ``‖J_f(y)‖₂``.
        tol: stop when every sample's relative residual is ``<= tol`` ...
        stall_tol: ... or its top Ritz value (which only grows with the steps) rose by less
            than ``stall_tol`` (relative; default ``tol/10``) over the last 3 steps.  On a
            clustered top (an untrained residual network: many σ ≈ 1) the *value* settles
            long before the residual of any single vector does; ``converged`` still reports
            the residual test alone.
        max_iter: cap on Lanczos steps (memory: ``2·max_iter`` vectors per sample).
        v0: starting right vectors ``(B, …)`` (e.g. the ``v`` of an earlier call), else random.
        generator: for the random start.
        fd_step: if given, the JVPs are forward differences ``(f(y + t d) − f(y)) / t``,
            ``d = A v``, ``t = fd_step·‖y_b‖/‖d_b‖`` (one plain forward without graph instead
            of a forward-mode pass; relative error ~1e-4–1e-3 in float32 with
            :func:`~mrijac.jacobian.finite_diff.default_step`, see there) — for the few warm
            steps of a penalty, not for a reference.
        graph: ``(y_leaf, f(y_leaf))``, a forward graph of ``f`` at ``y`` that the caller built
            (``y_leaf`` a copy of ``y`` requiring grad): the VJPs (and ``fd_step``'s base
            ``f(y)``) use it instead of a graph of their own, and leave it usable afterwards,
            so that the caller can reuse the same forward pass (e.g. for its loss).
    Returns:
        :class:`ReferenceSigma` (all detached).  Cost per step: one forward-mode pass (or, with
        ``fd_step``, one forward without graph) and one backward pass of ``f`` over the batch
        (the forward graph for the VJPs is built once).
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    y = y.detach()
    B = y.shape[0]
    if graph is not None:
        y_leaf, out = graph
        if not (y_leaf.requires_grad and y_leaf.shape == y.shape and out.shape[0] == B):
            raise ValueError("graph must be (y_leaf, f(y_leaf)) with y_leaf of y's shape requiring grad")
        graph = [out]
    else:
        y_leaf, graph = y.clone().requires_grad_(), []
    if fd_step is not None and not 0 < float(fd_step) < 1:
        raise ValueError(f"fd_step must be in (0, 1), got {fd_step}")

    def forward_graph():
        if not graph:  # kept: every later VJP (and fd_step's base f(y)) reuses this graph
            try:
                with torch.enable_grad():
                    graph.append(f(y_leaf))
            except RuntimeError as err:
                raise third_order_hint(err) from err
        return graph[0]

    def JAv(v):
        d = apply_op(A, v)
        if fd_step is None:  # the graph is built after the first JVP: a power step's memory profile
            return jvp(f, y, d, "forward")[1]
        base = forward_graph().detach()
        t = fd_steps(y, d, fd_step)
        with torch.no_grad():
            return (f(y + t.view(_bshape(y)).to(y.dtype) * d) - base) / t.view(_bshape(base))

    def AtJtu(u):
        out = forward_graph()
        (g,) = torch.autograd.grad(out, y_leaf, u.to(out.dtype), retain_graph=True)
        return adjoint_op(A, g)

    v = random_input(A, y, generator) if v0 is None else v0.detach().to(y.device)
    v = normalize(v)
    V, U = [v], []
    alphas, betas = [], []  # (B,) float64 each; betas[k] = β_{k+2} couples v_{k+2}
    dev = y.device
    sigma = torch.zeros(B, dtype=torch.float64, device=dev)
    resid = torch.full((B,), float("inf"), dtype=torch.float64, device=dev)
    P = Q = None
    k = 0
    stall_tol = tol / 10 if stall_tol is None else float(stall_tol)
    history = []
    for k in range(1, max_iter + 1):
        d = JAv(V[-1])
        if U:
            d = d - betas[-1].to(d.real.dtype).view(_bshape(d)) * U[-1]
        d = _orthogonalize(d, U)
        a = _norm64(d)
        U.append(d / a.clamp_min(1e-300).to(d.real.dtype).view(_bshape(d)))
        alphas.append(a)
        g = AtJtu(U[-1])
        g = g - a.to(g.real.dtype).view(_bshape(g)) * V[-1]
        g = _orthogonalize(g, V)
        b = _norm64(g)
        # an invariant subspace (β ≈ 0, e.g. a Jacobian of low rank): restart that sample
        # with a random vector orthogonal to V (β = 0 decouples it; its σ is final)
        dead = b <= 1e-10 * torch.stack(alphas, 1).amax(1).clamp_min(1e-300)
        if bool(dead.any()) and k < max_iter:
            r = _orthogonalize(random_input(A, y, generator), V)
            g = torch.where(dead.view(_bshape(g)), r, g)
            b = torch.where(dead, torch.zeros_like(b), b)
            nb = torch.where(dead, _norm64(r), b)
        else:
            nb = b
        betas.append(b)
        Bk = torch.diag_embed(torch.stack(alphas, 1))
        if k > 1:
            Bk = Bk + torch.diag_embed(torch.stack(betas[:-1], 1), offset=1)
        P, S, Qh = torch.linalg.svd(Bk)
        Q = Qh.transpose(1, 2)
        sigma = S[:, 0]
        resid = b * P[:, -1, 0].abs() / sigma.clamp_min(1e-300)
        history.append(sigma)
        stalled = (
            (history[-1] - history[-4]) <= stall_tol * history[-1]
            if k >= 4
            else torch.zeros_like(resid, dtype=torch.bool)
        )
        V.append(g / nb.clamp_min(1e-300).to(g.real.dtype).view(_bshape(g)))  # v_{k+1}
        if bool(((resid <= tol) | stalled).all()):
            break
    v_top = normalize(_combine(V[:k], Q[:, :, 0]))
    u_top = normalize(_combine(U, P[:, :, 0]))
    # the extended (k+1)×k bidiagonal C: (J A)ᴴ U_k = V_{k+1} C (β = 0 where a sample restarted)
    C = torch.zeros(B, k + 1, k, dtype=torch.float64, device=dev)
    for j in range(k):
        C[:, j, j] = alphas[j]
        C[:, j + 1, j] = betas[j]
    Pc, Sc, _ = torch.linalg.svd(C, full_matrices=False)
    p = Pc[:, :, 0] * torch.where(Pc[:, :1, 0] < 0, -1.0, 1.0)  # sign: along v₀ where it can be
    v_next = normalize(_combine(V[: k + 1], p))
    return ReferenceSigma(
        sigma.detach(),
        resid.detach(),
        (resid <= tol).detach(),
        k,
        v_top.detach(),
        u_top.detach(),
        v_next.detach(),
        Sc[:, 0].detach(),
    )


def _bshape(a: torch.Tensor) -> tuple:
    return (-1,) + (1,) * (a.dim() - 1)


def _norm64(a: torch.Tensor) -> torch.Tensor:
    return to_real(a).reshape(a.shape[0], -1).double().norm(dim=1)


def lanczos_start(
    fn: Network,
    ys: torch.Tensor,
    ops: list,
    vs: list[torch.Tensor],
    k: int,
    fd_step: float | None = None,
    graph: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``k`` Lanczos steps from each carried vector: the warm start of the fused power step.

    For each term ``t``, :func:`reference_sigma` stopped after ``k`` steps from ``vs[t]`` and
    its :attr:`ReferenceSigma.v_next` — exactly one power step for ``k = 1``; for ``k > 1`` the
    Krylov space holds the power iterate and converges much faster on the flat top of a trained
    reconstructor's spectrum (``experiments/results/block_iteration_revisit.md``: from a
    slice's own 4-epoch-old vector 0.86 / 0.91 / 0.95 of the converged σ after 2 / 3 / 4 steps).

    Args:
        fn: the network on the ``S`` samples ``ys`` ``(S, …)`` (samples must not interact);
            ops: ``K`` operators restricted to them, ``None`` for the identity (``‖J‖``);
            vs: ``K`` starting vectors ``(S, …)``; k: steps (``k`` JVPs + VJPs); fd_step: JVPs
            by forward differences of this relative step (see :func:`reference_sigma`) instead
            of forward mode; graph: a forward graph ``(ys_leaf, fn(ys_leaf))`` to take the VJPs
            from, left usable (see :func:`reference_sigma`).
    Returns:
        ``(v, bound)``: ``K`` unit vectors ``(S, …)`` and ``(K, S)`` float64 lower bounds
        ``σ_max(C) ≤ ‖J A v‖ ≤ σ₁``.
    """
    if k < 1:
        raise ValueError(f"lanczos_start needs k >= 1 steps, got {k}")
    rs = [
        reference_sigma(fn, ys, op, tol=1e-12, max_iter=k, v0=v, stall_tol=0.0, fd_step=fd_step, graph=graph)
        for op, v in zip(ops, vs)
    ]
    return [r.v_next for r in rs], torch.stack([r.bound for r in rs])
