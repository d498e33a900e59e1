"""Coil sensitivity maps: ESPIRiT (sigpy) from auto-calibration lines, cached beside the data."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import sigpy.mri
import torch

from ..atomic import atomic_path


def espirit_maps(
    kspace: np.ndarray, calib_width: int = 24, thresh: float = 0.02, crop: float = 0.95, kernel_width: int = 6
) -> np.ndarray:
    """ESPIRiT maps ``(C, H, W)`` complex64 from one slice's k-space ``(C, H, W)``.

    Only the central ``calib_width`` × ``calib_width`` auto-calibration region is used, so
    undersampled k-space works as long as ``calib_width`` ≤ its number of low-frequency lines.
    Wraps ``sigpy.mri.app.EspiritCalib`` (eigenvalue threshold ``thresh``, ``crop``).
    """
    kspace = np.asarray(kspace)
    if kspace.ndim != 3:
        raise ValueError(f"espirit_maps expects (C, H, W) k-space, got {kspace.shape}")
    calib_width = int(min(calib_width, *kspace.shape[-2:]))
    maps = sigpy.mri.app.EspiritCalib(
        kspace.astype(np.complex64),
        calib_width=calib_width,
        thresh=thresh,
        kernel_width=min(kernel_width, calib_width),
        crop=crop,
        show_pbar=False,
    ).run()
    return np.asarray(maps, dtype=np.complex64)


CONSISTENCY_WARN = 0.1


def sense_consistency(kspace: np.ndarray, maps: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Relative SENSE residual ``‖M F(S x) − y‖ / ‖y‖`` of one slice, ``x`` the maps' coil
    combination ``Σ_c S_c* F⁻¹ y_c / Σ_c |S_c|²`` (the least-squares image when fully sampled).

    ``kspace``, ``maps``: ``(C, H, W)``.  With an undersampling ``mask`` ``(W,)`` the residual
    is taken on the calibration columns only (``mask`` there, zero-filled aliasing elsewhere).
    Near 0: the maps explain the data; tens of percent: they do not (e.g. FOV aliasing that one
    set of maps cannot represent) and SENSE-based training will be biased.
    """
    from .synthetic import fft2c_np, ifft2c_np

    y = np.asarray(kspace, np.complex128)
    S = np.asarray(maps, np.complex128)
    w = (np.abs(S) ** 2).sum(0)
    x = (S.conj() * ifft2c_np(y)).sum(0) / np.where(w > 1e-8, w, np.inf)
    r = fft2c_np(S * x[None]) - y
    if mask is not None:
        keep = np.asarray(mask, bool).reshape(1, 1, -1)
        r, y = r * keep, y * keep
    return float(np.linalg.norm(r) / max(np.linalg.norm(y), 1e-30))


def check_calibration(kspace: np.ndarray, calib_width: int, fname) -> None:
    """Refuse calibration regions with missing samples (zero in every coil)."""
    C, H, W = kspace.shape
    cw = min(calib_width, H, W)
    reg = kspace[:, H // 2 - cw // 2 : H // 2 - cw // 2 + cw, W // 2 - cw // 2 : W // 2 - cw // 2 + cw]
    miss = float((np.abs(reg) == 0).all(0).mean())
    if miss > 0:
        raise ValueError(
            f"{fname}: {miss:.0%} of the central {cw}×{cw} calibration region is not sampled; "
            "ESPIRiT needs it fully sampled — lower --calib-width to the fully sampled centre"
        )


def default_maps_dir(root: str | Path) -> Path:
    """``<root>_maps`` beside the data folder (SliceDataset must not see extra entries)."""
    root = Path(root)
    return root.with_name(root.name + "_maps")


def compute_volume_maps(
    fname: str | Path, calib_width: int = 24, progress=None, consistency: list | None = None
) -> np.ndarray:
    """ESPIRiT maps ``(S, C, H, W)`` for every slice of a multi-coil fastMRI file.

    Test files (with their own ``mask``) are calibrated on their ``num_low_frequency`` lines;
    a calibration region with missing samples is refused (:func:`check_calibration`).  With
    ``consistency`` (a list), each slice's :func:`sense_consistency` is appended to it.  One set
    of maps per slice: sigpy's ``EspiritCalib`` returns the first eigenvector map only, so
    soft-SENSE with two sets is not offered; a high residual says when one set is not enough.
    """
    with h5py.File(fname, "r") as hf:
        k = hf["kspace"]
        if k.ndim != 4:
            raise ValueError(f"{fname}: coil maps need multi-coil kspace (S, C, H, W), got {k.shape}")
        mask = hf["mask"][()] if "mask" in hf else None
        if mask is not None:
            calib_width = min(calib_width, int(hf.attrs.get("num_low_frequency", calib_width)))
        maps = []
        for s in range(k.shape[0]):
            ks = k[s]
            check_calibration(ks, calib_width, f"{fname} slice {s}")
            maps.append(espirit_maps(ks, calib_width))
            if consistency is not None:
                consistency.append(sense_consistency(ks, maps[-1], mask))
            if progress is not None:
                progress.update(1)
    return np.stack(maps)


def write_maps(path: str | Path, maps: np.ndarray, source: str | Path, consistency: list | None = None) -> Path:
    """Write ``sens_maps`` (S, C, H, W) complex64 atomically, recording the source file and,
    if given, each slice's SENSE consistency (attribute ``consistency``)."""
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as hf:
        hf.create_dataset("sens_maps", data=maps.astype(np.complex64))
        hf.attrs["source"] = str(source)
        hf.attrs["method"] = "espirit"
        if consistency:
            hf.attrs["consistency"] = np.asarray(consistency, np.float64)
    return path


def _maps_dataset(hf: h5py.File, path) -> h5py.Dataset:
    if "sens_maps" not in hf:
        raise ValueError(f"{path}: missing dataset 'sens_maps'")
    return hf["sens_maps"]


_LAYOUT: dict = {}  # per process: (path, mtime, size) -> (offset, shape) or None (not mappable)


def _mapped(path: Path):
    """The ``sens_maps`` dataset of ``path`` as an ``np.memmap`` ``(S, C, H, W)`` complex64 when
    it is stored contiguous and uncompressed (as :func:`write_maps` writes it), else ``None``.
    A new private copy-on-write mapping per call: reading costs no copy (the page cache's pages,
    shared by every process reading the file), writing to it changes neither the file nor any
    other call's maps.  The file's layout is read once per process and file version."""
    st = os.stat(path)
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _LAYOUT:
        layout = None
        with h5py.File(path, "r") as hf:
            d = hf.get("sens_maps")
            off = d.id.get_offset() if d is not None and d.chunks is None and d.compression is None else None
            if off is not None and d.dtype == np.complex64:
                layout = (off, d.shape)
        _LAYOUT[key] = layout
    layout = _LAYOUT[key]
    return None if layout is None else np.memmap(path, np.complex64, "c", offset=layout[0], shape=layout[1])


@dataclass(frozen=True)
class MapRef:
    """Where one slice's coil maps are: ``path`` (a maps file), ``slice`` and an optional
    crop ``(h0, h1, w0, w1)`` — a few bytes that travel between loader processes in place of
    the ``(C, H, W)`` complex64 maps (26 MB for 16 coils at 640×320).  :meth:`load` reads them
    in the process that needs them, through a memory map of the file."""

    path: str
    slice: int
    box: tuple | None = None

    def cropped(self, shape: tuple, size: tuple) -> "MapRef":
        """The centre ``size = (h, w)`` of maps of ``shape = (H, W)`` (fastmri's ``center_crop``)."""
        (H, W), (h, w) = shape, size
        h0, w0 = (H - h) // 2, (W - w) // 2
        if self.box is not None:
            raise ValueError("MapRef is already cropped")
        return MapRef(self.path, self.slice, (h0, h0 + h, w0, w0 + w))

    def load(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """Maps ``(C, h, w)`` complex64, written into ``out`` when given.  From a contiguous
        maps file (as :func:`write_maps` writes them) without ``out``: a private copy-on-write
        memory map — no copy is made, the pages are read when used, and writing to the tensor
        changes nothing else; a cropped ``box`` is a strided view of it."""
        p = Path(self.path)
        mm = _mapped(p)
        sl = (slice(None),) if self.box is None else (slice(None), slice(*self.box[:2]), slice(*self.box[2:]))
        if mm is not None:
            view = torch.from_numpy(mm[self.slice][sl])
            return view if out is None else out.copy_(view)
        with h5py.File(p, "r") as hf:
            got = torch.from_numpy(np.asarray(hf["sens_maps"][self.slice][sl], np.complex64))
        return got if out is None else out.copy_(got)


class CoilMapStore:
    """ESPIRiT maps per volume in ``maps_dir/<file name>``, computed and cached on first use.

    :meth:`get` returns one slice's maps; :meth:`ref` a :class:`MapRef` to them (checked
    against the k-space shape), which loader workers hand on instead of the maps themselves."""

    def __init__(self, maps_dir: str | Path, calib_width: int = 24, compute: bool = True):
        self.maps_dir, self.calib_width, self.compute = Path(maps_dir), calib_width, compute
        self._shapes: dict = {}  # maps file -> (mtime, (S, C, H, W)) checked once per version

    def path(self, fname: str | Path) -> Path:
        return self.maps_dir / Path(fname).name

    def ref(self, fname: str | Path, slice_num: int, shape: tuple) -> MapRef:
        """A :class:`MapRef` to the maps of one slice (computed first if missing); raises like
        :meth:`get` when the file's maps do not fit k-space of ``shape`` ``(C, H, W)``."""
        p = self._ensure(fname)
        mtime = os.stat(p).st_mtime_ns
        known = self._shapes.get(p)
        if known is None or known[0] != mtime:
            with h5py.File(p, "r") as hf:
                known = self._shapes[p] = (mtime, tuple(_maps_dataset(hf, p).shape))
        self._check(p, fname, known[1], shape, slice_num)
        return MapRef(str(p), int(slice_num))

    @staticmethod
    def _check(p, fname, have: tuple, shape: tuple, slice_num: int) -> None:
        if tuple(have[1:]) != tuple(shape):
            raise ValueError(
                f"{p}: coil maps of shape {tuple(have[1:])} do not match k-space {tuple(shape)} of {fname}"
            )
        if not 0 <= int(slice_num) < have[0]:
            raise ValueError(f"{p}: has maps for {have[0]} slices, slice {slice_num} of {fname} asked for")

    def get(self, fname: str | Path, slice_num: int, shape: tuple) -> np.ndarray:
        """Maps ``(C, H, W)`` of one slice; ``shape`` is that slice's k-space shape."""
        p = self._ensure(fname)
        with h5py.File(p, "r") as hf:
            m = _maps_dataset(hf, p)
            self._check(p, fname, m.shape, shape, slice_num)
            return m[slice_num]

    def _ensure(self, fname: str | Path) -> Path:
        """The maps file of ``fname``, computed now if missing (or an error if not allowed)."""
        p = self.path(fname)
        if not p.exists():
            if not self.compute:
                raise FileNotFoundError(
                    f"{p}: no coil maps for {fname}; run `python data_prep/coil_maps.py {Path(fname).parent}`"
                )
            c = []
            write_maps(p, compute_volume_maps(fname, self.calib_width, consistency=c), fname, c)
            if max(c) > CONSISTENCY_WARN:
                import warnings

                warnings.warn(
                    f"{fname}: SENSE consistency of its ESPIRiT maps up to {max(c):.0%} "
                    f"(> {CONSISTENCY_WARN:.0%}): the maps do not explain the data",
                    stacklevel=2,
                )
        return p
