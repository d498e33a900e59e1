"""Cost of the Jacobian penalty through the trainer (what `mrijac train` runs), on real-size
images: step time per epoch (history's ``step_time``: compute per step, penalty included) and
peak memory of training, each as a ratio to plain training measured in the same call.

Data: real chest MR slices (256×256, ``../shared/data/mri/chest100`` converted by
``mrijac data convert images``), U-Net 8 ch / 3 pools as in ``true_sigma.py``.  Every
(batch size, row) runs in its own process: peak memory = growth of the resident set's high-water
mark (VmHWM) over the resident set after set-up, with glibc's mmap threshold lowered so freed
tensors leave the resident set (as ``bench_jacobian.py``) — in a second run of the row, since that
allocator setting slows every step about 2× (until 2026-11-28 the times came from that run too:
``cost_default*.md`` / ``cost_every_cpu.md`` before ``cost_default_v4_cpu.md``); on CUDA
``max_memory_allocated``, one run.
"first epoch" includes the cold start of every warm-start vector; later epochs are split by
history's ``first_visit_frac``: those in which some penalised sample had no vector yet (with one
penalised sample per batch of B, about the first B epochs: each such step starts with an exact
forward-mode iteration) and the warm ones (the steady state of a long run).  Run at least B + 2
epochs to see the warm steady state at batch B.  The reference σ monitor is off unless asked for
(its cost per epoch: last column).

    python experiments/cost_default.py [--rows plain,fd,fdalt,forward1] [--batches 1,2,4]
        [--epochs 3] [--train-slices 16] [--threads 0] [--repeats 1] [--quick]

``--repeats k`` runs every (batch, row) k times, interleaved, and reports the median of the ratios
taken within each repeat with their range: one run after another on a shared 2-core machine, the
same row's step time varies by up to ±25 % (plain at batch 4: 0.44 and 0.32 s/step in two calls
of 2026-11-28), more than the differences these tables are read for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _rows import DEFAULT_STEPS, default_rows, pin_power, pin_tracking, reference_row, step_rows  # noqa: E402

ROWS = {
    "plain": ("plain", ["reg.name=none"]),
    "default": ("the default sja+sj until 2026-11-28 (one fused power step per visit: reg.n_iter=1)", []),
    "defaultrc": ("the default until 2026-11-28 (reg.n_iter=1) with reg.fd_recompute=true", ["reg.fd_recompute=true"]),
    "lz3": ("fd + 2 Lanczos steps per visit (reg.n_iter=3)", ["reg.n_iter=3"]),
    **default_rows(),
    **step_rows(),
    "lz3fdrc": (
        "the default with its perturbed copy checkpointed (reg.n_iter=3 reg.lanczos_jvp=fd reg.fd_recompute=true: "
        "one more forward of the copy and of the penalised sample, no shared pass)",
        [*DEFAULT_STEPS, "reg.fd_recompute=true"],
    ),
    "lz5": ("fd + 4 Lanczos steps per visit (reg.n_iter=5)", ["reg.n_iter=5"]),
    "pool": ("tracked pool of 1 (reg.pool=1)", ["reg.pool=1", "reg.pool_refresh=10", "reg.pool_iters=8"]),
    "fd": ("fd, arg-max sample", ["reg.method=fd", "reg.samples=1", "reg.alternate=false"]),
    "fdalt": ("fd, arg-max sample, one term per step", ["reg.method=fd", "reg.samples=1", "reg.alternate=true"]),
    "forward1": ("forward n = 1, whole batch (old default)", ["reg.method=forward", "reg.samples=0", "reg.n_iter=1"]),
    "forward10x": reference_row(),
}

pin_power(ROWS)  # rows measured before 2026-11-28 keep n_iter=1 (experiments/_rows.py)
pin_tracking(ROWS)  # and before 2026-11-29 crossing kinks, stored rank (experiments/_rows.py)
SHARED = HERE.parent.parent / "shared" / "data"


def _rss_kib(field="VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(spec: dict) -> dict:
    """One training run; prints its measurements as JSON (run in a fresh process)."""
    import torch

    from mrijac.config import load_config
    from mrijac.train import Trainer

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    over = [
        f"data.root={spec['root']}",
        f"data.batch_size={spec['batch']}",
        f"data.num_workers={spec.get('workers', 0)}",
        f"model.chans={spec.get('chans', 8)}",
        f"model.num_pool_layers={spec.get('pools', 3)}",
        "model.residual=true",
        f"optim.epochs={spec['epochs']}",
        "train.progress=false",
        f"train.ref_slices={spec.get('ref_slices', 0)}",
        "train.ge_batches=1",
        "reg.name=sja+sj",
        "reg.lambda_ja=0.5",
        "reg.lambda_j=0.5",
        *ROWS[spec["row"]][1],
    ]
    t = Trainer(load_config(None, over), spec["out"], overwrite=True)
    cuda = t.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_kib() * 1024
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    t.fit()
    peak = (torch.cuda.max_memory_allocated() if cuda else _rss_kib("VmHWM") * 1024) - base
    steps = [h["step_time"] for h in t.history]
    return {
        "step_times": steps,
        "peak_bytes": max(peak, 0),
        "device": str(t.device),
        "threads": torch.get_num_threads(),
        "ref_time": [h.get("ref_time") for h in t.history],
        "data_wait": [h.get("data_wait_frac") for h in t.history],
        "first_visit": [h.get("first_visit_frac") for h in t.history],
    }


def phases(m: dict) -> tuple[float, float, float]:
    """``(first epoch, first-visit phase, warm)`` s/step of a run: epoch 1; the median of the
    later epochs in which some penalised steps were a sample's first visit (one exact
    forward-mode iteration more — with one penalised sample per batch of B, about the first B
    epochs); the median of the later epochs without any (plain: every later epoch).  NaN where
    the run has no such epoch."""
    st, fv = m["step_times"], m.get("first_visit") or [None] * len(m["step_times"])
    later = list(zip(st[1:], fv[1:]))
    cold = [t for t, f in later if f is not None and f == f and f > 0]
    warm = [t for t, f in later if not (f is not None and f == f and f > 0)]
    med = lambda v: statistics.median(v) if v else float("nan")  # noqa: E731
    return st[0], med(cold), med(warm)


def _f(v: float, digits: int = 2) -> str:
    return "–" if v != v else f"{v:.{digits}f}"


def make_synthetic(tmp: Path, n_train: int, size: str) -> Path:
    """fastMRI-size synthetic single-coil knee volumes (e.g. 640x368 k-space, 320x320 targets)."""
    from mrijac.data import write_synthetic_dataset

    k, r = size.split(":")
    ks, rs = tuple(int(v) for v in k.split("x")), tuple(int(v) for v in r.split("x"))
    root = tmp / "synth"
    n_vol = max(1, n_train // 4)
    write_synthetic_dataset(root, "knee", "singlecoil", {"train": n_vol, "val": 1}, 4, ks, rs, progress=False)
    return root


def make_data(tmp: Path, n_train: int, n_val: int) -> Path:
    from mrijac.data.prep import images_to_dataset

    full = tmp / "all"
    images_to_dataset(SHARED / "mri" / "chest100", full, 1, (0.8, 0.2, 0.0), key="im_ori", progress=False)
    root = tmp / "chest"
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True)
        for p in sorted((full / split).glob("*.h5"))[:n]:
            (root / split / p.name).symlink_to(p)
    return root


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="plain,lz3fd,default,fd,fdalt,forward1")
    ap.add_argument("--batches", default="1,2,4")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-slices", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="4 slices, 2 epochs, batch 2 (smoke run)")
    ap.add_argument(
        "--data", default="chest", help="chest (real 256² slices) or synthetic:HxW:hxw (e.g. synthetic:640x368:320x320)"
    )
    ap.add_argument("--chans", type=int, default=8, help="U-Net channels (fastMRI's U-Net: 32)")
    ap.add_argument("--pools", type=int, default=3, help="U-Net pools (fastMRI's U-Net: 4)")
    ap.add_argument("--ref-slices", type=int, default=0, help="reference σ probe slices (its time is reported)")
    ap.add_argument("--workers", type=int, default=0, help="loader workers (-1: the default)")
    ap.add_argument(
        "--no-memory",
        dest="memory",
        action="store_false",
        help="CPU: skip the second run per row that measures peak memory (with glibc's mmap threshold lowered)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run every (batch, row) this many times, interleaved; ratios are the median of the ratios "
        "within each repeat (with their range): separate processes on a shared CPU vary by ±25 %%",
    )
    ap.add_argument("--out", default=str(HERE / "results" / "cost_default"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print("RESULT " + json.dumps(child(json.loads(a.child))))
        return
    if a.repeats < 1:
        ap.error(f"--repeats must be an integer >= 1, got {a.repeats}")
    from tqdm.auto import tqdm

    epochs = 2 if a.quick else a.epochs
    batches = [2] if a.quick else [int(b) for b in a.batches.split(",")]
    rows = a.rows.split(",")
    # glibc's lowered mmap threshold makes the resident set's high-water mark a measure of the
    # peak, but it slows every step ~2× (page faults on each large allocation): on the CPU the
    # times come from a run with the default allocator and the peak from a second run with it
    import torch

    cpu = not torch.cuda.is_available()  # the children's device (the trainer's automatic choice)
    mem_env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", MALLOC_TOP_PAD_="0")
    envs = [os.environ] + ([mem_env] if cpu and a.memory else [])
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_tr = 4 if a.quick else a.train_slices
        if a.data.startswith("synthetic"):
            root = make_synthetic(tmp, n_tr, a.data.split(":", 1)[1] if ":" in a.data else "640x368:320x320")
        else:
            root = make_data(tmp, n_tr, 2 if a.quick else 4)
        todo = [(k, b, r) for k in range(a.repeats) for b in batches for r in rows]
        for k, b, r in tqdm(todo, desc="cost"):
            spec = {"root": str(root), "batch": b, "row": r, "epochs": epochs, "threads": a.threads}
            spec.update(chans=a.chans, pools=a.pools, ref_slices=a.ref_slices, workers=a.workers)
            spec["out"] = str(tmp / f"run_{b}_{r}")
            runs = []
            for env in envs if k == 0 else envs[:1]:  # peak memory: the first repeat only
                p = subprocess.run(
                    [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, env=env
                )
                line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    raise RuntimeError(f"batch {b}, row {r} failed:\n{p.stderr[-3000:]}")
                runs.append(json.loads(line[7:]))
            if cpu:  # the peak of the run with the lowered threshold (none with --no-memory)
                runs[0]["peak_bytes"] = runs[1]["peak_bytes"] if a.memory and k == 0 else float("nan")
            res.setdefault((b, r), []).append(runs[0])
            # after every run: a call stopped at its time limit keeps the rows it finished
            write_cost_report(a, res, batches, rows, epochs)
            tqdm.write(f"cost: repeat {k + 1}, batch {b}, {r} done", file=sys.stdout)


def write_cost_report(a, res: dict, batches: list, rows: list, epochs: int) -> None:
    """The table of the runs in ``res`` (``(batch, row) -> [child result per repeat]``; missing
    ones are left out)."""
    from _report import write_report

    lines = [
        f"# Cost of the penalty through the trainer ({'real 256×256 chest slices' if a.data == 'chest' else a.data}, "
        f"U-Net {a.chans} ch / {a.pools} pools)",
        "",
        f"{epochs} epochs of {4 if a.quick else a.train_slices} training slices per run, λ1 = λ2 = 0.5, "
        f"reference σ monitor on {a.ref_slices} probe slices (its time: last column, not in the step time). "
        "Step time = history's `step_time` (compute per step); "
        "'first' = epoch 1 (every penalised sample's first visit); 'first visits' = median of the later "
        "epochs in which some penalised samples were visited for the first time (one exact forward-mode "
        "iteration more each; with one penalised sample per batch of B, about the first B epochs); 'warm' "
        "= median of the later epochs without any (the steady state of a long run; plain: epochs 2…); "
        "'–': no such epoch in this run. Peak memory = growth of the peak resident set (CPU: in a second "
        "run of the row with glibc's mmap threshold at 64 KiB, which slows steps ~2×, so the times come "
        "from a run with the default allocator) or of `max_memory_allocated` (CUDA) over the set-up. "
        "Ratios against `plain` at the same batch size, "
        "same call; the plain reference of every column is its epochs 2… (its first epoch for 'first'). "
        f"Every (batch, row) ran {a.repeats} time(s), interleaved: times are medians over the repeats, ratios the "
        "median of the ratios within each repeat, 'range' their spread (one process after another on a shared "
        "CPU, the same row's step time varies by up to ±25 % between runs); peak memory from the first repeat.",
        "",
        "| batch | row | first epoch s/step | × plain | first-visit epochs s/step | × plain | warm s/step | × plain "
        "| warm × plain, range | peak MiB | × plain | data wait | reference σ s/epoch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    data = {"args": vars(a), "machine": f"{platform.machine()}, torch threads per run as recorded", "rows": []}
    med = lambda v: statistics.median(v) if v else float("nan")  # noqa: E731
    for b in batches:
        ps = res.get((b, "plain"), [])
        for r in rows:
            if (b, r) not in res:
                continue
            ms = res[(b, r)]
            ph = [phases(m) for m in ms]
            pp = [phases(p) for p in ps]
            # ratios paired within a repeat (the same stretch of machine time), then the median
            pairs = list(zip(ph, pp))
            ratio = lambda i, j: [m[i] / p[j] for m, p in pairs]  # noqa: E731
            first_r, cold_r, steady_r = ratio(0, 0), ratio(1, 2), ratio(2, 2)
            mib = ms[0]["peak_bytes"] / 2**20
            pmib = ps[0]["peak_bytes"] / 2**20 if ps else float("nan")
            rec = {
                "batch": b,
                "row": r,
                "repeats": len(ms),
                "first": med([x[0] for x in ph]),
                "first_ratio": med(first_r),
                "first_visit_epochs": med([x[1] for x in ph]),
                "first_visit_ratio": med(cold_r),
                "steady": med([x[2] for x in ph]),
                "steady_ratio": med(steady_r),
                "steady_ratio_runs": steady_r,
                "first_ratio_runs": first_r,
                "first_visit_frac": ms[0].get("first_visit"),
                "peak_mib": mib,
                "peak_ratio": mib / pmib,
                "device": ms[0]["device"],
                "threads": ms[0]["threads"],
                "data_wait": ms[0]["data_wait"][-1],
                "ref_time": ms[0]["ref_time"][-1],
            }
            data["rows"].append(rec)
            rng = (
                f"{min(steady_r):.2f}–{max(steady_r):.2f}"
                if len(steady_r) > 1 and all(v == v for v in steady_r)
                else "–"
            )
            lines.append(
                f"| {b} | {ROWS[r][0]} | {rec['first']:.3f} | {rec['first_ratio']:.2f} | "
                f"{_f(rec['first_visit_epochs'], 3)} | "
                f"{_f(rec['first_visit_ratio'])} | {_f(rec['steady'], 3)} | {_f(rec['steady_ratio'])} | {rng} | "
                f"{mib:.0f} | {rec['peak_ratio']:.2f} | "
                f"{rec['data_wait'] if rec['data_wait'] is not None else float('nan'):.2f} | "
                f"{rec['ref_time'] if rec['ref_time'] is not None else float('nan'):.1f} |"
            )
    dev = next(iter(res.values()))[0]
    lines += [
        "",
        "What this cost buys — the converged σ(J A) the same default reaches on real chest slices, against plain: "
        "`results/true_sigma_real_lam01_30ep.md` (batch 4, 3 seeds, 30 epochs), `results/true_sigma_real_b1_30ep.md` "
        "(batch 1, 2 seeds); rows measured before 2026-11-28 (`n_iter=1`): `results/true_sigma_gpu*.md`, "
        "`results/sweep_chest/report.md` (λ sweep).",
        "",
        f"Command: `python experiments/cost_default.py --rows {a.rows} --batches {a.batches} --epochs {a.epochs} "
        f"--train-slices {a.train_slices} --threads {a.threads} --data {a.data} --chans {a.chans} --pools {a.pools} "
        f"--ref-slices {a.ref_slices} --workers {a.workers} --repeats {a.repeats}{' --quick' if a.quick else ''}`; "
        f"{platform.machine()}, device {dev['device']}, {dev['threads']} torch thread(s) per run.",
    ]
    write_report(Path(a.out), data, lines)


if __name__ == "__main__":
    main()
