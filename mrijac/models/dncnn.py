"""DnCNN (Zhang et al. 2017): conv-ReLU, (conv-BN-ReLU) × (depth-2), conv; residual output."""

from __future__ import annotations

from torch import nn


class DnCNN(nn.Module):
    """``x -> x - r(x)`` with ``r`` a plain CNN of ``depth`` 3×3 conv layers.

    Args:
        in_chans/out_chans: channels (equal when ``residual``).
        depth: number of conv layers (5 as in the paper's cost table, 17 the usual DnCNN).
        features: channels of the hidden layers (64).
        batchnorm: BatchNorm in the middle layers (DnCNN's default).  In training mode it
            couples the samples of a batch, so per-sample Jacobians then include the batch
            statistics; pass ``False`` for strictly per-sample maps.
        residual: predict the residual (DnCNN) or the image itself.
    """

    def __init__(
        self,
        in_chans: int = 1,
        out_chans: int = 1,
        depth: int = 17,
        features: int = 64,
        batchnorm: bool = True,
        residual: bool = True,
    ):
        super().__init__()
        if depth < 2:
            raise ValueError(f"DnCNN depth must be >= 2, got {depth}")
        if residual and in_chans != out_chans:
            raise ValueError("a residual DnCNN needs in_chans == out_chans")
        layers = [nn.Conv2d(in_chans, features, 3, padding=1), nn.ReLU(inplace=False)]
        for _ in range(depth - 2):
            layers.append(nn.Conv2d(features, features, 3, padding=1, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(features))
            layers.append(nn.ReLU(inplace=False))
        layers.append(nn.Conv2d(features, out_chans, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self.residual = residual

    def forward(self, x):
        """x ``(B, in_chans, H, W)`` -> ``(B, out_chans, H, W)``."""
        r = self.body(x)
        return x - r if self.residual else r
