"""``mrijac evaluate``: score a checkpoint on a data folder and write the report."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..inference import jacobian_stats, reconstruct, score
from ..metrics import generalization_gap
from .figures import curves_figure, reconstruction_figure, samples_grid
from .loading import checkpoint_on_data
from .report import fmt, md_table, staged_dir, write_csv, write_json, write_report


def evaluate_checkpoint(
    checkpoint,
    data,
    out,
    overwrite: bool = False,
    device: str = "auto",
    n_figures: int = 3,
    jac_batches: int = 4,
    jac_tol: float = 1e-3,
    jac_max_iter: int = 60,
    progress: bool = True,
    robustness: str | None = None,
) -> dict:
    """Evaluate ``checkpoint`` on ``data`` (MRI: a folder of fastMRI volumes with targets;
    CS: an MNIST folder; SR: an image folder) and write metrics.json, metrics.csv, report.md,
    report.html and figures/ into ``out``.  Returns the metrics dictionary.

    MRI undersampling uses the checkpoint's mask settings with fastMRI's validation convention
    (a fixed mask per volume, seeded from the file name).  GE = |test ℓ2 loss − train ℓ2 loss|
    with the training loss measured on the training set at the end of training.
    ``robustness``: ``"full"`` or ``"quick"`` adds :func:`~mrijac.evaluate.robustness.robustness`
    in ``out/robustness/`` (linked from the report; ``mrijac compare`` reads it).
    """
    model, cfg, ck, task, dev = checkpoint_on_data(checkpoint, data, device)
    data = Path(data)
    if cfg.task == "mri" and cfg.data.batch_size > 1 and not cfg.data.crop_kspace:
        task.batch_size = 1
    loader = task.loader("val", False)
    with staged_dir(out, overwrite) as tmp:
        rec = reconstruct(model, task, loader, dev, progress=progress, desc="evaluate")
        if not any(it["target"] is not None for it in rec["items"]):
            raise ValueError(f"{data}: no targets to evaluate against (test files?)")
        bad = int((~np.isfinite(rec["l2_values"])).sum()) if len(rec["l2_values"]) else 0
        if bad:
            raise ValueError(
                f"{checkpoint}: its reconstructions of {bad} of {len(rec['l2_values'])} samples in {data} "
                "hold NaN/Inf; nothing was scored"
            )
        s = score(rec, task)
        gen = generalization(cfg, ck, data, rec)
        js = jacobian_stats(
            model, _first_batches(task, loader, dev, jac_batches), jac_tol, jac_max_iter, seed=cfg.train.seed
        )
        result = {
            "checkpoint": str(checkpoint),
            "data": str(data),
            "task": cfg.task,
            "model": cfg.model.name,
            "regularizer": cfg.reg.name,
            "epochs": ck.get("epoch"),
            "per_volume": s["per_volume"],
            "aggregate": s["aggregate"],
            "test_loss": rec["l2"],
            "train_loss": gen.get("train"),
            "ge": gen.get("ge"),
            "generalization": gen,
            "jacobian": js,
        }
        if "zero_filled" in s:
            result["zero_filled"] = s["zero_filled"]
        write_json(tmp / "metrics.json", result)
        zf = {r["fname"]: r for r in s.get("zero_filled", {}).get("per_volume", [])}
        rows = []
        for r in s["per_volume"]:
            row = dict(r)
            if r["fname"] in zf:
                row.update({f"zf_{k}": v for k, v in zf[r["fname"]].items() if k != "fname"})
            rows.append(row)
        write_csv(tmp / "metrics.csv", rows)
        figs = _figures(tmp / "figures", rec, s, n_figures)
        hist = ck.get("history") or []
        curves = curves_figure(tmp / "figures" / "curves.png", {cfg.name: hist}) if hist else None
        md = _markdown(result, figs, curves)
        if robustness:
            from .robustness import robustness as run_robustness

            rb = run_robustness(
                checkpoint, data, tmp / "robustness", quick=robustness == "quick", device=device, progress=progress
            )
            result["robustness"] = {k: rb[k] for k in ("eps", "curves", "features", "shifts", "sigma_ja_mean")}
            write_json(tmp / "metrics.json", result)
            md += (
                "\n## Robustness\n\nWorst-case, first-order and random k-space perturbations, sampling shift "
                "and small features: [robustness/report.html](robustness/report.html)\n\n"
                "![robustness](robustness/figures/robustness.png)\n"
            )
        write_report(tmp, md, f"mrijac evaluation: {cfg.name}")
    return result


def held_out_reason(cfg, data) -> str | None:
    """``None`` when ``data`` is the held-out split of the training distribution (the
    run's own validation folder); otherwise why a generalization error would not be one."""
    ref = {
        "mri": lambda: Path(cfg.data.root) / "val" if cfg.data.root else None,
        "sr": lambda: Path(cfg.data.val_dir) if cfg.data.val_dir else None,
        "cs": lambda: Path(cfg.data.mnist_dir) if cfg.data.mnist_dir else None,
    }[cfg.task]()
    if ref is not None and Path(data).resolve() == ref.resolve():
        return None
    return (
        f"GE omitted: {data} is not the held-out split of the training distribution "
        f"({ref}); a loss gap to another dataset measures the change of data (scale, "
        "anatomy, sampling), not generalization"
    )


def generalization(cfg, ck, data, rec) -> dict:
    """GE = |test ℓ2 − train ℓ2| and the relative GE (errors ‖f(y) − x‖/‖x‖) with bootstrap
    95 % intervals from the per-sample training losses saved at the end of training — or the
    reason it is omitted."""
    why = held_out_reason(cfg, data)
    if why is not None:
        return {"omitted": why}
    tr_l2, tr_rel = ck.get("train_l2_values"), ck.get("train_rel_values")
    if not tr_l2:
        train_l2 = float(ck.get("train_loss_eval", math.nan))
        if not math.isfinite(train_l2):
            return {"omitted": "GE omitted: the checkpoint holds no training loss (not final)"}
        return {
            "ge": abs(rec["l2"] - train_l2),
            "test": rec["l2"],
            "train": train_l2,
            "ci95": [math.nan, math.nan],
            "note": "checkpoint without per-sample training losses: no interval",
        }
    ge = generalization_gap(rec["l2_values"], tr_l2, seed=cfg.train.seed)
    rel = generalization_gap(rec["rel_values"], tr_rel, seed=cfg.train.seed)
    return {**ge, "rel_ge": rel["ge"], "rel_ci95": rel["ci95"], "rel_test": rel["test"], "rel_train": rel["train"]}


def _first_batches(task, loader, device, n: int) -> list:
    """``[(y, A), …]`` of the first ``n`` batches (the evaluation's own fixed masks)."""
    out = []
    for b, batch in enumerate(loader):
        if b >= n:
            break
        y, A, _, _ = task.unpack(batch, device)
        out.append((y, A))
    return out


def _figures(folder: Path, rec, s, n) -> list[str]:
    names = []
    items = [it for it in rec["items"] if it["target"] is not None][:n]
    per = {r["fname"]: r for r in s["per_volume"]}
    for it in items:
        if "slices" in it:  # a volume: its middle slice
            sl = len(it["pred"]) // 2
            t, z, p = it["target"][sl], it["zero_filled"][sl], it["pred"][sl]
            label = f"{it['name']} slice {it['slices'][sl]}"
        else:
            t, z, p = _img(it["target"]), None, _img(it["pred"])
            label = f"image {it['name']}"
        m = per.get(it["name"], {})
        fname = f"recon_{Path(it['name']).stem}.png"
        reconstruction_figure(
            folder / fname,
            t,
            z,
            p,
            label,
            {"reconstruction": f"SSIM {fmt(m.get('ssim'))}, PSNR {fmt(m.get('psnr'))} dB"},
        )
        names.append(f"figures/{fname}")
    flat = [it for it in rec["items"] if it["target"] is not None and "slices" not in it][:12]
    shapes = {np.shape(_img(it["target"])) for it in flat}
    if len(flat) > 1 and len(shapes) == 1:  # CS/SR: many small images, one grid
        samples_grid(folder / "samples.png", [_img(it["target"]) for it in flat], [_img(it["pred"]) for it in flat])
        names.append("figures/samples.png")
    return names


def _img(a):
    a = np.asarray(a).squeeze()
    if a.ndim == 1:
        n = int(round(np.sqrt(a.size)))
        a = a.reshape(n, n)
    return a


def _ge_lines(g: dict) -> list[str]:
    if "omitted" in g:
        return [g["omitted"] + "."]
    ci = lambda c: "–" if not c or not math.isfinite(c[0]) else f"[{c[0]:.4g}, {c[1]:.4g}]"  # noqa: E731
    rows = [["ℓ2 ‖f(y) − x‖", fmt(g["test"]), fmt(g["train"]), fmt(g["ge"]), ci(g.get("ci95"))]]
    if "rel_ge" in g:
        rows.append(
            [
                "relative ‖f(y) − x‖/‖x‖",
                fmt(g["rel_test"]),
                fmt(g["rel_train"]),
                fmt(g["rel_ge"]),
                ci(g.get("rel_ci95")),
            ]
        )
    return [md_table(["loss", "test (held-out)", "train", "GE = |test − train|", "95 % bootstrap interval"], rows)]


def _markdown(r, figs, curves) -> str:
    agg, zf = r["aggregate"], r.get("zero_filled", {}).get("aggregate", {})
    rows = []
    for m in ("ssim", "psnr", "nmse"):
        if m in agg:
            row = [m.upper(), f"{agg[m]['mean']:.4f} ± {agg[m]['std']:.4f}"]
            row.append(f"{zf[m]['mean']:.4f} ± {zf[m]['std']:.4f}" if m in zf else "–")
            rows.append(row)
    lines = [
        f"# Evaluation of `{Path(r['checkpoint']).name}`",
        "",
        f"Task {r['task']}, model {r['model']}, regularizer {r['regularizer']}, "
        f"{r['epochs']} epochs; data `{r['data']}`, {len(r['per_volume'])} volumes/images.",
        "",
        "## Metrics (mean ± std over volumes)",
        "",
        md_table(["metric", "model", "zero-filled"], rows),
        "",
        "## Generalization",
        "",
    ] + _ge_lines(r.get("generalization") or {})
    js = r.get("jacobian") or {}
    if js:
        lines += [
            "",
            f"## Jacobian statistics ({js['n_samples']} samples; converged reference "
            f"σ by Lanczos bidiagonalization, relative residual ≤ {js['max_residual']:.1e}"
            f", ≤ {js['iterations']} steps, {js['seconds']:.1f} s)",
            "",
            md_table(
                ["norm", "mean", "max"],
                [
                    ["σ(J A)", js["sigma_ja"]["mean"], js["sigma_ja"]["max"]],
                    ["σ(J)", js["sigma_j"]["mean"], js["sigma_j"]["max"]],
                ]
                + [  # reports written before the bound existed lack it
                    [f"lower bound of {name}: ‖J {op}v‖/‖v‖, v = {v}", js[k]["mean"], js[k]["max"]]
                    for k, name, op, v in (("floor_ja", "σ(J A)", "A ", "Aᴴy"), ("floor_j", "σ(J)", "", "y"))
                    if k in js
                ],
            ),
        ]
        if "floor_ja" in js:
            lines += [
                "",
                "The lower bound is the Rayleigh quotient along the measurement itself (one JVP); for a "
                "normalising reconstructor and single-coil data it equals ‖f(y)‖/‖y‖, so no penalty can push σ "
                "below it without shrinking the reconstruction.",
            ]
    lines += [
        "",
        "## Per volume",
        "",
        md_table(
            ["volume", "SSIM", "PSNR", "NMSE"], [[p["fname"], p["ssim"], p["psnr"], p["nmse"]] for p in r["per_volume"]]
        ),
    ]
    if figs:
        lines += ["", "## Reconstructions", ""] + [f"![{Path(f).stem}]({f})" for f in figs]
    if curves:
        lines += ["", "## Training curves", "", "![training curves](figures/curves.png)"]
    return "\n".join(lines) + "\n"
