"""Bad input, one table: every case is one clear ``mrijac: error:`` line naming the file, key or
option, exit status 2, and nothing half-written.  Each row is a real input a user can give."""

import shutil

import h5py
import numpy as np
import pytest
import torch

from mrijac.cli import main

TINY = [
    "data.batch_size=2",
    "data.num_workers=0",
    "model.chans=4",
    "model.num_pool_layers=2",
    "optim.epochs=1",
    "train.progress=false",
    "train.ref_slices=0",
    "train.ge_batches=1",
]


@pytest.fixture(scope="module")
def env(synthetic_knee, tmp_path_factory):
    """A tiny trained run on the session's synthetic data, a 48×48 dataset, bad files."""
    root = tmp_path_factory.mktemp("bad")
    run = root / "run"
    assert main(["train", f"data.root={synthetic_knee}", *TINY, "--out", str(run)]) == 0
    big = root / "d48"
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(big),
                "--train",
                "1",
                "--val",
                "1",
                "--test",
                "1",
                "--slices",
                "2",
                "--kspace",
                "56x52",
                "--recon",
                "48x48",
            ]
        )
        == 0
    )
    corrupt = root / "corrupt"
    corrupt.mkdir()
    val0 = sorted((synthetic_knee / "val").glob("*.h5"))[0]
    (corrupt / val0.name).write_bytes(val0.read_bytes()[:3000])
    nan = root / "nan"
    shutil.copytree(synthetic_knee / "train", nan / "train")
    shutil.copytree(synthetic_knee / "val", nan / "val")
    f = sorted((nan / "train").glob("*.h5"))[0]
    with h5py.File(f, "a") as hf:
        k = hf["kspace"][()]
        k[1, 3, 3] = np.nan
        hf["kspace"][...] = k
    preds = root / "nanpred"
    preds.mkdir()
    for t in (synthetic_knee / "val").glob("*.h5"):
        with h5py.File(t) as ht, h5py.File(preds / t.name, "w") as hp:
            hp["reconstruction"] = np.full(ht["reconstruction_esc"].shape, np.nan, np.float32)
    (root / "afile").write_text("not a folder")
    (root / "sci.yaml").write_text(f"data: {{root: {synthetic_knee}}}\noptim: {{lr: 1e-4, step_size: 0}}\n")
    return {"data": synthetic_knee, "run": run, "ck": run / "checkpoints" / "final.pt", "root": root, "nanfile": f}


# (id, argv with {placeholders}, regex the error line must match, path that must not exist afterwards)
CASES = [
    (
        "chans 0",
        "train data.root={data} model.chans=0 --out {root}/o1",
        r"config key model\.chans must be >= 1, got 0",
        "{root}/o1",
    ),
    (
        "step_size 0 (YAML, with 1e-4 read as a number)",
        "train --config {root}/sci.yaml --out {root}/o2",
        r"config key optim\.step_size must be >= 1, got 0",
        "{root}/o2",
    ),
    (
        "unknown key",
        "train data.root={data} model.chanz=3 --out {root}/o3",
        r"unknown config key 'model\.chanz'",
        "{root}/o3",
    ),
    (
        "residual where there is no zero-filled image (varnet)",
        "train data.root={data} model.name=varnet model.residual=true --out {root}/o_res",
        r"config key model\.residual=true applies to the MRI U-Net and DnCNN.*model\.name=varnet",
        "{root}/o_res",
    ),
    ("out is a file", "train data.root={data} --out {root}/afile", r"afile: --out names an existing file", None),
    (
        "out under a file",
        "train data.root={data} " + " ".join(TINY) + " --out {root}/afile/run",
        r"afile/run: a file is in the way of this folder",
        None,
    ),
    (
        "resume without checkpoint",
        "train --out {root}/never --resume",
        r"never/config\.yaml: no config in the run folder",
        "{root}/never",
    ),
    (
        "NaN k-space in a loader worker",
        "train data.root={root}/nan data.num_workers=1 " + " ".join(TINY[:1] + TINY[2:]) + " --out {root}/o4",
        r"nan/train/.*\.h5 slice 1: kspace contains NaN or Inf",
        None,
    ),
    (
        "corrupt .h5 in predict",
        "predict --checkpoint {ck} --data {root}/corrupt --out {root}/p1",
        r"corrupt/.*\.h5: not a readable HDF5 file \(truncated or corrupt\?\)",
        "{root}/p1",
    ),
    (
        "corrupt .h5 as prediction",
        "evaluate --predictions {root}/corrupt --targets {data}/val --out {root}/e1",
        r"corrupt/.*\.h5: (not a readable HDF5 file|no prediction for target)",
        "{root}/e1",
    ),
    (
        "NaN predictions",
        "evaluate --predictions {root}/nanpred --targets {data}/val --out {root}/e2",
        r"nanpred/.*\.h5: 'reconstruction' holds \d+ non-finite values",
        "{root}/e2",
    ),
    (
        "32×32 checkpoint on 48×48 data (evaluate)",
        "evaluate --checkpoint {ck} --data {root}/d48/val --out {root}/e3",
        r"reconstruction size 48×48, but the checkpoint .* reconstructs 32×32",
        "{root}/e3",
    ),
    (
        "32×32 checkpoint on 48×48 data (predict)",
        "predict --checkpoint {ck} --data {root}/d48/test --out {root}/p2",
        r"reconstruction size 48×48, but the checkpoint .* reconstructs 32×32",
        "{root}/p2",
    ),
    (
        "predict into a file's place",
        "predict --checkpoint {ck} --data {data}/test --out {root}/afile/p",
        r"afile: exists as a file where a folder is needed",
        None,
    ),
    ("synth under a file", "data synth --out {root}/afile/s", r"afile/s/train: a file is in the way", None),
    (
        "missing checkpoint",
        "evaluate --checkpoint {root}/x.pt --data {data}/val --out {root}/e4",
        r"x\.pt: checkpoint not found",
        "{root}/e4",
    ),
    (
        "bad lambdas",
        "sweep --config {root}/sci.yaml --lambdas a,b --out {root}/s1",
        r"--lambdas must be comma-separated numbers",
        "{root}/s1",
    ),
]


@pytest.mark.parametrize("argv,pattern,absent", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(env, capsys, argv, pattern, absent):
    fill = {k: str(v) for k, v in env.items()}
    rc = main([a.format(**fill) for a in argv.split()])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert err[-1].startswith("mrijac: error: ")
    import re

    assert re.search(pattern, err[-1]), err[-1]
    assert "Traceback" not in "\n".join(err)
    if absent:
        name = absent.format(**fill).split("/")[-1]
        assert not [p for p in env["root"].iterdir() if name in p.name], "something was written"


def test_disk_full_during_checkpoint_keeps_the_old_one(env, tmp_path, capsys, monkeypatch):
    """torch reports a full disk as '[enforce fail at inline_container.cc:…]': the user gets a
    line that names the checkpoint and the free space; the previous checkpoint stays intact."""
    run = tmp_path / "run"
    shutil.copytree(env["run"], run)
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4416 vs 4304")

    monkeypatch.setattr(torch, "save", full)
    rc = main(["train", "--out", str(run), "--resume", "optim.epochs=2"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and "last.pt: could not write the checkpoint" in err and "disk full" in err
    assert last.read_bytes() == before
    assert not [p for p in (run / "checkpoints").iterdir() if ".tmp" in p.name]


def test_permission_denied_is_one_line(env, tmp_path, capsys, monkeypatch):
    import mrijac.evaluate.report as report

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro"))

    monkeypatch.setattr(report.tempfile, "mkdtemp", denied)
    rc = main(
        [
            "predict",
            "--checkpoint",
            str(env["ck"]),
            "--data",
            str(env["data"] / "val"),
            "--out",
            str(tmp_path / "ro" / "p"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and err == f"mrijac: error: {tmp_path / 'ro'}: permission denied (choose a writable location)"
