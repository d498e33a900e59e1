"""fastMRI-format writer and the model-aware slice dataset."""

import fastmri
import h5py
import numpy as np
import pytest
import torch
from fastmri.data import SliceDataset
from fastmri.data.transforms import center_crop

from mrijac.data import MaskConfig, MRISliceDataset, collate_mri, write_synthetic_dataset
from mrijac.data.h5format import write_volume
from mrijac.data.phantoms import phantom_volume
from mrijac.operators import batch_norm2


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = tmp_path_factory.mktemp("sc")
    write_synthetic_dataset(
        root,
        "knee",
        "singlecoil",
        {"train": 2, "val": 2, "test": 1},
        n_slices=3,
        kspace_shape=(48, 40),
        recon_size=(32, 32),
        progress=False,
    )
    return root


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    root = tmp_path_factory.mktemp("mc")
    write_synthetic_dataset(
        root,
        "brain",
        "multicoil",
        {"train": 1, "test": 1},
        n_slices=2,
        kspace_shape=(48, 40),
        recon_size=(32, 32),
        num_coils=4,
        progress=False,
    )
    return root


def test_plain_fastmri_slicedataset_reads_synthetic_files(single, multi):
    ds = SliceDataset(single / "train", "singlecoil")
    assert len(ds) == 6
    kspace, mask, target, attrs, fname, sl = ds[0]
    assert kspace.shape == (48, 40) and kspace.dtype == np.complex64
    assert target.shape == (32, 32) and target.dtype == np.float32
    assert attrs["encoding_size"] == (48, 40, 1) and attrs["recon_size"] == (32, 32, 1)
    assert attrs["padding_left"] == 0 and attrs["padding_right"] == 40
    assert {"max", "norm", "acquisition", "patient_id"} <= set(attrs)
    assert np.isclose(attrs["max"], max(ds[i][2].max() for i in range(3)))
    ds = SliceDataset(multi / "train", "multicoil")
    assert ds[0][0].shape == (4, 48, 40)
    ds = SliceDataset(single / "test", "singlecoil")
    kspace, mask, target, attrs, _, _ = ds[0]
    assert target is None and mask.shape == (40,)
    assert attrs["acceleration"] == 4 and attrs["num_low_frequency"] > 0
    assert np.all(kspace[:, ~mask.astype(bool)] == 0)


def test_targets_match_independent_fastmri_computation(single, multi):
    for root, key in ((single, "reconstruction_esc"), (multi, "reconstruction_rss")):
        f = sorted((root / "train").glob("*.h5"))[0]
        with h5py.File(f) as hf:
            k = torch.from_numpy(hf["kspace"][()])
            t = hf[key][()]
        im = fastmri.ifft2c(torch.view_as_real(k))
        mag = fastmri.complex_abs(im)
        if key == "reconstruction_rss":
            mag = fastmri.rss(mag, dim=1)
        assert np.allclose(center_crop(mag, (32, 32)).numpy(), t, atol=1e-5)


def test_phantoms_seeded_and_varied():
    a = phantom_volume("knee", 3, (32, 32), seed=1)
    assert np.array_equal(a, phantom_volume("knee", 3, (32, 32), seed=1))
    b = phantom_volume("knee", 3, (32, 32), seed=2)
    assert np.abs(np.abs(a) - np.abs(b)).mean() > 0.02
    assert np.abs(a[0] - a[1]).mean() > 0  # slices differ
    assert np.ptp(np.angle(a[np.abs(a) > 0.1])) > 0.5  # smooth, non-trivial phase
    c = phantom_volume("brain", 1, (32, 32), seed=1)
    assert 0 <= np.abs(c).min() and np.abs(c).max() <= 1.2
    with pytest.raises(ValueError, match="phantom kind"):
        phantom_volume("heart", 1, (8, 8), 0)


def test_singlecoil_samples_and_operator(single):
    ds = MRISliceDataset(single / "train", "singlecoil")
    s = ds[0]
    with h5py.File(single / "train" / s.fname) as hf:
        k = torch.from_numpy(hf["kspace"][s.slice])
    assert torch.allclose(s.y, k * s.mask)
    x = fastmri.ifft2c(torch.view_as_real(k))
    assert torch.allclose(s.operator()(torch.view_as_complex(x)[None])[0], s.y, atol=1e-5)
    assert s.target.shape == s.zero_filled.shape == (32, 32)
    assert 3 <= s.num_low_frequencies <= 4


def test_train_masks_random_val_masks_fixed(single):
    torch.manual_seed(0)
    tr = MRISliceDataset(single / "train", "singlecoil", mode="train")
    assert not torch.equal(tr[0].mask, tr[0].mask)
    va = MRISliceDataset(single / "val", "singlecoil", mode="val")
    m = [va[i].mask for i in range(len(va))]
    assert torch.equal(m[0], m[1]) and torch.equal(m[0], va[0].mask)  # per volume, stable
    assert not torch.equal(m[0], m[3])  # another volume, another mask
    te = MRISliceDataset(single / "test", "singlecoil", mode="test")
    with h5py.File(single / "test" / te[0].fname) as hf:
        assert torch.equal(te[0].mask[0], torch.from_numpy(hf["mask"][()]).float())
        assert te[0].num_low_frequencies == hf.attrs["num_low_frequency"]
    assert te[0].target is None


def test_crop_kspace_consistent_operator_and_target(single):
    ds = MRISliceDataset(
        single / "train", "singlecoil", crop_kspace=True, mask=MaskConfig("random", (1,), (0.5,))
    )  # fully sampled
    s = ds[1]
    assert s.y.shape == (32, 32) and s.mask.sum() == 32
    assert torch.allclose(s.zero_filled, s.target, atol=1e-5)
    b = collate_mri([ds[0], ds[1]])
    zf = b.A.adjoint(b.y).abs()
    assert torch.allclose(zf, b.target, atol=1e-5)
    te = MRISliceDataset(single / "test", "singlecoil", mode="test", crop_kspace=True)
    assert te[0].y.shape == (32, 40)  # readout cropped, phase-encode columns kept


def test_multicoil_espirit_operator_reproduces_kspace(multi, tmp_path):
    ds = MRISliceDataset(multi / "train", "multicoil", mask=MaskConfig("equispaced_fraction", (4,), (0.125,)))
    s = ds[0]
    assert s.sens_maps.shape == (4, 48, 40)
    assert (multi / "train_maps" / s.fname).exists()  # cached beside the data
    A = s.operator()
    # SENSE-combine the fully sampled coil images with the maps, re-project through A
    with h5py.File(multi / "train" / s.fname) as hf:
        k = torch.from_numpy(hf["kspace"][s.slice])
    full = type(A)(torch.ones(40), s.sens_maps[None])
    x = full.adjoint(k[None])
    rel = batch_norm2(A(x) - s.y[None]) / batch_norm2(s.y[None])
    assert rel.item() < 0.1
    assert s.zero_filled.shape == s.target.shape == (32, 32)
    b = collate_mri([ds[0], ds[1]])
    assert b.A.sens_maps.shape == (2, 4, 48, 40) and b.y.shape == (2, 4, 48, 40)


def test_multicoil_maps_travel_as_references_and_read_the_same(multi, tmp_path):
    """Loader workers hand on a MapRef; the batch's operator reads the maps where it is used —
    through a memory map of the cache file, or h5py when the file is chunked — and gets the
    store's maps exactly (cropped like the k-space with crop_kspace)."""
    from mrijac.data.coil_maps import CoilMapStore, MapRef

    mask = MaskConfig("equispaced_fraction", (4,), (0.125,))
    ds = MRISliceDataset(multi / "train", "multicoil", mask=mask, seed=0)
    store = CoilMapStore(multi / "train_maps")
    s0, s1 = ds[0], ds[1]
    assert isinstance(s0.maps, MapRef)
    want = [torch.from_numpy(store.get(multi / "train" / s.fname, s.slice, (4, 48, 40))) for s in (s0, s1)]
    assert torch.equal(s0.sens_maps, want[0])
    b = collate_mri([s0, s1])
    assert b.op is None and b.maps == (s0.maps, s1.maps)  # what a worker ships: no maps
    assert torch.equal(b.A.sens_maps, torch.stack(want)) and b.maps is None
    dl = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_mri)
    first = next(iter(dl))
    assert first.op is None and torch.equal(first.A.sens_maps, torch.stack(want))
    assert torch.equal(first.y, b.y)  # same k-space and masks through the workers (seeded)
    # chunked maps file: no memory map, the same values through h5py
    chunked = tmp_path / "maps"
    chunked.mkdir()
    src = store.path(s0.fname)
    with h5py.File(src) as hf, h5py.File(chunked / s0.fname, "w") as out:
        out.create_dataset("sens_maps", data=hf["sens_maps"][()], chunks=True, compression="gzip")
    ref = CoilMapStore(chunked, compute=False).ref(multi / "train" / s0.fname, s0.slice, (4, 48, 40))
    assert torch.equal(ref.load(), want[0])
    crop = MRISliceDataset(multi / "train", "multicoil", mask=mask, crop_kspace=True)[0]
    assert isinstance(crop.maps, MapRef) and crop.maps.box is not None
    assert torch.equal(crop.sens_maps, center_crop(want[0], crop.y.shape[-2:]))
    with pytest.raises(ValueError, match="do not match k-space"):
        store.ref(multi / "train" / s0.fname, 0, (4, 48, 44))
    with pytest.raises(ValueError, match="has maps for"):
        store.ref(multi / "train" / s0.fname, 99, (4, 48, 40))
    empty = tmp_path / "empty_maps"
    empty.mkdir()
    with h5py.File(empty / s0.fname, "w") as out:
        out.create_dataset("other", data=np.zeros(1))
    for call in (CoilMapStore(empty, compute=False).ref, CoilMapStore(empty, compute=False).get):
        with pytest.raises(ValueError, match="missing dataset 'sens_maps'"):
            call(multi / "train" / s0.fname, 0, (4, 48, 40))


def test_dataset_cache_and_sampling(single, tmp_path):
    cache = tmp_path / "cache.pkl"
    ds = MRISliceDataset(single / "train", "singlecoil", use_dataset_cache=True, dataset_cache_file=cache)
    assert cache.exists() and len(ds) == 6
    ds = MRISliceDataset(single / "train", "singlecoil", volume_sample_rate=0.5)
    assert len(ds) == 3


def test_dataset_cache_is_used_only_for_the_folder_it_was_made_from(single, tmp_path):
    import os
    import shutil

    root = tmp_path / "train"
    shutil.copytree(single / "train", root)
    cache = tmp_path / "c" / "cache.pkl"
    make = lambda mode="train": MRISliceDataset(  # noqa: E731
        root, "singlecoil", mode=mode, use_dataset_cache=True, dataset_cache_file=cache
    )
    first = make()
    again = make()
    assert not first.cache_hit and again.cache_hit
    assert [(r.fname, r.slice_ind) for r in again.raw_samples] == [(r.fname, r.slice_ind) for r in first.raw_samples]
    assert again[0].y.shape == first[0].y.shape
    assert not make("val").cache_hit  # another mode validates differently: scanned again
    shutil.copy(root / sorted(os.listdir(root))[0], root / "extra.h5")  # a new volume
    grown = make()
    assert not grown.cache_hit and len(grown) == len(first) + 3
    assert make().cache_hit
    (root / "extra.h5").unlink()
    shrunk = make()
    assert not shrunk.cache_hit and len(shrunk) == len(first)  # no stale entry of the removed file
    cache.write_bytes(cache.read_bytes()[:20])  # killed mid-write elsewhere: a broken file
    (cache.parent / (cache.name + ".sig")).write_bytes(b"junk")
    broken = make()
    assert not broken.cache_hit and len(broken) == len(first) and make().cache_hit


def test_sample_rates_seeded_and_whole_volumes(single):
    ds = lambda **kw: MRISliceDataset(single / "train", "singlecoil", **kw)  # noqa: E731
    ids = lambda d: sorted((r.fname.name, r.slice_ind) for r in d.raw_samples)  # noqa: E731
    a, b = ds(sample_rate=0.5, seed=1), ds(sample_rate=0.5, seed=1)
    assert len(a) == 3 and ids(a) == ids(b)
    assert len({tuple(ids(ds(sample_rate=0.5, seed=s))) for s in range(8)}) > 1  # the seed matters
    v = ds(volume_sample_rate=0.5, seed=3)
    vols = {r.fname.name for r in v.raw_samples}
    assert len(vols) == 1 and len(v) == 3  # one of two volumes, all its slices
    with pytest.raises(ValueError, match="not both"):
        ds(sample_rate=0.5, volume_sample_rate=0.5)
    with pytest.raises(ValueError, match="sample_rate must be in"):
        ds(sample_rate=0.0)


def test_collate_refuses_mixed_shapes(single, tmp_path):
    k = np.ones((1, 48, 36), np.complex64)
    write_volume(tmp_path / "a.h5", k, np.ones((1, 32, 32)), "singlecoil")
    a = MRISliceDataset(tmp_path, "singlecoil")[0]
    b = MRISliceDataset(single / "train", "singlecoil")[0]
    with pytest.raises(ValueError, match="different k-space shapes"):
        collate_mri([a, b])


# --- bad input ---------------------------------------------------------------------------
def _good(path, **kw):
    k = np.ones((2, 16, 12), np.complex64)
    return write_volume(path, k, np.ones((2, 8, 8)), "singlecoil", **kw)


def test_stray_files_skipped_with_warning(tmp_path):
    _good(tmp_path / "a.h5")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    with pytest.warns(UserWarning, match="notes.txt: not an .h5 file, skipped"):
        ds = MRISliceDataset(tmp_path, "singlecoil")
    assert len(ds) == 2


def test_truncated_file(tmp_path):
    p = _good(tmp_path / "a.h5")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=r"a\.h5: not a readable HDF5 file"):
        MRISliceDataset(tmp_path, "singlecoil")


@pytest.mark.parametrize(
    "what,match",
    [
        ("no_kspace", "missing dataset 'kspace'"),
        ("no_target", "missing dataset 'reconstruction_esc'"),
        ("real_kspace", "'kspace' must be complex"),
        ("wrong_dims", "singlecoil needs 3 dims"),
        ("target_shape", "'reconstruction_esc' has shape"),
        ("no_header", "missing dataset 'ismrmrd_header'"),
        ("no_namespace", "ISMRMRD namespace"),
    ],
)
def test_bad_files_named_in_errors(tmp_path, what, match):
    p = tmp_path / "bad.h5"
    with h5py.File(p, "w") as hf:
        hdr = (
            b"<ismrmrdHeader xmlns='http://www.ismrm.org/ISMRMRD'><encoding><encodedSpace>"
            b"<matrixSize><x>16</x><y>12</y><z>1</z></matrixSize></encodedSpace><reconSpace>"
            b"<matrixSize><x>8</x><y>8</y><z>1</z></matrixSize></reconSpace><encodingLimits>"
            b"<kspace_encoding_step_1><maximum>11</maximum><center>6</center>"
            b"</kspace_encoding_step_1></encodingLimits></encoding></ismrmrdHeader>"
        )
        if what == "no_namespace":
            hdr = hdr.replace(b" xmlns='http://www.ismrm.org/ISMRMRD'", b"")
        if what != "no_header":
            hf["ismrmrd_header"] = hdr
        k = np.ones((2, 16, 12), np.complex64)
        if what == "real_kspace":
            k = k.real
        if what == "wrong_dims":
            k = k[None]
        if what != "no_kspace":
            hf["kspace"] = k
        if what != "no_target":
            hf["reconstruction_esc"] = np.ones((3 if what == "target_shape" else 2, 8, 8), np.float32)
    with pytest.raises(ValueError, match=match) as e:
        MRISliceDataset(tmp_path, "singlecoil")
    assert "bad.h5" in str(e.value)


def test_nan_kspace_and_empty_and_missing_folders(tmp_path):
    with pytest.raises(ValueError, match="kspace contains NaN or Inf"):
        write_volume(tmp_path / "x.h5", np.full((1, 4, 4), np.nan, np.complex64), None, "singlecoil")
    p = _good(tmp_path / "a.h5")
    with h5py.File(p, "a") as hf:
        hf["kspace"][1, 0, 0] = np.nan
    ds = MRISliceDataset(tmp_path, "singlecoil")
    ds[0]
    with pytest.raises(ValueError, match=r"a\.h5 slice 1: kspace contains NaN or Inf"):
        ds[1]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no fastMRI .h5 slices found"):
        MRISliceDataset(empty, "singlecoil")
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        MRISliceDataset(tmp_path / "nope", "singlecoil")
    with pytest.raises(ValueError, match="test files need a 'mask'"):
        MRISliceDataset(tmp_path, "singlecoil", mode="test")


def test_mask_config_validation():
    with pytest.raises(ValueError, match="acceleration must be >= 1"):
        MaskConfig("random", (0.5,), (0.08,))
    with pytest.raises(ValueError, match="center_fraction"):
        MaskConfig("random", (4,), (0,))
    with pytest.raises(ValueError, match="same length"):
        MaskConfig("random", (4, 8), (0.08,))
    with pytest.raises(ValueError, match="mask type must be one of"):
        MaskConfig("radial")
    with pytest.raises(ValueError, match="center_fraction < 1/acceleration"):
        MaskConfig("equispaced_fraction", (4,), (0.25,))
    m = MaskConfig("poisson", (4,), (0.1,)).sample((32, 32), 3, 0)
    assert m.shape == (32, 32)
    m = MaskConfig("gaussian1d", (4,), (0.1,)).sample((32, 32), (1, 2), 0)
    assert m.shape == (1, 32) and m.sum() == 8


def test_coil_compression_keeps_the_operator_consistent(multi):
    from mrijac.data.coil_compression import compress, compression_matrix

    mask = MaskConfig("equispaced_fraction", (4,), (0.125,))
    full = MRISliceDataset(multi / "train", "multicoil", mode="val", mask=mask)[0]
    for n in (4, 2):
        s = MRISliceDataset(multi / "train", "multicoil", mode="val", mask=mask, coil_compression=n)[0]
        assert s.y.shape == (n, 48, 40) and s.sens_maps.shape == (n, 48, 40)
        # same image through both operators: compressed k-space = Uᴴ (original k-space)
        x = full.operator().random_input(batch=1)
        with h5py.File(multi / "train" / s.fname) as hf:
            k = torch.from_numpy(hf["kspace"][s.slice])
        U = compression_matrix(k, n)
        assert torch.allclose(s.operator()(x)[0], compress(full.operator()(x)[0], U), atol=1e-4)
        if n == 4:  # all coils kept: a unitary change of coil basis, norms unchanged
            assert torch.allclose(batch_norm2(s.operator()(x)), batch_norm2(full.operator()(x)), rtol=1e-4)
        kept = batch_norm2(s.y[None]) ** 2 / batch_norm2(full.y[None]) ** 2
        assert kept > (0.999 if n == 4 else 0.8)
    with pytest.raises(ValueError, match="exceeds its 4 coils"):
        MRISliceDataset(multi / "train", "multicoil", coil_compression=6)[0]
    with pytest.raises(ValueError, match="1 ≤ N ≤ 4"):
        compression_matrix(torch.ones(4, 2, 2, dtype=torch.complex64), 0)
