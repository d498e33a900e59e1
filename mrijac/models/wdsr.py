"""WDSR-A baseline (Yu et al. 2018): wide activation, weight normalization."""

from __future__ import annotations

from torch import nn
from torch.nn.utils.parametrizations import weight_norm


def _wn_conv(cin, cout, k, padding=None):
    return weight_norm(nn.Conv2d(cin, cout, k, padding=k // 2 if padding is None else padding))


class WideBlock(nn.Module):
    def __init__(self, feats: int, expansion: int = 4, res_scale: float = 1.0):
        super().__init__()
        self.body = nn.Sequential(
            _wn_conv(feats, feats * expansion, 3), nn.ReLU(), _wn_conv(feats * expansion, feats, 3)
        )
        self.res_scale = res_scale

    def forward(self, x):
        return x + self.res_scale * self.body(x)


class WDSR(nn.Module):
    """WDSR-A: body of wide-activation blocks + a 5×5 skip branch, both sub-pixel upsampled.

    Baseline size: 16 blocks, 32 features, expansion 4.  ``(B, C, h, w) -> (B, C, s·h, s·w)``.
    """

    def __init__(
        self,
        scale: int = 2,
        n_colors: int = 1,
        n_resblocks: int = 16,
        n_feats: int = 32,
        expansion: int = 4,
        res_scale: float = 1.0,
    ):
        super().__init__()
        s2 = scale * scale * n_colors
        self.head = _wn_conv(n_colors, n_feats, 3)
        self.body = nn.Sequential(*[WideBlock(n_feats, expansion, res_scale) for _ in range(n_resblocks)])
        self.tail = nn.Sequential(_wn_conv(n_feats, s2, 3), nn.PixelShuffle(scale))
        self.skip = nn.Sequential(_wn_conv(n_colors, s2, 5), nn.PixelShuffle(scale))
        if scale not in (2, 3, 4):
            raise ValueError(f"WDSR scale must be 2, 3 or 4, got {scale}")

    def forward(self, x):
        return self.tail(self.body(self.head(x))) + self.skip(x)
