"""``mrijac sweep``: one short run per λ, the trade-off report and the recommendation."""

import json
import math

import pytest

from mrijac.cli import main
from mrijac.sweep import aggregate, recommend


def test_recommend_picks_lowest_sigma_within_the_psnr_budget():
    rows = [
        {"lambda": 0.0, "psnr": 30.0, "val_sigma_ja_mean": 2.0},
        {"lambda": 0.1, "psnr": 29.9, "val_sigma_ja_mean": 1.6},
        {"lambda": 1.0, "psnr": 29.5, "val_sigma_ja_mean": 0.9},  # too large a PSNR loss
        {"lambda": 0.5, "psnr": 29.85, "val_sigma_ja_mean": math.nan},
    ]
    assert recommend(rows, 0.2)["lambda"] == 0.1
    assert recommend(rows, 1.0)["lambda"] == 1.0
    assert recommend(rows[1:], 0.2) is None  # no baseline, no recommendation


def test_sweep_command_trains_each_lambda_and_reports(tmp_path, capsys, synthetic_knee):
    root = synthetic_knee
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data: {{root: {root}, num_workers: 0, batch_size: 2}}\n"
        "model: {chans: 4, num_pool_layers: 2}\n"
        "reg: {name: sja+sj, method: fd, pool: 1}\n"
        "optim: {epochs: 1}\ntrain: {progress: false, ref_slices: 2}\n"
    )
    out = tmp_path / "sweep"
    assert main(["sweep", "--config", str(cfg), "--lambdas", "0.5", "--out", str(out)]) == 0
    res = json.loads((out / "sweep.json").read_text())
    assert [r["lambda"] for r in res["rows"]] == [0.0, 0.5]
    assert all(r["val_sigma_ja_mean"] > 0 for r in res["rows"])
    assert res["recommended"]["lambda"] in (0.0, 0.5)
    for f in ("report.md", "report.html", "sweep.csv", "figures/tradeoff.png"):
        assert (out / f).exists(), f
    assert "recommended λ" in capsys.readouterr().out
    assert main(["sweep", "--config", str(cfg), "--lambdas", "a,b", "--out", str(out)]) == 2
    assert main(["sweep", "--config", str(cfg), "--seeds", "0", "--out", str(tmp_path / "s0")]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err  # the CLI hands --seeds to the sweep
    cfg.write_text(f"data: {{root: {root}}}\nreg: {{name: wd}}\n")
    assert main(["sweep", "--config", str(cfg), "--out", str(tmp_path / "s2")]) == 2
    assert "needs a Jacobian penalty" in capsys.readouterr().err


def test_aggregate_pairs_each_seed_with_its_own_baseline():
    def run(lam, seed, psnr, sigma):
        return {"lambda": lam, "seed": seed, "psnr": psnr, "val_sigma_ja_mean": sigma, "ssim": 0.5}

    runs = [run(0.0, 0, 30.0, 2.0), run(0.0, 1, 31.0, 4.0), run(0.5, 0, 29.9, 1.0), run(0.5, 1, 30.5, 3.0)]
    rows = {r["lambda"]: r for r in aggregate(runs)}
    assert rows[0.5]["seeds"] == 2 and rows[0.5]["psnr"] == pytest.approx(30.2)
    assert rows[0.5]["val_sigma_ja_mean"] == pytest.approx(2.0)
    # paired: (1/2 + 3/4) / 2, not the ratio of the means (2.0 / 3.0)
    assert rows[0.5]["sigma_ratio"] == pytest.approx(0.625) and rows[0.5]["sigma_ratio_worst"] == pytest.approx(0.75)
    assert rows[0.5]["psnr_diff"] == pytest.approx(-0.3) and rows[0.5]["psnr_diff_worst"] == pytest.approx(-0.5)
    assert rows[0.0]["sigma_ratio"] == 1.0 and math.isnan(rows[0.5]["step_time"])
    # the recommendation reads the paired differences: seed 1's λ = 0.5 run failed (NaN PSNR), so
    # the unpaired means (29.9 vs 30.5 → −0.6 dB) would refuse λ = 0.5; paired it is −0.1 dB
    failed = runs[:3] + [run(0.5, 1, math.nan, 3.0)]
    assert recommend(aggregate(failed), 0.2)["lambda"] == 0.5
    # a seed whose λ = 0 run is missing is left out of the paired columns
    rows = {r["lambda"]: r for r in aggregate(runs[:1] + runs[2:])}
    assert rows[0.5]["sigma_ratio"] == pytest.approx(0.5) and rows[0.5]["seeds"] == 2


def test_sweep_over_seeds_runs_every_lambda_per_seed(tmp_path, synthetic_knee):
    from mrijac.config import load_config
    from mrijac.sweep import lambda_sweep

    cfg = load_config(
        None,
        [
            f"data.root={synthetic_knee}",
            "data.num_workers=0",
            "data.batch_size=2",
            "model.chans=4",
            "model.num_pool_layers=2",
            "reg.name=sja+sj",
            "optim.epochs=1",
            "train.progress=false",
            "train.ref_slices=1",
            "train.seed=3",
        ],
    )
    res = lambda_sweep(cfg, [0.5], tmp_path / "s", seeds=2)
    assert [(r["lambda"], r["seed"]) for r in res["runs"]] == [(0.0, 3), (0.5, 3), (0.0, 4), (0.5, 4)]
    for lam in (0, 0.5):
        for seed in (3, 4):
            hist = tmp_path / "s" / "runs" / f"lam_{lam:g}" / f"seed_{seed}" / "history.csv"
            assert hist.exists(), hist
    by_seed = {r["seed"]: r["psnr"] for r in res["runs"] if r["lambda"] == 0}
    assert by_seed[3] != by_seed[4]  # the seed reaches the weights: two different baselines
    row = next(r for r in res["rows"] if r["lambda"] == 0.5)
    assert row["seeds"] == 2
    assert row["psnr"] == pytest.approx(sum(r["psnr"] for r in res["runs"] if r["lambda"] == 0.5) / 2)
    saved = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert len(saved["runs"]) == 4 and saved["recommended"]["lambda"] in (0.0, 0.5)
    assert "seeds 3, 4" in (tmp_path / "s" / "report.md").read_text()
    with pytest.raises(ValueError, match="--seeds"):
        lambda_sweep(cfg, [0.5], tmp_path / "s3", seeds=0)


@pytest.mark.parametrize("bad", ["-1", "nan"])
def test_sweep_refuses_bad_lambdas(tmp_path, bad):
    from mrijac.config import load_config
    from mrijac.sweep import lambda_sweep

    cfg = load_config(None, ["reg.name=sja"])
    with pytest.raises(ValueError, match="--lambdas"):
        lambda_sweep(cfg, [float(bad)], tmp_path / "o")
