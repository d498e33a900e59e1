"""Automatic choice of the regularization weight (the paper's Algorithm 4)."""

from __future__ import annotations

import math


def auto_lambda(loss: float, penalty: float, gamma: float = 20.0) -> float:
    """``λ = 10^α / γ`` with ``α = ⌊log₁₀(loss / penalty)⌋``.

    The penalty is brought to the order of magnitude of the unregularized loss, then weighted
    down by ``γ`` (10, 20 or 30 in the paper; 20 usually best).

    Args:
        loss: unregularized data loss on a batch (> 0).
        penalty: magnitude of the penalty term on the same batch (> 0), before any λ.
        gamma: down-weighting factor (> 0).
    """
    for name, val in (("loss", loss), ("penalty", penalty), ("gamma", gamma)):
        if not math.isfinite(val) or val <= 0:
            raise ValueError(f"auto λ needs a positive finite {name}, got {val}")
    alpha = math.floor(math.log10(loss / penalty))
    return 10.0**alpha / gamma
