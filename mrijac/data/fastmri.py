"""fastMRI slices as model-aware training samples ``(y, A, target)``.

:class:`MRISliceDataset` is ``fastmri.data.SliceDataset`` (same arguments: ``root``,
``challenge``, ``sample_rate``/``volume_sample_rate``, the dataset cache, ``num_cols``,
``raw_sample_filter``) with a validating file scan and a transform that returns an
:class:`MRISample`: the undersampled k-space ``y``, the mask, the coil maps, the target,
the zero-filled image and the slice's identity.  :func:`collate_mri` batches samples and their
operators into an :class:`MRIBatch` whose ``A`` is a batched ``SingleCoilMRI``/``MultiCoilMRI``.

fastMRI conventions: a random mask per sample in training; a fixed mask per volume (seeded from
the file name) in validation; the file's own ``mask`` for test/challenge files.
"""

from __future__ import annotations

import logging
import random
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from fastmri.data import SliceDataset
from fastmri.data.transforms import center_crop

from ..operators.masks import COLUMN_MASKS, MASK_TYPES, check_mask_params, make_mask
from ..operators.mri import MultiCoilMRI, SingleCoilMRI, fft2c, ifft2c
from . import dataset_cache
from .coil_compression import compress, compression_matrix
from .coil_maps import CoilMapStore, MapRef, default_maps_dir
from .h5format import TARGET_KEYS, read_header

H5_SUFFIXES = (".h5", ".hdf5", ".hdf")
MODES = ("train", "val", "test")
log = logging.getLogger(__name__)


@dataclass
class MaskConfig:
    """Undersampling: mask ``type`` (see :data:`MASK_TYPES`), ``accelerations`` and
    ``center_fractions`` (one pair drawn per sample, as fastmri's mask functions do)."""

    type: str = "random"
    accelerations: tuple = (4,)
    center_fractions: tuple = (0.08,)

    def __post_init__(self):
        if self.type not in MASK_TYPES:
            raise ValueError(f"mask type must be one of {MASK_TYPES}, got {self.type!r}")
        self.accelerations = tuple(np.atleast_1d(self.accelerations).tolist())
        self.center_fractions = tuple(np.atleast_1d(self.center_fractions).tolist())
        if len(self.accelerations) != len(self.center_fractions):
            raise ValueError(
                "mask accelerations and center_fractions must have the same length, "
                f"got {self.accelerations} and {self.center_fractions}"
            )
        for a, c in zip(self.accelerations, self.center_fractions):
            check_mask_params(a, c)
            if self.type.startswith(("equispaced", "magic")) and c * a >= 1:
                raise ValueError(
                    f"{self.type} masks need center_fraction < 1/acceleration, got {c} with acceleration {a}"
                )

    def sample(self, shape: tuple[int, int], seed, choice: int) -> torch.Tensor:
        """Mask ``(1, W)`` (column masks) or ``(H, W)`` for one slice."""
        a, c = self.accelerations[choice], self.center_fractions[choice]
        if self.type in COLUMN_MASKS and self.type != "gaussian1d":
            from fastmri.data.subsample import create_mask_for_mask_type

            func = create_mask_for_mask_type(self.type, [c], [int(a)])
            m, _ = func((1, shape[0], shape[1], 2), seed=seed)
            return m.reshape(1, shape[1]).float()
        iseed = seed if isinstance(seed, int) or seed is None else zlib.crc32(bytes(seed))
        m = make_mask(self.type, shape, a, c, seed=iseed)
        return m.reshape(1, -1) if m.dim() == 1 else m


@dataclass
class MRISample:
    """One slice.  Shapes: ``y`` ``(H, W)`` or ``(C, H, W)`` complex64 (masked k-space);
    ``mask`` ``(1|H, W)`` float32; ``sens_maps`` ``(C, H, W)`` complex64 or None;
    ``target`` ``(h, w)`` float32 (None for test files); ``crop`` = ``(h, w)``.
    ``zero_filled`` (fastMRI's baseline) is computed from ``y`` on demand, so the loader
    neither spends an FFT on it nor ships it between processes.  ``maps`` holds the coil maps
    or a :class:`~mrijac.data.coil_maps.MapRef` to them (read when ``sens_maps`` is asked
    for), so loader workers do not ship them."""

    y: torch.Tensor
    mask: torch.Tensor
    maps: torch.Tensor | MapRef | None
    target: torch.Tensor | None
    crop: tuple
    max: float
    fname: str
    slice: int
    num_low_frequencies: int

    @property
    def sens_maps(self) -> torch.Tensor | None:
        return self.maps.load() if isinstance(self.maps, MapRef) else self.maps

    @property
    def zero_filled(self) -> torch.Tensor:
        """``(h, w)``: ``|ifft2c(y)|`` (single-coil) or the RSS of the coil images, cropped."""
        return zero_filled(self.y[None], self.maps is not None, self.crop)[0]

    def operator(self):
        """This sample's forward operator (batch of one)."""
        if self.sens_maps is None:
            return SingleCoilMRI(self.mask[None], tuple(self.y.shape[-2:]))
        return MultiCoilMRI(self.mask[None], self.sens_maps[None])


@dataclass
class MRIBatch:
    """A batch: ``y`` ``(B, …)``, ``A`` batched operator, ``target`` ``(B, h, w)``,
    ``max`` ``(B,)``, ``fname`` list, ``slice`` ``(B,)``, ``crop`` ``(h, w)``;
    ``zero_filled`` ``(B, h, w)`` is computed on the batch's device when asked for.

    Multi-coil batches made by loader workers carry ``maps`` (:class:`MapRef` s) and ``mask``
    instead of the operator (``op=None``); ``A`` builds it, reading the maps, in the process
    that asks — the training process — so the maps never pass between processes."""

    y: torch.Tensor
    op: object
    target: torch.Tensor | None
    max: torch.Tensor
    fname: list = field(default_factory=list)
    slice: torch.Tensor | None = None
    crop: tuple = ()
    maps: tuple | None = None
    mask: torch.Tensor | None = None

    @property
    def A(self):
        if self.op is None:
            first = self.maps[0].load()
            if len(self.maps) == 1:  # the memory map itself: nothing copied
                maps = first[None]
            else:
                maps = first.new_empty((len(self.maps),) + tuple(first.shape))
                maps[0] = first
                for i, r in enumerate(self.maps[1:], 1):
                    r.load(out=maps[i])
            self.op = MultiCoilMRI(self.mask, maps)
            self.maps = self.mask = None
        return self.op

    @property
    def zero_filled(self) -> torch.Tensor:
        return zero_filled(self.y, self.maps is not None or isinstance(self.op, MultiCoilMRI), self.crop)

    def to(self, device, non_blocking: bool = False) -> "MRIBatch":
        mv = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa
        return MRIBatch(
            mv(self.y), self.A.to(device), mv(self.target), mv(self.max), self.fname, mv(self.slice), self.crop
        )

    def __len__(self):
        return self.y.shape[0]


def collate_mri(samples: list[MRISample]) -> MRIBatch:
    """Stack samples (same k-space and target sizes) and their operators."""
    shapes = {tuple(s.y.shape) for s in samples}
    if len(shapes) > 1:
        raise ValueError(
            f"cannot batch slices of different k-space shapes {sorted(shapes)}: use batch_size 1 or crop_kspace=True"
        )
    H = max(s.mask.shape[0] for s in samples)
    mask = _stack([s.mask.expand(H, s.mask.shape[-1]) for s in samples])
    refs = None
    if samples[0].maps is None:
        A = SingleCoilMRI(mask, tuple(samples[0].y.shape[-2:]))
    elif all(isinstance(s.maps, MapRef) for s in samples):  # read where the batch is used
        A, refs = None, tuple(s.maps for s in samples)
    else:
        A = MultiCoilMRI(mask, torch.stack([s.sens_maps for s in samples]))
    target = None if samples[0].target is None else _stack([s.target for s in samples])
    return MRIBatch(
        _stack([s.y for s in samples]),
        A,
        target,
        torch.tensor([s.max for s in samples], dtype=torch.float32),
        [s.fname for s in samples],
        torch.tensor([s.slice for s in samples]),
        samples[0].crop,
        refs,
        mask if refs else None,
    )


def _stack(ts: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack``, written straight into shared memory in a loader worker (as torch's
    ``default_collate``: one copy instead of two), a view for one sample in the main process."""
    if len(ts) == 1 and torch.utils.data.get_worker_info() is None:
        return ts[0][None]
    return torch.utils.data.default_collate(ts)


def zero_filled(y: torch.Tensor, multicoil: bool, crop: tuple) -> torch.Tensor:
    """fastMRI's zero-filled baseline ``(B, h, w)`` from masked k-space ``y``."""
    zf = ifft2c(y).abs()
    if multicoil:
        zf = zf.pow(2).sum(1).sqrt()
    return center_crop(zf, crop) if crop else zf


class MRISliceTransform:
    """fastMRI raw slice -> :class:`MRISample`.

    Args:
        challenge: ``"singlecoil"`` or ``"multicoil"``.
        mask: :class:`MaskConfig` (not used in ``test`` mode, where the file's mask is used).
        mode: ``"train"`` (a new random mask per sample, from torch's RNG, so DataLoader
            workers and seeds behave), ``"val"`` (one mask per volume seeded from the file
            name, as fastmri does) or ``"test"`` (the file's ``mask``).
        crop_kspace: crop the image to the reconstruction size and go back to k-space before
            undersampling (the usual speed-up for 640×368 knee data); test files keep their
            phase-encode columns and are cropped along the readout only.
        coil_maps: a :class:`CoilMapStore` (multi-coil).
        noise_sigma: extra complex Gaussian noise on the sampled k-space (E|n|² = σ²).
        coil_compression: multi-coil only — SVD-compress to this many virtual coils (k-space
            and coil maps alike, so the operator stays consistent); 0 or None: off.
    """

    def __init__(
        self,
        challenge: str,
        mask: MaskConfig | None = None,
        mode: str = "train",
        crop_kspace: bool = False,
        coil_maps: CoilMapStore | None = None,
        noise_sigma: float = 0.0,
        coil_compression: int | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if challenge == "multicoil" and coil_maps is None:
            raise ValueError("multi-coil samples need coil_maps (a CoilMapStore)")
        self.challenge, self.mode, self.crop = challenge, mode, crop_kspace
        self.mask = mask or MaskConfig()
        self.coil_maps, self.noise_sigma = coil_maps, float(noise_sigma)
        self.coil_compression = int(coil_compression or 0)
        self.rng = None  # training randomness; set per sample by MRISliceDataset (else torch's global RNG)
        self.scratch_input = False  # MRISliceDataset: kspace is a fresh read, masked in place
        if self.coil_compression < 0:
            raise ValueError(f"coil_compression must be >= 0, got {coil_compression}")

    def __call__(self, kspace, mask, target, attrs, fname, slice_num) -> MRISample:
        path = attrs.get("_path", fname)
        k = torch.from_numpy(np.ascontiguousarray(kspace)).to(torch.complex64)
        h, w = attrs["recon_size"][0], attrs["recon_size"][1]
        maps = None
        if self.challenge == "multicoil" and self.coil_compression:  # the maps' values are needed here
            maps = torch.from_numpy(self.coil_maps.get(path, slice_num, tuple(kspace.shape)))
        elif self.challenge == "multicoil":  # a reference: read in the training process
            maps = self.coil_maps.ref(path, slice_num, tuple(kspace.shape))
        if maps is not None and self.coil_compression:
            if self.coil_compression > k.shape[0]:
                raise ValueError(f"{path}: coil_compression {self.coil_compression} exceeds its {k.shape[0]} coils")
            U = compression_matrix(k, self.coil_compression)  # test files: sampled lines only
            k, maps = compress(k, U), compress(maps, U)
        H, W = k.shape[-2:]
        if self.mode == "test":
            if mask is None:
                raise ValueError(f"{path}: test mode needs the file's 'mask' dataset")
            m = torch.from_numpy(np.asarray(mask)).float().reshape(1, W)
            num_low = int(attrs.get("num_low_frequency", 0))
            if self.crop and H > h:  # readout-only crop keeps the sampled columns exact
                k = fft2c(center_crop(ifft2c(k), (h, W)))
                maps = _crop_maps(maps, (H, W), (h, W))
        else:
            if self.crop:
                cw = min(w, W)
                k = fft2c(center_crop(ifft2c(k), (min(h, H), cw)))
                maps = _crop_maps(maps, (H, W), (min(h, H), cw))
            H, W = k.shape[-2:]
            choice, seed = 0, None
            if self.mode == "train":
                seed = int(torch.randint(0, 2**31 - 1, (), generator=self.rng).item())
                if len(self.mask.accelerations) > 1:
                    choice = int(torch.randint(0, len(self.mask.accelerations), (), generator=self.rng).item())
            else:
                seed = tuple(map(ord, fname))
                choice = zlib.crc32(fname.encode()) % len(self.mask.accelerations)
            m = self.mask.sample((H, W), seed, choice)
            if not self.crop:  # columns fastMRI never acquired stay out of the mask
                pl, pr = attrs.get("padding_left", 0), attrs.get("padding_right", W)
                if 0 < pl or pr < W:
                    m[..., : max(pl, 0)] = 0
                    m[..., pr:] = 0
            num_low = int(round(W * self.mask.center_fractions[choice]))
        mm = m if maps is None else m[None]
        y = k.mul_(mm) if self.scratch_input and k.dtype == torch.complex64 and k.is_contiguous() else k * mm
        if self.noise_sigma > 0:
            gen = self.rng
            if self.mode != "train":  # fixed noise per slice, like the fixed mask per volume
                gen = torch.Generator().manual_seed(zlib.crc32(f"{fname}:{slice_num}".encode()))
            g = torch.randn(y.shape + (2,), generator=gen) * (self.noise_sigma / 2**0.5)
            y = y + torch.view_as_complex(g) * (m if maps is None else m[None])
        crop = (min(h, y.shape[-2]), min(w, y.shape[-1]))
        tgt = None
        if target is not None:
            tgt = torch.from_numpy(np.asarray(target, dtype=np.float32))
            if tuple(tgt.shape) != crop:
                tgt = center_crop(tgt, crop)
        mx = float(attrs["max"]) if "max" in attrs else float(tgt.max()) if tgt is not None else float("nan")
        # NaN·0 is NaN: a non-finite value anywhere in the slice's k-space reaches the sum of y
        # (one pass, no temporary; an overflowing sum is told apart by the full test)
        if not torch.isfinite(y.sum()) and not bool(torch.isfinite(y).all()):
            raise ValueError(f"{path} slice {slice_num}: kspace contains NaN or Inf")
        return MRISample(y.contiguous(), m, maps, tgt, crop, mx, fname, int(slice_num), num_low)


def _crop_maps(maps, shape: tuple, size: tuple):
    """Centre crop of coil maps ``(C, H, W)`` (or of a :class:`MapRef` to them) to ``size``."""
    if maps is None or tuple(shape) == tuple(size):
        return maps
    return maps.cropped(shape, size) if isinstance(maps, MapRef) else center_crop(maps, size)


def _subsample(raw_samples: list, sample_rate, volume_sample_rate, seed) -> list:
    """fastmri's slice or volume sampling (the same fractions and rounding), drawn from
    ``random.Random(seed)`` (Python's global ``random`` when ``seed`` is None), with a set
    lookup for the volumes (fastmri's list lookup is quadratic in the number of volumes)."""
    rng = random if seed is None else random.Random(int(seed))
    if sample_rate is not None and float(sample_rate) < 1:
        raw_samples = list(raw_samples)
        rng.shuffle(raw_samples)
        return raw_samples[: round(len(raw_samples) * float(sample_rate))]
    if volume_sample_rate is not None and float(volume_sample_rate) < 1:
        vols = sorted({r[0].stem for r in raw_samples})
        rng.shuffle(vols)
        keep = set(vols[: round(len(vols) * float(volume_sample_rate))])
        return [r for r in raw_samples if r[0].stem in keep]
    return raw_samples


class MRISliceDataset(SliceDataset):
    """``fastmri.data.SliceDataset`` returning :class:`MRISample` s, with validated files.

    Args:
        root: folder of fastMRI ``.h5`` volumes.  Entries that are not HDF5 files by suffix
            are skipped with a warning; broken HDF5 files raise ``ValueError`` naming them.
        challenge: ``"singlecoil"`` or ``"multicoil"``.
        mode, mask, crop_kspace, noise_sigma, coil_compression: see
            :class:`MRISliceTransform`.
        maps_dir: where multi-coil ESPIRiT maps live (default ``<root>_maps``); missing maps
            are computed on first use and cached (``data_prep/coil_maps.py`` precomputes).
        seed: training masks and noise of sample ``i`` in epoch ``e`` come from
            ``(seed, e, i)`` (:meth:`set_epoch`): independent of the loader's worker count.
            ``None``: torch's global RNG (as fastMRI's own transforms).  Also seeds the choice
            of ``sample_rate``/``volume_sample_rate`` (else Python's global ``random``, as
            fastmri).
        use_dataset_cache: read the slice list from ``dataset_cache_file`` (default: one file
            per folder under :func:`~mrijac.data.dataset_cache.default_cache_dir`) when it was
            made from the folder as it is now — same entries, sizes and modification times,
            challenge and mode — else scan and write it (atomically).  See
            :mod:`mrijac.data.dataset_cache`.
        sample_rate, volume_sample_rate: keep this fraction of the slices, or of the volumes
            (all their slices), as fastmri does (at most one of the two).
        Other arguments are SliceDataset's.
    """

    def __init__(
        self,
        root,
        challenge: str,
        mode: str = "train",
        mask: MaskConfig | None = None,
        crop_kspace: bool = False,
        maps_dir=None,
        noise_sigma: float = 0.0,
        use_dataset_cache: bool = False,
        sample_rate=None,
        volume_sample_rate=None,
        dataset_cache_file=None,
        num_cols=None,
        raw_sample_filter=None,
        coil_compression: int | None = None,
        seed: int | None = None,
    ):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: data folder not found")
        if challenge not in TARGET_KEYS:
            raise ValueError(f"challenge must be 'singlecoil' or 'multicoil', got {challenge!r}")
        self._mode, self._challenge = mode, challenge
        store = None
        if challenge == "multicoil":
            store = CoilMapStore(maps_dir or default_maps_dir(root))
        transform = MRISliceTransform(challenge, mask, mode, crop_kspace, store, noise_sigma, coil_compression)
        transform.scratch_input = True  # SliceDataset reads each slice afresh
        if sample_rate is not None and volume_sample_rate is not None:
            raise ValueError("give sample_rate or volume_sample_rate, not both")
        for name, rate in (("sample_rate", sample_rate), ("volume_sample_rate", volume_sample_rate)):
            if rate is not None and not 0 < float(rate) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {rate}")
        # the cache holds the folder's whole, unfiltered slice list (a filter is not comparable)
        cache = use_dataset_cache and raw_sample_filter is None
        path = sig = None
        hit = False
        if cache:
            path = Path(dataset_cache_file) if dataset_cache_file else dataset_cache.cache_file(root)
            sig = dataset_cache.signature(root, challenge, mode)
            hit = dataset_cache.is_valid(path, sig)
        super().__init__(
            root,
            challenge,
            transform,
            hit,
            None,
            None,
            path if hit else "dataset_cache.pkl",  # read only on a hit; never written by fastmri
            None,
            raw_sample_filter,
        )
        if cache and not hit:
            dataset_cache.write(path, root, self.raw_samples, sig)
        self.cache_hit = hit
        self.raw_samples = _subsample(self.raw_samples, sample_rate, volume_sample_rate, seed)
        if num_cols:
            self.raw_samples = [ex for ex in self.raw_samples if ex[2]["encoding_size"][1] in num_cols]
        self.seed, self.epoch = seed, 0
        if not self.raw_samples:
            raise ValueError(
                f"{root}: no fastMRI .h5 slices found (is it the right folder and challenge '{challenge}'?)"
            )

    def set_epoch(self, epoch: int) -> None:
        """Training masks and noise of ``epoch`` (with :attr:`seed` set)."""
        self.epoch = int(epoch)

    @contextmanager
    def seeded(self, seed: int, epoch: int = 0):
        """Temporarily draw training randomness from ``(seed, epoch, index)``."""
        old = self.seed, self.epoch
        self.seed, self.epoch = seed, epoch
        try:
            yield self
        finally:
            self.seed, self.epoch = old

    def __getitem__(self, i: int):
        """Slice ``i``; in training mode with :attr:`seed` set, its random mask (and noise) come
        from a generator seeded by ``(seed, epoch, i)`` — the same in any loader process, so
        results do not depend on ``data.num_workers``."""
        if self.seed is not None:
            state = np.random.SeedSequence([int(self.seed), int(self.epoch), int(i)]).generate_state(2, np.uint32)
            self.transform.rng = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        else:
            self.transform.rng = None
        return super().__getitem__(i)

    def recon_sizes(self) -> dict[tuple[int, int], str]:
        """Each reconstruction size ``(h, w)`` in the folder, with one file that has it."""
        out = {}
        for r in self.raw_samples:
            out.setdefault(tuple(int(v) for v in r.metadata["recon_size"][:2]), str(r.fname))
        return out

    def _retrieve_metadata(self, fname):
        fname = Path(fname)
        if not fname.is_file() or fname.suffix.lower() not in H5_SUFFIXES:
            warnings.warn(f"{fname}: not an .h5 file, skipped", stacklevel=2)
            return {}, 0
        try:
            hf = h5py.File(fname, "r")
        except OSError as err:
            raise ValueError(f"{fname}: not a readable HDF5 file (truncated or corrupt?): {err}") from None
        with hf:
            if "kspace" not in hf:
                raise ValueError(f"{fname}: missing dataset 'kspace' (keys: {sorted(hf.keys())})")
            k = hf["kspace"]
            want = 3 if self._challenge == "singlecoil" else 4
            if k.ndim != want:
                raise ValueError(
                    f"{fname}: 'kspace' has shape {k.shape}; {self._challenge} "
                    f"needs {want} dims ({'S, H, W' if want == 3 else 'S, C, H, W'})"
                )
            if not np.issubdtype(k.dtype, np.complexfloating):
                raise ValueError(f"{fname}: 'kspace' must be complex, got {k.dtype}")
            hdr = read_header(hf, fname)
            key = TARGET_KEYS[self._challenge]
            if self._mode != "test":
                if key not in hf:
                    raise ValueError(
                        f"{fname}: missing dataset '{key}' (needed in {self._mode} "
                        "mode; test files are read with mode='test')"
                    )
                t = hf[key]
                if t.ndim != 3 or t.shape[0] != k.shape[0]:
                    raise ValueError(f"{fname}: '{key}' has shape {t.shape}, expected ({k.shape[0]}, h, w)")
            elif "mask" not in hf:
                raise ValueError(f"{fname}: test files need a 'mask' dataset")
            enc_w = hdr["encoding_size"][1]
            pad_left = enc_w // 2 - hdr["enc_center"]
            metadata = {
                "padding_left": pad_left,
                "padding_right": pad_left + hdr["enc_max"] + 1,
                "encoding_size": hdr["encoding_size"],
                "recon_size": hdr["recon_size"],
                "_path": str(fname),
                **hf.attrs,
            }
            return metadata, k.shape[0]
