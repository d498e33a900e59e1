"""Stacked fully connected networks (mrijac/models/fc_stack.py) and their joint training
(mrijac/train/stack_fit.py): closed-form Jacobians against autograd, penalties against explicit
matrix norms, and stacking against one-model-at-a-time training."""

import pytest
import torch

from mrijac.jacobian import auto_lambda
from mrijac.jacobian.products import explicit_jacobian
from mrijac.models import FCNet
from mrijac.models.fc_stack import FCStack
from mrijac.train.stack_fit import Member, StackData, StackPenalties, evaluate_stack, fit_stack

Q, H, P = 6, 12, 9


def _stack(K=3, seed=0):
    torch.manual_seed(seed)
    nets = [FCNet(Q, P, H).double() for _ in range(K)]
    return nets, FCStack.from_models(nets).double()


def _data(G=2, m=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(G, m, P, generator=g, dtype=torch.float64)
    A = torch.randn(G, Q, P, generator=g, dtype=torch.float64) / Q**0.5
    y = x @ A.transpose(1, 2) + 0.05 * torch.randn(G, m, Q, generator=g, dtype=torch.float64)
    return StackData(x, y, A)


def test_forward_and_jacobian_match_fcnet():
    nets, st = _stack()
    y = torch.randn(3, 5, Q, dtype=torch.float64)
    out = st(y)
    J = st.jacobian(y)
    for k, net in enumerate(nets):
        torch.testing.assert_close(out[k], net(y[k]))
        torch.testing.assert_close(J[k], explicit_jacobian(net, y[k]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(st.model(k)(y[k]), net(y[k]))


def test_jvp_vjp_are_adjoint_and_match_jacobian():
    _, st = _stack()
    y = torch.randn(3, 5, Q, dtype=torch.float64)
    _, masks = st.forward_masks(y)
    ws = list(st.weights)
    t = torch.randn(3, 5, Q, dtype=torch.float64)
    u = torch.randn(3, 5, P, dtype=torch.float64)
    Jt, Jtu = st.jvp(ws, masks, t), st.vjp(ws, masks, u)
    torch.testing.assert_close((Jt * u).sum(), (t * Jtu).sum())
    torch.testing.assert_close(Jt, (st.jacobian(y) @ t[..., None])[..., 0])


def test_spectral_term_is_max_sigma_with_its_gradient():
    """Converged power iteration: the term equals max_b ‖J_b A‖₂ and has its gradient."""
    _, st = _stack(K=2)
    data = _data(G=1, m=4)
    members = [Member("sja", 1.0, 0), Member("sj", 1.0, 0)]
    pen = StackPenalties(members, st.dims, 4, n_iter=200, dtype=torch.float64)
    batch = torch.arange(4)
    A = data.A[[0, 0]]
    out, masks = st.forward_masks(data.y[[0, 0]])
    total, terms = pen(st, masks, batch, A, torch.ones(2, dtype=torch.float64))
    st.zero_grad(set_to_none=True)
    pen.add_weight_grads(st)  # the spectral gradients are closed-form
    grads = [w.grad for w in st.weights]

    J = st.jacobian(data.y[[0, 0]])  # (2, 4, P, Q)
    s_ja = torch.linalg.matrix_norm(J[0] @ data.A[0], ord=2)
    s_j = torch.linalg.matrix_norm(J[1], ord=2)
    torch.testing.assert_close(terms["sja"], s_ja.max()[None], rtol=1e-6, atol=0)
    torch.testing.assert_close(terms["sj"], s_j.max()[None], rtol=1e-6, atol=0)
    explicit = s_ja.max() + s_j.max()
    ref = torch.autograd.grad(explicit, list(st.weights))
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-8)


def test_frobenius_term_is_unbiased():
    _, st = _stack(K=1)
    data = _data(G=1, m=3)
    pen = StackPenalties(
        [Member("fja", 1.0, 0)], st.dims, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    _, masks = st.forward_masks(data.y)
    with torch.no_grad():
        vals = torch.stack([pen._frobenius("fja", list(st.weights), masks, data.A) for _ in range(4000)])
    exact = (st.jacobian(data.y)[0] @ data.A[0]).pow(2).sum().detach()
    assert abs(float(vals.mean() / exact) - 1) < 0.05


def test_stacking_equals_separate_training():
    """Adam on stacked tensors is K independent Adam runs."""
    data = _data(G=2, m=10)
    members = [Member("none", 0.0, 0), Member("wd", 1e-2, 1), Member("fja", 1e-3, 0)]
    nets, st = _stack(K=3, seed=3)
    fit_stack(st, members, data, 3, batch_size=4, seed=5, progress=False)
    for k, mb in enumerate(members):
        one = FCStack.from_models([nets[k]]).double()
        fit_stack(one, [mb], data, 3, batch_size=4, seed=5, progress=False)
        if mb.strategy == "fja":  # the projections come from a shared generator: compare the loss only
            continue
        for a, b in zip(st.weights, one.weights):
            torch.testing.assert_close(a[k], b[0], rtol=1e-9, atol=1e-12)


def test_auto_lambda_from_medians():
    _, st = _stack(K=2)
    data = _data(G=1, m=4)
    members = [Member("sja+sj", "auto", 0), Member("sja+sj", 0.5, 0)]
    pen = StackPenalties(members, st.dims, 4, auto_steps=3, dtype=torch.float64)
    seen = []
    for _ in range(5):
        out, masks = st.forward_masks(data.y[[0, 0]])
        loss = (out - data.x[[0, 0]]).norm(dim=-1).mean(1)
        _, terms = pen(st, masks, torch.arange(4), data.A[[0, 0]], loss)
        if len(seen) < 3:
            seen.append((float(loss[0].detach()), float(terms["sja"][0])))
    med_loss = sorted(s[0] for s in seen)[1]
    med_term = sorted(s[1] for s in seen)[1]
    assert float(pen.lam["sja"][0]) == pytest.approx(auto_lambda(med_loss, med_term))
    assert float(pen.lam["sja"][1]) == 0.5


def test_evaluate_sigma_ja_via_cholesky_equals_svd():
    _, st = _stack(K=2)
    data = _data(G=2, m=5)
    ev = evaluate_stack(st, [1, 0], data.x, data.y, data.A, probe=5)
    J = st.jacobian(data.y[[1, 0]]).detach()
    for k, grp in enumerate([1, 0]):
        s = torch.linalg.matrix_norm(J[k] @ data.A[grp], ord=2)
        assert ev["sigma_ja"][k] == pytest.approx(float(s.mean()), rel=1e-9)
        assert ev["sigma_ja_max"][k] == pytest.approx(float(s.max()), rel=1e-9)
    l2 = (st(data.y[[1, 0]]) - data.x[[1, 0]]).norm(dim=-1).mean(1)
    torch.testing.assert_close(torch.from_numpy(ev["l2"]).double(), l2.detach(), rtol=1e-6, atol=0)


def test_bad_members_and_groups():
    with pytest.raises(ValueError, match="strategy must be one of"):
        Member("sja+fj", 1.0, 0)
    with pytest.raises(ValueError, match="lam must be"):
        Member("sja", -1.0, 0)
    _, st = _stack(K=1)
    with pytest.raises(ValueError, match="member groups must be in"):
        fit_stack(st, [Member("none", 0.0, 4)], _data(G=2), 1, progress=False)
    with pytest.raises(ValueError, match="do not fit"):
        StackData(torch.zeros(2, 3, P), torch.zeros(2, 3, Q), torch.zeros(1, Q, P))


def test_weight_penalties_closed_form_gradients():
    """wd: λ Σ‖W‖² and sw: ½ λ Σ σ(W)² add exactly their gradients (sw once converged)."""
    _, st = _stack(K=2)
    data = _data(G=1, m=4)
    members = [Member("wd", 0.3, 0), Member("sw", 0.7, 0)]
    pen = StackPenalties(members, st.dims, 4, dtype=torch.float64)
    A = data.A[[0, 0]]
    loss = torch.ones(2, dtype=torch.float64)
    for _ in range(300):  # converge the weights' power iterations
        _, masks = st.forward_masks(data.y[[0, 0]])
        total, terms = pen(st, masks, torch.arange(4), A, loss)
    st.zero_grad(set_to_none=True)
    pen.add_weight_grads(st)
    ws = list(st.weights)
    wd = 0.3 * sum(w[0].pow(2).sum() for w in ws)
    sw = 0.5 * 0.7 * sum(torch.linalg.matrix_norm(w[1], ord=2) ** 2 for w in ws)
    torch.testing.assert_close(total.detach(), torch.stack([wd, sw]).detach())
    ref = torch.autograd.grad(wd + sw, ws)
    for w, r in zip(ws, ref):
        torch.testing.assert_close(w.grad, r, rtol=1e-6, atol=1e-9)
