"""Reconstruction metrics, fastMRI-compatible.

MRI volumes: ``fastmri.evaluate``'s own ``ssim`` (slice-wise skimage SSIM with the volume
maximum as data range), ``psnr`` and ``nmse`` on ``(S, h, w)`` arrays, then mean and standard
deviation over volumes.  Single images (CS, SR): skimage with data range 1.
"""

from __future__ import annotations

import numpy as np
from fastmri import evaluate as fe
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

METRICS = ("ssim", "psnr", "nmse")


def volume_metrics(gt: np.ndarray, pred: np.ndarray, maxval: float | None = None) -> dict:
    """SSIM, PSNR, NMSE of one volume ``(S, h, w)`` exactly as ``fastmri.evaluate`` computes them
    (``maxval`` defaults to the target volume's maximum, as in fastMRI's evaluation).  The
    arrays keep their dtype, as in fastMRI's evaluation (float32 volumes give float32 NMSE)."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape or gt.ndim != 3:
        raise ValueError(f"volumes must both be (S, h, w); got target {gt.shape} and reconstruction {pred.shape}")
    maxval = gt.max() if maxval is None else maxval
    val = lambda a: float(np.asarray(a).reshape(-1)[0])  # noqa: E731 (fe.ssim gives (1,))
    return {
        "ssim": val(fe.ssim(gt, pred, maxval)),
        "psnr": val(fe.psnr(gt, pred, maxval)),
        "nmse": val(fe.nmse(gt, pred)),
    }


def image_metrics(gt: np.ndarray, pred: np.ndarray, data_range: float = 1.0) -> dict:
    """SSIM/PSNR/NMSE of one 2-D image (CS, SR), skimage with ``data_range``."""
    gt, pred = np.asarray(gt, np.float64).squeeze(), np.asarray(pred, np.float64).squeeze()
    if gt.ndim == 1:  # flat MNIST vectors
        n = int(round(np.sqrt(gt.size)))
        gt, pred = gt.reshape(n, n), pred.reshape(n, n)
    win = min(7, min(gt.shape) // 2 * 2 - 1)
    return {
        "ssim": float(structural_similarity(gt, pred, data_range=data_range, win_size=win)),
        "psnr": float(peak_signal_noise_ratio(gt, pred, data_range=data_range)),
        "nmse": float(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2),
    }


def aggregate(per_item: list[dict], seed: int = 0) -> dict:
    """``{metric: {"mean", "std", "ci95"}}`` over volumes: the sample standard deviation
    (ddof 1, 0 for a single volume), as ``fastmri.evaluate.Metrics`` reports it, and a
    bootstrap 95 % interval of the mean (:func:`bootstrap_ci`)."""
    out = {}
    for m in METRICS:
        vals = np.array([d[m] for d in per_item if m in d], dtype=np.float64)
        if len(vals):
            std = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            out[m] = {"mean": float(vals.mean()), "std": std, "ci95": list(bootstrap_ci([vals], np.mean, seed=seed))}
    return out


def bootstrap_ci(samples: list, stat, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(*samples)``, each sample resampled with
    replacement independently (seeded).  NaN when a sample has fewer than 2 values."""
    arrs = [np.asarray(s, dtype=np.float64).reshape(-1) for s in samples]
    if any(len(a) < 2 for a in arrs):
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    reps = np.array([stat(*[a[rng.integers(0, len(a), len(a))] for a in arrs]) for _ in range(n_boot)])
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def generalization_gap(test_losses, train_losses, seed: int = 0) -> dict:
    """``GE = |mean(test) − mean(train)|`` of per-sample losses with a 95 % interval: the
    percentile bootstrap interval ``[a, b]`` of the signed difference (test and training samples
    resampled independently) mapped through ``|·|`` — ``[0, max(|a|, |b|)]`` when it straddles 0.
    (Bootstrapping ``|Δ|`` directly is biased away from 0 and can exclude the estimate.)"""
    te = np.asarray(test_losses, dtype=np.float64)
    tr = np.asarray(train_losses, dtype=np.float64)
    diff = lambda a, b: a.mean() - b.mean()  # noqa: E731
    a, b = bootstrap_ci([te, tr], diff, seed=seed)
    ci = [0.0 if a <= 0 <= b else min(abs(a), abs(b)), max(abs(a), abs(b))] if np.isfinite(a) else [a, b]
    return {
        "ge": float(abs(diff(te, tr))) if len(te) and len(tr) else float("nan"),
        "ci95": [float(c) for c in ci],
        "test": float(te.mean()) if len(te) else float("nan"),
        "train": float(tr.mean()) if len(tr) else float("nan"),
    }
