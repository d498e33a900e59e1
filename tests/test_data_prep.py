"""Readers, converters and data_prep on the real data in ../shared/data."""

import gzip

import h5py
import numpy as np
import pytest
import torch
from fastmri.data import SliceDataset

from mrijac.cli import main
from mrijac.data import MaskConfig, MRISliceDataset
from mrijac.data.convert import convert_images, convert_kspace, emulated_single_coil, reorder_kspace
from mrijac.data.images import ImageFolderSR
from mrijac.data.mnist import MNISTCompressedSensing, read_idx
from mrijac.data.prep import images_to_dataset, subset
from mrijac.data.readers import read_array, read_cfl, read_image_stack, read_mat
from mrijac.operators import BlurDownsample, batch_norm2


def np_ifft2c(k):
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


@pytest.fixture(scope="module")
def brain(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("brain")
    k = read_cfl(shared_data / "mri/brain8ch/brain_clean.cfl")
    convert_kspace(k, root / "val" / "brain8ch.h5", "x,y,coil", "multicoil", (180, 180))
    return root, k


def test_real_brain_converts_and_rss_matches(brain):
    root, k = brain
    assert k.shape == (230, 180, 8)
    ds = SliceDataset(root / "val", "multicoil")  # plain fastmri, no patching
    kspace, _, target, attrs, _, _ = ds[0]
    assert kspace.shape == (8, 230, 180) and target.shape == (180, 180)
    # independent RSS straight from the BART array
    rss = np.sqrt((np.abs(np_ifft2c(np.moveaxis(k, -1, 0))) ** 2).sum(0))
    ref = rss[25:205, :]
    assert np.abs(target - ref).max() / ref.max() < 1e-5


def test_real_brain_espirit_operator_reproduces_kspace(brain):
    root, _ = brain
    ds = MRISliceDataset(root / "val", "multicoil", mode="val", mask=MaskConfig("equispaced_fraction", (4,), (0.16,)))
    s = ds[0]
    A = s.operator()
    with h5py.File(root / "val" / "brain8ch.h5") as hf:
        k = torch.from_numpy(hf["kspace"][0])
    full = type(A)(torch.ones(180), s.sens_maps[None])
    x = full.adjoint(k[None])  # SENSE coil combination of the fully sampled data
    rel_full = (batch_norm2(full(x) - k[None]) / batch_norm2(k[None])).item()
    rel = (batch_norm2(A(x) - s.y[None]) / batch_norm2(s.y[None])).item()
    assert rel_full < 0.05 and rel < 0.05


def test_emulated_single_coil_is_least_squares_fit_of_rss(brain):
    """ESC = the coil combination Σ w_c x_c closest to the RSS image (Tygert & Zbontar)."""
    _, k = brain
    ks = reorder_kspace(k, "x,y,coil")
    esc = emulated_single_coil(ks)
    assert esc.shape == (1, 230, 180)
    X = np_ifft2c(ks[0]).reshape(8, -1).T
    rss = np.sqrt((np.abs(X) ** 2).sum(1))
    e = np_ifft2c(esc[0]).reshape(-1)
    w, *_ = np.linalg.lstsq(X, e, rcond=None)  # recover the weights (ESC is in the span)
    assert np.linalg.norm(X @ w - e) / np.linalg.norm(e) < 1e-4
    res = np.linalg.norm(e - rss)
    rng = np.random.default_rng(0)
    for _ in range(5):  # any other combination fits the RSS image worse
        d = (rng.standard_normal(8) + 1j * rng.standard_normal(8)) * 1e-2 * np.abs(w).max()
        assert np.linalg.norm(X @ (w + d) - rss) > res


def test_reorder_kspace_errors():
    k = np.zeros((4, 5, 3), np.complex64)
    assert reorder_kspace(k, "x,y,coil").shape == (1, 3, 4, 5)
    assert reorder_kspace(k, "coil,y,x").shape == (1, 4, 3, 5)
    with pytest.raises(ValueError, match="names 2 axes but the k-space has 3"):
        reorder_kspace(k, "x,y")
    with pytest.raises(ValueError, match="axes must name x, y"):
        reorder_kspace(k, "x,x,coil")


def test_readers_round_trip(tmp_path, shared_data):
    from scipy.io import savemat

    a = (np.arange(12) + 1j).reshape(3, 4).astype(np.complex64)
    savemat(tmp_path / "v5.mat", {"kspace": a})
    assert np.array_equal(read_mat(tmp_path / "v5.mat"), a)
    # MATLAB v7.3: HDF5, transposed, complex as a (real, imag) compound
    comp = np.zeros((4, 3), dtype=[("real", "<f4"), ("imag", "<f4")])
    comp["real"], comp["imag"] = a.real.T, a.imag.T
    with h5py.File(tmp_path / "v73.mat", "w") as hf:
        hf["kspace"] = comp
        hf["other"] = np.zeros(2)
    assert np.array_equal(read_mat(tmp_path / "v73.mat", "kspace"), a)
    with pytest.raises(ValueError, match=r"holds \['kspace', 'other'\]; name the one to read with --key"):
        read_mat(tmp_path / "v73.mat")
    with pytest.raises(ValueError, match="no variable 'k'"):
        read_mat(tmp_path / "v73.mat", "k")
    np.save(tmp_path / "a.npy", a)
    assert np.array_equal(read_array(tmp_path / "a.npy"), a)
    (tmp_path / "a.raw").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown raw-data format '.raw'; supported: BART"):
        read_array(tmp_path / "a.raw")
    with pytest.raises(FileNotFoundError, match="nor b.raw.cfl"):
        read_array(tmp_path / "b.raw")
    (tmp_path / "x.dcm").write_bytes(b"x")
    with pytest.raises(ValueError, match="DICOM is not supported"):
        read_array(tmp_path / "x.dcm")
    chest = read_mat(shared_data / "mri/chest100/im-01.mat")
    assert chest.shape == (256, 256) and chest.dtype == np.float64
    # BART header/data mismatch
    (tmp_path / "b.hdr").write_text("# Dimensions\n4 4 1\n")
    np.zeros(10, np.complex64).tofile(tmp_path / "b.cfl")
    with pytest.raises(ValueError, match="holds 10 complex values"):
        read_cfl(tmp_path / "b.cfl")


def test_chest_images_to_volumes(shared_data, tmp_path):
    ims, names, notes = read_image_stack(shared_data / "mri/chest100", key="im_ori")
    assert ims.shape == (100, 256, 256) and ims.dtype == np.float64 and notes == []
    w = images_to_dataset(
        shared_data / "mri/chest100", tmp_path, per_volume=10, split=(0.6, 0.2, 0.2), key="im_ori", progress=False
    )
    assert [len(w[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    ds = SliceDataset(tmp_path / "train", "singlecoil")
    assert len(ds) == 60
    # the target is the (peak-normalised) real image, whatever the simulated phase
    f = w["train"][0]
    with h5py.File(f) as hf:
        t = hf["reconstruction_esc"][()]
        src = hf.attrs["sources"].split(",")
    v = int(f.stem.split("_")[-1])
    first = ims[v * 10]
    assert names[v * 10] in src  # the volume records where its images came from
    assert np.abs(t[0] - first / first.max()).max() < 1e-4
    assert any("smooth random phase added" in n for n in w["notes"])
    # test volumes in challenge format: masked k-space and mask, no target; targets apart
    t = w["test"][0]
    with h5py.File(t) as hf, h5py.File(tmp_path / "test_targets" / t.name) as full:
        m = hf["mask"][()]
        assert "reconstruction_esc" not in hf and "reconstruction_esc" in full
        assert 0 < m.mean() < 0.5 and hf.attrs["acceleration"] == 4
        assert np.array_equal(hf["kspace"][()], full["kspace"][()] * m)
    with pytest.raises(FileExistsError, match="already holds 12 volumes"):
        images_to_dataset(shared_data / "mri/chest100", tmp_path, key="im_ori", progress=False)
    mc = convert_images(ims[:2], tmp_path / "mc.h5", "multicoil", num_coils=4)
    with h5py.File(mc) as hf:
        assert hf["kspace"].shape == (2, 4, 256, 256)


def test_subset(tmp_path):
    for i in range(5):
        (tmp_path / "src").mkdir(exist_ok=True)
        (tmp_path / "src" / f"f{i}.h5").write_bytes(b"x")
    out = subset(tmp_path / "src", tmp_path / "dst", 2, seed=1)
    assert len(out) == 2 and all(p.is_symlink() for p in out)
    assert [p.name for p in out] == [p.name for p in subset(tmp_path / "src", tmp_path / "d2", 2, seed=1)]
    with pytest.raises(ValueError, match="volumes must be between 1 and 5"):
        subset(tmp_path / "src", tmp_path / "dst", 9)


def test_mnist_reader_real_test_set(shared_data, tmp_path):
    x = read_idx(shared_data / "mnist/t10k-images-idx3-ubyte.gz")
    lab = read_idx(shared_data / "mnist/t10k-labels-idx1-ubyte.gz")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(lab).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    ds = MNISTCompressedSensing(shared_data / "mnist", q=160, eps=0.05, indices=range(100))
    y, xx, _ = ds[3]
    assert torch.allclose(ds.A(xx[None])[0], ds.y_clean[3], atol=1e-5)
    assert abs((y - ds.y_clean[3]).norm().item() - 0.05) < 1e-6
    assert torch.equal(y, ds[3][0])  # same index, same noise
    with gzip.open(tmp_path / "bad.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x03" + b"\x00\x00\x00\x02" * 3 + b"\x00")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "bad.gz")
    (tmp_path / "x").write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "x")


def test_sr_image_folder(shared_data):
    ds = ImageFolderSR(shared_data / "sr/Set5", factor=2, patch=48, patches_per_image=4)
    y, x = ds[5]
    assert x.shape == (1, 48, 48) and y.shape == (1, 24, 24)
    assert torch.allclose(y, BlurDownsample(2, "gaussian")(x[None])[0])
    assert torch.equal(ds[5][1], x)
    ds.set_epoch(1)
    assert not torch.equal(ds[5][1], x)
    # flips (torchvision) act on the same crop: the flipped patch is one of the crop's 4 flips
    plain = ImageFolderSR(shared_data / "sr/Set5", factor=2, patch=48, patches_per_image=4, flips=False)
    ds.set_epoch(0)
    flipped = 0
    for i in range(len(ds)):
        a, b = plain[i][1], ds[i][1]
        cands = [a, a.flip(-1), a.flip(-2), a.flip(-1).flip(-2)]
        assert any(torch.equal(b, c) for c in cands)
        flipped += not torch.equal(a, b)
    assert flipped > 0
    full = ImageFolderSR(shared_data / "sr/Set14", factor=4, patch=None)
    y, x = full[0]
    assert x.shape[-1] % 4 == 0 and y.shape[-1] * 4 == x.shape[-1]
    with pytest.raises(ValueError, match="not a multiple of factor"):
        ImageFolderSR(shared_data / "sr/Set5", factor=4, patch=30)


def test_sr_noise_on_the_sphere(shared_data):
    """y = A x + n with ‖n‖₂ = ε exactly, fixed per (epoch, index), new each epoch."""
    eps = 3 / 255
    clean = ImageFolderSR(shared_data / "sr/Set5", factor=2, patch=48, patches_per_image=2)
    noisy = ImageFolderSR(shared_data / "sr/Set5", factor=2, patch=48, patches_per_image=2, eps=eps)
    y0, x0 = clean[3]
    y1, x1 = noisy[3]
    assert torch.equal(x0, x1)
    assert float((y1 - y0).norm()) == pytest.approx(eps, rel=1e-4)
    assert torch.equal(noisy[3][0], y1)
    noisy.set_epoch(1)
    clean.set_epoch(1)
    n2 = noisy[3][0] - clean[3][0]
    assert not torch.allclose(n2, y1 - y0)
    whole = ImageFolderSR(shared_data / "sr/Set5", factor=2, patch=None, eps=eps)
    assert float((whole[0][0] - ImageFolderSR(shared_data / "sr/Set5", factor=2, patch=None)[0][0]).norm()) == (
        pytest.approx(eps, rel=1e-4)
    )
    with pytest.raises(ValueError, match="eps"):
        ImageFolderSR(shared_data / "sr/Set5", factor=2, eps=-1.0)
    fixed = ImageFolderSR(shared_data / "sr/Set5", factor=2, patch=48, patches_per_image=2, eps=eps, resample=False)
    first = fixed[3]
    fixed.set_epoch(5)
    assert all(torch.equal(a, b) for a, b in zip(first, fixed[3]))  # a finite training sample


def test_cli_data_commands(tmp_path, capsys, shared_data):
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(tmp_path / "s"),
                "--train",
                "1",
                "--val",
                "0",
                "--test",
                "0",
                "--slices",
                "2",
                "--kspace",
                "24x20",
                "--recon",
                "16x16",
            ]
        )
        == 0
    )
    assert len(SliceDataset(tmp_path / "s" / "train", "singlecoil")) == 2
    rc = main(
        ["data", "convert", "kspace", str(tmp_path / "missing.npy"), "--axes", "x,y", "--out", str(tmp_path / "o.h5")]
    )
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("mrijac: error:") and "missing.npy" in last
    assert not (tmp_path / "o.h5").exists()
    with pytest.raises(SystemExit):
        main(["data", "synth", "--out", "x", "--kspace", "big"])


# --- converters must not be quietly wrong (real data where there is some) ---------------------
def write_cfl(stem, a):
    a = np.asarray(a, np.complex64)
    stem.with_suffix(".hdr").write_text("# Dimensions\n" + " ".join(map(str, a.shape + (1,) * (16 - a.ndim))) + "\n")
    a.ravel(order="F").tofile(stem.with_suffix(".cfl"))


def run_cli(capsys, *args):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err.strip().splitlines()[-1] if out.err.strip() else ""


def test_matlab_stack_slice_axis_and_degenerate_images(tmp_path, capsys):
    from scipy.io import savemat

    vol = (np.random.default_rng(0).random((64, 48, 15)) * 255).astype(np.uint8) + 1  # MATLAB (H, W, S)
    savemat(tmp_path / "stack.mat", {"vol": vol})
    st = read_image_stack(tmp_path / "stack.mat")
    assert st.images.shape == (15, 64, 48) and np.array_equal(st.images[3], vol[:, :, 3])
    assert "read as 15 slices of 64×48 (slice axis 2" in st.notes[0]
    assert read_image_stack(tmp_path / "stack.mat", axes="x,y,slice").images.shape == (15, 64, 48)
    # a wrong explicit axis order gives 16-px-wide images: refused, not trained on
    with pytest.raises(ValueError, match=r"images of 64×15 px \(a side < 16\)"):
        read_image_stack(tmp_path / "stack.mat", axes="x,slice,y")
    savemat(tmp_path / "cube.mat", {"vol": np.ones((40, 40, 40))})
    with pytest.raises(ValueError, match="cannot tell the slice axis of the stack"):
        read_image_stack(tmp_path / "cube.mat")
    bad = vol.astype(np.float64)
    bad[:, :, 4] = 0
    savemat(tmp_path / "zero.mat", {"vol": bad})
    with pytest.raises(ValueError, match="slice 4 is all zero"):
        read_image_stack(tmp_path / "zero.mat")
    bad[:, :, 4] = np.nan
    np.save(tmp_path / "nan.npy", np.moveaxis(bad, -1, 0))
    with pytest.raises(ValueError, match="nan.npy: slice 4 holds NaN"):
        read_image_stack(tmp_path / "nan.npy")
    rc, out, _ = run_cli(
        capsys, "data", "convert", "images", tmp_path / "stack.mat", "--out", tmp_path / "d", "--per-volume", "5"
    )
    assert rc == 0 and "read as 15 slices" in out
    assert len(SliceDataset(tmp_path / "d" / "train", "singlecoil")) == 10


def test_complex_images_keep_their_phase(shared_data, tmp_path):
    k = read_cfl(shared_data / "mri/brain8ch/brain_clean.cfl")
    img = np_ifft2c(np.moveaxis(k, -1, 0))[:2]  # two real complex coil images, real phase
    np.save(tmp_path / "c.npy", img)
    st = read_image_stack(tmp_path / "c.npy")
    assert st.images.dtype == np.complex128
    w = images_to_dataset(tmp_path / "c.npy", tmp_path / "out", per_volume=2, split=(1, 0, 0), progress=False)
    assert any("its own phase kept" in n for n in w["notes"])
    with h5py.File(w["train"][0]) as hf:
        assert hf.attrs["phase"] == "source"
        rec = np_ifft2c(hf["kspace"][0])
    src = img[0] / np.abs(img[0]).max()
    corr = np.abs(np.vdot(rec, src)) / (np.linalg.norm(rec) * np.linalg.norm(src))
    assert corr > 0.9999  # the k-space is the data's, phase included
    mag = convert_images(np.abs(img), tmp_path / "m.h5")
    with h5py.File(mag) as hf:
        assert hf.attrs["phase"] == "synthetic"


def test_bart_order_and_challenge_default(shared_data, tmp_path, capsys):
    k = read_cfl(shared_data / "mri/brain8ch/brain_clean.cfl")  # (230, 180, 8): coils in dim 2
    write_cfl(tmp_path / "ksp", k[None])  # BART's 1 × H × W × C layout
    rc, out, _ = run_cli(capsys, "data", "convert", "kspace", tmp_path / "ksp", "--out", tmp_path / "b.h5")
    assert rc == 0 and "8 coil(s): written as multicoil" in out
    with h5py.File(tmp_path / "b.h5") as hf:
        assert hf["kspace"].shape == (1, 8, 230, 180)
        assert np.allclose(hf["kspace"][0], np.moveaxis(k, -1, 0))
    # this file keeps coils in dimension 2, not BART's 3: the error says what to pass
    rc, _, err = run_cli(
        capsys, "data", "convert", "kspace", shared_data / "mri/brain8ch/brain_clean.cfl", "--out", tmp_path / "c.h5"
    )
    assert rc == 2 and "pass --axes x,y,coil" in err and not (tmp_path / "c.h5").exists()
    one = np.fft.fftshift(np.fft.fft2(np.abs(np_ifft2c(np.moveaxis(k, -1, 0))).sum(0), norm="ortho"))
    np.save(tmp_path / "one.npy", one)
    rc, out, _ = run_cli(
        capsys, "data", "convert", "kspace", tmp_path / "one.npy", "--axes", "x,y", "--out", tmp_path / "s.h5"
    )
    assert rc == 0 and "1 coil(s): written as singlecoil" in out
    with h5py.File(tmp_path / "s.h5") as hf:
        assert "reconstruction_esc" in hf and hf["kspace"].ndim == 3
    rc, _, err = run_cli(capsys, "data", "convert", "kspace", tmp_path / "one.npy", "--out", tmp_path / "t.h5")
    assert rc == 2 and "--axes is required" in err


def test_undersampled_kspace_is_detected(shared_data, tmp_path, capsys):
    import sigpy.mri

    k = np.moveaxis(read_cfl(shared_data / "mri/brain8ch/brain_clean.cfl"), -1, 0)  # (C, H, W)
    poisson = sigpy.mri.poisson(k.shape[1:], 6, seed=0).astype(bool)
    write_cfl(tmp_path / "pois", np.moveaxis(k * poisson, 0, -1)[None])
    rc, _, err = run_cli(capsys, "data", "convert", "kspace", tmp_path / "pois", "--out", tmp_path / "p.h5")
    assert rc == 2 and "non-Cartesian (2-D) pattern: the data is undersampled" in err
    assert not (tmp_path / "p.h5").exists()
    cols = np.zeros(180, bool)
    cols[::4] = True
    cols[82:98] = True
    np.save(tmp_path / "cart.npy", k * cols)
    args = ["data", "convert", "kspace", tmp_path / "cart.npy", "--axes", "coil,x,y", "--out", tmp_path / "c.h5"]
    rc, _, err = run_cli(capsys, *args)
    assert rc == 2 and f"{cols.sum()} of 180 phase-encode columns sampled" in err and "--undersampled" in err
    rc, out, _ = run_cli(capsys, *args, "--undersampled")
    assert rc == 0 and "test file with the inferred mask" in out
    with h5py.File(tmp_path / "c.h5") as hf:
        assert "reconstruction_rss" not in hf
        assert np.array_equal(hf["mask"][()], cols) and hf.attrs["num_low_frequency"] == 16
        assert hf.attrs["acceleration"] == round(180 / cols.sum())
    # a zero-padded border (as in fastMRI's own files) is fully sampled data
    pad = np.pad(k, ((0, 0), (0, 0), (10, 10)))
    np.save(tmp_path / "pad.npy", pad)
    rc, out, _ = run_cli(
        capsys, "data", "convert", "kspace", tmp_path / "pad.npy", "--axes", "coil,x,y", "--out", tmp_path / "f.h5"
    )
    assert rc == 0 and "zero-padded border" in out
    with h5py.File(tmp_path / "f.h5") as hf:
        assert "reconstruction_rss" in hf


def test_espirit_consistency_flags_fov_aliasing(shared_data, tmp_path):
    from mrijac.data.coil_maps import check_calibration
    from mrijac.data.prep import maps_for_folder

    k = read_cfl(shared_data / "mri/brain8ch/brain_clean.cfl")
    convert_kspace(k, tmp_path / "ok" / "full.h5", "x,y,coil", "multicoil")
    convert_kspace(k[:, ::2], tmp_path / "ok" / "aliased.h5", "x,y,coil", "multicoil")  # FOV/2: folded
    r = maps_for_folder(tmp_path / "ok", progress=False)
    assert r["consistency"]["full.h5"][0] < 0.02
    assert r["consistency"]["aliased.h5"][0] > 0.2
    assert len(r["warnings"]) == 1 and "aliased.h5: SENSE consistency" in r["warnings"][0]
    with h5py.File(tmp_path / "ok_maps" / "aliased.h5") as hf:
        assert hf.attrs["consistency"][0] > 0.2
    holes = np.moveaxis(k, -1, 0).copy()
    holes[:, :, 90] = 0
    with pytest.raises(ValueError, match="calibration region is not sampled"):
        check_calibration(holes, 24, "x")


def test_synth_into_a_dataset_folder_refuses_to_mix(tmp_path, capsys):
    args = ["data", "synth", "--out", tmp_path, "--train", "2", "--val", "0", "--test", "0", "--slices", "1"]
    assert run_cli(capsys, *args)[0] == 0
    rc, _, err = run_cli(capsys, *args[:5], "1", *args[6:])
    assert rc == 2 and "already holds 2 volumes" in err and "--overwrite" in err
    assert len(list((tmp_path / "train").iterdir())) == 2
    assert run_cli(capsys, *args[:5], "1", *args[6:], "--overwrite")[0] == 0
    assert len(list((tmp_path / "train").iterdir())) == 1
