"""Does the penalty lower the network's *true* Jacobian norm?  Each penalty variant against
plain training, judged by the converged reference σ (Lanczos, ``reg``-independent) on fixed
probe slices — not by the estimate the penalty itself uses.

Tasks: ``real`` — 40 (``--train-slices``) real chest MR slices (256×256, ``../shared/data/mri/chest100``, converted
by ``mrijac data convert images``: simulated single-coil k-space) for training, 20 for
validation; ``synthetic`` — the demo's phantom task (64×64).  U-Net, 4× random Cartesian,
batch 4 (``--batch``), the same fixed λ for every row.  Per row: reference σ(J A) and σ(J) (mean and max)
on the validation and training probes at the end and their ratio to plain at every epoch, the
median ratio of the training-time estimate to the reference σ on the samples it penalised
(last steps of each epoch), val PSNR/SSIM, compute time per step × plain.

    python experiments/true_sigma.py [--tasks real,synthetic] [--epochs 12] [--seeds 1]
        [--rows plain,forward1,fd,pool] [--lam 0.5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _report import write_report  # noqa: E402
from _rows import FORWARD, default_rows, pin_power, pin_tracking, reference_row, step_rows  # noqa: E402

from mrijac.config import load_config  # noqa: E402
from mrijac.data import write_synthetic_dataset  # noqa: E402
from mrijac.evaluate.figures import plt, save_figure  # noqa: E402
from mrijac.train import Trainer  # noqa: E402

SHARED = HERE.parent.parent / "shared" / "data"


def _lz3fd(*more: str) -> list[str]:
    """The default's overrides (row ``lz3fd``) and ``more``: rows that change one setting of it."""
    return [*default_rows()["lz3fd"][1], *more]


_E4 = default_rows()["lz3fd_e4"][1]  # lz3fd_e4q / lz3fd_e4b: the same penalty, rows for runs at other λ
ROWS = {
    "plain": ("plain", ["reg.name=none"]),
    # forward1 / forward10: measured before 2026-11-28, when torch's second derivative of the fused
    # InstanceNorm made their gradient wrong (pytorch/pytorch#196699); the trainer now writes the
    # norms out for method=forward, so the same overrides train the *x rows
    "forward1": (
        "forward n = 1, whole batch (old default; trained with the fused InstanceNorm's wrong 2nd derivative)",
        [*FORWARD, "reg.n_iter=1"],
    ),
    "forward10": (
        "forward n = 10, whole batch (trained with the fused InstanceNorm's wrong 2nd derivative)",
        [*FORWARD, "reg.n_iter=10"],
    ),
    "forward1x": (
        "forward n = 1, whole batch, exact gradient (InstanceNorms as plain ops, the trainer's since 2026-11-28)",
        [*FORWARD, "reg.n_iter=1"],
    ),
    "forward10x": reference_row(),
    "default": (
        "the default until 2026-11-28 (reg.method=auto → fd, 1 sample, alternate terms, "
        "one fused power step per visit: reg.n_iter=1)",
        [],
    ),
    "random_cold": (
        "the default until 2026-11-28 (reg.n_iter=1), first visits from a random vector "
        "(reg.cold_start=random; the default before 2026-11-26)",
        ["reg.cold_start=random"],
    ),
    "fd": ("fd, arg-max sample (warm per sample)", ["reg.method=fd", "reg.samples=1"]),
    "fd2": (
        "fd, arg-max sample, + 1 exact power step per visit",
        ["reg.method=fd", "reg.samples=1", "reg.n_iter=2"],
    ),
    "lz3": (
        "fd + 2 Lanczos steps per visit (reg.n_iter=3)",
        ["reg.n_iter=3"],
    ),
    **default_rows(),
    **step_rows(),
    "lz3fd_e4q": (
        "the default's penalty on every 4th step, ×4, meant to run at a quarter of the others' λ "
        "(--lam 0.025 beside 0.1: a penalised step then weighs what one of the every-step penalty does)",
        list(_E4),
    ),
    "lz3fd_e4b": (
        "the default's penalty on every 4th step, ×4, at yet another λ (a row of its own so that "
        "merged runs at several λ keep their seeds; the λ column says which)",
        list(_E4),
    ),
    "lz3fd_b": (
        "the default at another λ (reg.n_iter=3 reg.lanczos_jvp=fd; a row of its own so that merged runs "
        "at several λ keep their seeds; the λ column says which)",
        _lz3fd(),
    ),
    # where the default's PSNR cost on the synthetic task comes from: which sample it penalises
    # (one term per step is the same penalty there: the terms coincide, JacobianPenalty.tie)
    "lz3fd_all": (
        "the default on the whole batch (reg.n_iter=3 reg.lanczos_jvp=fd reg.samples=0: every sample's σ, "
        "the largest penalised)",
        _lz3fd("reg.samples=0"),
    ),
    # the fused difference's step: at the default h = 1e-4 its θ-gradient is 0.41 aligned with ∇σ on
    # real slices (LeakyReLU kinks, experiments/results/fd_gradient_real.md), at 1e-3 0.78
    "lz3fd_h3": (
        "the default with a 10× larger finite-difference step (reg.n_iter=3 reg.lanczos_jvp=fd reg.fd_step=1e-3)",
        _lz3fd("reg.fd_step=1e-3"),
    ),
    "lz3fd_h2": (
        "the default with a 100× larger finite-difference step (reg.n_iter=3 reg.lanczos_jvp=fd reg.fd_step=1e-2)",
        _lz3fd("reg.fd_step=1e-2"),
    ),
    "lz3fd_h2b": (
        "the default with a 100× larger finite-difference step at another λ (reg.n_iter=3 reg.lanczos_jvp=fd "
        "reg.fd_step=1e-2; the λ column says which)",
        _lz3fd("reg.fd_step=1e-2"),
    ),
    "lz3fd_fkb": (
        "the default with frozen kinks at another λ (reg.n_iter=3 reg.lanczos_jvp=fd reg.fd_kinks=freeze; "
        "the λ column says which)",
        _lz3fd("reg.fd_kinks=freeze"),
    ),
    "lz3fd_fkallb": (
        "the default with frozen kinks on the whole batch at another λ (reg.n_iter=3 reg.lanczos_jvp=fd "
        "reg.fd_kinks=freeze reg.samples=0; the λ column says which)",
        default_rows()["lz3fd_fkall"][1],  # the same penalty: a row of its own for runs at another λ
    ),
    "lz3fd_fkallc": (
        "the default with frozen kinks on the whole batch at a third λ (reg.n_iter=3 reg.lanczos_jvp=fd "
        "reg.fd_kinks=freeze reg.samples=0; the λ column says which)",
        default_rows()["lz3fd_fkall"][1],
    ),
    "lz5": (
        "fd + 4 Lanczos steps per visit (reg.n_iter=5)",
        ["reg.n_iter=5"],
    ),
    "fdalt": (
        "fd, arg-max sample, one term per step",
        ["reg.method=fd", "reg.samples=1", "reg.alternate=true"],
    ),
    "pool": (
        "fd, tracked pool of 1 (reg.pool=1)",
        ["reg.method=fd", "reg.pool=1", "reg.pool_refresh=10", "reg.pool_iters=8"],
    ),
    "pool2alt": (
        "fd, tracked pool of 2, alternate terms",
        ["reg.method=fd", "reg.pool=2", "reg.pool_refresh=10", "reg.pool_iters=8", "reg.alternate=true"],
    ),
}

pin_power(ROWS)  # rows measured before 2026-11-28 keep n_iter=1 (experiments/_rows.py)
pin_tracking(ROWS)  # and before 2026-11-29 crossing kinks, stored rank (experiments/_rows.py)

# rows that were measured and then removed with their option; kept so that their reports can be
# redrawn (--report-only / --merge)
RETIRED = {
    "win3": (
        "the default with a 3-vector window per sample (reg.fd_window=3, LOBPCG-like; removed after "
        "this measurement, commit d0987a2)",
    ),
}


def _label(row: str) -> str:
    return (ROWS.get(row) or RETIRED[row])[0]


def _short(row: str) -> str:
    """A row's label without its settings in brackets (the tables that follow the main one)."""
    return _label(row).split(" (")[0]


def make_data(
    task: str, tmp: Path, quick: bool, shared: Path = SHARED, train_slices: int = 40
) -> tuple[Path, list[str]]:
    """``(root, overrides)`` of a task; ``real``: the first ``train_slices`` (≤ 80) of the 80
    chest training slices, 20 validation slices (12 / 8 with ``quick``)."""
    if task == "synthetic":
        root = tmp / "synth"
        write_synthetic_dataset(
            root,
            "knee",
            "singlecoil",
            {"train": 8 if quick else 24, "val": 4},
            8,
            (80, 64),
            (64, 64),
            seed=0,
            progress=False,
        )
        return root, [
            "model.chans=16",
            "model.num_pool_layers=3",
            "model.residual=true",
            "data.center_fractions=[0.16]",
        ]
    src = shared / "mri" / "chest100"
    full = tmp / "chest_all"
    if not (full / "train").is_dir():  # converted once per folder
        subprocess.run(
            [
                sys.executable,
                "-m",
                "mrijac.cli",
                "data",
                "convert",
                "images",
                str(src),
                "--out",
                str(full),
                "--per-volume",
                "1",
                "--split",
                "0.8,0.2,0",
                "--key",
                "im_ori",
            ],
            check=True,
            capture_output=True,
        )
    n_train = 12 if quick else train_slices
    have = sorted((full / "train").glob("*.h5"))
    if not 0 < n_train <= len(have):
        raise SystemExit(f"--train-slices: {n_train} asked, the converted chest data has {len(have)} training slices")
    root = tmp / "chest"
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    for i, p in enumerate(have[:n_train]):
        (root / "train" / p.name).symlink_to(p)
    for p in sorted((full / "val").glob("*.h5"))[: 8 if quick else 20]:
        (root / "val" / p.name).symlink_to(p)
    return root, ["model.chans=8", "model.num_pool_layers=3", "model.residual=true"]


def overrides(
    root, extra, row, seed, epochs, lam, ref_slices, ref_tol, ge_batches: int = 2, batch: int = 4
) -> list[str]:
    """The config overrides of one run: the task's data and model (``extra``), ``batch``, the
    row's penalty settings at λ1 = λ2 = ``lam``, the reference monitor on ``ref_slices`` probes."""
    return [
        f"data.root={root}",
        f"data.batch_size={batch}",
        "data.num_workers=0",
        f"optim.epochs={epochs}",
        "train.progress=false",
        f"train.seed={seed}",
        f"train.ref_slices={ref_slices}",
        f"train.ref_tol={ref_tol}",
        f"train.ge_batches={ge_batches}",
        "reg.name=sja+sj",
        f"reg.lambda_ja={lam}",
        f"reg.lambda_j={lam}",
        *extra,
        *ROWS[row][1],
    ]


def run(root, extra, row, seed, epochs, lam, ref_slices, ref_tol, out, batch=4):
    over = overrides(root, extra, row, seed, epochs, lam, ref_slices, ref_tol, batch=batch)
    t0 = time.time()
    tr = Trainer(load_config(None, over), out, overwrite=True)
    tr.fit()
    return {"history": tr.history, "seconds": time.time() - t0}


def data_floors(root, extra, seed, ref_slices) -> dict:
    """Mean over the monitor's probe slices (``fixed_batches`` with ``train.seed + 1``, as
    :class:`~mrijac.train.monitor.ReferenceMonitor` draws them) of ``‖x‖/‖y‖``: the lower bound
    ``‖f(y)‖/‖y‖`` of σ(J A) (:mod:`mrijac.jacobian.bounds`) for a reconstructor that returns
    the target exactly — what no penalty can push an accurate network under."""
    from mrijac.jacobian import data_floor
    from mrijac.tasks import fixed_batches, make_task

    task = make_task(load_config(None, overrides(root, extra, "plain", seed, 1, 0.0, ref_slices, 1e-2)))
    out = {}
    for split in ("val", "train"):
        vals = [data_floor(x, y) for y, _, x, _ in fixed_batches(task, split, ref_slices, seed + 1, "cpu")]
        out[split] = float(torch.cat(vals).mean())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="real,synthetic")
    ap.add_argument("--rows", default="plain,fd,pool,pool2alt,forward1,forward10")
    ap.add_argument(
        "--epochs", type=int, default=12, help="epochs to train (--report-only: report at this epoch, longer runs cut)"
    )
    ap.add_argument("--seeds", type=int, default=1, help="number of training seeds")
    ap.add_argument("--seed-start", type=int, default=0, help="first seed (to add seeds to a run)")
    ap.add_argument("--append", action="store_true", help="add these runs to the results already at --out")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from <out>.json, run nothing")
    ap.add_argument("--keep", default="", help="keep the run folders (checkpoints) and the data under this folder")
    ap.add_argument(
        "--merge",
        default="",
        help="comma-separated result .json files whose runs are added (report); FILE@row+row takes only those rows",
    )
    ap.add_argument("--machine", default="", help="--report-only: the machine line (runs merged from several machines)")
    ap.add_argument(
        "--data-floor",
        action="store_true",
        help="--report-only: compute ‖x‖/‖y‖ of each seed's probe slices (needs --shared) for the "
        "'above 0.85× plain' section (runs record it themselves)",
    )
    ap.add_argument(
        "--lam",
        type=_lam_arg,
        default=0.5,
        help="λ1 = λ2 of every penalised row, a number or auto (the trainer's automatic λ; the report "
        "shows the value each run resolved)",
    )
    ap.add_argument("--ref-slices", type=int, default=4)
    ap.add_argument(
        "--ref-tol", type=float, default=1e-2, help="reference σ tolerance (relative residual; 1e-2 bounds σ to ~1 %%)"
    )
    ap.add_argument(
        "--train-slices",
        type=int,
        default=None,
        help="real: training slices (≤ 80; default 40 → 10 steps per epoch; --report-only: the JSON's)",
    )
    ap.add_argument(
        "--batch", type=int, default=None, help="training batch size (default 4; --report-only: the JSON's)"
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 2 epochs (smoke run)")
    ap.add_argument("--shared", default=str(SHARED), help="the shared data folder (holds mri/chest100)")
    ap.add_argument("--out", default=str(HERE / "results" / "true_sigma"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads or max(1, torch.get_num_threads()))
    epochs = 2 if a.quick else a.epochs
    merges = [Path(e.partition("@")[0]) for e in filter(None, a.merge.split(","))]
    own = _setting_of(Path(a.out)) if a.append or a.report_only else None
    if a.train_slices is None:
        a.train_slices = own[0] if own else 40
    if a.batch is None:
        a.batch = own[1] if own else 4
    for path in [Path(a.out)] * (own is not None) + merges:  # pairs of another data size are no pairs
        n, b = _setting_of(path) or (a.train_slices, a.batch)
        if n != a.train_slices or b != a.batch:
            raise SystemExit(
                f"{path.with_suffix('.json')}: runs with --train-slices {n} --batch {b}, not "
                f"{a.train_slices} / {a.batch}; rows trained on other data or batches are not comparable"
            )
    rows = a.rows.split(",")
    results, a.commands = load_previous(Path(a.out)) if a.append or a.report_only else ({}, [])
    merge_runs(results, {})
    for extra in filter(None, a.merge.split(",")):  # runs made by parallel calls
        extra, _, only = extra.partition("@")
        only = set(only.split("+")) if only else None
        more, cmds = load_previous(Path(extra))
        if not more:
            raise SystemExit(f"--merge: no results in {Path(extra).with_suffix('.json')}")
        if only:  # just the commands that ran one of the rows taken
            cmds = [c for c in cmds if set(_rows_of(c)) & only]
        a.commands += [c for c in cmds if c not in a.commands]
        merge_runs(results, more, only)
    a.floors = {}  # task -> str(seed) -> {"val", "train"}: ‖x‖/‖y‖ of the probes
    for path in [Path(a.out)] + merges:
        if (a.report_only or a.append or path != Path(a.out)) and path.with_suffix(".json").exists():
            for task, by_seed in json.loads(path.with_suffix(".json").read_text()).get("data_floor", {}).items():
                a.floors.setdefault(task, {}).update(by_seed)
    if a.report_only:  # keep the machine the runs were made on (the first file's)
        first = Path(a.out).with_suffix(".json")
        a.machine = a.machine or (json.loads(first.read_text()).get("machine") if first.exists() else None)
        if a.data_floor:
            with tempfile.TemporaryDirectory() as tmp:
                for task, rs in results.items():
                    root, extra = make_data(task, Path(tmp), a.quick, Path(a.shared), a.train_slices)
                    for seed in sorted({r.get("seed", 0) for runs in rs.values() for r in runs}):
                        a.floors.setdefault(task, {})[str(seed)] = data_floors(root, extra, seed, a.ref_slices)
        return report(cut_at(results, epochs), a, epochs)
    for task in a.tasks.split(",") if a.append else ():  # a second run of a seed would count twice
        for row in rows:
            have = sorted({r.get("seed") for r in results.get(task, {}).get(row, [])})
            again = [s for s in range(a.seed_start, a.seed_start + a.seeds) if s in have]
            if again:
                raise SystemExit(
                    f"--append: {Path(a.out).with_suffix('.json')} (or a --merge file) already has {task} row "
                    f"{row} with seed(s) {again}; --seed-start {max(have) + 1} adds new ones"
                )
    a.commands = a.commands + [_command(a)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for task in a.tasks.split(","):
            root, extra = make_data(task, Path(a.keep) if a.keep else tmp, a.quick, Path(a.shared), a.train_slices)
            for seed in range(a.seed_start, a.seed_start + a.seeds):  # seed outer: a stopped run keeps pairs
                a.floors.setdefault(task, {})[str(seed)] = data_floors(root, extra, seed, a.ref_slices)
                for row in rows:
                    r = run(
                        root,
                        extra,
                        row,
                        seed,
                        epochs,
                        a.lam,
                        a.ref_slices,
                        a.ref_tol,
                        (Path(a.keep) if a.keep else tmp) / f"{task}_{row}_{seed}",
                        a.batch,
                    )
                    r["seed"] = seed
                    merge_runs(results, {task: {row: [r]}})  # in seed order, as the reports read them
                    last = r["history"][-1]
                    print(
                        f"{task} {row} seed {seed}: val σ(JA) {last.get('val_sigma_ja_mean'):.3f}"
                        f", PSNR {last.get('psnr'):.2f}, {r['seconds']:.0f} s",
                        flush=True,
                    )
                    report(results, a, epochs)  # after every run: a stopped sweep keeps its rows


def merge_runs(results: dict, more: dict, only: set | None = None) -> dict:
    """Add the runs of ``more`` (task -> row -> runs) to ``results`` in place: only the rows in
    ``only`` if given, and of each row only the seeds ``results`` lacks (a run already there
    wins). Every row's runs end sorted by seed, so per-seed tables read 0, 1, 2 whatever the
    order of the calls and files (``merge_runs(results, {})`` only sorts)."""
    for task, more_rows in more.items():  # not `rows`: that is the list of rows to run
        for row, runs in more_rows.items():
            if only and row not in only:
                continue
            have = results.setdefault(task, {}).setdefault(row, [])
            seeds = {r.get("seed") for r in have}
            have.extend(r for r in runs if r.get("seed") not in seeds)
    for runs in (runs for rows in results.values() for runs in rows.values()):
        runs.sort(key=lambda r: r.get("seed", 0))
    return results


def cut_at(results: dict, epochs: int) -> dict:
    """The runs with their histories cut after ``epochs`` epochs: a report at epoch ``epochs`` of
    longer runs.  ``true_sigma.py`` trains at a constant learning rate (``optim.schedule=none``)
    and nothing else in the trainer reads ``optim.epochs``, so the first ``epochs`` epochs of a
    longer run are the run of ``epochs`` epochs (same seed, data order, machine)."""
    return {
        task: {row: [{**r, "history": r["history"][:epochs]} for r in runs] for row, runs in rows.items()}
        for task, rows in results.items()
    }


def _rows_of(command: str) -> list[str]:
    """The ``--rows`` of a recorded command line (every row when it names none)."""
    words = command.strip("`").split()
    return words[words.index("--rows") + 1].split(",") if "--rows" in words[:-1] else list(ROWS)


def _setting_of(out: Path) -> tuple[int, int] | None:
    """``(--train-slices, --batch)`` of the runs in ``<out>.json`` (40 and 4 in files from
    before the options), ``None`` without such a file."""
    path = out.with_suffix(".json")
    if not path.exists():
        return None
    args = json.loads(path.read_text())["args"]
    return args.get("train_slices") or 40, args.get("batch") or 4


def load_previous(out: Path) -> tuple[dict, list[str]]:
    """The runs of an earlier call (``<out>.json``) as ``{task: {row: [{history, seed}]}}``
    and the commands that made them."""
    path = out.with_suffix(".json")
    if not path.exists():
        return {}, []
    prev = json.loads(path.read_text())
    return {
        task: {
            row: [
                {"history": h, "seed": s}
                for h, s in zip(rec["histories"], rec.get("seeds", range(len(rec["histories"]))))
            ]
            for row, rec in rows.items()
        }
        for task, rows in prev["tasks"].items()
    }, prev.get("commands") or [_command(argparse.Namespace(**{"seed_start": 0, **prev["args"]}))]


def report(results, a, epochs):
    lines, data = summarize(results, a, epochs)
    figure(results, Path(a.out).with_suffix(".png"))
    write_report(
        Path(a.out),
        data,
        lines
        + ["", f"![σ(J A) / plain per epoch, validation and training probes]({Path(a.out).with_suffix('.png').name})"],
    )


def _m(hs, key):
    v = [h[-1].get(key, math.nan) for h in hs]
    return float(np.nanmean(v)) if any(np.isfinite(v)) else math.nan


def _est(hs, t, which):
    """Mean over seeds of the last epoch's estimate/reference: ``which=""`` at the step,
    ``"_end"`` at the epoch's end.  Histories from before 2026-11-27 hold the end-of-epoch ratio
    under ``est_ratio_*`` and no ``est_ratio_end_*``."""
    new = [h for h in hs if f"est_ratio_end_{t}" in h[-1]]
    if which == "":
        return _m(new, f"est_ratio_{t}") if new else math.nan
    v = [h[-1].get(f"est_ratio_end_{t}" if h in new else f"est_ratio_{t}", math.nan) for h in hs]
    return float(np.nanmean(v)) if any(np.isfinite(v)) else math.nan


def summarize(results, a, epochs):
    lines = [
        "# True Jacobian norm: reference σ of each penalty variant vs plain",
        "",
        f"U-Net, batch {getattr(a, 'batch', 4)}, sja+sj with {_lam_text(results, a.lam)}, {epochs} epochs"
        + (f" ({a.train_slices} real training slices)" if getattr(a, "train_slices", 40) != 40 else "")
        + ", "
        "'seeds': training seeds per row; every '× plain' is the mean over seeds of the ratio to the plain run "
        "of the same seed (same data order, machine and thread count), σ values are means over seeds. "
        f"σ = converged reference (Lanczos, relative residual ≤ {a.ref_tol:g}) "
        f"on {a.ref_slices} fixed validation and {a.ref_slices} fixed training slices. "
        "'est/ref' = median of the training-time estimate over the reference σ of the "
        "samples the penalty acted on (last steps of each epoch), last epoch: 'step' = reference of the weights "
        "of the step that made the estimate (the estimator's accuracy), 'end' = of the weights at the end of the "
        "epoch (the estimator's error plus how far σ moved in the remaining steps; histories from before "
        "2026-11-27 have only this one). "
        "'worst epoch' = the largest σ(J A) ratio to plain over epochs 2…end, of the mean over seeds on the "
        "validation / training probes, and in brackets of the worst single seed.",
        "",
    ]
    data = {
        "args": {k: v for k, v in vars(a).items() if k not in ("commands", "machine")},
        "machine": getattr(a, "machine", None)
        or f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        "tasks": {},
    }
    for task, rs in results.items():
        lines += [
            f"## {task}",
            "",
            "| row | λ | seeds | val σ(JA) mean / max | × plain | train σ(JA) mean / max | × plain | "
            "val σ(J) mean | est/ref JA, step / end | est/ref J, step / end | "
            "worst epoch σ(JA) × plain, val / train (worst seed) | "
            "val σ(JA) × plain, mean of epochs ≥ E/2 | "
            "val PSNR − plain | PSNR − plain over epochs ≥ E/2: mean / worst (epochs below −0.2 dB) | "
            "SSIM | step × plain |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        data["tasks"][task] = {}
        for row, runs in rs.items():
            hs = [r["history"] for r in runs]
            pairs = _paired(runs, rs.get("plain", []))

            def ratio(key, e=-1, pairs=pairs):  # mean over seeds of the seed-matched ratio to plain
                v = [h[e].get(key, math.nan) / p[e].get(key, math.nan) for h, p in pairs if len(h) > e and len(p) > e]
                return float(np.nanmean(v)) if v and any(np.isfinite(v)) else math.nan

            val, train = _per_epoch(pairs, "val_sigma_ja_mean"), _per_epoch(pairs, "train_ref_sigma_ja_mean")
            n_ep = val.shape[1]
            per_epoch = [float(np.nanmean(val[:, e])) for e in range(n_ep)]
            per_epoch_train = [float(np.nanmean(train[:, e])) for e in range(n_ep)]
            # PSNR − plain per seed and epoch over the second half of training (as late_ratio)
            dpsnr = _per_epoch(pairs, "psnr", operator.sub)[:, n_ep // 2 :]
            dpsnr_mean = np.nanmean(dpsnr, axis=0) if dpsnr.size else np.array([])
            rec = {
                "val_sigma_ja_mean": _m(hs, "val_sigma_ja_mean"),
                "val_sigma_ja_max": _m(hs, "val_sigma_ja_max"),
                "train_sigma_ja_mean": _m(hs, "train_ref_sigma_ja_mean"),
                "train_sigma_ja_max": _m(hs, "train_ref_sigma_ja_max"),
                "val_sigma_j_mean": _m(hs, "val_sigma_j_mean"),
                "val_ratio": ratio("val_sigma_ja_mean"),
                "train_ratio": ratio("train_ref_sigma_ja_mean"),
                "val_ratio_per_epoch": per_epoch,
                "val_ratio_per_seed": [h[-1]["val_sigma_ja_mean"] / p[-1]["val_sigma_ja_mean"] for h, p in pairs],
                **{f"est_ratio{w}_{t}": _est(hs, t, w) for t in ("ja", "j") for w in ("", "_end")},
                "worst_epoch_ratio": max(per_epoch[1:]) if len(per_epoch) > 1 else math.nan,
                "worst_epoch_train_ratio": max(per_epoch_train[1:]) if len(per_epoch_train) > 1 else math.nan,
                # the acceptance is per seed: the largest ratio of any seed at any epoch ≥ 2
                "worst_seed_epoch_ratio": float(np.nanmax(val[:, 1:])) if n_ep > 1 else math.nan,
                "worst_seed_epoch_train_ratio": float(np.nanmax(train[:, 1:])) if n_ep > 1 else math.nan,
                # the plain network's σ wanders from epoch to epoch: the mean over the second half
                # of training is a steadier comparison than the last epoch alone
                "late_ratio": float(np.mean(per_epoch[n_ep // 2 :])) if n_ep else math.nan,
                "psnr": _m(hs, "psnr"),
                "psnr_vs_plain": float(np.mean([h[-1]["psnr"] - p[-1]["psnr"] for h, p in pairs]))
                if pairs
                else math.nan,
                # mean over seeds per epoch, then mean / worst over epochs ≥ E/2, and how many of
                # those epochs (of the seed mean) are more than PSNR_BUDGET below plain
                "late_psnr_vs_plain": float(np.mean(dpsnr_mean)) if dpsnr_mean.size else math.nan,
                "late_psnr_worst": float(np.min(dpsnr_mean)) if dpsnr_mean.size else math.nan,
                "late_psnr_over_budget": int(np.sum(dpsnr_mean < -PSNR_BUDGET)),
                "late_psnr_epochs": int(dpsnr_mean.size),
                "ssim": _m(hs, "ssim"),
                "zf_psnr": _m(hs, "zf_psnr"),
                "step_ratio": ratio("step_time"),
                "histories": hs,
                "seeds": [r.get("seed", i) for i, r in enumerate(runs)],
            }
            data["tasks"][task][row] = rec
            lines.append(
                f"| {_label(row)} | {_row_lam(runs)} | {len(runs)} | "
                f"{rec['val_sigma_ja_mean']:.3f} / {rec['val_sigma_ja_max']:.3f} | "
                f"{rec['val_ratio']:.2f} | {rec['train_sigma_ja_mean']:.3f} / {rec['train_sigma_ja_max']:.3f} | "
                f"{rec['train_ratio']:.2f} | {rec['val_sigma_j_mean']:.3f} | "
                f"{rec['est_ratio_ja']:.2f} / {rec['est_ratio_end_ja']:.2f} | "
                f"{rec['est_ratio_j']:.2f} / {rec['est_ratio_end_j']:.2f} | {rec['worst_epoch_ratio']:.2f} / "
                f"{rec['worst_epoch_train_ratio']:.2f} ({rec['worst_seed_epoch_ratio']:.2f} / "
                f"{rec['worst_seed_epoch_train_ratio']:.2f}) | "
                f"{rec['late_ratio']:.2f} | "
                f"{rec['psnr_vs_plain']:+.2f} | {rec['late_psnr_vs_plain']:+.2f} / {rec['late_psnr_worst']:+.2f} "
                f"({rec['late_psnr_over_budget']} of {rec['late_psnr_epochs']}) | "
                f"{rec['ssim']:.4f} | {rec['step_ratio']:.2f} |"
            )
        zf = next(iter(data["tasks"][task].values()))["zf_psnr"]
        lines += ["", f"Zero-filled val PSNR: {zf:.2f} dB.", ""]
        lines += _above_section(rs, getattr(a, "floors", {}).get(task, {}))
        lines += _per_seed_section(rs)
        data.setdefault("against_reference", {})[task] = recs = against_reference(rs)
        lines += _reference_section(recs)
    data["data_floor"] = getattr(a, "floors", {})
    data["commands"] = a.commands
    lines += ["Commands (in order): " + "; ".join(f"`{c}`" for c in a.commands) + f"; machine: {data['machine']}."]
    return lines, data


TARGET = 0.85  # the acceptance: penalised σ(J A) ≤ 0.85 × plain's at every epoch after the first


def above_target(rs: dict, floors: dict) -> list[dict]:
    """Every (row, split, seed, epoch ≥ 2) where a penalised run's σ(J A) is above ``TARGET`` ×
    the plain run's, with the floor there: the run's own logged bound ``‖J A Aᴴy‖/‖Aᴴy‖``
    (``*_floor_ja_mean``, histories from 2026-11-27 on) or else the probes' ``‖x‖/‖y‖``
    (``floors[str(seed)][split]``, :func:`data_floors`)."""
    out = []
    for row, runs in rs.items():
        if row == "plain":
            continue
        plain = {r.get("seed", i): r["history"] for i, r in enumerate(rs.get("plain", []))}
        for i, r in enumerate(runs):
            seed = r.get("seed", i)
            if seed not in plain:
                continue
            for split, pre in (("val", "val_"), ("train", "train_ref_")):
                for e, (h, p) in enumerate(zip(r["history"], plain[seed])):
                    s, sp = h.get(f"{pre}sigma_ja_mean", math.nan), p.get(f"{pre}sigma_ja_mean", math.nan)
                    if e == 0 or not s > TARGET * sp:
                        continue
                    own = h.get(f"{pre}floor_ja_mean")
                    own = own if own is not None and math.isfinite(own) else None
                    floor = own if own is not None else floors.get(str(seed), {}).get(split, math.nan)
                    kind = "own" if own is not None else "data"
                    out.append(
                        dict(row=row, split=split, seed=seed, epoch=e + 1, sigma=s, plain=sp, floor=floor, kind=kind)
                    )
    return out


def _above_section(rs: dict, floors: dict) -> list[str]:
    """The report's account of the epochs that miss the 0.85 × plain target, against the floor."""
    hits = above_target(rs, floors)
    n_pts = {  # the points compared: epochs ≥ 2 that the run and its seed's plain run both have, × 2 splits
        row: sum(max(min(len(h), len(p)) - 1, 0) for h, p in _paired(runs, rs.get("plain", []))) * 2
        for row, runs in rs.items()
        if row != "plain"
    }
    if not n_pts:
        return []
    lines = [
        f"### Epochs above {TARGET} × plain, against the floor",
        "",
        f"Points (split × seed × epoch ≥ 2) where the row's σ(J A) is above {TARGET} × plain's. 'floor' = a lower "
        "bound of σ(J A) along the measurement, ‖J A Aᴴy‖/‖Aᴴy‖ = ‖f(y)‖/‖y‖ for this normalising U-Net on "
        "single-coil data (mrijac.jacobian.bounds): the run's own (logged from 2026-11-27), else ‖x‖/‖y‖ of the "
        "probe slices, the floor of a network that reconstructs them exactly. Where "
        f"{TARGET} × plain is at or under about the floor, the target asks for a network that is "
        "both accurate and nearly as flat as the data allow.",
        "",
        f"| row | points above {TARGET}× / all | of them, {TARGET} × plain ≤ 1.1 × floor | "
        f"epochs (seed: epochs, val / train) | {TARGET} × plain / floor there, median (max) | "
        "row σ / floor there, median |",
        "|---|---|---|---|---|---|",
    ]
    for row, n in n_pts.items():
        h = [x for x in hits if x["row"] == row]
        tight = [x for x in h if TARGET * x["plain"] <= 1.1 * x["floor"]]
        where = {}
        for x in h:
            where.setdefault((x["seed"], x["split"]), []).append(x["epoch"])
        ep = "; ".join(
            f"{seed}: {','.join(map(str, where.get((seed, 'val'), []))) or '–'} / "
            f"{','.join(map(str, where.get((seed, 'train'), []))) or '–'}"
            for seed in sorted({x["seed"] for x in h})
        )
        t = np.array([TARGET * x["plain"] / x["floor"] for x in h])
        o = np.array([x["sigma"] / x["floor"] for x in h])
        kinds = "/".join(sorted({x["kind"] for x in h}))
        fin = np.isfinite(t)
        # without any floor (old histories, no --data-floor) the count would read as "none at the floor"
        n_tight = str(len(tight)) if fin.any() or not h else "– (no floor)"
        lines.append(
            f"| {_label(row)} | {len(h)} / {n} | {n_tight} | {ep or '–'} | "
            + (f"{np.median(t[fin]):.2f} ({t[fin].max():.2f}), {kinds} floor | " if fin.any() else "– | ")
            + (f"{np.median(o[fin]):.2f} |" if fin.any() else "– |")
        )
    return lines + [""]


def per_seed(rs: dict) -> list[dict]:
    """Each penalised run beside the plain run of its seed, over the second half of training
    (epochs ≥ E/2 of the E both have, as the table's late columns): median est/ref of the
    training-time estimate (J A and J), mean σ(J A) ratio to plain on the validation and training
    probes, mean val PSNR − plain and how many of those epochs are more than ``PSNR_BUDGET`` below;
    ``est_at``: ``"step"`` (the reference of the step's weights) or ``"end"`` (a history from
    before 2026-11-27, whose ``est_ratio_*`` is to the reference at the epoch's end).
    The table's means over seeds hide which seed pays what: this is the per-seed account."""
    out = []
    plain = {r.get("seed", i): r["history"] for i, r in enumerate(rs.get("plain", []))}
    for row, runs in rs.items():
        if row == "plain":
            continue
        for i, r in enumerate(runs):
            seed = r.get("seed", i)
            if seed not in plain:
                continue
            h, p = r["history"], plain[seed]
            n = min(len(h), len(p))
            late = range(n // 2, n)

            def col(key, combine=None, h=h, p=p, late=late):
                v = [
                    h[e].get(key) if combine is None else combine(h[e].get(key, math.nan), p[e].get(key, math.nan))
                    for e in late
                ]
                return np.array([math.nan if x is None else x for x in v], dtype=float)

            def stat(v, f):
                return float(f(v[np.isfinite(v)])) if np.isfinite(v).any() else math.nan

            dpsnr = col("psnr", operator.sub)
            # histories from before 2026-11-27 hold the end-of-epoch ratio under est_ratio_* (as _est)
            step_kind = any(f"est_ratio_end_{t}" in r_ for r_ in h for t in ("ja", "j"))
            out.append(
                dict(
                    row=row,
                    seed=seed,
                    epochs=(n // 2 + 1, n),
                    est_ja=stat(col("est_ratio_ja"), np.median),
                    est_j=stat(col("est_ratio_j"), np.median),
                    est_at="step" if step_kind else "end",
                    val_ratio=stat(col("val_sigma_ja_mean", operator.truediv), np.mean),
                    train_ratio=stat(col("train_ref_sigma_ja_mean", operator.truediv), np.mean),
                    psnr=stat(dpsnr, np.mean),
                    psnr_over_budget=int(np.sum(dpsnr < -PSNR_BUDGET)),
                    psnr_epochs=int(np.isfinite(dpsnr).sum()),
                )
            )
    return out


def _per_seed_section(rs: dict) -> list[str]:
    """The report's per-seed table (:func:`per_seed`)."""
    recs = per_seed(rs)
    if not recs:
        return []
    lines = [
        "### Per seed, second half of training",
        "",
        "Each penalised run against the plain run of the same seed over epochs ≥ E/2: 'est/ref' = median over "
        "those epochs of the training-time estimate over the reference σ of the samples penalised (J A, in "
        "brackets J; 'end': a history from before 2026-11-27, whose ratio is to the reference at the epoch's end); "
        "σ(J A) × plain and PSNR − plain = means over those epochs. Rows by the label of the table above, "
        "without its settings.",
        "",
        "| row | seed | epochs | est/ref J A (J), median | val σ(J A) × plain | train σ(J A) × plain | "
        f"val PSNR − plain (epochs below −{PSNR_BUDGET} dB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for x in recs:
        at = "" if x["est_at"] == "step" else " end"
        lines.append(
            f"| {_short(x['row'])} | {x['seed']} | {x['epochs'][0]}–{x['epochs'][1]} | "
            f"{x['est_ja']:.2f} ({x['est_j']:.2f}){at} | {x['val_ratio']:.2f} | {x['train_ratio']:.2f} | "
            f"{x['psnr']:+.2f} dB ({x['psnr_over_budget']} of {x['psnr_epochs']}) |"
        )
    return lines + [""]


REFERENCE_ROW = "forward10x"  # the expensive reference: forward mode, n = 10, whole batch
SIGMA_TOL, PSNR_TOL, EST_TOL = 0.10, 0.10, 0.10  # §2 of #10: σ within 10 %, PSNR 0.1 dB, estimate 10 %


def against_reference(rs: dict, ref: str = REFERENCE_ROW) -> list[dict]:
    """Each penalised row against the expensive reference row ``ref`` over the seeds both ran
    (§2 of #10): at the end, ``val`` / ``train`` = the row's mean σ(J A) over those seeds over
    ``ref``'s, ``late`` = the same on the validation probes averaged over epochs ≥ E/2,
    ``psnr`` = the row's mean val PSNR minus ``ref``'s (dB), ``est`` = the row's mean est/ref at
    the step (last epoch).  Verdicts: ``sigma_ok`` — both ratios ≤ 1 + ``SIGMA_TOL`` (reaches the
    reference's σ); ``psnr_ok`` — no more than ``PSNR_TOL`` dB below; ``est_ok`` — |est − 1| ≤
    ``EST_TOL``.  Rows at another λ than ``ref``'s are left out (the comparison is at equal λ).
    Empty without ``ref`` runs."""
    ref_runs = {r.get("seed", i): r["history"] for i, r in enumerate(rs.get(ref, []))}
    out = []
    for row, runs in rs.items():
        if row in ("plain", ref) or not ref_runs or _row_lams(runs) != _row_lams(rs[ref]):
            continue
        pairs = [(r["history"], ref_runs[s]) for i, r in enumerate(runs) if (s := r.get("seed", i)) in ref_runs]
        if not pairs:
            continue
        n = min(min(len(h), len(g)) for h, g in pairs)

        def mean(key, e, side):  # side 0: the row, 1: the reference
            v = [p[side][e].get(key, math.nan) for p in pairs]
            return float(np.nanmean(v)) if any(np.isfinite(v)) else math.nan

        val = mean("val_sigma_ja_mean", n - 1, 0) / mean("val_sigma_ja_mean", n - 1, 1)
        train = mean("train_ref_sigma_ja_mean", n - 1, 0) / mean("train_ref_sigma_ja_mean", n - 1, 1)
        late = float(
            np.mean([mean("val_sigma_ja_mean", e, 0) / mean("val_sigma_ja_mean", e, 1) for e in range(n // 2, n)])
        )
        psnr = mean("psnr", n - 1, 0) - mean("psnr", n - 1, 1)
        est = _est([h[:n] for h, _ in pairs], "ja", "")
        out.append(
            dict(
                row=row,
                seeds=len(pairs),
                epoch=n,
                val=val,
                train=train,
                late=late,
                psnr=psnr,
                est=est,
                sigma_ok=bool(val <= 1 + SIGMA_TOL and train <= 1 + SIGMA_TOL),
                psnr_ok=bool(psnr >= -PSNR_TOL),
                est_ok=bool(abs(est - 1) <= EST_TOL),
            )
        )
    return out


def _reference_section(recs: list[dict]) -> list[str]:
    """The report's account against the expensive reference row (:func:`against_reference`'s records)."""
    if not recs:
        return []

    def mark(ok):
        return "yes" if ok else "**no**"

    lines = [
        "### Against the expensive reference (§2 of #10)",
        "",
        f"Each penalised row against '{_short(REFERENCE_ROW)}' over the seeds both ran, at the "
        "last epoch both have: σ(J A) = the row's mean over those seeds over the reference's; PSNR − reference "
        "= difference of the means; est/ref = the row's estimate at the step. The acceptance: σ within "
        f"{SIGMA_TOL:.0%} of the reference's (read here as at most {1 + SIGMA_TOL:.2f}× it on both probe sets: a "
        f"lower σ reaches it), PSNR within {PSNR_TOL} dB (read as at most {PSNR_TOL} dB below), estimate within "
        f"{EST_TOL:.0%} of the true σ. The ratios and differences are printed so that a two-sided reading can be "
        "made too. Rows trained at another λ than the reference's are left out.",
        "",
        "| row | seeds | val σ(J A) / reference | train | val, mean of epochs ≥ E/2 | val PSNR − reference | "
        "est/ref | σ reached | PSNR | estimate |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in recs:
        lines.append(
            f"| {_short(x['row'])} | {x['seeds']} | {x['val']:.2f} | {x['train']:.2f} | "
            f"{x['late']:.2f} | {x['psnr']:+.2f} dB | {x['est']:.2f} | {mark(x['sigma_ok'])} | "
            f"{mark(x['psnr_ok'])} | {mark(x['est_ok'])} |"
        )
    return lines + [""]


def _per_epoch(pairs, key, combine=operator.truediv) -> np.ndarray:
    """``(seeds, epochs)`` ratios of ``key`` to the plain run of the same seed (``combine=
    operator.sub``: differences, e.g. PSNR in dB), over the epochs every pair has (NaN where a
    history lacks the key)."""
    n_ep = min((min(len(h), len(p)) for h, p in pairs), default=0)
    return np.array(
        [[combine(h[e].get(key, math.nan), p[e].get(key, math.nan)) for e in range(n_ep)] for h, p in pairs],
        dtype=float,
    ).reshape(len(pairs), n_ep)


PSNR_BUDGET = 0.2  # the acceptance: val PSNR no more than 0.2 dB below plain's


def _row_lams(runs) -> list[float]:
    """The λ1 each run of a row ended with (its history's ``lambda_ja``; none for plain)."""
    return sorted({r["history"][-1]["lambda_ja"] for r in runs if r["history"][-1].get("lambda_ja") is not None})


def _row_lam(runs) -> str:
    return " / ".join(f"{v:g}" for v in _row_lams(runs)) or "–"


def _lam_arg(v: str):
    """``--lam``: a number ≥ 0 or ``auto``."""
    if v == "auto":
        return v
    try:
        lam = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number >= 0 or auto, not {v!r}") from None
    if not lam >= 0:
        raise argparse.ArgumentTypeError(f"a number >= 0 or auto, not {v!r}")
    return lam


def _lam_text(results, lam) -> str:
    """``λ`` of the header: the one value every penalised run used, or a pointer to the column
    when merged files mix them (runs carry their λ in their history, the automatic one as it
    resolved)."""
    used = {v for rs in results.values() for runs in rs.values() for v in _row_lams(runs)}
    how = " (automatic λ, as it resolved)" if lam == "auto" else ""
    if len(used) > 1:
        return "λ1 = λ2 as in the λ column (rows merged from runs with different λ)" + how
    if not used:
        return f"λ1 = λ2 = {lam if lam == 'auto' else format(lam, 'g')} for every row"
    return f"λ1 = λ2 = {next(iter(used)):g} for every row" + how


def _command(a) -> str:
    return (
        f"python experiments/true_sigma.py --tasks {a.tasks} --rows {a.rows} --epochs {a.epochs} "
        f"--seeds {a.seeds}{f' --seed-start {a.seed_start}' if a.seed_start else ''} --lam {a.lam} "
        f"--ref-tol {a.ref_tol:g}"
        f"{f' --train-slices {a.train_slices}' if getattr(a, 'train_slices', 40) != 40 else ''}"
        f"{f' --batch {a.batch}' if getattr(a, 'batch', 4) != 4 else ''}"
        f"{' --quick' if a.quick else ''}{' --append' if getattr(a, 'append', False) else ''}"
    )


def _paired(runs, plain_runs):
    """(history, plain history) pairs of the same seed."""
    by_seed = {r.get("seed", i): r["history"] for i, r in enumerate(plain_runs)}
    return [(r["history"], by_seed[r.get("seed", i)]) for i, r in enumerate(runs) if r.get("seed", i) in by_seed]


def figure(results, path):
    """Per task, the σ(J A) ratio to plain per epoch on the validation and the training probes
    (mean over seeds, the seeds' range shaded; dashed: the 0.85 of the acceptance)."""
    probes = (("val_sigma_ja_mean", "validation"), ("train_ref_sigma_ja_mean", "training"))
    fig, axes = plt.subplots(len(probes), len(results), figsize=(5.5 * len(results), 3.4 * len(probes)), squeeze=False)
    for col, (task, rs) in enumerate(results.items()):
        for ax, (key, name) in zip(axes[:, col], probes):
            for row, runs in rs.items():
                pairs = _paired(runs, rs.get("plain", []))
                if not pairs:
                    continue
                per = _per_epoch(pairs, key)
                ep = np.arange(1, per.shape[1] + 1)
                short = _short(row)
                line = ax.plot(ep, per.mean(0), marker="o", label=f"{row}: {short} ({len(pairs)} seeds)")[0]
                if len(pairs) > 1:  # the seeds' range
                    ax.fill_between(ep, per.min(0), per.max(0), color=line.get_color(), alpha=0.15)
            ax.axhline(0.85, color="k", ls="--", lw=0.8)
            ax.set_xlabel("epoch")
            ax.set_ylabel(f"{name} σ(J A) reference / plain")
            ax.set_title(f"{task}: {name} probes (same seed)")
            ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
