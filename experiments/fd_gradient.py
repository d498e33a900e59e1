"""Is the fd penalty's parameter gradient the gradient of σ?

The fused finite-difference step (``reg.method=fd``, the default) trains with the gradient in θ
of the surrogate ``⟨û, (f(y + t d) − f(y)) / t⟩`` (``d = A v``, ``t = h ‖y‖ / ‖d‖``).  For a smooth
network that tends to ``∇θ ‖J(y) A v‖`` as ``h → 0``.  fastmri's U-Net is piecewise linear
(LeakyReLU): every unit whose sign changes between ``y`` and ``y + t d`` adds its jump in
``∂f/∂θ`` divided by ``t``, and the number of such units shrinks only like ``t`` — a term whose
spread grows like ``1/√h``.  This script measures, on a U-Net trained plainly for ``--epochs``
(0: untrained) on the real chest slices or the synthetic task, per probe slice and top vector
``v`` (Lanczos, ``--lanczos`` steps):

* ``exact``: ``∇θ ‖J A v‖`` by reverse over forward mode in float64, InstanceNorms as plain ops
  (:func:`mrijac.models.plain_instance_norms`; the fused norm's second derivative is wrong);
* per ``h``: the fd surrogate's gradient in float32 (as trained) and in float64 — relative
  error ``‖g − exact‖ / ‖exact‖`` and cosine to ``exact``.

    python experiments/fd_gradient.py [--task real] [--epochs 4] [--steps 1e-4,1e-3,1e-2,3e-2]
        [--kinks cross,freeze] [--slices 4] [--out experiments/results/fd_gradient]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.func import jvp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import true_sigma  # noqa: E402

from mrijac.atomic import atomic_path  # noqa: E402
from mrijac.config import load_config  # noqa: E402
from mrijac.jacobian import JacobianPenalty  # noqa: E402
from mrijac.jacobian.reference import lanczos_start  # noqa: E402
from mrijac.models import plain_instance_norms  # noqa: E402
from mrijac.tasks import fixed_batches  # noqa: E402
from mrijac.train import Trainer  # noqa: E402


def _flat_grad(model) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in model.parameters()])


def exact_grad(model, y, A, v) -> torch.Tensor:
    """``∇θ ‖J(y) A v‖`` (one sample) by reverse over forward mode; ``model`` must have plain-op norms."""
    model.zero_grad()
    _, t = jvp(model.as_function(A), (y,), (A(v),))
    t.reshape(-1).norm().backward()
    return _flat_grad(model).double()


def fd_grad(model, y, A, v, h: float, kinks: str = "cross") -> torch.Tensor:
    """∇θ of the library's fused fd penalty (``JacobianPenalty(method="fd")``, one sample, no
    Lanczos steps) at unit vector ``v`` and relative step ``h``: the surrogate
    ``⟨û, (f(y + t d) − f(y)) / t⟩``, ``d = A v``, as the trainer differentiates it; ``kinks``:
    the penalty's ``fd_kinks`` (``"freeze"``: the copy takes the original's activation pattern)."""
    pen = JacobianPenalty("spectral", lambda_ja=1.0, lambda_j=0.0, method="fd", n_iter=1, fd_step=h, fd_kinks=kinks)
    model.zero_grad()
    _, p, _ = pen(model, y, A, v0={"v_ja": v, "cold": torch.zeros(1, dtype=torch.bool)})
    p.backward()
    return _flat_grad(model).double()


def measure(model32, probes, steps, lanczos: int, kinks=("cross",)) -> list[dict]:
    """Per probe ``(y, A)`` (one sample each), ``h`` and ``fd_kinks`` mode: relative error and
    cosine of the fd gradient (float32 / float64) to the exact one."""
    if any(y.shape[0] != 1 for y, _ in probes):
        raise ValueError("fd_gradient.measure: one sample per probe (split the batches)")
    model64 = copy.deepcopy(model32).double()
    plain_instance_norms(model64)
    rows = []
    for i, (y, A) in enumerate(probes):
        y64, A64 = y.to(torch.complex128), A.to(dtype=torch.float64)
        g = torch.Generator().manual_seed(i)
        v = A64.random_input(generator=g, dtype=torch.float64)
        (v,), _ = lanczos_start(model64.as_function(A64), y64, [A64], [v / v.reshape(-1).norm()], lanczos)
        v = v.detach()
        ref = exact_grad(model64, y64, A64, v)
        for h in steps:
            for kink, name, m, yy, AA, vv in (
                (kink, *case)
                for kink in kinks
                for case in (
                    ("float32", model32, y, A, v.to(torch.complex64)),
                    ("float64", model64, y64, A64, v),
                )
            ):
                got = fd_grad(m, yy, AA, vv, h, kink)
                rows.append(
                    dict(
                        probe=i,
                        h=h,
                        kinks=kink,
                        dtype=name,
                        rel_err=float((got - ref).norm() / ref.norm()),
                        cos=float(got @ ref / (got.norm() * ref.norm())),
                        norm_ratio=float(got.norm() / ref.norm()),
                    )
                )
    return rows


def report(rows, a, machine) -> list[str]:
    steps = sorted({r["h"] for r in rows})
    lines = [
        "# Is the fd penalty's gradient the gradient of σ?",
        "",
        f"U-Net ({a.task} task), trained plainly for {a.epochs} epochs (seed {a.seed}); {a.slices} validation "
        f"probe slices, v = the top right singular vector of J A after {a.lanczos} Lanczos steps. 'exact' = "
        "∇θ‖J A v‖ by reverse over forward mode in float64 with the InstanceNorms written out "
        "(mrijac.models.plain_instance_norms). Per relative step h of the fused finite difference: "
        "the fd surrogate's gradient against it — relative error ‖g − exact‖/‖exact‖, cosine, ‖g‖/‖exact‖; "
        "median (min–max) over the probes. h = 1e-4 is the float32 default (reg.fd_step=0).",
        "",
        "Kinks: 'cross' = the copy y + t·A v runs the network as it is (reg.fd_kinks=cross); 'freeze' = it "
        "takes the original's LeakyReLU pattern (reg.fd_kinks=freeze, mrijac.jacobian.kinks.FrozenKinks).",
        "",
        "| kinks | h | float32: rel. error | cos | ‖g‖/‖exact‖ | float64: rel. error | cos |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(kink, h, dt, key):
        v = np.array([r[key] for r in rows if r["h"] == h and r["dtype"] == dt and r.get("kinks", "cross") == kink])
        return f"{np.median(v):.3g} ({v.min():.3g}–{v.max():.3g})"

    kinks = [k for k in ("cross", "freeze") if any(r.get("kinks", "cross") == k for r in rows)]
    for kink in kinks:
        for h in [h for h in steps if any(r["h"] == h and r.get("kinks", "cross") == kink for r in rows)]:
            c = lambda dt, key: cell(kink, h, dt, key)  # noqa: E731
            lines.append(
                f"| {kink} | {h:g} | {c('float32', 'rel_err')} | {c('float32', 'cos')} | "
                f"{c('float32', 'norm_ratio')} | {c('float64', 'rel_err')} | {c('float64', 'cos')} |"
            )
    lines += [
        "",
        f"Command: `{' '.join(['python', 'experiments/fd_gradient.py', *sys.argv[1:]])}`; machine: {machine}.",
        "",
    ]
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="real", choices=("real", "synthetic"))
    ap.add_argument("--epochs", type=int, default=4, help="plain training before measuring (0: untrained)")
    ap.add_argument("--steps", default="1e-4,1e-3,1e-2,3e-2", help="relative fd steps h")
    ap.add_argument("--kinks", default="cross,freeze", help="fd_kinks modes to measure")
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--lanczos", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--shared", default=str(true_sigma.SHARED))
    ap.add_argument("--out", default="experiments/results/fd_gradient")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    steps = [float(s) for s in a.steps.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root, extra = true_sigma.make_data(a.task, Path(tmp), False, Path(a.shared))
        over = true_sigma.overrides(root, extra, "plain", a.seed, max(a.epochs, 1), 0.0, 0, 0.01)
        tr = Trainer(load_config(None, [*over, "train.ref_slices=0"]), Path(tmp) / "run", overwrite=True)
        if a.epochs:
            tr.fit()
        model = tr.model.cpu().eval()
        probes = [  # one sample each (the probe batches hold up to the task's batch size)
            (y[b : b + 1], A.select(torch.tensor([b])))
            for y, A, _, _ in fixed_batches(tr.task, "val", a.slices, a.seed + 1, torch.device("cpu"))
            for b in range(y.shape[0])
        ]
    rows = measure(model, probes, steps, a.lanczos, tuple(a.kinks.split(",")))
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(report(rows, a, machine))
    for path, body in (
        (out.with_suffix(".json"), json.dumps({"args": vars(a), "machine": machine, "rows": rows}, indent=1)),
        (out.with_suffix(".md"), text),
    ):
        with atomic_path(path) as tmp:
            tmp.write_text(body)
    print(text)


if __name__ == "__main__":
    main()
