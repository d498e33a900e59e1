"""Weight baselines (weight decay, spectral norm of the weights) against explicit values."""

import torch
from torch import nn

from mrijac.regularizers import WeightSpectralPenalty, weight_decay_penalty

DT = torch.float64


def test_weight_baselines():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Linear(5, 3)).to(DT)
    wd = weight_decay_penalty(net, 0.1)
    assert torch.allclose(wd, 0.1 * (net[0].weight.pow(2).sum() + net[2].weight.pow(2).sum()))
    sw = WeightSpectralPenalty(net, lam=2.0, n_iter=200)
    s = sw.sigmas()
    ref0 = torch.linalg.matrix_norm(net[0].weight.reshape(4, -1), ord=2)
    assert torch.allclose(s["0"], ref0, rtol=1e-6)
    val = sw()
    val.backward()
    # d/dW σ(W)² = 2σ u vᵀ: the gradient's spectral norm is λ σ
    g = net[2].weight.grad
    assert torch.allclose(
        torch.linalg.matrix_norm(g, ord=2), 2.0 * torch.linalg.matrix_norm(net[2].weight, ord=2), rtol=1e-6
    )
