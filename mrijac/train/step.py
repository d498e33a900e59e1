"""The regularized part of a training step, shared by the trainer and the benchmarks.

:class:`PenaltyStep` holds what a Jacobian penalty needs between steps — the per-sample
warm-start store or the tracked pool, the automatic-λ calibration, the held penalty gradient of
``reg.every_mode=hold`` — and the weight baselines (weight decay, spectral norm of the weights).
One step is::

    out, pen, stats, seen = ps.penalty(model, y, A, info, step, task)   # out = f(y)
    loss = data_loss(out, target)
    pen = ps.calibrate(loss, stats, pen)          # auto λ: first batch, then median of k batches
    wpen = ps.weight_penalty(model)
    ps.backward(model, loss, pen, wpen, stats)    # hold mode keeps / re-adds the penalty gradient
    ps.after_backward(info, stats)                # method=fd: vectors arrive with the backward
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from ..jacobian import JacobianPenalty
from ..jacobian.lam import auto_lambda
from ..regularizers import WeightSpectralPenalty, weight_decay_penalty
from .pool import TrackedPool
from .warm import WarmStore


class PenaltyStep:
    """Jacobian penalty (batch or tracked pool), calibration, hold mode, weight penalties.

    Args:
        jac: the Jacobian penalty, or ``None``.
        warm: per-sample warm-start store (spectral kind), or ``None``.
        pool: tracked hardest samples (``reg.pool``), or ``None``; replaces ``warm``.
        sw: spectral norm of the weights (``reg.name=sw``), or ``None``.
        wd: weight-decay weight (``reg.name=wd``), 0 for none.
        reduce: mean over data-parallel processes of a tensor (identity without DDP), so that
            the automatic λ is the same on every rank.
        log: called with a line of text (the chosen λ).
        auto_steps: an automatic λ is provisional from the first penalised batch of its term,
            then final from the medians of the loss and the term over its first ``auto_steps``
            penalised batches (``reg.auto_steps``; 1: the first batch alone).
    """

    def __init__(
        self,
        jac: JacobianPenalty | None = None,
        *,
        warm: WarmStore | None = None,
        pool: TrackedPool | None = None,
        sw: WeightSpectralPenalty | None = None,
        wd: float = 0.0,
        reduce: Callable | None = None,
        log: Callable | None = None,
        auto_steps: int = 10,
    ):
        self.jac, self.warm, self.pool, self.sw, self.wd = jac, warm, pool, sw, float(wd)
        self.auto_steps = max(1, int(auto_steps))
        auto = [] if jac is None else [t for t in jac.terms if getattr(jac, f"lambda_{t}") == "auto"]
        self.auto = {"terms": auto, "samples": {t: [] for t in auto}, "done": not auto}
        self.reduce = reduce or (lambda t: t)
        self.log = log or (lambda msg: None)
        self.held = None  # hold mode: the last penalty gradient, unscaled

    def penalty(self, model, y: torch.Tensor, A, info: dict, step: int, task=None):
        """``(out, pen, stats, (y_p, A_p))``: ``out = f(y)`` ``(B, …)`` from the penalty's own
        pass, the differentiable penalty (0 on steps without one), the estimates, and the
        batch the penalty saw (the pool appends its samples)."""
        jac = self.jac
        if jac is None or not jac.active(step):
            return model.as_function(A)(y), y.new_zeros((), dtype=y.real.dtype), {}, (y, A)
        if self.pool is not None:
            self.pool.maybe_refresh(model, task, jac.terms, step, y.device)
            py, pA, index, v0 = self.pool.extend(task, y, A, jac.terms, y.device)
            out, pen, stats = jac(model, py, pA, step=step, v0=v0, index=index)
            return out[: y.shape[0]], pen, stats, (py, pA)
        keys = info.get("keys")
        v0 = (
            None
            if self.warm is None
            else self.warm.get(keys, y.shape[0], y.device, partial_ok=bool(jac.samples) or jac.method == "fd")
        )
        priority = self.warm.priority(keys) if jac.samples and self.warm is not None and keys is not None else None
        out, pen, stats = jac(model, y, A, step=step, v0=v0, priority=priority)
        return out, pen, stats, (y, A)

    def calibrate(self, loss: torch.Tensor, stats: dict, pen: torch.Tensor) -> torch.Tensor:
        """Automatic λ (Algorithm 4, :func:`~mrijac.jacobian.lam.auto_lambda`): each ``auto``
        term gets a provisional λ from its first penalised batch, then the final one from the
        medians of the data loss and of the term over its first ``auto_steps`` batches (one
        batch is a noisy sample of the loss-to-penalty ratio).  Returns the re-weighted penalty."""
        a = self.auto
        if not stats or a["done"]:
            return pen
        loss_v = float(self.reduce(loss.detach()).item())
        present = [t for t in ("ja", "j") if f"term_{t}" in stats]
        if stats.get("coincide") and present:
            # ‖J‖ = ‖J A‖ exactly: the terms are one quantity, so every batch's estimate is a
            # sample for both λs (with alternating terms each would otherwise see other batches
            # and, where loss/penalty is near a power of ten, the two λs could differ tenfold)
            v = statistics.mean(float(self.reduce(stats[f"term_{t}"].detach())) for t in present)
            vals = {t: v for t in a["terms"]}
        else:
            vals = {t: float(self.reduce(stats[f"term_{t}"].detach())) for t in a["terms"] if t in present}
        if not vals:
            return pen
        chosen = {}
        for t in vals:
            a["samples"][t].append((loss_v, vals[t]))
            if getattr(self.jac, f"lambda_{t}") == "auto":
                lam = auto_lambda(loss_v, a["samples"][t][0][1], self.jac.gamma)
                setattr(self.jac, f"lambda_{t}", lam)
                chosen[f"lambda_{t}"] = lam
        if chosen and self.auto_steps > 1:
            self.log("auto λ (provisional, first batch): " + ", ".join(f"{k} = {v:.3g}" for k, v in chosen.items()))
        if all(len(a["samples"][t]) >= self.auto_steps for t in a["terms"]):
            final = {}
            for t in a["terms"]:
                ls, ps = zip(*a["samples"][t][: self.auto_steps])
                lam = auto_lambda(statistics.median(ls), statistics.median(ps), self.jac.gamma)
                setattr(self.jac, f"lambda_{t}", lam)
                final[f"lambda_{t}"] = lam
            a["done"] = True
            self.log(
                f"auto λ (median of {self.auto_steps} batches): "
                + ", ".join(f"{k} = {v:.3g}" for k, v in final.items())
            )
        return self.jac.weighted(stats)

    def weight_penalty(self, model) -> torch.Tensor:
        """Weight decay or spectral norm of the weights (0 for the other regularizers)."""
        if self.sw is not None:
            return self.sw()
        if self.wd:
            return weight_decay_penalty(model, self.wd)
        return next(model.parameters()).new_zeros(())

    def backward(self, model, loss, pen, wpen, stats: dict, scaler=None) -> None:
        """Backward pass of ``loss + pen + wpen``.  Hold mode (``reg.every_mode=hold``): on a
        penalised step the penalty's gradient is kept; on the steps in between it is added to
        the data gradient (unscaled by the loss scaler, re-scaled here)."""
        scale = scaler.scale if scaler is not None else (lambda t: t)
        s = float(scaler.get_scale()) if scaler is not None else 1.0
        hold = self.jac is not None and self.jac.hold
        if hold and stats and pen.requires_grad:
            scale(pen).backward(retain_graph=True)
            self.held = [None if p.grad is None else p.grad.detach() / s for p in model.parameters()]
            scale(loss + wpen).backward()
            return
        scale(loss + pen + wpen).backward()
        if hold and self.held is not None:
            for p, g in zip(model.parameters(), self.held):
                if g is not None:
                    p.grad = g * s if p.grad is None else p.grad + g * s

    def after_backward(self, info: dict, stats: dict) -> None:
        """Store the step's vectors and σ (``method=fd`` fills them during the backward)."""
        if not stats:
            return
        if self.pool is not None:
            self.pool.update(stats)
        elif self.warm is not None:
            self.warm.put(info.get("keys"), stats)

    # --- checkpoints (the same top-level keys as before the split) -------------------------
    def state_dict(self) -> dict:
        return {
            "jac": self.jac.state_dict() if self.jac else {},
            "sw": self.sw.state_dict() if self.sw else {},
            "warm": self.warm.state_dict() if self.warm is not None else {},
            "pool": self.pool.state_dict() if self.pool is not None else {},
            "held": None if self.held is None else [None if g is None else g.cpu() for g in self.held],
            "auto": self.auto,
        }

    def load_state_dict(self, ck: dict, device) -> None:
        if self.jac and ck.get("jac"):
            self.jac.load_state_dict(ck["jac"])
        if self.sw and ck.get("sw"):
            self.sw.load_state_dict(ck["sw"])
        if self.warm is not None:
            self.warm.load_state_dict(ck.get("warm", {}))
        if self.pool is not None:
            self.pool.load_state_dict(ck.get("pool", {}), device)
        if ck.get("auto") is not None:
            self.auto = ck["auto"]
        elif self.auto["terms"] and self.jac and not self.jac.needs_calibration:
            self.auto["done"] = True  # a checkpoint of an older version: its λ is final
        held = ck.get("held")
        self.held = None if held is None else [None if g is None else g.to(device) for g in held]
