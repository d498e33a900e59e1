"""Regularizers: model-aware Jacobian penalties and the model-agnostic baselines.

Paper names: ``sja`` (spectral ``||J A||₂``), ``sj`` (spectral ``||J||₂``), ``fja``/``fj``
(Frobenius), ``wd`` (weight decay), ``sw`` (spectral norm of the weights).
"""

from __future__ import annotations

import contextlib
import numbers
import warnings
from dataclasses import dataclass, field

import torch

from ..names import auto_n_iter, auto_rank
from .finite_diff import OTHERS_WEIGHT, check_fd_network, default_step, fd_power_step, fd_probe
from .kinks import FrozenKinks, UnfrozenKink
from .lam import auto_lambda
from .norms import frobenius_terms, power_iteration
from .products import METHODS
from .reference import lanczos_start
from .vectors import Network, Operator, unit_start

KINDS = ("spectral", "frobenius")
LANCZOS_JVPS = ("forward", "fd")
FD_KINKS = ("auto", "freeze", "cross")
FIRST_VISITS = ("ranked", "all")
RANKS = ("auto", "stored", "probe", "lanczos")


@dataclass(frozen=True)
class PenaltySchedule:
    """When the penalty acts: every ``every`` steps (weighted ×``every`` so its average weight
    is unchanged, unless ``hold``: the caller re-applies the last penalty gradient in
    between); with ``alternate`` and both terms, ``J A`` and ``J`` in turn, each ×2."""

    every: int = 1
    alternate: bool = False
    hold: bool = False

    def __post_init__(self):
        if int(self.every) < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")


@dataclass
class WarmStart:
    """Warm-start input of a :class:`JacobianPenalty` call, per sample of the batch.

    ``vectors`` maps ``"u_ja"``/``"u_j"`` (left singular vectors, the output space; methods
    ``forward``/``double_vjp``) or ``"v_ja"``/``"v_j"`` (right singular vectors, the input
    space of the term's operator; ``method="fd"``) to ``(B, …)`` tensors; ``cold`` ``(B,)``
    bool marks samples without stored vectors (they start with at least one exact iteration).
    Produced by :class:`~mrijac.train.warm.WarmStore` and
    :class:`~mrijac.train.pool.TrackedPool`; a plain dict of the same names is accepted too.
    """

    vectors: dict = field(default_factory=dict)
    cold: torch.Tensor | None = None

    def get(self, name: str) -> torch.Tensor | None:
        return self.vectors.get(name)

    def select(self, index) -> "WarmStart":
        """The rows ``index`` of every vector (and of ``cold``)."""
        return WarmStart(
            {k: v[index] for k, v in self.vectors.items() if v is not None},
            None if self.cold is None else self.cold[index],
        )

    @classmethod
    def coerce(cls, v0) -> "WarmStart | None":
        if v0 is None or isinstance(v0, cls):
            return v0
        return cls({k: v for k, v in v0.items() if k != "cold"}, v0.get("cold"))


class PenaltyStats(dict):
    """What one :class:`JacobianPenalty` call measured — a mapping (``"sigma_ja"``,
    ``"term_ja"``, ``"v_ja"``/``"u_ja"``, ``"fro_ja"``, ``"index"``, and the same for ``j``;
    stores and checkpoints keep using these keys) with typed views:

    * :attr:`sigma` — per-sample estimates ``{"ja": (S,), "j": (S,)}`` of ``‖J A‖₂``/``‖J‖₂``;
    * :attr:`frobenius` — per-sample ``‖J A‖F²``/``‖J‖F²`` estimates (Frobenius kind);
    * :attr:`terms` — the unweighted differentiable terms (``max`` or ``Σ`` over the batch);
    * :attr:`vectors` — next warm-start vectors (``u_*`` left, output space; ``v_*`` right,
      input space of the operator; with ``method="fd"`` filled in by the backward pass);
    * :attr:`index` — batch rows the per-sample entries belong to (``None``: all rows);
    * ``"coincide"`` — ``‖J‖ = ‖J A‖`` holds exactly for this call (:func:`terms_coincide`,
      with ``tie``), so the two terms are one quantity (one automatic λ serves both);
    * ``"first_visit"`` (``method="fd"``) — a penalised sample had no stored vector (with
      ``n_iter=1`` the step then began with one exact iteration more: that setting's costly
      case; with ``n_iter >= 2`` every visit runs its ``n_iter − 1`` Lanczos steps anyway).
    """

    def _by_term(self, prefix: str) -> dict:
        return {t: self[f"{prefix}_{t}"] for t in ("ja", "j") if f"{prefix}_{t}" in self}

    @property
    def sigma(self) -> dict[str, torch.Tensor]:
        return self._by_term("sigma")

    @property
    def frobenius(self) -> dict[str, torch.Tensor]:
        return self._by_term("fro")

    @property
    def terms(self) -> dict[str, torch.Tensor]:
        return self._by_term("term")

    @property
    def vectors(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.items() if k.startswith(("u_", "v_"))}

    @property
    def index(self) -> torch.Tensor | None:
        return self.get("index")


def terms_coincide(f, A) -> bool:
    """``‖J(y)‖ = ‖J(y) A‖`` exactly (spectral and Frobenius norms), so one estimate serves both.

    Holds when ``f`` sees ``y`` only through ``Aᴴ y`` (a :class:`~mrijac.models.Reconstructor`
    with ``input="adjoint"``) and ``A`` is a partial isometry (``A Aᴴ A = A``: single-coil MRI,
    a 0/1 mask after the unitary FFT).  Then ``P = Aᴴ A`` is an orthogonal projection with
    ``Aᴴ = P Aᴴ`` and, writing ``f = g ∘ Aᴴ``, ``J = J_g Aᴴ = J_g P Aᴴ`` while ``J A = J_g P``;
    for ``A = M F``, ``Aᴴ = F⁻¹ M = P F⁻¹`` with ``F⁻¹`` unitary, so ``‖J‖ = ‖J_g P F⁻¹‖ = ‖J_g P‖
    = ‖J A‖``.  (Multi-coil SENSE operators are not partial isometries: the terms differ.)
    """
    return A is not None and getattr(f, "input", None) == "adjoint" and bool(getattr(A, "partial_isometry", False))


def network_module(f) -> torch.nn.Module | None:
    """The module behind a penalty's network ``f``: ``f`` itself, the ``module`` attribute of a
    closure (``Reconstructor.as_function``), or ``None`` for a plain callable — what the network
    checks and :class:`~mrijac.jacobian.kinks.FrozenKinks` inspect."""
    if isinstance(f, torch.nn.Module):
        return f
    m = getattr(f, "module", None)
    return m if isinstance(m, torch.nn.Module) else None


def _refuse_fused_instance_norm(net, method: str) -> None:
    """The forward / double-vjp penalties differentiate a JVP; through a fused InstanceNorm that
    derivative is silently wrong (forward mode: pytorch/pytorch#196699) or raises (double vjp).
    ``net``: a module, or a closure with a ``module`` attribute (``Reconstructor.as_function``)."""
    net = network_module(net)
    if net is None:
        return
    for name, mod in net.named_modules():
        if isinstance(mod, torch.nn.modules.instancenorm._InstanceNorm):
            raise ValueError(
                f"method={method!r} differentiates a Jacobian-vector product, but {name} is a fused "
                "InstanceNorm whose second derivative torch gets wrong (pytorch/pytorch#196699): call "
                "mrijac.models.plain_instance_norms(model) first (the trainer does), or use method='fd'"
            )


def _check_lambda(name, val):
    if val == "auto":
        return val
    try:
        val = float(val)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number >= 0 or 'auto', got {val!r}") from None
    if not val >= 0:
        raise ValueError(f"{name} must be >= 0 or 'auto', got {val}")
    return val


def _cold(v0, vs: list | None, idx) -> bool:
    """Whether any of rows ``idx`` (``None``: all) starts without a stored vector: nothing stored,
    a term's vector missing (``vs`` entries ``None``) or marked ``WarmStart.cold``."""
    if v0 is None or any(v is None for v in vs):
        return True
    return v0.cold is not None and bool(v0.cold.reshape(-1)[slice(None) if idx is None else idx].any())


def _recorded_pass(fn, y: torch.Tensor, kinks, leaf: bool = False):
    """``(y_leaf, f(y), fk)``: the batch's forward pass with its graph, the activation pattern of
    every row recorded in a :class:`~mrijac.jacobian.kinks.FrozenKinks` ``fk`` (``None`` without
    ``kinks``); ``leaf``: from a copy of ``y`` that requires grad (for VJPs), else ``y_leaf`` is
    ``None``."""
    fk = FrozenKinks(kinks) if kinks is not None else None
    y_leaf = y.detach().clone().requires_grad_() if leaf else None
    with torch.enable_grad(), fk.record() if fk is not None else contextlib.nullcontext():
        out = fn(y if y_leaf is None else y_leaf)
    return y_leaf, out, fk


class JacobianPenalty:
    """Model-aware Jacobian penalty, eq. (8) (spectral) or eq. (10) (Frobenius).

    spectral:  ``λ1 max_b ||J(y_b) A_b||₂ + λ2 max_b ||J(y_b)||₂``
    frobenius: ``λ1 Σ_b ||J(y_b) A_b||F² + λ2 Σ_b ||J(y_b)||F²``

    Called as ``out, penalty, stats = pen(f, y, A)``: ``out = f(y)`` comes from the same pass
    that carries the tangents (no extra forward), ``penalty`` is a differentiable scalar and
    ``stats`` holds the per-sample estimates ``sigma_ja``/``sigma_j`` (spectral) or
    ``fro_ja``/``fro_j`` (Frobenius, squared norms), the unweighted terms ``term_ja``/``term_j``
    and, for the spectral kind, the next warm-start vectors ``u_ja``/``u_j`` (pass them back as
    ``v0=WarmStart({"u_ja": …, "u_j": …})``, or the same names in a dict).

    Args:
        kind: ``"spectral"`` or ``"frobenius"``.
        lambda_ja, lambda_j: weights λ1 (for ``J A``) and λ2 (for ``J``); 0 switches a term off;
            ``"auto"`` picks it on the first batch with :func:`auto_lambda` (call
            :meth:`calibrate`).
        n_iter: power iterations (spectral; with ``method="fd"``: ``n_iter − 1`` exact
            Lanczos steps from the carried vector before the fused step, see
            :func:`~mrijac.jacobian.reference.lanczos_start`); ``"auto"``: with
            ``method="fd"`` 3, or 4 on a batch of one sample, per call
            (:func:`~mrijac.names.auto_n_iter`, the measured default; :attr:`n_iter` holds 3),
            else 1; n_proj: random projections
            (Frobenius).
        method: ``"forward"`` (forward-mode AD, works for InstanceNorm U-Nets),
            ``"double_vjp"``, or ``"fd"`` (spectral only: one power iteration per step fused
            with the training pass — finite-difference JVP on a perturbed copy of each
            penalised sample, VJP from the training backward, right singular vectors
            ``v_ja``/``v_j`` carried between steps; see :mod:`mrijac.jacobian.finite_diff`).
            With ``"fd"`` the next vectors appear in ``stats`` once the caller has run
            ``backward`` on the penalty; samples without a vector (``v0`` missing, or marked
            by ``WarmStart.cold`` ``(B,)``) get at least one exact iteration before the fused
            step.
        every: apply the penalty every ``every`` steps (pass ``step``); the penalty is then
            multiplied by ``every`` so that its average weight is unchanged.
        alternate: with both terms, penalise only one per penalised step, ``J A`` and ``J`` in
            turn, each weighted ×2 (the average weight is unchanged; half the cost).
        fd_step: relative step ``h`` of the finite differences (default ``0.3·√ε``, 1e-4 in
            float32).
        hold: with ``every > 1``, the caller re-applies the gradient of the last penalised step
            on the steps in between (see :class:`~mrijac.train.trainer.Trainer`), so the
            penalty is not multiplied by ``every``; the gradient then has the same size every
            step (Adam's moments are not driven by ×k spikes).
        recompute: ``method="fd"``: checkpoint the perturbed copies (run first, activations
            recomputed in the backward pass after the batch's are freed) — peak memory of the
            plain step when the copies are no more than the batch, for one more forward of
            the copies.
        lanczos_jvp: ``method="fd"``: how the exact steps before the fused one (``n_iter − 1``
            Lanczos steps, a first visit's iteration) compute ``J A v`` — ``"forward"`` mode,
            or ``"fd"``, a forward difference of step ``fd_step`` (one forward without graph
            each: cheaper, same vectors to the difference's ~1e-4 relative error); ``"auto"``:
            ``"fd"`` with ``method="fd"``, else ``"forward"``.
        fd_kinks: ``method="fd"``: ``"freeze"`` — the perturbed copies evaluate the network's
            ReLU / LeakyReLU / Hardtanh modules with their original sample's activation pattern
            (:class:`~mrijac.jacobian.kinks.FrozenKinks`), so the difference and its θ-gradient
            have no term from units switching between ``y`` and ``y + t d``: the trained
            gradient is ``∇θ σ``; ``"cross"``: the copies run the network as it is (the default
            until 2026-11-29: a gradient 2.2–7× as long at cosine 0.1–0.4 with ``∇θ σ``).
            ``"freeze"`` needs the network as a module (``f`` itself, or a closure with a
            ``module`` attribute).  ``"auto"`` (default): ``"freeze"`` where the network is a
            module, ``"cross"`` for a plain callable; a network whose kinks cannot be frozen (a
            functional ReLU, a max-pooling: :class:`~mrijac.jacobian.kinks.UnfrozenKink`) makes
            it ``"cross"`` from then on, with a warning naming the call.
        first_visits: ``method="fd"`` with ``samples``: ``"ranked"`` — samples without a stored
            vector (``v0`` missing, or ``WarmStart.cold``) rank first (``priority`` ∞) and count
            towards ``samples``, so with ``samples=1`` a batch of unvisited samples penalises one
            of them, on a one-iteration estimate, while the others' σ goes unwatched until their
            turn; ``"all"`` — every unvisited sample of the batch is penalised too (``samples``
            of the largest ``priority`` plus them): the first pass over the data costs what the
            whole batch costs, and from then on each penalised sample is the arg-max of warm
            estimates.  Other methods, or no ``warm_start_vectors`` (every visit is then a first
            one): ``"ranked"``.
        rank: ``method="fd"`` with ``samples`` below the batch size: how the penalised rows are
            chosen.  ``"stored"`` — by ``priority`` (the trainer's: each sample's σ stored at its
            last penalised visit, unvisited first), which goes stale: a sample's stored σ changes
            only when it is penalised.  ``"probe"`` — by a fresh lower bound of every row's σ
            at the current weights, ``‖J A v_b‖`` with the row's stored vector (``v0``; an
            unvisited row's is the recent one), one forward difference per row without graph
            (:func:`~mrijac.jacobian.finite_diff.fd_probe`; with ``fd_kinks="freeze"`` on the
            row's own activation pattern): the batch's ``f(y)`` is computed first, the probes
            then cost one forward of the batch without graph.  Without ``v0`` (nothing stored
            yet) ``"probe"`` falls back to ``priority``.  ``"lanczos"`` — every row gets the
            ``n_iter − 1`` (at least 1) Lanczos steps from its stored vector that the penalised
            rows get anyway, on the batch's own forward graph (the whole batch's estimates, as
            with ``samples=None``); the ``samples`` rows of largest Lanczos bound (max over the
            terms) then get the fused step's perturbed copies, the others keep their Lanczos
            vector and bound (``stats`` holds every row: no ``"index"``).  The whole batch's
            fresh estimates and ranking without its copies.  Not with ``recompute`` or
            ``first_visits="all"``.  ``"auto"`` (default): ``"lanczos"`` with ``method="fd"``
            (unless ``recompute`` or ``first_visits="all"``), else ``"stored"`` — with
            ``fd_kinks="auto"`` the setting that tracks the expensive reference on real slices
            (#10 §2: ``experiments/results/true_sigma_real_lam01_ref_30ep.md``).
        tie: when the two norms are provably equal (:func:`terms_coincide`: single-coil MRI
            with a 0/1 mask and a reconstructor that sees only ``Aᴴ y``), estimate ``‖J A‖``
            once and use it for both terms — the same penalty at half the cost.
        gamma: γ of the automatic λ.
        warm_start_vectors: return the next left singular vectors (``stats["u_ja"]``,
            ``"u_j"``, output space) for reuse as ``v0`` — free: they are the final tangents.
        samples: spectral kind only — carry the penalty's graph for just this many samples of
            the batch (those with the largest ``priority``, e.g. last σ estimates), the others
            going through a plain forward.  ``max_b σ_b`` only has a gradient through its
            argmax, so when the argmax is among them the gradient is unchanged; time and memory
            then grow with ``samples`` instead of the batch.  Needs ``f`` to be a module with
            ``as_function(A)`` (a :class:`~mrijac.models.Reconstructor`), so that the operator
            can be restricted to those samples.
    """

    def __init__(
        self,
        kind: str = "spectral",
        *,
        lambda_ja: float | str = 0.0,
        lambda_j: float | str = 0.0,
        n_iter: int | str = "auto",
        n_proj: int = 1,
        method: str = "forward",
        schedule: PenaltySchedule | None = None,
        every: int = 1,
        alternate: bool = False,
        hold: bool = False,
        gamma: float = 20.0,
        warm_start_vectors: bool = True,
        samples: int | None = None,
        fd_step: float | None = None,
        recompute: bool = False,
        tie: bool = True,
        lanczos_jvp: str = "auto",
        fd_kinks: str = "auto",
        first_visits: str = "ranked",
        rank: str = "auto",
    ):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if method not in METHODS + ("fd",):
            raise ValueError(f"method must be one of {METHODS + ('fd',)}, got {method!r}")
        if method == "fd" and kind != "spectral":
            raise ValueError(
                "method='fd' is for the spectral penalty; the Frobenius penalty takes 'forward' or 'double_vjp'"
            )
        if fd_step is not None and not 0 < float(fd_step) < 1:
            raise ValueError(f"fd_step must be in (0, 1), got {fd_step}")
        if lanczos_jvp == "auto":
            lanczos_jvp = "fd" if method == "fd" else "forward"
        # "auto": resolved per call by the batch's size (names.auto_n_iter: 4 for one sample)
        self.auto_steps = n_iter == "auto" and method == "fd"
        if n_iter == "auto":  # the value for a batch of several samples; steps() gives one sample its own
            n_iter = auto_n_iter(method, batch=2)
        if isinstance(n_iter, bool) or not isinstance(n_iter, numbers.Integral) or n_iter < 1:
            raise ValueError(f"n_iter must be an integer >= 1 or 'auto', got {n_iter!r}")
        if lanczos_jvp not in LANCZOS_JVPS:
            raise ValueError(f"lanczos_jvp must be one of {('auto',) + LANCZOS_JVPS}, got {lanczos_jvp!r}")
        if lanczos_jvp == "fd" and method != "fd":
            raise ValueError(f"lanczos_jvp='fd' is for method='fd' (its warm Lanczos steps), not method={method!r}")
        if fd_kinks not in FD_KINKS:
            raise ValueError(f"fd_kinks must be one of {FD_KINKS}, got {fd_kinks!r}")
        if first_visits not in FIRST_VISITS:
            raise ValueError(f"first_visits must be one of {FIRST_VISITS}, got {first_visits!r}")
        if rank not in RANKS:
            raise ValueError(f"rank must be one of {RANKS}, got {rank!r}")
        if rank == "auto":
            rank = auto_rank(method, recompute, first_visits)
        if rank != "stored" and (recompute or first_visits == "all"):
            raise ValueError(f"rank={rank!r} does not combine with recompute=True or first_visits='all'")
        self.rank = rank
        self.lanczos_jvp = lanczos_jvp
        self.fd_kinks = fd_kinks
        self.first_visits = first_visits
        if schedule is None:
            schedule = PenaltySchedule(int(every), bool(alternate), bool(hold))
        elif (every, alternate, hold) != (1, False, False):
            raise ValueError("give either schedule=PenaltySchedule(…) or every/alternate/hold")
        self.schedule = schedule
        self.kind = kind
        self.lambda_ja = _check_lambda("lambda_ja", lambda_ja)
        self.lambda_j = _check_lambda("lambda_j", lambda_j)
        self.n_iter, self.n_proj, self.method = int(n_iter), int(n_proj), method
        self.gamma = float(gamma)
        self.warm_start_vectors = warm_start_vectors
        if samples is not None and (int(samples) < 1 or kind != "spectral"):
            raise ValueError(f"samples must be >= 1 and needs kind='spectral', got {samples}")
        self.samples = None if samples is None else int(samples)
        self.fd_step = None if fd_step is None else float(fd_step)
        self.recompute = bool(recompute)
        self.tie = bool(tie)

    def steps(self, batch: int) -> int:
        """Power steps per call on a batch of ``batch`` samples: ``n_iter``, or with
        ``n_iter="auto"`` and ``method="fd"`` :func:`~mrijac.names.auto_n_iter` (3; 4 for one
        sample)."""
        return auto_n_iter(self.method, batch) if self.auto_steps else self.n_iter

    @property
    def every(self) -> int:
        return self.schedule.every

    @property
    def alternate(self) -> bool:
        return self.schedule.alternate

    @property
    def hold(self) -> bool:
        return self.schedule.hold

    @property
    def terms(self) -> list[str]:
        """Active terms: ``"ja"`` and/or ``"j"``."""
        return [t for t, lam in (("ja", self.lambda_ja), ("j", self.lambda_j)) if lam != 0]

    @property
    def needs_calibration(self) -> bool:
        return "auto" in (self.lambda_ja, self.lambda_j)

    def active(self, step: int | None) -> bool:
        return bool(self.terms) and (step is None or step % self.every == 0)

    def terms_at(self, step: int | None) -> list[str]:
        """Terms penalised at ``step`` (one of the two in turn with ``alternate``)."""
        terms = self.terms
        if self.alternate and len(terms) == 2 and step is not None:
            return [terms[(step // self.every) % 2]]
        return terms

    @property
    def factor(self) -> int:
        """Weight of a penalised step: ``every`` (1 with ``hold``), × 2 with ``alternate``."""
        return (1 if self.hold else self.every) * (2 if self.alternate and len(self.terms) == 2 else 1)

    def __call__(
        self,
        f: Network | torch.nn.Module,
        y: torch.Tensor,
        A: Operator = None,
        step: int | None = None,
        v0: WarmStart | dict | None = None,
        generator: torch.Generator | None = None,
        priority: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
    ):
        """``(out, penalty, stats)``; ``f`` is a callable ``y -> x̂`` or a module with
        ``as_function(A)``.  With ``samples`` set, ``stats["index"]`` lists the samples whose
        σ and vectors ``stats`` holds (in that order); ``priority`` ``(B,)`` ranks them.
        ``index`` (``method="fd"``): penalise exactly these rows of the batch (e.g. tracked
        samples appended after the data, see :class:`~mrijac.train.pool.TrackedPool`)."""
        v0 = WarmStart.coerce(v0)
        module = f if callable(getattr(f, "as_function", None)) else None
        fn = module.as_function(A) if module is not None else f
        if not self.active(step):
            return fn(y), y.new_zeros((), dtype=y.real.dtype), PenaltyStats()
        terms = self.terms_at(step)
        B = y.shape[0]
        subset = self.samples is not None and self.samples < B
        if subset and module is None:
            raise ValueError(
                "JacobianPenalty(samples=…) needs a module with as_function(A) (a Reconstructor), not a plain callable"
            )
        if index is not None and self.method != "fd":
            raise ValueError("JacobianPenalty(index=…) needs method='fd'")
        if self.method != "fd" and torch.is_grad_enabled():
            _refuse_fused_instance_norm(module if module is not None else f, self.method)
        coincide = self.tie and terms_coincide(module, A)
        tied = coincide and "j" in terms
        work = ["ja"] if tied else terms
        if self.method == "fd":
            probe = index is None and subset and self.rank == "probe" and v0 is not None
            lanczos = index is None and subset and self.rank == "lanczos"
            if index is None and subset and not (probe or lanczos):
                index = self._fd_index(y, v0, priority)
            out, pen, stats = self._fd(module, fn, y, A, work, v0, generator, index, probe, lanczos)
        elif subset:
            out, pen, stats = self._subset(module, y, A, work, v0, generator, priority)
        else:
            out, pen, stats = self._full(fn, y, A, work, v0, generator)
        if tied:  # the J estimates are the J A ones (the same object: fd's vectors arrive later)
            for k in ("sigma", "term", "fro", "argmax"):
                if f"{k}_ja" in stats:
                    stats[f"{k}_j"] = stats[f"{k}_ja"]
                    if "ja" not in terms:
                        del stats[f"{k}_ja"]
            pen = self.weighted(stats)
        stats["coincide"] = coincide
        return out, pen, stats

    @staticmethod
    def _order(y, priority):
        B = y.shape[0]
        if priority is None:
            return torch.arange(B, device=y.device)  # the loader already shuffled the batch
        return torch.argsort(torch.as_tensor(priority, device=y.device).reshape(B), descending=True)

    def _fd_index(self, y, v0, priority):
        """Rows the fd penalty acts on: the ``samples`` of largest ``priority`` and, with
        ``first_visits="all"``, every row without a stored vector; ``None``: all rows."""
        order = self._order(y, priority)
        if self.first_visits != "all" or not self.warm_start_vectors:
            return order[: self.samples]
        B = y.shape[0]
        if v0 is None:  # nothing stored yet: every row is a first visit
            return None
        picked = torch.zeros(B, dtype=torch.bool, device=order.device)
        if v0.cold is not None:
            picked |= v0.cold.reshape(B).to(device=order.device, dtype=torch.bool)
        picked[order[: self.samples]] = True
        return None if bool(picked.all()) else order[picked[order]]

    def _fd(self, module, fn, y, A, terms, v0, generator, idx, probe=False, lanczos=False):
        net = module if module is not None else network_module(fn)
        if self.fd_kinks != "auto" or net is None:
            return self._fd_run(net, module, fn, y, A, terms, v0, generator, idx, probe, lanczos)
        try:
            return self._fd_run(net, module, fn, y, A, terms, v0, generator, idx, probe, lanczos, freeze=True)
        except UnfrozenKink as err:  # a kink no module holds: cross them all from now on
            self.fd_kinks = "cross"
            warnings.warn(f"JacobianPenalty(fd_kinks='auto'): crossing the kinks from now on — {err}", stacklevel=3)
            return self._fd_run(net, module, fn, y, A, terms, v0, generator, idx, probe, lanczos)

    def _fd_run(self, net, module, fn, y, A, terms, v0, generator, idx, probe=False, lanczos=False, freeze=None):
        check_fd_network(net if net is not None else fn)
        kinks = None
        if freeze or self.fd_kinks == "freeze":
            kinks = net
            if kinks is None:
                raise ValueError(
                    "JacobianPenalty(fd_kinks='freeze') needs the network as a torch.nn.Module (or a closure "
                    "with a module attribute) to find its activations; use fd_kinks='cross' for a plain callable"
                )
        make_fn = module.as_function if module is not None else (lambda op: fn)
        if lanczos:
            return self._fd_lanczos(fn, make_fn, y, A, terms, v0, generator, kinks)
        base = probe_sigma = None
        if probe:  # f(y) of the batch first (its pattern recorded), then a fresh σ bound per row
            _, out_all, fk = _recorded_pass(fn, y, kinks)
            with_A = [t == "ja" for t in terms]
            probe_sigma = fd_probe(
                fn, y, A, with_A, [v0.get(f"v_{t}") for t in terms], out_all, self.fd_step, fk, generator
            )
            idx = torch.argsort(probe_sigma, descending=True)[: self.samples]
            base = (out_all, fk)
        vs = None
        if v0 is not None:
            vs = [v0.get(f"v_{t}") for t in terms]
            vs = [None if v is None else (v if idx is None else v[idx]) for v in vs]
        cold = _cold(v0, vs, idx)
        # a first visit starts from one exact iteration: as good as forward mode's n = 1
        n_pre = max(self.steps(y.shape[0]) - 1, 1 if cold else 0)
        stats = PenaltyStats()
        out, surr, sig = fd_power_step(
            make_fn,
            y,
            A,
            [t == "ja" for t in terms],
            idx,
            vs,
            self.fd_step,
            n_pre,
            generator,
            sink=stats if self.warm_start_vectors else None,
            names=[f"v_{t}" for t in terms],
            recompute=self.recompute,
            pre_fd=self.lanczos_jvp == "fd",
            kinks=kinks,
            base=base,
        )
        for k, t in enumerate(terms):
            stats[f"sigma_{t}"] = sig[k]
            # value max_b σ̂_b; the other copies get a gradient of weight OTHERS_WEIGHT so that
            # the backward also hands them their VJP (their vectors advance too); that biases
            # ∇θ by OTHERS_WEIGHT·Σ_b ∇σ_b, far below float32 resolution of the step
            stats[f"term_{t}"] = surr[k].max() + OTHERS_WEIGHT * (surr[k] - surr[k].detach()).sum()
        if idx is not None:
            stats["index"] = idx
        if probe_sigma is not None:
            stats["probe_sigma"] = probe_sigma  # (B,) the fresh bound of every row, by which idx was chosen
        stats["first_visit"] = bool(cold)  # no stored vector (n_iter=1: one exact iteration more)
        return out, self.weighted(stats), stats

    def _fd_lanczos(self, fn, make_fn, y, A, terms, v0, generator, kinks):
        """``rank="lanczos"``: Lanczos steps on every row from the batch's own graph, the
        fused copies for the ``samples`` rows of largest bound."""
        h = self.fd_step if self.fd_step is not None else default_step(y.real.dtype)
        ops = [A if t == "ja" else None for t in terms]
        vs = [None if v0 is None else v0.get(f"v_{t}") for t in terms]
        cold = _cold(v0, vs, None)
        vs = [unit_start(op, y, v, generator) for op, v in zip(ops, vs)]
        y = y.detach()
        y_leaf, out, fk = _recorded_pass(fn, y, kinks, leaf=True)  # the loss's f(y), the VJPs' graph, the copies' base
        n_pre = max(self.steps(y.shape[0]) - 1, 1)
        pre_fd = h if self.lanczos_jvp == "fd" else None
        vs, bound = lanczos_start(fn, y, ops, vs, n_pre, fd_step=pre_fd, graph=(y_leaf, out))
        idx = torch.argsort(bound.amax(0), descending=True)[: self.samples]
        stats = PenaltyStats()
        if self.warm_start_vectors:  # every row's next vector; the backward replaces the copies' rows
            for k, t in enumerate(terms):
                stats[f"v_{t}"] = vs[k]
        _, surr, sig = fd_power_step(
            make_fn,
            y,
            A,
            [t == "ja" for t in terms],
            idx,
            [v[idx] for v in vs],
            self.fd_step,
            0,
            generator,
            sink=stats if self.warm_start_vectors else None,
            names=[f"v_{t}" for t in terms],
            kinks=kinks,
            base=(out, fk),
            sink_rows=idx if self.warm_start_vectors else None,
        )
        for k, t in enumerate(terms):
            s = bound[k].to(sig[k].dtype, copy=True)  # (B,) the Lanczos bound; the copies' rows their fused σ̂
            s[idx] = sig[k]
            stats[f"sigma_{t}"] = s
            stats[f"term_{t}"] = surr[k].max() + OTHERS_WEIGHT * (surr[k] - surr[k].detach()).sum()
            stats[f"argmax_{t}"] = idx[torch.argmax(sig[k])]  # the penalised row
        stats["lanczos_sigma"] = bound.amax(0).to(sig[0].dtype)  # (B,) by which the copies' rows were chosen
        stats["first_visit"] = bool(cold)
        return out, self.weighted(stats), stats

    def _subset(self, module, y, A, terms, v0, generator, priority):
        B, k = y.shape[0], self.samples
        order = self._order(y, priority)
        idx, rest = order[:k], order[k:]
        sub = lambda op, i: None if op is None else op.select(i)  # noqa: E731
        A_idx = sub(A, idx)
        v0_idx = None if v0 is None else v0.select(idx)
        out_idx, pen, stats = self._full(module.as_function(A_idx), y[idx], A_idx, terms, v0_idx, generator)
        out_rest = module.as_function(sub(A, rest))(y[rest])
        inv = torch.empty_like(order)
        inv[order] = torch.arange(B, device=order.device)
        stats["index"] = idx
        return torch.cat([out_idx, out_rest])[inv], pen, stats

    def _full(self, f, y, A, terms, v0, generator):
        ops = [A if t == "ja" else None for t in terms]
        stats = PenaltyStats()
        if self.kind == "spectral":
            vs = None if v0 is None else [v0.get(f"u_{t}") for t in terms]
            out, sig, vec = power_iteration(
                f,
                y,
                ops,
                self.n_iter,
                self.method,
                vs,
                create_graph=True,
                return_vectors=self.warm_start_vectors,
                generator=generator,
            )
            for k, t in enumerate(terms):
                stats[f"sigma_{t}"] = sig[k].detach()
                stats[f"term_{t}"] = sig[k].max()
                if vec is not None:
                    stats[f"u_{t}"] = vec[k]
        else:
            out, sq = frobenius_terms(f, y, ops, self.n_proj, self.method, create_graph=True, generator=generator)
            for k, t in enumerate(terms):
                stats[f"fro_{t}"] = sq[k].detach()
                stats[f"term_{t}"] = sq[k].sum()
        return out, self.weighted(stats), stats

    def weighted(self, stats: dict) -> torch.Tensor:
        """``Σ_t λ_t · term_t`` (× :attr:`factor`); auto λ not calibrated yet count as 0."""
        total = 0.0
        for t in self.terms:
            lam = getattr(self, f"lambda_{t}")
            if lam != "auto" and f"term_{t}" in stats:
                total = total + lam * stats[f"term_{t}"]
        if not torch.is_tensor(total):
            # a real zero: not shaped after a (complex) vector that was stored first
            ref = next((v for v in stats.values() if torch.is_tensor(v) and v.is_floating_point()), None)
            return torch.zeros(()) if ref is None else ref.new_zeros(())
        return total * self.factor

    def calibrate(self, loss: float, stats: dict) -> dict:
        """Set every ``"auto"`` λ from the unregularized ``loss`` and this batch's terms; where
        the two norms coincide (``stats["coincide"]``) the one measured term sets both."""
        chosen = {}
        seen = [t for t in self.terms if f"term_{t}" in stats]
        for t in self.terms:
            src = t if t in seen else (seen[0] if seen and stats.get("coincide") else None)
            if getattr(self, f"lambda_{t}") == "auto" and src is not None:
                lam = auto_lambda(float(loss), float(stats[f"term_{src}"].detach()), self.gamma)
                setattr(self, f"lambda_{t}", lam)
                chosen[f"lambda_{t}"] = lam
        return chosen

    def state_dict(self) -> dict:
        return {"lambda_ja": self.lambda_ja, "lambda_j": self.lambda_j}

    def load_state_dict(self, state: dict) -> None:
        self.lambda_ja = _check_lambda("lambda_ja", state["lambda_ja"])
        self.lambda_j = _check_lambda("lambda_j", state["lambda_j"])
