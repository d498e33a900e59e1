"""Run a reconstructor over a loader; score volumes; Jacobian statistics."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from tqdm.auto import tqdm

from ..jacobian import spectral_norm
from .metrics import aggregate, image_metrics, volume_metrics


@torch.no_grad()
def reconstruct(model, task, loader, device, max_batches: int | None = None,
                progress: bool = False, desc: str = "reconstruct", loss_fn=None) -> dict:
    """Reconstruct every batch; returns ``{"items": [...], "l2": mean ℓ2 loss}`` (and
    ``"loss"``, the mean of ``loss_fn(out, target, max)`` per sample, when given).

    MRI items are volumes (slices gathered by file name, sorted by slice): ``name``, ``pred``,
    ``target``, ``zero_filled`` ``(S, h, w)`` float32 and ``maxval``.  CS/SR items are single
    images.  ``l2`` is the paper's loss ``||f(y) − x||₂`` averaged over samples (for GE).
    """
    model.eval()
    vols = defaultdict(dict)
    items, l2_sum, loss_sum, n = [], 0.0, 0.0, 0
    for b, batch in enumerate(tqdm(loader, desc=desc, disable=not progress, leave=False)):
        if max_batches and b >= max_batches:
            break
        y, A, target, info = task.unpack(batch, device)
        out = model(y, A)
        if target is not None:
            l2_sum += (out - target).reshape(len(out), -1).norm(dim=1).sum().item()
            if loss_fn is not None:
                loss_sum += loss_fn(out, target, info.get("max")).item() * len(out)
            n += len(out)
        if task.name == "mri":
            zf = info["batch"].zero_filled
            for i, (f, s) in enumerate(zip(info["fname"], info["slice"].tolist())):
                vols[f][s] = (out[i].float().cpu().numpy(),
                              None if target is None else target[i].cpu().numpy(),
                              zf[i].cpu().numpy(), float(info["max"][i]))
        else:
            for i in range(len(out)):
                items.append({"name": f"{len(items):05d}", "pred": out[i].float().cpu().numpy(),
                              "target": target[i].cpu().numpy(), "zero_filled": None,
                              "maxval": 1.0})
    for f, sl in sorted(vols.items()):
        keys = sorted(sl)
        tg = [sl[k][1] for k in keys]
        items.append({"name": f, "slices": keys,
                      "pred": np.stack([sl[k][0] for k in keys]),
                      "target": None if tg[0] is None else np.stack(tg),
                      "zero_filled": np.stack([sl[k][2] for k in keys]),
                      "maxval": sl[keys[0]][3]})
    res = {"items": items, "l2": l2_sum / max(n, 1)}
    if loss_fn is not None:
        res["loss"] = loss_sum / max(n, 1)
    return res


def score(rec: dict, task_name: str) -> dict:
    """Per-item and aggregate metrics of the model and of the zero-filled baseline."""
    per_model, per_zf = [], []
    for it in rec["items"]:
        if it["target"] is None:
            continue
        if task_name == "mri":
            # fastMRI's evaluation: data range = the target volume's maximum
            m = volume_metrics(it["target"], it["pred"])
            z = volume_metrics(it["target"], it["zero_filled"])
            per_zf.append({"fname": it["name"], **z})
        else:
            m = image_metrics(it["target"], it["pred"], 1.0)
        per_model.append({"fname": it["name"], **m})
    out = {"per_volume": per_model, "aggregate": aggregate(per_model)}
    if per_zf:
        out["zero_filled"] = {"per_volume": per_zf, "aggregate": aggregate(per_zf)}
    return out


def jacobian_stats(model, task, loader, device, n_batches: int = 2, n_iter: int = 10,
                   method: str = "forward", seed: int = 0) -> dict:
    """Mean and max over samples of σ(J A) and σ(J) (power iteration, ``n_iter`` steps)."""
    model.eval()
    sja, sj = [], []
    g = torch.Generator().manual_seed(seed)
    for b, batch in enumerate(loader):
        if b >= n_batches:
            break
        y, A, _, _ = task.unpack(batch, device)
        f = model.as_function(A)
        sja.append(spectral_norm(f, y, A, n_iter, method, generator=g).cpu())
        sj.append(spectral_norm(f, y, None, n_iter, method, generator=g).cpu())
    if not sja:
        return {}
    sja, sj = torch.cat(sja), torch.cat(sj)
    return {"sigma_ja": {"mean": float(sja.mean()), "max": float(sja.max())},
            "sigma_j": {"mean": float(sj.mean()), "max": float(sj.max())},
            "n_samples": int(len(sja)), "n_iter": n_iter}
