"""Jacobian products, norm estimates and penalties."""

from .bounds import data_floor, sigma_floor
from .finite_diff import fd_power_step
from .lam import auto_lambda
from .norms import frobenius_norm_sq, frobenius_terms, power_iteration, spectral_norm
from .penalties import JacobianPenalty, PenaltySchedule, PenaltyStats, WarmStart, terms_coincide
from .products import explicit_jacobian, jvp, operator_matrix, vjp
from .reference import ReferenceSigma, reference_sigma

__all__ = [
    "jvp",
    "vjp",
    "explicit_jacobian",
    "operator_matrix",
    "spectral_norm",
    "frobenius_norm_sq",
    "frobenius_terms",
    "power_iteration",
    "fd_power_step",
    "JacobianPenalty",
    "PenaltySchedule",
    "PenaltyStats",
    "WarmStart",
    "terms_coincide",
    "auto_lambda",
    "reference_sigma",
    "ReferenceSigma",
    "sigma_floor",
    "data_floor",
]
