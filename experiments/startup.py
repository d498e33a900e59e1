"""Start-up at fastMRI size: what a user waits for before the first training step.

Makes a training folder of ``--volumes`` fastMRI-format volumes (default 1,000 × 35 slices, as
the knee training set's 973 × ~36; small 64×64 k-space — the metadata path reads headers and
shapes only) and 50 validation volumes, then launches training as a user would, each launch a
fresh process timed from its start to the end of its first training step:

* ``data.cache=false`` — every launch scans the folders (one HDF5 open + header parse per file);
* first launch with the slice-list cache (scans, writes the cache);
* second launch (reads the cache, checked against a fresh listing of the folder);
* second launch with ``data.sample_rate=0.1`` and with ``data.volume_sample_rate=0.1``.

Also the scan alone in this process: mrijac's dataset (no cache / cache hit) and fastmri's
``SliceDataset`` with and without ``volume_sample_rate`` (whose volume lookup is a list search
per slice).  Files are in the page cache (just written); the scan reads a few KB per file, so
a cold cache on a local disk adds little, on network storage more.

    python experiments/startup.py [--volumes 1000] [--slices 35] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, os, sys, time
t_start = float(sys.argv[1])
from mrijac.config import load_config
from mrijac.train import Trainer
t_import = time.time()
marks = {}

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")

class FirstStep(Trainer):
    def train_step(self, *a, **k):
        r = super().train_step(*a, **k)
        t = time.time()
        ds = self.task.datasets["train"]
        print(json.dumps({"import_s": t_import - t_start, "init_s": marks["init"] - t_import,
                          "first_step_s": t - t_start, "peak_mb": hwm(), "cache_hit": ds.cache_hit,
                          "train_slices": len(ds)}), flush=True)
        os._exit(0)

cfg = load_config(None, sys.argv[3:])
tr = FirstStep(cfg, sys.argv[2], overwrite=True)
marks["init"] = time.time()
tr.fit()
"""


def make_data(root: Path, volumes: int, slices: int, val: int) -> float:
    from mrijac.data import write_synthetic_dataset

    t = time.time()
    tpl = root / "template"
    write_synthetic_dataset(tpl, "knee", "singlecoil", {"train": 1}, slices, (64, 64), (64, 64), progress=False)
    src = next((tpl / "train").glob("*.h5"))
    for split, n in (("train", volumes), ("val", val)):
        (root / "data" / split).mkdir(parents=True)
        for i in range(n):
            shutil.copyfile(src, root / "data" / split / f"file{i:05d}.h5")
    return time.time() - t


def launch(root: Path, overrides: list[str], cache_dir: Path) -> dict:
    env = dict(os.environ, MRIJAC_CACHE=str(cache_dir))
    base = [
        f"data.root={root / 'data'}",
        "data.batch_size=4",
        "model.chans=8",
        "model.num_pool_layers=2",
        "reg.name=sja+sj",
        "reg.n_iter=1",  # measured before the default became n_iter=3 lanczos_jvp=fd (2026-11-28)
        "reg.lanczos_jvp=forward",
        "reg.fd_kinks=cross",  # and before the copies froze the kinks, ranked afresh (2026-11-29)
        "reg.rank=stored",
        "train.progress=false",
    ]
    t0 = time.time()
    cmd = [sys.executable, "-c", CHILD, repr(t0), str(root / "run"), *base, *overrides]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def scans(root: Path, cache_dir: Path) -> dict:
    from fastmri.data import SliceDataset

    from mrijac.data import MRISliceDataset

    train = root / "data" / "train"
    out = {}

    def timed(name, fn):
        t = time.perf_counter()
        ds = fn()
        out[name] = {"s": time.perf_counter() - t, "slices": len(ds)}

    cache = cache_dir / "scan.pkl"
    timed("mrijac, no cache", lambda: MRISliceDataset(train, "singlecoil"))
    MRISliceDataset(train, "singlecoil", use_dataset_cache=True, dataset_cache_file=cache)
    timed(
        "mrijac, cache hit",
        lambda: MRISliceDataset(train, "singlecoil", use_dataset_cache=True, dataset_cache_file=cache),
    )
    timed(
        "mrijac, cache hit, volume_sample_rate 0.1",
        lambda: MRISliceDataset(
            train, "singlecoil", use_dataset_cache=True, dataset_cache_file=cache, volume_sample_rate=0.1, seed=0
        ),
    )
    timed("fastmri SliceDataset", lambda: SliceDataset(train, "singlecoil", transform=None))
    timed(
        "fastmri SliceDataset, volume_sample_rate 0.1",
        lambda: SliceDataset(train, "singlecoil", transform=None, volume_sample_rate=0.1),
    )
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", type=int, default=1000)
    ap.add_argument("--slices", type=int, default=35)
    ap.add_argument("--quick", action="store_true", help="50 volumes × 8 slices (smoke run)")
    ap.add_argument("--out", default=str(HERE / "results" / "startup"))
    a = ap.parse_args()
    vols, slices = (50, 8) if a.quick else (a.volumes, a.slices)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        made = make_data(root, vols, slices, 50)
        print(f"{vols} volumes × {slices} slices written in {made:.0f} s", flush=True)
        cache_dir = root / "cache"
        rows = []
        for name, over, fresh in [
            ("no cache (data.cache=false)", ["data.cache=false"], False),
            ("first launch, cache written", [], True),
            ("second launch, cache read", [], False),
            ("second launch, data.sample_rate=0.1", ["data.sample_rate=0.1"], False),
            ("second launch, data.volume_sample_rate=0.1", ["data.volume_sample_rate=0.1"], False),
        ]:
            if fresh and cache_dir.exists():
                shutil.rmtree(cache_dir)
            r = launch(root, over, cache_dir)
            r["case"] = name
            rows.append(r)
            print(r, flush=True)
        scan = scans(root, cache_dir)
        print(scan, flush=True)
    lines = [
        f"# Start-up at fastMRI size ({vols} training volumes × {slices} slices, 50 validation volumes)",
        "",
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. Each launch is "
        "`mrijac train`'s Trainer in a fresh process (sja+sj, U-Net 8 ch / 2 pools, batch 4, the other "
        "settings default), timed from process start to the end of the first training step; files in the "
        "page cache.",
        "",
        "| launch | first step after (s) | imports (s) | Trainer set-up (s) | cache used | training slices | "
        "peak memory (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['first_step_s']:.1f} | {r['import_s']:.1f} | {r['init_s']:.1f} | "
            f"{'yes' if r['cache_hit'] else 'no'} | {r['train_slices']} | {r['peak_mb']:.0f} |"
        )
    lines += ["", "The scan alone (training folder, this process):", "", "| dataset | s | slices |", "|---|---|---|"]
    lines += [f"| {k} | {v['s']:.2f} | {v['slices']} |" for k, v in scan.items()]
    lines += ["", f"Command: `python experiments/startup.py{' --quick' if a.quick else ''}`"]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(a.out + ("_quick" if a.quick else ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"launches": rows, "scan": scan, "volumes": vols}, indent=1))


if __name__ == "__main__":
    main()
