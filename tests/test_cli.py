"""The command line: help, one-line errors with exit status 2, the quick demo."""

import json
import subprocess
import sys

import pytest

from mrijac.cli import main


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["train"],
        ["evaluate"],
        ["compare"],
        ["demo"],
        ["data"],
        ["data", "synth"],
        ["data", "convert", "kspace"],
        ["data", "convert", "images"],
        ["data", "maps"],
    ],
)
def test_every_subcommand_has_help(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args + ["--help"])
    assert e.value.code == 0 and "usage: mrijac" in capsys.readouterr().out


def test_errors_are_one_line_exit_2(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("reg:\n  lambda_ja: -1\n")
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reg.lambda_ja must be a number >= 0" in err[0]
    assert main(["train", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml: config file not found" in capsys.readouterr().err
    assert main(["train", "--config", str(cfg), "data.accelerations=[0.5]"]) == 2
    assert (
        main(
            ["evaluate", "--checkpoint", str(tmp_path / "x.pt"), "--data", str(tmp_path), "--out", str(tmp_path / "o")]
        )
        == 2
    )
    assert "x.pt: checkpoint not found" in capsys.readouterr().err
    assert main(["train", "--help-config"]) == 0
    helptext = capsys.readouterr().out
    assert "reg.lambda_ja = 'auto'" in helptext
    # every key has a description; keys with fixed values list them (from the config fields)
    lines = [ln for ln in helptext.splitlines() if " = " in ln]
    assert lines and all("  — " in ln for ln in lines)
    assert any(ln.startswith("  reg.method =") and "[auto | forward | double_vjp | fd]" in ln for ln in lines)
    (tmp_path / "w.yaml").write_text("loss: {name: weighted}\n")
    assert main(["train", "--config", str(tmp_path / "w.yaml")]) == 2
    assert "loss.name=weighted needs loss.weights" in capsys.readouterr().err


def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    res = subprocess.run(
        [sys.executable, "-m", "mrijac.cli", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "report:" in res.stdout
    table = json.loads((out / "compare" / "comparison.json").read_text())
    assert [r["run"] for r in table] == ["none", "sja+sj"]
    assert all(0 < r["ssim"] <= 1 and r["sigma_ja_mean"] > 0 for r in table)
    assert (out / "compare" / "report.html").exists()
    res = subprocess.run(
        [sys.executable, "-m", "mrijac.cli", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "--overwrite" in res.stderr
    # the same seed gives the same numbers (the README's demo table is regenerated, not typed)
    res = subprocess.run(
        [sys.executable, "-m", "mrijac.cli", "demo", "--quick", "--out", str(out), "--overwrite"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((out / "compare" / "comparison.json").read_text()) == table


def test_help_and_config_errors_import_nothing_heavy():
    """`mrijac --help` and argument/config errors must not wait for torch/fastmri/sigpy to
    import (5–6 s): they run in a fresh interpreter without importing them."""
    code = (
        "import sys\n"
        "from mrijac.cli import main\n"
        "rc = main(['train', 'model.chans=0', 'data.root=x'])\n"
        "heavy = [m for m in ('torch', 'fastmri', 'sigpy', 'h5py', 'skimage', 'matplotlib') if m in sys.modules]\n"
        "print(rc, heavy)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "2 []", res.stdout + res.stderr
    assert "config key model.chans must be >= 1" in res.stderr
    res = subprocess.run([sys.executable, "-m", "mrijac.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "train" in res.stdout
