"""CUDA checks (skipped without a GPU): operators, penalties and a training step agree with CPU."""

import pytest
import torch

from mrijac.jacobian import JacobianPenalty, spectral_norm
from mrijac.models import Reconstructor, Unet
from mrijac.operators import MultiCoilMRI, SingleCoilMRI, batch_dot

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_operators_on_cuda_match_cpu():
    g = torch.Generator().manual_seed(0)
    for A in (SingleCoilMRI.example(2, g), MultiCoilMRI.example(2, g)):
        x = A.random_input(batch=2, generator=g, dtype=torch.float64)
        Ac = A.to("cuda")
        assert torch.allclose(Ac(x.cuda()).cpu(), A(x), atol=1e-10)
        y = A(x)
        assert torch.allclose(batch_dot(Ac(x.cuda()), y.cuda()).cpu(), batch_dot(x, A.adjoint(y)), rtol=1e-10)


def test_penalty_and_step_on_cuda_match_cpu():
    torch.manual_seed(0)
    recon = Reconstructor(Unet(2, 2, chans=8, num_pool_layers=2)).double()
    A = SingleCoilMRI(torch.ones(32, dtype=torch.float64), (32, 32))
    y = A(A.random_input(batch=2, dtype=torch.float64))
    s_cpu = spectral_norm(recon.as_function(A), y, A, n_iter=20, generator=torch.Generator().manual_seed(1))
    rc, Ac = recon.cuda(), A.to("cuda")
    s_gpu = spectral_norm(rc.as_function(Ac), y.cuda(), Ac, n_iter=20, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(s_gpu.cpu(), s_cpu, rtol=1e-6)
    pen = JacobianPenalty("spectral", lambda_ja=1e-2, lambda_j=1e-2, n_iter=1)
    out, p, _ = pen(rc, y.cuda(), Ac)
    (out.pow(2).mean() + p).backward()
    assert all(q.grad is not None and torch.isfinite(q.grad).all() for q in rc.parameters())
