"""How good is Algorithm 2's σ?  Per-sample estimates against the converged σ (the paper's Fig. 1).

Two trained networks, each scored sample by sample:

* **FC** — the paper's fully connected net on MNIST with the identity operator (denoising,
  noise uniform on the sphere of radius ε = 0.3), trained plain and with ``sj`` (one
  :class:`~mrijac.models.fc_stack.FCStack`).  Reference: the exact ``‖J(y)‖₂`` from the
  explicit Jacobian.  Estimates: power iteration from a random start with n = 1, 3, 10
  (``mrijac.jacobian.spectral_norm``, forward-mode JVP — Algorithm 2 as written) on test
  images, and the training-time estimate (warm start per sample, one power step per visit) on
  training images — the value the penalty acted on at the sample's last visit.
* **DnCNN** — an MRI reconstructor (the demo's synthetic 64×64 knee task, 4× random Cartesian)
  trained by ``mrijac train`` with the default penalty (``reg.method=auto`` → fd, one sample per
  batch).  Reference: ``reference_sigma`` (Lanczos, relative residual ≤ 1e-3) of ``J A``.
  Estimates: n = 1, 3, 10 from random starts on validation slices, and the default estimator's
  value on the penalised training samples of one more epoch of training steps with the
  weights frozen (learning rate 0), so that estimate and reference see the same weights.

Writes a table of the relative error ``(σ_ref − σ_est)/σ_ref`` (median, mean, 90th percentile)
and a scatter figure per network.

    python experiments/estimate_accuracy.py --quick     # committed: results/estimate_accuracy.*
    python experiments/estimate_accuracy.py --full      # 600 FC epochs, more samples
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _report import mode_parser, write_report  # noqa: E402
from mnist_cs import SHARED_MNIST, init_stack, load_images  # noqa: E402

from mrijac.config import load_config  # noqa: E402
from mrijac.data import write_synthetic_dataset  # noqa: E402
from mrijac.evaluate.figures import plt, save_figure  # noqa: E402
from mrijac.jacobian import reference_sigma, spectral_norm  # noqa: E402
from mrijac.operators.noise import sphere_noise  # noqa: E402
from mrijac.tasks import fixed_batches  # noqa: E402
from mrijac.train import Trainer  # noqa: E402
from mrijac.train.stack_fit import Member, StackData, fit_stack  # noqa: E402

ESTIMATORS = ("n = 1", "n = 3", "n = 10")


def cold_estimates(f, y, A, seed: int) -> dict[str, np.ndarray]:
    """σ of every sample of ``y`` from random starts with n = 1, 3, 10 power iterations."""
    g = torch.Generator().manual_seed(seed)
    return {
        name: spectral_norm(f, y, A, n_iter=int(name.split()[-1]), generator=g).double().cpu().numpy()
        for name in ESTIMATORS
    }


def fc_part(a, images) -> dict:
    m, eps, n = (500, 0.3, a.samples)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(images["pool"]), generator=g)[:m]
    x = images["pool"][idx]
    y = x + sphere_noise(torch.zeros_like(x), eps, g)
    xt = images["test"][:n]
    yt = xt + sphere_noise(torch.zeros_like(xt), eps, g)
    eye = torch.eye(784)[None]
    members = [Member("none", 0.0, 0), Member("sj", a.fc_lam, 0)]
    stack = init_stack(members, [0], 784)
    t0 = time.time()
    hist = fit_stack(stack, members, StackData(x[None], y[None], eye), a.fc_epochs, 50, 1e-3, desc="FC")
    seconds = time.time() - t0
    out = {"seconds": seconds, "epochs": a.fc_epochs, "lambda": a.fc_lam, "nets": {}}
    train_idx = torch.arange(n)
    for k, mb in enumerate(members):
        net = stack.model(k).double().eval()
        with torch.no_grad():
            ref_test = torch.linalg.matrix_norm(stack.jacobian(yt[None], index=[k])[0].double(), ord=2).numpy()
            ref_train = torch.linalg.matrix_norm(stack.jacobian(y[None, :n], index=[k])[0].double(), ord=2).numpy()
        est = cold_estimates(net, yt.double(), None, seed=1 + k)
        rec = {"ref_test": ref_test, "est_test": est}
        if mb.strategy == "sj":
            row = list(hist["index"]["sj"]).index(k)
            rec["ref_train"] = ref_train
            rec["est_train"] = {"training-time (warm, last visit)": hist["sigma_est"]["sj"][row, train_idx].numpy()}
            v = hist["vectors"]["sj"][row, train_idx]  # the stored vectors at the final weights
            with torch.no_grad():
                _, masks = stack.forward_masks(y[None, :n], index=[k])
                w = stack.jvp([w[[k]] for w in stack.weights], masks, v[None])[0]
            rec["est_train"]["warm vector, final weights"] = w.norm(dim=-1).double().numpy()
        out["nets"][f"FC {mb.strategy}" + (f" (λ={mb.lam})" if mb.lam else "")] = rec
    return out


def dncnn_part(a, tmp: Path) -> dict:
    root = tmp / "synth"
    write_synthetic_dataset(
        root, "knee", "singlecoil", {"train": a.dn_volumes, "val": 4}, 8, (80, 64), (64, 64), seed=0, progress=False
    )
    over = [
        "task=mri",
        f"data.root={root}",
        "data.mask_type=random",
        "data.accelerations=[4]",
        "data.center_fractions=[0.16]",
        "data.batch_size=4",
        "data.num_workers=0",
        "model.name=dncnn",
        f"model.depth={a.dn_depth}",
        f"model.features={a.dn_features}",
        "reg.name=sja+sj",
        "reg.n_iter=1",  # measured before the default became n_iter=3 lanczos_jvp=fd (2026-11-28)
        "reg.lanczos_jvp=forward",
        "reg.fd_kinks=cross",  # and before the copies froze the kinks, ranked afresh (2026-11-29)
        "reg.rank=stored",
        f"reg.lambda_ja={a.dn_lam}",
        f"reg.lambda_j={a.dn_lam}",
        f"optim.epochs={a.dn_epochs}",
        "train.progress=true",
        "train.ref_slices=2",
        "train.seed=0",
    ]
    cfg = load_config(None, over)
    t0 = time.time()
    tr = Trainer(cfg, tmp / "dncnn", overwrite=True)
    tr.fit()
    seconds = time.time() - t0
    # one more pass of training steps with the weights frozen (lr 0): each penalised sample's
    # estimate at its visit, against the reference at the very same weights
    for group in tr.opt.param_groups:
        group["lr"] = 0.0
    before = [p.detach().clone() for p in tr.model.parameters()]
    tr.monitor.keep_last(a.samples)
    tr.model.train()
    for batch in tr._loader(tr.epoch):
        tr.train_step(*tr.task.unpack(batch, tr.device))
    assert all(torch.equal(p, q) for p, q in zip(before, tr.model.parameters())), "weights moved at lr 0"
    model = tr.model.eval()
    pairs = tr.monitor.estimate_pairs(model)
    rec = {"resolved_method": cfg.reg.method}
    p = pairs.get("ja")
    if p is not None:
        rec["ref_train"] = p[:, 1].numpy()
        rec["est_train"] = {f"training-time ({cfg.reg.method}, at its visit)": p[:, 0].numpy()}
    batches = fixed_batches(tr.task, "val", a.samples, 0, tr.device)
    ys, ops = [b[0] for b in batches], [b[1] for b in batches]
    y = torch.cat(ys)
    A = type(ops[0]).cat(ops) if len(ops) > 1 else ops[0]
    f = model.as_function(A)
    ref = reference_sigma(f, y, A, tol=1e-3, max_iter=300, generator=torch.Generator().manual_seed(3))
    rec["ref_test"] = ref.sigma.numpy()
    rec["ref_converged"] = float(ref.converged.float().mean())
    rec["est_test"] = cold_estimates(f, y, A, seed=4)
    return {"seconds": seconds, "epochs": a.dn_epochs, "method": cfg.reg.method, "nets": {"DnCNN sja+sj": rec}}


def errors(ref: np.ndarray, est: np.ndarray) -> dict:
    e = (ref - est) / ref
    return {"median": float(np.median(e)), "mean": float(e.mean()), "p90": float(np.quantile(e, 0.9)), "n": len(e)}


def report(res: dict, out: Path) -> None:
    lines = [
        "# Accuracy of the σ estimates (Algorithm 2) against the converged σ",
        "",
        f"Command: `{res['command']}`; machine: {res['machine']}; wall time {res['wall_seconds'] / 60:.1f} min.",
        "Relative error (σ_ref − σ_est)/σ_ref per sample (positive: the estimate is low). 'test' rows: "
        "random starts on held-out samples; 'train' rows: the training-time estimate — FC: the value at the "
        "sample's last visit (up to one epoch old) and the stored warm vector at the final weights (what the "
        "next visit starts from); DnCNN: the value at a visit in an extra epoch with frozen weights.",
        "",
        "| network | samples | estimator | n | median | mean | 90th pct |",
        "|---|---|---|---|---|---|---|",
    ]
    panels = []
    for part in res["parts"].values():
        for net, rec in part["nets"].items():
            for split in ("test", "train"):
                if f"est_{split}" not in rec:
                    continue
                ref = np.asarray(rec[f"ref_{split}"])
                for name, est in rec[f"est_{split}"].items():
                    e = errors(ref, np.asarray(est))
                    stats = " | ".join(f"{e[k]:+.3f}" for k in ("median", "mean", "p90"))
                    lines.append(f"| {net} | {split} | {name} | {e['n']} | {stats} |")
                panels.append((net, split, ref, {k: np.asarray(v) for k, v in rec[f"est_{split}"].items()}))
    fc = res["parts"].get("fc")
    if fc:
        lines += ["", f"FC: {fc['epochs']} epochs, m = 500, batch 50, Adam 1e-3, sj λ = {fc['lambda']}."]
    dn = res["parts"].get("dncnn")
    if dn:
        conv = dn["nets"]["DnCNN sja+sj"].get("ref_converged")
        lines += [
            f"DnCNN: {dn['epochs']} epochs through `mrijac train` (reg.method resolved to {dn['method']}); "
            f"reference converged on {100 * conv:.0f} % of the test slices."
        ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (net, split, ref, ests) in zip(axes[0], panels):
        for name, est in ests.items():
            ax.scatter(ref, est, s=8, alpha=0.6, label=name)
        lo, hi = float(min(ref.min(), *[e.min() for e in ests.values()])), float(ref.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlabel("reference σ")
        ax.set_ylabel("estimate")
        ax.set_title(f"{net} — {split}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out.with_suffix(".png"))
    lines += ["", f"![scatter]({out.with_suffix('.png').name})"]
    write_report(out, res, lines)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def main():
    ap = mode_parser(__doc__, report_only=False)
    ap.add_argument("--parts", default="fc,dncnn")
    ap.add_argument("--mnist", default=str(SHARED_MNIST))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    a.samples = 64 if a.quick else 200
    a.fc_epochs, a.fc_lam = (30 if a.quick else 600), 0.1
    a.dn_epochs, a.dn_volumes, a.dn_depth, a.dn_features, a.dn_lam = (
        (8, 12, 8, 32, 0.05) if a.quick else (30, 24, 17, 64, 0.05)
    )
    out = Path(a.out or HERE / "results" / "estimate_accuracy")
    t0 = time.time()
    res = {
        "command": "python experiments/estimate_accuracy.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "parts": {},
    }
    if "fc" in a.parts:
        res["parts"]["fc"] = fc_part(a, load_images(Path(a.mnist), 1000, 1000))
    if "dncnn" in a.parts:
        with tempfile.TemporaryDirectory() as tmp:
            res["parts"]["dncnn"] = dncnn_part(a, Path(tmp))
    res["wall_seconds"] = time.time() - t0
    report(_jsonable(res), out)


if __name__ == "__main__":
    main()
