"""fastmri's end-to-end VarNet as a measurement-to-image reconstructor.

The unrolled network takes the masked k-space ``y`` and the mask of the operator ``A``
(estimating its own coil maps from the calibration lines), so the Jacobian penalties
differentiate the whole unrolled map ``y -> x̂``: data-consistency steps, refinement U-Nets and
the sensitivity network.  Column (Cartesian) masks only, as in fastMRI.
"""

from __future__ import annotations

import torch
from fastmri.models import VarNet
from torch import nn

from ..operators.base import expand_batch
from .reconstructor import center_crop


class VarNetReconstructor(nn.Module):
    """``f(y) = crop(VarNet(y, mask(A)))``: y ``(B, C, H, W)`` (or ``(B, H, W)`` single-coil)
    complex -> ``(B, h, w)`` RSS magnitude.

    Args:
        crop: output size ``(h, w)``; the rest are VarNet's (cascades, channels, pools).
    """

    def __init__(
        self,
        crop: tuple[int, int] | None = None,
        num_cascades: int = 12,
        chans: int = 18,
        pools: int = 4,
        sens_chans: int = 8,
        sens_pools: int = 4,
    ):
        super().__init__()
        self.net = VarNet(num_cascades, sens_chans, sens_pools, chans, pools)
        self.crop = tuple(crop) if crop is not None else None

    def forward(self, y: torch.Tensor, A) -> torch.Tensor:
        if A is None or not hasattr(A, "mask"):
            raise ValueError("VarNetReconstructor needs the MRI operator A (for its mask)")
        mask = A.mask
        if mask.shape[-2] != 1:
            raise ValueError(f"VarNet needs column (Cartesian) masks, got a 2-D mask of shape {tuple(mask.shape)}")
        k = y if y.dim() == 4 else y[:, None]
        B, W = k.shape[0], k.shape[-1]
        m = expand_batch(mask, B).expand(B, 1, W).reshape(B, 1, 1, W, 1).bool()
        out = self.net(torch.view_as_real(k), m)
        return center_crop(out, self.crop) if self.crop is not None else out

    def as_function(self, A=None):
        return lambda y: self(y, A)
