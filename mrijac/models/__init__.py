"""Reconstruction networks and the measurement-to-image wrapper."""

from __future__ import annotations

from fastmri.models import Unet

from ..names import MODELS  # noqa: F401  (re-exported)
from .dncnn import DnCNN
from .edsr import EDSR
from .fcnet import FCNet
from .norms import InstanceNormAD, plain_instance_norms
from .reconstructor import Reconstructor, center_crop, safe_abs
from .varnet import VarNetReconstructor
from .wdsr import WDSR


def build_network(name: str, **kwargs):
    """Network by name: ``unet`` (fastmri's Unet), ``dncnn``, ``fcnet``, ``edsr``, ``wdsr``."""
    table = {"unet": Unet, "dncnn": DnCNN, "fcnet": FCNet, "edsr": EDSR, "wdsr": WDSR, "varnet": VarNetReconstructor}
    if name not in table:
        raise ValueError(f"model must be one of {MODELS}, got {name!r}")
    try:
        return table[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for model {name!r}: {err}") from None


__all__ = [
    "InstanceNormAD",
    "plain_instance_norms",
    "Unet",
    "DnCNN",
    "FCNet",
    "EDSR",
    "WDSR",
    "Reconstructor",
    "VarNetReconstructor",
    "build_network",
    "center_crop",
    "safe_abs",
    "MODELS",
]
