"""Dataset-level preparation: image sets split into volumes, coil maps for a folder, subsets."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .coil_maps import CONSISTENCY_WARN, compute_volume_maps, default_maps_dir, write_maps
from .convert import simulate_kspace
from .h5format import claim_dataset_folder
from .readers import read_image_stack
from .synthetic import write_split_volume


def images_to_dataset(
    source,
    out,
    per_volume: int = 10,
    split=(0.8, 0.1, 0.1),
    challenge: str = "singlecoil",
    phase: bool = True,
    num_coils: int = 8,
    seed: int = 0,
    key: str | None = None,
    progress: bool = True,
    axes: str | None = None,
    overwrite: bool = False,
    test_acceleration: int = 4,
) -> dict:
    """Split an image set into volumes of ``per_volume`` slices and train/val/test folders.

    Images are read by :func:`~mrijac.data.readers.read_image_stack` (slice axis inferred or
    ``axes``, complex phase kept, degenerate images refused) and keep their file order inside
    a volume; volumes are assigned to splits by the fractions ``split`` after a seeded shuffle.
    Test volumes are written in fastMRI's challenge format (masked k-space, ``mask``, no
    target; targets in ``out/test_targets``).  Returns ``{split: [paths], "notes": [..]}``
    where the notes say what was inferred (slice axis, phase).
    """
    if len(split) != 3 or any(s < 0 for s in split) or not np.isclose(sum(split), 1):
        raise ValueError(f"--split must be three fractions (train, val, test) summing to 1, got {split}")
    if per_volume < 1:
        raise ValueError(f"--per-volume must be >= 1, got {per_volume}")
    stack = read_image_stack(source, key, axes)
    images, names = stack.images, stack.names
    claim_dataset_folder(out, overwrite)
    n_vol = int(np.ceil(len(images) / per_volume))
    order = np.random.default_rng(seed).permutation(n_vol)
    n_tr = int(round(split[0] * n_vol))
    n_va = int(round(split[1] * n_vol))
    which = {}
    for rank, v in enumerate(order):
        which[v] = "train" if rank < n_tr else ("val" if rank < n_tr + n_va else "test")
    written = {"train": [], "val": [], "test": []}
    stem = Path(source).stem
    hows = set()
    for v in tqdm(range(n_vol), desc="convert images", disable=not progress):
        sl = slice(v * per_volume, (v + 1) * per_volume)
        k, target, how = simulate_kspace(images[sl], challenge, phase, num_coils, seed + v)
        hows.add(how)
        extra = {"phase": how, "sources": ",".join(sorted(set(names[sl])))[:60000]}
        p = write_split_volume(
            out,
            which[v],
            f"{stem}_{challenge}_{v:04d}.h5",
            k,
            target,
            challenge,
            "IMAGES",
            tuple(target.shape[-2:]),
            seed + v,
            test_acceleration,
            extra_attrs=extra,
        )
        written[which[v]].append(p)
    phase_note = {
        "source": "complex (or signed) input: its own phase kept, k-space = fft2c of the image",
        "synthetic": "magnitude input: smooth random phase added (--no-phase: none)",
        "none": "magnitude input: no phase added (--no-phase)",
    }
    written["notes"] = stack.notes + [phase_note[h] for h in sorted(hows)]
    return written


def maps_for_folder(root, maps_dir=None, calib_width: int = 24, overwrite: bool = False, progress: bool = True) -> dict:
    """ESPIRiT maps for every multi-coil volume of ``root`` into ``maps_dir`` (``<root>_maps``).

    Returns ``{"maps": [paths], "consistency": {file: [per-slice residual]}, "warnings": [..]}``:
    the SENSE consistency ``‖A x − y‖/‖y‖`` of each newly computed slice
    (:func:`~mrijac.data.coil_maps.sense_consistency`); a volume whose worst slice exceeds
    ``CONSISTENCY_WARN`` (10 %) gets a warning line.
    """
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
    out, cons, warns = [], {}, []
    with tqdm(total=total, desc="ESPIRiT maps", disable=not progress) as bar:
        for f in files:
            target = maps_dir / f.name
            if target.exists() and not overwrite:
                with h5py.File(f, "r") as hf:
                    bar.update(hf["kspace"].shape[0])
            else:
                c = []
                write_maps(target, compute_volume_maps(f, calib_width, bar, c), f, c)
                cons[f.name] = c
                if max(c) > CONSISTENCY_WARN:
                    warns.append(
                        f"{f}: SENSE consistency ‖A x − y‖/‖y‖ up to {max(c):.0%} with these maps "
                        f"(> {CONSISTENCY_WARN:.0%}): one set of ESPIRiT maps does not explain the data "
                        "(FOV aliasing? too narrow --calib-width?); multi-coil training on it is biased"
                    )
            out.append(target)
    return {"maps": out, "consistency": cons, "warnings": warns}


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
