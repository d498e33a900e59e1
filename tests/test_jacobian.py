"""Jacobian tools against explicit Jacobians (torch.func) on small problems."""

import contextlib
import math

import pytest
import torch
from torch import nn

from mrijac.jacobian import (
    JacobianPenalty,
    auto_lambda,
    explicit_jacobian,
    frobenius_norm_sq,
    jvp,
    operator_matrix,
    spectral_norm,
    vjp,
)
from mrijac.models import DnCNN, Reconstructor
from mrijac.operators import GaussianCS, SingleCoilMRI

DT = torch.float64


def mlp_problem(seed=0, B=3):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    A = GaussianCS(matrix=torch.randn(7, 10, generator=g, dtype=DT) / 7**0.5)
    f = nn.Sequential(nn.Linear(7, 12), nn.Tanh(), nn.Linear(12, 10)).to(DT)
    y = A(torch.randn(B, 10, generator=g, dtype=DT))
    return f, y, A


def mri_problem(seed=0, B=2):
    """Complex k-space in, real magnitude image out: the MRI case, on a 6×8 image."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mask = (torch.rand(B, 1, 8, generator=g) < 0.6).to(DT)
    mask[..., 4] = 1
    A = SingleCoilMRI(mask, (6, 8))
    net = DnCNN(2, 2, depth=3, features=6, batchnorm=False).to(DT)
    recon = Reconstructor(net, normalize=True)
    y = A(A.random_input(generator=g, dtype=DT))
    return recon.as_function(A), y, A, recon


def multicoil_problem(seed=0, B=3):
    """SENSE (3 coils) k-space in, magnitude image out."""
    from mrijac.operators import MultiCoilMRI

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    A = MultiCoilMRI.example(B, g)
    recon = Reconstructor(DnCNN(2, 2, depth=3, features=6, batchnorm=False).to(DT))
    y = A(A.random_input(generator=g, dtype=DT))
    return recon.as_function(A), y, A, recon


def problem_with_jacobian(name, with_A):
    """``(f, y, A, op, M)``: a named problem, the operator of the term (``A`` or ``None``) and
    the explicit ``(B, m, n)`` Jacobian of that term."""
    f, y, A = {"mlp": mlp_problem, "mri": lambda: mri_problem()[:3], "multicoil": lambda: multicoil_problem()[:3]}[
        name
    ]()
    op = A if with_A else None
    return f, y, A, op, explicit_JA(f, y, op)


def explicit_JA(f, y, A):
    J = explicit_jacobian(f, y)
    if A is None:
        return J
    return J @ operator_matrix(A).expand(J.shape[0], -1, -1)


def test_jvp_vjp_match_explicit_jacobian_complex():
    f, y, A, _ = mri_problem()
    J = explicit_jacobian(f, y)  # (B, out, in): in = 2·48 real coordinates
    assert J.shape == (2, 48, 96)
    g = torch.Generator().manual_seed(1)
    v = torch.view_as_complex(torch.randn(*y.shape, 2, generator=g, dtype=DT))
    for method in ("forward", "double_vjp"):
        out, t = jvp(f, y, v, method=method)
        ref = (J @ torch.view_as_real(v).reshape(2, -1, 1)).reshape(t.shape)
        assert torch.allclose(t, ref, atol=1e-10)
        assert torch.allclose(out, f(y), atol=1e-12)
    u = torch.randn(out.shape, generator=g, dtype=DT)
    _, g_, _ = vjp(f, y, u)
    ref = (J.transpose(1, 2) @ u.reshape(2, -1, 1)).reshape(2, -1)
    assert torch.allclose(torch.view_as_real(g_).reshape(2, -1), ref, atol=1e-10)


@pytest.mark.parametrize("problem", ["mlp", "mri"])
@pytest.mark.parametrize("with_A", [True, False])
def test_spectral_norm_converges_to_explicit(problem, with_A):
    if problem == "mlp":
        f, y, A = mlp_problem()
    else:
        f, y, A, _ = mri_problem()
    A = A if with_A else None
    ref = torch.linalg.matrix_norm(explicit_JA(f, y, A), ord=2)
    est = spectral_norm(f, y, A, n_iter=300, generator=torch.Generator().manual_seed(0))
    assert est.shape == ref.shape
    assert ((est - ref).abs() / ref).max() < 1e-3
    assert (est <= ref * (1 + 1e-9)).all()  # a Rayleigh-type estimate never exceeds σ


def test_spectral_norm_monotone_in_n_iter_on_average():
    f, y, A, _ = mri_problem(B=4)
    ref = torch.linalg.matrix_norm(explicit_JA(f, y, A), ord=2)
    means = []
    for n in (1, 3, 10):
        ests = [spectral_norm(f, y, A, n_iter=n, generator=torch.Generator().manual_seed(s)) for s in range(10)]
        means.append((torch.stack(ests) / ref).mean().item())
    assert means[0] <= means[1] <= means[2] <= 1 + 1e-9
    assert means[2] > 0.9


def test_forward_and_double_vjp_agree():
    f, y, A = mlp_problem()
    s1 = spectral_norm(f, y, A, n_iter=5, method="forward", generator=torch.Generator().manual_seed(3))
    s2 = spectral_norm(f, y, A, n_iter=5, method="double_vjp", generator=torch.Generator().manual_seed(3))
    assert torch.allclose(s1, s2, rtol=1e-10)


def test_warm_start_returns_better_vector():
    f, y, A, _ = mri_problem(B=3)
    ref = torch.linalg.matrix_norm(explicit_JA(f, y, A), ord=2)
    s, u = spectral_norm(f, y, A, n_iter=1, return_vector=True, generator=torch.Generator().manual_seed(0))
    errs = [((s - ref).abs() / ref).mean().item()]
    for _ in range(30):
        s, u = spectral_norm(f, y, A, n_iter=1, u0=u, return_vector=True)
        errs.append(((s - ref).abs() / ref).mean().item())
    assert u.shape == f(y).shape  # left singular vectors live in the output space
    assert errs[-1] < errs[10] < errs[0]
    # a chain of k warm-started single iterations is exactly the same power iteration of one cold run
    cold = spectral_norm(f, y, A, n_iter=31, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(s, cold, rtol=1e-10)


@pytest.mark.parametrize("method", ["forward", "double_vjp"])
@pytest.mark.parametrize("with_A", [True, False])
def test_frobenius_unbiased(method, with_A):
    f, y, A, _ = mri_problem()
    A = A if with_A else None
    ref = explicit_JA(f, y, A).pow(2).sum(dim=(1, 2))
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([frobenius_norm_sq(f, y, A, n_proj=4, method=method, generator=g) for _ in range(300)])
    assert ((draws.mean(0) - ref).abs() / ref).max() < 0.05


def _param_grads(model):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in model.parameters()])


def _explicit_penalty(recon, y, A, l1, l2, vs=None):
    """``params -> λ1 max‖JA‖₂ + λ2 max‖J‖₂`` from explicit Jacobians (torch.func); with
    ``vs = (v_ja, v_j)`` the gains ``‖J A v_ja‖`` and ``‖J v_j‖`` along those vectors instead
    (``v_j=None``: the J term is the J A term's, as the tied penalty)."""
    M = operator_matrix(A)
    yr = torch.view_as_real(y)

    def penalty_of(params):
        sig_ja, sig_j = [], []
        for b in range(y.shape[0]):

            def g(vec, b=b):
                yb = torch.view_as_complex(vec.view(yr[b : b + 1].shape))
                return torch.func.functional_call(recon, params, (yb, A.select(slice(b, b + 1)))).reshape(-1)

            J = torch.func.jacrev(g)(yr[b].reshape(-1))
            if vs is None:
                sig_ja.append(torch.linalg.matrix_norm(J @ M[b], ord=2))
                sig_j.append(torch.linalg.matrix_norm(J, ord=2))
            else:
                sig_ja.append((J @ M[b] @ _vec(vs[0])[b]).norm())
                sig_j.append(sig_ja[-1] if vs[1] is None else (J @ _vec(vs[1])[b]).norm())
        return l1 * torch.stack(sig_ja).max() + l2 * torch.stack(sig_j).max()

    return penalty_of


def _explicit_grad(recon, penalty_of):
    params = {k: v.detach() for k, v in recon.named_parameters()}
    grads = torch.func.grad(penalty_of)(params)
    return torch.cat([grads[k].reshape(-1) for k, _ in recon.named_parameters()]), params


@pytest.mark.parametrize("tie", [True, False])
def test_penalty_gradient_matches_explicit_norm_gradient(tie):
    """∇θ of the spectral penalty = ∇θ of λ1 max‖JA‖₂ + λ2 max‖J‖₂ computed with torch.func
    (tie=True: one estimate serves both terms, as ‖J‖ = ‖J A‖ here)."""
    f_, y, A, recon = mri_problem(B=3)
    pen = JacobianPenalty("spectral", lambda_ja=0.7, lambda_j=0.3, n_iter=400, tie=tie)
    recon.zero_grad()
    out, p, stats = pen(f_, y, A, generator=torch.Generator().manual_seed(0))
    p.backward()
    got = _param_grads(recon)
    assert torch.allclose(out, f_(y))
    penalty_of = _explicit_penalty(recon, y, A, 0.7, 0.3)
    ref, params = _explicit_grad(recon, penalty_of)
    assert torch.allclose(p.detach(), penalty_of(params), rtol=1e-6)
    assert (got - ref).norm() / ref.norm() < 1e-4


def _right_singular_vectors(M, like):
    """Top right singular vector of each real-view matrix ``M[b]``, packed like ``like``."""
    V = torch.linalg.svd(M).Vh[:, 0]  # (B, in_real)
    return torch.view_as_complex(V.reshape(*like.shape, 2).contiguous())


@pytest.mark.parametrize("recompute,problem", [(False, "single"), (True, "single"), (False, "multi")])
def test_fd_penalty_value_and_gradient_at_the_singular_vectors(recompute, problem):
    """method='fd' started at the exact right singular vectors: value and ∇θ equal the
    explicit λ1 max‖JA‖₂ + λ2 max‖J‖₂ (finite-difference error only), the batch output is
    f(y), and the backward hands back the next power-iteration vectors Aᴴ Jᵀ u / ‖·‖."""
    f_, y, A, recon = (mri_problem if problem == "single" else multicoil_problem)(B=3)
    JA, J = explicit_JA(f_, y, A), explicit_jacobian(f_, y)
    x_like = A.adjoint(y)
    v0 = {"v_ja": _right_singular_vectors(JA, x_like), "v_j": _right_singular_vectors(J, y)}
    sig_ref = torch.linalg.matrix_norm(JA, ord=2)
    low = int(sig_ref.argmin())
    v0["v_ja"][low] = torch.randn_like(v0["v_ja"][low])  # a non-argmax sample far from converged
    # tie=False: the J term is estimated separately even where ‖J‖ = ‖J A‖ (single coil)
    pen = JacobianPenalty(
        "spectral", lambda_ja=0.7, lambda_j=0.3, method="fd", n_iter=1, recompute=recompute, tie=False
    )
    recon.zero_grad()
    out, p, stats = pen(recon, y, A, v0=v0)
    assert "v_ja" not in stats  # the vectors come with the backward pass
    p.backward()
    got = _param_grads(recon)
    assert torch.allclose(out, f_(y), atol=1e-12)
    penalty_of = _explicit_penalty(recon, y, A, 0.7, 0.3)
    ref, params = _explicit_grad(recon, penalty_of)
    assert torch.allclose(p.detach(), penalty_of(params), rtol=1e-6)
    assert (got - ref).norm() / ref.norm() < 1e-4
    # next vectors: one power-iteration step from v0, for every sample (argmax or not)
    for name, M in (("v_ja", JA), ("v_j", J)):
        v = torch.view_as_real(v0[name].reshape(3, -1)).reshape(3, -1)
        u = torch.nn.functional.normalize((M @ v[..., None])[..., 0], dim=1)
        w = torch.nn.functional.normalize((M.transpose(1, 2) @ u[..., None])[..., 0], dim=1)
        got_v = torch.view_as_real(stats[name].reshape(3, -1)).reshape(3, -1)
        assert torch.allclose(got_v, w, atol=1e-6), name
    keep = [b for b in range(3) if b != low]
    assert torch.allclose(stats["sigma_ja"][keep], sig_ref[keep], rtol=1e-6)
    assert stats["sigma_ja"][low] < sig_ref[low] * 0.99


def test_single_coil_terms_coincide_and_are_estimated_once():
    """Single-coil MRI with a 0/1 mask and a reconstructor that sees only Aᴴy: ‖J‖ = ‖J A‖
    (spectral and Frobenius, explicit Jacobians), and the tied fd penalty runs the network on
    half as many perturbed copies (value and gradient against the explicit penalty: the test
    below, tied and untied)."""
    from mrijac.jacobian import terms_coincide
    from mrijac.operators import MultiCoilMRI

    f_, y, A, recon = mri_problem(B=3)
    JA, J = explicit_JA(f_, y, A), explicit_jacobian(f_, y)
    assert torch.allclose(torch.linalg.matrix_norm(J, ord=2), torch.linalg.matrix_norm(JA, ord=2), rtol=1e-10)
    assert torch.allclose(torch.linalg.matrix_norm(J), torch.linalg.matrix_norm(JA), rtol=1e-10)
    assert terms_coincide(recon, A)
    assert not terms_coincide(recon, MultiCoilMRI.example(3, torch.Generator().manual_seed(0)))
    assert not terms_coincide(recon, SingleCoilMRI(A.mask * 0.5, (6, 8)))  # a weighted mask
    assert not terms_coincide(recon.as_function(A), A)  # a bare callable: unknown inputs
    rows = {}
    for tie in (True, False):
        seen = []
        hook = recon.net.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
        fd = JacobianPenalty("spectral", lambda_ja=0.7, lambda_j=0.3, method="fd", samples=1, tie=tie, rank="stored")
        _, _, stats = fd(recon, y, A, v0={"v_ja": A.adjoint(y), "v_j": y})
        hook.remove()
        rows[tie] = max(seen)
        assert set(stats.sigma) == {"ja", "j"}
    # the other samples + one copy per estimated term (the selected sample's f(y) comes from
    # the forward graph of the Lanczos steps)
    assert rows[True] == 2 + 1 and rows[False] == 2 + 2


def test_fd_penalty_converges_over_steps_and_on_argmax_samples():
    """Warm-started from step to step, the fused estimate climbs to the explicit σ; with
    ``samples=1`` the copy goes to the sample of largest priority only."""
    f_, y, A, recon = mri_problem(B=3)
    sig = torch.linalg.matrix_norm(explicit_JA(f_, y, A), ord=2)
    pen = JacobianPenalty("spectral", lambda_ja=1.0, method="fd")
    v0, hist = None, []
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        recon.zero_grad()
        _, p, st = pen(recon, y, A, v0=v0, generator=g)
        p.backward()
        v0 = {"v_ja": st["v_ja"]}
        hist.append(st["sigma_ja"])
    hist = torch.stack(hist)
    assert (hist <= sig * (1 + 1e-6)).all()  # a power-iteration estimate never overshoots
    assert torch.allclose(hist[-1], sig, rtol=2e-3)
    assert (hist[-1] - sig).abs().max() < (hist[0] - sig).abs().min()
    for recompute in (False, True):
        part = JacobianPenalty("spectral", lambda_ja=1.0, method="fd", samples=1, recompute=recompute, rank="stored")
        out, p, st = part(recon, y, A, v0=v0, priority=torch.tensor([0.1, 0.2, 0.9]))
        p.backward()
        assert st["index"].tolist() == [2] and st["v_ja"].shape[0] == 1
        assert torch.allclose(st["sigma_ja"], hist[-1][2:], rtol=1e-6)
        assert torch.allclose(out, f_(y), atol=1e-12)


def test_fd_penalty_first_visits_all_adds_every_unvisited_sample():
    """``first_visits="all"``: the rows without a stored vector are penalised on top of the
    ``samples`` of largest priority (in priority order); nothing stored: the whole batch;
    every row warm, or no stored vectors at all: the same rows as ``"ranked"``."""
    from mrijac.jacobian import WarmStart

    f_, y, A, recon = mri_problem(B=3)
    g = torch.Generator().manual_seed(0)
    vs = torch.randn(3, *A.in_shape, generator=g, dtype=y.dtype)
    prio = torch.tensor([0.1, 0.2, 0.9])
    kw = dict(lambda_ja=1.0, method="fd", samples=1)
    ranked = JacobianPenalty("spectral", rank="stored", **kw)
    every = JacobianPenalty("spectral", first_visits="all", **kw)
    cold = WarmStart({"v_ja": vs}, torch.tensor([True, False, False]))
    _, _, st_r = ranked(recon, y, A, v0=cold, priority=prio)
    _, p, st_a = every(recon, y, A, v0=cold, priority=prio)
    p.backward()
    assert st_r["index"].tolist() == [2] and st_a["index"].tolist() == [2, 0]
    assert st_a["v_ja"].shape[0] == 2 and st_a["first_visit"]
    assert torch.allclose(st_a["sigma_ja"][:1], st_r["sigma_ja"], rtol=1e-6)  # row 2: the same Lanczos steps
    _, _, st = every(recon, y, A, v0=None, priority=prio)
    assert "index" not in st and st["sigma_ja"].shape == (3,)
    warm = WarmStart({"v_ja": vs}, torch.zeros(3, dtype=torch.bool))
    assert every(recon, y, A, v0=warm, priority=prio)[2]["index"].tolist() == [2]
    novec = JacobianPenalty("spectral", first_visits="all", warm_start_vectors=False, **kw)
    assert novec(recon, y, A, v0=None, priority=prio)[2]["index"].tolist() == [2]
    with pytest.raises(ValueError, match="first_visits must be one of"):
        JacobianPenalty("spectral", first_visits="some", **kw)


@pytest.mark.parametrize("kinks", ["cross", "freeze"])
def test_fd_probe_is_the_jvp_norm_of_each_rows_vector(kinks):
    """``fd_probe``: per row ``‖J(y_b) A v_b‖`` of the unit vector given, to the forward
    difference's accuracy against a forward-mode JVP (float64), below the converged σ; frozen
    kinks read the pattern of the recorded pass of ``f(y)``."""
    from torch.func import jvp

    from mrijac.jacobian.finite_diff import fd_probe
    from mrijac.jacobian.kinks import FrozenKinks

    f, y, A, recon = mri_problem(B=3)
    g = torch.Generator().manual_seed(3)
    v = torch.randn(3, *A.in_shape, generator=g, dtype=y.dtype)
    fk = FrozenKinks(recon) if kinks == "freeze" else None
    with fk.record() if fk is not None else contextlib.nullcontext():
        out = f(y)
    got = fd_probe(f, y, A, [True], [v], out, fk=fk)
    u = v / v.reshape(3, -1).norm(dim=1).view(3, 1, 1)
    exact = jvp(f, (y,), (A(u),))[1].reshape(3, -1).norm(dim=1)
    torch.testing.assert_close(got, exact, rtol=1e-5, atol=0)
    ref = reference_sigma(f, y, A, tol=1e-8, max_iter=200)
    assert (got <= ref.sigma * (1 + 1e-6)).all() and (got < 0.99 * ref.sigma).any()
    # with two terms, the larger of the two bounds per row (J v in k-space, J A u in image space)
    w = torch.randn(*y.shape, generator=g, dtype=y.dtype)
    both = fd_probe(f, y, A, [True, False], [v, w], out, fk=fk)
    only_j = fd_probe(f, y, A, [False], [w], out, fk=fk)
    torch.testing.assert_close(both, torch.maximum(got, only_j), rtol=0, atol=0)


@pytest.mark.parametrize("kinks", ["cross", "freeze"])
def test_fd_penalty_rank_probe_penalises_the_row_of_largest_fresh_bound(kinks):
    """``rank="probe"``: the penalised row is the arg-max of the probes (not of the stale
    ``priority``), and once chosen the step is the ``"stored"`` step on that row — the same
    f(y), σ̂, penalty gradient and next vector; without stored vectors it falls back to
    ``priority``."""
    from mrijac.jacobian import WarmStart

    _, y, A, recon = mri_problem(B=3)
    g = torch.Generator().manual_seed(1)
    vs = torch.randn(3, *A.in_shape, generator=g, dtype=y.dtype)
    warm = WarmStart({"v_ja": vs}, torch.tensor([False, True, False]))
    kw = dict(lambda_ja=1.0, method="fd", samples=1, fd_kinks=kinks)
    probe = JacobianPenalty("spectral", rank="probe", **kw)
    stored = JacobianPenalty("spectral", rank="stored", **kw)

    def run(pen, prio):
        recon.zero_grad()
        out, p, st = pen(recon, y, A, v0=warm, priority=prio)
        (p + out.square().sum()).backward()
        return out.detach(), st, [q.grad.clone() for q in recon.parameters()]

    o_p, st_p, g_p = run(probe, torch.tensor([0.0, 0.0, 9.0]))  # the stale priority says row 2
    b = int(st_p["probe_sigma"].argmax())
    assert st_p["index"].tolist() == [b] and st_p["probe_sigma"].shape == (3,)
    prio = torch.zeros(3)
    prio[b] = 9.0
    o_s, st_s, g_s = run(stored, prio)
    assert st_s["index"].tolist() == [b]
    torch.testing.assert_close(o_p, o_s, rtol=1e-10, atol=1e-12)
    # f(y) of the sample comes from a batch of 3 here, of 1 there: rounding ~1e-16 over the step h ~ 5e-9
    torch.testing.assert_close(st_p["sigma_ja"], st_s["sigma_ja"], rtol=1e-7, atol=0)
    torch.testing.assert_close(st_p["v_ja"], st_s["v_ja"], rtol=1e-6, atol=1e-8)
    for a, c in zip(g_p, g_s):
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-8)
    # the probe is ‖J A v‖ of the row's vector; the Lanczos steps from that vector only raise it
    assert st_p["probe_sigma"][b] <= st_p["sigma_ja"][0] * (1 + 1e-6)
    _, _, st0 = probe(recon, y, A, v0=None, priority=torch.tensor([0.0, 0.0, 9.0]))
    assert st0["index"].tolist() == [2] and "probe_sigma" not in st0
    with pytest.raises(ValueError, match="rank must be one of"):
        JacobianPenalty("spectral", rank="fresh", **kw)
    with pytest.raises(ValueError, match="rank='probe' does not combine"):
        JacobianPenalty("spectral", rank="probe", recompute=True, **kw)


@pytest.mark.parametrize("kinks", ["cross", "freeze"])
def test_fd_penalty_rank_lanczos_is_the_whole_batch_step_without_the_other_copies(kinks):
    """``rank="lanczos"``: every row gets the whole batch's Lanczos steps, and only the row of
    largest bound its perturbed copy.  Against the whole batch (``samples=None``) from the same
    vectors: the same f(y), the same penalty value and parameter gradient (the whole batch's
    arg-max is that row; its other copies weigh ``OTHERS_WEIGHT``), the same fused σ̂ and next
    vector on that row; every other row keeps the bound and the next vector of its Lanczos steps
    (:func:`lanczos_start`), where the whole batch advances it by the fused step."""
    from mrijac.jacobian import WarmStart
    from mrijac.jacobian.finite_diff import default_step, fd_power_step

    f, y, A, recon = mri_problem(B=3)
    g = torch.Generator().manual_seed(1)
    vs = torch.randn(3, *A.in_shape, generator=g, dtype=y.dtype)
    vs = vs / vs.reshape(3, -1).norm(dim=1).view(3, 1, 1)
    warm = WarmStart({"v_ja": vs}, torch.tensor([False, True, False]))
    kw = dict(lambda_ja=1.0, method="fd", fd_kinks=kinks)

    def run(pen):
        recon.zero_grad()
        out, p, st = pen(recon, y, A, v0=warm, priority=torch.tensor([0.0, 0.0, 9.0]))
        (p + out.square().sum()).backward()
        return out.detach(), p.detach(), st, [q.grad.clone() for q in recon.parameters()]

    o_l, p_l, st_l, g_l = run(JacobianPenalty("spectral", rank="lanczos", samples=1, **kw))
    o_w, p_w, st_w, g_w = run(JacobianPenalty("spectral", **kw))
    assert "index" not in st_l and st_l["sigma_ja"].shape == (3,) and st_l["v_ja"].shape == vs.shape
    (v_next,), bound = lanczos_start(f, y, [A], [vs], 2, fd_step=default_step(y.real.dtype))
    b = int(bound[0].argmax())
    assert int(st_l["argmax_ja"]) == b == int(st_w["sigma_ja"].argmax())  # not the stale priority's row 2
    torch.testing.assert_close(st_l["lanczos_sigma"], bound[0], rtol=1e-10, atol=0)
    torch.testing.assert_close(o_l, o_w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(p_l, p_w, rtol=1e-7, atol=0)
    torch.testing.assert_close(st_l["sigma_ja"][b], st_w["sigma_ja"][b], rtol=1e-7, atol=0)
    torch.testing.assert_close(st_l["v_ja"][b], st_w["v_ja"][b], rtol=1e-6, atol=1e-8)
    for a, c in zip(g_l, g_w):  # the whole batch's other copies add 1e-6 × their σ's gradient
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-8)
    rest = [r for r in range(3) if r != b]
    torch.testing.assert_close(st_l["sigma_ja"][rest], bound[0][rest], rtol=1e-10, atol=0)
    torch.testing.assert_close(st_l["v_ja"][rest], v_next[rest], rtol=1e-10, atol=1e-12)
    assert not torch.allclose(st_w["v_ja"][rest], v_next[rest], rtol=1e-3)  # the whole batch moved them on
    assert st_l["first_visit"]  # row 1 is marked cold
    # λ auto, not calibrated yet: a real zero, not one shaped after the (complex) vectors stored first
    _, p0, _ = JacobianPenalty("spectral", rank="lanczos", samples=1, lambda_ja="auto", method="fd")(recon, y, A)
    assert p0.dtype == y.real.dtype and float(p0) == 0
    with pytest.raises(ValueError, match="sink_rows needs a sink"):
        fd_power_step(recon.as_function, y, A, [True], torch.tensor([0]), None, sink=None, sink_rows=torch.tensor([0]))
    with pytest.raises(ValueError, match="rank='lanczos' does not combine"):
        JacobianPenalty("spectral", rank="lanczos", first_visits="all", samples=1, **kw)


@pytest.mark.parametrize("n_iter", [1, 3])
def test_fd_in_float32_matches_forward_mode_jvp(n_iter):
    """The default relative step in float32: the fused σ̂ = ‖J A v‖ agrees with the forward-mode
    JVP of the same vector to 0.5 % on a U-Net (InstanceNorm) reconstructor (a step of 1e-3
    misses by 1.2 %, 1e-6 by 17 %).  After the default's two Lanczos steps, whose forward pass
    gives the unperturbed f(y) of the difference, σ̂ is the forward difference of separate
    passes to float32 rounding; along that near-top vector of this small untrained net the
    difference's truncation error at h = 1e-4 is larger (1.1 % on one sample, the same in
    float64), hence 1.5 % there."""
    from fastmri.models import Unet

    from mrijac.jacobian.finite_diff import default_step
    from mrijac.jacobian.vectors import fd_steps

    torch.manual_seed(0)
    recon = Reconstructor(Unet(2, 2, chans=8, num_pool_layers=2))
    mask = torch.zeros(2, 1, 32)
    mask[..., 12:20] = 1
    mask[0, ..., ::3] = 1
    mask[1, ..., 1::4] = 1
    A = SingleCoilMRI(mask, (32, 32))
    y = A(A.random_input())
    v = torch.nn.functional.normalize(A.random_input().reshape(2, -1), dim=1).reshape(2, 32, 32)
    # the separate passes below cross the kinks, as the copies do with fd_kinks="cross"
    pen = JacobianPenalty("spectral", lambda_ja=1.0, method="fd", n_iter=n_iter, fd_kinks="cross")
    _, p, st = pen(recon, y, A, v0={"v_ja": v.clone(), "cold": torch.zeros(2, dtype=torch.bool)})
    f = recon.as_function(A)
    h = default_step(torch.float32)
    if n_iter > 1:
        (v,), _ = lanczos_start(f, y, [A], [v], n_iter - 1, fd_step=h)
        t = fd_steps(y, A(v), h).view(-1, 1, 1)
        with torch.no_grad():
            sep = ((f(y + t * A(v)) - f(y)) / t).reshape(2, -1).norm(dim=1)
        assert torch.allclose(st["sigma_ja"], sep, rtol=1e-4)
    _, jv = jvp(f, y, A(v))
    ref = jv.reshape(2, -1).norm(dim=1)
    assert torch.allclose(st["sigma_ja"], ref, rtol=5e-3 if n_iter == 1 else 1.5e-2)


def test_fd_refuses_batchnorm_autocast_and_frobenius():
    torch.manual_seed(0)
    recon = Reconstructor(DnCNN(2, 2, depth=3, features=4, batchnorm=True))
    A = SingleCoilMRI(torch.ones(8), (8, 8))
    y = A(A.random_input(batch=2))
    pen = JacobianPenalty("spectral", lambda_ja=1.0, method="fd")
    with pytest.raises(ValueError, match="BatchNorm"):
        pen(recon, y, A)
    with pytest.raises(ValueError, match="BatchNorm"):  # the module behind a Reconstructor's closure too
        pen(recon.as_function(A), y, A)
    recon.eval()
    pen(recon, y, A)  # frozen statistics: per-sample again
    with pytest.raises(ValueError, match="autocast"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pen(recon, y, A)
    with pytest.raises(ValueError, match="spectral"):
        JacobianPenalty("frobenius", lambda_ja=1.0, method="fd")
    # dropout draws other masks for a sample and its perturbed copy: refused in training, fine in eval
    drop = Reconstructor(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Dropout2d(0.2)))
    with pytest.raises(ValueError, match=r"1 is a Dropout \(p=0.2\) in training mode"):
        pen(drop, y, A)
    with pytest.raises(ValueError, match="Dropout"):
        pen(drop.as_function(A), y, A)
    drop.eval()
    pen(drop, y, A)
    with pytest.raises(ValueError, match="fd_step"):
        JacobianPenalty("spectral", lambda_ja=1.0, method="fd", fd_step=2.0)


def test_alternate_terms():
    """``alternate``: one term per penalised step, in turn, weighted × 2."""
    f, y, A = mlp_problem()
    pen = JacobianPenalty("spectral", lambda_ja=0.5, lambda_j=0.25, n_iter=30, alternate=True, every=2)
    seen = []
    for step in range(8):
        _, p, st = pen(f, y, A, step=step)
        if step % 2:
            assert st == {}
            continue
        (t,) = [k[5:] for k in st if k.startswith("term_")]
        seen.append(t)
        lam = 0.5 if t == "ja" else 0.25
        assert torch.allclose(p, 2 * 2 * lam * st[f"term_{t}"])
    assert seen == ["ja", "j", "ja", "j"]


def test_frobenius_penalty_gradient_unbiased():
    f, y, A = mlp_problem(B=2)
    W = dict(f.named_parameters())

    def explicit(params):
        tot = 0
        for b in range(2):
            J = torch.func.jacrev(lambda yy: torch.func.functional_call(f, params, (yy[None],))[0])(y[b])
            tot = tot + 0.5 * (J @ A.matrix[0]).pow(2).sum() + 0.2 * J.pow(2).sum()
        return tot

    ref = torch.func.grad(explicit)({k: v.detach() for k, v in W.items()})
    ref = torch.cat([ref[k].reshape(-1) for k in W])
    pen = JacobianPenalty("frobenius", lambda_ja=0.5, lambda_j=0.2, n_proj=64)
    g = torch.Generator().manual_seed(0)
    acc = 0
    for _ in range(50):
        f.zero_grad()
        _, p, _ = pen(f, y, A, generator=g)
        p.backward()
        acc = acc + _param_grads(f)
    assert (acc / 50 - ref).norm() / ref.norm() < 0.05


def test_penalty_trains_fastmri_unet_with_forward_mode():
    from fastmri.models import Unet

    from mrijac.models import plain_instance_norms

    torch.manual_seed(0)
    recon = Reconstructor(Unet(2, 2, chans=4, num_pool_layers=2))
    fused = Reconstructor(Unet(2, 2, chans=4, num_pool_layers=2))
    plain_instance_norms(recon)  # what the trainer does for forward mode
    A = SingleCoilMRI(torch.ones(16), (16, 16))
    y = A(A.random_input(batch=2))
    pen = JacobianPenalty("spectral", lambda_ja=1.0, lambda_j=1.0, n_iter=2, method="forward")
    out, p, stats = pen(recon.as_function(A), y, A)
    (out.pow(2).mean() + p).backward()
    assert all(q.grad is not None and torch.isfinite(q.grad).all() for q in recon.parameters())
    assert set(stats) >= {"sigma_ja", "sigma_j", "u_ja", "u_j"}
    # the double-vjp trick: with the norms written out it trains too (through the fused
    # InstanceNorm torch has no third derivative; the penalty refuses it before that)
    pen2 = JacobianPenalty("spectral", lambda_ja=1.0, n_iter=1, method="double_vjp")
    recon.zero_grad()
    pen2(recon.as_function(A), y, A)[1].backward()
    assert all(q.grad is not None and torch.isfinite(q.grad).all() for q in recon.parameters())
    with pytest.raises(ValueError, match="InstanceNorm"):
        pen2(fused.as_function(A), y, A)


def test_penalty_every_k_steps_and_scaling():
    f, y, A = mlp_problem()
    pen = JacobianPenalty("spectral", lambda_ja=1.0, n_iter=50, every=4)
    out, p, stats = pen(f, y, A, step=1)
    assert p.item() == 0 and stats == {}
    out, p, stats = pen(f, y, A, step=4)
    assert torch.allclose(p, 4 * stats["sigma_ja"].max(), rtol=1e-6)


def test_auto_lambda():
    assert math.isclose(auto_lambda(0.5, 0.003, gamma=20), 100 / 20)  # log10(166) -> 2
    assert math.isclose(auto_lambda(2e-3, 40.0, gamma=10), 1e-5 / 10)  # log10(5e-5) -> -5
    with pytest.raises(ValueError, match="penalty"):
        auto_lambda(1.0, 0.0)
    f, y, A = mlp_problem()
    pen = JacobianPenalty("spectral", lambda_ja="auto", lambda_j=0.1, n_iter=3)
    out, p, stats = pen(f, y, A)
    loss = out.pow(2).mean()
    chosen = pen.calibrate(loss.item(), stats)
    assert chosen["lambda_ja"] == auto_lambda(loss.item(), stats["term_ja"].item(), 20)
    assert torch.allclose(pen.weighted(stats), chosen["lambda_ja"] * stats["term_ja"] + 0.1 * stats["term_j"])
    assert stats["coincide"] is False  # a plain callable: the norms are not known to coincide
    # single-coil MRI with a reconstructor of Aᴴy: the two norms coincide, and a step that measured
    # only the J term (alternating) sets both automatic λs
    _, y, A, recon = mri_problem(B=2)
    alt = JacobianPenalty("spectral", lambda_ja="auto", lambda_j="auto", alternate=True)
    out, p, stats = alt(recon, y, A, step=1)
    assert stats["coincide"] is True and "term_j" in stats and "term_ja" not in stats
    chosen = alt.calibrate(13.0, stats)
    assert chosen["lambda_ja"] == chosen["lambda_j"] == auto_lambda(13.0, stats["term_j"].item(), 20)


def test_penalty_refuses_bad_options():
    with pytest.raises(ValueError, match="kind"):
        JacobianPenalty("nuclear")
    with pytest.raises(ValueError, match="lambda_ja"):
        JacobianPenalty(lambda_ja=-1)
    with pytest.raises(ValueError, match="method"):
        spectral_norm(lambda y: y, torch.zeros(1, 3), method="finite")


def test_penalty_on_argmax_samples_keeps_the_gradient():
    """``samples=k``: the graph only for the k samples of largest σ; same value and gradient
    as the full-batch max when the argmax is among them."""
    _, y, A, recon = mri_problem(B=4)
    full = JacobianPenalty("spectral", lambda_ja=1.0, n_iter=300)
    recon.zero_grad()
    out_f, p_f, st = full(recon, y, A, generator=torch.Generator().manual_seed(0))
    p_f.backward()
    g_full = _param_grads(recon)
    part = JacobianPenalty("spectral", lambda_ja=1.0, n_iter=300, samples=1)
    recon.zero_grad()
    out_p, p_p, st_p = part(recon, y, A, generator=torch.Generator().manual_seed(0), priority=st["sigma_ja"])
    p_p.backward()
    assert st_p["index"].tolist() == [int(st["sigma_ja"].argmax())]
    assert torch.allclose(out_p, out_f, atol=1e-12)  # every sample's output, in batch order
    assert torch.allclose(p_p, p_f, rtol=1e-6)
    assert (_param_grads(recon) - g_full).norm() / g_full.norm() < 1e-4
    with pytest.raises(ValueError, match="needs a module with as_function"):
        part(recon.as_function(A), y, A)


# --- reference σ (Lanczos bidiagonalization) ---------------------------------------------
from mrijac.jacobian import reference_sigma  # noqa: E402


@pytest.mark.parametrize("problem", ["mlp", "mri", "multicoil"])
@pytest.mark.parametrize("with_A", [True, False])
def test_reference_sigma_matches_explicit_svd(problem, with_A):
    f, y, A, op, M = problem_with_jacobian(problem, with_A)
    U, S, Vh = torch.linalg.svd(M)
    r = reference_sigma(f, y, op, tol=1e-6, max_iter=100, stall_tol=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(r.sigma, S[:, 0], rtol=1e-4)
    assert bool(r.converged.all()) and float(r.residual.max()) <= 1e-6
    # default stopping (residual, or the value stalled): the value to 1e-4, in fewer steps
    d = reference_sigma(f, y, op, tol=1e-4, max_iter=100, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(d.sigma, S[:, 0], rtol=1e-4) and d.iterations <= r.iterations
    # the returned vectors are a singular pair: J A v = σ u
    Mv = M @ torch.view_as_real(r.v).reshape(len(y), -1, 1) if r.v.is_complex() else M @ r.v.reshape(len(y), -1, 1)
    assert torch.allclose(Mv.squeeze(-1), S[:, :1] * r.u.reshape(len(y), -1), atol=1e-5)


class _Linear(nn.Module):
    """f(y) = M y with a chosen spectrum (real, batch-shared)."""

    def __init__(self, M):
        super().__init__()
        self.M = M

    def forward(self, y):
        return y @ self.M.T


def _flat_top(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q1, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DT))
    Q2, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DT))
    s = torch.cat([1.0 - 0.002 * torch.arange(30, dtype=DT), 0.5 * torch.rand(n - 30, generator=g, dtype=DT)])
    return Q1 @ torch.diag(s) @ Q2.T, s.max()


def test_reference_sigma_on_a_flat_topped_spectrum_beats_power_iteration():
    M, smax = _flat_top()
    f = _Linear(M)
    y = torch.randn(2, M.shape[1], generator=torch.Generator().manual_seed(1), dtype=DT)
    r = reference_sigma(f, y, None, tol=1e-4, max_iter=100, generator=torch.Generator().manual_seed(2))
    assert abs(float(r.sigma.min()) - float(smax)) / float(smax) < 1e-4
    # power iteration with as many products stays measurably below (flat top: σ2/σ1 = 0.998)
    p = spectral_norm(f, y, None, n_iter=r.iterations, generator=torch.Generator().manual_seed(2))
    assert float(p.max()) < float(smax) * (1 - 1e-3)


def test_reference_sigma_warm_start_and_errors():
    f, y, A, _ = mri_problem()
    cold = reference_sigma(f, y, A, tol=1e-6, max_iter=100, stall_tol=0.0)
    warm = reference_sigma(f, y, A, tol=1e-6, max_iter=100, v0=cold.v, stall_tol=0.0)
    assert warm.iterations < cold.iterations
    assert torch.allclose(warm.sigma, cold.sigma, rtol=1e-5)
    with pytest.raises(ValueError, match="max_iter"):
        reference_sigma(f, y, A, max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        reference_sigma(f, y, A, tol=0)
    # a caller's forward graph: the same σ, and the graph stays usable; a leaf without grad is refused
    leaf = y.clone().requires_grad_()
    out = f(leaf)
    shared = reference_sigma(f, y, A, tol=1e-6, max_iter=100, stall_tol=0.0, graph=(leaf, out))
    assert torch.allclose(shared.sigma, cold.sigma, rtol=1e-10)
    out.abs().sum().backward()
    assert leaf.grad is not None
    with pytest.raises(ValueError, match="graph must be"):
        reference_sigma(f, y, A, graph=(y, out.detach()))


def test_penalty_api_is_keyword_only_with_schedule_and_typed_stats():
    from mrijac.jacobian import PenaltySchedule, PenaltyStats

    f, y, A, recon = mri_problem()
    with pytest.raises(TypeError):
        JacobianPenalty("spectral", 0.1, 0.1)  # λ by position is refused
    pen = JacobianPenalty("spectral", lambda_ja=0.1, lambda_j=0.2, schedule=PenaltySchedule(every=2))
    assert (pen.every, pen.alternate, pen.hold) == (2, False, False)
    out, p, stats = pen(f, y, A, step=0)
    assert isinstance(stats, PenaltyStats) and set(stats.sigma) == {"ja", "j"}
    assert stats.sigma["ja"].shape == (len(y),) and set(stats.terms) == {"ja", "j"}
    assert set(stats.vectors) == {"u_ja", "u_j"} and stats.index is None
    assert torch.allclose(p, 0.1 * 2 * stats.terms["ja"] + 0.2 * 2 * stats.terms["j"])  # × every
    _, p1, empty = pen(f, y, A, step=1)  # not a penalised step
    assert float(p1) == 0 and isinstance(empty, PenaltyStats) and not empty.sigma
    with pytest.raises(ValueError, match="either schedule"):
        JacobianPenalty(lambda_ja=0.1, schedule=PenaltySchedule(), every=3)
    with pytest.raises(ValueError, match="every must be >= 1"):
        PenaltySchedule(every=0)


def test_warm_start_input_is_typed_and_a_dict_means_the_same():
    from mrijac.jacobian import WarmStart

    f, y, A, recon = mri_problem()
    pen = JacobianPenalty("spectral", lambda_ja=1.0, n_iter=1)
    _, _, st = pen(f, y, A)
    typed = WarmStart({"u_ja": st.vectors["u_ja"]})
    a = pen(f, y, A, v0=typed)[2].sigma["ja"]
    b = pen(f, y, A, v0={"u_ja": st.vectors["u_ja"]})[2].sigma["ja"]
    assert torch.equal(a, b)
    sub = WarmStart({"v_ja": torch.arange(6.0).view(3, 2)}, torch.tensor([True, False, True])).select(
        torch.tensor([2, 0])
    )
    assert sub.vectors["v_ja"].tolist() == [[4.0, 5.0], [0.0, 1.0]] and sub.cold.tolist() == [True, True]


# --- Lanczos warm-start steps (reference.lanczos_start) ------------------------------------------
from mrijac.jacobian.reference import lanczos_start  # noqa: E402


def _vec(v):
    return (torch.view_as_real(v) if v.is_complex() else v).reshape(v.shape[0], -1, 1)


def _power(M, v, k):
    """k power steps v ← MᵀM v / ‖·‖ on the explicit (B, m, n) matrix."""
    v = v / v.norm(dim=1, keepdim=True)
    for _ in range(k):
        v = M.transpose(1, 2) @ (M @ v)
        v = v / v.norm(dim=1, keepdim=True)
    return v


@pytest.mark.parametrize("problem", ["mlp", "mri", "multicoil"])
@pytest.mark.parametrize("with_A", [True, False])
def test_lanczos_start_one_step_is_a_power_step_and_more_steps_do_better(problem, with_A):
    f, y, A, op, M = problem_with_jacobian(problem, with_A)
    s1 = torch.linalg.svdvals(M)[:, 0]
    v0 = random_like_input(op, y)
    v, bound = lanczos_start(f, y, [op], [v0], 1)
    assert torch.allclose(_vec(v[0]), _power(M, _vec(v0), 1), atol=1e-10)
    prev = None
    for k in (1, 2, 3, 4):
        v, bound = lanczos_start(f, y, [op], [v0], k)
        gain = (M @ _vec(v[0])).norm(dim=1).squeeze(-1)  # ‖M v‖, v unit
        assert torch.allclose(_vec(v[0]).norm(dim=1).squeeze(-1), torch.ones_like(gain))
        assert bool((bound[0] <= gain * (1 + 1e-10)).all()) and bool((gain <= s1 * (1 + 1e-10)).all())
        # the Krylov space holds the k-step power iterate: at least as good
        power = (M @ _power(M, _vec(v0), k)).norm(dim=1).squeeze(-1)
        assert bool((gain >= power * (1 - 1e-9)).all())
        if prev is not None:
            assert bool((bound[0] >= prev * (1 - 1e-9)).all())  # the bound only grows with k
        prev = bound[0]


def random_like_input(op, y, seed=3):
    from mrijac.jacobian.vectors import random_input

    return random_input(op, y, torch.Generator().manual_seed(seed))


def test_lanczos_start_on_a_flat_top_beats_power_and_stacks_terms():
    M, smax = _flat_top()
    f = _Linear(M)
    g = torch.Generator().manual_seed(1)
    y = torch.randn(2, M.shape[1], generator=g, dtype=DT)
    v0 = torch.randn(2, M.shape[1], generator=g, dtype=DT)
    Mb = M.expand(2, -1, -1)
    v, bound = lanczos_start(f, y, [None], [v0], 12)
    gain = (Mb @ _vec(v[0])).norm(dim=1).squeeze(-1)
    power = (Mb @ _power(Mb, _vec(v0), 12)).norm(dim=1).squeeze(-1)
    # flat top (σ2/σ1 = 0.998): 12 Lanczos steps get closer to σ1 than 12 power steps by far
    assert bool(((smax - gain) < 0.5 * (smax - power)).all())
    # an invariant subspace (a rank-1 map) gives a finite, exact answer, not NaN
    r1 = _Linear(torch.outer(M[:, 0], M[0]))
    v, bound = lanczos_start(r1, y, [None], [v0], 4)
    exact = M[:, 0].norm() * M[0].norm()
    assert torch.isfinite(v[0]).all() and torch.allclose(bound[0], exact.expand(2), rtol=1e-8)
    # two terms stacked in one pass (J A and J) give what separate calls give
    fm, ym, Am, _ = mri_problem()
    va, vj = random_like_input(Am, ym, 4), random_like_input(None, ym, 5)
    both, bb = lanczos_start(fm, ym, [Am, None], [va, vj], 3)
    (one_a,), ba = lanczos_start(fm, ym, [Am], [va], 3)
    (one_j,), bj = lanczos_start(fm, ym, [None], [vj], 3)
    assert torch.allclose(both[0], one_a, atol=1e-10) and torch.allclose(both[1], one_j, atol=1e-10)
    assert torch.allclose(bb, torch.cat([ba, bj]), rtol=1e-10)
    with pytest.raises(ValueError, match="k >= 1"):
        lanczos_start(fm, ym, [Am], [va], 0)


def test_fd_penalty_with_n_iter_runs_lanczos_steps_before_the_fused_one():
    """``method='fd', n_iter=k``: k − 1 Lanczos steps from the carried vector, then the fused
    step on the result — σ̂ = ‖J A v‖ of the Lanczos vector (explicit Jacobian), above what as
    many power steps reach."""
    f_, y, A, recon = mri_problem(B=3)
    M = explicit_JA(f_, y, A)
    v0 = random_like_input(A, y, 7)
    for k in (2, 4):
        pen = JacobianPenalty("spectral", lambda_ja=1.0, method="fd", n_iter=k, lanczos_jvp="forward")
        _, p, st = pen(recon, y, A, v0={"v_ja": v0})
        (v,), _ = lanczos_start(f_, y, [A], [v0], k - 1)
        want = (M @ _vec(v)).norm(dim=1).squeeze(-1)
        assert torch.allclose(st["sigma_ja"], want, rtol=1e-6)
        power = (M @ _power(M, _vec(v0), k - 1)).norm(dim=1).squeeze(-1)
        assert bool((st["sigma_ja"] >= power * (1 - 1e-6)).all())


def test_fd_penalty_default_is_two_finite_difference_lanczos_steps_then_the_fused_one(monkeypatch):
    """``n_iter`` / ``lanczos_jvp`` ``"auto"`` (the defaults): with ``method='fd'`` two Lanczos
    steps (three on a one-sample batch) whose JVPs are forward differences (no forward-mode
    pass), then the fused step — σ̂ is ‖J A v‖ of the two-step Lanczos vector (explicit
    Jacobian); other methods keep one power iteration; a non-integer or non-positive ``n_iter``
    is refused by name."""
    import mrijac.jacobian.reference as reference

    f_, y, A, recon = mri_problem(B=3)
    M = explicit_JA(f_, y, A)
    v0 = random_like_input(A, y, 7)
    pen = JacobianPenalty("spectral", lambda_ja=1.0, method="fd")
    assert (pen.n_iter, pen.lanczos_jvp) == (3, "fd")
    with monkeypatch.context() as m:
        m.setattr(reference, "jvp", lambda *a, **kw: pytest.fail("forward-mode JVP in the default fd penalty"))
        _, p, st = pen(recon, y, A, v0={"v_ja": v0})
    (v,), _ = lanczos_start(f_, y, [A], [v0], 2)
    want = (M @ _vec(v)).norm(dim=1).squeeze(-1)
    assert torch.allclose(st["sigma_ja"], want, rtol=1e-6)
    one_step = (M @ _power(M, _vec(v0), 1)).norm(dim=1).squeeze(-1)
    assert bool((st["sigma_ja"] >= one_step * (1 - 1e-6)).all())
    # a batch of one sample: a third Lanczos step (names.auto_n_iter), per call
    f1, y1, A1, recon1 = mri_problem(B=1)
    M1 = explicit_JA(f1, y1, A1)
    v1 = random_like_input(A1, y1, 9)
    _, _, st1 = pen(recon1, y1, A1, v0={"v_ja": v1})
    (w,), _ = lanczos_start(f1, y1, [A1], [v1], 3)
    assert torch.allclose(st1["sigma_ja"], (M1 @ _vec(w)).norm(dim=1).squeeze(-1), rtol=1e-6)
    assert (pen.steps(1), pen.steps(3)) == (4, 3)
    fixed = JacobianPenalty("spectral", lambda_ja=1.0, method="fd", n_iter=3)
    assert (fixed.steps(1), fixed.steps(3)) == (3, 3)
    fwd = JacobianPenalty("spectral", lambda_ja=1.0)
    assert (fwd.method, fwd.n_iter, fwd.lanczos_jvp, fwd.steps(1)) == ("forward", 1, "forward", 1)
    for bad in (0, 1.5, "x", True):
        with pytest.raises(ValueError, match="n_iter must be an integer >= 1 or 'auto'"):
            JacobianPenalty("spectral", lambda_ja=1.0, method="fd", n_iter=bad)


@pytest.mark.parametrize("problem", ["mlp", "mri", "multicoil"])
@pytest.mark.parametrize("with_A", [True, False])
def test_lanczos_start_with_finite_difference_jvps_matches_forward_mode(problem, with_A, monkeypatch):
    """``fd_step``: the JVPs of the Lanczos steps by forward differences (float64, h = 4.5e-9)
    give the forward-mode vectors and bounds to the difference's error, and ‖M v‖ of the
    explicit Jacobian is as high; no forward-mode pass runs."""
    import mrijac.jacobian.reference as reference
    from mrijac.jacobian.finite_diff import default_step

    f, y, A, op, M = problem_with_jacobian(problem, with_A)
    v0 = random_like_input(op, y)
    h = default_step(torch.float64)
    for k in (1, 3):
        (ve,), be = lanczos_start(f, y, [op], [v0], k)
        with monkeypatch.context() as m:
            m.setattr(reference, "jvp", lambda *a, **kw: pytest.fail("forward-mode JVP with fd_step"))
            (vf,), bf = lanczos_start(f, y, [op], [v0], k, fd_step=h)
        assert torch.allclose(_vec(vf), _vec(ve), atol=1e-6)
        assert torch.allclose(bf, be, rtol=1e-6)
        ge, gf = ((M @ _vec(v)).norm(dim=1).squeeze(-1) for v in (ve, vf))
        assert torch.allclose(gf, ge, rtol=1e-6)
    with pytest.raises(ValueError, match="fd_step"):
        lanczos_start(f, y, [op], [v0], 1, fd_step=2.0)


@pytest.mark.parametrize(
    "problem,samples,tie", [("single", 1, True), ("single", None, False), ("multi", 1, False), ("multi", 2, False)]
)
def test_fd_penalty_reuses_the_forward_pass_of_its_lanczos_steps(problem, samples, tie, monkeypatch):
    """The default fd penalty (two Lanczos steps, then the fused one) takes the selected samples'
    f(y) from the forward graph of its Lanczos VJPs instead of another pass, and its K terms share
    that graph: the network sees S + 2·K·S (graph, finite-difference JVPs) + (B − S) + K·S rows
    per call instead of K·S + 2·K·S + B + K·S.  The output is
    f(y) in batch order and carries the data loss's gradient; the penalty's value and ∇θ are
    those of λ1 max_b ‖J_b(θ) A_b v_b‖ + λ2 max_b ‖J_b(θ) w_b‖ at the Lanczos vectors (explicit
    Jacobians, torch.func)."""
    from mrijac.jacobian.finite_diff import default_step

    f_, y, A, recon = (mri_problem if problem == "single" else multicoil_problem)(B=3)
    B = y.shape[0]
    priority = torch.tensor([0.1, 0.9, 0.5])
    idx = torch.arange(B) if samples is None else torch.argsort(priority, descending=True)[:samples]
    S = idx.numel()
    v0 = {"v_ja": random_like_input(A, y, 7), "v_j": random_like_input(None, y, 8)}
    l1, l2 = 0.7, 0.3
    pen = JacobianPenalty("spectral", lambda_ja=l1, lambda_j=l2, method="fd", samples=samples, tie=tie, rank="stored")
    assert pen.n_iter == 3
    seen = []
    hook = recon.net.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    recon.zero_grad()
    out, p, st = pen(recon, y, A, v0=v0, priority=priority)
    hook.remove()
    K = 1 if tie else 2  # tied (single coil): one estimate serves both terms
    assert sum(seen) == S + 2 * K * S + (B - S) + K * S and max(seen) == (B - S) + K * S
    assert torch.allclose(out, f_(y), atol=1e-12)
    p.backward()
    got = _param_grads(recon)
    # the Lanczos vectors the fused step starts from (same finite-difference steps)
    A_sel = A.select(idx)
    vs, _ = lanczos_start(
        recon.as_function(A_sel),
        y[idx],
        [A_sel, None],
        [v0["v_ja"][idx], v0["v_j"][idx]],
        2,
        fd_step=default_step(torch.float64),
    )
    penalty_of = _explicit_penalty(recon, y[idx], A_sel, l1, l2, vs=(vs[0], None if tie else vs[1]))
    ref, params = _explicit_grad(recon, penalty_of)
    assert torch.allclose(p.detach(), penalty_of(params), rtol=1e-6)
    assert (got - ref).norm() / ref.norm() < 1e-5
    # the data loss through the shared pass: the gradient of a plain forward's
    recon.zero_grad()
    out, p, st = pen(recon, y, A, v0=v0, priority=priority)
    (out**2).sum().backward()
    shared = _param_grads(recon)
    recon.zero_grad()
    (f_(y) ** 2).sum().backward()
    assert torch.allclose(shared, _param_grads(recon), rtol=1e-10, atol=1e-12)
    # share_forward=False (experiments/bench_fd_share.py's baseline): the whole batch in the
    # stacked pass again, the same penalty and gradient
    import functools

    import mrijac.jacobian.penalties as penalties
    from mrijac.jacobian.finite_diff import fd_power_step

    monkeypatch.setattr(penalties, "fd_power_step", functools.partial(fd_power_step, share_forward=False))
    seen.clear()
    hook = recon.net.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    recon.zero_grad()
    out2, p2, _ = pen(recon, y, A, v0=v0, priority=priority)
    hook.remove()
    assert sum(seen) == K * S + 2 * K * S + B + K * S  # a Lanczos graph per term, then the batch
    p2.backward()
    # (the two difference quotients round differently: ε/h ≈ 5e-8 in float64)
    assert torch.allclose(out2, out, atol=1e-12) and torch.allclose(p2, p, rtol=1e-7)
    assert (_param_grads(recon) - got).norm() / got.norm() < 1e-6


def test_fd_penalty_lanczos_jvp_fd_gives_the_forward_mode_estimates():
    """``lanczos_jvp='fd'``: same σ̂ and next vectors as forward-mode Lanczos steps (also a
    first visit's exact iteration); only with ``method='fd'``."""
    f_, y, A, recon = mri_problem(B=3)
    v0 = random_like_input(A, y, 7)
    for start in ({"v_ja": v0}, None):  # carried vectors, then a first visit
        runs = []
        for lj in ("forward", "fd"):
            pen = JacobianPenalty("spectral", lambda_ja=1.0, method="fd", n_iter=3, lanczos_jvp=lj)
            _, p, st = pen(recon, y, A, v0=start, generator=torch.Generator().manual_seed(0))
            p.backward()
            runs.append(st)
        assert torch.allclose(runs[1]["sigma_ja"], runs[0]["sigma_ja"], rtol=1e-6)
        assert torch.allclose(runs[1]["v_ja"], runs[0]["v_ja"], atol=1e-5)
    with pytest.raises(ValueError, match="lanczos_jvp='fd' is for method='fd'"):
        JacobianPenalty("spectral", lambda_ja=1.0, method="forward", lanczos_jvp="fd")
    with pytest.raises(ValueError, match="lanczos_jvp must be one of"):
        JacobianPenalty("spectral", lambda_ja=1.0, method="fd", lanczos_jvp="exact")


@pytest.mark.parametrize(
    "problem,n_iter,samples,recompute,backward,rank",
    [
        ("single", 3, 1, False, True, "stored"),
        ("single", 1, None, False, True, "auto"),
        ("single", 3, 1, True, True, "auto"),
        ("multi", 3, 1, False, True, "stored"),
        ("single", 3, 1, False, False, "stored"),
        ("single", 3, 1, False, True, "auto"),  # the default: Lanczos on every row, frozen kinks
        ("multi", 3, 1, False, False, "auto"),
    ],
)
def test_fd_penalty_frees_its_graph_once_the_caller_drops_it(problem, n_iter, samples, recompute, backward, rank):
    """The hook that hands back the next vectors must not keep the step alive: once the caller
    drops ``out``, the penalty and ``stats`` (backward run or not), every tensor the network saw
    — the batch and the perturbed copies — is freed (a strong reference from the hook to the
    stats closed a cycle through autograd's nodes that leaked ~3 MiB per 256² step), the
    vectors still arrive, and a sink that cannot be weakly referenced is refused by name."""
    import gc
    import weakref

    from mrijac.jacobian.finite_diff import fd_power_step

    _, y, A, recon = (mri_problem if problem == "single" else multicoil_problem)(B=3)
    pen = JacobianPenalty(
        "spectral",
        lambda_ja=0.7,
        lambda_j=0.3,
        method="fd",
        n_iter=n_iter,
        samples=samples,
        recompute=recompute,
        rank=rank,
    )
    seen = []
    h = recon.net.register_forward_hook(lambda m, i, o: seen.append(weakref.ref(i[0])))
    v0 = {"v_ja": random_like_input(A, y, 7), "v_j": torch.randn_like(y)}
    out, p, stats = pen(recon, y, A, v0=v0)
    if backward:
        (p + out.abs().sum()).backward()
        vecs = [v for k, v in stats.items() if k.startswith("v_")]
        rows = 3 if pen.rank == "lanczos" or samples is None else samples  # lanczos: every row's vector
        assert "v_ja" in stats and all(v.shape[0] == rows for v in vecs)
    h.remove()
    graph = weakref.ref(stats["term_ja"])  # holds the graph of the copies
    del out, p, stats
    gc.collect()
    assert seen and [r() is None for r in seen] == [True] * len(seen)
    assert graph() is None
    with pytest.raises(TypeError, match="sink must support weak references"):
        fd_power_step(recon.as_function, y, A, [True], None, sink={}, names=["v_ja"])


# --- the lower bound along the measurement (mrijac.jacobian.bounds) ------------------------
from mrijac.jacobian.bounds import data_floor, sigma_floor  # noqa: E402


@pytest.mark.parametrize("problem", ["mlp", "mri", "multicoil"])
@pytest.mark.parametrize("with_A", [True, False])
def test_sigma_floor_is_the_rayleigh_quotient_along_the_measurement(problem, with_A):
    f, y, A, op, M = problem_with_jacobian(problem, with_A)
    v = y if op is None else op.adjoint(y)
    vr = torch.view_as_real(v) if v.is_complex() else v
    Mv = M @ vr.reshape(len(y), -1, 1)
    want = Mv.squeeze(-1).norm(dim=1) / vr.reshape(len(y), -1).norm(dim=1)
    got = sigma_floor(f, y, op)
    assert got.shape == (len(y),) and torch.allclose(got, want, rtol=1e-8)
    assert bool((got <= torch.linalg.matrix_norm(M, ord=2) * (1 + 1e-10)).all())  # a lower bound of σ


def test_sigma_floor_of_a_normalising_reconstructor_on_single_coil_data_is_output_over_input():
    """Euler's identity J(y) y = f(y) for a positively homogeneous f, and A Aᴴ y = y for a 0/1
    mask: the bound is ‖f(y)‖/‖y‖, and a perfect reconstructor's is ‖x‖/‖y‖."""
    f, y, A, recon = mri_problem(B=3)
    out = f(y)
    assert torch.allclose(f(2.5 * y), 2.5 * out, rtol=1e-10)  # homogeneous (normalize=True)
    assert torch.allclose(A(A.adjoint(y)), y, atol=1e-12)
    ratio = out.reshape(3, -1).norm(dim=1) / torch.view_as_real(y).reshape(3, -1).norm(dim=1)
    assert torch.allclose(sigma_floor(f, y, A), ratio, rtol=1e-8)
    assert torch.allclose(sigma_floor(f, y, None), ratio, rtol=1e-8)
    assert torch.allclose(data_floor(out, y), ratio, rtol=1e-12)
    # without the normalisation the network has biases: not homogeneous, and the bound differs
    plain = Reconstructor(recon.net, normalize=False).as_function(A)
    assert not torch.allclose(
        sigma_floor(plain, y, A), plain(y).reshape(3, -1).norm(dim=1) / torch.view_as_real(y).reshape(3, -1).norm(dim=1)
    )


def test_jacobian_stats_report_the_floor_below_the_reference():
    from mrijac.inference import jacobian_stats

    _, y, A, recon = multicoil_problem(B=2)
    js = jacobian_stats(recon, [(y, A)], tol=1e-6, max_iter=100)
    for t in ("ja", "j"):
        sig, fl = (torch.tensor(js[f"{k}_{t}"]["values"], dtype=DT) for k in ("sigma", "floor"))
        assert bool((fl > 0).all()) and bool((fl <= sig * (1 + 1e-6)).all())
        assert js[f"floor_{t}"]["max"] == float(fl.max())
    op = {"ja": A, "j": None}
    for t in ("ja", "j"):
        assert torch.allclose(
            torch.tensor(js[f"floor_{t}"]["values"], dtype=DT), sigma_floor(recon.as_function(A), y, op[t])
        )


def _smooth_unet_problem(N=16):
    """fastmri's Unet with Softplus for its LeakyReLUs (a smooth network: numerical derivatives
    in θ are meaningful), float64, single-coil 16×16, and a near-top vector v of J A."""
    from fastmri.models import Unet

    torch.manual_seed(0)
    net = Unet(2, 2, chans=4, num_pool_layers=2)
    for mod in list(net.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, nn.LeakyReLU):
                setattr(mod, name, nn.Softplus(beta=5))
    recon = Reconstructor(net).to(DT)
    mask = torch.zeros(2, 1, N, dtype=DT)
    mask[..., N // 2 - 3 : N // 2 + 3] = 1
    mask[0, ..., ::4] = 1
    mask[1, ..., 1::3] = 1
    A = SingleCoilMRI(mask, (N, N))
    g = torch.Generator().manual_seed(0)
    y = A(A.random_input(generator=g, dtype=DT))
    v = torch.nn.functional.normalize(A.random_input(generator=g, dtype=DT).reshape(2, -1), dim=1).reshape(2, N, N)
    (v,), _ = lanczos_start(recon.as_function(A), y, [A], [v], 10)
    return recon, y, A, v.detach()


def _gain_grad_and_numeric(recon, y, A, v):
    """∇θ ‖J(y₀) A v₀‖ by reverse mode over forward mode (what method='forward' trains with),
    and its central difference in θ along a random direction, as (⟨∇, δ⟩, numeric)."""
    from torch.func import functional_call
    from torch.func import jvp as fjvp

    d = A(v)
    names = [k for k, _ in recon.named_parameters()]
    params = {k: p.detach().clone() for k, p in recon.named_parameters()}

    def gain(ps):
        _, t = fjvp(lambda z: functional_call(recon, ps, (z, A)), (y,), (d,))
        return t[0].reshape(-1).norm()

    recon.zero_grad()
    _, t = fjvp(recon.as_function(A), (y,), (d,))
    t[0].reshape(-1).norm().backward()
    grad = torch.cat([p.grad.reshape(-1) for p in recon.parameters()])
    g = torch.Generator().manual_seed(1)
    delta = {k: torch.randn(p.shape, generator=g, dtype=DT) for k, p in params.items()}
    eps = 1e-6
    num = (
        gain({k: params[k] + eps * delta[k] for k in names}) - gain({k: params[k] - eps * delta[k] for k in names})
    ) / (2 * eps)
    return float(grad @ torch.cat([delta[k].reshape(-1) for k in names])), float(num)


def test_forward_mode_penalty_gradient_is_exact_once_instance_norms_are_plain_ops():
    """Reverse over forward mode through a fused InstanceNorm is silently wrong in torch
    (pytorch/pytorch#196699): the penalty refuses such a network for method='forward' /
    'double_vjp'.  With the norms written out (plain_instance_norms) ∇θ‖J A v‖ equals the
    numerical derivative in θ, and the forward, double-vjp and fd penalties agree."""
    from mrijac.models import plain_instance_norms

    recon, y, A, v = _smooth_unet_problem()
    for method in ("forward", "double_vjp"):
        for net in (recon, recon.as_function(A)):  # the module, or its closure
            with pytest.raises(ValueError, match="plain_instance_norms"):
                JacobianPenalty("spectral", lambda_ja=1.0, method=method)(net, y, A)
    assert plain_instance_norms(recon) > 0
    got, num = _gain_grad_and_numeric(recon, y, A, v)
    assert got == pytest.approx(num, rel=1e-6)
    grads = {}
    for method in ("forward", "double_vjp", "fd"):
        pen = JacobianPenalty("spectral", lambda_ja=1.0, lambda_j=0.0, method=method, n_iter=1, fd_step=1e-7)
        v0 = {"v_ja": v.clone(), "cold": torch.zeros(2, dtype=torch.bool)}
        if method != "fd":  # forward / double_vjp warm-start from the output-space vector
            _, jv = jvp(recon.as_function(A), y, A(v))
            v0 = {"u_ja": torch.nn.functional.normalize(jv.reshape(2, -1), dim=1).reshape(jv.shape)}
        recon.zero_grad()
        _, p, _ = pen(recon, y, A, v0=v0)
        p.backward()
        grads[method] = _param_grads(recon)
    ref = grads["forward"]
    for method in ("double_vjp", "fd"):
        assert (grads[method] - ref).norm() / ref.norm() < 1e-4, method
