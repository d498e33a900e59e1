"""Run a reconstructor over a loader; score volumes; reference Jacobian statistics."""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch

from .jacobian.bounds import sigma_floor
from .jacobian.penalties import terms_coincide
from .jacobian.reference import reference_sigma
from .metrics import aggregate
from .runtime import progress as progress_bar


@torch.no_grad()
def reconstruct(
    model,
    task,
    loader,
    device,
    max_batches: int | None = None,
    progress: bool = False,
    desc: str = "reconstruct",
    loss_fn=None,
) -> dict:
    """Reconstruct every batch; returns ``{"items": [...], "l2": mean ℓ2 loss, "l2_values",
    "rel_values": per-sample ℓ2 and relative error ‖f(y) − x‖/‖x‖}`` (and ``"loss"``, the
    mean of ``loss_fn(out, target, max)`` per sample, when given).

    MRI items are volumes (slices gathered by file name, sorted by slice): ``name``, ``pred``,
    ``target``, ``zero_filled`` ``(S, h, w)`` float32 and ``maxval``.  CS/SR items are single
    images.  ``l2`` is the paper's loss ``||f(y) − x||₂`` averaged over samples (for GE).
    """
    model.eval()
    vols = defaultdict(dict)
    items, l2s, rels, loss_sum, n = [], [], [], 0.0, 0
    for b, batch in enumerate(progress_bar(loader, desc=desc, disable=not progress, leave=False)):
        if max_batches and b >= max_batches:
            break
        y, A, target, info = task.unpack(batch, device)
        out = model(y, A)
        if target is not None:
            err = (out - target).reshape(len(out), -1).norm(dim=1)
            l2s += err.tolist()
            rels += (err / target.reshape(len(out), -1).norm(dim=1).clamp_min(1e-30)).tolist()
            if loss_fn is not None:
                loss_sum += loss_fn(out, target, info.get("max")).item() * len(out)
            n += len(out)
        if task.volumes:
            zf = task.zero_filled(info)
            for i, (f, s) in enumerate(zip(info["fname"], info["slice"].tolist())):
                vols[f][s] = (
                    out[i].float().cpu().numpy(),
                    None if target is None else target[i].cpu().numpy(),
                    None if zf is None else zf[i].cpu().numpy(),
                    float(info["max"][i]),
                )
        else:
            for i in range(len(out)):
                items.append(
                    {
                        "name": f"{len(items):05d}",
                        "pred": out[i].float().cpu().numpy(),
                        "target": target[i].cpu().numpy(),
                        "zero_filled": None,
                        "maxval": 1.0,
                    }
                )
    for f, sl in sorted(vols.items()):
        keys = sorted(sl)
        tg = [sl[k][1] for k in keys]
        items.append(
            {
                "name": f,
                "slices": keys,
                "pred": np.stack([sl[k][0] for k in keys]),
                "target": None if tg[0] is None else np.stack(tg),
                "zero_filled": None if sl[keys[0]][2] is None else np.stack([sl[k][2] for k in keys]),
                "maxval": sl[keys[0]][3],
            }
        )
    res = {"items": items, "l2": float(np.mean(l2s)) if l2s else 0.0, "l2_values": l2s, "rel_values": rels}
    if loss_fn is not None:
        res["loss"] = loss_sum / max(n, 1)
    return res


def score(rec: dict, task) -> dict:
    """Per-item and aggregate metrics of the model and of the zero-filled baseline (where the
    task has one), with the task's own metrics (:meth:`MRITask.metrics` etc.)."""
    per_model, per_zf = [], []
    for it in rec["items"]:
        if it["target"] is None:
            continue
        per_model.append({"fname": it["name"], **task.metrics(it["target"], it["pred"])})
        if it.get("zero_filled") is not None:
            per_zf.append({"fname": it["name"], **task.metrics(it["target"], it["zero_filled"])})
    out = {"per_volume": per_model, "aggregate": aggregate(per_model)}
    if per_zf:
        out["zero_filled"] = {"per_volume": per_zf, "aggregate": aggregate(per_zf)}
    return out


def sigma_reference(
    model,
    y: torch.Tensor,
    A,
    tol: float = 1e-3,
    max_iter: int = 60,
    generator: torch.Generator | None = None,
    warm: dict | None = None,
    key=None,
) -> dict:
    """Converged σ(J A) and σ(J) per sample of one batch (:func:`reference_sigma`).

    Returns ``{"sigma_ja": (B,), "sigma_j": (B,), "floor_ja": (B,), "floor_j": (B,),
    "residual": (B,) max of the two relative residuals, "iterations": Lanczos steps of the
    slower term}`` as float64 CPU tensors; ``floor_*`` is the lower bound
    :func:`~mrijac.jacobian.bounds.sigma_floor` (one JVP: ``‖J A Aᴴy‖/‖Aᴴy‖``, which is
    ``‖f(y)‖/‖y‖`` for a normalising reconstructor and single-coil data).
    ``warm`` (a dict) keeps each term's right vectors under ``(key, term)`` for the next call:
    a warm start from the last epoch's vectors needs fewer steps.  Where the two norms are
    provably equal (:func:`~mrijac.jacobian.penalties.terms_coincide`) σ(J) is σ(J A).
    """
    model.eval()
    f = model.as_function(A)
    out, res, its = {}, [], 0
    tied = terms_coincide(model, A)  # single-coil MRI: σ(J) = σ(J A) exactly, one Lanczos run
    for term, op in (("ja", A),) if tied else (("ja", A), ("j", None)):
        v0 = None if warm is None else warm.get((key, term))
        if v0 is not None and v0.shape[0] != y.shape[0]:
            v0 = None
        r = reference_sigma(f, y, op, tol, max_iter, v0=v0, generator=generator)
        if warm is not None:
            warm[(key, term)] = r.v
        out[f"sigma_{term}"] = r.sigma.cpu()
        res.append(r.residual.cpu())
        its = max(its, r.iterations)
    if tied:
        out["sigma_j"] = out["sigma_ja"].clone()
    # the measurement direction's Rayleigh quotient: a floor no penalty can push σ under
    # without changing the output (mrijac.jacobian.bounds)
    out["floor_ja"] = sigma_floor(f, y, A).double().cpu()
    out["floor_j"] = out["floor_ja"].clone() if tied else sigma_floor(f, y, None).double().cpu()
    out["residual"] = torch.stack(res).amax(0)
    out["iterations"] = its
    return out


def _summary(values: torch.Tensor) -> dict:
    return {"mean": float(values.mean()), "max": float(values.max())}


def jacobian_stats(
    model, batches, tol: float = 1e-3, max_iter: int = 60, seed: int = 0, warm: dict | None = None
) -> dict:
    """Reference σ(J A) and σ(J) over fixed batches ``[(y, A), …]``: mean, max, per sample.

    ``{"sigma_ja": {"mean", "max", "values"}, "sigma_j": {…}, "floor_ja": {…}, "floor_j": {…}
    (lower bounds, :func:`sigma_reference`), "n_samples", "method":
    "lanczos", "tol", "max_residual", "iterations" (largest per batch), "seconds"}``; empty
    when there are no batches.  Each batch costs ``iterations`` JVP+VJP pairs per term.
    """
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    parts = [sigma_reference(model, y, A, tol, max_iter, g, warm, key=i) for i, (y, A) in enumerate(batches)]
    if not parts:
        return {}
    names = ("sigma_ja", "sigma_j", "floor_ja", "floor_j")
    cat = {k: torch.cat([p[k] for p in parts]) for k in (*names, "residual")}
    return {
        **{k: {**_summary(cat[k]), "values": cat[k].tolist()} for k in names},
        "n_samples": int(len(cat["sigma_ja"])),
        "method": "lanczos",
        "tol": tol,
        "max_residual": float(cat["residual"].max()),
        "iterations": max(p["iterations"] for p in parts),
        "seconds": time.perf_counter() - t0,
    }
