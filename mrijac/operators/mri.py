"""Cartesian MRI forward operators with fastMRI's conventions.

``fft2c``/``ifft2c`` are fastmri's centred orthonormal 2-D FFTs applied to complex tensors
(fastmri works on real views with a trailing dimension of 2).  Masks select phase-encode
columns along the last axis; a mask is broadcastable to ``(B, H, W)``.
"""

from __future__ import annotations

import fastmri
import torch

from .base import LinearOperator, expand_batch


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D FFT over the last two axes of a complex tensor (= fastmri.fft2c)."""
    return torch.view_as_complex(fastmri.fft2c(torch.view_as_real(x)).contiguous())


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal inverse 2-D FFT over the last two axes (= fastmri.ifft2c)."""
    return torch.view_as_complex(fastmri.ifft2c(torch.view_as_real(k)).contiguous())


def as_mask(mask: torch.Tensor) -> torch.Tensor:
    """Normalise a sampling mask to a real tensor of shape ``(B|1, H|1, W)``.

    Accepted: ``(W,)`` column mask, ``(H, W)`` 2-D mask, ``(B, H|1, W)`` per-sample masks, and
    fastmri's ``(..., 1, W, 1)`` layout (trailing singleton for the real/imag axis).
    """
    mask = torch.as_tensor(mask)
    if mask.is_complex():
        raise ValueError("mask must be real or boolean, got a complex tensor")
    if mask.dim() >= 3 and mask.shape[-1] == 1 and mask.shape[-2] > 1:
        mask = mask[..., 0]  # fastmri layout (..., 1, W, 1)
    if mask.dim() == 1:
        mask = mask[None, None]
    elif mask.dim() == 2:
        mask = mask[None]
    elif mask.dim() > 3:
        if any(s != 1 for s in mask.shape[1:-2]):
            raise ValueError(f"mask of shape {tuple(mask.shape)} is not broadcastable to (B, H, W)")
        mask = mask.reshape(mask.shape[0], *mask.shape[-2:])
    if not mask.dtype.is_floating_point:
        mask = mask.to(torch.float32)
    return mask


class SingleCoilMRI(LinearOperator):
    """``y = M ⊙ fft2c(x)``: x ``(B, H, W)`` complex -> y ``(B, H, W)`` complex.

    Args:
        mask: sampling mask, see :func:`as_mask` (one per sample allowed).
        shape: ``(H, W)`` of the image; needed only when the mask is a column mask ``(W,)`` or
            ``(B, 1, W)`` and the operator must know ``H`` (``opnorm``, ``random_input``).
    """

    def __init__(self, mask: torch.Tensor, shape: tuple[int, int] | None = None):
        self.mask = as_mask(mask)
        H = shape[0] if shape is not None else self.mask.shape[-2]
        W = shape[1] if shape is not None else self.mask.shape[-1]
        if self.mask.shape[-1] != W or self.mask.shape[-2] not in (1, H):
            raise ValueError(f"mask of shape {tuple(self.mask.shape)} does not fit images {H}x{W}")
        self.shape = (H, W)

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    @property
    def in_shape(self):
        return self.shape

    def _reference_tensor(self):
        return self.mask

    def _mask(self, t):
        return expand_batch(self.mask, t.shape[0]).to(t.real.dtype)

    @property
    def partial_isometry(self) -> bool:
        """True for a 0/1 mask: ``A Aᴴ A = M³ F = M F = A`` (``F`` the unitary centred FFT)."""
        return bool(((self.mask == 0) | (self.mask == 1)).all())

    def forward(self, x):
        return self._mask(x) * fft2c(x)

    def adjoint(self, y):
        return ifft2c(self._mask(y) * y)

    def normal(self, x):
        m = self._mask(x)
        return ifft2c(m * m * fft2c(x))

    def to(self, device=None, dtype=None):
        return SingleCoilMRI(self.mask.to(device=device, dtype=dtype), self.shape)

    def select(self, index):
        if self.batch_size == 1:
            return self
        return SingleCoilMRI(self.mask[index], self.shape)

    @classmethod
    def cat(cls, ops):
        B = [op.batch_size for op in ops]
        H = max(op.mask.shape[-2] for op in ops)
        masks = [op.mask.expand(op.mask.shape[0], H, op.mask.shape[-1]) for op in ops]
        return cls(torch.cat(masks, 0), ops[0].shape) if sum(B) else ops[0]

    @classmethod
    def example(cls, batch, generator, dtype=torch.float64):
        H, W = 6, 8
        mask = (torch.rand(batch, 1, W, generator=generator) < 0.5).to(dtype)
        mask[..., W // 2] = 1
        return cls(mask, (H, W))


class MultiCoilMRI(LinearOperator):
    """SENSE: ``y_c = M ⊙ fft2c(S_c x)``: x ``(B, H, W)`` complex -> y ``(B, C, H, W)`` complex.

    Adjoint: ``x = Σ_c conj(S_c) ifft2c(M ⊙ y_c)``.

    Args:
        mask: sampling mask broadcastable to ``(B, H, W)`` (see :func:`as_mask`).
        sens_maps: coil sensitivities ``(B|1, C, H, W)`` complex.
    """

    def __init__(self, mask: torch.Tensor, sens_maps: torch.Tensor):
        sens_maps = torch.as_tensor(sens_maps)
        if sens_maps.dim() == 3:
            sens_maps = sens_maps[None]
        if sens_maps.dim() != 4 or not sens_maps.is_complex():
            raise ValueError(
                "sens_maps must be a complex tensor of shape (B, C, H, W), "
                f"got {tuple(sens_maps.shape)} {sens_maps.dtype}"
            )
        self.sens_maps = sens_maps
        self.mask = as_mask(mask)
        H, W = sens_maps.shape[-2:]
        if self.mask.shape[-1] != W or self.mask.shape[-2] not in (1, H):
            raise ValueError(
                f"mask of shape {tuple(self.mask.shape)} does not fit coil maps of shape {tuple(sens_maps.shape)}"
            )
        if self.mask.shape[0] not in (1, sens_maps.shape[0]) and sens_maps.shape[0] != 1:
            raise ValueError(f"mask batch {self.mask.shape[0]} and coil-map batch {sens_maps.shape[0]} differ")

    @property
    def batch_size(self):
        return max(self.mask.shape[0], self.sens_maps.shape[0])

    @property
    def num_coils(self):
        return self.sens_maps.shape[1]

    @property
    def in_shape(self):
        return tuple(self.sens_maps.shape[-2:])

    def _reference_tensor(self):
        return self.sens_maps

    def _params(self, t):
        B = t.shape[0]
        return (expand_batch(self.mask, B).to(t.real.dtype)[:, None], expand_batch(self.sens_maps, B))

    def forward(self, x):
        m, S = self._params(x)
        return m * fft2c(S * x[:, None])

    def adjoint(self, y):
        m, S = self._params(y)
        return (S.conj() * ifft2c(m * y)).sum(dim=1)

    def normal(self, x):
        m, S = self._params(x)
        return (S.conj() * ifft2c(m * m * fft2c(S * x[:, None]))).sum(dim=1)

    def to(self, device=None, dtype=None):
        cdtype = None
        if dtype is not None:
            cdtype = {torch.float64: torch.complex128, torch.float32: torch.complex64}.get(dtype, dtype)
        return MultiCoilMRI(self.mask.to(device=device, dtype=dtype), self.sens_maps.to(device=device, dtype=cdtype))

    def select(self, index):
        mask = self.mask if self.mask.shape[0] == 1 else self.mask[index]
        sens = self.sens_maps if self.sens_maps.shape[0] == 1 else self.sens_maps[index]
        return MultiCoilMRI(mask, sens)

    @classmethod
    def cat(cls, ops):
        B = [op.batch_size for op in ops]
        H = max(op.mask.shape[-2] for op in ops)
        masks = [expand_batch(op.mask, b).expand(b, H, op.mask.shape[-1]) for op, b in zip(ops, B)]
        sens = [expand_batch(op.sens_maps, b) for op, b in zip(ops, B)]
        return cls(torch.cat(masks, 0), torch.cat(sens, 0))

    @classmethod
    def example(cls, batch, generator, dtype=torch.float64):
        C, H, W = 3, 6, 8
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        mask = (torch.rand(batch, 1, W, generator=generator) < 0.5).to(dtype)
        mask[..., W // 2] = 1
        sens = torch.randn(batch, C, H, W, 2, generator=generator, dtype=dtype)
        return cls(mask, torch.view_as_complex(sens).to(cdtype))
