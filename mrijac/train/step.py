"""The regularized part of a training step, shared by the trainer and the benchmarks.

:class:`PenaltyStep` holds what a Jacobian penalty needs between steps — the per-sample
warm-start store or the tracked pool, the automatic-λ calibration, the held penalty gradient of
``reg.every_mode=hold`` — and the weight baselines (weight decay, spectral norm of the weights).
One step is::

    out, pen, stats, seen = ps.penalty(model, y, A, info, step, task)   # out = f(y)
    loss = data_loss(out, target)
    pen = ps.calibrate(loss, stats, pen)          # auto λ on the first penalised batch
    wpen = ps.weight_penalty(model)
    ps.backward(model, loss, pen, wpen, stats)    # hold mode keeps / re-adds the penalty gradient
    ps.after_backward(info, stats)                # method=fd: vectors arrive with the backward
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..jacobian import JacobianPenalty
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
    ):
        self.jac, self.warm, self.pool, self.sw, self.wd = jac, warm, pool, sw, float(wd)
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
        """Set every automatic λ from this batch (the first penalised one) and re-weight."""
        if not stats or self.jac is None or not self.jac.needs_calibration:
            return pen
        terms = {k: self.reduce(v.detach()) for k, v in stats.items() if k.startswith("term_")}
        chosen = self.jac.calibrate(self.reduce(loss.detach()).item(), terms)
        self.log("auto λ: " + ", ".join(f"{k} = {v:.3g}" for k, v in chosen.items()))
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
        held = ck.get("held")
        self.held = None if held is None else [None if g is None else g.to(device) for g in held]
