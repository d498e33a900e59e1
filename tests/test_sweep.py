"""``mrijac sweep``: one short run per λ, the trade-off report and the recommendation."""

import json
import math

import pytest

from mrijac.cli import main
from mrijac.sweep import recommend


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
    cfg.write_text(f"data: {{root: {root}}}\nreg: {{name: wd}}\n")
    assert main(["sweep", "--config", str(cfg), "--out", str(tmp_path / "s2")]) == 2
    assert "needs a Jacobian penalty" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["-1", "nan"])
def test_sweep_refuses_bad_lambdas(tmp_path, bad):
    from mrijac.config import load_config
    from mrijac.sweep import lambda_sweep

    cfg = load_config(None, ["reg.name=sja"])
    with pytest.raises(ValueError, match="--lambdas"):
        lambda_sweep(cfg, [float(bad)], tmp_path / "o")
