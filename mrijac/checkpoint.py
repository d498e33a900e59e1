"""Checkpoints: written atomically, read with ``weights_only=True``, format-checked."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_path

FORMAT = "mrijac-checkpoint"
VERSION = 1


def rng_state() -> dict:
    """Python, NumPy and torch RNG states as plain containers and tensors."""
    st = np.random.get_state()
    py = random.getstate()
    out = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "keys": torch.from_numpy(st[1].astype(np.int64)),
            "pos": int(st[2]),
            "has_gauss": int(st[3]),
            "cached": float(st[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename (never half-written)."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)
    except (RuntimeError, OSError) as err:  # torch reports a full disk as "[enforce fail at …]"
        free = shutil.disk_usage(Path(path).parent).free if Path(path).parent.exists() else 0
        raise OSError(
            f"{path}: could not write the checkpoint ({str(err).splitlines()[0][:120]}); "
            f"{free / 2**20:.0f} MiB free there — is the disk full or the folder read-only? "
            "The previous checkpoint, if any, is unchanged"
        ) from None
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load and check a checkpoint (``weights_only=True``); clear errors for foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # pickle/zip errors come in many types
        raise ValueError(f"{path}: not a readable checkpoint ({str(err).splitlines()[0]})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise ValueError(f"{path}: not an mrijac checkpoint (no '{FORMAT}' format tag)")
    if ck.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint format version {ck.get('version')}; this mrijac reads version {VERSION}")
    for key in ("config", "model", "model_meta"):
        if key not in ck:
            raise ValueError(f"{path}: checkpoint lacks '{key}'")
    return ck


def load_model(path_or_ck, device="cpu"):
    """``(reconstructor, config, checkpoint)`` from a checkpoint, on ``device``, in eval mode."""
    from .config import config_from_dict
    from .tasks import build_reconstructor

    ck = path_or_ck if isinstance(path_or_ck, dict) else load_checkpoint(path_or_ck, device)
    cfg = config_from_dict(ck["config"])
    model = build_reconstructor(cfg, ck["model_meta"])
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as err:
        raise ValueError(
            f"checkpoint weights do not fit model {cfg.model.name!r}: {str(err).splitlines()[0]}"
        ) from None
    return model.to(device).eval(), cfg, ck
