"""Loader throughput: mrijac's model-aware fastMRI pipeline vs fastmri's UnetDataTransform.

Both read the same synthetic fastMRI-size files (640×368 k-space, 320×320 targets) through
``fastmri.data.SliceDataset``-based datasets and a DataLoader; slices per second are measured
in the same run, after one warm-up pass.  Prints and saves a Markdown table with the ratio.

    python experiments/bench_loader.py [--challenge singlecoil|multicoil] [--workers 0 2] [--quick]
"""

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from fastmri.data import SliceDataset
from fastmri.data.subsample import RandomMaskFunc
from fastmri.data.transforms import UnetDataTransform

from mrijac.data import MaskConfig, MRISliceDataset, collate_mri, write_synthetic_dataset


def rate(ds, workers, collate=None, batch=1, repeats=3):
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate, shuffle=False)
    for _ in dl:  # warm-up (page cache, worker start)
        pass
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        n = sum(1 for _ in dl) * batch
        best = max(best, n / (time.perf_counter() - t))
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--challenge", choices=["singlecoil", "multicoil"], default="singlecoil")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--quick", action="store_true", help="2 volumes × 4 slices")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_loader"))
    a = ap.parse_args()
    vols, slices = (2, 4) if a.quick else (4, 16)
    shape = (640, 368) if a.challenge == "singlecoil" else (640, 320)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synthetic_dataset(
            root, "knee", a.challenge, {"train": vols}, slices, shape, (320, 320), num_coils=8, progress=False
        )
        train = root / "train"
        if a.challenge == "multicoil":  # maps precomputed, as data_prep does
            from mrijac.data.prep import maps_for_folder

            maps_for_folder(train, progress=False)
        mask = MaskConfig("random", (4,), (0.08,))
        fm = UnetDataTransform(a.challenge, RandomMaskFunc([0.08], [4]), use_seed=False)
        rows = []
        for w in a.workers:
            ref = rate(SliceDataset(train, a.challenge, transform=fm), w)
            ours = rate(MRISliceDataset(train, a.challenge, mask=mask), w, collate_mri)
            ours_crop = rate(MRISliceDataset(train, a.challenge, mask=mask, crop_kspace=True), w, collate_mri)
            rows.append(
                {
                    "workers": w,
                    "fastmri_unet_transform": ref,
                    "mrijac": ours,
                    "mrijac_crop_kspace": ours_crop,
                    "ratio": ours / ref,
                    "ratio_crop": ours_crop / ref,
                }
            )
    lines = [
        f"# Loader throughput ({a.challenge}, k-space {shape[0]}×{shape[1]}, {vols} volumes × {slices} slices)",
        "",
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}. "
        "Slices per second, best of 3 passes after a warm-up.",
        "",
        "| workers | fastmri UnetDataTransform | mrijac | ratio | mrijac crop_kspace | ratio |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['workers']} | {r['fastmri_unet_transform']:.1f} | {r['mrijac']:.1f} | "
        f"{r['ratio']:.2f} | {r['mrijac_crop_kspace']:.1f} | {r['ratio_crop']:.2f} |"
        for r in rows
    ]
    lines += [
        "",
        f"Command: `python experiments/bench_loader.py --challenge {a.challenge}{' --quick' if a.quick else ''}`",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(f"{a.out}_{a.challenge}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
