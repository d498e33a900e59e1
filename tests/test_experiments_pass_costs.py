"""experiments/pass_costs.py runs end to end on a tiny U-Net and writes its table and JSON (its
timings are a benchmark's, not asserted here)."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import pass_costs  # noqa: E402


def test_pass_costs_writes_a_row_per_batch_with_every_part(tmp_path, monkeypatch):
    out = tmp_path / "pc"
    argv = ["pass_costs.py", "--size", "32", "--chans", "4", "--pools", "2", "--batches", "1,2", "--reps", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--threads", "1", "--out", str(out)])
    pass_costs.main()
    rows = json.loads(out.with_name("pc.json").read_text())["rows"]
    assert [r["batch"] for r in rows] == [1, 2]
    keys = {"plain", *pass_costs.PARTS, *(f"lanczos_{k}" for k in pass_costs.STEPS)}
    assert all(set(r) == keys | {"batch"} and all(r[k] > 0 for k in keys) for r in rows)
    table = [ln for ln in out.with_name("pc.md").read_text().splitlines() if ln.startswith("| ")]
    assert len(table) == 3 and "floor n_iter=4" in table[0]
    # the floor column is (plain + Lanczos k) / plain of the JSON's times
    r = rows[1]
    assert table[2].split(" | ")[-1].rstrip(" |") == f"{(r['plain'] + r['lanczos_3']) / r['plain']:.2f}"
