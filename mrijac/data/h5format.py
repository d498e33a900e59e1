"""Reading and writing fastMRI-format HDF5 volumes.

A fastMRI volume holds ``kspace`` (complex64, ``(S, H, W)`` single-coil or ``(S, C, H, W)``
multi-coil), the target ``reconstruction_esc``/``reconstruction_rss`` (float32 ``(S, h, w)``,
absent from test files), ``ismrmrd_header`` (ISMRMRD XML with the encoded and recon matrix
sizes and the phase-encode ``encodingLimits``), attributes ``acquisition``, ``max``, ``norm``,
``patient_id``; test files also hold ``mask`` ``(W,)`` and attributes ``acceleration`` and
``num_low_frequency``.  Files are written to a temporary name and renamed.
"""

from __future__ import annotations

import xml.etree.ElementTree as etree
from pathlib import Path

import h5py
import numpy as np

from ..atomic import atomic_path

ISMRMRD_NS = "http://www.ismrm.org/ISMRMRD"
TARGET_KEYS = {"singlecoil": "reconstruction_esc", "multicoil": "reconstruction_rss"}


def ismrmrd_header(
    enc_size: tuple[int, int], recon_size: tuple[int, int], fov_mm: tuple[float, float] = (280.0, 280.0)
) -> bytes:
    """Minimal ISMRMRD XML header: encoded/recon matrix sizes and phase-encode limits.

    ``enc_size = (H, W)``: readout × phase-encode k-space size; ``recon_size = (h, w)``.
    """
    H, W = enc_size
    h, w = recon_size
    return f"""<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="{ISMRMRD_NS}">
  <encoding>
    <encodedSpace>
      <matrixSize><x>{H}</x><y>{W}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{fov_mm[0] * H / h:.2f}</x><y>{fov_mm[1] * W / w:.2f}</y><z>4.5</z></fieldOfView_mm>
    </encodedSpace>
    <reconSpace>
      <matrixSize><x>{h}</x><y>{w}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{fov_mm[0]:.2f}</x><y>{fov_mm[1]:.2f}</y><z>4.5</z></fieldOfView_mm>
    </reconSpace>
    <encodingLimits>
      <kspace_encoding_step_1><minimum>0</minimum><maximum>{W - 1}</maximum><center>{W // 2}</center></kspace_encoding_step_1>
      <kspace_encoding_step_2><minimum>0</minimum><maximum>0</maximum><center>0</center></kspace_encoding_step_2>
      <slice><minimum>0</minimum><maximum>0</maximum><center>0</center></slice>
    </encodingLimits>
    <trajectory>cartesian</trajectory>
  </encoding>
</ismrmrdHeader>
""".encode()


def write_volume(
    path: str | Path,
    kspace: np.ndarray,
    target: np.ndarray | None,
    challenge: str,
    acquisition: str = "SYNTHETIC",
    recon_size: tuple[int, int] | None = None,
    patient_id: str = "",
    mask: np.ndarray | None = None,
    acceleration: float | None = None,
    num_low_frequency: int | None = None,
    extra_attrs: dict | None = None,
) -> Path:
    """Write one fastMRI-format volume atomically (temporary file, then rename).

    Args:
        kspace: ``(S, H, W)`` (single-coil) or ``(S, C, H, W)`` (multi-coil), complex.
        target: ``(S, h, w)`` magnitude target or ``None`` (test files).
        challenge: ``"singlecoil"`` or ``"multicoil"`` (selects the target key).
        mask: ``(W,)`` sampling mask of a test file (then ``acceleration`` and
            ``num_low_frequency`` are required, and ``kspace`` must already be masked).
    """
    if challenge not in TARGET_KEYS:
        raise ValueError(f"challenge must be 'singlecoil' or 'multicoil', got {challenge!r}")
    kspace = np.asarray(kspace)
    want = 3 if challenge == "singlecoil" else 4
    if kspace.ndim != want or not np.iscomplexobj(kspace):
        raise ValueError(
            f"{path}: kspace for {challenge} must be complex with {want} dims, got {kspace.dtype} {kspace.shape}"
        )
    if not np.isfinite(kspace).all():
        raise ValueError(f"{path}: kspace contains NaN or Inf")
    H, W = kspace.shape[-2:]
    if target is not None:
        target = np.asarray(target, dtype=np.float32)
        if target.ndim != 3 or target.shape[0] != kspace.shape[0]:
            raise ValueError(f"{path}: target must be (S, h, w) with S = {kspace.shape[0]}, got {target.shape}")
        recon_size = recon_size or tuple(target.shape[-2:])
    recon_size = tuple(recon_size or (min(H, W), min(H, W)))
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as hf:
        hf.create_dataset("kspace", data=kspace.astype(np.complex64))
        hf.create_dataset("ismrmrd_header", data=ismrmrd_header((H, W), recon_size))
        if target is not None:
            hf.create_dataset(TARGET_KEYS[challenge], data=target)
            hf.attrs["max"] = float(target.max())
            hf.attrs["norm"] = float(np.linalg.norm(target))
        hf.attrs["acquisition"] = acquisition
        hf.attrs["patient_id"] = patient_id or path.stem
        if mask is not None:
            if acceleration is None or num_low_frequency is None:
                raise ValueError(f"{path}: a test file's mask needs acceleration and num_low_frequency")
            hf.create_dataset("mask", data=np.asarray(mask).astype(bool).reshape(W))
            hf.attrs["acceleration"] = int(round(acceleration))
            hf.attrs["num_low_frequency"] = int(num_low_frequency)
        for k, v in (extra_attrs or {}).items():
            hf.attrs[k] = v
    return path


def open_h5(path: str | Path, mode: str = "r") -> h5py.File:
    """``h5py.File`` that fails with a ``ValueError`` naming the file when it is not a readable
    HDF5 file (truncated, corrupt, not HDF5) instead of h5py's bare ``OSError``."""
    path = Path(path)
    if mode == "r" and not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return h5py.File(path, mode)
    except OSError as err:
        if isinstance(err, PermissionError):
            raise
        raise ValueError(
            f"{path}: not a readable HDF5 file (truncated or corrupt?): {str(err).splitlines()[0]}"
        ) from None


def read_header(hf: h5py.File, fname) -> dict:
    """Sizes from ``ismrmrd_header``; ``ValueError`` naming the file if it is unusable."""
    if "ismrmrd_header" not in hf:
        raise ValueError(f"{fname}: missing dataset 'ismrmrd_header' (fastMRI files carry an ISMRMRD XML header)")
    try:
        root = etree.fromstring(hf["ismrmrd_header"][()])
    except etree.ParseError as err:
        raise ValueError(f"{fname}: 'ismrmrd_header' is not valid XML ({err})") from None
    ns = {"m": ISMRMRD_NS}

    def q(path):
        el = root.find("/".join(f"m:{p}" for p in path), ns)
        if el is None or el.text is None:
            raise ValueError(f"{fname}: 'ismrmrd_header' lacks {'/'.join(path)} in the ISMRMRD namespace {ISMRMRD_NS}")
        return int(float(el.text))

    enc = ["encoding", "encodedSpace", "matrixSize"]
    rec = ["encoding", "reconSpace", "matrixSize"]
    lim = ["encoding", "encodingLimits", "kspace_encoding_step_1"]
    return {
        "encoding_size": (q(enc + ["x"]), q(enc + ["y"]), q(enc + ["z"])),
        "recon_size": (q(rec + ["x"]), q(rec + ["y"]), q(rec + ["z"])),
        "enc_center": q(lim + ["center"]),
        "enc_max": q(lim + ["maximum"]),
    }


DATASET_SPLITS = ("train", "val", "test", "test_targets")


def claim_dataset_folder(out: str | Path, overwrite: bool = False) -> Path:
    """Make ``out`` ready for a new dataset: refuse (``FileExistsError``) when its split folders
    already hold volumes, unless ``overwrite``, which removes those volumes first — never a mix
    of an old and a new dataset."""
    out = Path(out)
    old = [p for s in DATASET_SPLITS if (out / s).is_dir() for p in (out / s).iterdir() if p.suffix in (".h5", ".hdf5")]
    if old and not overwrite:
        raise FileExistsError(
            f"{out}: already holds {len(old)} volumes (e.g. {old[0].relative_to(out)}); "
            "choose another --out or pass --overwrite to replace them"
        )
    for p in old:
        p.unlink()
    return out
