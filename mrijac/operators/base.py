"""Base class of the forward operators ``A: x -> y``.

Vocabulary used everywhere in mrijac: ``A(x)``, ``A.adjoint(y)``, ``A.normal(x)``,
``A.opnorm()``.  Operators are batched and stateless given their parameters (a mask, coil maps,
a matrix, a kernel): calling them never changes them.  Complex tensors are treated as real
vectors of twice the length, so the adjoint is taken with respect to the real inner product
``<a, b> = Re sum(conj(a) * b)``, which for complex-linear operators equals the usual
Hermitian adjoint.
"""

from __future__ import annotations

from typing import ClassVar

import torch

_REGISTRY: list[type] = []


def registered_operators() -> list[type]:
    """All concrete operator classes defined so far (used by the shared operator tests)."""
    return list(_REGISTRY)


def batch_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Real inner product per sample: ``Re sum_{i>0} conj(a_i) b_i`` -> ``(B,)`` real."""
    prod = torch.conj(a) * b if a.is_complex() else a * b
    if prod.is_complex():
        prod = prod.real
    return prod.reshape(prod.shape[0], -1).sum(dim=1)


def batch_norm2(a: torch.Tensor) -> torch.Tensor:
    """Euclidean norm per sample of a real or complex tensor (real view) -> ``(B,)``."""
    if a.is_complex():
        a = torch.view_as_real(a)
    return a.reshape(a.shape[0], -1).norm(dim=1)


def expand_batch(t: torch.Tensor, batch: int) -> torch.Tensor:
    """Match a parameter's leading batch dimension to a batch of ``batch`` samples.

    Size 1 broadcasts (no copy).  A batch that is a multiple ``k·B`` of the parameter's ``B``
    is read as ``k`` stacked copies of the same samples (the Jacobian tools stack several
    products of one batch this way), so the parameter is tiled ``k`` times.
    """
    B = t.shape[0]
    if B == batch or B == 1:
        return t
    if batch % B:
        raise ValueError(f"an operator for a batch of {B} cannot be applied to a batch of {batch}")
    return t.repeat(batch // B, *[1] * (t.dim() - 1))


class LinearOperator:
    _abstract = True
    """A batched linear map ``A: x -> y`` with its adjoint.

    Subclasses implement ``forward(x)``, ``adjoint(y)``, the properties ``batch_size``
    (1 for an operator shared by all samples) and ``in_shape`` (one sample's input shape), the
    flag ``complex_input``, ``to(device, dtype)`` and ``cat(ops)`` (batch several operators).
    ``example`` builds a small random instance for the shared tests.
    """

    complex_input: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("_abstract", False):
            _REGISTRY.append(cls)

    # --- interface -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def batch_size(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def in_shape(self) -> tuple[int, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def to(self, device=None, dtype=None) -> "LinearOperator":  # pragma: no cover - abstract
        raise NotImplementedError

    def select(self, index) -> "LinearOperator":  # pragma: no cover - abstract
        """The operator of the samples ``index`` (a slice or a 1-D index tensor)."""
        raise NotImplementedError

    @classmethod
    def cat(cls, ops: list["LinearOperator"]) -> "LinearOperator":  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def example(
        cls, batch: int, generator: torch.Generator, dtype=torch.float64
    ) -> "LinearOperator":  # pragma: no cover - abstract
        raise NotImplementedError

    # --- shared behaviour ------------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    @property
    def partial_isometry(self) -> bool:
        """``A Aᴴ A = A`` exactly (``Aᴴ A`` an orthogonal projection), e.g. a 0/1 sampling mask
        after a unitary transform.  Then a reconstructor that sees only ``Aᴴ y`` has
        ``‖J‖ = ‖J A‖`` (spectral and Frobenius; see
        :func:`mrijac.jacobian.penalties.terms_coincide`).  ``False`` unless an operator says so."""
        return False

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``Aᴴ A x``."""
        return self.adjoint(self.forward(x))

    def random_input(
        self, batch: int | None = None, generator: torch.Generator | None = None, dtype=torch.float32, device=None
    ) -> torch.Tensor:
        """Standard normal input of shape ``(batch, *in_shape)`` (complex if the operator is)."""
        batch = self.batch_size if batch is None else batch
        shape = (batch, *self.in_shape)
        if self.complex_input:
            re = torch.randn(shape + (2,), generator=generator, dtype=dtype)
            x = torch.view_as_complex(re.contiguous())
        else:
            x = torch.randn(shape, generator=generator, dtype=dtype)
        return x.to(device) if device is not None else x

    @torch.no_grad()
    def opnorm(
        self, n_iter: int = 50, generator: torch.Generator | None = None, dtype=None, device=None
    ) -> torch.Tensor:
        """Largest singular value ``||A||₂`` per sample by power iteration on ``Aᴴ A``.

        Returns a ``(batch_size,)`` real tensor (one value for a shared operator).
        """
        ref = self._reference_tensor()
        dtype = dtype or (ref.real.dtype if ref is not None else torch.float32)
        device = device or (ref.device if ref is not None else None)
        x = self.random_input(generator=generator, dtype=torch.float64 if dtype == torch.float64 else torch.float32).to(
            device
        )
        x = x / batch_norm2(x).clamp_min(1e-30).view(-1, *[1] * (x.dim() - 1))
        for _ in range(max(1, n_iter)):
            z = self.normal(x)
            x = z / batch_norm2(z).clamp_min(1e-30).view(-1, *[1] * (z.dim() - 1))
        return batch_norm2(self.forward(x))

    def _reference_tensor(self) -> torch.Tensor | None:
        """A parameter tensor whose device/dtype the operator lives on (None if none)."""
        return None
