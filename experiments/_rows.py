"""Penalty settings shared by the experiment scripts' rows."""

from __future__ import annotations

# the default until 2026-11-28: one fused power step per visit (Lanczos JVPs by forward mode)
FORMER_DEFAULT = ("reg.n_iter=1", "reg.lanczos_jvp=forward")


def _keys(over) -> set:
    """The config keys that the ``key=value`` overrides ``over`` set."""
    return {o.split("=")[0] for o in over}


def _pin(rows: dict, pins) -> None:
    """Append each ``key=value`` of ``pins`` to every row of ``{name: (label, overrides)}`` whose
    overrides do not set that key, in place."""
    for _, over in rows.values():
        for pin in pins:
            if pin.split("=")[0] not in _keys(over):
                over.append(pin)


def pin_power(rows: dict) -> None:
    """Give every row of ``{name: (label, overrides)}`` that does not set ``reg.n_iter`` /
    ``reg.lanczos_jvp`` the former default's, in place: rows measured before the default became
    ``reg.n_iter=3 reg.lanczos_jvp=fd`` (2026-11-28) keep the settings they were measured with,
    so a rerun repeats what their reports show."""
    _pin(rows, FORMER_DEFAULT)


# the defaults until 2026-11-29: the copies crossed the kinks, the penalised sample was the one of
# largest stored σ (now reg.fd_kinks / reg.rank auto: freeze, lanczos — the row lz3fd_fkla)
FORMER_TRACKING = ("reg.fd_kinks=cross", "reg.rank=stored")


def pin_tracking(rows: dict) -> None:
    """Give every row of ``{name: (label, overrides)}`` that does not set ``reg.fd_kinks`` /
    ``reg.rank`` the values they had by default until 2026-11-29 (``cross`` / ``stored``), in
    place: every row here was measured with them, so a rerun repeats what its report shows."""
    _pin(rows, FORMER_TRACKING)


# the current default's steps, and one penalised step in four on top of them: rows of both
# true_sigma.py (σ they reach) and cost_default.py (what they cost), one label for each
DEFAULT_STEPS = ("reg.n_iter=3", "reg.lanczos_jvp=fd")
DEFAULT_ROWS = {
    "lz3fd": (
        "fd + 2 Lanczos steps per visit, finite-difference JVPs "
        "(reg.n_iter=3 reg.lanczos_jvp=fd: the default since 2026-11-28)",
        [],
    ),
    "lz3fd_e4": (
        "the default's penalty on every 4th step, ×4 (reg.n_iter=3 reg.lanczos_jvp=fd reg.every=4: "
        "at batch 1 one penalised sample per 4 training samples, the rate of batch 4)",
        ["reg.every=4"],
    ),
    "lz3fd_e4h": (
        "the default's penalty on every 4th step, its gradient held in between (reg.n_iter=3 "
        "reg.lanczos_jvp=fd reg.every=4 reg.every_mode=hold)",
        ["reg.every=4", "reg.every_mode=hold"],
    ),
    # the same difference with the copies on their original's LeakyReLU pattern: its θ-gradient is
    # ∇θσ (cosine 1.00 against 0.41 / 0.10 crossing the kinks: experiments/results/fd_gradient_*.md)
    "lz3fd_fk": (
        "the default with frozen kinks (reg.n_iter=3 reg.lanczos_jvp=fd reg.fd_kinks=freeze: the perturbed "
        "copy on its original's LeakyReLU pattern)",
        ["reg.fd_kinks=freeze"],
    ),
    # frozen kinks on the whole batch: no early σ excursion on the real slices, estimate 0.93 of the
    # reference (3 seeds), at 3.14× plain per step at batch 4
    "lz3fd_fkall": (
        "the default with frozen kinks on the whole batch (reg.n_iter=3 reg.lanczos_jvp=fd reg.fd_kinks=freeze "
        "reg.samples=0: every sample's σ, the largest penalised)",
        ["reg.fd_kinks=freeze", "reg.samples=0"],
    ),
    # the default (crossing kinks) with its penalised sample picked by fresh probes
    "lz3fd_pr": (
        "the default, the penalised sample picked by fresh probes (reg.n_iter=3 reg.lanczos_jvp=fd "
        "reg.rank=probe: ‖J A v‖ of every sample with its stored vector)",
        ["reg.rank=probe"],
    ),
    # frozen kinks, one sample per step, picked by a fresh probe ‖J A v‖ of every sample with its stored
    # vector (one forward of the batch without graph) instead of the σ stored at its last visit: the
    # whole batch's view of lz3fd_fkall at about one sample's cost
    "lz3fd_fkpr": (
        "the default with frozen kinks, the penalised sample picked by fresh probes (reg.n_iter=3 "
        "reg.lanczos_jvp=fd reg.fd_kinks=freeze reg.rank=probe: ‖J A v‖ of every sample with its stored vector)",
        ["reg.fd_kinks=freeze", "reg.rank=probe"],
    ),
    # frozen kinks, every sample's fresh Lanczos steps (the whole batch's estimates and ranking),
    # the perturbed copy for the one of largest bound only: lz3fd_fkall without its other copies
    "lz3fd_fkla": (
        "the default with frozen kinks, Lanczos steps on every sample, the copy for the largest (reg.n_iter=3 "
        "reg.lanczos_jvp=fd reg.fd_kinks=freeze reg.rank=lanczos)",
        ["reg.fd_kinks=freeze", "reg.rank=lanczos"],
    ),
    # frozen kinks, and every unvisited sample penalised in the first pass over the data (one
    # sample per step after it): the early σ excursions of one cold sample per step came in the
    # epochs of first visits; the whole batch (lz3fd_fkall) had none
    "lz3fd_fkfv": (
        "the default with frozen kinks, every first visit penalised (reg.n_iter=3 reg.lanczos_jvp=fd "
        "reg.fd_kinks=freeze reg.first_visits=all: the first pass over the data penalises whole batches)",
        ["reg.fd_kinks=freeze", "reg.first_visits=all"],
    ),
    # the current default with a third Lanczos step: at batch 1 its estimate sat at 0.87 of the true
    # σ (#10 §2 asks 0.90; true_sigma_real_b1_ref_30ep.md); with it 0.91 — the default at batch 1
    # since session 35 (reg.n_iter=auto → 4 there: mrijac.names.auto_n_iter)
    "lz4fd_fkla": (
        "the default since 2026-11-29 and one Lanczos step more (reg.n_iter=4 reg.lanczos_jvp=fd "
        "reg.fd_kinks=freeze reg.rank=lanczos: 3 Lanczos steps on every sample, the copy for the largest)",
        ["reg.n_iter=4", "reg.fd_kinks=freeze", "reg.rank=lanczos"],
    ),
}


# the default's penalty with another number of exact steps per visit: what a Lanczos step less
# saves and costs in σ, what more buy in the estimate
STEP_ROWS = {
    "lz2fd": (
        "fd + 1 exact power step per visit, finite-difference JVP (reg.n_iter=2 reg.lanczos_jvp=fd: "
        "the default less one Lanczos step)",
        2,
    ),
    "lz4fd": (
        "fd + 3 Lanczos steps per visit, finite-difference JVPs (reg.n_iter=4 reg.lanczos_jvp=fd: "
        "the default and one Lanczos step more)",
        4,
    ),
    "lz5fd": ("fd + 4 Lanczos steps per visit, finite-difference JVPs (reg.n_iter=5 reg.lanczos_jvp=fd)", 5),
}


def step_rows() -> dict:
    """:data:`STEP_ROWS` as ``{name: (label, overrides)}``: the default's steps
    (:data:`DEFAULT_STEPS`) with ``reg.n_iter`` set to the row's count, fresh lists."""
    rest = [o for o in DEFAULT_STEPS if not o.startswith("reg.n_iter=")]
    return {name: (label, [f"reg.n_iter={n}", *rest]) for name, (label, n) in STEP_ROWS.items()}


def default_rows() -> dict:
    """:data:`DEFAULT_ROWS` as ``{name: (label, overrides)}`` with fresh override lists: the
    default's steps (:data:`DEFAULT_STEPS`) but those a row sets itself, then the row's own."""
    return {
        name: (label, [*(o for o in DEFAULT_STEPS if o.split("=")[0] not in _keys(more)), *more])
        for name, (label, more) in DEFAULT_ROWS.items()
    }


# forward mode on the whole batch, one term per step off: #10's expensive reference with
# n = 10 (the trainer writes the U-Net's InstanceNorms out as plain ops for method=forward,
# since 2026-11-28: "x" rows; forward1 / forward10 in true_sigma.py were trained before that)
FORWARD = ("reg.method=forward", "reg.samples=0", "reg.alternate=false")


def reference_row() -> tuple[str, list[str]]:
    """``(label, overrides)`` of ``forward10x``, #10's expensive reference, a fresh list: the row
    of both ``true_sigma.py`` (the σ it reaches) and ``cost_default.py`` (what it costs)."""
    return (
        "forward n = 10, whole batch, exact gradient (InstanceNorms as plain ops, the trainer's since "
        "2026-11-28): the expensive reference",
        [*FORWARD, "reg.n_iter=10"],
    )
