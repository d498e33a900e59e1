"""Train a whole λ grid × seeds × strategies of fully connected CS networks at once.

Every member of an :class:`~mrijac.models.fc_stack.FCStack` has its own strategy, λ and
data group (a seed: its own Gaussian ``A``, training images and noise); all see the same
mini-batch indices, so one batched matmul per layer serves every member.  The penalties are
the library's, in closed form for the ReLU network (see :mod:`mrijac.models.fc_stack`):

* ``sja`` / ``sj``: ``max_b ‖J(y_b) A‖₂`` / ``max_b ‖J(y_b)‖₂`` — ``n_iter`` warm-started
  power iterations per sample (vectors kept per sample between epochs, no graph), then the
  differentiable ``‖J A v_b‖`` of the arg-max sample only (``max`` has no gradient elsewhere);
* ``fja`` / ``fj``: ``Σ_b ‖J A‖F²`` / ``Σ_b ‖J‖F²`` by one Gaussian projection per sample;
* ``wd``: ``Σ_l ‖W_l‖²``; ``sw``: ``½ Σ_l σ(W_l)²`` (power iteration on the weights);
* ``λ = "auto"``: the paper's Algorithm 4 (:func:`~mrijac.jacobian.auto_lambda`), from the
  first batch, then from the medians of loss and term over the first ``auto_steps`` batches.

The data loss is the paper's ``‖f(y) − x‖₂`` per sample, averaged over the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..jacobian import auto_lambda
from ..models.fc_stack import FCStack

STRATEGY_TERMS = {
    "none": (),
    "wd": ("wd",),
    "sw": ("sw",),
    "sj": ("sj",),
    "sja": ("sja",),
    "sja+sj": ("sja", "sj"),
    "fj": ("fj",),
    "fja": ("fja",),
    "fja+fj": ("fja", "fj"),
}
STRATEGIES = tuple(STRATEGY_TERMS)


@dataclass(frozen=True)
class Member:
    """One model of the stack: ``strategy`` (:data:`STRATEGIES`), ``lam`` (float or
    ``"auto"``; the same λ for both terms of ``sja+sj``/``fja+fj``), ``group`` (data group)."""

    strategy: str
    lam: float | str
    group: int

    def __post_init__(self):
        if self.strategy not in STRATEGY_TERMS:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.lam != "auto" and not (isinstance(self.lam, (int, float)) and self.lam >= 0):
            raise ValueError(f"lam must be a number >= 0 or 'auto', got {self.lam!r}")


@dataclass
class StackData:
    """Data of every group ``g``: images ``x`` ``(G, m, p)`` in [0, 1], fixed noisy
    measurements ``y`` ``(G, m, q)``, operators ``A`` ``(G, q, p)``."""

    x: torch.Tensor
    y: torch.Tensor
    A: torch.Tensor

    def __post_init__(self):
        G, m, p = self.x.shape
        if self.y.shape[:2] != (G, m) or self.A.shape != (G, self.y.shape[2], p):
            raise ValueError(
                f"StackData: x {tuple(self.x.shape)}, y {tuple(self.y.shape)}, A {tuple(self.A.shape)} "
                "do not fit (G, m, p), (G, m, q), (G, q, p)"
            )


# members sorted in this order make every term's members one contiguous block (see fit_stack)
CANONICAL = ("none", "wd", "sw", "sja", "sja+sj", "sj", "fja", "fja+fj", "fj")


def _span(ks: list[int]):
    """``slice(a, b)`` when ``ks`` is the range ``a..b-1`` (views, no copies), else a tensor."""
    if ks == list(range(ks[0], ks[-1] + 1)):
        return slice(ks[0], ks[-1] + 1)
    return torch.tensor(ks)


def _unit(t: torch.Tensor) -> torch.Tensor:
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-30)


class StackPenalties:
    """The penalties of every member, ``(K,)`` per step (see the module docstring)."""

    def __init__(
        self,
        members: list[Member],
        dims: list[int],
        n_train: int,
        n_iter: int = 1,
        auto_steps: int = 10,
        gamma: float = 20.0,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        self.members, self.n_iter, self.auto_steps, self.gamma = list(members), int(n_iter), int(auto_steps), gamma
        self.g = generator or torch.Generator().manual_seed(0)
        q, h, _, p = dims
        self.index, self.lam, self.auto = {}, {}, {}
        for term in ("sja", "sj", "fja", "fj", "wd", "sw"):
            ks = [k for k, mb in enumerate(self.members) if term in STRATEGY_TERMS[mb.strategy]]
            if not ks:
                continue
            self.index[term] = _span(ks)
            lams = [self.members[k].lam for k in ks]
            self.auto[term] = torch.tensor([lam == "auto" for lam in lams])
            self.lam[term] = torch.tensor([0.0 if lam == "auto" else float(lam) for lam in lams])
        # warm power-iteration vectors per member and training sample (input space of the term)
        self.vec, self.sigma_est = {}, {}
        for term, dim in (("sja", p), ("sj", q)):
            if term in self.index:
                n = len(self.lam[term])
                self.vec[term] = _unit(torch.randn(n, n_train, dim, generator=self.g, dtype=dtype))
                self.sigma_est[term] = torch.full((n, n_train), float("nan"), dtype=dtype)
        if "sw" in self.index:
            n = len(self.lam["sw"])
            self.sw_u = [_unit(torch.randn(n, d, generator=self.g, dtype=dtype)) for d in (h, h, p)]
        self.history: dict[str, list] = {t: [] for t in self.index}  # (loss, term) for auto λ
        self._pending: dict = {}
        self.steps = 0

    def to(self, device) -> "StackPenalties":
        for d in (self.index, self.lam, self.auto, self.vec, self.sigma_est):
            for k in d:
                if torch.is_tensor(d[k]):
                    d[k] = d[k].to(device)
        if hasattr(self, "sw_u"):
            self.sw_u = [u.to(device) for u in self.sw_u]
        return self

    def lambdas(self) -> dict[str, np.ndarray]:
        """Current λ per term for the members that use it."""
        return {t: self.lam[t].cpu().numpy() for t in self.lam}

    @torch.no_grad()
    def _spectral(self, term, ws, masks, batch, A):
        """``max_b ‖J A v_b‖`` per member (``A`` None for ``sj``) after ``n_iter`` warm power
        steps on every sample of the batch, and its gradient in closed form: with
        ``t₀ = A v``, ``a₁ = D₁W₁t₀``, ``a₂ = D₂W₂a₁``, ``σ u = W₃a₂``, ``g₂ = D₂W₃ᵀu``,
        ``g₁ = D₁W₂ᵀg₂``: ``∂σ/∂W₃ = u a₂ᵀ``, ``∂σ/∂W₂ = g₂ a₁ᵀ``, ``∂σ/∂W₁ = g₁ t₀ᵀ`` (the masks
        are constant almost everywhere, so biases get no gradient)."""
        v = self.vec[term][:, batch]
        to_in = (lambda t: torch.bmm(t, A.transpose(1, 2))) if A is not None else (lambda t: t)  # noqa: E731
        from_out = (lambda t: torch.bmm(t, A)) if A is not None else (lambda t: t)  # noqa: E731
        for _ in range(self.n_iter):
            w = FCStack.jvp(ws, masks, to_in(v))
            sig = w.norm(dim=-1)
            v = _unit(from_out(FCStack.vjp(ws, masks, _unit(w))))
        self.vec[term][:, batch] = v
        self.sigma_est[term][:, batch] = sig  # what this visit estimated, from the stored vector
        best = sig.argmax(dim=1)
        rows = torch.arange(v.shape[0], device=v.device)
        m1, m2 = (m[rows, best] for m in masks)
        mv = lambda W, x: torch.bmm(W, x[..., None])[..., 0]  # noqa: E731
        t0 = to_in(v[rows, best][:, None])[:, 0]
        a1 = mv(ws[0], t0) * m1
        a2 = mv(ws[1], a1) * m2
        out = mv(ws[2], a2)
        val = out.norm(dim=-1)
        u = out / val[:, None].clamp_min(1e-30)
        g2 = mv(ws[2].transpose(1, 2), u) * m2
        g1 = mv(ws[1].transpose(1, 2), g2) * m1
        outer = lambda x, y: x[:, :, None] * y[:, None, :]  # noqa: E731
        return val, [outer(g1, t0), outer(g2, a1), outer(u, a2)]

    def _frobenius(self, term, ws, masks, A):
        K_t, B = masks[0].shape[:2]
        dim = A.shape[2] if A is not None else ws[0].shape[2]
        z = torch.randn(K_t, B, dim, generator=self.g).to(masks[0].device, masks[0].dtype)
        t = torch.bmm(z, A.transpose(1, 2)) if A is not None else z
        return FCStack.jvp(ws, masks, t).pow(2).sum(dim=(1, 2))

    @torch.no_grad()
    def _weights(self, term, ws):
        """Value of ``wd`` / ``sw`` and their gradients ``2W`` / ``σ u vᵀ`` per layer (closed
        form: added to ``.grad`` by :meth:`add_weight_grads`, no autograd copies of the weights)."""
        if term == "wd":
            return sum(torch.linalg.vector_norm(w, dim=(1, 2)) ** 2 for w in ws), [(2.0, w) for w in ws]
        total, grads = 0.0, []
        for layer, w in enumerate(ws):
            v = _unit(torch.bmm(self.sw_u[layer][:, None], w)[:, 0])
            wv = torch.bmm(w, v[..., None])[..., 0]
            sig = wv.norm(dim=-1)
            u = wv / sig[:, None].clamp_min(1e-30)
            self.sw_u[layer] = u
            total = total + 0.5 * sig.pow(2)
            grads.append(sig[:, None, None] * u[:, :, None] * v[:, None, :])  # d(½σ²)/dW = σ u vᵀ
        return total, grads

    def add_weight_grads(self, stack: FCStack) -> None:
        """Add the closed-form gradients of the last call (``sja``, ``sj``, ``wd``, ``sw``)
        to the weights' ``.grad``."""
        for term, (idx, grads) in self._pending.items():
            lam = self.lam[term][:, None, None]
            for w, g in zip(stack.weights, grads):
                scale, g = g if isinstance(g, tuple) else (1.0, g)
                if w.grad is None:
                    w.grad = torch.zeros_like(w)
                if isinstance(idx, slice):
                    w.grad[idx].addcmul_(lam, g, value=scale)
                else:
                    w.grad.index_add_(0, idx, lam * g, alpha=scale)
        self._pending = {}

    def __call__(self, stack: FCStack, masks, batch: torch.Tensor, A: torch.Tensor, loss: torch.Tensor):
        """``(penalty (K,), terms)``: ``masks`` of the forward pass, ``batch`` the sample
        indices, ``A`` ``(K, q, p)`` each member's operator, ``loss`` ``(K,)`` (for auto λ).
        Only the Frobenius parts of ``penalty`` carry a graph; the gradients of the others are
        closed-form: call :meth:`add_weight_grads` after ``backward``."""
        K = stack.K
        total = loss.new_zeros(K)
        terms = {}
        self._pending = {}
        for term, idx in self.index.items():
            ws, _ = stack.select(idx)
            ms = [m[idx] for m in masks]
            if term in ("fja", "fj"):
                val = self._frobenius(term, ws, ms, A[idx] if term == "fja" else None)
            else:  # value only here, gradient (closed form) in add_weight_grads
                wd = [w.detach() for w in ws]
                if term in ("sja", "sj"):
                    val, grads = self._spectral(term, wd, ms, batch, A[idx] if term == "sja" else None)
                else:
                    val, grads = self._weights(term, wd)
                self._pending[term] = (idx, grads)
            terms[term] = val.detach()
            self._calibrate(term, loss[idx].detach(), val.detach())
            weighted = self.lam[term].to(val.dtype) * val
            if isinstance(idx, slice):
                total = total + torch.nn.functional.pad(weighted, (idx.start, K - idx.stop))
            else:
                total = total.index_add(0, idx, weighted)
        self.steps += 1
        return total, terms

    def _calibrate(self, term, loss, val):
        auto = self.auto[term]
        if not bool(auto.any()) or self.steps >= self.auto_steps:
            return
        self.history[term].append((loss.cpu(), val.cpu()))
        losses = torch.stack([h[0] for h in self.history[term]]).median(0).values
        vals = torch.stack([h[1] for h in self.history[term]]).median(0).values
        for i in torch.nonzero(auto).flatten().tolist():
            if losses[i] > 0 and vals[i] > 0 and math.isfinite(float(vals[i])):
                self.lam[term][i] = auto_lambda(float(losses[i]), float(vals[i]), self.gamma)


def fit_stack(
    stack: FCStack,
    members: list[Member],
    data: StackData,
    epochs: int,
    batch_size: int = 100,
    lr: float = 1e-3,
    n_iter: int = 1,
    seed: int = 0,
    progress: bool = True,
    desc: str = "stack",
) -> dict:
    """Train every member for ``epochs`` on its group's data; returns the history:
    ``"loss"`` ``(epochs, K)`` mean training ℓ2 per epoch; per term (``sja``, …): ``"lambda"``
    ``(K_t,)`` and ``"index"`` (the members using it); spectral terms also ``"sigma_est"``
    ``(K_t, m)`` (each training sample's estimate at its last visit) and ``"vectors"``
    ``(K_t, m, dim)`` (its warm power-iteration vector).

    Mini-batches are the same sample indices for every member (each reads its own group).
    """
    if len(members) != stack.K:
        raise ValueError(f"fit_stack: {len(members)} members for a stack of {stack.K} models")
    groups = [mb.group for mb in members]
    if max(groups) >= data.x.shape[0] or min(groups) < 0:
        raise ValueError(f"fit_stack: member groups must be in [0, {data.x.shape[0]}), got {groups}")
    # sort the members so that each term's members are one block (slices, not gathers)
    order = sorted(range(stack.K), key=lambda k: (CANONICAL.index(members[k].strategy), k))
    inv = [0] * len(order)
    for j, k in enumerate(order):
        inv[k] = j
    _permute(stack, order)
    try:
        hist = _fit_sorted(
            stack, [members[k] for k in order], data, epochs, batch_size, lr, n_iter, seed, progress, desc
        )
    finally:
        _permute(stack, inv)
    index = {
        t: np.array([order[j] for j in range(stack.K)[i]])
        if isinstance(i, slice)
        else np.array([order[j] for j in i.tolist()])
        for t, i in hist["index"].items()
    }
    return {**hist, "loss": hist["loss"][:, inv], "index": index}


def _permute(stack: FCStack, order: list[int]) -> None:
    if order != list(range(len(order))):
        with torch.no_grad():
            for p in stack.parameters():
                p.copy_(p[order])


def _fit_sorted(stack, members, data, epochs, batch_size, lr, n_iter, seed, progress, desc) -> dict:
    groups = torch.tensor([mb.group for mb in members])
    dev = stack.weights[0].device
    dt = stack.weights[0].dtype
    X, Y, A = (t.to(dev, dt)[groups.to(dev)] for t in (data.x, data.y, data.A))
    m = X.shape[1]
    g = torch.Generator().manual_seed(seed)  # batch order, the same whatever the members
    g_pen = torch.Generator().manual_seed(seed + 1)  # penalty vectors and projections
    pen = StackPenalties(members, stack.dims, m, n_iter, generator=g_pen, dtype=dt).to(dev)
    opt = torch.optim.Adam(stack.parameters(), lr=lr)
    losses = []
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        perm = torch.randperm(m, generator=g).to(dev)
        ep = torch.zeros(stack.K, device=dev)
        for s in range(0, m, batch_size):
            b = perm[s : s + batch_size]
            out, masks = stack.forward_masks(Y[:, b])
            loss = (out - X[:, b]).norm(dim=-1).mean(dim=1)
            penalty, _ = pen(stack, masks, b, A, loss)
            opt.zero_grad(set_to_none=True)
            (loss + penalty).sum().backward()
            pen.add_weight_grads(stack)
            opt.step()
            ep += loss.detach() * len(b)
        losses.append((ep / m).cpu().numpy())
        bar.set_postfix(loss=f"{float(losses[-1].mean()):.3f}")
    return {
        "loss": np.stack(losses),
        "lambda": pen.lambdas(),
        "index": pen.index,
        "sigma_est": {t: v.cpu() for t, v in pen.sigma_est.items()},
        "vectors": {t: v.cpu() for t, v in pen.vec.items()},
    }


@torch.no_grad()
def evaluate_stack(
    stack: FCStack,
    groups: list[int],
    x: torch.Tensor,
    y: torch.Tensor,
    A: torch.Tensor,
    probe: int = 0,
    chunk: int = 1024,
) -> dict[str, np.ndarray]:
    """Per member: mean ``‖f(y) − x‖₂`` (``l2``), MSE, PSNR (data range 1, mean over images),
    and with ``probe > 0`` the exact ``σ(J A)`` / ``σ(J)`` (mean and max) on the first
    ``probe`` samples — from the explicit Jacobian: ``σ(J A) = σ(J L)`` with ``L Lᵀ = A Aᵀ``.

    ``x`` ``(G, n, p)``, ``y`` ``(G, n, q)``, ``A`` ``(G, q, p)`` per group.
    """
    dev = stack.weights[0].device
    gi = torch.tensor(groups, device=dev)
    n = x.shape[1]
    l2 = torch.zeros(stack.K, device=dev)
    mse = torch.zeros(stack.K, device=dev)
    psnr = torch.zeros(stack.K, device=dev)
    for s in range(0, n, chunk):
        xb, yb = x[:, s : s + chunk].to(dev)[gi], y[:, s : s + chunk].to(dev)[gi]
        pred = stack(yb)
        err = (pred - xb).pow(2).sum(-1)
        l2 += err.sqrt().sum(1)
        per = err / xb.shape[-1]
        mse += per.sum(1)
        psnr += (-10 * torch.log10(per.clamp_min(1e-12))).sum(1)
    out = {"l2": (l2 / n).cpu().numpy(), "mse": (mse / n).cpu().numpy(), "psnr": (psnr / n).cpu().numpy()}
    if probe > 0:
        L = torch.linalg.cholesky(A.double() @ A.double().transpose(1, 2)).to(dev)
        sj, sja = [], []
        for k, grp in enumerate(groups):
            J = stack.jacobian(y[grp, :probe].to(dev)[None], index=[k])[0].double()  # (N, p, q)
            sj.append(torch.linalg.matrix_norm(J, ord=2))
            sja.append(torch.linalg.matrix_norm(J @ L[grp], ord=2))
        sj, sja = torch.stack(sj), torch.stack(sja)
        out.update(
            sigma_j=sj.mean(1).cpu().numpy(),
            sigma_j_max=sj.amax(1).cpu().numpy(),
            sigma_ja=sja.mean(1).cpu().numpy(),
            sigma_ja_max=sja.amax(1).cpu().numpy(),
        )
    return out
