"""``mrijac compare``: one table and figure across runs (e.g. one per regularizer)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from .figures import bars_figure, curves_figure, robustness_compare
from .report import md_table, staged_dir, write_csv, write_json, write_report

COLUMNS = [
    "ssim",
    "psnr",
    "nmse",
    "ge",
    "rel_ge",
    "test_loss",
    "train_loss",
    "sigma_ja_mean",
    "sigma_ja_max",
    "sigma_j_mean",
    "sigma_j_max",
]


def _read_history(run: Path) -> list[dict]:
    for p in (run / "history.csv", run.parent / "history.csv"):
        if p.exists():
            with open(p) as fh:
                return [{k: _num(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    return []


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def load_run(path) -> dict:
    """A row of the comparison from an evaluation folder (``metrics.json``), or from a training
    run folder (its ``eval/metrics.json``, else the last line of ``history.csv``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: run not found")
    mj = next((p for p in (path / "metrics.json", path / "eval" / "metrics.json") if p.exists()), None)
    if mj is not None:
        r = json.loads(mj.read_text())
        row = {
            "run": path.name,
            "regularizer": r.get("regularizer"),
            "test_loss": r.get("test_loss"),
            "train_loss": r.get("train_loss"),
            "ge": r.get("ge"),
            "rel_ge": (r.get("generalization") or {}).get("rel_ge"),
        }
        for m, v in r.get("aggregate", {}).items():
            row[m] = v["mean"]
        for k in ("sigma_ja", "sigma_j"):
            if k in r.get("jacobian", {}):
                row[f"{k}_mean"] = r["jacobian"][k]["mean"]
                row[f"{k}_max"] = r["jacobian"][k]["max"]
        rb = r.get("robustness") or {}
        for e, c in rb.get("curves", {}).items():
            row[f"adv_psnr_eps{float(e):g}"] = c.get("adversarial_psnr")
        for rad, f in rb.get("features", {}).items():
            row[f"kept_r{rad}"] = f.get("kept")
        run_dir = Path(r["checkpoint"]).parent.parent if r.get("checkpoint") else path
        hist = _read_history(run_dir) or _read_history(path)
        zf = {m: v["mean"] for m, v in (r.get("zero_filled") or {}).get("aggregate", {}).items()}
        return {"row": row, "history": hist, "zero_filled": zf, "data": r.get("data"), "robustness": rb}
    hist = _read_history(path)
    if not hist:
        raise ValueError(f"{path}: neither metrics.json (an evaluation) nor history.csv (a run)")
    last = hist[-1]
    row = {
        "run": path.name,
        "regularizer": "?",
        "test_loss": last.get("val_l2"),
        "train_loss": last.get("train_l2"),
        "ge": last.get("ge"),
        "rel_ge": last.get("rel_ge"),
        "ssim": last.get("ssim"),
        "psnr": last.get("psnr"),
        "nmse": last.get("nmse"),
        "sigma_ja_mean": last.get("val_sigma_ja_mean"),
        "sigma_ja_max": last.get("val_sigma_ja_max"),
        "sigma_j_mean": last.get("val_sigma_j_mean"),
        "sigma_j_max": last.get("val_sigma_j_max"),
    }
    zf = {m: last[f"zf_{m}"] for m in ("ssim", "psnr", "nmse") if math.isfinite(last.get(f"zf_{m}", math.nan))}
    return {"row": row, "history": hist, "zero_filled": zf, "data": "validation split"}


def zero_filled_row(loaded: list[dict]) -> dict | None:
    """The zero-filled baseline as a row, when the runs were scored on the same data (the
    baseline of each run's evaluation; ``None`` when there is none or the data differ)."""
    zfs = [d.get("zero_filled") or {} for d in loaded]
    if not zfs[0] or len({str(d.get("data")) for d in loaded}) != 1:
        return None
    return {"run": "zero-filled", "regularizer": "(no network)", **zfs[0]}


def compare_runs(runs: list, out, overwrite: bool = False, names: list[str] | None = None) -> list[dict]:
    """Table (``comparison.csv``/``.json``, ``report.md``/``.html``) and figures across runs.

    Differences are given against the first run (the baseline)."""
    if len(runs) < 1:
        raise ValueError("compare needs at least one run")
    loaded = [load_run(r) for r in runs]
    table = [d["row"] for d in loaded]
    if names:
        if len(names) != len(table):
            raise ValueError(f"--names gives {len(names)} names for {len(table)} runs")
        for row, n in zip(table, names):
            row["run"] = n
    zf = zero_filled_row(loaded)
    base = table[0]
    for row in table[1:]:
        for k in COLUMNS:
            a, b = row.get(k), base.get(k)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                row[f"d_{k}"] = a - b
    with staged_dir(out, overwrite) as tmp:
        write_json(tmp / "comparison.json", table)
        write_csv(tmp / "comparison.csv", table)
        (tmp / "figures").mkdir()
        bars = bars_figure(tmp / "figures" / "comparison.png", table, baseline=zf)
        curves = curves_figure(
            tmp / "figures" / "curves.png", {r["run"]: d["history"] for r, d in zip(table, loaded) if d["history"]}
        )
        cols = [c for c in COLUMNS if any(isinstance(r.get(c), (int, float)) for r in table)]
        cols += sorted(
            {k for r in table for k in r if k.startswith(("adv_psnr_eps", "kept_r"))},
            key=lambda k: (k[:4], float(k.split("eps")[-1]) if "eps" in k else float(k[6:])),
        )
        rob = {r["run"]: d["robustness"] for r, d in zip(table, loaded) if d.get("robustness")}
        rob_fig = robustness_compare(tmp / "figures" / "robustness.png", rob) if rob else None
        shown = table + ([zf] if zf else [])
        lines = [
            "# Comparison of runs",
            "",
            md_table(
                ["run", "regularizer"] + cols,
                [[r["run"], r.get("regularizer")] + [r.get(c) for c in cols] for r in shown],
            ),
        ]
        if zf and "psnr" in zf:
            beat = [r["run"] for r in table if isinstance(r.get("psnr"), (int, float)) and r["psnr"] > zf["psnr"]]
            lines += [
                "",
                f"Zero-filled baseline (the same data): PSNR {zf['psnr']:.2f} dB"
                + (f", SSIM {zf['ssim']:.4f}" if "ssim" in zf else "")
                + ". "
                + (
                    f"Above it in PSNR: {', '.join(beat)}."
                    if beat
                    else "**No run beats the zero-filled reconstruction in PSNR.**"
                ),
            ]
        elif not zf:
            lines += ["", "Zero-filled baseline: not shown (the runs were scored on different data, or it is not MRI)."]
        if len(table) > 1:
            dcols = [c for c in cols if any(f"d_{c}" in r for r in table[1:])]
            lines += [
                "",
                f"## Differences against `{base['run']}`",
                "",
                md_table(
                    ["run"] + [f"Δ {c}" for c in dcols],
                    [[r["run"]] + [r.get(f"d_{c}") for c in dcols] for r in table[1:]],
                ),
            ]
        if bars:
            lines += ["", "![metrics across runs](figures/comparison.png)"]
        if curves:
            lines += ["", "![training curves](figures/curves.png)"]
        if rob_fig:
            lines += [
                "",
                "Robustness columns: `adv_psnr_epsE` = PSNR under the worst perturbation found (PGD) of "
                "relative size E on the sampled k-space; `kept_rR` = contrast kept of an R-pixel feature.",
                "",
                "![robustness across runs](figures/robustness.png)",
            ]
        write_report(tmp, "\n".join(lines) + "\n", "mrijac comparison")
    return table
