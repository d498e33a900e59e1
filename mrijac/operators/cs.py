"""Gaussian compressed sensing: ``y = A x`` with i.i.d. ``N(0, 1/q)`` entries."""

from __future__ import annotations

import torch

from .base import LinearOperator, expand_batch


class GaussianCS(LinearOperator):
    """x ``(B, p)`` real -> y ``(B, q)`` real, ``A`` a ``(q, p)`` matrix drawn from ``seed``.

    The matrix is a deterministic function of ``(q, p, seed)`` (a CPU ``torch.Generator``), so
    two operators built with the same arguments are equal on every device.  ``matrix`` may be
    given instead (``(q, p)`` shared, or ``(B, q, p)`` one per sample).
    """

    complex_input = False

    def __init__(
        self,
        q: int | None = None,
        p: int | None = None,
        seed: int = 0,
        matrix: torch.Tensor | None = None,
        dtype=torch.float32,
    ):
        if matrix is None:
            if q is None or p is None or q < 1 or p < 1:
                raise ValueError(f"GaussianCS needs positive q and p, got q={q}, p={p}")
            g = torch.Generator().manual_seed(int(seed))
            matrix = torch.randn(q, p, generator=g, dtype=torch.float64) / q**0.5
            matrix = matrix.to(dtype)
        if matrix.dim() == 2:
            matrix = matrix[None]
        if matrix.dim() != 3:
            raise ValueError(f"matrix must be (q, p) or (B, q, p), got {tuple(matrix.shape)}")
        self.matrix = matrix
        self.seed = seed

    @property
    def batch_size(self):
        return self.matrix.shape[0]

    @property
    def in_shape(self):
        return (self.matrix.shape[-1],)

    @property
    def out_shape(self):
        return (self.matrix.shape[-2],)

    def _reference_tensor(self):
        return self.matrix

    def forward(self, x):
        if self.batch_size == 1:
            return x @ self.matrix[0].to(x.dtype).T
        return torch.einsum("bqp,bp->bq", expand_batch(self.matrix, x.shape[0]).to(x.dtype), x)

    def adjoint(self, y):
        if self.batch_size == 1:
            return y @ self.matrix[0].to(y.dtype)
        return torch.einsum("bqp,bq->bp", expand_batch(self.matrix, y.shape[0]).to(y.dtype), y)

    def to(self, device=None, dtype=None):
        return GaussianCS(matrix=self.matrix.to(device=device, dtype=dtype), seed=self.seed)

    def select(self, index):
        return self if self.batch_size == 1 else GaussianCS(matrix=self.matrix[index])

    @classmethod
    def cat(cls, ops):
        if all(op.matrix is ops[0].matrix for op in ops) and ops[0].batch_size == 1:
            return ops[0]
        return cls(matrix=torch.cat([op.matrix for op in ops], 0))

    @classmethod
    def example(cls, batch, generator, dtype=torch.float64):
        return cls(matrix=torch.randn(batch, 5, 9, generator=generator, dtype=dtype) / 5**0.5)
