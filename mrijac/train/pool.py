"""A pool of the hardest training samples, tracked every step (``reg.track=pool``).

Why: with per-sample warm starts a sample's singular vector advances one power iteration per
*visit* — once per epoch — while the network changes in between; on a flat-topped spectrum the
estimate then sits 15–40 % below the converged σ and the penalty pushes on the wrong number
(measured: ``experiments/results/penalty_schedules.md``).  The pool keeps ``size`` training
samples fixed between refreshes and appends them to every training batch (their outputs do not
enter the data loss), so each of their vectors gets one fused power iteration per *step*
(``method="fd"``): the estimate follows the network.  The penalty is ``max`` over the pool —
the samples with the largest σ found so far, i.e. an estimate of ``sup_y ‖J(y) A‖₂``, the
Lipschitz constant that the generalization bound contains.

Refresh: every ``refresh`` steps one training sample drawn from ``(seed, step)`` is scored by
a short Lanczos run (:func:`~mrijac.jacobian.reference.reference_sigma`, ``iters`` steps per
term) and replaces the pool's weakest member when its σ is larger (the pool is filled first).
Samples are read with a fixed mask/patch per index (:func:`~mrijac.tasks.fetch`), so the pool
is independent of the loader and is restored exactly from a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..jacobian import WarmStart
from ..jacobian.reference import reference_sigma
from ..tasks import fetch


@dataclass
class PoolEntry:
    """One tracked sample: its training-set index, unit right vectors per term, last σ."""

    index: int
    vectors: dict = field(default_factory=dict)  # "v_ja"/"v_j" -> (1, …)
    sigma: float = 0.0


class TrackedPool:
    """Training samples with the largest σ found so far, iterated on every step.

    Args:
        size: number of tracked samples (each costs one plain and one perturbed sample per
            term in every penalised step).
        refresh: steps between candidate draws.
        iters: Lanczos steps per term to score a candidate (and start its vectors).
        seed: training seed (candidates and fixed masks derive from it).
    """

    def __init__(self, size: int, refresh: int, iters: int, seed: int):
        if size < 1 or refresh < 1 or iters < 1:
            raise ValueError(f"pool size, refresh and iters must be >= 1, got {size}, {refresh}, {iters}")
        self.size, self.refresh, self.iters, self.seed = int(size), int(refresh), int(iters), seed
        self.entries: list[PoolEntry] = []
        self._cache: dict = {}

    def sample(self, task, index: int, device):
        """``(y, A)`` of training sample ``index`` with its fixed mask, on ``device``."""
        if index not in self._cache:
            y, A, _, _ = fetch(task, "train", [index], self.seed * 7919 + index, device)[0]
            self._cache[index] = (y, A)
        return self._cache[index]

    def maybe_refresh(self, model, task, terms, step: int, device) -> None:
        """At every ``refresh``-th step, score one candidate and keep it if it is harder."""
        if step % self.refresh and len(self.entries) >= self.size:
            return
        n = len(task.datasets["train"])
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        index = int(torch.randint(n, (), generator=g))
        if any(e.index == index for e in self.entries):
            return
        y, A = self.sample(task, index, device)
        was = model.training
        model.eval()
        f = model.as_function(A)
        cand = PoolEntry(index)
        for t in terms:
            r = reference_sigma(f, y, A if t == "ja" else None, tol=1e-2, max_iter=self.iters, generator=g)
            cand.vectors[f"v_{t}"] = r.v
            cand.sigma = max(cand.sigma, float(r.sigma[0]))
        model.train(was)
        if len(self.entries) < self.size:
            self.entries.append(cand)
            return
        weakest = min(range(len(self.entries)), key=lambda i: self.entries[i].sigma)
        if cand.sigma > self.entries[weakest].sigma:
            self._cache.pop(self.entries[weakest].index, None)
            self.entries[weakest] = cand
        else:
            self._cache.pop(index, None)

    def extend(self, task, y: torch.Tensor, A, terms, device):
        """The batch with the pool's samples appended: ``(y_all, A_all, index, v0)`` for
        :class:`~mrijac.jacobian.JacobianPenalty` (``index`` = the pool's rows)."""
        B = y.shape[0]
        ys, ops = zip(*(self.sample(task, e.index, device) for e in self.entries))
        y_all = torch.cat([y, *ys])
        A_all = type(A).cat([A, *ops])
        index = torch.arange(B, B + len(ys), device=y.device)
        vectors = {}
        for t in terms:
            vs = [e.vectors[f"v_{t}"] for e in self.entries]
            vectors[f"v_{t}"] = torch.cat([vs[0].new_zeros((B,) + vs[0].shape[1:]), *vs])
        v0 = WarmStart(vectors, torch.zeros(B + len(ys), dtype=torch.bool, device=y.device))
        return y_all, A_all, index, v0

    def update(self, stats: dict) -> None:
        """Store the vectors and σ the step produced (call after ``backward``)."""
        for i, e in enumerate(self.entries):
            sig = [float(stats[f"sigma_{t}"][i]) for t in ("ja", "j") if f"sigma_{t}" in stats]
            if sig:
                e.sigma = max(sig)
            for t in ("ja", "j"):
                if f"v_{t}" in stats:
                    e.vectors[f"v_{t}"] = stats[f"v_{t}"][i : i + 1].detach()

    def state_dict(self) -> dict:
        return {
            "entries": [
                {"index": e.index, "sigma": e.sigma, "vectors": {k: v.cpu() for k, v in e.vectors.items()}}
                for e in self.entries
            ]
        }

    def load_state_dict(self, state: dict, device) -> None:
        self.entries = [
            PoolEntry(int(d["index"]), {k: v.to(device) for k, v in d["vectors"].items()}, float(d["sigma"]))
            for d in state.get("entries", [])
        ]
        self._cache = {}
