"""SVD coil compression: ``C`` physical coils -> ``N`` virtual coils.

With ``U`` the ``N`` leading left singular vectors of the coil-by-sample k-space matrix,
virtual k-space is ``Uᴴ k`` and, because the combination is the same at every pixel, the
virtual coil maps are ``Uᴴ S``: the SENSE operator with compressed maps maps an image to the
compressed k-space exactly as the original operator maps it to the original k-space.
"""

from __future__ import annotations

import torch


def compression_matrix(kspace: torch.Tensor, num_virtual: int) -> torch.Tensor:
    """``Uᴴ`` ``(N, C)`` from k-space ``(C, H, W)`` (complex); N ≤ C."""
    C = kspace.shape[0]
    if not 1 <= num_virtual <= C:
        raise ValueError(f"coil compression to {num_virtual} virtual coils needs 1 ≤ N ≤ {C} (the number of coils)")
    U, _, _ = torch.linalg.svd(kspace.reshape(C, -1).to(torch.complex128), full_matrices=False)
    return U[:, :num_virtual].conj().T.to(kspace.dtype)


def compress(t: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Apply ``Uᴴ`` ``(N, C)`` along the coil axis (-3) of ``(…, C, H, W)`` k-space or maps."""
    return torch.einsum("nc,...chw->...nhw", matrix, t)
