"""A few Lanczos steps that improve a warm-start vector before the fused power step.

:func:`lanczos_start` runs ``k`` steps of Golub–Kahan–Lanczos bidiagonalization of
``M = J(y) A`` (one JVP and one VJP each, full reorthogonalization) from a unit vector ``v₁``:

    M v_j = α_j u_j + β_{j−1} u_{j−1},      Mᴴ u_j = α_j v_j + β_j v_{j+1},

so ``Mᴴ U_k = V_{k+1} C`` with ``C`` the ``(k+1)×k`` lower-bidiagonal matrix (``α`` on the
diagonal, ``β`` below).  It returns ``v = V_{k+1} p`` with ``p`` the top left singular vector of
``C``: the vector of the Krylov space ``span{v₁, MᴴM v₁, …, (MᴴM)^k v₁}`` that maximizes the
lower bound ``‖U_kᴴ M v‖ = ‖Cᵀ p‖ = σ_max(C) ≤ ‖M v‖``.  For ``k = 1`` this is exactly one
power step, ``v = Mᴴ M v₁ / ‖·‖``; for ``k > 1`` the Krylov space holds the power iterate, and
on the flat top of a trained reconstructor's spectrum it converges much faster
(``experiments/results/block_iteration_revisit.md``: from a slice's own 4-epoch-old vector,
0.86 / 0.91 / 0.95 of the converged σ after 2 / 3 / 4 products, power iteration 0.88 after 4).
The extra ``β_k v_{k+1}`` column (the last VJP) is what the standard Ritz vector ignores.
"""

from __future__ import annotations

import torch

from .products import jvp
from .vectors import Network, adjoint_op, apply_op, to_real


def _dots(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Per term and sample real inner products, ``(K·S,)`` float64 (term-major)."""
    return torch.cat(
        [
            (to_real(x).reshape(x.shape[0], -1).double() * to_real(y).reshape(y.shape[0], -1).double()).sum(1)
            for x, y in zip(a, b)
        ]
    )


def _scale(a: list[torch.Tensor], c: torch.Tensor) -> list[torch.Tensor]:
    """``c[k·S + s] · a_k[s]`` for ``c`` ``(K·S,)``."""
    S = a[0].shape[0]
    return [x * c[i * S : (i + 1) * S].to(x.real.dtype).view(-1, *[1] * (x.dim() - 1)) for i, x in enumerate(a)]


def _sub(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[torch.Tensor]:
    return [x - y for x, y in zip(a, b)]


def _orth(a: list[torch.Tensor], basis: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Remove the components along an orthonormal ``basis`` (of per-term vector lists), twice."""
    for _ in range(2 if basis else 0):
        for q in basis:
            a = _sub(a, _scale(q, _dots(q, a)))
    return a


def lanczos_start(
    fn: Network, ys: torch.Tensor, ops: list, vs: list[torch.Tensor], k: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``k`` Golub–Kahan–Lanczos steps for each ``M_t = J(y_s) A_t`` from ``vs[t]``.

    Args:
        fn: the network on a batch ``(K·S, …)`` (the ``K`` terms' copies of the ``S`` samples
            stacked term-major; the samples must not interact).
        ys: measurements ``(S, …)``.
        ops: ``K`` operators restricted to the ``S`` samples, ``None`` for the identity (``‖J‖``).
        vs: ``K`` starting vectors ``(S, …)`` in the input spaces of ``ops`` (unit or not).
        k: Lanczos steps (``k`` JVPs by forward mode and ``k`` VJPs; one forward graph).
    Returns:
        ``(v, bound)``: ``K`` unit vectors ``(S, …)`` (detached) and ``bound`` ``(K, S)`` float64,
        ``σ_max(C) ≤ ‖M v‖ ≤ σ₁(M)`` per term and sample.
    """
    if k < 1:
        raise ValueError(f"lanczos_start needs k >= 1 steps, got {k}")
    K, S = len(ops), ys.shape[0]
    Y = (torch.cat([ys] * K) if K > 1 else ys).detach()
    leaf, graph = Y.clone().requires_grad_(), []

    def M(v):
        d = torch.cat([apply_op(op, x) for op, x in zip(ops, v)])
        return list(jvp(fn, Y, d.to(Y.dtype), "forward")[1].split(S))

    def Mh(u):
        if not graph:  # built after the first JVP (k = 1: the memory profile of a power step)
            with torch.enable_grad():
                graph.append(fn(leaf))  # kept for the later VJPs
        out = graph[0]
        (g,) = torch.autograd.grad(out, leaf, torch.cat(u).to(out.dtype), retain_graph=True)
        return [adjoint_op(op, x) for op, x in zip(ops, g.split(S))]

    def unit(a):
        n = _dots(a, a).sqrt()
        return _scale(a, 1 / n.clamp_min(1e-300)), n

    v, _ = unit([x.detach() for x in vs])
    V, U, alphas, betas = [v], [], [], []
    for j in range(k):
        p = M(V[-1])
        if U:
            p = _sub(p, _scale(U[-1], betas[-1]))
        u, a = unit(_orth(p, U))
        U.append(u)
        alphas.append(a)
        r = _sub(Mh(u), _scale(V[-1], a))
        v_next, b = unit(_orth(r, V))
        # an invariant subspace (β ≈ 0): the next vector carries nothing (zero), the bound is final
        dead = b <= 1e-10 * torch.stack(alphas, 1).amax(1).clamp_min(1e-300)
        b = torch.where(dead, torch.zeros_like(b), b)
        v_next = _scale(v_next, (~dead).double())
        betas.append(b)
        V.append(v_next)
    n = K * S
    C = torch.zeros(n, k + 1, k, dtype=torch.float64, device=ys.device)
    for j in range(k):
        C[:, j, j] = alphas[j]
        C[:, j + 1, j] = betas[j]
    P, sig, _ = torch.linalg.svd(C, full_matrices=False)
    p = P[:, :, 0]  # (n, k+1)
    p = p * torch.where(p[:, :1] < 0, -1.0, 1.0)  # sign: along v₁ where it can be
    new = [torch.zeros_like(x) for x in V[0]]
    for j in range(k + 1):
        new = [x + y for x, y in zip(new, _scale(V[j], p[:, j]))]
    new, _ = unit(new)
    return [x.detach() for x in new], sig[:, 0].reshape(K, S)
