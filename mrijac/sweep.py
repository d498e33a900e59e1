"""``mrijac sweep``: choose λ the way the paper did — short runs on a grid, judged on the
validation split by the reference σ and the reconstruction quality.

For each λ of the grid (λ1 = λ2 = λ; λ = 0 is the unpenalised baseline and is always run) the
config is trained for its ``optim.epochs`` and the last epoch's validation PSNR/SSIM and
reference σ(J A), σ(J) (Lanczos, on the run's fixed probe slices) are collected.  The
recommendation is the λ with the lowest validation σ(J A) whose PSNR is at most ``max_drop``
dB below the baseline's.  Outputs: ``sweep.csv``/``sweep.json``, ``report.md``/``.html`` and
``figures/tradeoff.png`` (σ vs PSNR per λ).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from .evaluate.figures import plt, save_figure
from .evaluate.report import fmt, md_table, staged_dir, write_csv, write_json, write_report
from .train import train

KEYS = (
    "psnr",
    "ssim",
    "val_sigma_ja_mean",
    "val_sigma_ja_max",
    "val_sigma_j_mean",
    "train_ref_sigma_ja_mean",
    "est_ratio_ja",
    "rel_ge",
    "step_time",
)


def recommend(rows: list[dict], max_drop: float = 0.2) -> dict | None:
    """The row with the lowest ``val_sigma_ja_mean`` among those whose PSNR is at most
    ``max_drop`` dB below the λ = 0 row's (``None`` without a baseline)."""
    base = next((r for r in rows if r["lambda"] == 0), None)
    if base is None:
        return None
    ok = [
        r
        for r in rows
        if math.isfinite(r.get("psnr", math.nan))
        and r["psnr"] >= base["psnr"] - max_drop
        and math.isfinite(r["val_sigma_ja_mean"])
    ]
    return min(ok, key=lambda r: r["val_sigma_ja_mean"]) if ok else base


def lambda_sweep(cfg, lambdas, out, overwrite: bool = False, max_drop: float = 0.2) -> dict:
    """Train ``cfg`` once per λ into ``out/runs/lam_<λ>`` and write the trade-off report.

    ``cfg.reg.name`` must be a Jacobian penalty (sj, sja, sja+sj, fj, fja, fja+fj).
    Returns ``{"rows": [...], "recommended": row}``.
    """
    if cfg.reg.name not in ("sj", "sja", "sja+sj", "fj", "fja", "fja+fj"):
        raise ValueError(f"sweep needs a Jacobian penalty in reg.name, got {cfg.reg.name!r}")
    lams = sorted({0.0, *(float(v) for v in lambdas)})
    if any(not (v >= 0 and math.isfinite(v)) for v in lams):
        raise ValueError(f"--lambdas must be numbers >= 0, got {lambdas}")
    rows = []
    with staged_dir(out, overwrite) as tmp:
        for lam in lams:
            c = replace(
                cfg,
                reg=replace(
                    cfg.reg,
                    name=cfg.reg.name if lam else "none",
                    lambda_ja=lam if lam else cfg.reg.lambda_ja,
                    lambda_j=lam if lam else cfg.reg.lambda_j,
                    pool=cfg.reg.pool if lam else 0,
                ),
                name=f"{cfg.name}_lam{lam:g}",
            )
            last = train(c, tmp / "runs" / f"lam_{lam:g}", overwrite=True)
            rows.append({"lambda": lam, **{k: float(last.get(k, math.nan)) for k in KEYS}})
        rec = recommend(rows, max_drop)
        write_csv(tmp / "sweep.csv", rows)
        write_json(
            tmp / "sweep.json", {"rows": rows, "recommended": rec, "max_drop": max_drop, "config": cfg.to_dict()}
        )
        _figure(tmp / "figures" / "tradeoff.png", rows, rec)
        table = md_table(
            [
                "λ",
                "val PSNR",
                "SSIM",
                "val σ(J A) mean",
                "max",
                "val σ(J)",
                "train σ(J A)",
                "estimate / reference",
                "relative GE",
                "s/step",
            ],
            [
                [
                    r["lambda"],
                    r["psnr"],
                    r["ssim"],
                    r["val_sigma_ja_mean"],
                    r["val_sigma_ja_max"],
                    r["val_sigma_j_mean"],
                    r["train_ref_sigma_ja_mean"],
                    r["est_ratio_ja"],
                    r["rel_ge"],
                    r["step_time"],
                ]
                for r in rows
            ],
        )
        md = [
            f"# λ sweep: {cfg.name} ({cfg.reg.name}, method {cfg.reg.method})",
            "",
            f"{cfg.optim.epochs} epochs per λ; σ = reference (Lanczos) on the run's fixed "
            "validation probe slices; λ = 0 is the unpenalised baseline.",
            "",
            table,
            "",
            f"Recommended: **λ = {fmt(rec['lambda'])}** — the lowest validation σ(J A) with "
            f"PSNR at most {max_drop} dB below the baseline's.",
            "",
            "![trade-off](figures/tradeoff.png)",
        ]
        write_report(tmp, "\n".join(md) + "\n", f"λ sweep {cfg.name}")
    return {"rows": rows, "recommended": rec}


def _figure(path: Path, rows, rec):
    fig, ax = plt.subplots(figsize=(5, 3.6))
    xs = [r["val_sigma_ja_mean"] for r in rows]
    ys = [r["psnr"] for r in rows]
    ax.plot(xs, ys, "o-")
    for r in rows:
        ax.annotate(
            f"λ={r['lambda']:g}",
            (r["val_sigma_ja_mean"], r["psnr"]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    if rec is not None:
        ax.plot([rec["val_sigma_ja_mean"]], [rec["psnr"]], "r*", ms=14, label="recommended")
        ax.legend()
    ax.set_xlabel("validation σ(J A), reference")
    ax.set_ylabel("validation PSNR (dB)")
    save_figure(fig, path)
