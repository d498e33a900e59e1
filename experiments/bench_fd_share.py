"""What sharing the Lanczos steps' forward pass saves in the default fd penalty.

The default penalty (``reg.method=fd``, ``n_iter=3``: two Lanczos steps from the sample's carried
vector, then the fused step) needs a forward graph at the selected samples for its Lanczos VJPs.
Since 2026-11-28 that graph (parameters included) also gives those samples' ``f(y)`` for the fused
difference and the loss, so the stacked pass runs only the other samples and the perturbed
copies (``fd_power_step(share_forward=True)``); before, the stacked pass ran the whole batch
again.  Same maths (``tests/test_jacobian.py``: value and ∇θ against explicit Jacobians); this
script measures the time.

One training step (penalty, data loss, backward, Adam step) of a fastmri U-Net reconstructor on
256×256 single-coil k-space (4× random Cartesian mask + 16 centre lines, warm vectors: the steady
state), for: plain, the default with the shared forward, the default without it.  The variants
are interleaved step by step in one process so that they see the same machine load; medians
over ``--reps`` steps after ``--warmup``.  Time does not depend on the image content (random
complex images).

    python experiments/bench_fd_share.py [--batches 1,2,4] [--reps 12] [--chans 8] [--pools 3] [--device cuda]
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from mrijac.atomic import atomic_path

HERE = Path(__file__).resolve().parent


def make_step(recon, opt, A, y, v0, pen):
    def step():
        opt.zero_grad(set_to_none=True)
        if pen is None:
            out, p = recon(y, A), 0.0
        else:
            out, p, _ = pen(recon, y, A, v0=v0, priority=torch.arange(y.shape[0], dtype=torch.float, device=y.device))
        loss = (out**2).mean() + p
        loss.backward()
        opt.step()

    return step


def measure(batch: int, reps: int, warmup: int, chans: int, pools: int, size: int, device: str = "cpu") -> dict:
    from fastmri.models import Unet

    import mrijac.jacobian.penalties as penalties
    from mrijac.jacobian import JacobianPenalty
    from mrijac.jacobian.finite_diff import fd_power_step
    from mrijac.models import Reconstructor
    from mrijac.operators import SingleCoilMRI

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(batch)
    dev = torch.device(device)
    recon = Reconstructor(Unet(2, 2, chans=chans, num_pool_layers=pools)).to(dev)
    opt = torch.optim.Adam(recon.parameters(), lr=1e-6)  # tiny steps: the network stays put
    mask = (torch.rand(batch, 1, size, generator=g) < 0.25).float()
    mask[..., size // 2 - 8 : size // 2 + 8] = 1
    A = SingleCoilMRI(mask, (size, size))
    y, v = A(A.random_input(generator=g)), A.random_input(generator=g)
    A, y = A.to(device=dev), y.to(dev)
    v0 = {"v_ja": v.to(dev), "cold": torch.zeros(batch, dtype=torch.bool, device=dev)}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    pen = JacobianPenalty("spectral", lambda_ja=0.1, lambda_j=0.1, method="fd", samples=1)
    assert (pen.n_iter, pen.lanczos_jvp) == (3, "fd")
    shared = make_step(recon, opt, A, y, v0, pen)
    unshared_pen = JacobianPenalty("spectral", lambda_ja=0.1, lambda_j=0.1, method="fd", samples=1)

    def unshared():
        orig = penalties.fd_power_step
        penalties.fd_power_step = functools.partial(fd_power_step, share_forward=False)
        try:
            make_step(recon, opt, A, y, v0, unshared_pen)()
        finally:
            penalties.fd_power_step = orig

    variants = {"plain": make_step(recon, opt, A, y, v0, None), "shared": shared, "unshared": unshared}
    times = {k: [] for k in variants}
    for r in range(warmup + reps):
        for name, fn in variants.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "batch": batch,
        "median_s": med,
        "x_plain": {k: med[k] / med["plain"] for k in med},
        "shared_over_unshared": med["shared"] / med["unshared"],
        "times_s": times,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,2,4")
    ap.add_argument("--reps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--chans", type=int, default=8)
    ap.add_argument("--pools", type=int, default=3)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--out", default=None, help="default: results/bench_fd_share_<device>")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    for b in (int(x) for x in a.batches.split(",")):
        r = measure(b, a.reps, a.warmup, a.chans, a.pools, a.size, a.device)
        print(
            f"batch {b}: plain {r['median_s']['plain']:.3f} s, default shared {r['x_plain']['shared']:.2f}× plain, "
            f"unshared {r['x_plain']['unshared']:.2f}×, shared / unshared {r['shared_over_unshared']:.2f}",
            flush=True,
        )
        rows.append(r)
    meta = {
        "command": "python experiments/bench_fd_share.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, "
        + (torch.cuda.get_device_name() if a.device == "cuda" else f"{torch.get_num_threads()} torch threads")
        + f", torch {torch.__version__}",
        "net": f"fastmri Unet {a.chans} ch / {a.pools} pools, {a.size}×{a.size}",
    }
    out = Path(a.out or HERE / "results" / f"bench_fd_share_{a.device}")
    lines = [
        "# The default fd penalty with and without the Lanczos steps' shared forward pass",
        "",
        f"One training step (penalty, loss, backward, Adam) of a {meta['net']} reconstructor, default "
        "penalty (fd, two Lanczos steps + the fused one, one penalised sample, warm vectors); variants "
        f"interleaved step by step in one process, median of {a.reps} steps after {a.warmup}. "
        "'shared' = since 2026-11-28 (the selected samples' f(y) from the Lanczos graph), "
        "'unshared' = before (the whole batch again in the stacked pass). Same maths: "
        "`tests/test_jacobian.py::test_fd_penalty_reuses_the_forward_pass_of_its_lanczos_steps`.",
        "",
        "| batch | plain s/step | shared × plain | unshared × plain | shared / unshared |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['median_s']['plain']:.3f} | {r['x_plain']['shared']:.2f} | "
            f"{r['x_plain']['unshared']:.2f} | {r['shared_over_unshared']:.2f} |"
        )
    lines += [
        "",
        "What it buys: the same penalty, so the σ the default reaches on real chest slices — "
        "`results/true_sigma_real_lam01_30ep.md` (batch 4, 3 seeds), `results/true_sigma_real_b1_30ep.md` "
        "(batch 1, 2 seeds).",
        "",
        f"Command: `{meta['command']}`; {meta['machine']}.",
        "",
    ]
    for suffix, text in ((".json", json.dumps({"meta": meta, "rows": rows}, indent=1)), (".md", "\n".join(lines))):
        with atomic_path(out.with_name(out.name + suffix)) as tmp:
            tmp.write_text(text)
    print(f"wrote {out}.md")


if __name__ == "__main__":
    main()
