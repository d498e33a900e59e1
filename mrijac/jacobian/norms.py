"""Estimates of ``||J(y) A||₂`` (power iteration) and ``||J(y) A||F²`` (random projections).

``A`` is a :class:`~mrijac.operators.LinearOperator` mapping images to measurements (or
``None`` for the identity, giving the model-agnostic ``||J(y)||``).  Every estimate is per
sample, ``(B,)``, from batched products — never a full Jacobian.
"""

from __future__ import annotations

import torch

from ..operators.base import batch_norm2
from .products import check_method, jvp, third_order_hint, vjp
from .vectors import Network, Operator, adjoint_op, apply_op, input_dim, normalize, randn_like, random_input


def power_iteration(
    f: Network,
    y: torch.Tensor,
    ops: list,
    n_iter: int = 1,
    method: str = "forward",
    u0: list | None = None,
    create_graph: bool = False,
    return_vectors: bool = False,
    generator: torch.Generator | None = None,
):
    """Joint power iteration for ``||J(y) A_k||₂``, ``k = 1..K``, stacked in one batch.

    The K problems share ``y``: they run as one batch ``cat([y]*K)`` whose tangents are
    ``cat([A_k v_k])``, so each product costs one (bigger) pass instead of K.  One iteration is
    one VJP and one JVP: ``v ← A_kᴴ Jᵀ u / ||·||``, ``u ← J A_k v``, ``σ = ||u||`` (v unit).
    The first ``u`` is random (cold start) or ``u0`` (warm start: the left singular vectors of
    an earlier call — they live in the output space, which does not change with the mask).
    The last JVP is the only one that may carry a graph (``create_graph``); its primal output is
    returned for the data loss, and its normalised tangent is the next warm start, for free.

    Returns ``(out, sigmas, vectors)``: ``out`` ``(B, …)`` = f(y) (first copy), ``sigmas`` a
    list of K ``(B,)`` tensors, ``vectors`` a list of K unit output-space vectors ``u_k`` (or
    ``None`` unless ``return_vectors``).
    """
    check_method(method)
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    K, B = len(ops), y.shape[0]
    y = y.detach()
    Y = torch.cat([y] * K) if K > 1 else y

    def vjp_to_vectors(us):
        u = None if us is None else (torch.cat(us) if K > 1 else us[0])
        _, g, _ = vjp(f, Y, u, generator=generator)
        return [normalize(adjoint_op(op, gk)) for op, gk in zip(ops, g.split(B))]

    warm = u0 is not None and all(u is not None for u in u0)
    vs = vjp_to_vectors([u.detach() for u in u0] if warm else None)
    for _ in range(n_iter - 1):
        _, t = jvp(f, Y, torch.cat([apply_op(op, v) for op, v in zip(ops, vs)]), method)
        vs = vjp_to_vectors(list(t.split(B)))
    tangent = torch.cat([apply_op(op, v) for op, v in zip(ops, vs)])
    out_all, t = jvp(f, Y, tangent, method, create_graph=create_graph)
    ts = list(t.split(B))
    sigmas = [batch_norm2(tk) for tk in ts]
    vectors = [normalize(tk.detach()) for tk in ts] if return_vectors else None
    return out_all[:B], sigmas, vectors


def spectral_norm(
    f: Network,
    y: torch.Tensor,
    A: Operator = None,
    n_iter: int = 3,
    method: str = "forward",
    u0: torch.Tensor | None = None,
    return_vector: bool = False,
    create_graph: bool = False,
    generator: torch.Generator | None = None,
):
    """Estimate ``σ_b = ||J_f(y_b) A_b||₂`` per sample by power iteration (Algorithm 2).

    Args:
        f: network ``y -> x̂``; y: measurements ``(B, …)`` (complex allowed).
        A: forward operator (images -> measurements) or ``None`` for ``||J_f(y)||₂``.
        n_iter: power iterations (each one VJP + one JVP).  The estimate never exceeds the
            true norm and grows towards it with ``n_iter``.
        method: ``"forward"`` (forward-mode AD) or ``"double_vjp"``.
        u0: warm start — left singular vectors ``(B, …)`` in the output space of ``f``, as
            returned by an earlier call with ``return_vector=True``.
        return_vector: also return the unit vectors ``u = J A v / σ`` for reuse as ``u0``.
        create_graph: make ``σ`` differentiable with respect to the parameters of ``f``.
    Returns:
        ``σ`` ``(B,)`` real, or ``(σ, u)`` when ``return_vector``.
    """
    _, sig, vec = power_iteration(
        f, y, [A], n_iter, method, None if u0 is None else [u0], create_graph, return_vector, generator
    )
    return (sig[0], vec[0]) if return_vector else sig[0]


def frobenius_terms(
    f: Network,
    y: torch.Tensor,
    ops: list,
    n_proj: int = 1,
    method: str = "forward",
    create_graph: bool = False,
    generator: torch.Generator | None = None,
):
    """Unbiased estimates of ``||J(y) A_k||F²`` for K operators, stacked in one pass.

    ``method="forward"``: ``d_in · ||J A ẑ||²`` with ``ẑ`` uniform on the unit sphere of A's
    input space (one dual forward pass for all K·n_proj projections; its primal output is
    returned).  ``method="double_vjp"``: the paper's Algorithm 1, ``d_out · ||Aᴴ Jᵀ ẑ||²`` with
    ``ẑ`` uniform on the output sphere (training through it needs double backward).  Both
    have expectation ``tr((JA)ᵀ JA)``.  Returns ``(out, [ (B,) per operator ])``.
    """
    check_method(method)
    if n_proj < 1:
        raise ValueError(f"n_proj must be >= 1, got {n_proj}")
    K, B = len(ops), y.shape[0]
    y = y.detach()
    Y = torch.cat([y] * (K * n_proj)) if K * n_proj > 1 else y
    if method == "forward":
        tangents = []
        for op in ops:
            for _ in range(n_proj):
                z = normalize(random_input(op, y, generator))
                tangents.append(apply_op(op, z * input_dim(z) ** 0.5))
        out_all, t = jvp(f, Y, torch.cat(tangents), "forward", create_graph=create_graph)
        sq = batch_norm2(t).pow(2).view(K, n_proj, B).mean(1)
    else:
        y_leaf = Y.detach().requires_grad_()
        with torch.enable_grad():
            out_all = f(y_leaf)
            z = normalize(randn_like(out_all, generator)) * input_dim(out_all) ** 0.5
            try:
                (g,) = torch.autograd.grad(out_all, y_leaf, z, create_graph=create_graph)
            except RuntimeError as err:
                raise third_order_hint(err) from err
        parts = g.split(B)
        sq = (
            torch.stack(
                [batch_norm2(adjoint_op(ops[k], parts[k * n_proj + j])).pow(2) for k in range(K) for j in range(n_proj)]
            )
            .view(K, n_proj, B)
            .mean(1)
        )
        if not create_graph:
            out_all, sq = out_all.detach(), sq.detach()
    return out_all[:B], list(sq)


def frobenius_norm_sq(
    f: Network,
    y: torch.Tensor,
    A: Operator = None,
    n_proj: int = 1,
    method: str = "forward",
    create_graph: bool = False,
    generator: torch.Generator | None = None,
):
    """Unbiased estimate of ``||J_f(y_b) A_b||F²`` per sample, ``(B,)`` (Algorithm 1).

    See :func:`frobenius_terms` for the two estimators; ``n_proj`` projections are averaged.
    """
    return frobenius_terms(f, y, [A], n_proj, method, create_graph, generator)[1][0]
