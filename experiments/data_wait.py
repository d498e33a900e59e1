"""Is data loading the bottleneck?  Data wait per training step at the U-Net's fastMRI size.

Writes synthetic fastMRI-format volumes at fastMRI size (single-coil knee: 640×368 k-space,
320×320 targets; multi-coil brain: 640×320 k-space, 16 coils, ESPIRiT maps precomputed), then
trains fastmri's U-Net (32 channels, 4 pools, batch 1) for one epoch with each loader setting
and regularizer, and reads the trainer's own measurement: the fraction of the training loop's
time spent waiting for the next batch (``data_wait_frac``), and the time per step.

    python experiments/data_wait.py                       # single-coil, default workers and 0
    python experiments/data_wait.py --challenge multicoil --device cuda
Writes ``results/data_wait_<challenge>_<device>.md/.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

import torch
from _report import write_report

from mrijac.config import load_config
from mrijac.data import write_synthetic_dataset
from mrijac.tasks import resolve_workers
from mrijac.train.trainer import Trainer

REGS = {
    "none": ["reg.name=none"],
    "sja+sj fd": [
        "reg.name=sja+sj",
        "reg.method=fd",
        "reg.samples=1",
        "reg.alternate=true",
        "reg.fd_recompute=true",
        "reg.n_iter=1",  # measured before the default became n_iter=3 lanczos_jvp=fd (2026-11-28)
        "reg.lanczos_jvp=forward",
        "reg.fd_kinks=cross",  # and before the copies froze the kinks, ranked afresh (2026-11-29)
        "reg.rank=stored",
        "reg.lambda_ja=0.001",
        "reg.lambda_j=0.001",
    ],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--challenge", default="singlecoil", choices=["singlecoil", "multicoil"])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--slices", type=int, default=12, help="training slices (= measured steps)")
    ap.add_argument("--small", action="store_true", help="96×80 k-space, 64×64 targets (a CPU rehearsal)")
    ap.add_argument("--workers", default="-1,0", help="data.num_workers values (-1: default)")
    ap.add_argument("--regs", default="none,sja+sj fd", help=f"subset of {list(REGS)}")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = ap.parse_args()
    multi = a.challenge == "multicoil"
    res = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        kind = "brain" if multi else "knee"
        shape = (96, 80) if a.small else ((640, 320) if multi else (640, 368))
        n_vol = max(1, a.slices // 6)
        write_synthetic_dataset(
            data,
            kind,
            a.challenge,
            {"train": n_vol, "val": 1},
            a.slices // n_vol,
            shape,
            (64, 64) if a.small else (320, 320),
            num_coils=4 if a.small else 16,
            progress=True,
        )
        if multi:
            from mrijac.cli import main as cli

            for split in ("train", "val"):
                cli(["data", "maps", str(data / split)])
        for reg in a.regs.split(","):
            for w in [int(x) for x in a.workers.split(",")]:
                over = [
                    f"data.root={data}",
                    f"data.challenge={a.challenge}",
                    "data.batch_size=1",
                    f"data.num_workers={w}",
                    "model.name=unet",
                    "model.chans=32",
                    "model.num_pool_layers=4",
                    "optim.epochs=1",
                    "train.progress=false",
                    "train.ref_slices=0",
                    "train.ge_batches=1",
                    f"train.device={a.device}",
                    *REGS[reg],
                ]
                t = Trainer(load_config(None, over), Path(tmp) / f"run_{reg}_{w}".replace(" ", "_"))
                row = t.fit()
                r = {
                    "reg": reg,
                    "workers": w,
                    "resolved_workers": resolve_workers(w),
                    "data_wait_frac": row["data_wait_frac"],
                    "step_s": row["step_time"],
                    "steps": t.step,
                }
                res.append(r)
                print(r, flush=True)
    dev = torch.device("cuda" if a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available()) else "cpu")
    machine = (
        torch.cuda.get_device_name()
        if dev.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    )
    md = [
        f"# Data wait per training step, {a.challenge}, U-Net 32 ch / 4 pools, 320×320, batch 1 ({dev.type})",
        "",
        f"Machine: {machine}; torch {torch.__version__}. One epoch of {a.slices} slices per row; "
        "`data wait` is the trainer's `data_wait_frac`: time waiting for the next batch over "
        "the training loop's time (validation excluded).",
        "",
        "| regularizer | data.num_workers | processes | s/step | data wait |",
        "|---|---|---|---|---|",
    ]
    md += [
        f"| {r['reg']} | {r['workers']}{' (default)' if r['workers'] == -1 else ''} | "
        f"{r['resolved_workers']} | {r['step_s']:.3f} | {r['data_wait_frac'] * 100:.1f} % |"
        for r in res
    ]
    cmd = f"python experiments/data_wait.py --challenge {a.challenge} --slices {a.slices}" + (
        f" --device {a.device}" if a.device != "auto" else ""
    )
    md += ["", f"Command: `{cmd}`"]
    out = Path(a.out) / f"data_wait_{a.challenge}_{dev.type}"
    write_report(out, res, md)


if __name__ == "__main__":
    main()
