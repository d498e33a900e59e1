"""The paper's fully connected network for Gaussian compressed sensing."""

from __future__ import annotations

from torch import nn


class FCNet(nn.Module):
    """``q -> p -> p -> p`` linear layers with ReLU after all but the last.

    Input ``(B, q)`` measurements, output ``(B, p)`` image vector (784 for MNIST).
    """

    def __init__(self, q: int, p: int, hidden: int | None = None):
        super().__init__()
        h = hidden or p
        self.net = nn.Sequential(nn.Linear(q, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, p))

    def forward(self, y):
        return self.net(y)
