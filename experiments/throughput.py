"""Training throughput at fastMRI size: slices/s, data wait and peak memory, plain and default.

Synthetic fastMRI-format volumes at fastMRI size — single-coil knee (640×368 k-space, 320×320
targets, ``crop_kspace``) and multi-coil brain (16 coils, 640×320 k-space, coil maps
written as ``data_prep`` writes them — birdcage maps, the data's own coil model, not ESPIRiT,
whose ~15 s per 16-coil slice is data preparation, not training) — trained by the trainer
(fastmri's U-Net 32 ch / 4 pools, batch 1, the default loader workers) with no regularizer and with the default penalty
(``reg.name=sja+sj``, every other ``reg.*`` at its default).  Each row runs in its own process
(peak memory = its ``VmHWM``) for 2 epochs of ``--slices`` slices; the table reports the
second (steady) epoch as the trainer logs it: ``step_time`` (→ slices/s), ``data_wait_frac``,
and the time of the per-epoch reference σ (``train.ref_slices=1``: one validation and one
training probe slice, Lanczos).

    python experiments/throughput.py [--device cpu|cuda] [--slices 6] [--small]
Writes ``results/throughput_<device>.md/.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
# "default penalty": the default until 2026-11-28 (reg.n_iter=1), pinned so a rerun repeats the report
REGS = {
    "plain": ["reg.name=none"],
    "default penalty (sja+sj)": [
        "reg.name=sja+sj",
        "reg.n_iter=1",
        "reg.lanczos_jvp=forward",
        "reg.fd_kinks=cross",
        "reg.rank=stored",
    ],
}
CHILD = r"""
import json, sys
from mrijac.config import load_config
from mrijac.train import Trainer
tr = Trainer(load_config(None, sys.argv[2:]), sys.argv[1], overwrite=True)
tr.fit()
hwm = next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
import torch
cuda = None
if torch.cuda.is_available() and tr.device.type == "cuda":
    cuda = torch.cuda.max_memory_allocated() / 2**20
print(json.dumps({"history": tr.history, "peak_rss_mb": hwm, "peak_cuda_mb": cuda, "method": tr.cfg.reg.method,
                  "workers": tr.cfg.data.num_workers}))
"""


def make(root: Path, challenge: str, slices: int, small: bool) -> Path:
    from mrijac.data import write_synthetic_dataset

    multi = challenge == "multicoil"
    data = root / challenge
    shape = (96, 80) if small else ((640, 320) if multi else (640, 368))
    write_synthetic_dataset(
        data,
        "brain" if multi else "knee",
        challenge,
        {"train": 1, "val": 1},
        slices,
        shape,
        (64, 64) if small else (320, 320),
        num_coils=4 if small else 16,
        progress=False,
    )
    if multi:  # coil maps as data_prep writes them; birdcage maps (the data's coil model) instead
        # of ESPIRiT, whose ~15 s per 16-coil slice is data preparation, not training
        import h5py
        import numpy as np
        import sigpy.mri

        from mrijac.data.coil_maps import default_maps_dir, write_maps

        for split in ("train", "val"):
            for f in sorted((data / split).glob("*.h5")):
                with h5py.File(f, "r") as hf:
                    S, C, H, W = hf["kspace"].shape
                maps = sigpy.mri.birdcage_maps((C, H, W), r=1.5, nzz=C).astype(np.complex64)
                write_maps(default_maps_dir(data / split) / f.name, np.repeat(maps[None], S, 0), f)
    return data


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--slices", type=int, default=6, help="training slices per epoch (= steps)")
    ap.add_argument("--challenges", default="singlecoil,multicoil")
    ap.add_argument("--small", action="store_true", help="96×80 k-space, 64×64 targets, 4 coils (a rehearsal)")
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ch in a.challenges.split(","):
            data = make(Path(tmp), ch, a.slices, a.small)
            for reg, over in REGS.items():
                cfg = [
                    f"data.root={data}",
                    f"data.challenge={ch}",
                    "data.batch_size=1",
                    "model.name=unet",
                    "model.chans=32",
                    "model.num_pool_layers=4",
                    "optim.epochs=2",
                    "train.progress=false",
                    "train.ref_slices=1",
                    "train.ge_batches=1",
                    f"train.device={a.device}",
                    *over,
                ]
                cmd = [sys.executable, "-c", CHILD, str(Path(tmp) / f"run_{ch}_{len(rows)}"), *cfg]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    raise RuntimeError(out.stderr[-3000:])
                r = json.loads(out.stdout.strip().splitlines()[-1])
                h = r["history"][-1]
                row = {
                    "challenge": ch,
                    "reg": reg,
                    "method": r["method"] if reg != "plain" else "",
                    "workers": r["workers"],
                    "step_s": h["step_time"],
                    "slices_per_s": 1.0 / h["step_time"],
                    "data_wait_frac": h["data_wait_frac"],
                    "ref_time_s": h.get("ref_time", float("nan")),
                    "peak_rss_mb": r["peak_rss_mb"],
                    "peak_cuda_mb": r["peak_cuda_mb"],
                    "first_epoch_step_s": r["history"][0]["step_time"],
                }
                rows.append(row)
                print(row, flush=True)
    dev = a.device
    machine = (
        torch.cuda.get_device_name()
        if dev == "cuda"
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    )
    size = (
        "96×80 k-space → 64×64, 4 coils (rehearsal)"
        if a.small
        else "knee 640×368 → 320×320; brain 16 coils 640×320 → 320×320"
    )
    lines = [
        f"# Training throughput at fastMRI size ({dev})",
        "",
        f"{machine}; torch {torch.__version__}. {size}; fastmri U-Net 32 ch / 4 pools, batch 1, default loader "
        f"workers, {a.slices} slices per epoch, second epoch shown (first epoch's s/step in its own column). "
        "Peak memory: the process's peak resident set"
        + (" / peak CUDA memory allocated" if dev == "cuda" else "")
        + ". 'reference σ' = the epoch's converged-σ check on 1 validation + 1 training probe slice.",
        "",
        "| data | regularizer | slices/s | s/step | × plain | first epoch s/step | data wait | reference σ s/epoch | "
        "peak memory (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        plain = next(p for p in rows if p["challenge"] == r["challenge"] and p["reg"] == "plain")
        mem = f"{r['peak_rss_mb']:.0f}" + (f" / {r['peak_cuda_mb']:.0f}" if r["peak_cuda_mb"] is not None else "")
        reg = r["reg"] + (f" ({r['method']})" if r["method"] else "")
        lines.append(
            f"| {r['challenge']} | {reg} | {r['slices_per_s']:.2f} | {r['step_s']:.2f} | "
            f"{r['step_s'] / plain['step_s']:.2f} | {r['first_epoch_step_s']:.2f} | "
            f"{r['data_wait_frac'] * 100:.1f} % | "
            f"{r['ref_time_s']:.0f} | {mem} |"
        )
    cmd = f"python experiments/throughput.py --device {dev} --slices {a.slices}" + (" --small" if a.small else "")
    lines += ["", f"Command: `{cmd}`"]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(a.out) / (f"throughput_{dev}" + ("_small" if a.small else ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
