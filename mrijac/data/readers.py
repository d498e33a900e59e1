"""Readers for raw k-space and image files: BART ``.cfl/.hdr``, MATLAB ``.mat`` (v5 and v7.3),
NumPy ``.npy``, PNG/JPEG/TIFF images.  Errors name the file and what was expected."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def read_cfl(path: str | Path) -> np.ndarray:
    """BART ``name.cfl`` + ``name.hdr`` (either path, or the common stem) -> complex64 array
    with BART's dimensions (column-major on disk), trailing singleton dimensions removed."""
    base = Path(path)
    if base.suffix in (".cfl", ".hdr"):
        base = base.with_suffix("")
    hdr, cfl = base.with_suffix(".hdr"), base.with_suffix(".cfl")
    for p in (hdr, cfl):
        if not p.exists():
            raise FileNotFoundError(f"{p}: BART file not found (need both .cfl and .hdr)")
    lines = [ln for ln in hdr.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    try:
        dims = [int(d) for d in lines[0].split()]
    except (IndexError, ValueError):
        raise ValueError(f"{hdr}: expected a line of integer dimensions after '# Dimensions'") from None
    data = np.fromfile(cfl, dtype=np.complex64)
    if data.size != int(np.prod(dims)):
        raise ValueError(
            f"{cfl}: holds {data.size} complex values, header {hdr.name} says {dims} = {int(np.prod(dims))}"
        )
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    return data.reshape(dims, order="F")


def _h5_array(ds) -> np.ndarray:
    a = ds[()]
    if a.dtype.names and {"real", "imag"} <= set(a.dtype.names):
        a = a["real"] + 1j * a["imag"]
    return np.asarray(a).T  # MATLAB is column-major: undo h5py's transposed view


def read_mat(path: str | Path, key: str | None = None) -> np.ndarray:
    """Array ``key`` of a MATLAB file (v7.3 through h5py, older through scipy.io).

    Without ``key`` the file must hold exactly one array.  v7.3 arrays are transposed back to
    MATLAB's axis order, and complex compounds ``(real, imag)`` become complex arrays.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as hf:
            names = [k for k in hf.keys() if not k.startswith("#")]
            key = _pick_key(path, names, key)
            return _h5_array(hf[key])
    from scipy.io import loadmat

    try:
        d = loadmat(path)
    except Exception as err:  # scipy raises several types for non-MAT input
        raise ValueError(f"{path}: not a readable MATLAB file ({err})") from None
    names = [k for k in d if not k.startswith("__")]
    return np.asarray(d[_pick_key(path, names, key)])


def _pick_key(path, names, key):
    if key is not None:
        if key not in names:
            raise ValueError(f"{path}: no variable {key!r}; it holds {sorted(names)}")
        return key
    if len(names) != 1:
        raise ValueError(f"{path}: holds {sorted(names)}; name the one to read with --key (key= in Python)")
    return names[0]


RAW_FORMATS = "BART .cfl/.hdr (or their common stem), MATLAB .mat, NumPy .npy"
UNSUPPORTED = {
    ".nii": "NIfTI",
    ".gz": "NIfTI (.nii.gz)",
    ".dcm": "DICOM",
    ".ima": "DICOM (Siemens .IMA)",
    ".dat": "Siemens TWIX",
    ".mrd": "ISMRMRD",
}


def is_bart(path: str | Path) -> bool:
    """True for a BART file: ``.cfl``/``.hdr``, or a stem with both beside it."""
    path = Path(path)
    suf = path.suffix.lower()
    return suf in (".cfl", ".hdr") or (
        suf not in (".mat", ".npy")
        and path.with_name(path.name + ".cfl").exists()
        and path.with_name(path.name + ".hdr").exists()
    )


def read_array(path: str | Path, key: str | None = None) -> np.ndarray:
    """``.cfl``/``.hdr`` or a BART stem without suffix, ``.mat`` (MATLAB), ``.npy`` (NumPy).

    NIfTI, DICOM and vendor raw formats are not read: export them to one of these first (the
    error says so rather than guessing)."""
    path = Path(path)
    suf = path.suffix.lower()
    if is_bart(path):
        return read_cfl(path.with_name(path.name + ".cfl") if suf not in (".cfl", ".hdr") else path)
    if suf == ".mat":
        return read_mat(path, key)
    if suf == ".npy":
        if not path.exists():
            raise FileNotFoundError(f"{path}: file not found")
        return np.load(path, allow_pickle=False)
    if suf in UNSUPPORTED:
        raise ValueError(
            f"{path}: {UNSUPPORTED[suf]} is not supported; export the array to one of: {RAW_FORMATS} "
            "(e.g. numpy.save after reading it with nibabel/pydicom)"
        )
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found (nor {path.name}.cfl/.hdr)")
    raise ValueError(f"{path}: unknown raw-data format {suf or '(no suffix)'!r}; supported: {RAW_FORMATS}")


def read_image(path: str | Path) -> np.ndarray:
    """Greyscale float image in [0, 1] ``(H, W)`` (colour converted to luminance)."""
    from skimage import io
    from skimage.color import rgb2gray, rgba2rgb

    path = Path(path)
    try:
        im = io.imread(path)
    except Exception as err:
        raise ValueError(f"{path}: not a readable image ({err})") from None
    if im.ndim == 3:
        im = rgb2gray(rgba2rgb(im) if im.shape[-1] == 4 else im[..., :3])
    im = np.asarray(im, dtype=np.float64)
    return im / 255.0 if im.max() > 1.0 else im


class ImageStack(NamedTuple):
    """Images read for conversion: ``images`` ``(S, H, W)`` float64 (magnitude or signed real)
    or complex128 (the source's phase kept), the source name of each slice, and notes on what
    was inferred (slice axis, phase) for the user to read."""

    images: np.ndarray
    names: list[str]
    notes: list[str]


MIN_SIDE = 16
STACK_AXES = ("x", "y", "slice")


def stack_to_slices(a: np.ndarray, where, axes: str | None = None) -> tuple[np.ndarray, str | None]:
    """A 2-D image or 3-D stack as ``(S, H, W)``; returns it and a note on the inferred axis.

    ``axes`` names the axes in order (``x,y,slice`` for MATLAB's ``(H, W, S)``, ``slice,x,y``
    for NumPy's ``(S, H, W)``).  Without it, a 3-D array's slice axis is the one that differs
    when the other two are equal (square images), else the smallest when it is at most half the
    next; anything else is ambiguous and refused (a MATLAB ``256×256×15`` stack is *not* 256
    images of 256×15).
    """
    if axes:
        names = [t.strip() for t in axes.split(",") if t.strip()]
        if (
            len(names) != a.ndim
            or set(names) - set(STACK_AXES)
            or len(set(names)) != len(names)
            or not {"x", "y"} <= set(names)
        ):
            raise ValueError(
                f"{where}: --axes {axes!r} must name the {a.ndim} axes of shape {a.shape} from x, y, slice "
                "(e.g. x,y,slice for a MATLAB stack)"
            )
        if "slice" not in names:
            a, names = a[..., None], names + ["slice"]
        return np.transpose(a, [names.index(t) for t in ("slice", "x", "y")]), None
    if a.ndim == 2:
        return a[None], None
    if a.ndim != 3:
        raise ValueError(f"{where}: expected a 2-D image or a 3-D stack, got shape {a.shape}")
    n = a.shape
    order = sorted(range(3), key=lambda i: n[i])
    if n[order[1]] == n[order[2]] and n[order[0]] != n[order[1]]:
        ax = order[0]
    elif n[order[0]] == n[order[1]] and n[order[1]] != n[order[2]]:
        ax = order[2]
    elif n[order[0]] * 2 <= n[order[1]]:
        ax = order[0]
    else:
        raise ValueError(
            f"{where}: cannot tell the slice axis of the stack {n}; name the axes with --axes "
            "(x,y,slice for MATLAB's (H, W, S), slice,x,y for (S, H, W))"
        )
    out = np.moveaxis(a, ax, 0)
    return out, (
        f"{where}: stack {n} read as {out.shape[0]} slices of {out.shape[1]}×{out.shape[2]} "
        f"(slice axis {ax}; --axes overrides)"
    )


def check_slices(a: np.ndarray, where) -> None:
    """Refuse degenerate images: a side < 16 px, an all-zero or non-finite slice."""
    if min(a.shape[1:]) < MIN_SIDE:
        raise ValueError(
            f"{where}: images of {a.shape[1]}×{a.shape[2]} px (a side < {MIN_SIDE}); is the slice axis right? "
            "name the axes with --axes"
        )
    for s in range(a.shape[0]):
        if not np.isfinite(a[s]).all():
            raise ValueError(f"{where}: slice {s} holds NaN or Inf")
        if not np.abs(a[s]).max() > 0:
            raise ValueError(f"{where}: slice {s} is all zero")


def read_image_stack(source: str | Path, key: str | None = None, axes: str | None = None) -> ImageStack:
    """Images from a folder (PNG/JPEG/TIFF, ``.mat``, ``.npy``, BART ``.cfl``) or one such file.

    A complex input (non-zero imaginary part) keeps its phase; a real one is kept as it is
    (PNG/JPEG become greyscale in [0, 1]).  Stacks are reordered to ``(S, H, W)`` by
    :func:`stack_to_slices`; degenerate slices are refused (:func:`check_slices`).  All
    images must share one size.
    """
    source = Path(source)
    raw = (".mat", ".npy", ".cfl")
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES + raw)
        if not files:
            raise ValueError(f"{source}: no images (.png/.jpg/.tif) or .mat/.npy/.cfl files found")
    elif source.exists() or is_bart(source):
        files = [source]
    else:
        raise FileNotFoundError(f"{source}: not found")
    ims, names, notes = [], [], []
    for p in files:
        if p.suffix.lower() in IMAGE_SUFFIXES:
            a = read_image(p)[None]
        else:
            a, note = stack_to_slices(np.asarray(read_array(p, key)), p, axes)
            if note:
                notes.append(note)
        if np.iscomplexobj(a) and not np.abs(a.imag).max() > 1e-6 * np.abs(a).max():
            a = a.real
        check_slices(a, p)
        ims.append(a)
        names += [p.name] * a.shape[0]
    shapes = {a.shape[1:] for a in ims}
    if len(shapes) > 1:
        raise ValueError(f"{source}: images of different sizes {sorted(shapes)}")
    images = np.concatenate(ims)
    images = images.astype(np.complex128 if np.iscomplexobj(images) else np.float64)
    return ImageStack(images, names, notes)
