"""PNG figures for reports: reconstructions with error maps, training curves, comparisons."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_figure(fig, path: Path) -> Path:
    from ..atomic import atomic_path

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return Path(path)


def reconstruction_figure(path, target, zero_filled, pred, title="", metrics=None) -> Path:
    """Ground truth | zero-filled | reconstruction | |error| (same grey scale for images)."""
    panels = [("ground truth", target), ("reconstruction", pred), ("|error| ×5", None)]
    if zero_filled is not None:
        panels.insert(1, ("zero-filled", zero_filled))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    vmax = float(np.percentile(target, 99.5)) or 1.0
    for ax, (name, im) in zip(axes, panels):
        if im is None:
            ax.imshow(np.abs(pred - target) * 5, cmap="inferno", vmin=0, vmax=vmax)
        else:
            ax.imshow(im, cmap="gray", vmin=0, vmax=vmax)
        label = name
        if metrics and name in metrics:
            label += "\n" + metrics[name]
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, Path(path))


COMPOSITE = {  # panel -> (history column, line style, label suffix)
    "σ(J A): reference vs training estimate": [
        ("val_sigma_ja_mean", "-", "val reference"),
        ("train_ref_sigma_ja_mean", "--", "train reference"),
        ("train_sigma_ja", ":", "training-time estimate"),
    ],
}


def curves_figure(
    path,
    histories: dict[str, list[dict]],
    keys=(
        "train_loss",
        "val_loss",
        "ge",
        "rel_ge",
        "ssim",
        "psnr",
        "σ(J A): reference vs training estimate",
        "est_ratio_ja",
        "val_sigma_j_mean",
    ),
) -> Path | None:
    """Metric curves over epochs, one colour per run.  ``ge``/``rel_ge`` are drawn with their
    bootstrap 95 % band (``*_lo``/``*_hi``); the σ panel shows the converged reference σ on
    the validation and training probes beside the estimate the penalty trained with."""

    def cols_of(k):
        return [c for c, _, _ in COMPOSITE[k]] if k in COMPOSITE else [k]

    keys = [k for k in keys if any(_finite(r.get(c)) for c in cols_of(k) for h in histories.values() for r in h)]
    if not keys:
        return None
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, k in zip(axes.flat, keys):
        for i, (name, h) in enumerate(histories.items()):
            c = colors[i % len(colors)]
            lines = COMPOSITE.get(k, [(k, "-", "")])
            for col, style, suffix in lines:
                pts = [(r["epoch"], r[col]) for r in h if _finite(r.get(col))]
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", ms=3, color=c, label=f"{name} {suffix}".strip())
            band = [
                (r["epoch"], r.get(f"{k}_lo"), r.get(f"{k}_hi"))
                for r in h
                if _finite(r.get(f"{k}_lo")) and _finite(r.get(f"{k}_hi"))
            ]
            if band:
                e, lo, hi = zip(*band)
                ax.fill_between(e, lo, hi, color=c, alpha=0.15)
        if k == "est_ratio_ja":
            ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_title(k.replace("_", " ") if k not in COMPOSITE else k, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(alpha=0.3)
        if k in COMPOSITE:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, Path(path))


def bars_figure(path, table: list[dict], keys=("ssim", "psnr", "ge", "sigma_ja_mean", "sigma_j_mean")) -> Path | None:
    """One bar chart per metric across runs."""
    keys = [k for k in keys if any(_finite(r.get(k)) for r in table)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.0 * len(keys), 3.0), squeeze=False)
    names = [r["run"] for r in table]
    for ax, k in zip(axes.flat, keys):
        vals = [r.get(k, np.nan) for r in table]
        ax.bar(range(len(vals)), vals, color=[f"C{i}" for i in range(len(vals))])
        ax.set_xticks(range(len(vals)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(k.replace("_", " "), fontsize=9)
        lo = np.nanmin(vals) if np.isfinite(np.nanmin(vals)) else 0
        if k in ("ssim", "psnr") and lo > 0:
            ax.set_ylim(lo * 0.97, np.nanmax(vals) * 1.01)
    fig.tight_layout()
    return save_figure(fig, Path(path))


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)
