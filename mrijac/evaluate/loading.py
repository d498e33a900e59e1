"""A checkpoint and the validation task of a data folder, as evaluate and robustness need them."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import load_model
from ..runtime import resolve_device
from ..tasks import check_recon_size, make_task


def checkpoint_on_data(checkpoint, data, device: str = "auto"):
    """``(model, cfg, ck, task, device)``: the model of ``checkpoint`` in eval mode and the task
    of its config reading ``data`` as its validation split (loader workers off; MRI data of
    another reconstruction size refused, see :func:`~mrijac.tasks.check_recon_size`)."""
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"{data}: data folder not found")
    dev = resolve_device(device)
    model, cfg, ck = load_model(checkpoint, dev)
    cfg.data.num_workers = 0
    task = make_task(cfg, splits=("val",), paths={"val": data})
    check_recon_size(ck["model_meta"], task.datasets.get("val"), checkpoint)
    return model, cfg, ck, task, dev
