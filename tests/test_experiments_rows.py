"""The penalty rows of experiments/true_sigma.py and cost_default.py: every row is a valid
configuration, and it runs the power settings its label names (rows measured before the default
changed keep ``n_iter=1``; the current default's rows and the step rows set their own)."""

import re
import sys
from pathlib import Path

import pytest

from mrijac.config import load_config, resolve_method, resolve_power, validate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import _rows  # noqa: E402
import cost_default  # noqa: E402
import true_sigma  # noqa: E402

ALL = [(name, mod) for mod in (true_sigma, cost_default) for name in mod.ROWS]


def _config(overrides):
    cfg = load_config(None, ["reg.name=sja+sj", "reg.lambda_ja=0.1", "reg.lambda_j=0.1", *overrides])
    validate(cfg)
    return cfg


@pytest.mark.parametrize("name,mod", ALL, ids=[f"{m.__name__}:{n}" for n, m in ALL])
def test_every_row_is_a_valid_config_with_the_power_steps_its_label_names(name, mod):
    label, over = mod.ROWS[name]
    cfg = _config(over)
    n_iter, jvp = resolve_power(cfg)
    m = re.search(r"reg\.n_iter=(\d+)|\bn = (\d+)", label)
    if m:  # the label names its steps: the config runs those
        assert n_iter == int(m.group(1) or m.group(2)), (name, label, n_iter)
    if "reg.lanczos_jvp=fd" in label:
        assert jvp == "fd" and resolve_method(cfg) == "fd", (name, jvp)
    if "until 2026-11-28" in label:  # the former default, as it was measured
        assert (n_iter, jvp) == (1, "forward"), name


def test_pin_power_gives_the_former_default_only_to_rows_that_set_no_power_steps():
    rows = {"old": ("x", ["reg.samples=1"]), "own": ("y", ["reg.n_iter=4"])}
    _rows.pin_power(rows)
    assert rows["old"][1] == ["reg.samples=1", *_rows.FORMER_DEFAULT]
    assert rows["own"][1] == ["reg.n_iter=4", "reg.lanczos_jvp=forward"]


@pytest.mark.parametrize("name,n", [("lz2fd", 2), ("lz4fd", 4), ("lz5fd", 5)])
def test_step_rows_are_the_default_with_another_number_of_lanczos_steps(name, n):
    row = _config(true_sigma.ROWS[name][1])
    default = _config(true_sigma.ROWS["lz3fd"][1])
    assert resolve_power(row) == (n, "fd") and resolve_power(default) == (3, "fd")
    row.reg.n_iter = default.reg.n_iter
    assert row == default


def test_the_default_is_lz4fd_fkla_at_batch_1_and_lz3fd_fkla_above():
    """reg.n_iter=auto: a third Lanczos step where the batch is one sample (names.auto_n_iter)."""
    over = true_sigma.ROWS["lz4fd_fkla"][1]
    assert sum(o.startswith("reg.n_iter=") for o in over) == 1  # not the default's n_iter=3 as well
    assert resolve_power(_config(over)) == (4, "fd")
    for script in (true_sigma, cost_default):
        assert _config(script.ROWS["lz4fd_fkla"][1]) == _config([]) == _config(["data.batch_size=1"])
        for b in (2, 4):
            at_b = [f"data.batch_size={b}"]
            assert _config([*script.ROWS["lz3fd_fkla"][1], *at_b]) == _config(at_b)


def test_the_default_at_another_lambda_is_the_default():
    assert _config(true_sigma.ROWS["lz3fd_b"][1]) == _config(true_sigma.ROWS["lz3fd"][1])


def test_step_rows_hands_out_fresh_override_lists():
    """A script that edits one row's overrides (e.g. pin_power) leaves the shared table alone."""
    _rows.step_rows()["lz2fd"][1].append("reg.every=4")
    assert _rows.step_rows()["lz2fd"][1] == ["reg.n_iter=2", "reg.lanczos_jvp=fd"]


def test_the_expensive_reference_is_one_row_in_both_scripts():
    """The σ the reference reaches (true_sigma.py) and what it costs (cost_default.py) are of the
    same configuration: forward mode, 10 power iterations, the whole batch, both terms each step."""
    cfg = _config(true_sigma.ROWS["forward10x"][1])
    assert cfg == _config(cost_default.ROWS["forward10x"][1])
    assert (cfg.reg.method, cfg.reg.n_iter, cfg.reg.samples, cfg.reg.alternate) == ("forward", 10, 0, False)
    _rows.reference_row()[1].append("reg.every=4")
    assert "reg.every=4" not in _rows.reference_row()[1]


def test_pin_tracking_keeps_every_row_on_the_kinks_and_rank_it_was_measured_with():
    """Rows measured before 2026-11-29 ran with crossing kinks and the stored rank, the defaults
    then: the scripts pin them, so a rerun repeats the report; a row that sets either keeps it."""
    rows = {"old": ("x", ["reg.samples=1"]), "own": ("y", ["reg.fd_kinks=freeze", "reg.rank=lanczos"])}
    _rows.pin_tracking(rows)
    assert rows["old"][1] == ["reg.samples=1", *_rows.FORMER_TRACKING]
    assert rows["own"][1] == ["reg.fd_kinks=freeze", "reg.rank=lanczos"]
    for script in (true_sigma, cost_default):
        cfg = _config(script.ROWS["lz3fd"][1])
        assert (cfg.reg.fd_kinks, cfg.reg.rank) == ("cross", "stored")
    # the current default at batch 4 is the row lz3fd_fkla, in both scripts
    b4 = ["data.batch_size=4"]
    default = _config(b4)
    assert _config([*true_sigma.ROWS["lz3fd_fkla"][1], *b4]) == default
    assert _config([*cost_default.ROWS["lz3fd_fkla"][1], *b4]) == default
