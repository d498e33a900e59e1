"""What the default penalty's Lanczos steps cost on their own: the floor of its step time.

With ``reg.rank=lanczos`` (the default) every row of the batch gets ``reg.n_iter − 1`` Lanczos
steps on the batch's own forward graph, each one forward difference (a forward pass without
graph) and one backward pass to the input only.  Whatever the copies and the bookkeeping cost on
top, a penalised step cannot be cheaper than a plain step plus those steps.  This script times
the parts on one fixed batch and prints that floor against a plain step measured in the same
process (``cost_default.py`` times whole steps through the trainer).

One process, fixed inputs, the U-Net reconstructor ``mrijac train`` builds, on single-coil
Cartesian k-space (4×); for each batch size B the median over ``--reps`` timed calls (after 2
warm-ups) of

* plain: forward, ℓ2 loss, backward, Adam step;
* forward with graph, forward without graph, backward of all inputs and weights, backward to
  the input only (``autograd.grad`` prunes the weight gradients), backward to the weights only;
* ``lanczos_start`` of k steps with finite-difference JVPs on the batch's recorded graph (as the
  penalty runs them), k = 1, 2, 3;

and the floor ``(plain + Lanczos_k) / plain`` of ``reg.n_iter = k + 1``.

    python experiments/pass_costs.py [--size 256] [--chans 8] [--pools 3] [--batches 1,2,4]
        [--reps 10] [--threads 2] [--device cpu|cuda] [--out experiments/results/pass_costs_cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from lanczos_cost import _batch, _machine, _median_time, _unet  # noqa: E402

from mrijac.atomic import atomic_path  # noqa: E402
from mrijac.jacobian.finite_diff import default_step  # noqa: E402
from mrijac.jacobian.reference import lanczos_start  # noqa: E402
from mrijac.jacobian.vectors import random_input  # noqa: E402

PARTS = ("fwd_graph", "fwd_nograd", "bwd_all", "bwd_input", "bwd_weights")
STEPS = (1, 2, 3)


def measure(model, B: int, n: int, reps: int, dev) -> dict:
    """Median seconds of each part on a batch of ``B`` random ``n×n`` slices (see the module)."""
    x, A, y = _batch(B, n, dev)
    f = model.as_function(A)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, 1e-3)
    v0 = random_input(A, y, torch.Generator().manual_seed(1)).to(dev)
    h = default_step(torch.float32)

    def plain():
        opt.zero_grad(set_to_none=True)
        (f(y) - x.abs()).pow(2).sum().backward()
        opt.step()

    def nograd():
        with torch.no_grad():
            f(y)

    def grad(inputs):
        return lambda: torch.autograd.grad(out, inputs, cot, retain_graph=True)

    t = {"plain": _median_time(plain, reps, dev)}
    # the recorded graph after the optimizer steps (they change the weights in place)
    y_leaf = y.clone().requires_grad_()
    out = f(y_leaf)
    cot = torch.randn_like(out)
    t |= {
        "fwd_graph": _median_time(lambda: f(y_leaf), reps, dev),
        "fwd_nograd": _median_time(nograd, reps, dev),
        "bwd_all": _median_time(grad([y_leaf, *params]), reps, dev),
        "bwd_input": _median_time(grad([y_leaf]), reps, dev),
        "bwd_weights": _median_time(grad(params), reps, dev),
    }
    for k in STEPS:
        t[f"lanczos_{k}"] = _median_time(
            lambda k=k: lanczos_start(f, y, [A], [v0], k, fd_step=h, graph=(y_leaf, out)), reps, dev
        )
    return t


def report(rows: list, a, machine: str, cmd: str) -> str:
    """The markdown table of :func:`measure`'s rows (``x plain`` = over the plain step)."""
    lines = [
        "# What the default's Lanczos steps cost on their own: the floor of its step time",
        "",
        f"U-Net {a.chans} ch / {a.pools} pools, {a.size}×{a.size} single-coil k-space (4×, random lines); "
        f"median of {a.reps} calls per part on one fixed batch. Each part × the plain step (forward, ℓ2, "
        "backward, Adam) of the same batch. 'Lanczos k' = `lanczos_start` of k steps with finite-difference "
        "JVPs on every row, on the batch's recorded forward graph (what `reg.rank=lanczos` runs; the graph's "
        "forward is the loss's, not counted); 'floor n_iter' = (plain + Lanczos n_iter − 1) / plain: a "
        "penalised step with those steps on every row takes at least a plain step plus their time, whatever its "
        "copies cost.",
        "",
        "| batch | plain s | fwd graph | fwd no graph | bwd all | bwd input only | bwd weights only "
        + "".join(f"| Lanczos {k} " for k in STEPS)
        + "".join(f"| floor n_iter={k + 1} " for k in STEPS)
        + "|",
        "|---" * (2 + len(PARTS) + 2 * len(STEPS)) + "|",
    ]
    for r in rows:
        p = r["plain"]
        cells = [f"{r['batch']}", f"{p:.4f}"] + [f"{r[k] / p:.2f}" for k in PARTS]
        cells += [f"{r[f'lanczos_{k}'] / p:.2f}" for k in STEPS]
        cells += [f"{(p + r[f'lanczos_{k}']) / p:.2f}" for k in STEPS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{cmd}`; {machine}.", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--chans", type=int, default=8)
    ap.add_argument("--pools", type=int, default=3)
    ap.add_argument("--batches", default="1,2,4")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(HERE / "results" / "pass_costs_cpu"))
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = _unet(a.size, a.chans, a.pools, dev)  # what `mrijac train` builds
    rows = []
    for B in [int(b) for b in a.batches.split(",")]:
        r = {"batch": B, **measure(model, B, a.size, a.reps, dev)}
        rows.append(r)
        p = r["plain"]
        print(
            f"batch {B}: plain {p:.4f} s; "
            + ", ".join(f"{k} {r[k] / p:.2f}×" for k in PARTS)
            + "; "
            + ", ".join(f"floor n_iter={k + 1} {(p + r[f'lanczos_{k}']) / p:.2f}×" for k in STEPS),
            flush=True,
        )
    machine = _machine(dev)
    cmd = "python experiments/pass_costs.py " + " ".join(sys.argv[1:])
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    texts = {
        ".md": report(rows, a, machine, cmd),
        ".json": json.dumps(dict(args=vars(a), machine=machine, command=cmd, rows=rows), indent=1),
    }
    for suffix, text in texts.items():
        with atomic_path(out.with_name(out.name + suffix)) as tmp:
            tmp.write_text(text)


if __name__ == "__main__":
    main()
