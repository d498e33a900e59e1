"""Loader throughput: mrijac's model-aware fastMRI pipeline vs fastmri's own transforms.

All pipelines read the same synthetic fastMRI-size files through ``fastmri.data.SliceDataset``
-based datasets and a DataLoader (batch 1, no shuffling); slices per second are the best of 3
passes after a warm-up pass, each pipeline × worker count in its own process so that its peak
memory (``ru_maxrss`` of the main process and of the largest worker) is its own.

* single-coil (640×368 k-space, 320×320 targets): fastmri ``UnetDataTransform`` vs mrijac
  (masked k-space + mask + target), also with ``crop_kspace``;
* multi-coil (``--coils`` coils, 640×320): fastmri ``UnetDataTransform`` (coil-combined
  image) and ``VarNetDataTransform`` (masked k-space) vs mrijac (masked k-space + ESPIRiT maps
  precomputed as ``data_prep`` does; the maps travel as references and are memory-mapped by
  the main process).

The timed loop reads every byte of every batch once (the sum of each tensor — for mrijac the
k-space, mask, target and the operator's coil maps), so work deferred to the consumer is
counted.

    python experiments/bench_loader.py [--challenge singlecoil|multicoil] [--coils 16]
        [--workers 0 2 4] [--quick]
"""

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
PIPES = {
    "singlecoil": ["fastmri_unet", "mrijac", "mrijac_crop"],
    "multicoil": ["fastmri_unet", "fastmri_varnet", "mrijac", "mrijac_crop"],
}
NAMES = {
    "fastmri_unet": "fastmri UnetDataTransform",
    "fastmri_varnet": "fastmri VarNetDataTransform",
    "mrijac": "mrijac",
    "mrijac_crop": "mrijac crop_kspace",
}


def dataset(pipe: str, root: Path, challenge: str):
    from fastmri.data import SliceDataset
    from fastmri.data.subsample import RandomMaskFunc
    from fastmri.data.transforms import UnetDataTransform, VarNetDataTransform

    from mrijac.data import MaskConfig, MRISliceDataset

    if pipe == "fastmri_unet":
        return SliceDataset(root, challenge, transform=UnetDataTransform(challenge, RandomMaskFunc([0.08], [4])))
    if pipe == "fastmri_varnet":
        return SliceDataset(root, challenge, transform=VarNetDataTransform(RandomMaskFunc([0.08], [4])))
    mask = MaskConfig("random", (4,), (0.08,))
    return MRISliceDataset(root, challenge, mask=mask, crop_kspace=pipe == "mrijac_crop", seed=0)


def hwm(pid) -> float:
    """Peak resident set (``VmHWM``, MB) of a process; a forked worker's count starts from the
    pages it shares with its parent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def touch(*items) -> float:
    """Sum of every tensor among ``items`` (complex as real pairs): reads each byte once."""
    total = 0.0
    for t in items:
        if torch.is_tensor(t) and t.numel():
            total += float((torch.view_as_real(t) if t.is_complex() else t).sum())
    return total


def one(pipe: str, root: Path, challenge: str, workers: int, repeats: int = 3) -> dict:
    """Slices/s of one pipeline (this process), and its peak memory."""
    from mrijac.data import collate_mri

    mr = pipe.startswith("mrijac")
    ds = dataset(pipe, root, challenge)
    dl = torch.utils.data.DataLoader(
        ds, batch_size=1, num_workers=workers, collate_fn=collate_mri if mr else None, shuffle=False
    )

    peaks = []

    def passes():
        n = 0
        it = iter(dl)
        for b in it:
            if n == len(ds) - 1 and workers:  # last batch: the workers are still alive
                peaks.extend(hwm(w.pid) for w in it._workers)
            # the consumer reads every byte it was given once (mrijac: k-space, mask, target and
            # the operator's coil maps, which are memory-mapped and read only here)
            touch(*([b.y, b.A.mask, getattr(b.A, "sens_maps", None), b.target] if mr else list(b)))
            n += 1
        return n

    passes()  # warm-up: page cache, worker start
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        n = passes()
        best = max(best, n / (time.perf_counter() - t))
    return {"rate": best, "peak_main_mb": hwm("self"), "peak_worker_mb": max(peaks, default=0.0)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--challenge", choices=["singlecoil", "multicoil"], default="singlecoil")
    ap.add_argument("--coils", type=int, default=16, help="multi-coil: coils")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    ap.add_argument("--quick", action="store_true", help="2 volumes × 4 slices")
    ap.add_argument("--data", default="", help="write the files here and reuse them if present (default: a temp dir)")
    ap.add_argument("--one", nargs=2, metavar=("PIPE", "ROOT"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(HERE / "results" / "bench_loader"))
    a = ap.parse_args()
    if a.one:  # child: one pipeline, one worker count
        print(json.dumps(one(a.one[0], Path(a.one[1]), a.challenge, a.workers[0])))
        return
    vols, slices = (2, 4) if a.quick else (4, 16)
    shape = (640, 368) if a.challenge == "singlecoil" else (640, 320)
    coils = a.coils if a.challenge == "multicoil" else 1
    from mrijac.data import write_synthetic_dataset

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.data or tmp)
        train = root / "train"
        if not train.exists():
            write_synthetic_dataset(
                root, "knee", a.challenge, {"train": vols}, slices, shape, (320, 320), num_coils=coils, progress=False
            )
            if a.challenge == "multicoil":  # maps precomputed, as data_prep does
                from mrijac.data.prep import maps_for_folder

                maps_for_folder(train, progress=False)
        for w in a.workers:
            row = {"workers": w}
            for pipe in PIPES[a.challenge]:
                cmd = [
                    sys.executable,
                    __file__,
                    "--challenge",
                    a.challenge,
                    "--workers",
                    str(w),
                    "--one",
                    pipe,
                    str(train),
                ]
                r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
                row[pipe] = r
                print(w, pipe, r, flush=True)
            rows.append(row)
    refs = [p for p in PIPES[a.challenge] if p.startswith("fastmri")]
    ours = [p for p in PIPES[a.challenge] if p.startswith("mrijac")]
    size = f"{coils} coils, " if coils > 1 else ""
    head = ["workers"] + [NAMES[p] for p in refs + ours] + [f"{NAMES[o]} / {NAMES[r]}" for o in ours for r in refs]
    lines = [
        f"# Loader throughput ({a.challenge}, {size}k-space {shape[0]}×{shape[1]}, {vols} volumes × {slices} slices)",
        "",
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}. "
        "Slices per second (batch 1), best of 3 passes after a warm-up; each cell in its own process. "
        "Peak memory: peak resident set (VmHWM) of the main process / largest worker (MB); file-backed "
        "pages (memory-mapped coil maps) count, and a worker's count includes the pages it shares with the main "
        "process (forked).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [str(r["workers"])] + [f"{r[p]['rate']:.1f}" for p in refs + ours]
        cells += [f"{r[o]['rate'] / r[f]['rate']:.2f}" for o in ours for f in refs]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Peak memory (MB, main / largest worker):",
        "",
        "| workers | " + " | ".join(NAMES[p] for p in refs + ours) + " |",
    ]
    lines.append("|" + "---|" * (1 + len(refs + ours)))
    for r in rows:
        cells = [f"{r[p]['peak_main_mb']:.0f} / {r[p]['peak_worker_mb']:.0f}" for p in refs + ours]
        lines.append(f"| {r['workers']} | " + " | ".join(cells) + " |")
    cmd = f"python experiments/bench_loader.py --challenge {a.challenge}"
    cmd += f" --coils {coils}" if coils > 1 else ""
    cmd += f" --workers {' '.join(map(str, a.workers))}" + (" --quick" if a.quick else "")
    lines += ["", f"Command: `{cmd}`"]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(f"{a.out}_{a.challenge}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
