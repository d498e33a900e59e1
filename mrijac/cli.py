"""The ``mrijac`` command line.

Errors in the input or the environment (``ValueError``, ``OSError``: missing, existing or
read-only files, a full disk) print one line ``mrijac: error: …`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 320x320, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return h, w


def _numbers(text: str) -> tuple[float, ...]:
    """Comma-separated numbers (``--split 0.8,0.1,0.1``, ``--eps 0.01,0.05``)."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.01,0.05, got {text!r}") from None


# --- data ----------------------------------------------------------------------------------
def cmd_data_synth(a):
    from .data.synthetic import write_synthetic_dataset

    w = write_synthetic_dataset(
        a.out,
        a.kind,
        a.challenge,
        {"train": a.train, "val": a.val, "test": a.test},
        a.slices,
        a.kspace,
        a.recon,
        a.coils,
        a.seed,
        a.test_acceleration,
        noise=a.noise,
        overwrite=a.overwrite,
    )
    print(f"wrote {sum(len(v) for v in w.values())} volumes under {a.out}")


def cmd_data_kspace(a):
    from .data.convert import convert_kspace
    from .data.readers import is_bart, read_array

    axes = a.axes or ("bart" if is_bart(a.input) else None)
    if axes is None:
        raise ValueError(f"{a.input}: --axes is required for .mat/.npy input (e.g. x,y,coil or slice,coil,x,y)")
    k = read_array(a.input, a.key)
    p, notes = convert_kspace(
        k, a.out, axes, a.challenge, a.recon, a.acquisition, fft_axes_are_image=a.images, undersampled=a.undersampled
    )
    for n in notes:
        print(f"note: {n}")
    print(f"wrote {p}")


def cmd_data_images(a):
    from .data.prep import images_to_dataset

    w = images_to_dataset(
        a.source,
        a.out,
        a.per_volume,
        a.split,
        a.challenge,
        not a.no_phase,
        a.coils,
        a.seed,
        a.key,
        axes=a.axes,
        overwrite=a.overwrite,
        test_acceleration=a.test_acceleration,
    )
    for n in w.pop("notes"):
        print(f"note: {n}")
    print(
        f"wrote {sum(len(v) for v in w.values())} volumes under {a.out} "
        f"(train {len(w['train'])}, val {len(w['val'])}, test {len(w['test'])})"
    )


def cmd_data_maps(a):
    import numpy as np

    from .data.prep import maps_for_folder

    r = maps_for_folder(a.root, a.maps_dir, a.calib_width, a.overwrite)
    vals = [v for c in r["consistency"].values() for v in c]
    if vals:
        print(f"SENSE consistency ‖A x − y‖/‖y‖ of the new maps: median {np.median(vals):.1%}, max {max(vals):.1%}")
    for w in r["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"coil maps for {len(r['maps'])} volumes in {r['maps'][0].parent}")


def cmd_data_subset(a):
    from .data.prep import subset

    out = subset(a.src, a.dst, a.volumes, a.seed, a.copy)
    print(f"{len(out)} volumes in {a.dst}")


def add_data_parser(sub):
    p = sub.add_parser("data", help="make or convert fastMRI-format data")
    ds = p.add_subparsers(dest="data_cmd", required=True)
    s = ds.add_parser("synth", help="write a synthetic fastMRI-format dataset (phantoms)")
    s.add_argument("--out", required=True, help="output folder (train/, val/, test/ inside)")
    s.add_argument("--kind", choices=["knee", "brain"], default="knee")
    s.add_argument("--challenge", choices=["singlecoil", "multicoil"], default="singlecoil")
    s.add_argument("--train", type=int, default=4, help="training volumes")
    s.add_argument("--val", type=int, default=2, help="validation volumes")
    s.add_argument("--test", type=int, default=1, help="test volumes (masked, with test_targets/)")
    s.add_argument("--slices", type=int, default=8, help="slices per volume")
    s.add_argument("--kspace", type=_size, default=(64, 48), help="k-space size HxW (640x368 = fastMRI knee)")
    s.add_argument("--recon", type=_size, default=(32, 32), help="target size hxw (320x320 = fastMRI)")
    s.add_argument("--coils", type=int, default=8, help="coils (multicoil)")
    s.add_argument("--noise", type=float, default=0.002, help="k-space noise std relative to the image peak")
    s.add_argument("--test-acceleration", type=int, default=4)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true", help="replace the volumes already in --out")
    s.set_defaults(func=cmd_data_synth)
    c = ds.add_parser("convert", help="convert real data into fastMRI format")
    cs = c.add_subparsers(dest="convert_cmd", required=True)
    k = cs.add_parser("kspace", help="raw k-space (BART .cfl/.hdr, MATLAB .mat, .npy) -> one .h5 volume")
    k.add_argument("input", help="raw file (.cfl/.hdr or their stem, .mat, .npy)")
    k.add_argument("--out", required=True, help="output .h5 file")
    k.add_argument(
        "--axes",
        help="input axes from x, y, coil, slice, 1 (singleton), e.g. slice,coil,x,y; "
        "'bart' (the default for .cfl) reads BART's dimension order",
    )
    k.add_argument("--key", help="variable name inside a .mat file")
    k.add_argument(
        "--challenge",
        choices=["singlecoil", "multicoil"],
        help="multicoil: RSS target; singlecoil: emulated single coil (ESC) target "
        "(default: singlecoil for one coil, else multicoil)",
    )
    k.add_argument(
        "--undersampled",
        action="store_true",
        help="the k-space is undersampled (Cartesian): write a test file with the inferred mask, no target",
    )
    k.add_argument("--recon", type=_size, help="target size hxw (default: the smaller side, square)")
    k.add_argument("--acquisition", default="CONVERTED")
    k.add_argument("--images", action="store_true", help="the input holds coil images, not k-space")
    k.set_defaults(func=cmd_data_kspace)
    i = cs.add_parser("images", help="magnitude images (folder or .mat/.npy) -> volumes with simulated k-space")
    i.add_argument("source", help="image folder (PNG/JPEG/TIFF/.mat/.npy/.cfl) or one .mat/.npy/.cfl stack")
    i.add_argument("--out", required=True, help="output folder (train/, val/, test/, test_targets/ inside)")
    i.add_argument("--per-volume", type=int, default=10, help="images per volume")
    i.add_argument(
        "--split", type=_numbers, default=(0.8, 0.1, 0.1), help="train,val,test fractions (test: challenge format)"
    )
    i.add_argument(
        "--axes",
        help="axes of a stack from x, y, slice (x,y,slice for MATLAB's (H, W, S)); default: inferred and reported",
    )
    i.add_argument("--test-acceleration", type=int, default=4, help="acceleration of the test volumes' masks")
    i.add_argument("--overwrite", action="store_true", help="replace the volumes already in --out")
    i.add_argument("--challenge", choices=["singlecoil", "multicoil"], default="singlecoil")
    i.add_argument("--coils", type=int, default=8)
    i.add_argument(
        "--no-phase",
        action="store_true",
        help="magnitude images get no smooth random phase (complex inputs keep theirs)",
    )
    i.add_argument("--key", help="variable name inside .mat files (e.g. im_ori)")
    i.add_argument("--seed", type=int, default=0)
    i.set_defaults(func=cmd_data_images)
    m = ds.add_parser("maps", help="ESPIRiT coil maps for every multi-coil volume of a folder")
    m.add_argument("root", help="folder of multi-coil .h5 volumes")
    m.add_argument("--maps-dir", help="where to write (default <root>_maps)")
    m.add_argument("--calib-width", type=int, default=24)
    m.add_argument("--overwrite", action="store_true")
    m.set_defaults(func=cmd_data_maps)
    b = ds.add_parser("subset", help="a seeded subset of a folder's volumes (links or copies)")
    b.add_argument("src")
    b.add_argument("dst")
    b.add_argument("--volumes", type=int, required=True)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--copy", action="store_true", help="copy instead of symbolic links")
    b.set_defaults(func=cmd_data_subset)


# --- train, evaluate, predict, compare, demo ------------------------------------------------


def cmd_train(a):
    from .config import describe, load_config

    if a.help_config:
        print("config keys (YAML sections or key=value overrides) and defaults:\n" + describe())
        return 0
    if a.config is None and not a.resume and not a.overrides:
        raise ValueError("train needs --config FILE and/or key=value overrides (or --resume with --out)")
    if a.config is None and a.resume:  # the run's own config
        if not a.out:
            raise ValueError("train --resume needs --out RUN (the run folder to continue)")
        a.config = Path(a.out) / "config.yaml"
        if not a.config.exists():
            raise FileNotFoundError(
                f"{a.config}: no config in the run folder; nothing was saved there yet — start it again with --config"
            )
    cfg = load_config(a.config, a.overrides)
    out = Path(a.out) if a.out else Path("runs") / cfg.name
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: --out names an existing file; the run folder must be a directory")
    from .train.trainer import Interrupted, NonFiniteError, train  # after the config: errors stay fast

    try:
        row = train(cfg, out, resume=a.resume, overwrite=a.overwrite)
    except NonFiniteError as err:
        print(f"mrijac: stopped: {err}", file=sys.stderr)
        return 1
    except Interrupted as err:
        print(f"mrijac: {err}", file=sys.stderr)
        return 128 + int(err.signum) if err.signum else 1
    print(
        f"run in {out}: last epoch {row.get('epoch')}, val loss {row.get('val_loss', float('nan')):.4g}"
        f", checkpoint {out / 'checkpoints' / 'final.pt'}"
    )
    return 0


def cmd_evaluate(a):
    if a.predictions:
        from .evaluate.predict import evaluate_predictions

        if not a.targets:
            raise ValueError("--predictions needs --targets (a folder of target volumes)")
        r = evaluate_predictions(a.predictions, a.targets, a.out, a.challenge, a.overwrite)
        print("  ".join(f"{m.upper()} {v['mean']:.4f} ± {v['std']:.4f}" for m, v in r["aggregate"].items()))
        print(f"report: {Path(a.out) / 'report.html'}")
        return
    if not (a.checkpoint and a.data):
        raise ValueError("evaluate needs --checkpoint and --data (or --predictions and --targets)")
    from .evaluate.runner import evaluate_checkpoint

    r = evaluate_checkpoint(
        a.checkpoint, a.data, a.out, a.overwrite, a.device, jac_batches=a.jac_batches, robustness=a.robustness
    )
    agg = r["aggregate"]
    print(
        "  ".join(f"{m.upper()} {v['mean']:.4f} ± {v['std']:.4f}" for m, v in agg.items())
        + (f"  GE {r['ge']:.4g}" if r.get("ge") is not None else "")
    )
    if r.get("ge") is None:
        print(r["generalization"]["omitted"])
    print(f"report: {Path(a.out) / 'report.html'}")


def cmd_robustness(a):
    from .evaluate.robustness import robustness

    r = robustness(
        a.checkpoint,
        a.data,
        a.out,
        a.slices,
        a.eps,
        a.steps,
        a.seed,
        quick=a.quick,
        device=a.device,
        overwrite=a.overwrite,
    )
    worst = max(r["curves"])
    c = r["curves"][worst]
    print(
        f"clean PSNR {r['clean']['psnr']:.2f} dB; at ε = {float(worst):g}: adversarial {c['adversarial_psnr']:.2f}, "
        f"random {c['random_psnr']:.2f} dB; amplification {c['amplification']:.3g} (σ(J A) {r['sigma_ja_mean']:.3g})"
    )
    print(f"report: {Path(a.out) / 'report.html'}")


def cmd_predict(a):
    from .evaluate.predict import predict_folder

    out = predict_folder(a.checkpoint, a.data, a.out, a.device, a.batch_size, a.overwrite)
    print(f"wrote {len(out)} reconstructions to {a.out}")


def cmd_compare(a):
    from .evaluate.compare import compare_runs

    table = compare_runs(a.runs, a.out, a.overwrite, a.names.split(",") if a.names else None)
    print(f"compared {len(table)} runs: {Path(a.out) / 'report.html'}")


def cmd_sweep(a):
    from .config import load_config
    from .sweep import lambda_sweep

    try:
        lams = [float(v) for v in a.lambdas.split(",")]
    except ValueError:
        raise ValueError(f"--lambdas must be comma-separated numbers, got {a.lambdas!r}") from None
    r = lambda_sweep(load_config(a.config, a.overrides), lams, a.out, a.overwrite, a.max_drop, a.seeds)
    print(f"recommended λ = {r['recommended']['lambda']:g}; report: {Path(a.out) / 'report.html'}")


def cmd_demo(a):
    from .demo import run_demo

    run_demo(a.out, quick=a.quick, overwrite=a.overwrite)


def add_run_parsers(sub):
    t = sub.add_parser("train", help="train a reconstructor (YAML config + key=value overrides)")
    t.add_argument("--config", help="YAML config file")
    t.add_argument("overrides", nargs="*", help="key=value, e.g. reg.name=sja+sj optim.epochs=20")
    t.add_argument("--out", help="run folder (default runs/<name>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    t.add_argument("--help-config", action="store_true", help="list every config key and its default")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser(
        "evaluate",
        help="score a checkpoint on a data folder (or a folder of predictions against targets); write the report",
    )
    e.add_argument("--checkpoint")
    e.add_argument("--data", help="MRI: folder of fastMRI volumes with targets")
    e.add_argument("--predictions", help="folder of .h5 with 'reconstruction' (any tool's)")
    e.add_argument("--targets", help="folder of target volumes, with --predictions")
    e.add_argument(
        "--challenge",
        choices=["singlecoil", "multicoil"],
        help="target key for --predictions (default: whichever the files have)",
    )
    e.add_argument("--out", required=True)
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    e.add_argument("--jac-batches", type=int, default=4, help="batches for σ(J A), σ(J) (0: skip)")
    e.add_argument(
        "--robustness",
        choices=["quick", "full"],
        help="add `mrijac robustness` (quick: 2 slices, 2 ε, 3 PGD steps) in <out>/robustness",
    )
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(func=cmd_evaluate)
    p = sub.add_parser(
        "predict",
        help="reconstruct every volume of a folder (test files use "
        "their own mask) into <out>/<file>.h5 with 'reconstruction'",
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, help="slices per batch (default: the training batch)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_predict)
    r = sub.add_parser(
        "robustness",
        help="worst-case and random k-space perturbations, sampling shift, small features (report)",
    )
    r.add_argument("--checkpoint", required=True)
    r.add_argument("--data", required=True, help="MRI: folder of fastMRI volumes with targets")
    r.add_argument("--out", required=True)
    r.add_argument("--slices", type=int, default=4, help="seeded slices to attack")
    r.add_argument("--eps", type=_numbers, default=(0.005, 0.01, 0.02, 0.05), help="perturbation sizes relative to ‖y‖")
    r.add_argument("--steps", type=int, default=10, help="PGD steps per start")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--quick", action="store_true", help="2 slices, ε 0.01,0.05, 3 steps (smoke run)")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    r.add_argument("--overwrite", action="store_true")
    r.set_defaults(func=cmd_robustness)
    c = sub.add_parser("compare", help="one table and figure across runs or evaluations")
    c.add_argument("runs", nargs="+", help="evaluation folders (metrics.json) or run folders")
    c.add_argument("--out", required=True)
    c.add_argument("--names", help="comma-separated display names, one per run")
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(func=cmd_compare)
    w = sub.add_parser(
        "sweep", help="train short runs over a λ grid and recommend one (reference σ vs validation PSNR/SSIM)"
    )
    w.add_argument("--config", required=True, help="YAML config with a Jacobian penalty")
    w.add_argument("overrides", nargs="*", help="key=value, e.g. optim.epochs=5")
    w.add_argument("--lambdas", default="0.05,0.2,0.5,2", help="λ1 = λ2 grid (0 is always run)")
    w.add_argument(
        "--max-drop",
        type=float,
        default=0.2,
        help="largest PSNR loss (dB) against λ = 0 that a recommendation may have",
    )
    w.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="training seeds per λ (train.seed, train.seed+1, …); the recommendation uses their means",
    )
    w.add_argument("--out", required=True)
    w.add_argument("--overwrite", action="store_true")
    w.set_defaults(func=cmd_sweep)
    d = sub.add_parser("demo", help="synthetic data, U-Net without and with sja+sj, evaluation, comparison")
    d.add_argument("--out", default="mrijac-demo", help="folder for everything the demo writes")
    d.add_argument("--quick", action="store_true", help="one-minute smoke run")
    d.add_argument("--overwrite", action="store_true")
    d.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mrijac", description="Learned MRI reconstruction with model-aware Jacobian regularization."
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_run_parsers(sub)
    add_data_parser(sub)
    return parser


def error_line(err: BaseException) -> str:
    """One line for the user: the error's own first line; for an error re-raised from a data
    loader worker ("Caught ValueError in DataLoader worker process 0. Original Traceback …")
    the original message (which names the file), not torch's wrapper line."""
    import errno

    text = str(err).strip()
    if isinstance(err, OSError) and err.filename and err.strerror:
        why = {
            errno.ENOTDIR: "a file is in the way of this folder",
            errno.EEXIST: "exists as a file where a folder is needed",
            errno.EACCES: "permission denied (choose a writable location)",
            errno.EROFS: "read-only file system (choose a writable location)",
            errno.ENOSPC: "no space left on the device",
        }.get(err.errno, err.strerror)
        text = f"{err.filename}: {why}"
    lines = text.splitlines()
    if lines and lines[0].startswith("Caught ") and "Original Traceback" in text:
        name = type(err).__name__
        orig = [ln for ln in lines if ln.startswith(f"{name}: ")]
        if orig:
            return orig[-1][len(name) + 2 :]
    return lines[0] if lines else type(err).__name__


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rv = args.func(args)
    except (ValueError, OSError) as err:  # OSError: missing/existing/read-only files, full disks
        print(f"mrijac: error: {error_line(err)}", file=sys.stderr)
        return 2
    return int(rv or 0)


if __name__ == "__main__":
    sys.exit(main())
