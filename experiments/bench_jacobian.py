"""Cost of the Jacobian penalties per training step, as ratios to plain training.

Every row is one training step (forward, loss + penalty, backward, Adam step) on a fixed batch,
timed after warm-up (rows penalising part of the batch warm up until every sample has been
visited once) (median of the measured steps) in a fresh process, with its peak memory:
CUDA ``max_memory_allocated`` above what the set-up holds, or on CPU the growth of the
process's peak resident size (VmHWM) over the resident size after the set-up.
Ratios are against the ``plain`` row of the same model in the same run.

    python experiments/bench_jacobian.py --quick            # a few minutes on 2 CPU cores
    python experiments/bench_jacobian.py --device cuda      # all models at fastMRI size
Writes ``<out>.json`` and ``<out>.md`` (default ``experiments/results/bench_<device>``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _report import write_report

MODELS = {
    # name: (network, image size or p, batch)
    "fc": ("fcnet", 784, 100),
    "dncnn5_64": ("dncnn5", 64, 8),
    "dncnn17_128": ("dncnn17", 128, 4),
    "unet_128": ("unet", 128, 2),
    "unet_320": ("unet", 320, 1),
}
QUICK_MODELS = ["fc", "dncnn5_64", "unet_128"]


def rows_for(model: str, quick: bool) -> list[dict]:
    ns = (1, 3) if quick else (1, 2, 3, 4)
    rows = [{"reg": "plain"}]
    rows += [{"reg": "sja", "n": n} for n in ns]
    rows += [{"reg": "sja+sj", "n": n} for n in ns]
    rows += [
        {"reg": "sja+sj", "n": 1, "warm": True},
        {"reg": "sja+sj", "n": 1, "warm": True, "every": 4},
        {"reg": "sja+sj", "n": 1, "warm": True, "samples": 1},
        {"reg": "sja+sj", "n": 1, "warm": True, "samples": 1, "every": 4},
        {"reg": "fja+fj", "n": 1},
    ]
    # fused finite-difference power iteration (method="fd", warm by construction)
    rows += [{"reg": "sja", "n": n, "method": "fd"} for n in ns]
    rows += [
        {"reg": "sja+sj", "n": 1, "method": "fd"},
        {"reg": "sja+sj", "n": 1, "method": "fd", "samples": 1},
        {"reg": "sja+sj", "n": 1, "method": "fd", "alternate": True},
        {"reg": "sja+sj", "n": 1, "method": "fd", "alternate": True, "samples": 1},
        {"reg": "sja+sj", "n": 1, "method": "fd", "samples": 1, "recompute": True},
        {"reg": "sja+sj", "n": 1, "method": "fd", "alternate": True, "samples": 1, "recompute": True},
        {"reg": "sja+sj", "n": 1, "method": "fd", "every": 4},
        {"reg": "sja+sj", "n": 1, "method": "fd", "every": 4, "samples": 1},
        {"reg": "sja+sj", "n": 1, "method": "fd", "every": 4, "samples": 1, "hold": True},
    ]
    if not model.startswith("unet"):  # double backward through InstanceNorm is impossible
        rows += [{"reg": "sja", "n": n, "method": "double_vjp"} for n in ns]
    else:
        rows += [{"reg": "sja", "n": 1, "method": "double_vjp"}]  # recorded as failing
    if model == "fc":
        rows += [{"reg": "explicit"}]
    if model.startswith("dncnn") and _has_deepinv():  # optional peer row
        rows += [{"reg": "deepinv", "n": n} for n in ns]
    return rows


def _has_deepinv() -> bool:
    import importlib.util

    return importlib.util.find_spec("deepinv") is not None


def label(r: dict) -> str:
    s = r["reg"] if r["reg"] in ("plain", "explicit") else f"{r['reg']} n={r.get('n', 1)}"
    if r["reg"] == "deepinv":
        s = f"deepinv JacobianSpectralNorm (J of the net) n={r['n']}"
    if r["reg"] == "explicit":
        s = "sja+sj explicit J (batch J)"
    if r.get("method") == "double_vjp":
        s += " double-vjp"
    if r.get("method") == "fd":
        s += " fd (fused)"
    if r.get("alternate"):
        s += " alternate"
    if r.get("recompute"):
        s += " recompute"
    if r.get("hold"):
        s += " hold"
    if r.get("warm"):
        s += " warm"
    if r.get("every", 1) > 1:
        s += f" every {r['every']}"
    if r.get("samples"):
        s += f" on {r['samples']} sample/term"
    return s


# --- one row, in its own process ---------------------------------------------------------------
def _clear_peak():
    """Reset the process's peak resident size (VmHWM) to the current one (Linux)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _rss_kib(field="VmRSS"):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def run_row(spec: dict) -> dict:
    import torch

    from mrijac.jacobian import JacobianPenalty, operator_matrix
    from mrijac.models import DnCNN, FCNet, Reconstructor, Unet
    from mrijac.operators import GaussianCS, SingleCoilMRI, make_mask
    from mrijac.train.step import PenaltyStep
    from mrijac.train.warm import WarmStore

    torch.manual_seed(0)
    dev = torch.device(spec["device"])
    net_name, size, batch = MODELS[spec["model"]]
    if net_name == "fcnet":
        A = GaussianCS(size, size, seed=0).to(dev)
        model = Reconstructor(FCNet(size, size), "measurement", normalize=False, output="identity")
        x = torch.rand(batch, size, device=dev)
    else:
        masks = torch.stack([make_mask("random", (size, size), 4, 0.08, seed=s) for s in range(batch)])
        A = SingleCoilMRI(masks[:, None], (size, size)).to(dev)
        if net_name == "unet":
            net = Unet(2, 2, chans=32, num_pool_layers=4)
        else:
            net = DnCNN(2, 2, depth=int(net_name[5:]), features=64, batchnorm=False)
        model = Reconstructor(net)
        xc = torch.randn(batch, size, size, dtype=torch.complex64)
        x = xc.abs().to(dev)
        xc = xc.to(dev)
    model = model.to(dev).train()
    y = A(x if net_name == "fcnet" else xc)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    reg = spec["reg"]
    pen = None
    if reg == "deepinv":
        from deepinv.loss.regularisers import JacobianSpectralNorm

        jsn = JacobianSpectralNorm(max_iter=spec["n"], tol=0.0, eval_mode=False)
    elif reg not in ("plain", "explicit"):
        kind = "spectral" if reg.startswith("s") else "frobenius"
        pen = JacobianPenalty(
            kind,
            lambda_ja=1e-3,
            lambda_j=1e-3 if "+" in reg else 0.0,
            n_iter=spec.get("n", 1),
            method=spec.get("method", "forward"),
            every=spec.get("every", 1),
            alternate=spec.get("alternate", False),
            hold=spec.get("hold", False),
            warm_start_vectors=spec.get("warm", False) or spec.get("method") == "fd",
            samples=spec.get("samples"),
            recompute=spec.get("recompute", False),
            lanczos_jvp="forward",  # as measured before "auto" (fd with method="fd") existed
        )
    Am = operator_matrix(A.to(dtype=torch.float32), dtype=torch.float32) if reg == "explicit" else None
    state = {"step": 0}
    info = {"keys": list(range(batch))}
    fd = spec.get("method") == "fd"
    warm = spec.get("warm", False) or fd
    # the trainer's own penalty step: per-sample store (vectors, last σ), hold mode
    ps = PenaltyStep(pen, warm=WarmStore("sample") if warm else None) if pen is not None else None

    def step():
        f = model.as_function(A)
        stats = {}
        if reg == "plain":
            out, p = f(y), 0.0
        elif reg == "deepinv":  # its double-backward power iteration on the network's input
            xin = model.image_input(y, A).detach().requires_grad_()
            out_net = model.net(xin)
            out, p = out_net.norm(dim=1), 1e-3 * jsn(out_net, xin)
        elif reg == "explicit":
            out = f(y)
            J = explicit_jacobian_graph(f, y)
            p = 1e-3 * (torch.linalg.matrix_norm(J @ Am[0], ord=2).max() + torch.linalg.matrix_norm(J, ord=2).max())
        else:
            out, p, stats, _ = ps.penalty(model, y, A, info, state["step"])
        data = (out - x).reshape(batch, -1).norm(dim=1).mean()
        opt.zero_grad(set_to_none=True)
        if ps is not None:
            ps.backward(model, data, p, data.new_zeros(()), stats)
            ps.after_backward(info, stats)  # fd: vectors come with the backward
        else:
            (data + p).backward()
        opt.step()
        state["step"] += 1

    def explicit_jacobian_graph(f, y):
        yr = y.detach()
        J = torch.func.vmap(torch.func.jacrev(lambda v: f(v[None])[0]))(yr)
        return J

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    try:
        # memory base: the set-up (model, optimizer, data) before any step
        sync()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = _rss_kib() * 1024
        # warm-up; with a penalty on part of the batch, until every sample has had its first
        # (cold) visit, so that the measured steps are the steady state
        warmup = 1 if reg == "explicit" else 2 + (-(-batch // spec["samples"]) if spec.get("samples") and warm else 0)
        if spec.get("memory_only"):  # CPU memory run: see _memory_env
            for _ in range(warmup):
                step()
            _clear_peak()  # the steady state, as for the timing
            for _ in range(max(2, spec.get("every", 1))):
                step()
            return {"peak_bytes": max(_rss_kib("VmHWM") * 1024 - base, 0)}
        for _ in range(warmup):
            step()
        sync()
        times = []
        n_steps = 3 if reg == "explicit" else max(6, spec.get("every", 1) * 3)
        for _ in range(n_steps):
            sync()
            t = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t)
        peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda" else _rss_kib("VmHWM") * 1024) - base
        # every-k rows: the mean over a multiple of k steps is the amortised cost
        t_row = statistics.mean(times) if spec.get("every", 1) > 1 else statistics.median(times)
        return {
            "time_s": t_row,
            "median_time_s": statistics.median(times),
            "mean_time_s": statistics.mean(times),
            "peak_bytes": max(peak, 0),
            "steps": n_steps,
        }
    except RuntimeError as err:
        return {"error": str(err).splitlines()[0][:160]}


# --- driver -----------------------------------------------------------------------------------
def _run(spec: dict, env=None) -> dict:
    res = subprocess.run([sys.executable, __file__, "--row", json.dumps(spec)], capture_output=True, text=True, env=env)
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    return json.loads(line[-1][7:]) if line else {"error": res.stderr.strip().splitlines()[-1][:160]}


def _memory_env() -> dict:
    """CPU peak memory is the growth of the peak resident size; glibc keeps freed blocks (and
    raises its mmap threshold on the fly), which blurs it by tens of MiB.  The memory run of a
    row therefore puts every block of 64 KiB or more in its own mapping, returned on free, so
    that the peak resident size follows the live tensors.  Timing runs keep the default."""
    return dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", MALLOC_TOP_PAD_="0")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--models", help=f"comma-separated subset of {', '.join(MODELS)}")
    ap.add_argument(
        "--only",
        help="run only rows whose label contains one of these "
        "comma-separated texts ('=TEXT': is exactly TEXT), and plain",
    )
    ap.add_argument("--out")
    ap.add_argument("--row", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.row:
        print("RESULT " + json.dumps(run_row(json.loads(a.row))))
        return
    if a.models and any(m not in MODELS for m in a.models.split(",")):
        ap.error(f"--models: choose from {', '.join(MODELS)}")
    models = (
        a.models.split(",")
        if a.models
        else (
            QUICK_MODELS
            if a.quick
            else (list(MODELS) if a.device == "cuda" else ["fc", "dncnn5_64", "dncnn17_128", "unet_128"])
        )
    )
    out = Path(a.out or Path(__file__).parent / "results" / f"bench_{a.device}")
    results = []
    for m in models:
        base = None
        for r in rows_for(m, a.quick):
            if (
                a.only
                and r["reg"] != "plain"
                and not any(label(r) == t[1:] if t.startswith("=") else t in label(r) for t in a.only.split(","))
            ):
                continue
            spec = dict(r, model=m, device=a.device)
            t0 = time.time()
            got = _run(spec)
            if a.device == "cpu" and "time_s" in got and r["reg"] != "explicit":
                mem = _run(dict(spec, memory_only=True), _memory_env())
                if "peak_bytes" in mem:
                    got["peak_bytes"], got["peak_bytes_default_malloc"] = mem["peak_bytes"], got["peak_bytes"]
            row = dict(spec, label=label(r), **got)
            if r["reg"] == "plain":
                base = row
            if base and "time_s" in row and "time_s" in base:
                row["time_ratio"] = row["time_s"] / base["time_s"]
                row["mem_ratio"] = row["peak_bytes"] / max(base["peak_bytes"], 1)
            results.append(row)
            print(
                f"{m:12s} {row['label']:40s} "
                + (
                    f"{row['time_s'] * 1e3:8.1f} ms  x{row.get('time_ratio', float('nan')):5.2f}  "
                    f"mem {row['peak_bytes'] / 2**20:8.1f} MiB x{row.get('mem_ratio', float('nan')):5.2f}"
                    if "time_s" in row
                    else f"fails: {row['error']}"
                )
                + f"   ({time.time() - t0:.0f} s)",
                flush=True,
            )
    import torch

    machine = (
        torch.cuda.get_device_name()
        if a.device == "cuda"
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    )
    lines = [
        f"# Jacobian-penalty cost per training step ({a.device})",
        "",
        f"Machine: {machine}; torch {torch.__version__}. Median step time after 2 warm-up "
        "steps (mean over a multiple of k steps for `every k` rows); peak memory above the "
        "set-up (on CPU the growth of peak RSS over the RSS after set-up, measured in a "
        "separate run of the row with glibc's mmap threshold at 64 KiB so that freed "
        "tensors leave the resident set; the explicit-J row keeps the default allocator). "
        "Ratios against `plain` of the same model.",
        "",
        "| model | batch | row | ms/step | × plain | peak MiB | × plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "time_s" in r:
            lines.append(
                f"| {r['model']} | {MODELS[r['model']][2]} | {r['label']} | {r['time_s'] * 1e3:.1f} | "
                f"{r.get('time_ratio', float('nan')):.2f} | {r['peak_bytes'] / 2**20:.1f} | "
                f"{r.get('mem_ratio', float('nan')):.2f} |"
            )
        else:
            lines.append(f"| {r['model']} | {MODELS[r['model']][2]} | {r['label']} | fails: {r['error']} | | | |")
    cmd = (
        "python experiments/bench_jacobian.py"
        + (" --quick" if a.quick else "")
        + (f" --device {a.device}" if a.device != "cpu" else "")
        + (f" --models {a.models}" if a.models else "")
        + (f" --only '{a.only}'" if a.only else "")
    )
    lines += ["", f"Command: `{cmd}`"]
    write_report(out, results, lines)


if __name__ == "__main__":
    main()
