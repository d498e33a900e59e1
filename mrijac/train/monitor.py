"""Is the penalty aiming at the true norm?  The reference σ each validation epoch.

:class:`ReferenceMonitor` measures the converged σ(J A) and σ(J) (Lanczos,
:func:`~mrijac.jacobian.reference.reference_sigma`) on fixed probe slices of the validation
and training splits — the same slices and masks every epoch, their singular vectors kept as
warm starts — and compares the estimates the penalty trained with against the reference σ of
the very samples it acted on (the arg-max of each term in the last steps of the epoch), twice:

* ``est_ratio_*`` — against the σ of the network *at that step* (the weights are copied, to
  CPU, on the last steps of the epoch — asynchronously under CUDA, and the time it takes to
  start the copies is counted in ``ref_time``, not in the step time): the accuracy of the
  estimator itself;
* ``est_ratio_end_*`` — against the σ of the same samples at the end of the epoch: the
  estimator's error plus how far σ moved in the remaining steps (the data term pushes it back
  up after each penalised step).
"""

from __future__ import annotations

import copy
import math
import time
from collections import deque

import torch

from ..inference import jacobian_stats
from ..jacobian.penalties import terms_coincide
from ..jacobian.reference import reference_sigma
from ..tasks import fixed_batches


class ReferenceMonitor:
    """Reference σ on probe slices and the estimate/reference ratio of the penalised samples.

    Args:
        slices: probe slices per split (0 switches the monitor off); ``tol``, ``max_iter``:
            Lanczos tolerance and step cap; ``seed``: probe choice and start vectors;
            ``chunk``: most samples per reference computation (the training batch size, so
            that the monitor's peak memory stays within the training step's; ``None``: all).
    """

    def __init__(self, slices: int, tol: float, max_iter: int, seed: int, chunk: int | None = None):
        self.slices, self.tol, self.max_iter, self.seed = int(slices), tol, max_iter, seed
        self.chunk = None if chunk is None else max(int(chunk), 1)
        self.probes, self.warm = None, {}
        self.penalised = deque(maxlen=2 * max(self.slices, 1))
        self.ring: list = []  # CPU copies of the weights of the last steps (pinned under CUDA), reused
        self.copies = 0  # copies made so far (which slot is next; a row's copy is valid while its count is)
        self.copy_time = 0.0  # seconds spent starting the copies (kept out of the step time)

    def keep_last(self, n: int) -> None:
        """Remember the last ``n`` penalised samples (default ``2 × slices``), e.g. for a
        per-sample scatter of :meth:`estimate_pairs`."""
        self.penalised = deque(self.penalised, maxlen=int(n))

    def record(self, y: torch.Tensor, A, stats: dict, model=None, steps_left: int | None = None) -> None:
        """After a penalised step: keep each term's arg-max sample with its estimate, and —
        with ``model`` given and fewer than ``maxlen`` steps left in the epoch (only those rows
        survive to the epoch's end) — a CPU copy of the weights the estimate was made with."""
        if not self.slices or not stats:
            return
        idx = stats.get("index")
        terms = [t for t in ("ja", "j") if stats.get(f"sigma_{t}") is not None and len(stats[f"sigma_{t}"])]
        snap = None
        if terms and model is not None and steps_left is not None and steps_left < self.penalised.maxlen:
            snap = self._copy_weights(model)
        for t in terms:
            s = stats[f"sigma_{t}"]
            # the penalised row where the penalty says (rank=lanczos: rows of Lanczos bounds beside it)
            j = int(stats[f"argmax_{t}"]) if f"argmax_{t}" in stats else int(torch.argmax(s))
            b = int(idx[j]) if idx is not None else j
            op = A.select(torch.tensor([b], device=y.device)) if A is not None else None
            self.penalised.append((t, y[b : b + 1].detach(), op, float(s[j]), snap))

    def _copy_weights(self, model) -> tuple[int, int]:
        """Start copying ``model``'s weights into the next slot of a ring of ``maxlen`` CPU
        buffers (pinned, asynchronous under CUDA: the copy runs behind the step, ordered before the
        optimizer's update); returns ``(slot, count)``.  Each step that copies appends at least
        one row, so a row's slot is overwritten only after the row has left the queue
        (:meth:`_weights` checks it all the same)."""
        sd = model.state_dict()
        cuda = any(v.is_cuda for v in sd.values())
        if cuda:
            torch.cuda.synchronize()  # the step's own kernels are not the copy's time
        t0 = time.perf_counter()
        slot = self.copies % self.penalised.maxlen
        if slot == len(self.ring):
            self.ring.append({k: torch.empty(v.shape, dtype=v.dtype, pin_memory=cuda) for k, v in sd.items()})
        for k, v in sd.items():
            self.ring[slot][k].copy_(v.detach(), non_blocking=cuda)
        self.copies += 1
        self.copy_time += time.perf_counter() - t0
        return slot, self.copies

    def _weights(self, snap):
        """The weights of a row's copy, or ``None`` if it has been overwritten since."""
        if snap is None:
            return None
        slot, count = snap
        return self.ring[slot] if self.copies - count < self.penalised.maxlen else None

    def estimate_pairs(self, model, at_step: bool = True) -> dict[str, torch.Tensor]:
        """Per term, ``(n, 2)`` float64: (training-time estimate, reference σ) of the recent
        penalised samples — the reference of the weights of the step that made the estimate
        (``at_step``, where :meth:`record` kept them; else, and with ``at_step=False``, of
        ``model`` now).  Where ``‖J‖ = ‖J A‖`` (:func:`~mrijac.jacobian.penalties.terms_coincide`)
        a sample that both terms penalised gets one reference computation."""
        out, known = {}, {}  # (sample, weights) -> σ(J A) = σ(J), where the terms coincide
        g = torch.Generator().manual_seed(self.seed)
        scratch = None
        if at_step and torch.cuda.is_available():
            torch.cuda.synchronize()  # the weight copies have landed
        for t in ("ja", "j"):
            rows = [r for r in self.penalised if r[0] == t]
            if not rows:
                continue
            snaps = [self._weights(r[4]) if at_step else None for r in rows]
            # the same sample of a batch, under the same weights
            keys = [(r[1].data_ptr(), tuple(r[1].shape), id(sn)) for r, sn in zip(rows, snaps)]
            refs = [known.get(k) if t == "j" else None for k in keys]
            groups: dict = {}
            for i, v in enumerate(refs):
                if v is None:
                    groups.setdefault(id(snaps[i]), []).append(i)
            c = self.chunk or len(rows)
            for need in [grp[i : i + c] for grp in groups.values() for i in range(0, len(grp), c)]:
                net = model
                if snaps[need[0]] is not None:
                    if scratch is None:
                        scratch = copy.deepcopy(model)
                    scratch.load_state_dict(snaps[need[0]])
                    net = scratch
                y = torch.cat([rows[i][1] for i in need])
                ops = [rows[i][2] for i in need]
                A = ops[0] if ops[0] is None or len(ops) == 1 else type(ops[0]).cat(ops)
                net.eval()
                ref = reference_sigma(
                    net.as_function(A), y, A if t == "ja" else None, self.tol, self.max_iter, generator=g
                )
                for i, s in zip(need, ref.sigma.cpu().tolist()):
                    refs[i] = s
                    if t == "ja" and terms_coincide(net, rows[i][2]):
                        known[keys[i]] = s
            out[t] = torch.tensor([[r[3], ref] for r, ref in zip(rows, refs)], dtype=torch.float64)
        return out

    def estimate_ratios(self, model) -> dict:
        """Medians over the recent penalised samples, per term, of training-time estimate over
        reference σ: ``est_ratio_*`` at the weights of each estimate's step, ``est_ratio_end_*``
        at the weights of ``model`` now (only where the two differ)."""
        out = {}
        for name, at_step in (("est_ratio", True), ("est_ratio_end", False)):
            if not at_step and not any(self._weights(r[4]) is not None for r in self.penalised):
                break
            for t, p in self.estimate_pairs(model, at_step).items():
                out[f"{name}_{t}"] = float((p[:, 0] / p[:, 1].clamp_min(1e-30)).median())
        return out

    def rows(self, model, task, device) -> dict:
        """History columns: ``val_sigma_*``, ``train_ref_sigma_*`` (mean, max),
        ``val_floor_*_mean``, ``train_ref_floor_*_mean`` (the lower bound
        :func:`~mrijac.jacobian.bounds.sigma_floor`),
        ``est_ratio_*``, ``ref_residual`` and ``ref_time`` (seconds)."""
        if not self.slices:
            return {}
        t0 = time.perf_counter()
        if self.probes is None:
            self.probes = {
                s: [(y, A) for y, A, _, _ in fixed_batches(task, s, self.slices, self.seed + 1, device)]
                for s in ("val", "train")
            }
        out, resid = {}, []
        for split, prefix in (("val", "val_"), ("train", "train_ref_")):
            js = jacobian_stats(
                model, self.probes[split], self.tol, self.max_iter, seed=self.seed, warm=self.warm.setdefault(split, {})
            )
            if not js:
                continue
            for k in ("sigma_ja", "sigma_j"):
                out[f"{prefix}{k}_mean"], out[f"{prefix}{k}_max"] = js[k]["mean"], js[k]["max"]
                floor = k.replace("sigma", "floor")  # the lower bound ‖J A Aᴴy‖/‖Aᴴy‖ (mean)
                out[f"{prefix}{floor}_mean"] = js[floor]["mean"]
            resid.append(js["max_residual"])
        out.update(self.estimate_ratios(model))
        out["ref_residual"] = max(resid) if resid else math.nan
        out["ref_time"] = time.perf_counter() - t0 + self.copy_time  # the weight copies of the epoch too
        self.copy_time = 0.0
        return out
