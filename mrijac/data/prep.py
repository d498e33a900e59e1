"""Dataset-level preparation: image sets split into volumes, coil maps for a folder, subsets."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .coil_maps import compute_volume_maps, default_maps_dir, write_maps
from .convert import convert_images
from .readers import read_image_stack


def images_to_dataset(
    source,
    out,
    per_volume: int = 10,
    split=(0.8, 0.2, 0.0),
    challenge: str = "singlecoil",
    phase: bool = True,
    num_coils: int = 8,
    seed: int = 0,
    key: str | None = None,
    progress: bool = True,
) -> dict:
    """Split an image set into volumes of ``per_volume`` slices and train/val/test folders.

    Images keep their file order inside a volume; volumes are assigned to splits by the
    fractions ``split`` after a seeded shuffle.  Returns ``{split: [paths]}``.
    """
    if len(split) != 3 or any(s < 0 for s in split) or not np.isclose(sum(split), 1):
        raise ValueError(f"split must be three fractions (train, val, test) summing to 1, got {split}")
    images, names = read_image_stack(source, key)
    n_vol = int(np.ceil(len(images) / per_volume))
    order = np.random.default_rng(seed).permutation(n_vol)
    n_tr = int(round(split[0] * n_vol))
    n_va = int(round(split[1] * n_vol))
    which = {}
    for rank, v in enumerate(order):
        which[v] = "train" if rank < n_tr else ("val" if rank < n_tr + n_va else "test")
    written = {"train": [], "val": [], "test": []}
    stem = Path(source).stem
    for v in tqdm(range(n_vol), desc="convert images", disable=not progress):
        sl = slice(v * per_volume, (v + 1) * per_volume)
        p = Path(out) / which[v] / f"{stem}_{challenge}_{v:04d}.h5"
        convert_images(images[sl], p, challenge, phase, num_coils, seed + v, names=names[sl])
        written[which[v]].append(p)
    return written


def maps_for_folder(
    root, maps_dir=None, calib_width: int = 24, overwrite: bool = False, progress: bool = True
) -> list[Path]:
    """ESPIRiT maps for every multi-coil volume of ``root`` into ``maps_dir`` (``<root>_maps``)."""
    import h5py

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data folder not found")
    maps_dir = Path(maps_dir) if maps_dir else default_maps_dir(root)
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in (".h5", ".hdf5"))
    if not files:
        raise ValueError(f"{root}: no .h5 files")
    total = 0
    for f in files:
        with h5py.File(f, "r") as hf:
            total += hf["kspace"].shape[0]
    out = []
    with tqdm(total=total, desc="ESPIRiT maps", disable=not progress) as bar:
        for f in files:
            target = maps_dir / f.name
            if target.exists() and not overwrite:
                with h5py.File(f, "r") as hf:
                    bar.update(hf["kspace"].shape[0])
            else:
                write_maps(target, compute_volume_maps(f, calib_width, bar), f)
            out.append(target)
    return out


def subset(src, dst, volumes: int, seed: int = 0, copy: bool = False) -> list[Path]:
    """A subset of ``volumes`` files of ``src`` in ``dst`` (symbolic links unless ``copy``)."""
    src, dst = Path(src), Path(dst)
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in (".h5", ".hdf5"))
    if volumes < 1 or volumes > len(files):
        raise ValueError(f"volumes must be between 1 and {len(files)} (files in {src}), got {volumes}")
    pick = sorted(np.random.default_rng(seed).choice(len(files), volumes, replace=False))
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for i in pick:
        target = dst / files[i].name
        if target.exists() or target.is_symlink():
            target.unlink()
        if copy:
            shutil.copy2(files[i], target)
        else:
            os.symlink(files[i].resolve(), target)
        out.append(target)
    return out
