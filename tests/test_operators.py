"""Shared tests for every registered operator, plus references (fastmri, sigpy)."""

import fastmri
import numpy as np
import pytest
import sigpy as sp
import sigpy.mri
import torch

from mrijac.operators import (
    BlurDownsample,
    GaussianCS,
    MultiCoilMRI,
    SingleCoilMRI,
    batch_dot,
    batch_norm2,
    registered_operators,
)
from mrijac.operators.masks import fastmri_mask, gaussian1d_mask, make_mask
from mrijac.operators.noise import add_noise, complex_gaussian_noise, sphere_noise

OPS = registered_operators()


def test_registry_has_all_operators():
    names = {c.__name__ for c in OPS}
    assert {"SingleCoilMRI", "MultiCoilMRI", "GaussianCS", "BlurDownsample"} <= names


def _explicit_matrix(A, b):
    """Real-view matrix of sample b of operator A (columns = images of basis vectors)."""
    x0 = A.random_input(batch=1, dtype=torch.float64)
    n = x0.numel() * (2 if x0.is_complex() else 1)
    cols = []
    for i in range(n):
        e = torch.zeros(n, dtype=torch.float64)
        e[i] = 1
        x = torch.view_as_complex(e.view(*x0.shape, 2)) if x0.is_complex() else e.view(x0.shape)
        y = A.select(slice(b, b + 1))(x) if A.batch_size > 1 else A(x)
        y = torch.view_as_real(y) if y.is_complex() else y
        cols.append(y.reshape(-1))
    return torch.stack(cols, 1)


@pytest.mark.parametrize("cls", OPS, ids=lambda c: c.__name__)
def test_adjointness(cls):
    g = torch.Generator().manual_seed(0)
    A = cls.example(batch=3, generator=g)
    x = A.random_input(batch=3, generator=g, dtype=torch.float64)
    y_shape = A(x).shape
    y = torch.randn(y_shape + ((2,) if A(x).is_complex() else ()), generator=g, dtype=torch.float64)
    y = torch.view_as_complex(y) if A(x).is_complex() else y
    lhs, rhs = batch_dot(A(x), y), batch_dot(x, A.adjoint(y))
    assert torch.allclose(lhs, rhs, rtol=1e-10, atol=0)
    assert ((lhs - rhs).abs() / lhs.abs()).max() < 1e-10
    # normal = adjoint(forward)
    assert torch.allclose(A.normal(x), A.adjoint(A(x)), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", OPS, ids=lambda c: c.__name__)
def test_opnorm_matches_explicit_svd(cls):
    g = torch.Generator().manual_seed(1)
    A = cls.example(batch=2, generator=g)
    est = A.opnorm(n_iter=500, generator=g, dtype=torch.float64)
    assert est.shape == (A.batch_size,)
    for b in range(A.batch_size):
        s = torch.linalg.svdvals(_explicit_matrix(A, b))[0]
        assert abs(est[b].item() - s.item()) / s.item() < 1e-6


@pytest.mark.parametrize("cls", OPS, ids=lambda c: c.__name__)
def test_partial_isometry_flag_is_true_exactly_when_a_ah_a_is_a(cls):
    """An operator that claims ``partial_isometry`` must satisfy ``A Aᴴ A = A`` on every
    sample's explicit matrix; one that does not claim it must not (or the penalty would tie
    ‖J‖ to ‖J A‖ wrongly / miss a free saving)."""
    g = torch.Generator().manual_seed(5)
    A = cls.example(batch=2, generator=g)
    for b in range(A.batch_size):
        M = _explicit_matrix(A, b)  # real view: (2·m or m) × (2·n or n), orthonormal bases
        holds = torch.allclose(M @ M.T @ M, M, atol=1e-10)
        assert holds == A.partial_isometry, (cls.__name__, holds)


@pytest.mark.parametrize("cls", OPS, ids=lambda c: c.__name__)
def test_select_and_cat_round_trip(cls):
    g = torch.Generator().manual_seed(2)
    A = cls.example(batch=3, generator=g)
    x = A.random_input(batch=3, generator=g, dtype=torch.float64)
    parts = [A.select(slice(i, i + 1)) for i in range(3)]
    B = cls.cat(parts)
    assert torch.allclose(B(x), A(x))
    assert torch.allclose(A.select(torch.tensor([2]))(x[2:3]), A(x)[2:3])


@pytest.mark.parametrize("cls", OPS, ids=lambda c: c.__name__)
def test_differentiable_forward_and_reverse(cls):
    g = torch.Generator().manual_seed(3)
    A = cls.example(batch=2, generator=g)
    x = A.random_input(batch=2, generator=g, dtype=torch.float64).requires_grad_()
    v = A.random_input(batch=2, generator=g, dtype=torch.float64)
    # reverse mode: grad of ||A x||²/2 is Aᴴ A x
    (grad,) = torch.autograd.grad(0.5 * batch_norm2(A(x)).pow(2).sum(), x)
    assert torch.allclose(grad, A.normal(x.detach()), atol=1e-10)
    # forward mode: tangent of a linear map is the map itself
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        t = fwAD.unpack_dual(A(fwAD.make_dual(x.detach(), v))).tangent
    assert torch.allclose(t, A(v), atol=1e-10)


def test_single_coil_equals_fastmri_fft2c_and_mask():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 16, 12, 2, generator=g, dtype=torch.float64)
    mask, _ = fastmri_mask("random", 12, 0.25, 4, seed=3)
    ref = fastmri.fft2c(x) * mask.view(1, 1, 12, 1).double()
    out = SingleCoilMRI(mask, (16, 12))(torch.view_as_complex(x))
    assert torch.allclose(torch.view_as_real(out), ref, atol=1e-12)
    back = SingleCoilMRI(mask, (16, 12)).adjoint(out)
    assert torch.allclose(torch.view_as_real(back), fastmri.ifft2c(ref), atol=1e-12)


def test_single_coil_per_sample_masks():
    m = torch.zeros(2, 1, 8)
    m[0, 0, :4] = 1
    m[1, 0, 4:] = 1
    A = SingleCoilMRI(m, (4, 8))
    x = A.random_input(batch=2, dtype=torch.float64)
    y = A(x)
    assert (y[0, :, 4:] == 0).all() and (y[1, :, :4] == 0).all()


def test_multicoil_equals_sigpy_sense():
    g = torch.Generator().manual_seed(5)
    C, H, W = 4, 10, 12
    sens = torch.view_as_complex(torch.randn(1, C, H, W, 2, generator=g, dtype=torch.float64))
    mask = (torch.rand(W, generator=g) < 0.5).double()
    x = torch.view_as_complex(torch.randn(1, H, W, 2, generator=g, dtype=torch.float64))
    A = MultiCoilMRI(mask, sens)
    S = sigpy.mri.linop.Sense(sens[0].numpy(), weights=np.broadcast_to(mask.numpy(), (H, W)))
    ref = S * x[0].numpy()
    assert np.allclose(A(x)[0].numpy(), ref, atol=1e-12)
    y = torch.view_as_complex(torch.randn(1, C, H, W, 2, generator=g, dtype=torch.float64))
    assert np.allclose(A.adjoint(y)[0].numpy(), S.H * (y[0].numpy()), atol=1e-12)


@pytest.mark.parametrize(
    "kernel,factor", [("gaussian", 2), ("gaussian", 4), ("uniform", 2), ("bicubic", 2), ("bicubic", 4)]
)
def test_blur_downsample_equals_sigpy(kernel, factor):
    g = torch.Generator().manual_seed(6)
    H, W = 16, 24
    A = BlurDownsample(factor, kernel, shape=(1, H, W))
    k = A.kernel.numpy()
    K0, K1 = k.shape
    x = torch.randn(1, 1, H, W, generator=g, dtype=torch.float64)
    # sigpy: full convolution with the flipped kernel (= correlation), crop to "same", decimate
    conv = sp.linop.ConvolveData((H, W), k[::-1, ::-1].copy(), mode="full")
    crop = sp.linop.Slice(conv.oshape, (slice(K0 // 2, K0 // 2 + H), slice(K1 // 2, K1 // 2 + W)))
    down = sp.linop.Downsample((H, W), (factor, factor))
    op = down * crop * conv
    ref = op * x[0, 0].numpy()
    assert np.allclose(A(x)[0, 0].numpy(), ref, atol=1e-12)
    y = torch.randn(1, 1, H // factor, W // factor, generator=g, dtype=torch.float64)
    assert np.allclose(A.adjoint(y)[0, 0].numpy(), op.H * y[0, 0].numpy(), atol=1e-12)


def test_blur_kernels_sum_to_one_and_errors():
    for kind in ("gaussian", "uniform", "bicubic"):
        assert abs(BlurDownsample(2, kind).kernel.sum().item() - 1) < 1e-12
    assert BlurDownsample(4, "bicubic").kernel.shape == (16, 16)
    with pytest.raises(ValueError, match="kernel must be one of"):
        BlurDownsample(2, "lanczos")
    with pytest.raises(ValueError, match="not a multiple of factor 4"):
        BlurDownsample(4)(torch.zeros(1, 1, 10, 8))


def test_gaussian_cs_seeded_and_scaled():
    A1, A2 = GaussianCS(160, 784, seed=7), GaussianCS(160, 784, seed=7)
    assert torch.equal(A1.matrix, A2.matrix)
    assert not torch.equal(A1.matrix, GaussianCS(160, 784, seed=8).matrix)
    var = A1.matrix.double().var().item()
    assert abs(var * 160 - 1) < 0.02  # N(0, 1/q) entries
    with pytest.raises(ValueError, match="positive q and p"):
        GaussianCS(0, 10)


def test_masks_seeded_and_reference():
    m1 = make_mask("random", (32, 64), 4, 0.08, seed=1)
    assert torch.equal(m1, make_mask("random", (32, 64), 4, 0.08, seed=1))
    assert not torch.equal(m1, make_mask("random", (32, 64), 4, 0.08, seed=2))
    from fastmri.data.subsample import RandomMaskFunc

    ref, _ = RandomMaskFunc([0.08], [4])((1, 32, 64, 2), seed=1)
    assert torch.equal(m1, ref.reshape(64).float())
    eq = make_mask("equispaced_fraction", (32, 64), 4, 0.08, seed=1)
    assert 14 <= eq.sum() <= 18
    p = make_mask("poisson", (32, 32), 4, seed=3)
    ref = sigpy.mri.poisson((32, 32), 4, calib=(3, 3), dtype=np.float32, seed=3)
    assert np.array_equal(p.numpy(), np.abs(ref))
    g1 = gaussian1d_mask(128, 4, 0.08, seed=5)
    assert torch.equal(g1, gaussian1d_mask(128, 4, 0.08, seed=5))
    assert g1.sum() == 32 and g1[60:68].all()
    # density falls off away from the centre on average
    many = torch.stack([gaussian1d_mask(128, 4, 0.08, seed=s) for s in range(50)]).mean(0)
    assert many[40:88].mean() > 2 * torch.cat([many[:20], many[-20:]]).mean()


@pytest.mark.parametrize("kind", ["random", "gaussian1d", "poisson", "equispaced"])
def test_masks_refuse_bad_parameters(kind):
    with pytest.raises(ValueError, match="acceleration must be >= 1"):
        make_mask(kind, (16, 16), 0.5)
    if kind != "poisson":
        with pytest.raises(ValueError, match="center_fraction"):
            make_mask(kind, (16, 16), 4, center_fraction=1.5)
    with pytest.raises(ValueError, match="mask type must be one of"):
        make_mask("spiral", (16, 16), 4)


def test_sphere_noise_radius_and_uniformity():
    g = torch.Generator().manual_seed(8)
    y = torch.zeros(4000, 3, dtype=torch.complex128)
    n = sphere_noise(y, 0.5, g)
    assert torch.allclose(batch_norm2(n), torch.full((4000,), 0.5, dtype=torch.float64))
    # uniform on the sphere: isotropic, E[n nᵀ] = ε²/d I in the real view (d = 6)
    r = torch.view_as_real(n).reshape(4000, 6)
    cov = r.T @ r / 4000
    assert torch.allclose(cov, torch.eye(6, dtype=torch.float64) * 0.25 / 6, atol=0.006)
    c = complex_gaussian_noise(torch.zeros(20000, dtype=torch.complex128), 2.0, g)
    assert abs(c.abs().pow(2).mean().item() - 4.0) < 0.15
    assert abs(c.real.var().item() - 2.0) < 0.1


def test_add_noise_masked_sphere():
    g = torch.Generator().manual_seed(9)
    y = torch.zeros(2, 4, 8, dtype=torch.complex128)
    mask = torch.zeros(1, 1, 8, dtype=torch.float64)
    mask[..., :3] = 1
    out = add_noise(y, "sphere", 0.1, mask=mask, generator=g)
    assert torch.allclose(batch_norm2(out), torch.full((2,), 0.1, dtype=torch.float64))
    assert (out[..., 3:] == 0).all()
    with pytest.raises(ValueError, match="noise kind"):
        add_noise(y, "poisson", 0.1)
