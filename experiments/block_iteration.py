"""Would a block (subspace) iteration get the training-time σ estimate within 10 %?

The default penalty's estimate of ``σ_b = ‖J(y_b) A_b‖₂`` stays at 0.7–0.9 of the converged σ
at real size (``true_sigma_gpu*.md``), and more single-vector power steps barely help
(``cold_start.md``: a slice's own 4-epoch-old vector gives 0.86 → 0.88 after 3 steps): the top of
the spectrum is flat.  Subspace iteration with ``k`` vectors converges at ``σ_{k+1}/σ_1`` per
step instead of ``σ_2/σ_1``.  On a U-Net trained with the default penalty on 40 real chest
slices (``true_sigma.py``'s real task, 12 epochs, λ = 0.2, seed 0), on 8 fixed training slices:
the Rayleigh–Ritz estimate ``√λ_max(Wᵀ W)``, ``W = J A V`` for an orthonormal block ``V`` of
``k`` vectors, after ``0…n`` block steps ``V ← orth(Aᴴ Jᵀ W)``, over the converged reference σ
(Lanczos, relative residual ≤ 0.01); from random blocks and from the slice's own block of the
network 4 epochs earlier (what a penalty that carried k vectors per sample would start a
revisit from).  A block step costs k JVPs and k VJPs: compare rows at equal k × steps too.
The top 8 singular values of each slice (Lanczos Ritz values, 60 steps) show how flat the top is.

    python experiments/block_iteration.py [--threads 2] [--blocks 1,2,4,8] [--steps 3]
Writes ``results/block_iteration.md/.json``.
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
from cold_start import ratio_table, train_default  # noqa: E402

from mrijac.jacobian.products import jvp  # noqa: E402
from mrijac.jacobian.reference import reference_sigma  # noqa: E402
from mrijac.jacobian.vectors import apply_op, random_input, to_real  # noqa: E402
from mrijac.tasks import fixed_batches  # noqa: E402

LANCZOS_STARTS = ("random", "another slice's vector", "own vector, 4 epochs old")
DEFAULT_OUT = str(HERE / "results" / "block_iteration")


def _flat(v: torch.Tensor) -> torch.Tensor:
    return to_real(v).reshape(v.shape[0], -1).double()


def orthonormalize(V: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-sample modified Gram–Schmidt (twice) of ``k`` tensors ``(B, …)`` in the real inner
    product; returns ``k`` tensors, orthonormal per sample."""
    out = []
    for v in V:
        for _ in range(2):
            for q in out:
                c = (_flat(q) * _flat(v)).sum(1).to(v.real.dtype)
                v = v - c.view(-1, *[1] * (v.dim() - 1)) * q
        n = _flat(v).norm(dim=1).clamp_min(1e-30).to(v.real.dtype)
        out.append(v / n.view(-1, *[1] * (v.dim() - 1)))
    return out


def block_ritz(fn, y, A, V: list[torch.Tensor], steps: int):
    """Subspace iteration with Rayleigh–Ritz on ``J A`` per sample from the block ``V`` (``k``
    tensors ``(B, …)`` in A's input space): yields, for ``s = 0…steps``, the Ritz values
    ``(B, k)`` (decreasing; square roots of the eigenvalues of ``Wᵀ W``, ``W = J A V``) and the
    orthonormal block they belong to; between yields ``V ← orth(Aᴴ Jᵀ W R)``, ``R`` the Ritz
    rotation (top Ritz vector first).  One step: ``k`` JVPs and ``k`` VJPs."""
    V = orthonormalize([v.detach() for v in V])
    yl = y.detach().clone().requires_grad_()
    with torch.enable_grad():
        x = fn(yl)
    for s in range(steps + 1):
        W = [jvp(fn, y, apply_op(A, v), "forward")[1].detach() for v in V]
        Wf = torch.stack([_flat(w) for w in W], 1)  # (B, k, n)
        evals, evecs = torch.linalg.eigh(Wf @ Wf.transpose(1, 2))  # Vᵀ (JA)ᵀ (JA) V, ascending
        yield evals.flip(-1).clamp_min(0).sqrt(), V
        if s == steps:
            return
        R = evecs.flip(-1).to(W[0].real.dtype)  # (B, k, k), columns by decreasing Ritz value
        shape = [-1] + [1] * (W[0].dim() - 1)
        Z = []
        for i in range(len(W)):
            w = sum(R[:, j, i].view(shape) * W[j] for j in range(len(W)))
            (g,) = torch.autograd.grad(x, yl, w.to(x.dtype), retain_graph=True)
            Z.append(A.adjoint(g).detach())
        V = orthonormalize(Z)


def block_estimates(fn, y, A, V: list[torch.Tensor], steps: int):
    """Top Ritz value per sample after ``0…steps`` block steps from ``V``: ``(B, steps + 1)``
    float64 (a lower bound of ``‖J A‖₂``), and the final block."""
    est = []
    for vals, V in block_ritz(fn, y, A, V, steps):
        est.append(vals[:, 0])
    return torch.stack(est, 1), V


def top_singular_values(fn, y, A, k: int = 8, iters: int = 60, seed: int = 0) -> torch.Tensor:
    """Top ``k`` Ritz values of ``J A`` per sample after ``iters`` steps of a block of ``2k``
    random vectors (the shape of the top of the spectrum): ``(B, k)``."""
    g = torch.Generator().manual_seed(seed)
    for vals, _ in block_ritz(fn, y, A, [random_input(A, y, g) for _ in range(2 * k)], iters):
        pass
    return vals[:, :k]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lam", type=float, default=0.2)
    ap.add_argument("--blocks", default="1,2,4,8")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--lanczos", default="2,4,6,10", help="Lanczos steps for the first-visit rows")
    ap.add_argument(
        "--top", type=int, default=8, help="top singular values per slice for the spectrum's shape (0: skip)"
    )
    ap.add_argument("--shared", default=str(true_sigma.SHARED))
    ap.add_argument("--out", default=DEFAULT_OUT)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    blocks = [int(b) for b in a.blocks.split(",")]
    lanczos_steps = [int(n) for n in a.lanczos.split(",")]
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root, extra = true_sigma.make_data("real", tmp, False, Path(a.shared))

        tr, early, final = train_default(root, extra, a.lam, tmp / "run")
        model = tr.model.eval()
        batches = fixed_batches(tr.task, "train", a.slices, 123, torch.device("cpu"))
        t_train = time.time() - t0
        print(f"trained in {t_train:.0f} s", flush=True)

        # the early network's own blocks (converged-ish: 10 steps) for the revisit rows
        model.load_state_dict(early)
        kmax = max(blocks)
        g = torch.Generator().manual_seed(2)
        early_blocks = []
        for y, A, *_ in batches:
            _, V = block_estimates(model.as_function(A), y, A, [random_input(A, y, g) for _ in range(kmax)], 10)
            early_blocks.append(V)
        model.load_state_dict(final)
        sig, tops, ref_v = [], [], []
        for y, A, *_ in batches:
            fn = model.as_function(A)
            ref = reference_sigma(fn, y, A, tol=1e-2, max_iter=60, generator=torch.Generator().manual_seed(0))
            sig.append(ref.sigma)
            ref_v.append(ref.v)
            if a.top:
                tops.append(top_singular_values(fn, y, A, a.top, 40))
        sig = torch.cat(sig)
        tops = torch.cat(tops) if tops else torch.ones(len(sig), 1)
        print("σ", sig.tolist(), flush=True)
        res = {}
        for start in ("random", "own block, 4 epochs old"):
            for k in blocks:
                g = torch.Generator().manual_seed(1)
                est = []
                for bi, (y, A, *_) in enumerate(batches):
                    V0 = (
                        [random_input(A, y, g) for _ in range(k)]
                        if start == "random"
                        else [v.clone() for v in early_blocks[bi][:k]]
                    )
                    est.append(block_estimates(model.as_function(A), y, A, V0, a.steps)[0])
                ratio = torch.cat(est) / sig.view(-1, 1)
                name = f"{start}, k = {k}"
                res[name] = {
                    "k": k,
                    "start": start,
                    "median": ratio.median(0).values.tolist(),
                    "min": ratio.min(0).values.tolist(),
                }
                print(name, [f"{m:.3f}" for m in res[name]["median"]], flush=True)
        # a visit converged by Lanczos instead: the estimate after n products, from random, from
        # another slice's converged vector (what reg.cold_start=recent hands a first visit) and
        # from the slice's own top vector of the network 4 epochs earlier (a revisit)
        lanczos = {}
        for start in LANCZOS_STARTS:
            g = torch.Generator().manual_seed(3)
            for n in lanczos_steps:
                est = []
                for bi, (y, A, *_) in enumerate(batches):
                    v0 = {
                        "random": None,
                        "another slice's vector": ref_v[(bi + 1) % len(batches)],
                        "own vector, 4 epochs old": early_blocks[bi][0],
                    }[start]
                    r = reference_sigma(model.as_function(A), y, A, tol=1e-12, max_iter=n, v0=v0, generator=g)
                    est.append(r.sigma)
                ratio = torch.cat(est) / sig
                lanczos[f"{start}, n = {n}"] = {"median": float(ratio.median()), "min": float(ratio.min())}
                print("Lanczos", start, n, f"{float(ratio.median()):.3f}", flush=True)
    rel = (tops / tops[:, :1]).median(0).values.tolist() if a.top else []
    lines = [
        "# Block (subspace) iteration: est/ref after n block steps",
        "",
        f"U-Net 8 ch / 3 pools trained 12 epochs with the default penalty (λ1 = λ2 = {a.lam}, seed 0) on 40 real "
        f"chest slices (256×256); {a.slices} fixed training slices; ratio = Rayleigh–Ritz estimate √λmax(Wᵀ W), "
        "W = J A V, V an orthonormal block of k vectors, over the converged σ (Lanczos, rel. residual ≤ 0.01; "
        f"σ {float(sig.min()):.2f}–{float(sig.max()):.2f}). Median (min) over the slices. A block step costs k "
        "JVPs + k VJPs. 'own block, 4 epochs old' = the slice's top-k block of the network at epoch 8 "
        "(10 block steps), as a penalty carrying k vectors per sample would start a revisit.",
        "",
        (
            f"Top of the spectrum (median over slices of σ_i / σ_1, i = 1…{a.top}; block iteration, {2 * a.top} "
            "vectors, 40 steps): " + ", ".join(f"{r:.3f}" for r in rel) + "."
            if a.top
            else "Top of the spectrum: not measured in this run (`--top 0`)."
        ),
        "",
        *ratio_table("start, block size k", [f"n = {n}" for n in range(a.steps + 1)], res),
    ]
    lines += [
        "",
        "A visit converged by Lanczos bidiagonalization instead (`reference_sigma` stopped after n steps, "
        "each one JVP + one VJP): top Ritz value / converged σ, median (min); 'another slice's vector' = the "
        "converged top vector of a slice of the other probe batch, current network (the kind of start "
        "`reg.cold_start=recent` gives a first visit); 'own vector, 4 epochs old' = the slice's top vector of "
        "the network at epoch 8 (a revisit, as the carried vectors start one).",
        "",
        *ratio_table(
            "start",
            [f"n = {n}" for n in lanczos_steps],
            {
                start: {k: [lanczos[f"{start}, n = {n}"][k] for n in lanczos_steps] for k in ("median", "min")}
                for start in LANCZOS_STARTS
            },
        ),
    ]
    lines += [
        "",
        f"{platform.machine()}, {a.threads} threads, torch {torch.__version__}; training {t_train:.0f} s, "
        f"total {time.time() - t0:.0f} s.",
        f"Command: `python experiments/block_iteration.py --threads {a.threads} --blocks {a.blocks} --steps {a.steps} "
        f"--lanczos {a.lanczos}"
        + (f" --top {a.top}" if a.top != 8 else "")
        + (f" --out {a.out}" if a.out != DEFAULT_OUT else "")
        + "`",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(
        json.dumps(
            {"sigma": sig.tolist(), "top8": tops.tolist(), "rows": res, "lanczos": lanczos, "args": vars(a)}, indent=1
        )
    )


if __name__ == "__main__":
    main()
