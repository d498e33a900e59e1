"""Cost of the warm Lanczos steps of ``reg.n_iter=k`` (method fd), forward-mode vs
finite-difference JVPs, against a plain training step — the part of a penalised step that
``reg.lanczos_jvp`` changes, timed on its own (``cost_default.py`` times whole steps).

One process, fixed inputs, U-Net reconstructor on single-coil Cartesian k-space (4×): for each
batch size B, the median over ``--reps`` timed calls (after 2 warm-ups) of

* plain: forward, ℓ2 loss, backward, Adam step on B samples;
* ``lanczos_start`` of k − 1 steps on the one penalised sample, JVPs by forward mode
  (``reg.lanczos_jvp=forward``, the default) and by forward differences (``=fd``);

and how the two methods' vectors differ (relative distance, and ‖J A v‖ of each by an exact JVP).

    python experiments/lanczos_cost.py [--size 256] [--chans 8] [--pools 3] [--batches 1,4]
        [--k 3] [--reps 10] [--device cpu|cuda] [--out experiments/results/lanczos_cost_cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from mrijac.config import load_config  # noqa: E402
from mrijac.jacobian.finite_diff import default_step  # noqa: E402
from mrijac.jacobian.products import jvp  # noqa: E402
from mrijac.jacobian.reference import lanczos_start  # noqa: E402
from mrijac.jacobian.vectors import random_input  # noqa: E402
from mrijac.operators import SingleCoilMRI  # noqa: E402
from mrijac.tasks import build_reconstructor  # noqa: E402


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _median_time(fn, reps: int, dev) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _unet(size: int, chans: int, pools: int, dev):
    """The U-Net reconstructor ``mrijac train`` builds for ``size×size`` single-coil slices."""
    cfg = load_config(None, ["task=mri", "model.name=unet", f"model.chans={chans}", f"model.num_pool_layers={pools}"])
    return build_reconstructor(cfg, {"crop": (size, size)}).to(dev)


def _batch(B: int, n: int, dev):
    """``(x, A, y)``: B random complex ``n×n`` images, a 4× random-line Cartesian mask with a
    fully sampled centre, their k-space (fixed by ``B``)."""
    g = torch.Generator().manual_seed(B)
    x = torch.randn(B, n, n, generator=g, dtype=torch.complex64).to(dev)
    mask = (torch.rand(B, 1, n, generator=g) < 0.25).to(dev)
    mask[..., n // 2 - n // 25 : n // 2 + n // 25] = True
    A = SingleCoilMRI(mask.expand(B, n, n))
    return x, A, A(x)


def _machine(dev) -> str:
    """The report's machine line: architecture, device (GPU name or CPU threads), torch."""
    machine = f"{platform.machine()}, {dev.type}"
    if dev.type == "cuda":
        machine += f" ({torch.cuda.get_device_name(dev)})"
    else:
        machine += f", {torch.get_num_threads()} threads"
    return machine + f", torch {torch.__version__}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--chans", type=int, default=8)
    ap.add_argument("--pools", type=int, default=3)
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--k", type=int, default=3, help="reg.n_iter: k − 1 Lanczos steps")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(HERE / "results" / "lanczos_cost_cpu"))
    a = ap.parse_args()
    if a.k < 2:
        raise SystemExit("--k must be >= 2 (reg.n_iter=k runs k − 1 Lanczos steps)")
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    n = a.size
    model = _unet(n, a.chans, a.pools, dev)  # what `mrijac train` builds
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    h = default_step(torch.float32)
    rows = []
    for B in [int(b) for b in a.batches.split(",")]:
        x, A, y = _batch(B, n, dev)

        def plain():
            opt.zero_grad(set_to_none=True)
            loss = (model.as_function(A)(y) - x.abs()).pow(2).sum()
            loss.backward()
            opt.step()

        A1, y1 = A.select(torch.tensor([0], device=dev)), y[:1]
        f1 = model.as_function(A1)
        v0 = random_input(A1, y1, torch.Generator().manual_seed(1)).to(dev)
        res = {}

        def lanczos(fd):
            res[fd] = lanczos_start(f1, y1, [A1], [v0], a.k - 1, fd_step=h if fd else None)

        t_plain = _median_time(plain, a.reps, dev)
        t_fwd = _median_time(lambda: lanczos(False), a.reps, dev)
        t_fd = _median_time(lambda: lanczos(True), a.reps, dev)
        (vf,), _ = res[True]
        (ve,), _ = res[False]
        dv = float(torch.linalg.vector_norm(vf - ve) / torch.linalg.vector_norm(ve))
        # what the vectors are worth: ‖J A v‖ by an exact (forward-mode) JVP, fd over forward
        gain = [float(torch.linalg.vector_norm(jvp(f1, y1, A1(v), "forward")[1])) for v in (vf, ve)]
        rows.append(
            dict(batch=B, plain=t_plain, forward=t_fwd, fd=t_fd, vector_rel_diff=dv, gain_ratio=gain[0] / gain[1])
        )
        print(
            f"batch {B}: plain {t_plain:.4f} s, {a.k - 1} Lanczos steps: forward mode {t_fwd:.4f} s "
            f"({t_fwd / t_plain:.2f}× plain), fd {t_fd:.4f} s ({t_fd / t_plain:.2f}×); "
            f"fd/forward {t_fd / t_fwd:.2f}; vectors differ by {dv:.1e}, ‖J A v‖ fd/forward {gain[0] / gain[1]:.5f}",
            flush=True,
        )
    machine = _machine(dev)
    cmd = "python experiments/lanczos_cost.py " + " ".join(sys.argv[1:])
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Warm Lanczos steps of `reg.n_iter`: forward-mode vs finite-difference JVPs",
        "",
        f"U-Net {a.chans} ch / {a.pools} pools, {n}×{n} single-coil k-space (4×, random lines); "
        f"{a.k - 1} Lanczos steps (`reg.n_iter={a.k}`) on the one penalised sample, against a plain "
        f"training step (forward, ℓ2, backward, Adam) of the batch; median of {a.reps} calls. "
        "'‖v_fd − v_fwd‖' = relative difference of the two vectors; 'gain' = ‖J A v_fd‖ / ‖J A v_fwd‖ "
        "(exact JVPs): what the fd vector is worth against the forward-mode one.",
        "",
        "| batch | plain s/step | Lanczos, forward mode, s | × plain | Lanczos, fd JVPs, s | × plain "
        "| fd / forward | ‖v_fd − v_fwd‖ | gain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['plain']:.4f} | {r['forward']:.4f} | {r['forward'] / r['plain']:.2f} "
            f"| {r['fd']:.4f} | {r['fd'] / r['plain']:.2f} | {r['fd'] / r['forward']:.2f} "
            f"| {r['vector_rel_diff']:.1e} | {r['gain_ratio']:.5f} |"
        )
    lines += ["", f"Command: `{cmd}`; {machine}.", ""]
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(out.with_suffix(".md"))
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(args=vars(a), machine=machine, command=cmd, rows=rows), indent=1))
    tmp.replace(out.with_suffix(".json"))


if __name__ == "__main__":
    main()
