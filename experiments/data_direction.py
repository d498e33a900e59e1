"""Where do the default penalty's carried vectors point?  Against the measurement's direction.

The default's training-time estimate of σ(J A) settles at 1.03–1.12 on the real chest slices
(``results/true_sigma_gpu_30ep.json``, ``train_sigma_ja``) — the floor ``‖f(y)‖/‖y‖`` of
σ(J A) along the measurement's own direction ``ŵ = Aᴴy/‖Aᴴy‖`` (``mrijac/jacobian/bounds.py``)
— while the true σ is 1.2–1.8.  This trains the U-Net with the default penalty (``true_sigma.py``'s
real task, seed 0) and then, on every training slice with a stored right vector ``v``, measures:
``|⟨v, ŵ⟩|``; the gains ``‖J A v‖``, ``‖J A ŵ‖`` (the floor) and ``‖J A v⊥‖`` of ``v`` with its
``ŵ`` component removed; the converged σ (Lanczos, relative residual ≤ 0.01) and its vector's
``|⟨v₁, ŵ⟩|``.  If ``v`` has collapsed onto ``ŵ``, the penalty pushes on the one direction the
data term needs (every reconstructor that is accurate has gain ≈ ‖x‖/‖y‖ there).

    python experiments/data_direction.py [--epochs 8] [--lam 0.5] [--threads 2] [--rows default]
Writes ``results/data_direction.md/.json``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import true_sigma  # noqa: E402
from _report import write_report  # noqa: E402

from mrijac.config import load_config  # noqa: E402
from mrijac.jacobian.products import jvp  # noqa: E402
from mrijac.jacobian.reference import reference_sigma  # noqa: E402
from mrijac.jacobian.vectors import normalize, to_real  # noqa: E402
from mrijac.tasks import fetch  # noqa: E402
from mrijac.train import Trainer  # noqa: E402


def _dot(a, b):
    return (to_real(a) * to_real(b)).flatten(1).sum(1)


def gain(fn, y, A, v):
    """``‖J A v‖ / ‖v‖`` per sample."""
    v = normalize(v)
    return to_real(jvp(fn, y, A(v))[1]).flatten(1).norm(dim=1)


def measure(tr, tol: float) -> dict:
    """Per stored training slice: |cos(v, ŵ)|, gains of v, ŵ, v⊥, the converged σ and |cos(v₁, ŵ)|.
    Training draws a new mask at every visit: ``y`` and ``A`` here are one more draw (seeded), as
    at the next visit, which starts from the stored ``v``."""
    model, task, store = tr.model.eval(), tr.task, tr.penalty.warm
    names = ("cos_v", "gain_v", "floor", "gain_perp", "sigma", "cos_top", "stored_sigma", "other_mask", "cos_masks")
    out = {k: [] for k in names}
    g = torch.Generator().manual_seed(0)
    n = len(task.datasets["train"])
    for (y, A, _, info), (y2, A2, _, _) in zip(
        fetch(task, "train", range(n), 0, "cpu"), fetch(task, "train", range(n), 1, "cpu")
    ):
        have = [i for i, k in enumerate(info["keys"]) if "v_ja" in store.data.get(k, {})]
        if not have:
            continue
        idx = torch.tensor(have)
        y, A, y2, A2 = y[idx], A.select(idx), y2[idx], A2.select(idx)
        fn = model.as_function(A)
        v = normalize(torch.stack([store.data[info["keys"][i]]["v_ja"] for i in have]))
        w = normalize(A.adjoint(y))
        c = _dot(v, w)
        perp = v - c.view(-1, *[1] * (v.dim() - 1)) * w
        ref = reference_sigma(fn, y, A, tol, 80, generator=g)
        out["cos_v"] += c.abs().tolist()
        out["gain_v"] += gain(fn, y, A, v).tolist()
        out["floor"] += gain(fn, y, A, w).tolist()
        out["gain_perp"] += gain(fn, y, A, perp).tolist()
        out["sigma"] += ref.sigma.tolist()
        out["cos_top"] += _dot(normalize(ref.v), w).abs().tolist()
        out["stored_sigma"] += [float(store.data[info["keys"][i]]["sigma"]) for i in have]
        # the same slice and weights under another mask draw: how good is the converged vector of
        # one mask for the other (a revisit draws a new mask)?
        ref2 = reference_sigma(model.as_function(A2), y2, A2, tol, 80, generator=g)
        out["other_mask"] += (gain(model.as_function(A2), y2, A2, ref.v) / ref2.sigma).tolist()
        out["cos_masks"] += _dot(normalize(ref.v), normalize(ref2.v)).abs().tolist()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lam", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="default", help="true_sigma.py rows (penalty settings) to train and measure")
    ap.add_argument("--tol", type=float, default=1e-2)
    ap.add_argument("--out", default=str(HERE / "results" / "data_direction"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root, extra = true_sigma.make_data("real", tmp, False)
        for row in a.rows.split(","):
            over = true_sigma.overrides(root, extra, row, 0, a.epochs, a.lam, 0, a.tol, ge_batches=1)
            tr = Trainer(load_config(None, over), tmp / f"run_{row}", overwrite=True)
            tr.fit()
            res[row] = measure(tr, a.tol)
            print(row, {k: float(np.median(v)) for k, v in res[row].items()}, flush=True)
    lines = [
        "# The default penalty's carried vectors against the measurement's direction",
        "",
        f"U-Net 8 ch / 3 pools trained {a.epochs} epochs (λ1 = λ2 = {a.lam}, seed 0, batch 4) on the 40 real chest "
        "slices of `true_sigma.py`; then, on every training slice with a stored right vector v (median over them, "
        "[10 %, 90 %] in brackets): ŵ = Aᴴy/‖Aᴴy‖; gains ‖J A ·‖ of v, of ŵ (the floor, = ‖f(y)‖/‖y‖ here), of v⊥ "
        f"(v without its ŵ part); the converged σ (Lanczos, relative residual ≤ {a.tol:g}) and |cos| of its vector "
        "with ŵ; the σ stored with v at its last visit; the converged vector v₁ under another mask draw of the same "
        "slice (A′, σ′, v₁′): its gain there over σ′, and |cos(v₁, v₁′)|.",
        "",
        "| row | slices | cos(v, ŵ) | ‖J A v‖ | floor ‖J A ŵ‖ | ‖J A v⊥‖ | σ | ‖J A v‖ / σ | cos(v₁, ŵ) | stored σ̂ "
        "| ‖J A′ v₁‖ / σ′ (another mask) | cos(v₁, v₁′) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def q(x):
        x = np.asarray(x)
        return f"{np.median(x):.3f} [{np.quantile(x, 0.1):.3f}, {np.quantile(x, 0.9):.3f}]"

    for row, r in res.items():
        ratio = np.asarray(r["gain_v"]) / np.asarray(r["sigma"])
        lines.append(
            f"| {true_sigma._label(row)} | {len(r['sigma'])} | {q(r['cos_v'])} | {q(r['gain_v'])} | {q(r['floor'])} | "
            f"{q(r['gain_perp'])} | {q(r['sigma'])} | {q(ratio)} | {q(r['cos_top'])} | {q(r['stored_sigma'])} | "
            f"{q(r['other_mask'])} | {q(r['cos_masks'])} |"
        )
    lines += [
        "",
        f"{platform.machine()}, {a.threads} threads, torch {torch.__version__}; {time.time() - t0:.0f} s.",
        f"Command: `python experiments/data_direction.py --epochs {a.epochs} --lam {a.lam} --rows {a.rows} "
        f"--threads {a.threads}`",
    ]
    write_report(Path(a.out), {"args": vars(a), "rows": res}, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
