"""Data losses ``l(f(y), x)`` averaged over the batch."""

from __future__ import annotations

import torch
from fastmri.losses import SSIMLoss

LOSSES = ("l2", "mse", "l1", "ssim")


def _as_image(t: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` or ``(B, C, H, W)`` -> ``(B, C, H, W)``."""
    return t[:, None] if t.dim() == 3 else t


class DataLoss(torch.nn.Module):
    """``l2``: the paper's ``||f(y) − x||₂`` per sample (eq. 5); ``mse``; ``l1``; ``ssim``:
    ``1 − SSIM`` (fastmri's ``SSIMLoss``, data range = each target's maximum, or ``max`` if
    given); or a weighted sum ``{name: weight}``.  Returns the batch mean."""

    def __init__(self, name: str = "l2", weights: dict | None = None):
        super().__init__()
        self.weights = dict(weights) if weights else {name: 1.0}
        bad = set(self.weights) - set(LOSSES)
        if bad:
            raise ValueError(f"loss names must be among {LOSSES}, got {sorted(bad)}")
        for k, w in self.weights.items():
            if not isinstance(w, (int, float)) or w < 0:
                raise ValueError(f"loss weight for {k} must be a number >= 0, got {w!r}")
        self.ssim = SSIMLoss() if "ssim" in self.weights else None

    @staticmethod
    def l2(out, target):
        return (out - target).reshape(out.shape[0], -1).norm(dim=1).mean()

    def forward(self, out, target, max_value: torch.Tensor | None = None):
        total = 0.0
        for name, w in self.weights.items():
            if name == "l2":
                val = self.l2(out, target)
            elif name == "mse":
                val = torch.nn.functional.mse_loss(out, target)
            elif name == "l1":
                val = torch.nn.functional.l1_loss(out, target)
            else:
                x, t = _as_image(out), _as_image(target)
                if x.dim() != 4:
                    raise ValueError("the ssim loss needs image outputs (B, H, W)")
                dr = max_value if max_value is not None else t.flatten(1).amax(1)
                val = self.ssim.to(x.device)(x.float(), t.float(), dr.to(x.device).float())
            total = total + w * val
        return total
