"""Coil sensitivity maps: ESPIRiT (sigpy) from auto-calibration lines, cached beside the data."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import sigpy.mri

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


def default_maps_dir(root: str | Path) -> Path:
    """``<root>_maps`` beside the data folder (SliceDataset must not see extra entries)."""
    root = Path(root)
    return root.with_name(root.name + "_maps")


def compute_volume_maps(fname: str | Path, calib_width: int = 24, progress=None) -> np.ndarray:
    """ESPIRiT maps ``(S, C, H, W)`` for every slice of a multi-coil fastMRI file.

    Test files (with their own ``mask``) are calibrated on their ``num_low_frequency`` lines.
    """
    with h5py.File(fname, "r") as hf:
        k = hf["kspace"]
        if k.ndim != 4:
            raise ValueError(f"{fname}: coil maps need multi-coil kspace (S, C, H, W), got {k.shape}")
        if "mask" in hf:
            calib_width = min(calib_width, int(hf.attrs.get("num_low_frequency", calib_width)))
        maps = []
        for s in range(k.shape[0]):
            maps.append(espirit_maps(k[s], calib_width))
            if progress is not None:
                progress.update(1)
    return np.stack(maps)


def write_maps(path: str | Path, maps: np.ndarray, source: str | Path) -> Path:
    """Write ``sens_maps`` (S, C, H, W) complex64 atomically, recording the source file."""
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as hf:
        hf.create_dataset("sens_maps", data=maps.astype(np.complex64))
        hf.attrs["source"] = str(source)
        hf.attrs["method"] = "espirit"
    return path


class CoilMapStore:
    """ESPIRiT maps per volume in ``maps_dir/<file name>``, computed and cached on first use."""

    def __init__(self, maps_dir: str | Path, calib_width: int = 24, compute: bool = True):
        self.maps_dir, self.calib_width, self.compute = Path(maps_dir), calib_width, compute

    def path(self, fname: str | Path) -> Path:
        return self.maps_dir / Path(fname).name

    def get(self, fname: str | Path, slice_num: int, shape: tuple) -> np.ndarray:
        """Maps ``(C, H, W)`` of one slice; ``shape`` is that slice's k-space shape."""
        p = self.path(fname)
        if not p.exists():
            if not self.compute:
                raise FileNotFoundError(
                    f"{p}: no coil maps for {fname}; run `python data_prep/coil_maps.py {Path(fname).parent}`"
                )
            write_maps(p, compute_volume_maps(fname, self.calib_width), fname)
        with h5py.File(p, "r") as hf:
            if "sens_maps" not in hf:
                raise ValueError(f"{p}: missing dataset 'sens_maps'")
            m = hf["sens_maps"]
            if tuple(m.shape[1:]) != tuple(shape):
                raise ValueError(
                    f"{p}: coil maps of shape {m.shape[1:]} do not match k-space {tuple(shape)} of {fname}"
                )
            return m[slice_num]
