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
    with pytest.raises(ValueError, match="name 2 axes but the k-space has 3"):
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
    with pytest.raises(ValueError, match=r"holds \['kspace', 'other'\]; say which one"):
        read_mat(tmp_path / "v73.mat")
    with pytest.raises(ValueError, match="no variable 'k'"):
        read_mat(tmp_path / "v73.mat", "k")
    np.save(tmp_path / "a.npy", a)
    assert np.array_equal(read_array(tmp_path / "a.npy"), a)
    with pytest.raises(ValueError, match="unknown raw-data format '.raw'"):
        read_array(tmp_path / "a.raw")
    chest = read_mat(shared_data / "mri/chest100/im-01.mat")
    assert chest.shape == (256, 256) and chest.dtype == np.float64
    # BART header/data mismatch
    (tmp_path / "b.hdr").write_text("# Dimensions\n4 4 1\n")
    np.zeros(10, np.complex64).tofile(tmp_path / "b.cfl")
    with pytest.raises(ValueError, match="holds 10 complex values"):
        read_cfl(tmp_path / "b.cfl")


def test_chest_images_to_volumes(shared_data, tmp_path):
    ims, names = read_image_stack(shared_data / "mri/chest100", key="im_ori")
    assert ims.shape == (100, 256, 256)
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
    full = ImageFolderSR(shared_data / "sr/Set14", factor=4, patch=None)
    y, x = full[0]
    assert x.shape[-1] % 4 == 0 and y.shape[-1] * 4 == x.shape[-1]
    with pytest.raises(ValueError, match="not a multiple of factor"):
        ImageFolderSR(shared_data / "sr/Set5", factor=4, patch=30)


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
