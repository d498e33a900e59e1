"""Where should a sample's power iteration start?  Random, its own old vector, or another's.

The default penalty estimates ``σ_b = ‖J(y_b) A_b‖₂`` of the sample it penalises with one
power step per visit from a stored vector; at fastMRI size most visits are first visits.  On a
U-Net trained with the default penalty on 40 real chest slices (256×256, ``true_sigma.py``'s
real task, λ = 0.2, 12 epochs), this measures on 8 fixed training slices the estimate after
0–3 power steps, over the converged reference σ (Lanczos, relative residual ≤ 0.01), starting
from: a random vector; the slice's own top vector of the network 4 epochs earlier (a revisit);
another slice's top vector of the current network; the mean of the other slices' vectors.

    python experiments/cold_start.py [--threads 2]
Writes ``results/cold_start.md/.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import true_sigma  # noqa: E402

from mrijac.config import load_config  # noqa: E402
from mrijac.jacobian.products import jvp  # noqa: E402
from mrijac.jacobian.reference import reference_sigma  # noqa: E402
from mrijac.jacobian.vectors import apply_op, normalize, random_input, to_real  # noqa: E402
from mrijac.tasks import fixed_batches  # noqa: E402
from mrijac.train import Trainer  # noqa: E402


def power_estimates(fn, y, A, v, n):
    """``‖J A v_k‖`` for ``k = 0…n`` power steps from ``v`` ``(B, n + 1)``."""
    out = []
    v = normalize(v)
    for _ in range(n + 1):
        yl = y.detach().clone().requires_grad_()
        with torch.enable_grad():
            x = fn(yl)
        u = jvp(fn, y, apply_op(A, v), "forward")[1]
        s = to_real(u).flatten(1).norm(dim=1)
        (g,) = torch.autograd.grad(x, yl, (u / s.view(-1, *[1] * (u.dim() - 1))).to(x.dtype))
        v = normalize(A.adjoint(g)).detach()
        out.append(s.detach())
    return torch.stack(out, 1)


def train_default(root, extra: list[str], lam: float, out: Path, epochs: int = 12, early_epoch: int = 8):
    """Train the U-Net with the default penalty (λ1 = λ2 = ``lam``, batch 4, seed 0, no
    reference monitor) for ``epochs``; returns the trainer and the weights at ``early_epoch``
    and at the end (state dicts)."""

    def over(n):
        return [
            f"data.root={root}",
            "data.batch_size=4",
            "data.num_workers=0",
            f"optim.epochs={n}",
            "train.progress=false",
            "train.seed=0",
            "train.ref_slices=0",
            "train.ge_batches=1",
            "reg.name=sja+sj",
            "reg.n_iter=1",  # measured before the default became n_iter=3 lanczos_jvp=fd (2026-11-28)
            "reg.lanczos_jvp=forward",
            "reg.fd_kinks=cross",  # and before the copies froze the kinks, ranked afresh (2026-11-29)
            "reg.rank=stored",
            f"reg.lambda_ja={lam}",
            f"reg.lambda_j={lam}",
            *extra,
        ]

    tr = Trainer(load_config(None, over(early_epoch)), out, overwrite=True)
    tr.fit()
    early = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr = Trainer(load_config(None, over(epochs)), out, resume=True)
    tr.fit()
    return tr, early, {k: v.clone() for k, v in tr.model.state_dict().items()}


def ratio_table(first: str, cols: list[str], rows: dict) -> list[str]:
    """Markdown table of est/ref ratios: one row per ``{name: {"median": [...], "min": [...]}}``
    entry, one column per step, cells ``median (min)``."""
    lines = [f"| {first} | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, r in rows.items():
        cells = [f"{m:.2f} ({lo:.2f})" for m, lo in zip(r["median"], r["min"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lam", type=float, default=0.2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "cold_start"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root, extra = true_sigma.make_data("real", tmp, False)

        tr, early, final = train_default(root, extra, a.lam, tmp / "run")
        model = tr.model.eval()
        batches = fixed_batches(tr.task, "train", 8, 123, torch.device("cpu"))

        def refs(state):
            model.load_state_dict(state)
            g = torch.Generator().manual_seed(0)
            return [
                reference_sigma(model.as_function(A), y, A, tol=1e-2, max_iter=60, generator=g) for y, A, *_ in batches
            ]

        r_early, r_final = refs(early), refs(final)
        model.load_state_dict(final)
        sig = torch.cat([r.sigma for r in r_final])
        v_final, v_early = torch.cat([r.v for r in r_final]), torch.cat([r.v for r in r_early])
        N = v_final.shape[0]
        flat = to_real(v_final).flatten(1)
        cos = (flat @ flat.T).abs()[~torch.eye(N, dtype=torch.bool)]
        g = torch.Generator().manual_seed(1)
        starts = {
            "random": lambda ids, y, A: random_input(A, y, g),
            "own vector, 4 epochs old": lambda ids, y, A: v_early[ids],
            "another slice's vector": lambda ids, y, A: v_final[(ids + len(ids)) % N],
            "mean of the other slices' vectors": lambda ids, y, A: v_final.sum(0, keepdim=True) - v_final[ids],
        }
        res = {}
        for name, start in starts.items():
            est, at = [], 0
            for y, A, *_ in batches:
                ids = torch.arange(at, at + y.shape[0])
                at += y.shape[0]
                est.append(power_estimates(model.as_function(A), y, A, start(ids, y, A), a.steps))
            ratio = (torch.cat(est).double() / sig.view(-1, 1)).numpy()
            res[name] = {
                "median": [float(x) for x in torch.tensor(ratio).median(0).values],
                "min": ratio.min(0).tolist(),
            }
            print(name, res[name], flush=True)
    lines = [
        "# Where the power iteration starts: est/ref after k power steps",
        "",
        f"U-Net 8 ch / 3 pools trained 12 epochs with the default penalty (λ1 = λ2 = {a.lam}, seed 0) on 40 real "
        "chest slices (256×256); 8 fixed training slices; ratio = ‖J A v_k‖ / converged σ (Lanczos, rel. "
        f"residual ≤ 0.01; σ {float(sig.min()):.2f}–{float(sig.max()):.2f}). Median (min) over the 8 slices. "
        f"|cos| between different slices' top vectors: median {float(cos.median()):.1e}, max {float(cos.max()):.1e}.",
        "",
        *ratio_table("start", [f"k = {k}" for k in range(a.steps + 1)], res),
    ]
    lines += [
        "",
        f"{platform.machine()}, {a.threads} threads, torch {torch.__version__}; {time.time() - t0:.0f} s.",
        f"Command: `python experiments/cold_start.py --threads {a.threads}`",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(a.out)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(
        json.dumps({"sigma": sig.tolist(), "cos_median": float(cos.median()), "starts": res}, indent=1)
    )


if __name__ == "__main__":
    main()
