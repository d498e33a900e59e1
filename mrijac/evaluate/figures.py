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
    """Top row: ground truth | zero-filled | reconstruction (one grey scale).  Bottom row: the
    absolute errors of the zero-filled image and of the reconstruction against the ground
    truth, on one colour scale with its colour bar (so the two can be compared directly).

    ``target``, ``zero_filled`` (or ``None``: CS/SR), ``pred``: ``(h, w)`` arrays;
    ``metrics``: panel name -> caption line.
    """
    images = [("ground truth", target)] + ([("zero-filled", zero_filled)] if zero_filled is not None else [])
    images.append(("reconstruction", pred))
    errors = [(f"|{n} − truth|", np.abs(im - target)) for n, im in images[1:]]
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(3.0 * n + 0.6, 6.4), squeeze=False)
    vmax = float(np.percentile(target, 99.5)) or 1.0
    emax = max(float(np.percentile(e, 99.5)) for _, e in errors) or 1.0
    for ax, (name, im) in zip(axes[0], images):
        ax.imshow(im, cmap="gray", vmin=0, vmax=vmax)
        ax.set_title(name + ("\n" + metrics[name] if metrics and name in metrics else ""), fontsize=9)
    axes[1][0].text(
        0.5,
        0.5,
        f"error colour scale\n0 … {emax:.3g}\n(99.5th percentile;\nimage peak {vmax:.3g})",
        ha="center",
        va="center",
        fontsize=9,
        transform=axes[1][0].transAxes,
    )
    shown = None
    for ax, (name, e) in zip(axes[1][1:], errors):
        shown = ax.imshow(e, cmap="inferno", vmin=0, vmax=emax)
        ax.set_title(name, fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    fig.colorbar(shown, ax=list(axes[1][1:]), fraction=0.046, pad=0.02, label="absolute error")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, Path(path))


def samples_grid(path, targets: list, preds: list, title: str = "") -> Path:
    """Rows: ground truth, reconstruction, |error| (×5) of several images side by side —
    ``torchvision.utils.make_grid`` of ``(h, w)`` arrays with values in [0, 1] (CS, SR)."""
    import torch
    from torchvision.utils import make_grid

    t = torch.stack([torch.as_tensor(np.asarray(a, np.float32))[None] for a in targets])
    p = torch.stack([torch.as_tensor(np.asarray(a, np.float32))[None] for a in preds])
    rows = torch.cat([t, p, ((p - t).abs() * 5)]).clamp(0, 1)
    grid = make_grid(rows, nrow=len(targets), padding=2, pad_value=1.0)[0].numpy()
    fig, ax = plt.subplots(figsize=(1.4 * len(targets) + 1, 4.6))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1)
    h = t.shape[-2] + 2
    ax.set_yticks([h * (i + 0.5) for i in range(3)], ["truth", "reconstruction", "|error| ×5"], fontsize=8)
    ax.set_xticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, Path(path))


def robustness_curves(path, result: dict) -> Path:
    """PSNR vs ε (adversarial, first-order, random, zero-filled under the adversarial e), the
    amplification over σ vs ε, and the contrast kept per feature radius."""
    eps = [float(e) for e in result["curves"]]
    c = list(result["curves"].values())
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for key, style, label in (
        ("adversarial_psnr", "o-", "adversarial (PGD)"),
        ("first_order_psnr", "s--", "first-order (top singular vector)"),
        ("random_psnr", "^:", "random, same norm"),
        ("zero_filled_adversarial_psnr", "x-.", "zero-filled, adversarial e"),
    ):
        vals = [r.get(key, np.nan) for r in c]
        if np.isfinite(vals).any():
            axes[0].plot(eps, vals, style, label=label)
    axes[0].axhline(result["clean"]["psnr"], color="k", lw=0.8, label="clean")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("ε (relative to ‖y‖)")
    axes[0].set_ylabel("PSNR (dB)")
    axes[0].legend(fontsize=7)
    axes[1].plot(eps, [r["amplification_over_sigma"] for r in c], "o-")
    axes[1].axhline(1.0, color="k", lw=0.8)
    axes[1].set_xscale("log")
    for ax in axes[:2]:
        ax.set_xticks(eps, [f"{e:g}" for e in eps])
        ax.minorticks_off()
    axes[1].set_xlabel("ε")
    axes[1].set_ylabel("amplification / σ(J A)")
    axes[1].set_title("nonlinear vs first-order gain", fontsize=9)
    per = result.get("per_slice") or []
    e0 = min(result["curves"], key=float)
    amps = [r["eps"][e0]["amplification"] for r in per if e0 in r.get("eps", {})]
    sig = [r["sigma_ja"] for r in per]
    if amps:
        bins = np.linspace(0, max(amps + sig) * 1.1, 12)
        axes[3].hist(amps, bins=bins, alpha=0.7, label=f"amplification at ε = {float(e0):g}")
        axes[3].hist(sig, bins=bins, histtype="step", color="k", label="σ(J A) (converged)")
        axes[3].set_xlabel("‖Δf‖ / ‖e‖ per slice")
        axes[3].set_ylabel("slices")
        axes[3].legend(fontsize=7)
    else:
        axes[3].axis("off")
    feats = result.get("features") or {}
    if feats:
        r = list(feats)
        x = np.arange(len(r))
        axes[2].bar(x - 0.2, [feats[k]["kept"] for k in r], 0.4, label="network")
        axes[2].bar(x + 0.2, [feats[k]["kept_zero_filled"] for k in r], 0.4, label="zero-filled")
        axes[2].set_xticks(x, [f"r = {k} px" for k in r])
        axes[2].axhline(1.0, color="k", lw=0.8)
        axes[2].set_ylabel("contrast kept")
        axes[2].legend(fontsize=7)
    else:
        axes[2].axis("off")
    fig.tight_layout()
    return save_figure(fig, Path(path))


def robustness_compare(path, runs: dict) -> Path:
    """PSNR under the adversarial and the random perturbation vs ε, one colour per run."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, (name, rb) in enumerate(runs.items()):
        eps = [float(e) for e in rb["curves"]]
        c = list(rb["curves"].values())
        ax.plot(eps, [r["adversarial_psnr"] for r in c], "o-", color=f"C{i}", label=f"{name}: adversarial")
        ax.plot(eps, [r["random_psnr"] for r in c], ":", color=f"C{i}", label=f"{name}: random")
    ax.set_xscale("log")
    ax.set_xlabel("ε (relative to ‖y‖)")
    ax.set_ylabel("PSNR (dB)")
    ax.legend(fontsize=7)
    return save_figure(fig, Path(path))


def worst_case_figure(path, worst: dict) -> Path:
    """Truth | f(y) | |Aᴴ e| (the perturbation, own scale) | f(y + e) | |f(y + e) − f(y)|, with
    colour bars; images share the grey scale of the truth."""
    panels = [
        ("ground truth", worst["target"], "gray"),
        ("f(y)", worst["clean"], "gray"),
        ("|Aᴴ e| (perturbation)", worst["perturbation"], "magma"),
        ("f(y + e)", worst["perturbed"], "gray"),
        ("|f(y + e) − f(y)|", np.abs(worst["perturbed"] - worst["clean"]), "inferno"),
    ]
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.8))
    vmax = float(np.percentile(worst["target"], 99.5)) or 1.0
    for ax, (name, im, cmap) in zip(axes, panels):
        kw = {"vmin": 0, "vmax": vmax} if cmap == "gray" else {}
        shown = ax.imshow(np.squeeze(im), cmap=cmap, **kw)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(f"{worst['name']}: PSNR −{worst['psnr_drop']:.2f} dB", fontsize=10)
    return save_figure(fig, Path(path))


COMPOSITE = {  # panel -> (history column, line style, label suffix)
    "σ(J A): reference vs training estimate": [
        ("val_sigma_ja_mean", "-", "val reference"),
        ("train_ref_sigma_ja_mean", "--", "train reference"),
        ("train_sigma_ja", ":", "training-time estimate"),
        ("val_floor_ja_mean", "-.", "val lower bound ‖J A Aᴴy‖/‖Aᴴy‖"),
    ],
    "estimate / reference σ(J A)": [
        ("est_ratio_ja", "-", "at the step"),
        ("est_ratio_end_ja", "--", "at epoch end"),
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
        "estimate / reference σ(J A)",
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
        if k == "estimate / reference σ(J A)":
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


def bars_figure(
    path, table: list[dict], keys=("ssim", "psnr", "ge", "sigma_ja_mean", "sigma_j_mean"), baseline: dict | None = None
) -> Path | None:
    """One bar chart per metric across runs; every axis starts at 0 (no truncated axes that
    magnify differences), values are printed on the bars, and ``baseline`` (the zero-filled
    reconstruction's metrics) is drawn as a dashed line where it has the metric."""
    keys = [k for k in keys if any(_finite(r.get(k)) for r in table)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.0 * len(keys), 3.2), squeeze=False)
    names = [r["run"] for r in table]
    for ax, k in zip(axes.flat, keys):
        vals = [r.get(k, np.nan) for r in table]
        bars = ax.bar(range(len(vals)), vals, color=[f"C{i}" for i in range(len(vals))])
        ax.bar_label(bars, labels=[f"{v:.4g}" if _finite(v) else "" for v in vals], fontsize=7)
        ax.set_xticks(range(len(vals)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(k.replace("_", " "), fontsize=9)
        top = np.nanmax([v for v in vals if _finite(v)] + [0.0])
        if baseline and _finite(baseline.get(k)):
            ax.axhline(baseline[k], color="k", ls="--", lw=1, label="zero-filled")
            ax.legend(fontsize=7, loc="lower right")
            top = max(top, baseline[k])
        ax.set_ylim(0, top * 1.12 if top > 0 else 1)
    fig.tight_layout()
    return save_figure(fig, Path(path))


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)
