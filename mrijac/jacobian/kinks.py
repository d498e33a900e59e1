"""Frozen activation kinks: the perturbed copies of the fd penalty take their originals' slopes.

The fused finite-difference penalty (:mod:`mrijac.jacobian.finite_diff`) differentiates the
surrogate ``⟨û, (f(y + t d) − f(y)) / t⟩`` in θ.  Through a piecewise-linear activation ``φ``
(ReLU, LeakyReLU, Hardtanh) every unit whose pre-activation changes sign between ``y`` and
``y + t d`` adds the jump of ``∂φ/∂θ`` divided by ``t``: a term unrelated to ``∇θ σ`` whose size
grows like ``1/√h`` (measured on fastmri's U-Net: cosine 0.41 with ``∇θ ‖J A v‖`` on real 256²
slices, 0.10 on the demo's 32² task, ``experiments/results/fd_gradient_*.md``).

:class:`FrozenKinks` removes it.  While active, each such activation evaluates the copies' rows
with the *linearisation at the original sample*: ``φ(x_o) + φ'(x_o)(x_c − x_o)``, i.e.
``φ'(x_o)·x_c`` plus a constant (zero for ReLU / LeakyReLU) — what the network would compute if
its activation pattern were the one at ``y``.  The copies then run the network that is linear in
the input around ``y`` up to the smooth layers (InstanceNorm), so
``(f_lin(y + t d) − f(y)) / t = J(y) d + O(t)`` with no kink term, its θ-gradient tends to
``∇θ⟨û, J d⟩`` and the VJP the backward pass hands the copies is ``J(y)ᵀ û``.  Cost: one
elementwise product per activation (a select for Hardtanh); memory: one ``bool`` (``int8`` for Hardtanh) per activation
value of the originals, held until the copies' pass, and one per value of the stacked pass, held
for its backward.

Only activation *modules* are frozen (``nn.ReLU``, ``nn.LeakyReLU``, ``nn.Hardtanh`` and
subclasses such as ``nn.ReLU6``).  A functional ``F.relu`` / ``F.leaky_relu`` / ``F.hardtanh`` or a
max-pooling met while the copies run raises an :class:`UnfrozenKink` (a ``RuntimeError``) naming it (a
``TorchFunctionMode`` watches that pass) rather than leaving its kinks in the gradient.  Smooth
activations need nothing.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

PIECEWISE = (nn.ReLU, nn.LeakyReLU, nn.Hardtanh)
# kinks outside activation modules that this module cannot freeze: a pass in apply mode that calls
# one of these (a functional ReLU, a max-pooling) is refused instead of silently crossing them
_UNFROZEN = {
    *(f"{n}{s}" for n in ("relu", "leaky_relu", "hardtanh", "relu6", "rrelu") for s in ("", "_")),
    *(f"{p}max_pool{d}d{s}" for p in ("", "_", "adaptive_") for d in (1, 2, 3) for s in ("", "_with_indices")),
}


class UnfrozenKink(RuntimeError):
    """A pass with frozen kinks met a kink it cannot freeze (a functional ReLU, a max-pooling), or
    an activation whose rows are not the batch's samples (a network that folds coils into the
    batch, as fastmri's VarNet does): ``JacobianPenalty(fd_kinks="auto")`` then falls back to
    crossing the kinks."""


class _RefuseUnfrozen(TorchFunctionMode):
    """Raise on a call in :data:`_UNFROZEN` (the frozen activations themselves use ``torch.where``)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in _UNFROZEN:
            raise UnfrozenKink(
                f"fd_kinks='freeze': the network calls {name} outside an nn.ReLU / nn.LeakyReLU / nn.Hardtanh "
                "module (a functional call or a max-pooling), whose kinks cannot be frozen; use activation "
                "modules, or fd_kinks='cross'"
            )
        return func(*args, **(kwargs or {}))


def piecewise_activations(module: nn.Module) -> list[nn.Module]:
    """The piecewise-linear activation modules of ``module`` (ReLU, LeakyReLU, Hardtanh/ReLU6)."""
    return [m for m in module.modules() if isinstance(m, PIECEWISE)]


def _region(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Where ``x`` sits on ``mod``'s pieces: ``x > 0`` (bool) for ReLU / LeakyReLU; for Hardtanh
    int8 −1 / 0 / 1 below ``min_val`` / inside / above ``max_val``."""
    if isinstance(mod, nn.Hardtanh):
        return (x > mod.max_val).to(torch.int8) - (x < mod.min_val).to(torch.int8)
    return x > 0


def _slopes(region: torch.Tensor, slope: float, dtype: torch.dtype) -> torch.Tensor:
    """``1`` where ``region``, else ``slope``, as ``dtype`` (both exactly: ``r + (1 − r)·slope``)."""
    r = region.view(torch.uint8).to(dtype)  # a bool's bytes are 0/1; far faster than a select
    return r + (1 - r) * slope


class _SlopeMul(torch.autograd.Function):
    """``x · m``, ``m = 1`` where ``region`` else ``slope``, keeping only the ``bool`` pattern for
    the backward pass (``grad · m``, itself differentiable).  The same numbers as
    ``torch.where(region, x, x · slope)`` — ``x·1`` and ``x·slope`` are the same products — at a
    fraction of its time on the CPU (a select over a bool mask: ~2–5 ms against ~0.1 ms for a
    product on 1.3 M floats, 2 threads).  Forward mode (``jvp``) and ``torch.func`` transforms work
    as they did through the select."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, region, slope):
        return x * _slopes(region, slope, x.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, region, slope = inputs
        ctx.save_for_backward(region)
        ctx.save_for_forward(region)
        ctx.slope = slope

    @staticmethod
    def backward(ctx, grad):
        (region,) = ctx.saved_tensors
        return grad * _slopes(region, ctx.slope, grad.dtype), None, None

    @staticmethod
    def jvp(ctx, x_t, region_t, slope_t):
        (region,) = ctx.saved_tensors
        return x_t * _slopes(region, ctx.slope, x_t.dtype)


def _linearised(mod: nn.Module, region: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``φ(x_o) + φ'(x_o)(x − x_o)`` given the region of ``x_o``: the piece of ``φ`` that holds
    at ``x_o``, evaluated at ``x`` (differentiable in ``x``)."""
    if isinstance(mod, nn.Hardtanh):
        const = torch.where(region > 0, x.new_tensor(mod.max_val), x.new_tensor(mod.min_val))
        return torch.where(region == 0, x, const)
    slope = 0.0 if isinstance(mod, nn.ReLU) else float(mod.negative_slope)
    return _SlopeMul.apply(x, region, slope)


class _Active:
    """The context of :meth:`FrozenKinks.record` / :meth:`FrozenKinks.apply`.  A module-level
    class: one defined per call would be a reference cycle holding the recorded patterns (MBs
    per step) until Python's cyclic collector ran — a resident-memory growth of tens of MiB over
    a training run, measured on 256² slices."""

    def __init__(self, fk: FrozenKinks, mode: tuple):
        self.fk, self.mode = fk, mode

    def __enter__(self):
        fk = self.fk
        fk._mode, fk._calls, fk.seen = self.mode, {}, 0
        # an instance attribute `forward` shadows the class's for nn.Module.__call__ (hooks kept)
        self.saved = [(m, m.__dict__.get("forward")) for m in fk.mods]
        for m in fk.mods:
            m.forward = functools.partial(fk._forward, m)
        self.guard = _RefuseUnfrozen() if self.mode[0] == "apply" else contextlib.nullcontext()
        self.guard.__enter__()
        return fk

    def __exit__(self, *exc):
        self.guard.__exit__(*exc)
        for m, old in self.saved:
            if old is None:
                del m.forward
            else:
                m.forward = old
        self.fk._mode = None
        self.saved = None
        return False


class FrozenKinks:
    """Record the activation pattern of some rows of a forward pass, and evaluate other rows of
    a later (or the same) pass with it.

    Use as::

        fk = FrozenKinks(model)
        with fk.record(rows):          # f(y_S): store the pieces of rows ``rows`` (None: all)
            out0 = model(y_S)
        with fk.apply(start, source):  # rows start: of this pass use the stored rows ``source``
            out1 = model(torch.cat([y_rest, copies]))

    or both in one pass: ``with fk.apply(start, source, rows=rows_o)`` reads the pattern from rows
    ``rows_o`` of the same pass.  Rows before ``start`` get the activation itself (the same values
    and derivative).  While a context is active each activation module's ``forward`` is replaced
    (an instance attribute; removed on exit), so that in apply mode the whole batch goes through
    one product (a select for Hardtanh) that keeps only a ``bool`` pattern for the backward pass.  Activation calls are
    matched by module and order of call within the pass, so a module used
    twice in one forward is handled.  ``seen``: activation calls in the last context.
    """

    def __init__(self, module: nn.Module):
        self.mods = piecewise_activations(module)
        self.store: dict | None = None  # None until a record pass
        self.seen = 0
        self._mode = None

    def record(self, rows: torch.Tensor | None = None):
        self.store = {}
        return self._context(("record", rows))

    def apply(self, start: int, source: torch.Tensor, rows: torch.Tensor | None = None):
        if rows is None and self.store is None:
            raise RuntimeError("FrozenKinks.apply: nothing recorded (record first, or give rows=)")
        return self._context(("apply", start, source, rows))

    def _context(self, mode):
        return _Active(self, mode)

    def _forward(self, mod, x):
        i = self._calls.get(mod, 0)
        self._calls[mod] = i + 1
        self.seen += 1
        key = (id(mod), i)
        if self._mode[0] == "record":  # the pattern first: an in-place module overwrites x
            rows = self._mode[1]
            self.store[key] = _region(mod, (x if rows is None else x[rows]).detach())
            return type(mod).forward(mod, x)
        _, start, source, rows = self._mode
        if rows is not None:
            region = _region(mod, x[rows].detach())
        else:
            if key not in self.store:
                raise RuntimeError(
                    f"FrozenKinks: activation {mod} (call {i}) ran in this pass but not in the recorded one"
                )
            region = self.store[key]
        region = region[source]
        if region.shape != x[start:].shape:
            raise UnfrozenKink(
                f"FrozenKinks: {region.shape[0]} source rows of shape {tuple(region.shape[1:])} for the "
                f"{x.shape[0] - start} rows from {start} of shape {tuple(x.shape[1:])} (activation {mod}, call "
                f"{i}: a network that moves another dimension into the batch, e.g. VarNet's coils, cannot have "
                "its kinks frozen by sample row; use fd_kinks='cross')"
            )
        # one product over the whole batch: φ itself on rows < start (their own pattern), the
        # originals' piece on the copies; saves only the bool pattern for the backward pass, so the
        # memory is the module's own (an in-place module's: one tensor, plus the pattern)
        return _linearised(mod, torch.cat([_region(mod, x[:start].detach()), region]), x)
