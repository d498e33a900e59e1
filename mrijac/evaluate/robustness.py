"""``mrijac robustness``: how much can a small change of the measurements change the image?

For fixed, seeded slices of a data folder (the checkpoint's validation masks) and every
``ε`` (relative to ``‖y‖``): the first-order worst case and its actual amplification, PGD
(from the first-order and from a random start), a random perturbation of the same norm, the
zero-filled reconstruction under the network's worst perturbation; then sampling shift (other
masks and accelerations than trained) and small features (contrast kept).  See
:mod:`mrijac.evaluate.attacks` for the maths.  Writes ``robustness.json/csv``, ``report.md/html``
and figures into ``out``.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..metrics import image_metrics
from ..tasks import fixed_batches, make_task
from .attacks import amplification, disc_feature, first_order, pgd, random_perturbation, support
from .loading import checkpoint_on_data
from .report import md_table, staged_dir, write_csv, write_json, write_report

EPS = (0.005, 0.01, 0.02, 0.05)
SHIFTS = (("random", 8, 0.04), ("equispaced_fraction", 4, 0.08), ("poisson", 4, 0.08))
RADII = (1, 2, 4)
QUICK = {"slices": 2, "eps": (0.01, 0.05), "steps": 3, "shifts": SHIFTS[:1], "radii": (1, 3)}


def _metrics(task, out, target, info, b) -> dict:
    rng = float(info["max"][b]) if "max" in info else 1.0
    t, p = target[b].detach().cpu().numpy(), out[b].detach().cpu().numpy()
    return image_metrics(t, p, rng if task.volumes else 1.0)


def _zero_filled(task, y, A, info):
    if not task.volumes:
        return None
    from ..data.fastmri import zero_filled
    from ..operators import MultiCoilMRI

    return zero_filled(y, isinstance(A, MultiCoilMRI), info["batch"].crop)


def robustness(
    checkpoint,
    data,
    out,
    slices: int = 4,
    eps=EPS,
    steps: int = 10,
    seed: int = 0,
    shifts=SHIFTS,
    radii=RADII,
    quick: bool = False,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Robustness of ``checkpoint`` on ``slices`` seeded slices of ``data``; returns the results
    (also written to ``out``).  ``quick``: 2 slices, ε ∈ {0.01, 0.05}, 3 PGD steps, one shift,
    radii 1 and 3."""
    from tqdm.auto import tqdm

    if quick:
        slices, eps, steps, shifts, radii = (
            QUICK["slices"],
            QUICK["eps"],
            QUICK["steps"],
            QUICK["shifts"],
            QUICK["radii"],
        )
    eps = tuple(float(e) for e in eps)
    if not eps or any(not 0 < e < 1 for e in eps):
        raise ValueError(f"--eps must be numbers in (0, 1) (relative to ‖y‖), got {eps}")
    if slices < 1 or steps < 1:
        raise ValueError(f"--slices and --steps must be >= 1, got {slices} and {steps}")
    model, cfg, ck, task, dev = checkpoint_on_data(checkpoint, data, device)
    task.batch_size = 1  # slices may differ in size without crop_kspace; one at a time
    batches = fixed_batches(task, "val", slices, seed, dev)
    if not batches or batches[0][2] is None:
        raise ValueError(f"{data}: robustness needs slices with targets (not test files)")
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    rows, worst = [], None
    with staged_dir(out, overwrite) as tmp:
        for i, (y, A, target, info) in enumerate(tqdm(batches, desc="robustness", disable=not progress)):
            rows.append(_slice(model, task, y, A, target, info, i, eps, steps, radii, g))
            w = rows[-1]["worst"]
            if worst is None or w["psnr_drop"] > worst["psnr_drop"]:
                worst = w
            del rows[-1]["worst"]
        shift_rows = _shifts(cfg, data, model, shifts, slices, seed, dev)
        seconds = time.perf_counter() - t0
        result = _summarise(rows, shift_rows, eps, radii, steps, len(rows), seed, checkpoint, data, cfg, seconds)
        write_json(tmp / "robustness.json", result)
        write_csv(tmp / "robustness.csv", [_flat(r) for r in rows])
        (tmp / "figures").mkdir()
        from .figures import robustness_curves, worst_case_figure

        robustness_curves(tmp / "figures" / "robustness.png", result)
        worst_case_figure(tmp / "figures" / "worst.png", worst)
        write_report(tmp, _markdown(result), "mrijac robustness")
    return result


def _slice(model, task, y, A, target, info, i, eps, steps, radii, g) -> dict:
    model.eval()
    with torch.no_grad():
        f0 = model(y, A)
    zf = _zero_filled(task, y, A, info)
    sup = support(A, y)
    ynorm = torch.linalg.vector_norm(y.reshape(1, -1), dim=1)
    direction, sigma = first_order(model, y, A, generator=g)
    rand_dir = random_perturbation(y, torch.ones(1, device=y.device, dtype=y.real.dtype), sup, g)
    base = _metrics(task, f0, target, info, 0)
    row = {
        "slice": info.get("keys", [i])[0] if isinstance(info.get("keys"), list) else i,
        "sigma_ja": float(sigma[0]),
        "norm_y": float(ynorm[0]),
        "sampled_fraction": float(sup.mean()),
        "clean": base,
        "zero_filled": _metrics(task, zf, target, info, 0) if zf is not None else None,
        "eps": {},
    }
    worst = None
    for e in eps:
        r = e * ynorm.to(y.real.dtype)
        amp, fo_outs = amplification(model, y, A, direction, r, f0=f0, outputs=True)
        f_fo = max(fo_outs, key=lambda o: float((o - target).norm()))  # the sign that hurts more
        adv = pgd(model, y, A, target, r, steps, [direction, rand_dir], sup)
        with torch.no_grad():
            f_adv = model(y + adv, A)
            f_rand = model(y + rand_dir * r, A)
        rec = {
            "radius": float(r[0]),
            "amplification": float(amp[0]),
            "amplification_over_sigma": float(amp[0] / sigma[0]),
            "adversarial": _metrics(task, f_adv, target, info, 0),
            "first_order": _metrics(task, f_fo, target, info, 0),
            "random": _metrics(task, f_rand, target, info, 0),
            "change_adversarial": float((f_adv - f0).norm() / r[0]),
        }
        if zf is not None:
            rec["zero_filled_adversarial"] = _metrics(task, _zero_filled(task, y + adv, A, info), target, info, 0)
        row["eps"][str(e)] = rec
        drop = base["psnr"] - rec["adversarial"]["psnr"]
        if worst is None or drop > worst["psnr_drop"]:
            worst = {
                "psnr_drop": drop,
                "eps": e,
                "target": target[0].cpu().numpy(),
                "clean": f0[0].cpu().numpy(),
                "perturbed": f_adv[0].detach().cpu().numpy(),
                "perturbation": _image_of(A, adv, info, task),
                "name": f"slice {row['slice']}, ε = {e:g}",
            }
    row["worst"] = worst
    row["features"] = _features(model, task, y, A, target, info, radii, g, f0, zf)
    return row


def _image_of(A, e, info, task):
    """``|Aᴴ e|`` cropped like the output: where in the image the perturbation acts."""
    with torch.no_grad():
        im = A.adjoint(e).abs()
    if task.volumes:
        from fastmri.data.transforms import center_crop

        im = center_crop(im, info["batch"].crop)
    return im[0].cpu().numpy()


def _features(model, task, y, A, target, info, radii, g, f0, zf) -> dict:
    out = {}
    if not task.volumes:
        return out
    crop = info["batch"].crop
    contrast = 0.3 * float(target.max())
    for rad in radii:
        dy, disc = disc_feature(A, y, crop, rad, contrast, g)
        disc = disc.to(f0.device).bool()
        with torch.no_grad():
            f1 = model(y + dy, A)
        kept = float((f1 - f0)[disc].mean() / contrast)
        rec = {"contrast": contrast, "kept": kept}
        if zf is not None:
            z1 = _zero_filled(task, y + dy, A, info)
            rec["kept_zero_filled"] = float((z1 - zf)[disc].mean() / contrast)
        out[str(rad)] = rec
    return out


def _shifts(cfg, data, model, shifts, slices, seed, dev) -> list[dict]:
    """The same slices under masks the model was not trained with (and the trained one)."""
    if cfg.task != "mri":
        return []
    d = cfg.data
    settings = [
        ("trained: " + f"{d.mask_type} {d.accelerations[0]}×", d.mask_type, d.accelerations[0], d.center_fractions[0])
    ]
    settings += [(f"{m} {a}×", m, a, c) for m, a, c in shifts]
    out = []
    for label, mtype, acc, cf in settings:
        c2 = copy.deepcopy(cfg)
        c2.data.mask_type, c2.data.accelerations, c2.data.center_fractions = mtype, [acc], [cf]
        task = make_task(c2, splits=("val",), paths={"val": data})
        task.batch_size = 1
        ms, zs = [], []
        for y, A, target, info in fixed_batches(task, "val", slices, seed, dev):
            with torch.no_grad():
                ms.append(_metrics(task, model(y, A), target, info, 0))
            zs.append(_metrics(task, _zero_filled(task, y, A, info), target, info, 0))
        out.append(
            {
                "setting": label,
                "psnr": float(np.mean([m["psnr"] for m in ms])),
                "ssim": float(np.mean([m["ssim"] for m in ms])),
                "zf_psnr": float(np.mean([m["psnr"] for m in zs])),
                "zf_ssim": float(np.mean([m["ssim"] for m in zs])),
            }
        )
    return out


def _mean(rows, *path):
    vals = []
    for r in rows:
        v = r
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
            if v is None:
                break
        if isinstance(v, (int, float)) and math.isfinite(v):
            vals.append(v)
    return float(np.mean(vals)) if vals else math.nan


def _summarise(rows, shift_rows, eps, radii, steps, slices, seed, checkpoint, data, cfg, seconds) -> dict:
    curves = {}
    for e in eps:
        k = str(e)
        curves[k] = {
            "radius_mean": _mean(rows, "eps", k, "radius"),
            "amplification": _mean(rows, "eps", k, "amplification"),
            "amplification_over_sigma": _mean(rows, "eps", k, "amplification_over_sigma"),
            **{
                f"{kind}_{m}": _mean(rows, "eps", k, kind, m)
                for kind in ("adversarial", "first_order", "random", "zero_filled_adversarial")
                for m in ("psnr", "ssim", "nmse")
            },
        }
    return {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "regularizer": cfg.reg.name,
        "slices": slices,
        "seed": seed,
        "eps": list(eps),
        "steps": steps,
        "sigma_ja_mean": _mean(rows, "sigma_ja"),
        "clean": {m: _mean(rows, "clean", m) for m in ("psnr", "ssim", "nmse")},
        "zero_filled": {m: _mean(rows, "zero_filled", m) for m in ("psnr", "ssim", "nmse")},
        "curves": curves,
        "features": {
            str(r): {
                "kept": _mean(rows, "features", str(r), "kept"),
                "kept_zero_filled": _mean(rows, "features", str(r), "kept_zero_filled"),
            }
            for r in radii
        },
        "shifts": shift_rows,
        "seconds": seconds,
        "seconds_per_slice_step": seconds / max(1, slices * len(eps) * 2 * steps),
        "per_slice": rows,
    }


def _flat(r: dict) -> dict:
    out = {"slice": r["slice"], "sigma_ja": r["sigma_ja"], "clean_psnr": r["clean"]["psnr"]}
    for e, rec in r["eps"].items():
        out[f"eps{e}_amplification"] = rec["amplification"]
        for kind in ("adversarial", "first_order", "random"):
            out[f"eps{e}_{kind}_psnr"] = rec[kind]["psnr"]
    for rad, rec in r.get("features", {}).items():
        out[f"feature_r{rad}_kept"] = rec["kept"]
    return out


def _markdown(r: dict) -> str:
    c = r["curves"]
    rows = [
        [
            f"{float(e):g}",
            c[e]["radius_mean"],
            c[e]["amplification"],
            c[e]["amplification_over_sigma"],
            c[e]["adversarial_psnr"],
            c[e]["first_order_psnr"],
            c[e]["random_psnr"],
            c[e]["zero_filled_adversarial_psnr"],
        ]
        for e in c
    ]
    lines = [
        f"# Robustness of `{Path(r['checkpoint']).name}` (regularizer {r['regularizer']})",
        "",
        f"{r['slices']} seeded slices of `{r['data']}` with the checkpoint's validation masks; ε relative "
        f"to ‖y‖ (absolute radius listed); perturbations only on sampled k-space entries; PGD "
        f"{r['steps']} steps from the first-order and a random start. Converged σ(J A) mean "
        f"{r['sigma_ja_mean']:.4g}. Clean PSNR {r['clean']['psnr']:.2f} dB, SSIM {r['clean']['ssim']:.4f}; "
        f"zero-filled PSNR {r['zero_filled']['psnr']:.2f} dB. {r['seconds']:.0f} s in all, "
        f"{r['seconds_per_slice_step']:.3f} s per slice and PGD step.",
        "",
        "## Worst-case perturbations (mean over slices)",
        "",
        md_table(
            [
                "ε",
                "radius ‖e‖",
                "amplification ‖Δf‖/‖e‖",
                "amplification / σ",
                "PSNR adversarial",
                "PSNR first-order",
                "PSNR random",
                "PSNR zero-filled, adversarial e",
            ],
            rows,
        ),
        "",
        "![PSNR vs ε](figures/robustness.png)",
        "",
        "![the slice whose PSNR dropped most](figures/worst.png)",
    ]
    if r["features"] and any(math.isfinite(v["kept"]) for v in r["features"].values()):
        lines += [
            "",
            "## Small features (a disc of contrast 0.3 × the slice maximum; 1 = fully kept)",
            "",
            md_table(
                ["radius (px)", "contrast kept, network", "contrast kept, zero-filled"],
                [[k, v["kept"], v["kept_zero_filled"]] for k, v in r["features"].items()],
            ),
        ]
    if r["shifts"]:
        lines += [
            "",
            "## Sampling shift (the same slices, other masks)",
            "",
            md_table(
                ["mask", "PSNR", "SSIM", "zero-filled PSNR", "zero-filled SSIM"],
                [[s["setting"], s["psnr"], s["ssim"], s["zf_psnr"], s["zf_ssim"]] for s in r["shifts"]],
            ),
        ]
    return "\n".join(lines) + "\n"
