"""predict -> fastMRI submission files; scored by mrijac and by fastmri.evaluate alike."""

import argparse

import h5py
import numpy as np
import pytest
from fastmri import evaluate as fe

from mrijac.cli import main
from mrijac.config import load_config
from mrijac.evaluate.predict import evaluate_predictions, predict_folder
from mrijac.train.trainer import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_knee):
    root = tmp_path_factory.mktemp("pr")
    (root / "data").symlink_to(synthetic_knee)
    cfg = load_config(
        None,
        [
            f"data.root={root / 'data'}",
            "model.chans=4",
            "model.num_pool_layers=2",
            "optim.epochs=1",
            "train.progress=false",
            "reg.name=sja+sj",
            "data.batch_size=2",
        ],
    )
    train(cfg, root / "run")
    return root, root / "run" / "checkpoints" / "final.pt"


def test_predict_test_files_and_round_trip_with_fastmri_evaluate(trained, tmp_path):
    root, ck = trained
    out = tmp_path / "pred"
    files = predict_folder(ck, root / "data" / "test", out, progress=False)
    assert sorted(p.name for p in files) == sorted(p.name for p in (root / "data" / "test").iterdir())
    with h5py.File(files[0]) as hf:
        rec = hf["reconstruction"]
        assert rec.dtype == "float32" and rec.shape == (4, 32, 32)  # 4 slices per volume
    ours = evaluate_predictions(out, root / "data" / "test_targets", tmp_path / "ev")
    args = argparse.Namespace(
        target_path=root / "data" / "test_targets",
        predictions_path=out,
        challenge="singlecoil",
        acquisition=None,
        acceleration=None,
    )
    ref = fe.evaluate(args, "reconstruction_esc")
    val = lambda a: float(np.asarray(a).reshape(-1)[0])  # noqa: E731 (fastmri keeps arrays)
    # per-volume values are bit-equal to fastmri's (test_evaluate); runstats, which aggregates
    # them inside fastmri.evaluate, rounds at about float32 precision
    for m in ("ssim", "psnr", "nmse"):
        assert ours["aggregate"][m]["mean"] == pytest.approx(val(ref.means()[m.upper()]), rel=1e-6)
        # runstats accumulates online (Welford): equal to rounding
        assert ours["aggregate"][m]["std"] == pytest.approx(val(ref.stddevs()[m.upper()]), rel=1e-6)
    assert (tmp_path / "ev" / "report.html").exists()


def test_predict_cli_and_errors(trained, tmp_path, capsys):
    root, ck = trained
    assert (
        main(["predict", "--checkpoint", str(ck), "--data", str(root / "data" / "val"), "--out", str(tmp_path / "p")])
        == 0
    )
    assert (
        main(
            [
                "evaluate",
                "--predictions",
                str(tmp_path / "p"),
                "--targets",
                str(root / "data" / "val"),
                "--out",
                str(tmp_path / "e"),
            ]
        )
        == 0
    )
    assert "SSIM" in capsys.readouterr().out
    assert (
        main(
            [
                "evaluate",
                "--predictions",
                str(tmp_path / "p"),
                "--targets",
                str(root / "data" / "test_targets"),
                "--out",
                str(tmp_path / "e2"),
            ]
        )
        == 2
    )
    assert "no prediction for target" in capsys.readouterr().err
    assert (
        main(["predict", "--checkpoint", str(ck), "--data", str(root / "data" / "val"), "--out", str(tmp_path / "p")])
        == 2
    )
    assert "--overwrite" in capsys.readouterr().err


def test_reconstruct_numpy_kspace_in_one_call(trained):
    from mrijac.checkpoint import load_model
    from mrijac.data import MRISliceDataset, collate_mri
    from mrijac.evaluate.predict import reconstruct_kspace

    root, ck = trained
    ds = MRISliceDataset(root / "data" / "val", "singlecoil", mode="val", crop_kspace=True)
    b = collate_mri([ds[0], ds[1]])
    model, _, _ = load_model(ck)
    ref = model(b.y, b.A).detach().numpy()
    vol = reconstruct_kspace(ck, b.y.numpy(), b.A.mask[0, 0].numpy())
    assert vol.shape == (2, 32, 32) and np.allclose(vol, ref, atol=1e-5)
    one = reconstruct_kspace(model, b.y[0], b.A.mask[0, 0])
    assert np.allclose(one, ref[0], atol=1e-5)
    with pytest.raises(ValueError, match="expected"):
        reconstruct_kspace(model, np.zeros((2, 2, 4, 4), np.complex64), np.ones(4))
