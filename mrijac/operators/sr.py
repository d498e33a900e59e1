"""Super-resolution degradation: blur with a kernel, then keep every ``factor``-th pixel."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LinearOperator

KERNELS = ("gaussian", "uniform", "bicubic")


def _cubic(t: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    t = t.abs()
    return torch.where(
        t <= 1,
        (a + 2) * t**3 - (a + 3) * t**2 + 1,
        torch.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, torch.zeros_like(t)),
    )


def make_kernel(
    kind: str, factor: int, kernel_size: int | None = None, sigma: float | None = None, dtype=torch.float64
) -> torch.Tensor:
    """2-D blur kernel ``(K, K)`` summing to one.

    ``gaussian``: ``exp(-r²/2σ²)`` on a ``K×K`` grid (default K = 5, σ = 1, the paper's);
    ``uniform``: box of size K (default ``factor``); ``bicubic``: the anti-aliased cubic kernel
    of MATLAB's ``imresize`` (Keys, a = -0.5), size ``4·factor``.
    """
    if kind == "gaussian":
        K = kernel_size or 5
        s = 1.0 if sigma is None else float(sigma)
        if s <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        t = torch.arange(K, dtype=dtype) - (K - 1) / 2
        k1 = torch.exp(-(t**2) / (2 * s**2))
    elif kind == "uniform":
        K = kernel_size or factor
        k1 = torch.ones(K, dtype=dtype)
    elif kind == "bicubic":
        K = kernel_size or 4 * factor
        t = (torch.arange(K, dtype=dtype) - (K - 1) / 2) / factor
        k1 = _cubic(t)
    else:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kind!r}")
    k1 = k1 / k1.sum()
    return torch.outer(k1, k1)


class BlurDownsample(LinearOperator):
    """``y = D_f (k ⋆ x)``: x ``(B, C, H, W)`` real -> y ``(B, C, H/f, W/f)``.

    The blur is a correlation with zero padding of ``(K-1)//2`` before and ``K//2`` after each
    axis ("same" size); decimation keeps pixels ``0, f, 2f, …``.  With the bicubic kernel this is
    MATLAB-``imresize``-style downscaling.  One kernel is shared by all samples and channels.

    Args:
        factor: decimation factor (2, 3 or 4 usually); ``H`` and ``W`` must be multiples of it.
        kernel: ``"gaussian"`` (5×5, σ = 1 by default, as in the paper), ``"uniform"`` or
            ``"bicubic"``, or a ``(K, K)`` tensor.
        shape: ``(C, H, W)`` of one input sample (needed by ``opnorm``/``random_input``).
    """

    complex_input = False

    def __init__(
        self,
        factor: int,
        kernel="gaussian",
        kernel_size: int | None = None,
        sigma: float | None = None,
        shape: tuple[int, int, int] | None = None,
    ):
        if int(factor) != factor or factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor}")
        self.factor = int(factor)
        if isinstance(kernel, str):
            kernel = make_kernel(kernel, self.factor, kernel_size, sigma)
        kernel = torch.as_tensor(kernel)
        if kernel.dim() != 2:
            raise ValueError(f"kernel must be a 2-D tensor, got shape {tuple(kernel.shape)}")
        self.kernel = kernel
        self.shape = tuple(shape) if shape is not None else None

    @property
    def batch_size(self):
        return 1

    @property
    def in_shape(self):
        if self.shape is None:
            raise ValueError("BlurDownsample needs shape=(C, H, W) for opnorm/random_input")
        return self.shape

    def _reference_tensor(self):
        return self.kernel

    def _pads(self):
        K0, K1 = self.kernel.shape
        return ((K1 - 1) // 2, K1 // 2, (K0 - 1) // 2, K0 // 2)

    def _check(self, x):
        if x.dim() != 4:
            raise ValueError(f"BlurDownsample expects (B, C, H, W), got {tuple(x.shape)}")
        H, W = x.shape[-2:]
        if H % self.factor or W % self.factor:
            raise ValueError(f"image size {H}x{W} is not a multiple of factor {self.factor}")

    def forward(self, x):
        self._check(x)
        B, C, H, W = x.shape
        k = self.kernel.to(
            x.dtype,
        ).to(x.device)[None, None]
        xp = F.pad(x.reshape(B * C, 1, H, W), self._pads())
        out = F.conv2d(xp, k)[..., :: self.factor, :: self.factor]
        return out.reshape(B, C, H // self.factor, W // self.factor)

    def adjoint(self, y):
        B, C, h, w = y.shape
        f = self.factor
        H, W = h * f, w * f
        k = self.kernel.to(y.dtype).to(y.device)[None, None]
        up = y.new_zeros(B * C, 1, H, W)
        up[..., ::f, ::f] = y.reshape(B * C, 1, h, w)
        full = F.conv_transpose2d(up, k)
        left, _, t, _ = self._pads()
        return full[..., t : t + H, left : left + W].reshape(B, C, H, W)

    def to(self, device=None, dtype=None):
        return BlurDownsample(self.factor, self.kernel.to(device=device, dtype=dtype), shape=self.shape)

    def select(self, index):
        return self

    @classmethod
    def cat(cls, ops):
        return ops[0]

    @classmethod
    def example(cls, batch, generator, dtype=torch.float64):
        return cls(2, "gaussian", shape=(2, 8, 6))
