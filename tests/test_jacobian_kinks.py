"""mrijac.jacobian.kinks: the copies of the fd penalty evaluated on their originals' activation
pattern compute the network's linearisation at the original, and the fd penalty's θ-gradient is
then the exact gradient of ‖J A v‖."""

import copy

import pytest
import torch
from torch import nn
from torch.func import jvp

from mrijac.jacobian import JacobianPenalty
from mrijac.jacobian.finite_diff import fd_power_step
from mrijac.jacobian.kinks import FrozenKinks, piecewise_activations
from mrijac.models import Reconstructor, plain_instance_norms
from mrijac.operators import SingleCoilMRI

DT = torch.float64


def _pl_net(shared: bool = False):
    """Linear layers with ReLU, LeakyReLU, in-place ReLU and in-place ReLU6 (a Hardtanh, whose
    in-place clamp hides which piece a value was on) between them;
    ``shared``: one LeakyReLU module called twice."""
    torch.manual_seed(0)
    leaky = nn.LeakyReLU(0.2)
    layers = [nn.Linear(6, 16), leaky, nn.Linear(16, 16), nn.ReLU(inplace=True), nn.Linear(16, 16)]
    layers += [leaky if shared else nn.ReLU6(inplace=True), nn.Linear(16, 16), nn.LeakyReLU(0.1), nn.Linear(16, 5)]
    return nn.Sequential(*layers).to(DT)


def _points(S=3, t=0.5):
    g = torch.Generator().manual_seed(1)
    y = torch.randn(S, 6, generator=g, dtype=DT)
    d = torch.randn(S, 6, generator=g, dtype=DT)
    return y, d, t


@pytest.mark.parametrize("shared", [False, True])
def test_copies_compute_the_linearisation_at_their_original(shared):
    net = _pl_net(shared)
    y, d, t = _points()
    lin = net(y) + t * jvp(net, (y,), (d,))[1]  # f(y) + t J(y) d: exact for the frozen pattern
    plain = net(y + t * d)
    assert (plain - lin).abs().max() > 1e-2  # the step crosses kinks: the test means something
    fk = FrozenKinks(net)
    assert len(fk.mods) == (3 if shared else 4)
    src = torch.arange(2 * 3) % 3  # two copies per original, as the fd step's two terms
    copies = torch.cat([y + t * d, y + t * d])
    with fk.record():
        out0 = net(y)
    with fk.apply(0, src):
        out1 = net(copies)
    assert fk.seen == 4  # every activation call, the shared module's twice
    torch.testing.assert_close(out0, net(y), rtol=0, atol=0)
    torch.testing.assert_close(out1, torch.cat([lin, lin]), rtol=1e-12, atol=1e-12)
    # the same pattern read from rows of the same pass; rows before `start` untouched
    with fk.apply(3, src, rows=torch.arange(3)):
        both = net(torch.cat([y, copies]))
    torch.testing.assert_close(both[:3], net(y), rtol=1e-12, atol=1e-12)  # batch size changes matmul rounding
    torch.testing.assert_close(both[3:], out1, rtol=1e-12, atol=1e-12)
    # nothing is left behind: the modules' own forward again, in-place flags untouched
    assert net[3].inplace is True and all("forward" not in m.__dict__ for m in fk.mods)
    torch.testing.assert_close(net(copies), torch.cat([plain, plain]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("slope", [0.0, 0.2, 0.01])
def test_linearised_activation_is_the_select_to_the_bit(dtype, slope):
    """The products ``x · m`` (``m`` 1 or the slope) that evaluate a frozen ReLU / LeakyReLU give
    the select ``where(region, x, x · slope)`` bit for bit: values, input gradients and the
    gradient of a gradient (double backward)."""
    from mrijac.jacobian.kinks import _linearised

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 6, generator=g, dtype=dtype, requires_grad=True)
    region = torch.randn(3, 4, 5, 6, generator=g) > 0
    mod = nn.ReLU() if slope == 0.0 else nn.LeakyReLU(slope)
    w = torch.randn(x.shape, generator=g, dtype=dtype)
    got, want = _linearised(mod, region, x), torch.where(region, x, x * slope)
    assert torch.equal(got, want)
    (gg,) = torch.autograd.grad((got * w).sum(), x, create_graph=True)
    (gw,) = torch.autograd.grad((want * w).sum(), x, create_graph=True)
    assert torch.equal(gg, gw)
    second = []
    for fn in (lambda z: _linearised(mod, region, z), lambda z: torch.where(region, z, z * slope)):
        z = x.detach().clone().requires_grad_()
        (h,) = torch.autograd.grad(fn(z).square().sum(), z, create_graph=True)
        second.append(torch.autograd.grad(h.sum(), z)[0])
    assert torch.equal(*second) and second[0].abs().sum() > 0
    # forward mode and torch.func transforms, as through the select
    t = torch.randn(x.shape, generator=g, dtype=dtype)
    x0 = x.detach()
    got_t = jvp(lambda z: _linearised(mod, region, z), (x0,), (t,))[1]
    assert torch.equal(got_t, jvp(lambda z: torch.where(region, z, z * slope), (x0,), (t,))[1])
    rows = torch.func.vmap(lambda z, r: _linearised(mod, r, z))(x0, region)
    assert torch.equal(rows, want.detach())


def test_frozen_kinks_refuses_what_it_cannot_match():
    net = _pl_net()
    y, d, t = _points()
    fk = FrozenKinks(net)
    with pytest.raises(RuntimeError, match="nothing recorded"):
        fk.apply(0, torch.arange(3))
    with fk.record():
        net(y)
    with pytest.raises(RuntimeError, match="source rows"), fk.apply(0, torch.arange(3)):
        net(torch.cat([y, y]))  # 6 rows from 0, 3 sources
    assert FrozenKinks(nn.Sequential(nn.Linear(2, 2), nn.Tanh())).mods == []  # nothing to freeze
    assert piecewise_activations(nn.Sequential(nn.ReLU6(), nn.Softplus())) != []


class _FunctionalReLU(nn.Module):
    def forward(self, x):
        return torch.nn.functional.relu(x)


@pytest.mark.parametrize("kink", [_FunctionalReLU(), nn.MaxPool1d(2, stride=1, padding=0)], ids=["F.relu", "maxpool"])
def test_kinks_outside_activation_modules_are_refused_not_crossed(kink):
    """A functional ReLU or a max-pooling has kinks FrozenKinks cannot freeze: the copies' pass
    raises, naming the call, instead of leaving the kink term in the gradient; the record pass
    and plain use are unaffected."""
    torch.manual_seed(0)
    last = nn.Linear(7 if isinstance(kink, nn.MaxPool1d) else 8, 3)
    net = nn.Sequential(nn.Linear(6, 8), nn.LeakyReLU(0.2), nn.Linear(8, 8), kink, last).to(DT)
    y, d, t = _points()
    fk = FrozenKinks(net)
    with fk.record():
        net(y)
    with pytest.raises(RuntimeError, match=r"(relu|max_pool).* outside an nn.ReLU"), fk.apply(0, torch.arange(3)):
        net(y + t * d)
    net(y + t * d)  # the guard is gone
    # the same through the penalty, for a network without any activation module
    recon, yy, A, v = _unet_problem()
    fn = recon.as_function(A)

    class Net(nn.Module):
        def forward(self, x):
            return torch.nn.functional.relu(fn(x))

    pen = JacobianPenalty(lambda_ja=1.0, method="fd", fd_kinks="freeze")
    with pytest.raises(RuntimeError, match="relu outside"):
        pen(Net(), yy, A)


def _unet_problem(B=2, N=16):
    from fastmri.models import Unet

    torch.manual_seed(0)
    recon = Reconstructor(Unet(2, 2, chans=4, num_pool_layers=2)).to(DT)
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(B, 1, N, dtype=DT)
    mask[..., N // 2 - 3 : N // 2 + 3] = 1
    mask[..., ::3] = 1
    A = SingleCoilMRI(mask, (N, N))
    y = A(A.random_input(generator=g, dtype=DT))
    v = A.random_input(generator=g, dtype=DT)
    v = v / v.reshape(B, -1).norm(dim=1).view(B, *[1] * (v.dim() - 1))
    return recon, y, A, v


def _grad(model, value):
    model.zero_grad()
    value.backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def _exact(recon, y, A, v):
    """∇θ Σ_b ‖J(y_b) A v_b‖ by reverse over forward mode, InstanceNorms as plain ops."""
    ref = copy.deepcopy(recon)
    plain_instance_norms(ref)
    _, t = jvp(ref.as_function(A), (y,), (A(v),))
    return _grad(ref, t.reshape(t.shape[0], -1).norm(dim=1).sum())


@pytest.mark.parametrize("kinks", ["freeze", "cross"])
def test_fd_penalty_gradient_is_exact_with_frozen_kinks(kinks):
    recon, y, A, v = _unet_problem()
    exact = _exact(recon, y, A, v)
    got = _grad(recon, sum(_surrogates(recon, y, A, v, kinks)))
    err = float((got - exact).norm() / exact.norm())
    if kinks == "freeze":  # curvature of the InstanceNorms only: O(h)
        assert err < 1e-2
        fine = _grad(recon, sum(_surrogates(recon, y, A, v, kinks, h=1e-6)))
        assert float((fine - exact).norm() / exact.norm()) < min(1e-4, err / 100)
    else:
        assert err > 0.05  # at h = 1e-3 units switch sign between y and y + t A v
    # JacobianPenalty passes the option on: one sample, whose term is its surrogate
    A0 = A.select(torch.tensor([0]))
    pen = JacobianPenalty(lambda_ja=1.0, method="fd", n_iter=1, fd_step=1e-3, fd_kinks=kinks)
    _, p, _ = pen(recon, y[:1], A0, v0={"v_ja": v[:1], "cold": torch.zeros(1, dtype=torch.bool)})
    one = _exact(recon, y[:1], A0, v[:1])
    err1 = float((_grad(recon, p) - one).norm() / one.norm())
    assert (err1 < 1e-2) if kinks == "freeze" else (err1 > 0.05)


def _surrogates(recon, y, A, v, kinks, h=1e-3, **kw):
    """The fd step's per-sample surrogates ``(B,)`` (value σ̂_b, gradient ∇θ σ̂_b), in a list."""
    _, surr, _ = fd_power_step(
        recon.as_function, y, A, [True], None, [v], h=h, kinks=recon if kinks == "freeze" else None, **kw
    )
    return [surr[0].sum()]


@pytest.mark.parametrize(
    "kw",
    [dict(share_forward=False), dict(recompute=True)],
    ids=["one_pass", "recompute"],
)
def test_frozen_kinks_give_the_same_step_on_every_path(kw):
    """The shared pass (the originals' f(y) from the Lanczos graph), the one-pass batch and the
    checkpointed copies freeze the same pattern: the same surrogates and θ-gradients; and with
    frozen kinks the estimates are the exact ‖J A v‖ of the vector the step used."""
    recon, y, A, v = _unet_problem()
    (s0,) = _surrogates(recon, y, A, v, "freeze", n_pre=2, pre_fd=True)
    base = _grad(recon, s0)
    (s1,) = _surrogates(recon, y, A, v, "freeze", n_pre=2, pre_fd=True, **kw)
    torch.testing.assert_close(s1, s0, rtol=1e-9, atol=0)
    other = _grad(recon, s1)
    assert float((other - base).norm() / base.norm()) < 1e-8


def test_fd_kinks_option_checks():
    with pytest.raises(ValueError, match="fd_kinks"):
        JacobianPenalty(lambda_ja=1.0, method="fd", fd_kinks="melt")
    recon, y, A, v = _unet_problem()
    pen = JacobianPenalty(lambda_ja=1.0, method="fd", fd_kinks="freeze")
    with pytest.raises(ValueError, match=r"fd_kinks='freeze'\) needs the network as a torch.nn.Module"):
        pen(lambda x: x.abs(), y, A)
    out, p, stats = pen(recon.as_function(A), y, A)  # a closure with .module is enough
    assert torch.isfinite(p)


def test_recorded_patterns_are_freed_with_the_frozen_kinks_object():
    """No reference cycle keeps a step's patterns: with the cyclic collector off, dropping the
    FrozenKinks object (and the copies' graph) frees them at once.  A context class defined per
    call used to hold them until a full collection: +42 MiB peak resident memory over 32
    training steps at 256², batch 1 (193 against 151 MiB; cost_lz3fd_fk_v2_cpu.md)."""
    import gc
    import weakref

    net = _pl_net()
    y, d, t = _points()
    was = gc.isenabled()
    gc.disable()
    try:
        fk = FrozenKinks(net)
        with fk.record():
            net(y)
        refs = [weakref.ref(p) for p in fk.store.values()]
        with fk.apply(0, torch.arange(3)):
            out = net((y + t * d).requires_grad_())
        assert all(r() is not None for r in refs)
        del fk, out
        assert all(r() is None for r in refs)
    finally:
        if was:
            gc.enable()


def test_fd_kinks_auto_freezes_a_module_crosses_for_a_callable_and_falls_back_with_a_warning():
    """``fd_kinks="auto"`` (the default): a network given as a module gets frozen kinks — the
    step of ``"freeze"`` to the bit; a plain callable has no modules to freeze and crosses them —
    the step of ``"cross"``; a network with a kink no module holds (a functional ReLU) warns,
    naming the call, and crosses them from then on — again the step of ``"cross"``.  At a step
    of 0.2 the copies do cross kinks, so the two settings differ."""
    recon, y, A, v = _unet_problem()
    fn = recon.as_function(A)

    def step(pen, f):
        recon.zero_grad()
        out, p, _ = pen(f, y, A, v0={"v_ja": v.clone()})
        (p + out.pow(2).sum()).backward()
        return p.detach(), torch.cat([q.grad.reshape(-1) for q in recon.parameters()])

    kw = dict(lambda_ja=1.0, method="fd", n_iter=1, fd_step=0.2)
    auto = JacobianPenalty(**kw)
    assert auto.fd_kinks == "auto"
    got, frozen = step(auto, recon), step(JacobianPenalty(fd_kinks="freeze", **kw), recon)
    assert all(torch.equal(a, b) for a, b in zip(got, frozen)) and auto.fd_kinks == "auto"
    crossed = step(JacobianPenalty(fd_kinks="cross", **kw), recon)
    assert not torch.allclose(crossed[1], frozen[1], rtol=1e-3)
    plain = lambda x: fn(x)  # noqa: E731  (no module attribute)
    got, want = step(JacobianPenalty(**kw), plain), step(JacobianPenalty(fd_kinks="cross", **kw), plain)
    assert all(torch.equal(a, b) for a, b in zip(got, want))

    class Clamped(nn.Module):  # the U-Net's kinks are modules, the last ReLU is a call
        def __init__(self):
            super().__init__()
            self.recon = recon

        def forward(self, x):
            return torch.nn.functional.relu(self.recon.as_function(A)(x) + 1.0)

    net = Clamped()
    auto = JacobianPenalty(**kw)
    with pytest.warns(UserWarning, match=r"crossing the kinks from now on .*relu outside an nn.ReLU"):
        got = step(auto, net)
    assert auto.fd_kinks == "cross"
    want = step(JacobianPenalty(fd_kinks="cross", **kw), net)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("name", ["unet", "dncnn", "fcnet", "edsr", "wdsr"])
def test_every_built_in_network_has_kinks_the_default_can_freeze(name):
    """``reg.fd_kinks=auto`` resolves to ``freeze`` for every model the CLI builds: each keeps its
    kinks in activation modules (no functional ReLU, no max-pooling — the pass would raise), and
    a frozen pass of perturbed rows is the linearisation at the originals (exactly, at a step
    that crosses kinks, where the network has no smooth nonlinearity)."""
    from mrijac.models import build_network

    torch.manual_seed(0)
    kw, shape = {
        "unet": (dict(in_chans=2, out_chans=2, chans=4, num_pool_layers=2), (2, 2, 16, 16)),
        "dncnn": (dict(in_chans=2, out_chans=2, depth=4, features=8), (2, 2, 12, 12)),
        "fcnet": (dict(q=12, p=20), (2, 12)),
        "edsr": (dict(scale=2, n_resblocks=2, n_feats=8), (2, 1, 8, 8)),
        "wdsr": (dict(scale=2, n_resblocks=2, n_feats=8), (2, 1, 8, 8)),
    }[name]
    net = build_network(name, **kw).to(DT).eval()  # eval: a DnCNN BatchNorm's running stats stay put
    if name == "unet":
        plain_instance_norms(net)  # forward mode below differentiates it
    fk = FrozenKinks(net)
    assert fk.mods, f"{name}: no activation module to freeze"
    g = torch.Generator().manual_seed(0)
    x, d = (torch.randn(shape, generator=g, dtype=DT) for _ in range(2))
    # with the pattern frozen, a network of affine layers is affine in the input: exact at a step
    # that crosses many kinks; the U-Net's InstanceNorms add curvature O(t)
    t = 1e-6 if name == "unet" else 0.5
    with fk.record():
        base = net(x)
    with fk.apply(0, torch.arange(shape[0])):
        moved = net(x + t * d)
    assert fk.seen > 0
    _, lin = jvp(net, (x,), (d,))
    assert torch.allclose((moved - base) / t, lin, rtol=1e-5, atol=1e-6 * float(lin.detach().abs().max()))
