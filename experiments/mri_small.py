"""MRI with small real training sets: does the Jacobian penalty help where data is scarce?

Issue "evidence" §3.  Protocol in ``experiments/configs/mri_small.yaml`` (``quick:`` overrides
it).  Quick mode: the 100 real chest MR images of ``../shared/data/mri/chest100`` downsampled
2× to 128², split *by image* into an 80-image training pool, 10 validation and 10 test images,
converted by mrijac (:func:`mrijac.data.convert.convert_images`: simulated single-coil k-space,
smooth random phase); nested training sets of 20, 40 and 80 images, each image also in its 8
rotations/flips (``augment: dihedral``: without it a U-Net trained on 20 images ends below
zero-filled); the 20 real knee slices of ``../shared/data/mri/knee20`` (2× downsampled, centre
128²) as a cross-anatomy test no model trains on.  λ of the spectral penalties is chosen once by
a grid on the validation images (sja+sj, the smallest training set, seed 0; criterion: the
validation ℓ2 loss, beside an unpenalised λ = 0 run that is never the choice), then used for
every strategy (its total weight on σ).

Every run goes through :class:`mrijac.train.Trainer` with the same number of gradient steps
whatever the training-set size; every number through mrijac's evaluation code: test SSIM/PSNR/
NMSE (fastMRI's definitions, per volume) and zero-filled's, GE = |test ℓ2 − train ℓ2| and the
relative GE (‖f(y) − x‖/‖x‖) with bootstrap 95 % intervals (training loss on the *original*
training images under the same evaluation masks), the converged reference σ(J A)/σ(J) (Lanczos)
on test slices, and the robustness summary (:func:`mrijac.evaluate.robustness.robustness`: PSNR
drop under the worst k-space perturbation of 2 % of ‖y‖ found by PGD; contrast of a small disc
feature kept).  Runs go to a pool of worker processes (one torch thread each).

    python experiments/mri_small.py --quick                        # committed: results/mri_small_quick.*
    python experiments/mri_small.py --full --root /data/knee_singlecoil [--cross DIR]
    python experiments/mri_small.py --full --config experiments/configs/mri_small_brain.yaml --root /data/brain
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from fastmri.data.transforms import center_crop
from tqdm.auto import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _parallel import run_parallel  # noqa: E402
from _report import mode_parser, write_report  # noqa: E402

from mrijac.atomic import atomic_path  # noqa: E402
from mrijac.config import load_config  # noqa: E402
from mrijac.evaluate.figures import plt, save_figure  # noqa: E402

REPO = HERE.parent
SHARED = REPO.parent / "shared" / "data"
METRICS = ("psnr", "ssim", "nmse")


# --------------------------------------------------------------------------- protocol
def load_protocol(path: Path, quick: bool) -> dict:
    """The protocol of ``path`` (a ``base:`` key names a file it overrides, its ``quick:`` keys
    overriding the base's ``quick:`` keys), with ``quick:`` applied in quick mode."""
    p = yaml.safe_load(Path(path).read_text())
    if "base" in p:
        base = yaml.safe_load((Path(path).parent / p.pop("base")).read_text())  # relative to this file
        merged = {**base.get("quick", {}), **p.pop("quick", {})}
        p = {**base, **p, "quick": merged}
    over = p.pop("quick", {})
    if quick:
        p.update(over)
    return p


def as_json(p: dict) -> dict:
    """``p`` as its JSON file holds it (integer keys become strings), for comparing with a
    saved protocol."""
    return json.loads(json.dumps(p))


def expand(p: dict) -> list[dict]:
    """Every run of the protocol's blocks (model, acceleration, size, strategy, seed), once (the
    first block that lists it sets its ``steps`` if that block has its own)."""
    runs, seen = [], set()
    for b in p["blocks"]:
        for seed, model, acc, n, strat in itertools.product(
            range(p["seeds"]), b["models"], b["accelerations"], b["sizes"], b["strategies"]
        ):
            k = (model, int(acc), int(n), strat, seed)
            if k not in seen:
                seen.add(k)
                runs.append(dict(zip(("model", "acc", "n", "strategy", "seed"), k)))
                if "steps" in b:  # a block may train longer (e.g. 8×), the same for all its runs
                    runs[-1]["steps"] = int(b["steps"])
    return runs


def uses_lambda(p: dict, r: dict) -> bool:
    """Whether run ``r`` needs the grid's λ (its strategy's overrides hold ``LAM``/``HALF``;
    none, wd and fja+fj's automatic λ do not)."""
    return r.get("grid", False) or any("LAM" in o or "HALF" in o for o in p["strategies"][r["strategy"]])


COST = {"fja+fj": 3.0, "fja": 3.0, "fj": 3.0, "sja+sj": 1.5, "sja": 1.5, "sj": 1.5}  # × plain, measured roughly


def expected_cost(r: dict, p: dict) -> float:
    """A rough relative cost of run ``r`` (strategy, steps, training-set size: first visits and
    the training-set evaluation grow with it) — the pool takes the longest runs first, so that
    it does not end on one long run while the other workers idle."""
    steps = int(r.get("steps", p["steps"])) / int(p["steps"])
    return COST.get(r["strategy"], 1.0) * steps * (1.0 + int(r["n"]) / 200) * (0.8 if r["model"] == "dncnn" else 1.0)


def run_key(r: dict) -> str:
    return f"{r['model']} {r['acc']}x n={r['n']} {r['strategy']} seed={r['seed']}" + (
        f" lam={r['lam']:g}" if r.get("grid") else ""
    )


# --------------------------------------------------------------------------- data
def _downsample(im: np.ndarray, f: int) -> np.ndarray:
    """``(S, H, W)`` → ``(S, H/f, W/f)`` by f×f means (an image-domain low-pass + decimation)."""
    S, H, W = im.shape
    return im[:, : H - H % f, : W - W % f].reshape(S, H // f, f, W // f, f).mean((2, 4))


def _dihedral(x: np.ndarray) -> list[np.ndarray]:
    return [np.ascontiguousarray(np.rot90(x, k)) for k in range(4)] + [
        np.ascontiguousarray(np.rot90(x.T, k)) for k in range(4)
    ]


def _link_set(folder: Path, files: list[Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f.name).symlink_to(f.resolve())
    return folder


def prepare_quick(p: dict, shared: Path, work: Path) -> dict:
    """Convert the real chest and knee images (see the module docstring); returns the folders:
    ``roots[n]`` (``train/`` = the n images' augmented copies, ``val/`` = validation images),
    ``orig[n]`` (the n original training images), ``test``, ``cross``."""
    from mrijac.data.convert import convert_images
    from mrijac.data.readers import read_image_stack

    size = int(p["size"])
    chest = read_image_stack(shared / "mri" / "chest100", key="im_ori")
    im = chest.images
    im = _downsample(im, im.shape[-1] // size)
    if im.shape[1:] != (size, size):
        raise ValueError(f"chest100: {chest.images.shape[1:]} does not downsample to {size}²")
    perm = np.random.default_rng(0).permutation(len(im))  # the split, independent of training seeds
    n_val, n_test = int(p["val"]), int(p["held_out"])
    pool, val, test = perm[: len(im) - n_val - n_test], perm[-n_val - n_test : -n_test], perm[-n_test:]
    if max(p_sizes(p)) > len(pool):
        raise ValueError(f"training sets {p_sizes(p)} need {max(p_sizes(p))} images; the pool holds {len(pool)}")
    d = {k: work / k for k in ("aug", "orig", "val", "test", "cross")}
    for k in d:
        d[k].mkdir(parents=True, exist_ok=True)
    name = lambda i: Path(chest.names[i]).stem  # noqa: E731
    for i in tqdm(pool[: max(p_sizes(p))], desc="convert chest (training images)", leave=False):
        convert_images(im[i][None], d["orig"] / f"{name(i)}.h5", seed=int(i))
        variants = _dihedral(im[i]) if p.get("augment") == "dihedral" else [im[i]]
        for a, v in enumerate(variants):
            convert_images(v[None], d["aug"] / f"{name(i)}_{a}.h5", seed=int(i) * 8 + a)
    for split, idx in (("val", val), ("test", test)):
        for i in idx:
            convert_images(im[i][None], d[split] / f"{name(i)}.h5", seed=int(i))
    if p.get("cross") == "knee":
        knee = read_image_stack(shared / "mri" / "knee20")
        k = _downsample(np.abs(knee.images), 2)
        if min(k.shape[1:]) < size:
            raise ValueError(f"knee20: {k.shape[1]}×{k.shape[2]} after downsampling, smaller than {size}²")
        k = center_crop(k, (size, size))
        for i in range(len(k)):
            convert_images(k[i][None], d["cross"] / f"{Path(knee.names[i]).stem}.h5", seed=1000 + i)
    roots, orig = {}, {}
    for n in p_sizes(p):
        names = [name(i) for i in pool[:n]]
        roots[n] = work / f"n{n}"
        _link_set(roots[n] / "train", [f for f in sorted(d["aug"].glob("*.h5")) if f.stem.rsplit("_", 1)[0] in names])
        _link_set(roots[n] / "val", sorted(d["val"].glob("*.h5")))
        orig[n] = _link_set(work / f"orig{n}", [d["orig"] / f"{s}.h5" for s in names])
    return {
        "roots": roots,
        "orig": orig,
        "test": d["test"],
        "cross": d["cross"] if any(d["cross"].iterdir()) else None,
        "split": {"pool": len(pool), "val": len(val), "test": len(test)},
    }


def prepare_full(p: dict, root: Path, work: Path) -> dict:
    """fastMRI folders: nested training subsets of ``root/train`` volumes (seeded order), the
    first ``val`` volumes of ``root/val`` for the λ choice, the rest (or ``held_out`` of them)
    as the test set."""
    tr = sorted(Path(root, "train").glob("*.h5"))
    va = sorted(Path(root, "val").glob("*.h5"))
    if not tr or not va:
        raise FileNotFoundError(f"{root}: needs train/ and val/ folders of fastMRI .h5 volumes")
    tr = [tr[i] for i in np.random.default_rng(0).permutation(len(tr))]
    n_val = int(p["val"])
    test = va[n_val:][: int(p["held_out"]) or None]
    if max(p_sizes(p)) > len(tr) or not test:
        raise ValueError(f"{root}: {len(tr)} training / {len(va)} validation volumes are too few for {p_sizes(p)}")
    val = _link_set(work / "val", va[:n_val])
    roots, orig = {}, {}
    for n in p_sizes(p):
        roots[n] = work / f"n{n}"
        _link_set(roots[n] / "train", tr[:n])
        (roots[n] / "val").symlink_to(val)
        orig[n] = roots[n] / "train"
    cross = Path(p["cross"]) if p.get("cross") else None
    return {
        "roots": roots,
        "orig": orig,
        "test": _link_set(work / "test", test),
        "cross": cross,
        "split": {"pool": len(tr), "val": n_val, "test": len(test)},
    }


def p_sizes(p: dict) -> list[int]:
    return sorted({int(n) for b in p["blocks"] for n in b["sizes"]})


# --------------------------------------------------------------------------- one run
def count_slices(folder: Path) -> int:
    """Slices in the fastMRI volumes of ``folder`` (the first axis of each ``kspace``)."""
    import h5py

    n = 0
    for f in sorted(Path(folder).glob("*.h5")):
        with h5py.File(f, "r") as h:
            n += int(h["kspace"].shape[0])
    return n


def overrides(p: dict, r: dict, root: Path, lam: float) -> list[str]:
    """The Trainer's config of run ``r``: the same number of steps (the protocol's, or the run's
    block's) for every training-set size."""
    steps = int(r.get("steps", p["steps"]))
    epochs = max(1, math.ceil(steps * int(p["batch_size"]) / count_slices(Path(root) / "train")))
    reg = list(p["strategies"][r["strategy"]])
    if uses_lambda(p, r):
        reg = [s.replace("HALF", repr(lam / 2)).replace("LAM", repr(lam)) for s in reg]
    return [
        f"data.root={root}",
        f"data.challenge={p['challenge']}",
        "data.mask_type=random",
        f"data.accelerations=[{r['acc']}]",
        f"data.center_fractions=[{p['accelerations'][r['acc']]}]",
        f"data.batch_size={p['batch_size']}",
        "data.num_workers=0",
        f"model.name={r['model']}",
        *p["models"][r["model"]],
        f"reg.name={r['strategy']}",
        "reg.n_iter=1",  # measured before the default became n_iter=3 lanczos_jvp=fd (2026-11-28)
        "reg.lanczos_jvp=forward",
        "reg.fd_kinks=cross",  # and before the copies froze the kinks, ranked afresh (2026-11-29)
        "reg.rank=stored",
        *reg,
        f"optim.lr={p['lr']}",
        f"optim.schedule={p['schedule']}",
        f"optim.epochs={epochs}",
        f"train.seed={r['seed']}",
        "train.ref_slices=0",  # the reference σ is measured once, at the end, on the test slices
        "train.ge_batches=1",
        "train.progress=false",
        f"name=mri_small_{r['model']}_{r['acc']}x_n{r['n']}_{r['strategy']}_s{r['seed']}",
    ]


def _sigma_on(model, task, dev, ref_slices: int, seed: int) -> dict:
    """Reference σ(J A), σ(J) (Lanczos, tol 1e-2) on ``ref_slices`` fixed slices of ``task``."""
    from mrijac.inference import jacobian_stats
    from mrijac.tasks import fixed_batches

    batches = [(b[0], b[1]) for b in fixed_batches(task, "val", ref_slices, seed, dev)]
    js = jacobian_stats(model, batches, tol=1e-2, max_iter=40, seed=seed)
    out = {k: {"mean": js[k]["mean"], "max": js[k]["max"]} for k in ("sigma_ja", "sigma_j")}
    out["max_residual"] = js.get("max_residual")
    return out


def _evaluate_on(ckpt: Path, data: Path, ref_slices: int, seed: int, metrics: bool = True) -> dict:
    """Metrics of the checkpoint on the folder ``data`` (``metrics``) and its reference σ on
    ``ref_slices`` of its slices."""
    from mrijac.evaluate.loading import checkpoint_on_data
    from mrijac.inference import reconstruct, score

    model, cfg, ck, task, dev = checkpoint_on_data(ckpt, data)
    out = {}
    if metrics:
        rec = reconstruct(model, task, task.loader("val", False), dev)
        s = score(rec, task)
        out = {
            "model": {m: s["aggregate"][m]["mean"] for m in METRICS},
            "zero_filled": {m: s["zero_filled"]["aggregate"][m]["mean"] for m in METRICS},
            "per_volume": [[v["fname"], *(v[m] for m in METRICS)] for v in s["per_volume"]],
            "l2": [float(v) for v in rec["l2_values"]],
            "rel": [float(v) for v in rec["rel_values"]],
        }
    if ref_slices:
        out["sigma"] = _sigma_on(model, task, dev, ref_slices, seed)
    return out


def evaluate_run(p: dict, ckpt: Path, folders: dict, n: int, seed: int, scratch: Path) -> dict:
    """Test metrics, GE (test vs the original training images, same evaluation masks) with
    intervals, reference σ on test slices, robustness on test slices, cross-anatomy metrics."""
    from mrijac.evaluate.robustness import robustness
    from mrijac.metrics import generalization_gap

    test = _evaluate_on(ckpt, folders["test"], int(p["ref_slices"]), seed)
    train = _evaluate_on(ckpt, folders["orig"][n], 0, seed)
    ge = generalization_gap(test["l2"], train["l2"], seed=seed)
    rel = generalization_gap(test["rel"], train["rel"], seed=seed)
    rb = p["robust"]
    eps = float(rb["eps"])
    rob = robustness(
        ckpt,
        folders["test"],
        scratch / "robustness",
        slices=int(rb["slices"]),
        eps=(eps,),
        steps=int(rb["steps"]),
        seed=seed,
        shifts=(),
        radii=(2,),
        progress=False,
        overwrite=True,
    )
    c = rob["curves"][str(eps)]
    out = {
        "test": {k: test[k] for k in ("model", "zero_filled", "per_volume", "sigma") if k in test},
        "train": {"l2": float(np.mean(train["l2"])), "model": train["model"]},
        "ge": {"ge": ge["ge"], "ci95": ge["ci95"], "rel_ge": rel["ge"], "rel_ci95": rel["ci95"]},
        "test_l2": float(np.mean(test["l2"])),
        "test_rel": float(np.mean(test["rel"])),
        "robust": {
            "eps": eps,
            "clean_psnr": rob["clean"]["psnr"],
            "adv_psnr": c["adversarial_psnr"],
            "adv_drop": rob["clean"]["psnr"] - c["adversarial_psnr"],
            "zf_adv_drop": rob["zero_filled"]["psnr"] - c["zero_filled_adversarial_psnr"],
            "feature_kept": rob["features"]["2"]["kept"],
            "feature_kept_zf": rob["features"]["2"]["kept_zero_filled"],
            "seconds": rob["seconds"],
        },
    }
    if folders.get("cross"):
        x = _evaluate_on(ckpt, folders["cross"], 0, seed)
        out["cross"] = {"model": x["model"], "zero_filled": x["zero_filled"]}
    return out


def run_one(p: dict, r: dict, folders: dict, lam: float, keep: str) -> dict:
    """Train run ``r`` and evaluate it (in a worker process: one torch thread)."""
    torch.set_num_threads(int(os.environ.get("MRI_SMALL_THREADS", "1")))
    from mrijac.train import Trainer

    scratch = Path(tempfile.mkdtemp(prefix="mri_small_"))
    try:
        root = folders["roots"][r["n"]]
        cfg = load_config(None, overrides(p, r, root, lam))
        t0 = time.time()
        tr = Trainer(cfg, scratch / "run", overwrite=True)
        tr.fit()
        t_train = time.time() - t0
        h = tr.history
        res = {**r, "lam": lam, "train_seconds": t_train, "epochs": len(h), "steps": h[-1]["step"] if h else 0}
        res["step_time"] = float(np.nanmedian([e["step_time"] for e in h])) if h else math.nan
        res["val"] = {m: h[-1].get(m) for m in ("psnr", "ssim", "nmse", "zf_psnr", "zf_ssim", "val_l2")}
        if tr.penalty.jac is not None:
            res["lambda"] = {k: float(getattr(tr.penalty.jac, k)) for k in ("lambda_ja", "lambda_j")}
        ckpt = scratch / "run" / "checkpoints" / "final.pt"
        t1 = time.time()
        if not r.get("grid"):
            res.update(evaluate_run(p, ckpt, folders, r["n"], r["seed"], scratch))
        else:  # the trade-off the grid chooses from: reference σ on validation slices
            # (the validation metrics are the Trainer's last epoch: only σ is measured here)
            val = _evaluate_on(ckpt, Path(root) / "val", int(p["ref_slices"]), r["seed"], metrics=False)
            res["val_sigma"] = val["sigma"]
        res["eval_seconds"] = time.time() - t1
        if keep:
            dst = Path(keep) / run_key(r).replace(" ", "_")
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(scratch / "run", dst)
        return res
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------- driver
def run_many(p, runs, folders, lam_of, keep, jobs, results, save, desc):
    todo = sorted((r for r in runs if run_key(r) not in results), key=lambda r: expected_cost(r, p), reverse=True)
    calls = [(p, r, folders, lam_of(r), keep) for r in todo]
    for i, res in run_parallel(run_one, calls, jobs, desc):
        results[run_key(todo[i])] = res
        save()


def grid_runs(p: dict, n0: int) -> list[dict]:
    """The λ grid: sja+sj at every λ of ``lambda_grid`` plus the unpenalised run it is judged
    against (λ = 0, strategy none), U-Net, 4×, the smallest training set, seed 0."""
    base = {"model": "unet", "acc": 4, "n": n0, "seed": 0, "grid": True}
    lams = sorted({float(v) for v in p["lambda_grid"]} - {0.0})
    return [{**base, "strategy": "none", "lam": 0.0}] + [{**base, "strategy": "sja+sj", "lam": v} for v in lams]


def _block_steps(p: dict) -> str:
    longer = [b for b in p["blocks"] if "steps" in b]
    return "".join(
        f"; {b['steps']} for {'/'.join(b['models'])} at {'/'.join(f'{a}×' for a in b['accelerations'])}" for b in longer
    )


def choose_lambda(p, results) -> tuple[float, list]:
    """The grid's λ > 0 with the lowest validation ℓ2 (sja+sj, smallest training set, seed 0);
    the λ = 0 row is the reference, never the choice."""
    rows = sorted((v for v in results.values() if v.get("grid")), key=lambda v: v["lam"])
    if not any(v["lam"] > 0 for v in rows):
        raise ValueError("no λ-grid runs")
    best = min((v for v in rows if v["lam"] > 0), key=lambda v: v["val"]["val_l2"])
    return best["lam"], rows


def main():
    ap = mode_parser(__doc__, HERE / "configs" / "mri_small.yaml")
    ap.add_argument("--root", default="", help="full mode: fastMRI folder with train/ and val/")
    ap.add_argument("--cross", default="", help="full mode: another anatomy's folder at the same size")
    ap.add_argument("--shared", default=str(SHARED), help="quick mode: the shared data folder")
    ap.add_argument("--jobs", type=int, default=0, help="worker processes (0: CPU cores, 1 on CUDA)")
    ap.add_argument("--seeds", type=int, default=0, help="override the protocol's seeds")
    ap.add_argument("--lam", type=float, default=None, help="skip the grid: use this λ")
    ap.add_argument("--keep", default="", help="copy every run folder (checkpoints, history) here")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    out = Path(a.out or HERE / "results" / ("mri_small_full" if a.full else "mri_small_quick"))
    if a.report_only:
        return report(json.loads(out.with_suffix(".json").read_text()), out)
    p = load_protocol(Path(a.config), a.quick)
    if a.seeds:
        p["seeds"] = a.seeds
    if a.cross:
        p["cross"] = a.cross
    jobs = a.jobs or (1 if torch.cuda.is_available() else max(1, os.cpu_count() or 1))
    prev = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    same = prev.get("protocol") == as_json(p)  # resume only what this protocol would run
    results = prev.get("runs", {}) if same else {}  # resume an interrupted run of the same protocol
    data = {
        "protocol": p,
        "mode": "full" if a.full else "quick",
        "command": "python experiments/mri_small.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {jobs} worker processes × "
        f"{os.environ.get('MRI_SMALL_THREADS', '1')} thread, torch {torch.__version__}"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        "runs": results,
        "seconds": prev.get("seconds", 0.0) if same else 0.0,
    }
    t0 = time.time()
    base = data["seconds"]

    def save():
        data["seconds"] = base + time.time() - t0
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out.with_suffix(".json")) as tmp:
            Path(tmp).write_text(json.dumps(data, indent=1))

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        t_prep = time.time()
        if a.full:
            if not a.root:
                raise SystemExit("mri_small --full: give --root (a fastMRI folder with train/ and val/)")
            folders = prepare_full(p, Path(a.root), work)
        else:
            folders = prepare_quick(p, Path(a.shared), work)
        data["split"] = folders["split"]
        data["prep_seconds"] = time.time() - t_prep
        n0 = min(p_sizes(p))
        runs = expand(p)
        if a.lam is None:
            grid = grid_runs(p, n0)
            # the runs that need no λ share the pool with the grid (no worker idles while it ends)
            free = [r for r in runs if not uses_lambda(p, r)]
            run_many(p, grid + free, folders, lambda r: r.get("lam"), a.keep, jobs, results, save, "λ grid + λ-free")
            lam, _ = choose_lambda(p, results)
        else:
            lam = a.lam
        data["lambda"] = lam
        lam_of = lambda r: lam if uses_lambda(p, r) else None  # noqa: E731
        run_many(p, runs, folders, lam_of, a.keep, jobs, results, save, "runs")
    save()
    report(data, out)


# --------------------------------------------------------------------------- report
def _ms(vals) -> tuple[float, float]:
    v = np.asarray([x for x in vals if x is not None and np.isfinite(x)], dtype=float)
    return (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0) if len(v) else (math.nan, math.nan)


def _fmt(m, s, d=2) -> str:
    return "–" if not np.isfinite(m) else f"{m:.{d}f} ± {s:.{d}f}"


COLUMNS = [
    ("test PSNR", lambda v: v["test"]["model"]["psnr"], 2),
    ("− zero-filled (dB)", lambda v: v["test"]["model"]["psnr"] - v["test"]["zero_filled"]["psnr"], 2),
    ("test SSIM", lambda v: v["test"]["model"]["ssim"], 3),
    ("test NMSE", lambda v: v["test"]["model"]["nmse"], 4),
    ("rel. GE", lambda v: v["ge"]["rel_ge"], 4),
    ("its 95 % CI (upper, mean over seeds)", lambda v: v["ge"]["rel_ci95"][1], 4),
    ("σ(J A) test", lambda v: v["test"]["sigma"]["sigma_ja"]["mean"], 2),
    ("σ(J) test", lambda v: v["test"]["sigma"]["sigma_j"]["mean"], 2),
    ("adv. PSNR drop (dB)", lambda v: v["robust"]["adv_drop"], 2),
    ("feature kept", lambda v: v["robust"]["feature_kept"], 2),
    ("knee PSNR − ZF", lambda v: v["cross"]["model"]["psnr"] - v["cross"]["zero_filled"]["psnr"], 2),
    ("step s", lambda v: v["step_time"], 3),
]


def groups(runs: dict) -> dict:
    g = {}
    for v in runs.values():
        if v.get("grid"):
            continue
        g.setdefault((v["model"], v["acc"], v["n"], v["strategy"]), []).append(v)
    return g


def _val(f, v):
    try:
        return f(v)
    except (KeyError, TypeError):
        return None


def _paired(g, key, other, f):
    """Mean and std over seeds of f(run) − f(run of ``other`` strategy, same seed)."""
    a = {v["seed"]: _val(f, v) for v in g.get(key, [])}
    b = {v["seed"]: _val(f, v) for v in g.get((*key[:3], other), [])}
    d = [a[s] - b[s] for s in a if s in b and a[s] is not None and b[s] is not None]
    return (*_ms(d), len(d))


def report(data: dict, out: Path) -> None:
    runs, p = data["runs"], data["protocol"]
    g = groups(runs)
    lines = [
        "# MRI with small real training sets (issue “evidence” §3)",
        "",
        f"Command: `{data['command']}` — {data['mode']} mode; machine: {data['machine']}; "
        f"wall time {data.get('seconds', 0) / 60:.1f} min (data preparation {data.get('prep_seconds', 0):.0f} s).",
        "",
        f"Data: {_data_line(p, data)}  Each run: at least {p['steps']} gradient steps "
        f"(whole epochs{_block_steps(p)}) at batch "
        f"{p['batch_size']}, Adam lr {p['lr']} ({p['schedule']}), random Cartesian masks "
        + ", ".join(f"{a}× (centre {c})" for a, c in p["accelerations"].items())
        + "; networks: "
        + "; ".join(f"{m} {' '.join(o.split('.')[-1] for o in v)}" for m, v in p["models"].items())
        + f". Means ± standard deviation over {p['seeds']} training seeds.",
        "",
    ]
    grid = sorted((v for v in runs.values() if v.get("grid")), key=lambda v: v["lam"])
    if grid:
        lines += [
            f"## λ (chosen on the validation images: sja+sj, U-Net, {grid[0]['acc']}×, n = {grid[0]['n']}, seed 0)",
            "",
            "| λ (total on σ) | val ℓ2 | val PSNR | val PSNR − ZF | σ(J A) val, mean / max |",
            "|---|---|---|---|---|",
        ]
        for v in grid:
            star = " **(chosen)**" if v["lam"] == data.get("lambda") else (" (no penalty)" if v["lam"] == 0 else "")
            sig = v.get("val_sigma", {}).get("sigma_ja")
            sig = f"{sig['mean']:.2f} / {sig['max']:.2f}" if sig else "–"
            lines.append(
                f"| {v['lam']:g}{star} | {v['val']['val_l2']:.3f} | {v['val']['psnr']:.2f} | "
                f"{v['val']['psnr'] - v['val']['zf_psnr']:+.2f} | {sig} |"
            )
        lines += [
            "",
            f"Every Jacobian strategy uses λ = {data.get('lambda')} (sja+sj: λ/2 on each term; fja+fj: the "
            "automatic λ with γ = 2, its scale differs); wd: 1e-4.",
            "",
        ]
    if not grid:
        lines += [f"λ = {data.get('lambda')} (total on σ; sja+sj: λ/2 on each term), given with `--lam` (no grid).", ""]
    lines += ["## Results on the test images", ""]
    lines += ["| model | acc. | n | strategy | seeds | " + " | ".join(c[0] for c in COLUMNS) + " |"]
    lines += ["|" + "---|" * (5 + len(COLUMNS))]
    order = list(p["strategies"])
    for key in sorted(g, key=lambda k: (k[0], k[1], k[2], order.index(k[3]))):
        vs = g[key]
        cells = [_fmt(*_ms([_val(f, v) for v in vs]), d) for _, f, d in COLUMNS]
        lines.append(f"| {key[0]} | {key[1]}× | {key[2]} | {key[3]} | {len(vs)} | " + " | ".join(cells) + " |")
    trained = [v for v in runs.values() if not v.get("grid")]
    zf = {
        a: np.mean([v["test"]["zero_filled"]["psnr"] for v in trained if v["acc"] == a])
        for a in {v["acc"] for v in trained}
    }
    lines += [
        "",
        "PSNR/SSIM/NMSE: fastMRI's definitions per test volume, averaged. Zero-filled test PSNR: "
        + ", ".join(f"{a}× {zf[a]:.2f} dB" for a in sorted(zf))
        + " (masks fixed per test volume).",
        "rel. GE: |mean test − mean train| of ‖f(y) − x‖/‖x‖ (training images without augmentation, same "
        "evaluation masks). σ: converged reference (Lanczos, tol 1e-2) on "
        f"{p['ref_slices']} test slices. Robustness on {p['robust']['slices']} test slices: PSNR drop under the "
        f"worst k-space perturbation of ‖δ‖ = {p['robust']['eps']:g}‖y‖ ({p['robust']['steps']} PGD steps); "
        "feature kept: contrast of a radius-2 disc added to the image that survives reconstruction (1 = all). "
        "step s: median training step of a worker process while others share the cores — not a cost figure "
        "(`cost_default.py` measures cost).",
        "",
    ]
    lines += verdicts(g, p)
    figs = figures(g, p, out)
    lines += ["", *[f"![{f.stem}]({f.name})" for f in figs]]
    write_report(out, data, lines)


def _data_line(p, data) -> str:
    s = data.get("split", {})
    if p["data"] == "chest":
        return (
            f"100 real chest MR images (`../shared/data/mri/chest100`) 2× downsampled to {p['size']}², split by image "
            f"{s.get('pool')} training pool / {s.get('val')} validation / {s.get('test')} test, simulated single-coil "
            f"k-space (mrijac's converter); training sets of {', '.join(map(str, p_sizes(p)))} images (nested), "
            + ("each in its 8 rotations/flips; " if p.get("augment") == "dihedral" else "")
            + "cross-anatomy test: the 20 real knee slices of `../shared/data/mri/knee20` (2× downsampled, centre "
            f"{p['size']}²), on which no model trains."
        )
    return f"fastMRI {p['challenge']} volumes: {s}."


CLEAR_DB = 0.3  # a margin over zero-filled this large (and beyond the seed spread) counts as "clearly beats"


def verdicts(g, p) -> list[str]:
    """The questions the study answers: a verdict each from the paired (same seed) differences
    against ``none`` in every configuration, then those differences one configuration a line."""
    psnr = lambda v: v["test"]["model"]["psnr"]  # noqa: E731
    relge = lambda v: v["ge"]["rel_ge"]  # noqa: E731
    sig = lambda v: v["test"]["sigma"]["sigma_ja"]["mean"]  # noqa: E731
    drop = lambda v: v["robust"]["adv_drop"]  # noqa: E731
    margin = lambda v: v["test"]["model"]["psnr"] - v["test"]["zero_filled"]["psnr"]  # noqa: E731
    knee = lambda v: v["cross"]["model"]["psnr"]  # noqa: E731
    out = ["## What it shows", ""]
    beats = [(k, *_ms([_val(margin, v) for v in vs])) for k, vs in g.items()]
    if beats:
        clear = [b for b in beats if b[1] - b[2] > 0 and b[1] >= CLEAR_DB]
        weak = sorted((b for b in beats if b not in clear), key=lambda b: b[1])
        out.append(
            f"- Does every network clearly beat zero-filled (≥ {CLEAR_DB} dB and beyond the seed spread)? "
            f"{len(clear)}/{len(beats)} configurations"
            + (
                "; not: " + ", ".join(f"{' '.join(map(str, b[0]))} {b[1]:+.2f} ± {b[2]:.2f} dB" for b in weak)
                if weak
                else ""
            )
            + "."
        )
    out += [
        "",
        "| question (Jacobian penalty − none, paired by seed) | verdict | where it holds beyond the seed spread |",
    ]
    out += ["|---|---|---|"]
    qs = (
        ("lowers the converged σ(J A)", sig, -1, 2),
        ("raises test PSNR", psnr, +1, 2),
        ("lowers the relative GE", relge, -1, 4),
        ("lowers the adversarial PSNR drop", drop, -1, 2),
        ("raises the cross-anatomy (knee) PSNR", knee, +1, 2),
    )
    pen = [k for k in sorted(g) if k[3] != "none" and (*k[:3], "none") in g]
    jac = [k for k in pen if k[3] not in ("wd", "sw")]  # the questions are about the Jacobian penalties
    for q, f, sign, d in qs:
        rows = [(k, *_paired(g, k, "none", f)) for k in jac]
        rows = [r for r in rows if r[3]]
        if not rows:
            continue
        hold = [r for r in rows if sign * r[1] > r[2]]
        against = [r for r in rows if -sign * r[1] > r[2]]
        verdict = (
            "yes"
            if len(hold) == len(rows)
            else "mostly"
            if len(hold) >= 0.75 * len(rows)
            else "no — the opposite"
            if len(against) >= 0.75 * len(rows)
            else "no"
        )
        ex = ", ".join(f"{r[0][3]} {r[0][0]} {r[0][1]}× n={r[0][2]}: {r[1]:+.{d}f} ± {r[2]:.{d}f}" for r in rows)
        out.append(f"| {q} | {verdict} | {len(hold)}/{len(rows)} ({ex}) |")
    out += [""]
    for key in pen:
        parts = []
        for name, f, d in (
            ("PSNR", psnr, 2),
            ("rel. GE", relge, 4),
            ("σ(J A)", sig, 2),
            ("adv. drop", drop, 2),
            ("knee PSNR", knee, 2),
        ):
            m, sd, n = _paired(g, key, "none", f)
            if n:
                parts.append(f"{name} {m:+.{d}f} ± {sd:.{d}f}")
        if parts:
            out.append(f"- {key[3]} − none ({key[0]}, {key[1]}×, n = {key[2]}, paired by seed): " + "; ".join(parts))
    return out


def figures(g, p, out: Path) -> list[Path]:
    """Metric against training-set size per strategy (one panel per metric), per model/acc."""
    figs = []
    panels = [
        ("test PSNR − zero-filled (dB)", lambda v: v["test"]["model"]["psnr"] - v["test"]["zero_filled"]["psnr"]),
        ("relative GE", lambda v: v["ge"]["rel_ge"]),
        ("σ(J A), test", lambda v: v["test"]["sigma"]["sigma_ja"]["mean"]),
        ("adversarial PSNR drop (dB)", lambda v: v["robust"]["adv_drop"]),
        (
            "cross-anatomy PSNR − zero-filled (dB)",
            lambda v: v["cross"]["model"]["psnr"] - v["cross"]["zero_filled"]["psnr"],
        ),
    ]
    for model, acc in sorted({(k[0], k[1]) for k in g}):
        sizes = sorted({k[2] for k in g if k[:2] == (model, acc)})
        strats = [s for s in p["strategies"] if any(k[:2] == (model, acc) and k[3] == s for k in g)]
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
        for ax, (title, f) in zip(axes, panels):
            for s in strats:
                xs, ms, ss = [], [], []
                for n in sizes:
                    vs = g.get((model, acc, n, s), [])
                    m, sd = _ms([_val(f, v) for v in vs])
                    if np.isfinite(m):
                        xs.append(n), ms.append(m), ss.append(sd)
                if xs:
                    ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=s)
            ax.set_xscale("log", base=2)
            ax.set_xticks(sizes, [str(n) for n in sizes])
            ax.set_xlabel("training images")
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{model}, {acc}× random Cartesian (mean ± std over seeds)", fontsize=11)
        path = out.parent / f"{out.name}_{model}_{acc}x.png"
        save_figure(fig, path)
        figs.append(path)
    return figs


if __name__ == "__main__":
    main()
