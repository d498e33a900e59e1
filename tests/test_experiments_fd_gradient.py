"""experiments/fd_gradient.py: its exact gradient and its fd gradient agree where they must — on a
smooth network as h → 0 — so what it reports for the piecewise-linear U-Net is the kinks' term,
which freezing them removes."""

import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import fd_gradient  # noqa: E402

from mrijac.models import Reconstructor  # noqa: E402
from mrijac.operators import SingleCoilMRI  # noqa: E402


def _unet(smooth: bool):
    from fastmri.models import Unet

    torch.manual_seed(0)
    net = Unet(2, 2, chans=4, num_pool_layers=2)
    if smooth:
        for mod in list(net.modules()):
            for name, child in list(mod.named_children()):
                if isinstance(child, nn.LeakyReLU):
                    setattr(mod, name, nn.Softplus(beta=5))
    return Reconstructor(net)


def _probe(N=16):
    mask = torch.zeros(1, 1, N)
    mask[..., N // 2 - 3 : N // 2 + 3] = 1
    mask[..., ::3] = 1
    A = SingleCoilMRI(mask, (N, N))
    return A(A.random_input(generator=torch.Generator().manual_seed(0))), A


def test_fd_gradient_tends_to_the_exact_one_on_a_smooth_network_and_not_through_kinks():
    probes = [_probe()]
    smooth = fd_gradient.measure(_unet(True), probes, [1e-2, 1e-7], lanczos=8)
    err = {(r["h"], r["dtype"]): r["rel_err"] for r in smooth}
    assert err[(1e-7, "float64")] < 1e-5  # the limit is the gradient of σ along v
    assert err[(1e-2, "float64")] > 10 * err[(1e-7, "float64")]  # truncation at a large step
    kinked = fd_gradient.measure(_unet(False), probes, [1e-4], lanczos=8, kinks=("cross", "freeze"))
    k64 = {r["kinks"]: r for r in kinked if r["dtype"] == "float64"}
    assert k64["cross"]["rel_err"] > 0.5  # LeakyReLU: units switching between y and y + t d
    assert k64["freeze"]["rel_err"] < 1e-2  # the copy on the original's pattern: the InstanceNorms' O(h) only
    lines = fd_gradient.report(
        smooth + kinked, type("A", (), dict(task="t", epochs=0, seed=0, slices=1, lanczos=8)), "m"
    )
    for row in ("| cross | 0.0001 |", "| freeze | 0.0001 |", "| cross | 1e-07 |"):
        assert any(ln.startswith(row) for ln in lines), row


def test_measure_takes_one_sample_per_probe():
    import pytest

    y, A = _probe()
    with pytest.raises(ValueError, match="one sample per probe"):
        fd_gradient.measure(
            _unet(True), [(torch.cat([y, y]), SingleCoilMRI(A.mask.expand(2, -1, -1), A.shape))], [1e-3], 2
        )
