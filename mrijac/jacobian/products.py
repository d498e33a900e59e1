"""Jacobian–vector products of a network ``f: y -> x̂`` (never a full Jacobian in training).

``f`` is any callable on a batch ``(B, …)`` whose samples do not interact (InstanceNorm,
convolutions, per-sample normalisation); then one batched product gives every sample's
``J_b v_b``.  Complex tensors are real vectors of twice the length: ``jvp`` returns the
real-linear directional derivative and ``vjp`` the real-view transpose ``Jᵀu`` packed back
as a complex tensor (PyTorch's conjugate-Wirtinger convention does exactly this).
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD

from .vectors import Network, randn_like, to_real

METHODS = ("forward", "double_vjp")


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def third_order_hint(err: RuntimeError) -> RuntimeError:
    msg = str(err)
    if "3rd+ order" in msg or "double backward" in msg.lower():
        return RuntimeError(
            f"{msg}\nThis network cannot be differentiated three times "
            "(InstanceNorm/BatchNorm): use method='forward' (forward-mode AD)."
        )
    return err


def jvp(f: Network, y: torch.Tensor, v: torch.Tensor, method: str = "forward", create_graph: bool = False):
    """``(f(y), J(y) v)`` for a batch.

    Args:
        f: callable ``(B, …) -> (B, …)``.
        y: input ``(B, …)``, real or complex.  ``v``: tangent of the same shape and dtype.
        method: ``"forward"`` — one dual forward pass (forward-mode AD; works through
            InstanceNorm and complex FFTs); ``"double_vjp"`` — the double-backward trick
            ``J v = ∂/∂u <Jᵀu, v>`` (the paper's Algorithm 3).
        create_graph: keep the graph so that the outputs can be differentiated with respect to
            the parameters of ``f`` (training); otherwise both outputs are detached.
    Returns:
        ``(out, Jv)``: ``out`` is the primal ``f(y)`` of
        the very pass that produced the tangent, so it can feed the data loss.
    """
    check_method(method)
    y_leaf = y.detach().requires_grad_(method == "double_vjp")
    if method == "forward":
        ctx = torch.enable_grad() if create_graph else torch.no_grad()
        with ctx, fwAD.dual_level():
            out_d = f(fwAD.make_dual(y_leaf, v))
            out, t = fwAD.unpack_dual(out_d)
        if t is None:
            t = torch.zeros_like(out)
        if not create_graph:
            out, t = out.detach(), t.detach()
    else:
        try:
            with torch.enable_grad():
                out = f(y_leaf)
                u = torch.zeros_like(out, requires_grad=True)
                (g,) = torch.autograd.grad(out, y_leaf, u, create_graph=True)
                (t,) = torch.autograd.grad(g, u, v, create_graph=create_graph)
        except RuntimeError as err:
            raise third_order_hint(err) from err
        if not create_graph:
            out, t = out.detach(), t.detach()
    return out, t


def vjp(
    f: Network,
    y: torch.Tensor,
    u: torch.Tensor | None = None,
    create_graph: bool = False,
    generator: torch.Generator | None = None,
):
    """``(f(y), J(y)ᵀ u)`` for a batch.

    ``u`` has the output's shape and dtype; ``None`` draws a standard normal ``u`` (from
    ``generator``) once the output shape is known.  Returns ``(out, Jᵀu, u)``; all detached
    unless ``create_graph``.
    """
    y_leaf = y.detach().requires_grad_()
    try:
        with torch.enable_grad():
            out = f(y_leaf)
            if u is None:
                u = randn_like(out, generator)
            (g,) = torch.autograd.grad(out, y_leaf, u, create_graph=create_graph)
    except RuntimeError as err:
        raise third_order_hint(err) from err
    if not create_graph:
        out, g = out.detach(), g.detach()
    return out, g, u


def explicit_jacobian(f: Network, y: torch.Tensor) -> torch.Tensor:
    """Real-view Jacobian per sample, ``(B, out_dim, in_dim)`` (for checks on small problems).

    A complex input or output counts as its real view ``(…, 2)`` flattened (re, im
    interleaved).  ``f`` is applied to the whole batch (so closures over batched operators
    work) and the diagonal blocks of the batch Jacobian are returned; computed with
    ``torch.func.jacrev`` and differentiable with respect to tensors captured by ``f``.
    """
    y = y.detach()
    B = y.shape[0]
    yr = to_real(y)

    def g(vec):
        x = vec.view(yr.shape)
        x = torch.view_as_complex(x) if y.is_complex() else x
        return to_real(f(x)).reshape(B, -1)

    J = torch.func.jacrev(g)(yr.reshape(B, -1))  # (B, out, B, in)
    idx = torch.arange(B, device=J.device)
    return J[idx, :, idx, :]


def operator_matrix(A, dtype=torch.float64) -> torch.Tensor:
    """Real-view matrix of a linear operator per sample, ``(A.batch_size, out_dim, in_dim)``."""
    x = A.random_input(dtype=dtype)
    return explicit_jacobian(A.to(dtype=dtype) if hasattr(A, "to") else A, x)
