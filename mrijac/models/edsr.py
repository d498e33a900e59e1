"""EDSR baseline (Lim et al. 2017) for super-resolution."""

from __future__ import annotations

import math

from torch import nn


class ResBlock(nn.Module):
    def __init__(self, feats: int, res_scale: float = 1.0):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(feats, feats, 3, padding=1), nn.ReLU(), nn.Conv2d(feats, feats, 3, padding=1)
        )
        self.res_scale = res_scale

    def forward(self, x):
        return x + self.res_scale * self.body(x)


def upsampler(feats: int, scale: int, conv=nn.Conv2d) -> nn.Sequential:
    """Sub-pixel upsampling by ``scale`` (powers of 2 and 3)."""
    layers = []
    if scale & (scale - 1) == 0:
        for _ in range(int(math.log2(scale))):
            layers += [conv(feats, 4 * feats, 3, padding=1), nn.PixelShuffle(2)]
    elif scale == 3:
        layers += [conv(feats, 9 * feats, 3, padding=1), nn.PixelShuffle(3)]
    else:
        raise ValueError(f"upsampling scale must be a power of 2 or 3, got {scale}")
    return nn.Sequential(*layers)


class EDSR(nn.Module):
    """EDSR: head conv, ``n_resblocks`` residual blocks (no BN), global skip, upsampler, conv.

    Baseline size: 16 blocks, 64 features, ``res_scale`` 1.  ``(B, C, h, w) -> (B, C, s·h, s·w)``.
    """

    def __init__(
        self, scale: int = 2, n_colors: int = 1, n_resblocks: int = 16, n_feats: int = 64, res_scale: float = 1.0
    ):
        super().__init__()
        self.head = nn.Conv2d(n_colors, n_feats, 3, padding=1)
        self.body = nn.Sequential(
            *[ResBlock(n_feats, res_scale) for _ in range(n_resblocks)], nn.Conv2d(n_feats, n_feats, 3, padding=1)
        )
        self.tail = nn.Sequential(upsampler(n_feats, scale), nn.Conv2d(n_feats, n_colors, 3, padding=1))

    def forward(self, x):
        h = self.head(x)
        return self.tail(h + self.body(h))
