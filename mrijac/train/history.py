"""Per-epoch statistics of training and their logs: ``history.csv``, TensorBoard, console."""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

HISTORY_FIELDS = [
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_penalty",
    "train_sigma_ja",
    "train_sigma_j",
    "val_loss",
    "val_l2",
    "train_l2",
    "ge",
    "ge_lo",
    "ge_hi",
    "rel_ge",
    "rel_ge_lo",
    "rel_ge_hi",
    "ssim",
    "psnr",
    "nmse",
    "zf_ssim",
    "zf_psnr",
    "zf_nmse",
    "val_sigma_ja_mean",
    "val_sigma_ja_max",
    "val_sigma_j_mean",
    "val_sigma_j_max",
    "train_ref_sigma_ja_mean",
    "train_ref_sigma_ja_max",
    "train_ref_sigma_j_mean",
    "train_ref_sigma_j_max",
    "val_floor_ja_mean",
    "val_floor_j_mean",
    "train_ref_floor_ja_mean",
    "train_ref_floor_j_mean",
    "est_ratio_ja",
    "est_ratio_j",
    "est_ratio_end_ja",
    "est_ratio_end_j",
    "ref_residual",
    "ref_time",
    "lambda_ja",
    "lambda_j",
    "data_wait_frac",
    "first_visit_frac",
    "step_time",
    "epoch_time",
]


@dataclass
class EpochStats:
    """Running sums of one epoch's training steps (kept in mid-epoch checkpoints)."""

    loss: float = 0.0
    penalty: float = 0.0
    sigma_ja: list = field(default_factory=list)
    sigma_j: list = field(default_factory=list)
    n: int = 0
    wait: float = 0.0  # seconds waiting for batches
    busy: float = 0.0  # seconds computing steps
    first_visits: int = 0  # penalised steps (method=fd) whose sample had no stored vector
    fd_steps: int = 0  # penalised steps with method=fd

    def add(self, r: dict) -> None:
        """One step's result (``loss``, ``penalty``, ``sigma_ja``, ``sigma_j``)."""
        self.n += 1
        self.loss += r["loss"]
        self.penalty += r["penalty"]
        for k in ("sigma_ja", "sigma_j"):
            if not math.isnan(r[k]):
                getattr(self, k).append(r[k])
        if not math.isnan(r.get("first_visit", math.nan)):
            self.fd_steps += 1
            self.first_visits += int(r["first_visit"])

    def row(self) -> dict:
        n = max(self.n, 1)
        mean = lambda v: float(np.mean(v)) if v else math.nan  # noqa: E731
        return {
            "train_loss": self.loss / n,
            "train_penalty": self.penalty / n,
            "data_wait_frac": self.wait / max(self.wait + self.busy, 1e-12),
            "step_time": self.busy / n,
            # share of penalised steps that were a sample's first visit (with n_iter=1 one exact
            # iteration more): with one penalised sample per batch of B, the first ~B epochs
            "first_visit_frac": self.first_visits / self.fd_steps if self.fd_steps else math.nan,
            "train_sigma_ja": mean(self.sigma_ja),
            "train_sigma_j": mean(self.sigma_j),
        }

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "EpochStats":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d}) if d else cls()


def postfix(r: dict) -> dict:
    """Progress-bar text of a step's result."""
    out = {"loss": f"{r['loss']:.4g}", "pen": f"{r['penalty']:.3g}"}
    for k in ("sigma_ja", "sigma_j"):
        if not math.isnan(r[k]):
            out["σ" + k[5:].upper()] = f"{r[k]:.3g}"
    return out


class HistoryLog:
    """Appends each epoch's row to ``out/history.csv``, writes its numbers to TensorBoard
    (``out/tb``) and, with ``progress``, prints a one-line summary."""

    def __init__(self, out: Path, progress: bool, start_epoch: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.path, self.progress = Path(out) / "history.csv", progress
        self.writer = SummaryWriter(str(Path(out) / "tb"), purge_step=start_epoch)

    def rewrite(self, rows: list[dict]) -> None:
        """Replace ``history.csv`` by ``rows`` (on resume: the checkpoint's epochs, so that an
        epoch logged after the last checkpoint is not listed twice)."""
        from ..atomic import atomic_path

        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
            w.writeheader()
            for row in rows:
                w.writerow({k: row.get(k, "") for k in HISTORY_FIELDS})

    def write(self, row: dict) -> None:
        new = not self.path.exists()
        with open(self.path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in HISTORY_FIELDS})
        for k, v in row.items():
            if isinstance(v, (int, float)) and k != "epoch" and math.isfinite(v):
                self.writer.add_scalar(k, v, row["epoch"])
        self.writer.flush()
        if self.progress:
            tqdm.write(summary(row))

    def close(self) -> None:
        self.writer.close()


def summary(row: dict) -> str:
    """One line per epoch: losses, GE, quality, reference σ and estimate/reference."""
    msg = (
        f"epoch {row['epoch']}: train loss {row['train_loss']:.4g}, val loss "
        f"{row.get('val_loss', math.nan):.4g}, GE {row.get('ge', math.nan):.4g}"
    )
    for m in ("ssim", "psnr"):
        if m in row:
            msg += f", {m.upper()} {row[m]:.4g}"
    if "val_sigma_ja_mean" in row:
        msg += f", σ(JA) {row['val_sigma_ja_mean']:.3g}, σ(J) {row['val_sigma_j_mean']:.3g}"
    for t, name in (("ja", "σ(JA)"), ("j", "σ(J)")):
        if f"est_ratio_{t}" in row:
            msg += f", estimate/reference {name} {row[f'est_ratio_{t}']:.2f}"
    return msg
