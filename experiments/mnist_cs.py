"""Gaussian compressed sensing on MNIST — the paper's Fig. 2 sweeps (q, m, ε), every strategy.

Protocol in ``experiments/configs/mnist_cs.yaml`` (``quick:`` overrides it for the committed
CPU run).  ``A`` q × 784 i.i.d. N(0, 1/q), pixels in [0, 1], noise uniform on the ℓ2 sphere of
radius ε, the fully connected net q → 784 → 784 → 784, Adam, loss ``‖f(y) − x‖₂``.  One
seed = one draw of ``A``, of the m training images, of the noise and of the initialisation
(the same for every strategy of that seed, so differences between strategies are paired).
λ per strategy by grid search on the validation split (mean validation ℓ2 over the grid
seeds), the automatic λ (Algorithm 4) as its own row.  All models of a setting train at once
(:class:`mrijac.models.fc_stack.FCStack`); ``--speedup`` measures that against one at a time.

Per setting and row: test ℓ2 (mean over test images of ``‖f(y) − x‖₂``), training ℓ2, GE =
|test − train|, test PSNR, and the exact ``σ(J A)``, ``σ(J)`` (explicit Jacobian, mean over
``probe`` test images); mean ± std over seeds.

    python experiments/mnist_cs.py --quick            # committed: results/mnist_cs_quick.*
    python experiments/mnist_cs.py --full --mnist DIR # the paper's protocol (DIR: full MNIST)
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _report import mode_parser, write_report  # noqa: E402

from mrijac.data.mnist import find_mnist, read_idx  # noqa: E402
from mrijac.evaluate.figures import plt, save_figure  # noqa: E402
from mrijac.models.fc_stack import FCStack  # noqa: E402
from mrijac.operators.cs import GaussianCS  # noqa: E402
from mrijac.operators.noise import sphere_noise  # noqa: E402
from mrijac.train.stack_fit import Member, StackData, evaluate_stack, fit_stack  # noqa: E402

SHARED_MNIST = HERE.parent.parent / "shared" / "data" / "mnist"
SWEEP_LABEL = {"q": "measurements q", "m": "training images m", "eps": "noise radius ε"}


def load_protocol(path: Path, quick: bool) -> dict:
    p = yaml.safe_load(path.read_text())
    over = p.pop("quick", {})
    if quick:
        for k, v in over.items():
            p[k] = {**p[k], **v} if isinstance(v, dict) and k == "sweeps" else v
    return p


def load_images(folder: Path, n_val: int, n_test: int) -> dict[str, torch.Tensor]:
    """Training pool / validation / test images ``(N, 784)`` in [0, 1].  With the full MNIST
    (``train-*`` files) the validation split is the end of the training set and the test split
    is t10k; with t10k alone (``../shared/data/mnist``) all three come from it, disjoint."""

    def read(split):
        im, _ = find_mnist(folder, split)
        return torch.from_numpy(read_idx(im).reshape(-1, 784).astype(np.float32) / 255.0)

    try:
        train = read("train")
    except FileNotFoundError:
        t10k = read("t10k")
        if len(t10k) <= n_val + n_test:
            raise ValueError(f"{folder}: {len(t10k)} images, need more than val + test = {n_val + n_test}") from None
        return {"pool": t10k[: -n_val - n_test], "val": t10k[-n_val - n_test : -n_test], "test": t10k[-n_test:]}
    return {"pool": train[:-n_val], "val": train[-n_val:], "test": read("t10k")[:n_test]}


def group_data(seed: int, q: int, m: int, eps: float, images: dict) -> dict[str, torch.Tensor]:
    """One seed's operator, training subset and fixed noisy measurements of every split."""
    if m > len(images["pool"]):
        raise ValueError(f"m = {m} training images asked, the pool has {len(images['pool'])}")
    g = torch.Generator().manual_seed(1000 + seed)
    A = GaussianCS(q, 784, seed=10_000 + seed).matrix[0]
    out = {"A": A}
    idx = torch.randperm(len(images["pool"]), generator=g)[:m]
    for split, x in (("train", images["pool"][idx]), ("val", images["val"]), ("test", images["test"])):
        out[f"x_{split}"] = x
        out[f"y_{split}"] = x @ A.T + sphere_noise(torch.zeros(len(x), q), eps, g)
    return out


def init_stack(members: list[Member], seeds: list[int], q: int) -> FCStack:
    """Every member of seed s starts from the same initialisation (drawn from s)."""
    base = {s: FCStack(1, q, 784, generator=torch.Generator().manual_seed(20_000 + s)) for s in seeds}
    st = FCStack(len(members), q, 784)
    with torch.no_grad():
        for k, mb in enumerate(members):
            for dst, src in zip(
                [*st.weights, *st.biases], [*base[seeds[mb.group]].weights, *base[seeds[mb.group]].biases]
            ):
                dst[k].copy_(src[0])
    return st


def train_setting(q, m, eps, rows: dict[str, list], seeds: list[int], proto: dict, images: dict, desc: str) -> dict:
    """Train ``rows`` (name -> [(strategy, λ)]) × ``seeds`` at once; per row, λ and seed: metrics."""
    groups = [group_data(s, q, m, eps, images) for s in seeds]
    stack_of = lambda key: torch.stack([g[key] for g in groups])  # noqa: E731
    data = StackData(stack_of("x_train"), stack_of("y_train"), stack_of("A"))
    members, where = [], []
    for name, variants in rows.items():
        for strategy, lam in variants:
            for gi, _ in enumerate(seeds):
                members.append(Member(strategy, lam, gi))
                where.append((name, lam, gi))
    size = int(proto.get("stack", 0)) or len(members)  # models per stack (0: all at once)
    t0 = time.time()
    ev = {split: {} for split in ("train", "val", "test")}
    auto, final_loss = {}, []
    for c0 in range(0, len(members), size):
        chunk = members[c0 : c0 + size]
        stack = init_stack(chunk, seeds, q)
        hist = fit_stack(
            stack,
            chunk,
            data,
            proto["epochs"],
            batch_size=proto["batch_size"],
            lr=proto["lr"],
            n_iter=proto["n_iter"],
            seed=seeds[0],
            desc=desc if size == len(members) else f"{desc} [{c0 + 1}–{c0 + len(chunk)}/{len(members)}]",
        )
        final_loss += [float(v) for v in np.asarray(hist["loss"][-1])]
        gidx = [mb.group for mb in chunk]
        for split in ev:
            e = evaluate_stack(
                stack,
                gidx,
                stack_of(f"x_{split}"),
                stack_of(f"y_{split}"),
                data.A,
                probe=proto["probe"] if split == "test" else 0,
            )
            for key, v in e.items():
                ev[split].setdefault(key, []).append(np.asarray(v))
        for term, idx in hist["index"].items():
            for i, k in enumerate(idx):
                if chunk[k].lam == "auto":
                    auto.setdefault(c0 + k, {})[term] = float(hist["lambda"][term][i])
    ev = {split: {key: np.concatenate(v) for key, v in e.items()} for split, e in ev.items()}
    seconds = time.time() - t0
    out: dict = {}
    for k, (name, lam, gi) in enumerate(where):
        rec = {
            "seed": seeds[gi],
            "train_l2": float(ev["train"]["l2"][k]),
            "val_l2": float(ev["val"]["l2"][k]),
            "test_l2": float(ev["test"]["l2"][k]),
            "test_psnr": float(ev["test"]["psnr"][k]),
            "sigma_ja": float(ev["test"]["sigma_ja"][k]),
            "sigma_j": float(ev["test"]["sigma_j"][k]),
            "final_train_loss": final_loss[k],
        }
        rec["ge"] = abs(rec["test_l2"] - rec["train_l2"])
        if k in auto:
            rec["auto_lambda"] = auto[k]
        out.setdefault(name, {}).setdefault(str(lam), []).append(rec)
    return {"runs": out, "seconds": seconds, "models": len(members)}


def rows_for(proto: dict, lams: dict | None) -> dict[str, list]:
    """Row name -> [(strategy, λ), …]: the whole grid (``lams`` None) or the chosen λ."""
    rows = {}
    for s in proto["strategies"]:
        if s == "none":
            rows[s] = [(s, 0.0)]
        else:
            rows[s] = [(s, float(v)) for v in (proto["lambda_grid"][s] if lams is None else [lams[s]])]
    for s in proto["auto_rows"]:
        rows[f"{s} (auto λ)"] = [(s, "auto")]
    return rows


def pick(result: dict) -> tuple[dict, dict]:
    """Per row: the λ of lowest mean validation ℓ2, and the validation ℓ2 per λ."""
    best, table = {}, {}
    for name, by_lam in result["runs"].items():
        table[name] = {lam: float(np.mean([r["val_l2"] for r in runs])) for lam, runs in by_lam.items()}
        best[name] = min(table[name], key=table[name].get)
    return best, table


def settings(proto: dict) -> list[tuple[str, float, tuple]]:
    c = proto["central"]
    out = []
    for sweep, values in proto["sweeps"].items():
        for v in values:
            key = dict(c, **{sweep: v})
            out.append((sweep, v, (int(key["q"]), int(key["m"]), float(key["eps"]))))
    return out


def speedup(proto, images, n_models: int, epochs: int) -> dict:
    """Seconds per model-epoch: the grid's first ``n_models`` members stacked vs one at a time."""
    c = proto["central"]
    q, m, eps = int(c["q"]), int(c["m"]), float(c["eps"])
    g = group_data(0, q, m, eps, images)
    data = StackData(g["x_train"][None], g["y_train"][None], g["A"][None])
    members = [Member(s, lam, 0) for name, v in rows_for(proto, None).items() for s, lam in v][:n_models]
    stack = init_stack(members, [0], q)
    t0 = time.time()
    fit_stack(stack, members, data, epochs, proto["batch_size"], proto["lr"], progress=False)
    stacked = time.time() - t0
    t0 = time.time()
    for mb in members:
        fit_stack(init_stack([mb], [0], q), [mb], data, epochs, proto["batch_size"], proto["lr"], progress=False)
    single = time.time() - t0
    per = lambda t: t / (len(members) * epochs)  # noqa: E731
    return {
        "models": len(members),
        "epochs": epochs,
        "stacked_s_per_model_epoch": per(stacked),
        "single_s_per_model_epoch": per(single),
        "speedup": single / stacked,
    }


def main():
    ap = mode_parser(__doc__, HERE / "configs" / "mnist_cs.yaml")
    ap.add_argument("--mnist", default=str(SHARED_MNIST), help="MNIST IDX folder (t10k alone, or the full set)")
    ap.add_argument("--sweeps", default="q,m,eps", help="comma-separated subset of q,m,eps")
    ap.add_argument("--seeds", type=int, default=0, help="override the protocol's number of seeds")
    ap.add_argument("--epochs", type=int, default=0, help="override the protocol's epochs")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--speedup", type=int, default=8, help="models in the stacked-vs-single timing (0: skip)")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    out = Path(a.out or HERE / "results" / ("mnist_cs_quick" if a.quick or a.report_only else "mnist_cs_full"))
    if a.report_only:
        res = json.loads(out.with_suffix(".json").read_text())
        return report(res, out)
    if a.threads:
        torch.set_num_threads(a.threads)
    proto = load_protocol(Path(a.config), a.quick)
    if a.seeds:
        proto["seeds"] = a.seeds
    if a.epochs:
        proto["epochs"] = a.epochs
    proto["sweeps"] = {k: v for k, v in proto["sweeps"].items() if k in a.sweeps.split(",")}
    images = load_images(Path(a.mnist), proto["splits"]["val"], proto["splits"]["test"])
    t_start = time.time()
    res = {
        "protocol": proto,
        "mode": "quick" if a.quick else "full",
        "command": "python experiments/mnist_cs.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {a.device}",
        "images": {k: len(v) for k, v in images.items()},
        "settings": {},
    }
    torch.set_default_device(a.device) if a.device != "cpu" else None
    if a.speedup:
        res["speedup"] = speedup(proto, images, a.speedup, 2)
        print(f"stacked vs one at a time: {res['speedup']['speedup']:.2f}× ({a.speedup} models, 2 epochs)")
    seeds = list(range(proto["seeds"]))
    c = proto["central"]
    fixed = None
    if proto["grid_at"] == "central":  # choose λ once, on the grid seeds, then train the rows
        gseeds = list(range(proto["grid_seeds"]))
        grid = train_setting(
            int(c["q"]), int(c["m"]), float(c["eps"]), rows_for(proto, None), gseeds, proto, images, "λ grid"
        )
        fixed, table = pick(grid)
        res["grid"] = {"seeds": gseeds, "val_l2": table, "chosen": fixed, "seconds": grid["seconds"]}
    done = {}
    for sweep, value, (q, m, eps) in tqdm(settings(proto), desc="settings"):
        key = f"q={q},m={m},eps={eps}"
        if key not in done:
            if fixed is None:  # grid at every setting: the grid runs are the results
                r = train_setting(q, m, eps, rows_for(proto, None), seeds, proto, images, key)
                chosen, table = pick(r)
                r["chosen"], r["grid_val_l2"] = chosen, table
            else:
                lams = {s: float(fixed[s]) for s in proto["strategies"] if s != "none"}
                r = train_setting(q, m, eps, rows_for(proto, lams), seeds, proto, images, key)
                r["chosen"] = {name: next(iter(by)) for name, by in r["runs"].items()}
            r.update(q=q, m=m, eps=eps)
            done[key] = r
        res["settings"].setdefault(sweep, {})[str(value)] = key
    res["runs"] = done
    res["wall_seconds"] = time.time() - t_start
    report(res, out)


# ---------------------------------------------------------------------------------------------
# report


def _summary(setting: dict) -> dict[str, dict]:
    """Row -> metric -> (mean, std, per-seed values) at the chosen λ."""
    out = {}
    for name, by in setting["runs"].items():
        runs = by[setting["chosen"][name]]
        out[name] = {
            k: np.array([r[k] for r in runs]) for k in ("test_l2", "train_l2", "ge", "test_psnr", "sigma_ja", "sigma_j")
        }
        out[name]["lam"] = setting["chosen"][name]
        out[name]["seeds"] = [r["seed"] for r in runs]
    return out


def _fmt(v: np.ndarray, d=3) -> str:
    return f"{v.mean():.{d}f} ± {v.std(ddof=1):.{d}f}" if len(v) > 1 else f"{v.mean():.{d}f}"


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean and std over seeds of the relative difference (a − b)/b (paired by seed)."""
    d = (a - b) / b
    return float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else 0.0


def verdicts(res: dict) -> list[tuple[str, str, str]]:
    """The paper's claims next to our numbers: (claim, verdict, evidence)."""
    sweeps = {sw: [(float(v), _summary(res["runs"][k])) for v, k in by.items()] for sw, by in res["settings"].items()}
    allset = [s for by in sweeps.values() for _, s in by]
    out = []

    def wins(a, b, metric="test_l2"):
        ds = [_paired(s[a][metric], s[b][metric]) for s in allset if a in s and b in s]
        n_better = sum(d < 0 for d, _ in ds)
        n_clear = sum(d + sd < 0 for d, sd in ds)  # better by more than the seed spread
        return n_better, n_clear, len(ds), float(np.mean([d for d, _ in ds])) if ds else float("nan")

    def verdict(n_better, n_clear, n):
        if n and n_clear >= 0.75 * n:
            return "reproduced"
        if n and n_better >= 0.5 * n:
            return "partly"
        return "not reproduced"

    for a, b, claim in (
        ("sja+sj", "sj", "model-aware beats model-agnostic (spectral: sja+sj vs sj)"),
        ("fja+fj", "fj", "model-aware beats model-agnostic (Frobenius: fja+fj vs fj)"),
        ("sja+sj", "none", "the penalty beats no regularization (sja+sj vs none)"),
        ("sja+sj", "wd", "beats weight decay (sja+sj vs wd)"),
        ("sja+sj", "fja+fj", "spectral beats Frobenius (sja+sj vs fja+fj)"),
    ):
        nb, nc, n, mean = wins(a, b)
        out.append(
            (
                claim,
                verdict(nb, nc, n),
                f"test ℓ2 lower in {nb}/{n} settings ({nc} by more than the seed spread); mean {100 * mean:+.1f} %",
            )
        )
    nb, nc, n, mean = wins("sja+sj", "none", "ge")
    out.append(
        (
            "lower generalization error (sja+sj vs none)",
            verdict(nb, nc, n),
            f"GE lower in {nb}/{n} settings ({nc} clearly); mean {100 * mean:+.0f} %",
        )
    )
    if "q" in sweeps and len(sweeps["q"]) > 1:
        gains = [-_paired(s["sja+sj"]["test_l2"], s["none"]["test_l2"])[0] for _, s in sweeps["q"]]
        qs = [v for v, _ in sweeps["q"]]
        grows = all(b >= a - 0.002 for a, b in zip(gains, gains[1:]))
        ev = ", ".join(f"q={int(q)}: {100 * g:+.1f} %" for q, g in zip(qs, gains))
        out.append(
            (
                "gains grow with q (sja+sj vs none)",
                "reproduced"
                if grows and gains[-1] > gains[0]
                else ("partly" if gains[-1] > gains[0] else "not reproduced"),
                ev,
            )
        )
    if "m" in sweeps:
        s_small = sweeps["m"][0][1]
        d, sd = _paired(s_small["sja+sj"]["test_l2"], s_small["none"]["test_l2"])
        out.append(
            (
                f"gains hold with few training examples (m={int(sweeps['m'][0][0])})",
                "reproduced" if d + sd < 0 else ("partly" if d < 0 else "not reproduced"),
                f"sja+sj vs none {100 * d:+.1f} ± {100 * sd:.1f} %",
            )
        )
    if "eps" in sweeps:
        lo, hi = sweeps["eps"][0], sweeps["eps"][-1]
        spread = lambda s: float(
            np.ptp([s[r]["test_l2"].mean() for r in s]) / np.mean([s[r]["test_l2"].mean() for r in s])
        )  # noqa: E731
        out.append(
            (
                "strategies similar at high noise",
                "reproduced" if spread(hi[1]) < spread(lo[1]) else "not reproduced",
                f"spread of test ℓ2 across rows: {100 * spread(lo[1]):.1f} % at ε={lo[0]:g}, "
                f"{100 * spread(hi[1]):.1f} % at ε={hi[0]:g}",
            )
        )
    if any("sja+sj (auto λ)" in s for s in allset):
        nb, nc, n, mean = wins("sja+sj (auto λ)", "sja+sj")
        out.append(
            (
                "automatic λ as good as the grid-searched λ",
                "reproduced" if mean <= 0.01 else "not reproduced",
                f"auto vs grid: test ℓ2 {100 * mean:+.1f} % (lower in {nb}/{n})",
            )
        )
    return out


def figure(res: dict, out: Path) -> Path:
    sweeps = res["settings"]
    fig, axes = plt.subplots(2, len(sweeps), figsize=(4.2 * len(sweeps), 7), squeeze=False)
    rows = list(_summary(res["runs"][next(iter(next(iter(sweeps.values())).values()))]))
    for j, (sw, by) in enumerate(sweeps.items()):
        xs = [float(v) for v in by]
        sums = [_summary(res["runs"][k]) for k in by.values()]
        for name in rows:
            style = "-" if name.startswith(("sja", "fja")) else "--"
            for i, metric in enumerate(("test_l2", "ge")):
                mu = [s[name][metric].mean() for s in sums]
                sd = [s[name][metric].std(ddof=1) if len(s[name][metric]) > 1 else 0 for s in sums]
                axes[i, j].errorbar(xs, mu, yerr=sd, ls=style, marker="o", ms=3, capsize=2, label=name)
        axes[0, j].set_title(f"test ℓ2 vs {SWEEP_LABEL[sw]}")
        axes[1, j].set_title(f"generalization error vs {SWEEP_LABEL[sw]}")
        for i in range(2):
            axes[i, j].set_xlabel(SWEEP_LABEL[sw])
            if sw == "q":
                axes[i, j].set_xscale("log", base=2)
    axes[0, 0].set_ylabel("mean ‖f(y) − x‖₂ on test images")
    axes[1, 0].set_ylabel("|test ℓ2 − train ℓ2|")
    axes[0, -1].legend(fontsize=7)
    fig.suptitle(f"MNIST Gaussian CS ({res['mode']} mode): mean ± std over {res['protocol']['seeds']} seeds")
    fig.tight_layout()
    path = out.with_suffix(".png")
    save_figure(fig, path)
    return path


def report(res: dict, out: Path) -> None:
    p = res["protocol"]
    lines = [
        f"# MNIST Gaussian compressed sensing — {res['mode']} mode",
        "",
        f"Command: `{res['command']}`; machine: {res['machine']}; wall time {res['wall_seconds'] / 60:.1f} min.",
        f"Protocol (`experiments/configs/mnist_cs.yaml`{', quick overrides' if res['mode'] == 'quick' else ''}): "
        f"{p['epochs']} epochs, batch {p['batch_size']}, Adam lr {p['lr']}, {p['seeds']} seeds, "
        f"n_iter {p['n_iter']} warm power iteration(s) per step; images {res['images']}; σ exact on "
        f"{p['probe']} test images.",
    ]
    if "grid" in res:
        g = res["grid"]
        lines += [
            "",
            f"λ chosen once at the central setting (q={p['central']['q']}, m={p['central']['m']}, "
            f"ε={p['central']['eps']}) on {len(g['seeds'])} seed(s) by validation ℓ2, then used everywhere:",
            "",
            "| strategy | validation ℓ2 per λ | chosen |",
            "|---|---|---|",
        ]
        for name, tab in g["val_l2"].items():
            lines.append(
                f"| {name} | " + ", ".join(f"{lam}: {v:.4f}" for lam, v in tab.items()) + f" | {g['chosen'][name]} |"
            )
    if "speedup" in res:
        s = res["speedup"]
        lines += [
            "",
            f"Stacked training ({s['models']} models, {s['epochs']} epochs): "
            f"{s['stacked_s_per_model_epoch']:.3f} s per model-epoch vs {s['single_s_per_model_epoch']:.3f} s "
            f"one at a time — **{s['speedup']:.2f}×**. "
            + (
                f"This run trained {p['stack']} model(s) per stack."
                if p.get("stack")
                else "This run trained all models of a setting as one stack."
            ),
        ]
    lines += ["", "## Verdicts", "", "| claim of the paper | verdict | our numbers |", "|---|---|---|"]
    lines += [f"| {c} | {v} | {e} |" for c, v, e in verdicts(res)]
    for sw, by in res["settings"].items():
        sums = {float(v): _summary(res["runs"][k]) for v, k in by.items()}
        names = list(next(iter(sums.values())))
        head = " | ".join(f"{SWEEP_LABEL[sw].split()[-1]}={v:g}" for v in sums)
        for metric, title in (
            ("test_l2", "test ℓ2"),
            ("ge", "GE = |test − train| ℓ2"),
            ("sigma_ja", "σ(J A) on test images"),
        ):
            lines += [
                "",
                f"### {title} vs {SWEEP_LABEL[sw]} (mean ± std over seeds)",
                "",
                f"| row (λ) | {head} |",
                "|---" * (len(sums) + 1) + "|",
            ]
            for name in names:
                lam = sums[next(iter(sums))][name]["lam"]
                lines.append(f"| {name} ({lam}) | " + " | ".join(_fmt(s[name][metric]) for s in sums.values()) + " |")
    fig = figure(res, out)
    lines += ["", f"![sweeps]({fig.name})"]
    write_report(out, res, lines)


if __name__ == "__main__":
    main()
