"""Readers for raw k-space and image files: BART ``.cfl/.hdr``, MATLAB ``.mat`` (v5 and v7.3),
NumPy ``.npy``, PNG/JPEG/TIFF images.  Errors name the file and what was expected."""

from __future__ import annotations

from pathlib import Path

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
        raise ValueError(f"{path}: holds {sorted(names)}; say which one with key=")
    return names[0]


def read_array(path: str | Path, key: str | None = None) -> np.ndarray:
    """``.cfl``/``.hdr`` (BART), ``.mat`` (MATLAB), ``.npy`` (NumPy) by suffix."""
    path = Path(path)
    suf = path.suffix.lower()
    if suf in (".cfl", ".hdr"):
        return read_cfl(path)
    if suf == ".mat":
        return read_mat(path, key)
    if suf == ".npy":
        if not path.exists():
            raise FileNotFoundError(f"{path}: file not found")
        return np.load(path, allow_pickle=False)
    raise ValueError(f"{path}: unknown raw-data format {suf!r} (expected .cfl/.hdr, .mat, .npy)")


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


def read_image_stack(source: str | Path, key: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Magnitude images from a folder (images or ``.mat`` files) or one ``.mat``/``.npy`` file.

    Returns ``(S, H, W)`` float64 and the source name of each image; all images must share
    one size.
    """
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES + (".mat", ".npy"))
        if not files:
            raise ValueError(f"{source}: no images (.png/.jpg/.tif) or .mat/.npy files found")
    elif source.exists():
        files = [source]
    else:
        raise FileNotFoundError(f"{source}: not found")
    ims, names = [], []
    for p in files:
        a = read_image(p) if p.suffix.lower() in IMAGE_SUFFIXES else np.abs(read_array(p, key))
        a = a[None] if a.ndim == 2 else a
        if a.ndim != 3:
            raise ValueError(f"{p}: expected a 2-D image or a stack (S, H, W), got {a.shape}")
        ims.append(a.astype(np.float64))
        names += [p.name] * a.shape[0]
    shapes = {a.shape[1:] for a in ims}
    if len(shapes) > 1:
        raise ValueError(f"{source}: images of different sizes {sorted(shapes)}")
    return np.concatenate(ims), names
