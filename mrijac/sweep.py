"""``mrijac sweep``: choose λ the way the paper did — short runs on a grid, judged on the
validation split by the reference σ and the reconstruction quality.

For each λ of the grid (λ1 = λ2 = λ; λ = 0 is the unpenalised baseline and is always run) the
config is trained for its ``optim.epochs`` — once per training seed ``train.seed, …,
train.seed + seeds − 1`` — and the last epoch's validation PSNR/SSIM and reference σ(J A), σ(J)
(Lanczos, on the run's fixed probe slices) are collected; a λ's row holds their means over
seeds, beside the per-seed ratio of σ(J A) to the baseline of the same seed and PSNR difference
(mean and worst seed).  The recommendation is the λ with the lowest mean validation σ(J A)
whose mean PSNR is at most ``max_drop`` dB below the baseline's.  One seed is not enough at
real size: on 40 real chest slices one CPU seed recommended λ = 1, while three seeds on a GPU
gave λ = 1 0.79× plain σ at −0.29 dB (one seed 0.97×, another −0.49 dB) and λ = 0.5 0.58× at
−0.21 dB (``experiments/results/true_sigma_gpu_lam1.md``, ``_lam05.md``).  Outputs:
``sweep.csv``/``sweep.json`` (``rows``: per λ; ``runs``: per λ and seed), ``report.md``/``.html``
and ``figures/tradeoff.png`` (σ vs PSNR per λ, seeds as faint points).
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
    ``max_drop`` dB below the λ = 0 row's (``None`` without a baseline): the mean of the paired
    per-seed differences ``psnr_diff`` where :func:`aggregate` made the rows (a seed whose run
    failed then drops out of both sides), else the difference of the rows' PSNR."""
    base = next((r for r in rows if r["lambda"] == 0), None)
    if base is None:
        return None

    def drop(r):
        return r["psnr_diff"] if "psnr_diff" in r else r.get("psnr", math.nan) - base.get("psnr", math.nan)

    ok = [r for r in rows if math.isfinite(drop(r)) and drop(r) >= -max_drop and math.isfinite(r["val_sigma_ja_mean"])]
    return min(ok, key=lambda r: r["val_sigma_ja_mean"]) if ok else base


def _mean(values) -> float:
    v = [x for x in values if math.isfinite(x)]
    return sum(v) / len(v) if v else math.nan


def aggregate(runs: list[dict]) -> list[dict]:
    """Per-λ rows from per-(λ, seed) runs: the mean over seeds of every key of :data:`KEYS`,
    and, against the λ = 0 run of the same seed, ``sigma_ratio`` (mean of σ(J A)_λ / σ(J A)_0),
    ``sigma_ratio_worst`` (its largest), ``psnr_diff`` (mean of PSNR_λ − PSNR_0) and
    ``psnr_diff_worst`` (its smallest); ``seeds`` counts the runs."""
    base = {r["seed"]: r for r in runs if r["lambda"] == 0}
    rows = []
    for lam in sorted({r["lambda"] for r in runs}):
        rs = [r for r in runs if r["lambda"] == lam]
        pairs = [(r, base[r["seed"]]) for r in rs if r["seed"] in base]
        ratio = [r["val_sigma_ja_mean"] / b["val_sigma_ja_mean"] for r, b in pairs]
        diff = [r["psnr"] - b["psnr"] for r, b in pairs]
        ratio_ok = [v for v in ratio if math.isfinite(v)]
        diff_ok = [v for v in diff if math.isfinite(v)]
        rows.append(
            {
                "lambda": lam,
                "seeds": len(rs),
                **{k: _mean(r.get(k, math.nan) for r in rs) for k in KEYS},
                "sigma_ratio": _mean(ratio),
                "sigma_ratio_worst": max(ratio_ok) if ratio_ok else math.nan,
                "psnr_diff": _mean(diff),
                "psnr_diff_worst": min(diff_ok) if diff_ok else math.nan,
            }
        )
    return rows


def lambda_sweep(cfg, lambdas, out, overwrite: bool = False, max_drop: float = 0.2, seeds: int = 1) -> dict:
    """Train ``cfg`` once per λ and seed into ``out/runs/lam_<λ>`` (``…/seed_<s>`` with
    ``seeds > 1``) and write the trade-off report.

    ``cfg.reg.name`` must be a Jacobian penalty (sj, sja, sja+sj, fj, fja, fja+fj); the seeds are
    ``cfg.train.seed … + seeds − 1``.  Returns ``{"rows": [...], "runs": [...], "recommended":
    row}`` (``rows``: :func:`aggregate` of ``runs``).
    """
    if cfg.reg.name not in ("sj", "sja", "sja+sj", "fj", "fja", "fja+fj"):
        raise ValueError(f"sweep needs a Jacobian penalty in reg.name, got {cfg.reg.name!r}")
    lams = sorted({0.0, *(float(v) for v in lambdas)})
    if any(not (v >= 0 and math.isfinite(v)) for v in lams):
        raise ValueError(f"--lambdas must be numbers >= 0, got {lambdas}")
    if int(seeds) < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    seed_list = [cfg.train.seed + i for i in range(int(seeds))]
    runs = []
    with staged_dir(out, overwrite) as tmp:
        for seed in seed_list:  # seed outer: every λ of a seed shares its data order and masks
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
                    train=replace(cfg.train, seed=seed),
                    name=f"{cfg.name}_lam{lam:g}" + (f"_seed{seed}" if seeds > 1 else ""),
                )
                folder = tmp / "runs" / f"lam_{lam:g}"
                last = train(c, folder / f"seed_{seed}" if seeds > 1 else folder, overwrite=True)
                runs.append({"lambda": lam, "seed": seed, **{k: float(last.get(k, math.nan)) for k in KEYS}})
        rows = aggregate(runs)
        rec = recommend(rows, max_drop)
        write_csv(tmp / "sweep.csv", rows)
        write_json(
            tmp / "sweep.json",
            {"rows": rows, "runs": runs, "recommended": rec, "max_drop": max_drop, "config": cfg.to_dict()},
        )
        _figure(tmp / "figures" / "tradeoff.png", rows, rec, runs if seeds > 1 else [])
        table = md_table(
            [
                "λ",
                "seeds",
                "val PSNR",
                "PSNR − baseline (worst seed)",
                "SSIM",
                "val σ(J A) mean",
                "σ × baseline (worst seed)",
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
                    r["seeds"],
                    r["psnr"],
                    f"{fmt(r['psnr_diff'], 3)} ({fmt(r['psnr_diff_worst'], 3)})",
                    r["ssim"],
                    r["val_sigma_ja_mean"],
                    f"{fmt(r['sigma_ratio'], 3)} ({fmt(r['sigma_ratio_worst'], 3)})",
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
            f"{cfg.optim.epochs} epochs per λ and seed (seeds {', '.join(map(str, seed_list))}); values are "
            "means over seeds; '× baseline' / '− baseline' pair each seed with its own λ = 0 run; σ = reference "
            "(Lanczos) on the run's fixed validation probe slices; λ = 0 is the unpenalised baseline.",
            "",
            table,
            "",
            f"Recommended: **λ = {fmt(rec['lambda'])}** — the lowest mean validation σ(J A) with "
            f"mean PSNR at most {max_drop} dB below the baseline's"
            + ("." if seeds > 1 else " (one training seed: run `--seeds 3` before trusting it)."),
            "",
            "![trade-off](figures/tradeoff.png)",
        ]
        write_report(tmp, "\n".join(md) + "\n", f"λ sweep {cfg.name}")
    return {"rows": rows, "runs": runs, "recommended": rec}


def _figure(path: Path, rows, rec, runs=()):
    fig, ax = plt.subplots(figsize=(5, 3.6))
    if runs:
        ax.plot([r["val_sigma_ja_mean"] for r in runs], [r["psnr"] for r in runs], ".", color="0.6", label="each seed")
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
    if rec is not None or runs:
        ax.legend()
    ax.set_xlabel("validation σ(J A), reference")
    ax.set_ylabel("validation PSNR (dB)")
    save_figure(fig, path)
