"""K independent copies of the paper's fully connected network, trained as one.

A λ grid × seeds × strategies of small :class:`~mrijac.models.FCNet` trainings is hundreds of
models of 1–2 M parameters each; one at a time, a 2-core CPU spends most of its time in
Python and small matmuls.  :class:`FCStack` stores the K weight sets as ``(K, out, in)``
tensors so that each layer is one batched matmul for all models, and gives the input–output
Jacobian products of every model in closed form — for a ReLU network
``J(y) = W₃ D₂(y) W₂ D₁(y) W₁`` with ``D_l`` the 0/1 activation masks — so power iteration
and random projections cost one batched matmul per layer too (no autograd tape for the
products that need no gradient).  Adam is elementwise, so optimising the stacked tensors is
exactly K independent Adam runs.

Measured on a 2-core CPU (``experiments/mnist_cs.py --speedup 8``, 8 models, 2 epochs): 0.56×,
1.01× and 0.51× the speed of the same 8 one after the other in three runs (the last two on
2026-11-27) — no gain.  Not the matmuls (one ``bmm`` over 8 models is faster than 8 ``mm`` at these
shapes); a profile puts half the stacked step in memory-bound elementwise work (Adam's update,
masks, copies) on 8 × 5 MB of weights that no longer fit in cache.  The stack is meant for a
GPU, where K small models fill the device (not measured yet); the CPU quick protocol trains one
model per stack (``stack: 1``).
"""

from __future__ import annotations

import torch
from torch import nn

from .fcnet import FCNet


class FCStack(nn.Module):
    """K FCNets ``q -> h -> h -> p`` (ReLU after all but the last layer) as stacked weights.

    ``forward(y)``: ``y`` ``(K, N, q)`` (or ``(N, q)``, shared by all models) ``-> (K, N, p)``.
    Weights ``weights[l]`` ``(K, out_l, in_l)``, biases ``biases[l]`` ``(K, out_l)`` — the
    layout of ``nn.Linear``, so :meth:`from_models` / :meth:`model` convert exactly.
    """

    def __init__(self, K: int, q: int, p: int, hidden: int | None = None, generator: torch.Generator | None = None):
        super().__init__()
        h = hidden or p
        dims = [q, h, h, p]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            bound = d_in**-0.5  # nn.Linear's default initialisation
            w = (torch.rand(K, d_out, d_in, generator=generator) * 2 - 1) * bound
            b = (torch.rand(K, d_out, generator=generator) * 2 - 1) * bound
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))

    @property
    def K(self) -> int:
        return self.weights[0].shape[0]

    @property
    def dims(self) -> list[int]:
        return [self.weights[0].shape[2]] + [w.shape[1] for w in self.weights]

    @classmethod
    def from_models(cls, models: list[FCNet]) -> "FCStack":
        """Stack trained or freshly initialised :class:`FCNet` s (same sizes)."""
        lin = [[m for m in net.net if isinstance(m, nn.Linear)] for net in models]
        q, h, p = lin[0][0].in_features, lin[0][0].out_features, lin[0][-1].out_features
        stack = cls(len(models), q, p, h)
        with torch.no_grad():
            for layer in range(3):
                stack.weights[layer].copy_(torch.stack([ls[layer].weight for ls in lin]))
                stack.biases[layer].copy_(torch.stack([ls[layer].bias for ls in lin]))
        return stack

    def model(self, k: int) -> FCNet:
        """Model ``k`` as a plain :class:`FCNet` (a copy)."""
        q, h, _, p = self.dims
        net = FCNet(q, p, h).to(self.weights[0].device, self.weights[0].dtype)
        lin = [m for m in net.net if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for layer in range(3):
                lin[layer].weight.copy_(self.weights[layer][k])
                lin[layer].bias.copy_(self.biases[layer][k])
        return net

    def select(self, index) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Weights and biases of the models ``index`` (a slice: views; indices: gathers)."""
        return [w[index] for w in self.weights], [b[index] for b in self.biases]

    def forward_masks(self, y: torch.Tensor, index=None):
        """``(f(y), masks)``: outputs ``(K, N, p)`` and the activation masks ``D₁, D₂``
        (``(K, N, h)`` float 0/1) that define every Jacobian at ``y``."""
        ws, bs = (list(self.weights), list(self.biases)) if index is None else self.select(index)
        h = y if y.dim() == 3 else y.expand(ws[0].shape[0], *y.shape)
        masks = []
        for layer, (w, b) in enumerate(zip(ws, bs)):
            h = torch.baddbmm(b[:, None, :], h, w.transpose(1, 2))
            if layer < 2:
                m = (h > 0).to(h.dtype)
                masks.append(m)
                h = h * m
        return h, masks

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.forward_masks(y)[0]

    @staticmethod
    def jvp(ws: list[torch.Tensor], masks: list[torch.Tensor], t: torch.Tensor) -> torch.Tensor:
        """``J(y) t`` per model and sample: ``t`` ``(K, N, q) -> (K, N, p)``.  Differentiable
        with respect to ``ws`` (the masks are constant almost everywhere)."""
        t = torch.bmm(t, ws[0].transpose(1, 2)) * masks[0]
        t = torch.bmm(t, ws[1].transpose(1, 2)) * masks[1]
        return torch.bmm(t, ws[2].transpose(1, 2))

    @staticmethod
    def vjp(ws: list[torch.Tensor], masks: list[torch.Tensor], u: torch.Tensor) -> torch.Tensor:
        """``J(y)ᵀ u`` per model and sample: ``u`` ``(K, N, p) -> (K, N, q)``."""
        g = torch.bmm(u, ws[2]) * masks[1]
        g = torch.bmm(g, ws[1]) * masks[0]
        return torch.bmm(g, ws[0])

    def jacobian(self, y: torch.Tensor, index=None) -> torch.Tensor:
        """Explicit ``J(y)`` ``(K, N, p, q)`` (for evaluation on small probe sets)."""
        ws = list(self.weights) if index is None else self.select(index)[0]
        _, masks = self.forward_masks(y, index)
        # rows of W₁ scaled by D₁: (K, N, h, q), then W₂, D₂, W₃
        J = masks[0][..., None] * ws[0][:, None]
        J = masks[1][..., None] * torch.matmul(ws[1][:, None], J)
        return torch.matmul(ws[2][:, None], J)
