"""Forward operators ``A: x -> y`` with ``A(x)``, ``A.adjoint(y)``, ``A.normal(x)``, ``A.opnorm()``."""

from .base import LinearOperator, batch_dot, batch_norm2, registered_operators
from .cs import GaussianCS
from .masks import make_mask
from .mri import MultiCoilMRI, SingleCoilMRI, fft2c, ifft2c
from .noise import add_noise, complex_gaussian_noise, sphere_noise
from .sr import BlurDownsample

__all__ = [
    "LinearOperator",
    "SingleCoilMRI",
    "MultiCoilMRI",
    "GaussianCS",
    "BlurDownsample",
    "fft2c",
    "ifft2c",
    "make_mask",
    "sphere_noise",
    "complex_gaussian_noise",
    "add_noise",
    "batch_dot",
    "batch_norm2",
    "registered_operators",
]
