"""Two claims about cheaper penalties, measured on the synthetic MRI task (demo-size U-Net):

1. penalty every 4 steps (scaled by 4, or with its gradient held in between) vs every step:
   final validation PSNR (several seeds) and time per epoch, for the forward-mode penalty on the
   whole batch and for the fused finite-difference penalty on the arg-max sample per term
   (``reg.method=fd reg.samples=1``);
2. warm-started singular vectors: from the second epoch on, the n = 1 warm estimate of σ(J A)
   that training uses, against a cold n = 10 estimate on the same measurements
   (distribution), for the forward-mode penalty (left vectors) and ``reg.method=fd`` (right
   vectors, whole batch).

    python experiments/penalty_schedules.py [--epochs 6] [--quick] [--seeds 3] [--reuse-warm]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from mrijac.config import load_config
from mrijac.data import write_synthetic_dataset
from mrijac.evaluate.figures import plt, save_figure
from mrijac.jacobian import spectral_norm
from mrijac.train.trainer import Trainer


def config(data, *over):
    return load_config(
        None,
        [
            f"data.root={data}",
            "model.chans=16",
            "model.num_pool_layers=3",
            "model.residual=true",
            "data.batch_size=4",
            "data.num_workers=0",
            "data.center_fractions=[0.16]",
            "reg.name=sja+sj",
            "reg.n_iter=1",
            "reg.lanczos_jvp=forward",
            "reg.fd_kinks=cross",  # and before the copies froze the kinks, ranked afresh (2026-11-29)
            "reg.rank=stored",
            "train.progress=false",
            "train.ref_slices=4",
            "train.ge_batches=2",
            *over,
        ],
    )


METHODS = {"forward": [], "fd": ["reg.method=fd", "reg.samples=1"]}
METHOD_TITLES = {"forward": "forward mode, whole batch", "fd": "fd (fused), arg-max sample per term"}
SCHEDULES = {"every1": ["reg.every=1"], "every4": ["reg.every=4"], "every4hold": ["reg.every=4", "reg.every_mode=hold"]}
SCHEDULE_TITLES = {
    "every1": "every step",
    "every4": "every 4 steps (×4)",
    "every4hold": "every 4 steps, gradient held (reg.every_mode=hold)",
}
WARM = {"forward": [], "fd": ["reg.method=fd"]}
WARM_TITLES = {"forward": "forward mode (left vectors)", "fd": "fd (fused, right vectors)"}


def warm_histogram(rels, epochs, path):
    fig, axes = plt.subplots(1, len(rels), figsize=(5 * len(rels), 3), squeeze=False)
    for ax, (m, rm) in zip(axes[0], rels.items()):
        for e in (2, epochs):
            ax.hist(rm[e] * 100, bins=30, alpha=0.6, label=f"epoch {e}")
        ax.legend()
        ax.axvline(-2, color="k", ls="--")
        ax.axvline(2, color="k", ls="--")
        ax.set_xlabel("(σ warm n=1 − σ cold n=10) / σ cold n=10  [%]")
        ax.set_ylabel("samples")
        ax.set_title(WARM_TITLES[m])
    save_figure(fig, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--quick", action="store_true", help="8 training volumes, 3 epochs")
    ap.add_argument("--seeds", type=int, default=3, help="training seeds for the schedules")
    ap.add_argument(
        "--reuse-warm", action="store_true", help="skip part 2: keep the warm-start results of the last run in --out"
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = ap.parse_args()
    epochs = 3 if a.quick else a.epochs
    vols = 8 if a.quick else 16
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_synthetic_dataset(
            data, "knee", "singlecoil", {"train": vols, "val": 4}, 8, (80, 64), (64, 64), progress=False
        )
        # 1. every step vs every 4 steps (same seeds, same data order), plain training beside;
        # several seeds: the final PSNR of this small task moves by a few 0.1 dB between seeds
        runs = [("plain", ["reg.name=none"])]
        for meth, extra in METHODS.items():
            runs += [(f"{meth}_{k}", [*extra, *sched]) for k, sched in SCHEDULES.items()]
        per_seed = {name: [] for name, _ in runs}
        for seed in range(a.seeds):
            for name, over in runs:
                t = Trainer(
                    config(data, f"optim.epochs={epochs}", f"train.seed={seed}", *over), Path(tmp) / f"{name}_{seed}"
                )
                row = t.fit()
                r = {
                    "psnr": row["psnr"],
                    "ssim": row["ssim"],
                    "ge": row["ge"],
                    "epoch_time": float(np.mean([h["epoch_time"] for h in t.history])),
                }
                per_seed[name].append(r)
                print(f"seed {seed} {name}: {r}", flush=True)
        for name, rs in per_seed.items():
            res[name] = {k: float(np.mean([r[k] for r in rs])) for k in rs[0]}
            res[name]["psnr_std"] = float(np.std([r["psnr"] for r in rs]))
            res[name]["per_seed"] = rs
        for meth in METHODS:
            for k in list(SCHEDULES)[1:]:
                d = [b["psnr"] - a_["psnr"] for a_, b in zip(per_seed[f"{meth}_every1"], per_seed[f"{meth}_{k}"])]
                res[f"{meth}_{k}_minus_every1"] = {"mean": float(np.mean(d)), "std": float(np.std(d)), "per_seed": d}
        # 2. warm n=1 vs cold n=10, measured during epochs 2.. (training goes on)
        rels, conv = {}, {}
        for meth, extra in ({} if a.reuse_warm else WARM).items():
            t = Trainer(config(data, "optim.epochs=1", "reg.warm_start=sample", *extra), Path(tmp) / f"warm_{meth}")
            t.fit()
            rels[meth] = {}
            for epoch in range(1, epochs):
                warm, cold = [], []
                for batch in t._loader(epoch):
                    y, A, target, info = t.task.unpack(batch, t.device)
                    t.model.train()
                    f = t.model.as_function(A)
                    g0 = lambda: torch.Generator().manual_seed(0)  # noqa: E731
                    ref = spectral_norm(f, y, A, n_iter=10, generator=g0())
                    if meth == "forward" and epoch == 1:  # how flat is the top of the spectrum?
                        c30 = spectral_norm(f, y, A, n_iter=30, generator=g0())
                        u0 = t.warm.get(info.get("keys"), y.shape[0], t.device, partial_ok=True).vectors["u_ja"]
                        for key, est in [
                            ("cold n=1", lambda: spectral_norm(f, y, A, 1, generator=g0())),
                            ("cold n=3", lambda: spectral_norm(f, y, A, 3, generator=g0())),
                            ("cold n=10", lambda: ref),
                            ("warm n=1", lambda: spectral_norm(f, y, A, 1, u0=u0)),
                            ("warm n=2", lambda: spectral_norm(f, y, A, 2, u0=u0)),
                            ("warm n=3", lambda: spectral_norm(f, y, A, 3, u0=u0)),
                        ]:
                            conv.setdefault(key, []).append((est() / c30 - 1).cpu())
                    v0 = t.warm.get(info.get("keys"), y.shape[0], t.device, partial_ok=True)
                    rec, pen, stats = t.jac(t.model, y, A, v0=v0, step=t.step)
                    loss = t.loss_fn(rec, target) + pen
                    t.opt.zero_grad()
                    loss.backward()
                    t.warm.put(info.get("keys"), stats)
                    t.opt.step()
                    t.step += 1
                    warm.append(stats["sigma_ja"].cpu())
                    cold.append(ref.cpu())
                rels[meth][epoch + 1] = ((torch.cat(warm) - torch.cat(cold)) / torch.cat(cold)).numpy()
    if a.reuse_warm:  # part 2 from the last full run (its histogram stays as it is)
        old = json.loads((out / "penalty_schedules.json").read_text())
        res["vs_cold_n30"], res["warm_vs_cold"] = old["vs_cold_n30"], old["warm_vs_cold"]
    else:
        res["vs_cold_n30"] = {k: float(torch.cat(v).median()) for k, v in conv.items()}
        res["warm_vs_cold"] = {
            m: {
                e: {
                    "n": int(r.size),
                    "median_rel": float(np.median(r)),
                    "frac_within_2pct": float(np.mean(np.abs(r) <= 0.02)),
                    "frac_within_5pct": float(np.mean(np.abs(r) <= 0.05)),
                    "min_rel": float(r.min()),
                    "max_rel": float(r.max()),
                }
                for e, r in rm.items()
            }
            for m, rm in rels.items()
        }
        warm_histogram(rels, epochs, out / "warm_start_hist.png")
    e0 = res["plain"]
    wl = res["warm_vs_cold"]
    md = [
        "# Cheaper penalty schedules (synthetic MRI, U-Net 16 ch, sja+sj, n = 1)",
        "",
        f"{vols} training volumes × 8 slices, 64×64, batch 4, {epochs} epochs, CPU. Epoch "
        "time includes the per-epoch validation (the same for every row).",
        "",
        f"Means over {a.seeds} training seeds (± standard deviation of the PSNR).",
        "",
        "| penalty | schedule | final val PSNR (dB) | SSIM | GE | s/epoch | time × plain |",
        "|---|---|---|---|---|---|---|",
        f"| none | | {e0['psnr']:.3f} ± {e0['psnr_std']:.3f} | {e0['ssim']:.4f} | {e0['ge']:.3f} | "
        f"{e0['epoch_time']:.1f} | 1.00 |",
    ]
    for m in METHODS:
        for k in SCHEDULES:
            r = res[f"{m}_{k}"]
            md.append(
                f"| {METHOD_TITLES[m]} | {SCHEDULE_TITLES[k]} | "
                f"{r['psnr']:.3f} ± {r['psnr_std']:.3f} | {r['ssim']:.4f} | {r['ge']:.3f} | "
                f"{r['epoch_time']:.1f} | "
                f"{r['epoch_time'] / e0['epoch_time']:.2f} |"
            )
    md.append("")
    for m in METHODS:
        for k in list(SCHEDULES)[1:]:
            d = res[f"{m}_{k}_minus_every1"]
            md.append(
                f"PSNR difference ({SCHEDULE_TITLES[k]} − every step, same seed), "
                f"{METHOD_TITLES[m]}: {d['mean']:+.3f} ± {d['std']:.3f} dB (per seed: "
                f"{', '.join(f'{x:+.3f}' for x in d['per_seed'])}).  "
            )
    md += (
        [
            "",
            "## Warm start: σ(J A) from n = 1 warm vs a cold n = 10 estimate on the same batch",
            "",
            "| penalty | epoch | samples | median (warm − cold)/cold | within 2 % | within 5 % | range |",
            "|---|---|---|---|---|---|---|",
        ]
        + [
            f"| {WARM_TITLES[m]} | {e} | {w['n']} | {w['median_rel'] * 100:+.2f} % | "
            f"{w['frac_within_2pct'] * 100:.0f} % | "
            f"{w['frac_within_5pct'] * 100:.0f} % | {w['min_rel'] * 100:+.1f} % to {w['max_rel'] * 100:+.1f} % |"
            for m, wm in wl.items()
            for e, w in wm.items()
        ]
        + [
            "",
            "How flat the top of the spectrum is (forward mode, epoch 2): median of σ(J A) "
            "estimates relative to a cold n = 30 estimate on the same batch.",
            "",
            "| " + " | ".join(res["vs_cold_n30"]) + " |",
            "|" + "---|" * len(res["vs_cold_n30"]),
            "| " + " | ".join(f"{v * 100:+.1f} %" for v in res["vs_cold_n30"].values()) + " |",
            "",
            "![warm-start distribution](warm_start_hist.png)",
            "",
            f"Command: `python experiments/penalty_schedules.py{' --quick' if a.quick else f' --epochs {epochs}'}"
            f"{f' --seeds {a.seeds}' if a.seeds != 3 else ''}{' --reuse-warm' if a.reuse_warm else ''}`"
            + (" (the warm-start part comes from the previous full run)" if a.reuse_warm else ""),
        ]
    )
    (out / "penalty_schedules.md").write_text("\n".join(md) + "\n")
    (out / "penalty_schedules.json").write_text(json.dumps(res, indent=1))
    print("\n".join(md))


if __name__ == "__main__":
    main()
