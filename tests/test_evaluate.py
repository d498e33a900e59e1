"""Evaluation: fastMRI-identical metrics, reports, GE, comparison."""

import json

import fastmri
import numpy as np
import pytest
from fastmri import evaluate as fe

from mrijac.config import load_config
from mrijac.data import MRISliceDataset, collate_mri
from mrijac.evaluate.compare import compare_runs
from mrijac.evaluate.runner import evaluate_checkpoint
from mrijac.metrics import aggregate, image_metrics, volume_metrics
from mrijac.train.trainer import train


def test_volume_metrics_equal_fastmri_evaluate():
    rng = np.random.default_rng(0)
    vols = []
    m = fe.Metrics(fe.METRIC_FUNCS)
    for _ in range(3):
        gt = rng.random((4, 32, 32))
        pred = gt + 0.1 * rng.standard_normal(gt.shape)
        ours = volume_metrics(gt, pred)
        assert ours["ssim"] == pytest.approx(float(fe.ssim(gt, pred)[0]), abs=1e-12)
        assert ours["psnr"] == pytest.approx(float(fe.psnr(gt, pred)), abs=1e-12)
        assert ours["nmse"] == pytest.approx(float(fe.nmse(gt, pred)), abs=1e-12)
        m.push(gt, pred)
        vols.append(ours)
    agg = aggregate(vols)
    for k in ("ssim", "psnr", "nmse"):
        assert agg[k]["mean"] == pytest.approx(m.means()[k.upper()], rel=1e-10)
        assert agg[k]["std"] == pytest.approx(m.stddevs()[k.upper()], rel=1e-10)
    with pytest.raises(ValueError, match="must both be"):
        volume_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    im = image_metrics(np.ones(784) * 0.5, np.ones(784) * 0.5 + 0.01)
    assert im["psnr"] == pytest.approx(40.0)


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic_knee):
    root = tmp_path_factory.mktemp("ev")
    (root / "data").symlink_to(synthetic_knee)
    outs = {}
    for reg in ("none", "sja+sj"):
        cfg = load_config(
            None,
            [
                f"data.root={root / 'data'}",
                "model.chans=4",
                "model.num_pool_layers=2",
                "optim.epochs=1",
                "train.progress=false",
                f"reg.name={reg}",
                "data.batch_size=2",
            ],
        )
        train(cfg, root / reg)
        outs[reg] = root / reg / "checkpoints" / "final.pt"
    return root, outs


def test_evaluate_writes_report_and_matches_fastmri(run, tmp_path):
    root, cks = run
    out = tmp_path / "ev"
    r = evaluate_checkpoint(cks["none"], root / "data" / "val", out, jac_batches=1, progress=False)
    assert r["ge"] == pytest.approx(abs(r["test_loss"] - r["train_loss"]))
    for name in ("metrics.json", "metrics.csv", "report.md", "report.html"):
        assert (out / name).exists()
    figs = sorted(p.name for p in (out / "figures").iterdir())
    assert "curves.png" in figs and len([f for f in figs if f.startswith("recon_")]) == 2
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<img" in html and 'src="figures' not in html
    saved = json.loads((out / "metrics.json").read_text())
    assert len(saved["per_volume"]) == 2 and saved["ge"] == pytest.approx(abs(saved["test_loss"] - saved["train_loss"]))
    assert saved["jacobian"]["sigma_ja"]["max"] >= saved["jacobian"]["sigma_ja"]["mean"] > 0
    # the lower bound along the measurement: per sample below the reference σ, and in the report
    jac = saved["jacobian"]
    assert all(0 < f <= s * (1 + 1e-6) for f, s in zip(jac["floor_ja"]["values"], jac["sigma_ja"]["values"]))
    assert "lower bound of σ(J A)" in (out / "report.md").read_text()
    # the zero-filled baseline agrees with fastmri's own computation on the same volumes
    ds = MRISliceDataset(root / "data" / "val", "singlecoil", mode="val", crop_kspace=True)
    first = [ds[i] for i in range(len(ds)) if ds[i].fname == saved["per_volume"][0]["fname"]]
    b = collate_mri(first)
    import torch

    k = torch.view_as_real(b.y)
    zf = fastmri.complex_abs(fastmri.ifft2c(k)).numpy()
    ref = fe.ssim(b.target.numpy(), zf)
    assert saved["zero_filled"]["per_volume"][0]["ssim"] == pytest.approx(float(ref[0]), abs=1e-6)
    with pytest.raises(FileExistsError, match="already holds files"):
        evaluate_checkpoint(cks["none"], root / "data" / "val", out, jac_batches=0)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        evaluate_checkpoint(tmp_path / "no.pt", root / "data" / "val", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    # the HTML tables keep their columns (cells such as "GE = |test − train|" hold bars)
    import os
    import re

    for tab in re.findall(r"<table>(.*?)</table>", html, re.S):
        widths = {len(re.findall(r"<t[hd]>", row)) for row in re.findall(r"<tr>(.*?)</tr>", tab, re.S)}
        assert len(widths) == 1, tab[:300]
    assert "<th>GE = |test − train|</th>" in html
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~umask  # not mkdtemp's private 0700


def test_compare_runs(run, tmp_path):
    root, cks = run
    evs = []
    for reg, ck in cks.items():
        evs.append(tmp_path / reg)
        evaluate_checkpoint(ck, root / "data" / "val", evs[-1], jac_batches=1, progress=False)
    table = compare_runs(evs + [root / "none"], tmp_path / "cmp", names=["a", "b", "c"])
    assert [r["run"] for r in table] == ["a", "b", "c"]
    assert table[1]["d_ssim"] == pytest.approx(table[1]["ssim"] - table[0]["ssim"])
    assert (tmp_path / "cmp" / "figures" / "comparison.png").exists()
    assert "Differences against `a`" in (tmp_path / "cmp" / "report.md").read_text()
    # scored on the same data: the zero-filled baseline is a row, and the report says who beats it
    compare_runs(evs, tmp_path / "cmp3", names=["a", "b"])
    md = (tmp_path / "cmp3" / "report.md").read_text()
    zf = json.loads((evs[0] / "metrics.json").read_text())["zero_filled"]["aggregate"]["psnr"]["mean"]
    assert "| zero-filled | (no network) |" in md and f"PSNR {zf:.2f} dB" in md
    assert "No run beats the zero-filled" in md or "Above it in PSNR" in md
    with pytest.raises(FileNotFoundError, match="run not found"):
        compare_runs([tmp_path / "nope"], tmp_path / "cmp2")


def test_generalization_error_only_on_the_held_out_split(run, tmp_path):
    """GE (with bootstrap intervals) against the run's own validation split; on other data it
    is omitted with the reason, because a loss gap to another dataset is not a GE."""
    root, cks = run
    r = evaluate_checkpoint(cks["sja+sj"], root / "data" / "val", tmp_path / "a", jac_batches=0, progress=False)
    g = r["generalization"]
    assert g["ge"] == pytest.approx(abs(g["test"] - g["train"]))
    assert g["ci95"][0] <= g["ge"] <= g["ci95"][1] and g["rel_ci95"][0] <= g["rel_ge"] <= g["rel_ci95"][1]
    assert all(m["ci95"][0] <= m["mean"] <= m["ci95"][1] for m in r["aggregate"].values())
    other = evaluate_checkpoint(
        cks["sja+sj"], root / "data" / "test_targets", tmp_path / "b", jac_batches=0, progress=False
    )
    assert other["ge"] is None and "not the held-out split" in other["generalization"]["omitted"]
    assert "GE omitted" in (tmp_path / "b" / "report.md").read_text()


def test_report_figures_axes_baseline_colour_bars_and_grid(tmp_path, monkeypatch):
    """Bar charts start at 0 and draw the zero-filled baseline; error maps have a colour bar
    and the zero-filled error; CS/SR samples come as one torchvision grid (3 rows)."""
    import matplotlib.pyplot as plt
    import numpy as np

    import mrijac.evaluate.figures as F

    figs = []

    def keep(fig, path):
        figs.append(fig)
        return path

    monkeypatch.setattr(F, "save_figure", keep)
    table = [{"run": "a", "psnr": 30.1, "ssim": 0.80}, {"run": "b", "psnr": 30.3, "ssim": 0.81}]
    F.bars_figure(tmp_path / "b.png", table, baseline={"psnr": 30.5, "ssim": 0.79})
    axes = [ax for ax in figs[-1].axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["ssim", "psnr"]
    for ax, base in zip(axes, (0.79, 30.5)):
        assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] > max(base, 0.81)
        assert any(np.allclose(line.get_ydata(), base) for line in ax.lines)
    t = np.random.default_rng(0).random((16, 16))
    F.reconstruction_figure(tmp_path / "r.png", t, t + 0.1, t + 0.01)
    titles = [ax.get_title() for ax in figs[-1].axes]
    assert "|zero-filled − truth|" in titles and "|reconstruction − truth|" in titles
    assert any(ax.get_ylabel() == "absolute error" for ax in figs[-1].axes)  # the colour bar
    F.samples_grid(tmp_path / "g.png", [t] * 5, [t] * 5)
    grid = figs[-1].axes[0].images[0].get_array()
    assert grid.shape == (3 * 18 + 2, 5 * 18 + 2)  # make_grid: 3 rows × 5 images, 2-px padding
    plt.close("all")


def test_generalization_gap_interval_contains_the_estimate():
    from mrijac.metrics import generalization_gap

    rng = np.random.default_rng(0)
    same = generalization_gap(rng.normal(1.0, 0.5, 10), rng.normal(1.0, 0.5, 10))
    lo, hi = same["ci95"]
    assert lo == 0.0 and lo <= same["ge"] <= hi  # no gap: the interval reaches 0
    apart = generalization_gap(rng.normal(2.0, 0.1, 50), rng.normal(1.0, 0.1, 50))
    lo, hi = apart["ci95"]
    assert 0.9 < lo <= apart["ge"] <= hi < 1.1
