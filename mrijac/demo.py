"""``mrijac demo``: the main job end to end on built-in synthetic data.

1. writes a small fastMRI-format single-coil knee-like dataset (seeded phantoms);
2. trains fastmri's U-Net (residual: it corrects the zero-filled image) twice on 4× random
   Cartesian undersampling: without regularizer and
   with the model-aware spectral penalty ``sja+sj`` (automatic λ, the default penalty: two
   Lanczos steps on every sample of the batch from its carried singular vector, then one power
   step fused into the training pass for the sample of largest estimate, its perturbed copy on
   the original's activation pattern);
3. evaluates both on the validation volumes (fastMRI metrics, zero-filled baseline, GE,
   σ(J A), σ(J));
4. writes a comparison report and prints where it is.
"""

from __future__ import annotations

import time
from pathlib import Path

from .config import load_config
from .data.synthetic import write_synthetic_dataset
from .evaluate.compare import compare_runs
from .evaluate.report import md_table
from .evaluate.runner import evaluate_checkpoint
from .train import train

SETTINGS = {
    False: dict(
        volumes={"train": 24, "val": 4, "test": 1},
        slices=8,
        kspace=(80, 64),
        recon=(64, 64),
        chans=16,
        pools=3,
        epochs=10,
        batch=4,
    ),
    True: dict(
        volumes={"train": 2, "val": 1, "test": 1},
        slices=4,
        kspace=(40, 36),
        recon=(32, 32),
        chans=8,
        pools=2,
        epochs=2,
        batch=4,
    ),
}
RUNS = (("none", "no regularizer"), ("sja+sj", "model-aware sja+sj"))


def demo_config(data: Path, reg: str, quick: bool):
    s = SETTINGS[quick]
    return load_config(
        None,
        [
            "task=mri",
            f"name=unet_{reg.replace('+', '_')}",
            f"data.root={data}",
            # 4× random Cartesian; 16 % centre lines (10 of 64 columns; fastMRI's 8 % of 368 is 29)
            "data.mask_type=random",
            "data.accelerations=[4]",
            "data.center_fractions=[0.16]",
            "data.num_workers=0",  # tiny in-memory-sized data: loader processes cost more than they save
            f"data.batch_size={s['batch']}",
            "model.name=unet",
            f"model.chans={s['chans']}",
            f"model.num_pool_layers={s['pools']}",
            "model.residual=true",
            "optim.lr=0.001",
            f"optim.epochs={s['epochs']}",
            f"reg.name={reg}",
            "reg.lambda_ja=auto",
            "reg.lambda_j=auto",
            "train.ref_slices=4",
            "train.ge_batches=4",
        ],
    )


def run_demo(out="mrijac-demo", quick: bool = False, overwrite: bool = False) -> dict:
    """Run the demo into ``out``; returns the comparison table."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} already holds files; use --overwrite to replace them")
    t0 = time.time()
    s = SETTINGS[quick]
    data = out / "data"
    print(f"[1/4] synthetic fastMRI-format data in {data}")
    write_synthetic_dataset(
        data, "knee", "singlecoil", s["volumes"], s["slices"], s["kspace"], s["recon"], seed=0, overwrite=overwrite
    )
    evals = []
    for i, (reg, label) in enumerate(RUNS):
        print(f"[{2 + i}/4] training U-Net, {label}, and evaluating it")
        run = out / "runs" / reg.replace("+", "_")
        train(demo_config(data, reg, quick), run, overwrite=True)
        ev = out / "eval" / reg.replace("+", "_")
        evaluate_checkpoint(
            run / "checkpoints" / "final.pt", data / "val", ev, overwrite=True, jac_batches=2, robustness="quick"
        )
        evals.append(ev)
    print("[4/4] comparison")
    table = compare_runs(evals, out / "compare", overwrite=True, names=[r for r, _ in RUNS])
    cols = ["ssim", "psnr", "nmse", "ge", "sigma_ja_mean", "sigma_j_mean"]
    print(md_table(["run"] + cols, [[r["run"]] + [r.get(c) for c in cols] for r in table]))
    print(f"done in {time.time() - t0:.0f} s; report: {out / 'compare' / 'report.html'}")
    return {"table": table, "seconds": time.time() - t0}
