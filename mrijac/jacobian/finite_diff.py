"""Power iteration fused with the training pass: finite-difference JVP, VJP from the backward.

One training step of the spectral penalty with ``method="fd"`` costs one extra sample's forward
and backward per penalised sample and term, in the *same* batched pass as the data loss:

* the batch is ``cat([y, y_S + t·d_ja, y_S + t·d_j])`` — the measurements, then a perturbed
  copy of the selected samples ``S`` per term, with ``d = A v`` (``J A`` term) or ``d = v``
  (``J`` term), ``v`` the stored unit right singular vector of the sample (warm start) and
  ``t = h ||y_b|| / ||d_b||`` a relative step;
* the JVP is the forward difference ``J d ≈ (f(y + t d) − f(y)) / t``, so
  ``σ̂ = ||J d||`` and ``û = J d / σ̂``;
* the penalty is the surrogate ``s_b = ⟨û_b, (f(y_b + t d_b) − f(y_b)) / t⟩`` (value σ̂, gradient
  ``⟨û, ∂(J d)/∂θ⟩`` — the gradient of σ at a singular pair), maximised over the batch;
* the backward pass of the total loss, which training runs anyway, gives each copy the input
  gradient ``∝ Jᵀ û`` — the VJP half of the power iteration — from which
  ``v ← Aᴴ Jᵀ û / ||·||`` is the next warm start (a tensor hook fills it in).  Only the arg-max
  copy carries the penalty's weight; the others enter with weight ``OTHERS_WEIGHT`` (1e-6), just
  to receive their VJPs.

So the fused step is one power iteration (n = 1, warm), carried across steps, at the cost of
``|S|·K`` more samples in the batch instead of a forward-mode pass plus a VJP over the whole
batch.  A sample without a stored vector first gets at least one exact iteration, so that
first estimates — and the automatic λ — are at least forward mode's n = 1; ``n_pre`` exact
products (``n_iter − 1`` of the penalty: 2 by default) run as Lanczos steps
(:func:`~mrijac.jacobian.reference.lanczos_start`); ``pre_fd`` takes their JVPs by forward
differences too (a plain forward each instead of a forward-mode pass).  Their VJPs need a forward
graph at ``y_S``; built with the parameters, it also gives ``f(y_S)`` for the fused difference and
the loss, so the stacked pass then holds only ``cat([y_rest, copies])``, and both terms' Lanczos
steps use it — the same maths with one forward of the selected samples fewer (two with both
terms).  The difference quotient has
error ``O(t)`` (curvature, ReLU kinks crossed) plus rounding ``O(ε_mach / t)``; the default
``h = 0.3·√ε_mach`` (1e-4 in float32, 4.5e-9 in float64) balances them (see
:func:`default_step`).  Requires float32 or float64 passes (no autocast) and a
network whose samples do not interact (InstanceNorm yes; BatchNorm in training mode no).

Which samples to penalise, when only some are: :func:`fd_probe` gives every row of the batch a
fresh lower bound ``‖J A v_b‖`` along its stored vector by one forward difference without graph
(after the batch's own ``f(y)``, which :func:`fd_power_step` then takes as ``base``);
``JacobianPenalty(rank="lanczos")`` gives every row its Lanczos steps on that ``f(y)``'s graph
and the copies to the rows of largest bound (``base`` again; ``sink_rows`` writes their next
vectors among every row's).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable

import torch
from torch import nn

from ..operators.base import batch_norm2
from .kinks import FrozenKinks
from .reference import lanczos_start
from .vectors import Network, Operator, adjoint_op, apply_op, fd_steps, normalize, to_real, unit_start

OTHERS_WEIGHT = 1e-6  # penalty weight of the non-arg-max copies: just enough to get their VJPs


def default_step(dtype: torch.dtype) -> float:
    """``0.3·√ε`` of the real dtype: 1.0e-4 (float32), 4.5e-9 (float64).

    Measured on a fastmri U-Net reconstructor in float32 (relative error of ‖J A v‖ against
    forward mode): h = 1e-2 → 2–3 %, 1e-3 → 0.2–1.2 % (kinks and curvature), 1e-4 → 0.02–0.1 %,
    1e-5 → 0.2–0.6 % (rounding)."""
    return 0.3 * torch.finfo(dtype).eps ** 0.5


def check_fd_network(model) -> None:
    """Refuse what makes the stacked copies interact or the differences meaningless."""
    if isinstance(model, nn.Module):
        for name, mod in model.named_modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.training:
                raise ValueError(
                    f"method='fd' stacks perturbed copies of samples into the batch, "
                    f"but {name or 'the model'} is a BatchNorm in training mode whose "
                    "batch statistics would mix them: use a network without "
                    "BatchNorm (model.batchnorm=false) or method='forward'"
                )
            if isinstance(mod, nn.modules.dropout._DropoutNd) and mod.training and mod.p > 0:
                raise ValueError(
                    f"method='fd' takes differences between a sample and its perturbed copy, but "
                    f"{name or 'the model'} is a Dropout (p={mod.p}) in training mode that draws different "
                    "masks for the two: use model.drop_prob=0 or method='forward'"
                )
    if torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"):
        raise ValueError(
            "method='fd' (finite differences) needs float32/float64 passes, not "
            "autocast (train.precision=bf16/fp16): use method='forward'"
        )


def _real_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``⟨a_b, b_b⟩`` of the real views, per sample ``(B,)``."""
    a, b = to_real(a), to_real(b)
    return (a * b).reshape(a.shape[0], -1).sum(1)


def _rows_op(A, rows: list):
    """Operator for ``cat([y[r] for r in rows])`` (``r = None``: all of ``y``); an operator of
    batch B reads a k·B batch as stacked copies, so all-``None`` rows and shared operators
    need nothing."""
    if A is None or A.batch_size == 1 or all(r is None for r in rows):
        return A
    parts = [A if r is None else A.select(r) for r in rows]
    return parts[0] if len(parts) == 1 else type(A).cat(parts)


def _complement(idx: torch.Tensor, B: int) -> torch.Tensor:
    """The rows of ``range(B)`` not in ``idx``, in order."""
    keep = torch.ones(B, dtype=torch.bool, device=idx.device)
    keep[idx] = False
    return keep.nonzero().reshape(-1)


def fd_power_step(
    make_fn: Callable[[Operator], Network],
    y: torch.Tensor,
    A: Operator,
    with_A: list[bool],
    idx: torch.Tensor | None,
    v0: list | None = None,
    h: float | None = None,
    n_pre: int = 0,
    generator: torch.Generator | None = None,
    sink: dict | None = None,
    names: list | None = None,
    recompute: bool = False,
    pre_fd: bool = False,
    share_forward: bool = True,
    kinks: nn.Module | None = None,
    base: tuple | None = None,
    sink_rows: torch.Tensor | None = None,
):
    """One fused power-iteration step for ``||J(y_b) A_k||₂``, k = 1..K, on samples ``idx``.

    Args:
        fn_all: ``f`` on the stacked batch ``(B + K·S, …)`` (closes over the stacked operator).
        y: measurements ``(B, …)``; ops: K operators restricted to the selected samples (or
            ``None`` for the identity, i.e. ``||J||``); idx: the ``S`` selected samples or
            ``None`` (all, ``S = B``).
        v0: K unit right singular vectors ``(S, …)`` in the input space of ``A_k`` (warm start)
            or ``None`` entries (random).
        h: relative finite-difference step (default :func:`default_step`).
        n_pre: exact products (forward-mode JVP + VJP, no parameter graph) before the fused
            step, on the selected samples: ``n_pre`` Lanczos steps from ``v0``
            (:func:`~mrijac.jacobian.reference.lanczos_start`; one step is one power iteration,
            more converge faster than as many power steps).
        pre_fd: the ``n_pre`` steps take their JVPs by forward differences of step ``h`` (one
            forward without graph each) instead of forward mode.  With ``n_pre > 0`` (and not
            ``recompute``) the forward graph of their VJPs, at the selected samples, is also
            their ``f(y)``: the stacked pass runs the other samples and the copies only
            (``share_forward=False``: the whole batch again, as before 2026-11-28 — the same
            maths, kept for the benchmark that measures the difference).
        recompute: instead of one stacked pass, the copies run first under activation checkpointing, so that the
            backward pass reaches them only after the batch's activations are freed and then
            recomputes theirs: peak memory of the larger of the two passes, for one more
            forward of the copies.
        kinks: a module whose piecewise-linear activations the copies evaluate with their
            originals' pattern (:class:`~mrijac.jacobian.kinks.FrozenKinks`): no kink term in
            the difference or its θ-gradient; ``None``: the copies cross the kinks.
        base: ``(out, fk)`` — ``f(y)`` of the whole batch ``(B, …)`` with its graph, computed
            by the caller (e.g. before :func:`fd_probe` ranked the rows), and the
            :class:`~mrijac.jacobian.kinks.FrozenKinks` that recorded that pass on all rows
            (``None`` when the copies cross the kinks, and then ``kinks`` must be ``None``): the
            stacked pass holds the copies only, and the Lanczos steps' graph at the selected
            samples serves their VJPs alone.  Not with ``recompute``.
        sink, names: if given, the backward pass of anything that depends on the surrogates
            stores the next unit right singular vectors ``(S, …)`` as ``sink[names[k]]``
            (copies that received no gradient — not the arg-max — keep their vector).  The
            hook holds ``sink`` weakly, so it must be weak-referenceable: a dict subclass such
            as ``PenaltyStats``, not a plain ``dict``.
        sink_rows: ``(S,)`` rows of vectors the sink already holds for a larger set ``(N, …)``
            (e.g. every row of the batch, from Lanczos steps on all of them): the backward
            pass writes the next vectors into those rows instead of replacing the tensor.
    Returns:
        ``(out, surrogates, sigmas)``: ``out = f(y)`` ``(B, …)`` with graph; K
        differentiable ``(S,)`` surrogates (value ``σ̂``); K detached ``(S,)`` ``σ̂``.
    """
    # the hook below holds the sink weakly: the sink (the penalty's stats) holds the surrogates,
    # whose graph holds Xc, which holds the hook; a strong reference would close a cycle through
    # autograd's C++ nodes that Python's collector cannot see, leaking every step's graph and copies
    try:
        sink_ref = None if sink is None else weakref.ref(sink)
    except TypeError:
        raise TypeError(
            f"fd_power_step: sink must support weak references (e.g. PenaltyStats), got {type(sink).__name__}"
        ) from None
    K, B = len(with_A), y.shape[0]
    if sink_rows is not None and (sink is None or any(n not in sink for n in names)):
        raise ValueError("fd_power_step: sink_rows needs a sink that already holds every names[k]")
    y = y.detach()
    ys = y if idx is None else y[idx]
    A_sel = A if A is None or idx is None else A.select(idx)
    ops = [A_sel if w else None for w in with_A]
    S = ys.shape[0]
    rdt = y.real.dtype
    h = default_step(rdt) if h is None else float(h)
    vs = [unit_start(op, ys, None if v0 is None else v0[k], generator) for k, op in enumerate(ops)]
    fn_sel = make_fn(A_sel)
    if base is not None:
        if recompute:
            raise ValueError("fd_power_step: base= (the whole batch's f(y) given) does not combine with recompute")
        if (base[1] is None) != (kinks is None):
            raise ValueError("fd_power_step: base's FrozenKinks and kinks must be both given or both None")
    # with Lanczos steps, their forward graph at the selected samples (parameters included)
    # also gives those samples' f(y) for the fused step and the loss: one forward fewer
    share = share_forward and n_pre > 0 and not recompute and (idx is None or idx.unique().numel() == S)
    # (kept without activation modules too: its apply pass still refuses functional ReLUs / max-pooling)
    if base is not None:  # the pattern was recorded on the whole batch's pass, rows 0..B-1
        fk, record = base[1], contextlib.nullcontext()
    else:
        fk = FrozenKinks(kinks) if kinks is not None else None
        record = fk.record() if fk is not None else contextlib.nullcontext()
    graph = None
    if share:
        with torch.enable_grad(), record:
            ys_leaf = ys.clone().requires_grad_()
            graph = (ys_leaf, fn_sel(ys_leaf))
    if n_pre > 0:
        vs, _ = lanczos_start(fn_sel, ys, ops, vs, n_pre, fd_step=h if pre_fd else None, graph=graph)
    dirs = [apply_op(op, v) for op, v in zip(ops, vs)]
    steps = [fd_steps(ys, d, h) for d in dirs]
    bshape = lambda s: s.view(-1, *[1] * (ys.dim() - 1))  # noqa: E731
    Xc = torch.cat([ys + bshape(s).to(ys.dtype) * d for s, d in zip(steps, dirs)])
    Xc = Xc.detach().requires_grad_()
    source = torch.arange(K * S, device=ys.device) % S  # copy row -> its original among the selected
    if base is not None:  # ... among the recorded rows, the whole batch
        source = source if idx is None else idx[source]

    def frozen(start, rows=None):  # rows start: of the next pass take the originals' activation pattern
        return contextlib.nullcontext() if fk is None else fk.apply(start, source, rows)

    with torch.enable_grad():
        if base is not None:  # f(y) is given: the copies alone
            graph = None  # the Lanczos steps' graph is done with
            with frozen(0):
                out1 = make_fn(_rows_op(A, [idx] * K))(Xc)
            out = base[0]
            out0 = out if idx is None else out[idx]
        elif share:  # the other samples and the copies in one pass; the selected ones' f(y) is the graph's
            out0 = graph[1]
            rest = None if idx is None else _complement(idx, B)
            if rest is None or rest.numel() == 0:
                with frozen(0):
                    out1 = make_fn(_rows_op(A, [idx] * K))(Xc)
                out = out0 if idx is None else out0[torch.argsort(idx)]
            else:
                n = rest.numel()
                with frozen(n):
                    out_all = make_fn(_rows_op(A, [rest] + [idx] * K))(torch.cat([y[rest], Xc]))
                out1 = out_all[n:]
                out = torch.cat([out0, out_all[:n]])[torch.argsort(torch.cat([idx, rest]))]
        elif not recompute:
            rows = torch.arange(B, device=y.device) if idx is None else idx
            with frozen(B, rows):
                out_all = make_fn(_rows_op(A, [None] + [idx] * K))(torch.cat([y, Xc]))
            out, out1 = out_all[:B], out_all[B:]
        else:
            from torch.utils.checkpoint import checkpoint

            fn_copies = make_fn(_rows_op(A, [idx] * K))
            if fk is not None:  # the originals' pattern first (one forward without graph), kept for the recomputation
                with torch.no_grad(), record:
                    fn_sel(ys)

                def fn_copies(X, fn=fn_copies):
                    with frozen(0):
                        return fn(X)

            out1 = checkpoint(fn_copies, Xc, use_reentrant=False)
            out = make_fn(A)(y)
    if not share and base is None:
        out0 = out if idx is None else out[idx]
    surrogates, sigmas = [], []
    for k in range(K):
        o1 = out1[k * S : (k + 1) * S]
        step = steps[k].to(rdt).view(-1, *[1] * (o1.dim() - 1))
        diff = (o1 - out0) / step
        sig = batch_norm2(diff.detach())
        u = normalize(diff.detach())
        surrogates.append(_real_dot(u, diff))
        sigmas.append(sig)
    if sink is not None:

        def hook(g, ops=ops, vs=vs):
            sink = sink_ref()
            if sink is None:  # nobody will read the vectors
                return
            for k, (op, gk) in enumerate(zip(ops, g.detach().split(S))):
                w = adjoint_op(op, gk)
                nrm = batch_norm2(w)
                ok = (nrm > 0) & torch.isfinite(nrm)
                new = w / nrm.clamp_min(torch.finfo(rdt).tiny).view(-1, *[1] * (w.dim() - 1))
                keep = ok.view(-1, *[1] * (w.dim() - 1))
                # a second backward pass over the same graph (e.g. data loss after the
                # penalty) hands zeros: keep what an earlier pass found
                if sink_rows is None:
                    prev = sink.get(names[k], vs[k])
                    sink[names[k]] = torch.where(keep, new, prev).detach()
                else:
                    full = sink[names[k]].clone()
                    full[sink_rows] = torch.where(keep, new, full[sink_rows]).detach()
                    sink[names[k]] = full

        Xc.register_hook(hook)
    return out, surrogates, sigmas


def fd_probe(
    fn: Network,
    y: torch.Tensor,
    A: Operator,
    with_A: list[bool],
    vs: list | None,
    out: torch.Tensor,
    h: float | None = None,
    fk: FrozenKinks | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A fresh lower bound of each row's σ at the current weights: ``max_k ‖J(y_b) A_k v_b‖``
    for the unit vectors ``v_b`` given (a sample's stored right singular vector), by one
    forward difference per term without graph, ``(f(y + t A v) − f(y)) / t`` with the step of
    :func:`fd_steps`.  ``‖J A v‖ ≤ σ`` for any unit ``v``; with the vector of a sample's last
    visit it is close to σ unless the weights moved its top direction.

    Args:
        fn: ``f`` on the batch ``(B, …)`` (closes over ``A``); y: ``(B, …)``; A: the batch's
            operator or ``None``; with_A: per term, ``J A`` (True) or ``J``.
        vs: per term ``(B, …)`` vectors in the input space of the term's operator, or ``None``
            entries (random ones: a poor probe).
        out: ``f(y)`` ``(B, …)`` (detached here).
        fk: a :class:`~mrijac.jacobian.kinks.FrozenKinks` that recorded ``f(y)``'s pass on all
            rows: the probes then take their rows' activation pattern (the linearisation at
            ``y``, as the frozen fused step does).
    Returns:
        ``(B,)`` detached, the largest over the terms.
    """
    B = y.shape[0]
    h = default_step(y.real.dtype) if h is None else float(h)
    best = None
    with torch.no_grad():
        out = out.detach()
        for k, w in enumerate(with_A):
            op = A if w else None
            v = None if vs is None else vs[k]
            d = apply_op(op, unit_start(op, y, v, generator))
            t = fd_steps(y, d, h)
            X = y + t.view(-1, *[1] * (y.dim() - 1)).to(y.dtype) * d
            ctx = contextlib.nullcontext() if fk is None else fk.apply(0, torch.arange(B, device=y.device))
            with ctx:
                o = fn(X)
            s = batch_norm2((o - out) / t.to(out.real.dtype).view(-1, *[1] * (out.dim() - 1)))
            best = s if best is None else torch.maximum(best, s)
    return best
