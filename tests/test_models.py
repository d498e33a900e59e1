import fastmri
import pytest
import torch
from torch import nn

from mrijac.jacobian import explicit_jacobian
from mrijac.models import EDSR, WDSR, DnCNN, FCNet, Reconstructor, Unet, build_network, center_crop, safe_abs
from mrijac.operators import MultiCoilMRI, SingleCoilMRI


def test_build_network_and_shapes():
    x = torch.randn(2, 2, 32, 32)
    assert build_network("unet", in_chans=2, out_chans=2, chans=4, num_pool_layers=2)(x).shape == x.shape
    assert isinstance(build_network("unet", in_chans=1, out_chans=1), Unet)
    d = build_network("dncnn", in_chans=2, out_chans=2, depth=5, features=8)
    assert d(x).shape == x.shape and sum(isinstance(m, nn.Conv2d) for m in d.modules()) == 5
    assert build_network("fcnet", q=160, p=784)(torch.randn(3, 160)).shape == (3, 784)
    lr = torch.randn(1, 1, 8, 12)
    for s in (2, 4):
        assert EDSR(scale=s, n_resblocks=2, n_feats=8)(lr).shape == (1, 1, 8 * s, 12 * s)
        assert WDSR(scale=s, n_resblocks=2, n_feats=8)(lr).shape == (1, 1, 8 * s, 12 * s)
    with pytest.raises(ValueError, match="model must be one of"):
        build_network("resnet")
    with pytest.raises(ValueError, match="bad arguments for model 'dncnn'"):
        build_network("dncnn", width=3)


def test_baseline_sizes():
    # EDSR baseline (16 blocks, 64 features, ×2) has about 1.37 M parameters with RGB
    n = sum(p.numel() for p in EDSR(scale=2, n_colors=3).parameters())
    assert 1.30e6 < n < 1.45e6
    n = sum(p.numel() for p in DnCNN(1, 1, depth=17).parameters())
    assert 0.55e6 < n < 0.57e6  # DnCNN-17: 556 k


def test_dncnn_residual_and_fcnet_relus():
    d = DnCNN(1, 1, depth=3, features=4, batchnorm=False)
    for p in d.parameters():
        nn.init.zeros_(p)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(d(x), x)  # zero residual: identity
    f = FCNet(5, 7)
    kinds = [type(m).__name__ for m in f.net]
    assert kinds == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert (f(torch.randn(100, 5)) < 0).any()  # no ReLU at the end


def test_reconstructor_zero_filled_matches_fastmri():
    g = torch.Generator().manual_seed(0)
    k = torch.randn(2, 20, 16, 2, generator=g, dtype=torch.float64)
    mask = torch.zeros(16, dtype=torch.float64)
    mask[::2] = 1
    A = SingleCoilMRI(mask, (20, 16))
    y = A.forward(torch.view_as_complex(fastmri.ifft2c(k)))
    ident = Reconstructor(nn.Identity(), complex_to="channels", crop=(12, 12), normalize=True)
    zf = fastmri.complex_abs(fastmri.ifft2c(k * mask.view(1, 1, 16, 1)))
    ref = fastmri.data.transforms.center_crop(zf, (12, 12))
    assert torch.allclose(ident(y, A), ref, atol=1e-10)
    mag = Reconstructor(nn.Identity(), complex_to="magnitude", normalize=False)
    assert torch.allclose(mag(y, A), zf, atol=1e-10)


@pytest.mark.parametrize("residual", [False, True])
def test_mri_dncnn_adds_its_input_once(residual):
    # DnCNN is residual by design; model.residual must not add the input a second time
    from mrijac.config import load_config
    from mrijac.tasks import build_reconstructor

    cfg = load_config(None, ["model.name=dncnn", "model.depth=3", "model.features=4", f"model.residual={residual}"])
    rec = build_reconstructor(cfg, {"crop": (8, 8)})
    for p in rec.parameters():
        nn.init.zeros_(p)
    A = SingleCoilMRI(torch.ones(8), (8, 8))
    y = A(A.random_input(batch=2, generator=torch.Generator().manual_seed(0)))
    zf = Reconstructor(nn.Identity(), crop=(8, 8))(y, A)
    assert torch.allclose(rec(y, A), zf, atol=1e-5)


def test_reconstructor_multicoil_and_options():
    g = torch.Generator().manual_seed(1)
    sens = torch.randn(1, 3, 8, 8, dtype=torch.complex64, generator=g)
    A = MultiCoilMRI(torch.ones(8), sens)
    net = Unet(2, 2, chans=4, num_pool_layers=1)
    r = Reconstructor(net)
    y = A(A.random_input(batch=2, generator=g))
    assert r(y, A).shape == (2, 8, 8)
    with pytest.raises(ValueError, match="needs the operator A"):
        r(y)
    with pytest.raises(ValueError, match="complex_to must be one of"):
        Reconstructor(net, complex_to="phase")


def test_safe_abs_gradient_is_finite_at_zero():
    z = torch.zeros(3, requires_grad=True)
    safe_abs(z, z).sum().backward()
    assert torch.isfinite(z.grad).all()
    with pytest.raises(ValueError, match="cannot crop"):
        center_crop(torch.zeros(4, 4), (5, 5))


def test_reconstructor_jacobian_is_whole_map():
    """With an identity network, f(y) = |Aᴴy| (no normalisation): J = d|x|/dx · Aᴴ."""
    g = torch.Generator().manual_seed(2)
    A = SingleCoilMRI(torch.ones(4, dtype=torch.float64), (3, 4))
    r = Reconstructor(nn.Identity(), normalize=False)
    y = A(A.random_input(batch=1, generator=g, dtype=torch.float64))
    J = explicit_jacobian(r.as_function(A), y)[0]
    x = A.adjoint(y)[0].reshape(-1)
    phase = torch.stack([x.real, x.imag], 1) / x.abs()[:, None]  # d|x|/d(re, im)
    D = torch.zeros(12, 24, dtype=torch.float64)
    for i in range(12):
        D[i, 2 * i : 2 * i + 2] = phase[i]
    Ah = explicit_jacobian(A.adjoint, y)[0]
    assert torch.allclose(J, D @ Ah, atol=1e-10)


def test_varnet_reconstructor_jacobian_and_penalty():
    """fastmri's VarNet as y -> x̂: the forward-mode JVP equals the explicit Jacobian of the
    whole unrolled map, and the penalty trains it."""
    from mrijac.jacobian import JacobianPenalty, jvp
    from mrijac.models import VarNetReconstructor, plain_instance_norms
    from mrijac.operators import make_mask

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    m = make_mask("equispaced_fraction", (16, 16), 4, 0.2, seed=0)
    sens = torch.randn(1, 2, 16, 16, dtype=torch.complex128, generator=g)
    A = MultiCoilMRI(m.double(), sens)
    r = VarNetReconstructor((12, 12), num_cascades=2, chans=4, pools=1, sens_chans=4, sens_pools=1).double()
    y = A(A.random_input(batch=1, generator=g, dtype=torch.float64))
    f = r.as_function(A)
    assert f(y).shape == (1, 12, 12)
    J = explicit_jacobian(f, y)[0]
    v = torch.randn(y.shape, dtype=torch.complex128, generator=g)
    _, t = jvp(f, y, v)
    assert torch.allclose(t.reshape(-1), J @ torch.view_as_real(v).reshape(-1), atol=1e-8)
    pen = JacobianPenalty("spectral", lambda_ja=0.1, lambda_j=0.1, n_iter=2)  # forward mode
    with pytest.raises(ValueError, match="InstanceNorm"):  # its U-Nets' fused norms: wrong 2nd derivatives
        pen(r, y, A)
    plain_instance_norms(r)
    out, p, st = pen(r, y, A)
    (out.pow(2).mean() + p).backward()
    assert all(q.grad is not None for q in r.parameters())
    with pytest.raises(ValueError, match="column"):
        r(y, MultiCoilMRI(torch.ones(16, 16, dtype=torch.float64), sens))


def test_plain_instance_norms_computes_what_the_fused_norm_does():
    """fastmri's Unet with its InstanceNorms written out: same output (float64), same state-dict
    keys; affine parameters are carried over as the same objects; running statistics refused."""
    from mrijac.models import InstanceNormAD, plain_instance_norms

    torch.manual_seed(0)
    net = Unet(2, 2, chans=4, num_pool_layers=2).double()
    x = torch.randn(3, 2, 16, 16, dtype=torch.float64)
    before, keys = net(x), set(net.state_dict())
    n_fused = sum(isinstance(m, nn.InstanceNorm2d) for m in net.modules())
    assert n_fused > 0 and plain_instance_norms(net) == n_fused
    assert not any(isinstance(m, nn.InstanceNorm2d) for m in net.modules())
    assert sum(isinstance(m, InstanceNormAD) for m in net.modules()) == n_fused
    assert not any(getattr(m, "inplace", False) for m in net.modules())  # fastmri's LeakyReLU(inplace=True)
    assert torch.allclose(net(x), before, atol=1e-10) and set(net.state_dict()) == keys
    affine = nn.Sequential(nn.InstanceNorm2d(3, affine=True, eps=1e-3))
    with torch.no_grad():
        affine[0].weight.uniform_(0.5, 2)
        affine[0].bias.uniform_(-1, 1)
    w, z = affine[0].weight, torch.randn(2, 3, 5, 7)
    ref = affine(z)
    assert plain_instance_norms(affine) == 1 and affine[0].weight is w
    assert torch.allclose(affine(z), ref, atol=1e-5)
    with pytest.raises(ValueError, match="running statistics"):
        plain_instance_norms(nn.Sequential(nn.InstanceNorm2d(3, track_running_stats=True)))
