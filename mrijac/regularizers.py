"""Regularizers in one place: the model-aware Jacobian penalties (:mod:`mrijac.jacobian`) and
the weight baselines defined here — weight decay (``wd``) and the spectral norm of the weights
(``sw``, Yoshida & Miyato 2017) — which constrain the parameters, not the input–output map."""

from __future__ import annotations

import torch
from torch import nn

from .jacobian import JacobianPenalty, PenaltySchedule

__all__ = ["JacobianPenalty", "PenaltySchedule", "WeightSpectralPenalty", "weight_decay_penalty"]


def _weight_layers(model: nn.Module):
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if (
            isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear))
            and isinstance(w, torch.Tensor)
            and w.requires_grad
        ):
            yield name, mod


def weight_decay_penalty(model: nn.Module, lam: float) -> torch.Tensor:
    """``λ Σ ||W||²`` over the weights of convolutional and linear layers (not biases/norms)."""
    total = sum(mod.weight.pow(2).sum() for _, mod in _weight_layers(model))
    return lam * total if torch.is_tensor(total) else torch.zeros(())


class WeightSpectralPenalty:
    """Spectral-norm regularization of the weights (Yoshida & Miyato 2017).

    ``(λ/2) Σ_l σ(W_l)²`` with ``σ(W_l)`` the largest singular value of layer ``l``'s weight
    reshaped to ``(out, in·k·k)`` (``(in, out·k·k)`` for transposed convolutions), estimated by
    ``n_iter`` power iterations per step with vectors kept between steps.
    """

    def __init__(self, model: nn.Module, lam: float, n_iter: int = 1, seed: int = 0):
        self.lam, self.n_iter = float(lam), int(n_iter)
        self.layers = dict(_weight_layers(model))
        g = torch.Generator().manual_seed(seed)
        self.u = {}
        for name, mod in self.layers.items():
            W = self._matrix(mod)
            self.u[name] = nn.functional.normalize(torch.randn(W.shape[0], generator=g, dtype=W.dtype), dim=0).to(
                W.device
            )

    @staticmethod
    def _matrix(mod):
        w = mod.weight
        if isinstance(mod, nn.ConvTranspose2d):
            w = w.transpose(0, 1)
        return w.reshape(w.shape[0], -1)

    def sigmas(self) -> dict[str, torch.Tensor]:
        """Differentiable ``σ(W_l)`` per layer (updates the stored vectors)."""
        out = {}
        for name, mod in self.layers.items():
            W = self._matrix(mod)
            u = self.u[name].to(W.device, W.dtype)
            with torch.no_grad():
                for _ in range(self.n_iter):
                    v = nn.functional.normalize(W.T @ u, dim=0)
                    u = nn.functional.normalize(W @ v, dim=0)
            self.u[name] = u
            out[name] = u @ W @ v
        return out

    def __call__(self) -> torch.Tensor:
        s = self.sigmas()
        return 0.5 * self.lam * sum(x.pow(2) for x in s.values())

    def state_dict(self) -> dict:
        return {"u": {k: v.cpu() for k, v in self.u.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.u = dict(state["u"])
