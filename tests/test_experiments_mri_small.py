"""experiments/mri_small.py: the data it builds (split by image, augmentation, nesting) and its
run plan — the parts whose mistakes would silently corrupt the study (a test image in a
training set, unequal step counts)."""

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import mri_small  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
CHEST = SHARED / "mri" / "chest100"


def _target(f: Path) -> np.ndarray:
    with h5py.File(f, "r") as h:
        return h["reconstruction_esc"][0]


def _protocol(**over):
    p = mri_small.load_protocol(ROOT / "experiments" / "configs" / "mri_small.yaml", quick=True)
    p.update(over)
    return p


def test_protocols_load_and_expand():
    quick = _protocol()
    runs = mri_small.expand(quick)
    keys = {mri_small.run_key(r) for r in runs}
    assert len(keys) == len(runs)  # no run twice, even where blocks overlap
    assert {r["seed"] for r in runs} == set(range(quick["seeds"]))
    assert quick["seeds"] >= 3
    assert mri_small.p_sizes(quick) == [20, 40, 80]
    full = mri_small.load_protocol(ROOT / "experiments" / "configs" / "mri_small.yaml", quick=False)
    assert len(mri_small.expand(full)) == 2 * 2 * 3 * 6 * 3  # models × accelerations × sizes × strategies × seeds
    brain = mri_small.load_protocol(ROOT / "experiments" / "configs" / "mri_small_brain.yaml", quick=False)
    assert brain["challenge"] == "multicoil" and brain["strategies"] == full["strategies"]


def test_saved_protocol_compares_equal_for_resume():
    import json

    p = _protocol()
    assert 4 in p["accelerations"]  # integer keys, which JSON turns into strings
    saved = json.loads(json.dumps({"protocol": mri_small.as_json(p)}))["protocol"]
    assert saved == mri_small.as_json(p) and saved != p
    assert mri_small.as_json({**p, "steps": 1}) != saved


def test_lam_protocol_runs_a_subset_of_the_quick_one():
    quick = _protocol()
    lam = mri_small.load_protocol(ROOT / "experiments" / "configs" / "mri_small_lam.yaml", quick=True)
    assert lam["steps"] == 400  # what its committed results ran
    mine = ("blocks", "steps")
    assert {k: v for k, v in lam.items() if k not in mine} == {k: v for k, v in quick.items() if k not in mine}
    keys = {mri_small.run_key(r) for r in mri_small.expand(lam)}
    assert keys < {mri_small.run_key(r) for r in mri_small.expand(quick)} and len(keys) == 12


def test_strategy_lambdas_and_equal_steps(tmp_path):
    p = _protocol()
    for n, slices in ((20, 160), (80, 640)):
        (tmp_path / f"n{n}" / "train").mkdir(parents=True)
        for i in range(slices // 8):  # volumes of 8 slices
            with h5py.File(tmp_path / f"n{n}" / "train" / f"v{i}.h5", "w") as h:
                h.create_dataset("kspace", shape=(8, 4, 4), dtype=np.complex64)
    r = {"model": "unet", "acc": 4, "n": 20, "strategy": "sja+sj", "seed": 1}
    o20 = mri_small.overrides(p, r, tmp_path / "n20", 0.2)
    o80 = mri_small.overrides(p, {**r, "n": 80}, tmp_path / "n80", 0.2)
    ep = lambda o: int(next(s for s in o if s.startswith("optim.epochs=")).split("=")[1])  # noqa: E731
    bs = p["batch_size"]
    assert ep(o20) * 160 / bs == p["steps"] == ep(o80) * 640 / bs  # whole epochs, equal steps
    assert "reg.lambda_ja=0.1" in o20 and "reg.lambda_j=0.1" in o20  # total λ split in two
    sj = mri_small.overrides(p, {**r, "strategy": "sj"}, tmp_path / "n20", 0.2)
    assert "reg.lambda_j=0.2" in sj
    assert "data.center_fractions=[0.04]" in mri_small.overrides(p, {**r, "acc": 8}, tmp_path / "n20", 0.2)
    # none, wd and fja+fj (automatic λ) do not wait for the grid's λ; the spectral ones and the grid do
    free = {s for s in p["strategies"] if not mri_small.uses_lambda(p, {**r, "strategy": s})}
    assert free == {"none", "wd", "fja+fj"}
    assert mri_small.uses_lambda(p, {**r, "strategy": "none", "grid": True})
    o_none = mri_small.overrides(p, {**r, "strategy": "none"}, tmp_path / "n20", None)
    assert not any(s.startswith("reg.lambda_j") for s in o_none)
    order = sorted(mri_small.expand(p), key=lambda r: mri_small.expected_cost(r, p), reverse=True)
    assert order[0]["strategy"] == "fja+fj" and order[-1]["model"] == "dncnn"  # the longest runs first
    # a block's own step count (8×: 640) reaches its runs, and only them
    r8 = [q for q in mri_small.expand(p) if q["acc"] == 8]
    assert r8 and all(q["steps"] == 640 for q in r8)
    assert all("steps" not in q for q in mri_small.expand(p) if q["acc"] == 4)
    assert ep(mri_small.overrides(p, r8[0], tmp_path / "n20", 0.2)) * 160 / bs == 640


def test_choose_lambda_takes_the_lowest_validation_loss():
    runs = {
        str(lam): {"grid": True, "lam": lam, "val": {"val_l2": l2}} for lam, l2 in ((0.02, 3.0), (0.1, 2.5), (0.5, 2.9))
    }
    runs["x"] = {"lam": 9.0, "val": {"val_l2": 0.1}}  # not a grid run: ignored
    runs["0"] = {"grid": True, "lam": 0.0, "val": {"val_l2": 2.0}}  # the reference, never chosen
    lam, rows = mri_small.choose_lambda({}, runs)
    assert lam == 0.1 and [r["lam"] for r in rows] == [0.0, 0.02, 0.1, 0.5]
    grid = mri_small.grid_runs(_protocol(), 20)
    assert [(r["strategy"], r["lam"]) for r in grid][0] == ("none", 0.0)
    assert all(r["strategy"] == "sja+sj" and r["lam"] > 0 for r in grid[1:])
    assert len({mri_small.run_key(r) for r in grid}) == len(grid)
    assert all(mri_small.run_key(r) not in {mri_small.run_key(q) for q in mri_small.expand(_protocol())} for r in grid)


def test_downsample_is_block_mean_and_dihedral_distinct():
    a = np.arange(2 * 4 * 6, dtype=float).reshape(2, 4, 6)
    d = mri_small._downsample(a, 2)
    assert d.shape == (2, 2, 3) and d[1, 1, 2] == a[1, 2:4, 4:6].mean()
    x = np.random.default_rng(0).random((5, 5))
    v = mri_small._dihedral(x)
    assert len({u.tobytes() for u in v}) == 8 and np.array_equal(v[0], x)


@pytest.mark.skipif(not CHEST.is_dir(), reason="needs ../shared/data/mri/chest100")
def test_quick_data_is_split_by_image(tmp_path):
    p = _protocol(val=2, held_out=2, cross="", blocks=[{"models": ["unet"], "accelerations": [4], "sizes": [1, 3]}])
    f = mri_small.prepare_quick(p, SHARED, tmp_path)
    stem = lambda q: q.stem.rsplit("_", 1)[0]  # noqa: E731  (augmented copies: <image>_<k>)
    train3 = sorted(f["roots"][3].glob("train/*.h5"))
    assert len(train3) == 3 * 8 and len(list(f["roots"][1].glob("train/*.h5"))) == 8
    images3 = {stem(q) for q in train3}
    assert {stem(q) for q in f["roots"][1].glob("train/*.h5")} <= images3  # nested
    val = {q.stem for q in f["roots"][3].glob("val/*.h5")}
    test = {q.stem for q in f["test"].glob("*.h5")}
    assert len(val) == 2 and len(test) == 2
    assert not (images3 & val) and not (images3 & test) and not (val & test)  # split by image
    assert {q.stem for q in f["orig"][3].glob("*.h5")} == images3
    for img in images3:  # the 8 copies are the original's rotations/flips (targets up to their scale)
        t0 = _target(f["orig"][3] / f"{img}.h5")
        assert t0.shape == (128, 128)
        copies = [_target(q) for q in train3 if stem(q) == img]
        assert any(np.allclose(c, np.rot90(t0, 1), rtol=1e-4, atol=1e-6 * t0.max()) for c in copies)
        assert any(np.allclose(c, t0.T, rtol=1e-4, atol=1e-6 * t0.max()) for c in copies)
    assert f["cross"] is None


def test_full_data_nested_volumes_and_split(tmp_path):
    from mrijac.data import write_synthetic_dataset

    root = tmp_path / "fastmri"
    write_synthetic_dataset(
        root, "knee", "singlecoil", {"train": 5, "val": 4}, 2, (40, 32), (32, 32), seed=0, progress=False
    )
    p = _protocol(data="fastmri", val=1, held_out=2, cross="")
    p["blocks"] = [{"models": ["unet"], "accelerations": [4], "sizes": [2, 4], "strategies": ["none"]}]
    f = mri_small.prepare_full(p, root, tmp_path / "work")
    t2 = {q.name for q in f["roots"][2].glob("train/*.h5")}
    t4 = {q.name for q in f["roots"][4].glob("train/*.h5")}
    assert len(t2) == 2 and len(t4) == 4 and t2 < t4
    val = {q.name for q in f["roots"][4].glob("val/*.h5")}
    test = {q.name for q in f["test"].glob("*.h5")}
    assert len(val) == 1 and len(test) == 2 and not val & test
    assert mri_small.count_slices(f["roots"][4] / "train") == 4 * 2
    p["blocks"][0]["sizes"] = [6]
    with pytest.raises(ValueError, match="too few"):
        mri_small.prepare_full(p, root, tmp_path / "work2")
