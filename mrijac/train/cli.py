"""``mrijac train | evaluate | compare | demo`` (added to the parser in ``mrijac.cli``)."""
from __future__ import annotations

import sys
from pathlib import Path


def cmd_train(a):
    from .config import describe, load_config
    from .trainer import Interrupted, NonFiniteError, train
    if a.help_config:
        print("config keys (YAML sections or key=value overrides) and defaults:\n" + describe())
        return 0
    if a.config is None and not a.resume:
        raise ValueError("train needs --config FILE (or --resume with --out)")
    cfg = load_config(a.config, a.overrides)
    out = Path(a.out) if a.out else Path("runs") / cfg.name
    try:
        row = train(cfg, out, resume=a.resume, overwrite=a.overwrite)
    except NonFiniteError as err:
        print(f"mrijac: stopped: {err}", file=sys.stderr)
        return 1
    except Interrupted as err:
        print(f"mrijac: {err}", file=sys.stderr)
        return 128 + int(err.signum) if err.signum else 1
    print(f"run in {out}: last epoch {row.get('epoch')}, val loss {row.get('val_loss', float('nan')):.4g}"
          f", checkpoint {out / 'checkpoints' / 'final.pt'}")
    return 0


def cmd_evaluate(a):
    if a.predictions:
        from ..evaluate.predict import evaluate_predictions
        if not a.targets:
            raise ValueError("--predictions needs --targets (a folder of target volumes)")
        r = evaluate_predictions(a.predictions, a.targets, a.out, a.challenge, a.overwrite)
        print("  ".join(f"{m.upper()} {v['mean']:.4f} ± {v['std']:.4f}"
                        for m, v in r["aggregate"].items()))
        print(f"report: {Path(a.out) / 'report.html'}")
        return
    if not (a.checkpoint and a.data):
        raise ValueError("evaluate needs --checkpoint and --data (or --predictions and --targets)")
    from ..evaluate.runner import evaluate_checkpoint
    r = evaluate_checkpoint(a.checkpoint, a.data, a.out, a.overwrite, a.device,
                            jac_batches=a.jac_batches)
    agg = r["aggregate"]
    print("  ".join(f"{m.upper()} {v['mean']:.4f} ± {v['std']:.4f}" for m, v in agg.items())
          + f"  GE {r['ge']:.4g}")
    print(f"report: {Path(a.out) / 'report.html'}")


def cmd_predict(a):
    from ..evaluate.predict import predict_folder
    out = predict_folder(a.checkpoint, a.data, a.out, a.device, a.batch_size, a.overwrite)
    print(f"wrote {len(out)} reconstructions to {a.out}")


def cmd_compare(a):
    from ..evaluate.compare import compare_runs
    table = compare_runs(a.runs, a.out, a.overwrite, a.names.split(",") if a.names else None)
    print(f"compared {len(table)} runs: {Path(a.out) / 'report.html'}")


def cmd_demo(a):
    from ..demo import run_demo
    run_demo(a.out, quick=a.quick, overwrite=a.overwrite)


def add_parsers(sub):
    t = sub.add_parser("train", help="train a reconstructor (YAML config + key=value overrides)")
    t.add_argument("--config", help="YAML config file")
    t.add_argument("overrides", nargs="*", help="key=value, e.g. reg.name=sja+sj optim.epochs=20")
    t.add_argument("--out", help="run folder (default runs/<name>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    t.add_argument("--help-config", action="store_true", help="list every config key and its default")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("evaluate", help="score a checkpoint on a data folder (or a folder of "
                       "predictions against targets); write the report")
    e.add_argument("--checkpoint")
    e.add_argument("--data", help="MRI: folder of fastMRI volumes with targets")
    e.add_argument("--predictions", help="folder of .h5 with 'reconstruction' (any tool's)")
    e.add_argument("--targets", help="folder of target volumes, with --predictions")
    e.add_argument("--challenge", choices=["singlecoil", "multicoil"],
                   help="target key for --predictions (default: whichever the files have)")
    e.add_argument("--out", required=True)
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    e.add_argument("--jac-batches", type=int, default=4, help="batches for σ(J A), σ(J) (0: skip)")
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("predict", help="reconstruct every volume of a folder (test files use "
                       "their own mask) into <out>/<file>.h5 with 'reconstruction'")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, help="slices per batch (default: the training batch)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_predict)
    c = sub.add_parser("compare", help="one table and figure across runs or evaluations")
    c.add_argument("runs", nargs="+", help="evaluation folders (metrics.json) or run folders")
    c.add_argument("--out", required=True)
    c.add_argument("--names", help="comma-separated display names, one per run")
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(func=cmd_compare)
    d = sub.add_parser("demo", help="synthetic data, U-Net without and with sja+sj, evaluation, comparison")
    d.add_argument("--out", default="mrijac-demo", help="folder for everything the demo writes")
    d.add_argument("--quick", action="store_true", help="one-minute smoke run")
    d.add_argument("--overwrite", action="store_true")
    d.set_defaults(func=cmd_demo)
