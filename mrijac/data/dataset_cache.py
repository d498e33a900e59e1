"""The slice list of a fastMRI folder, cached between launches and checked before use.

fastmri's ``SliceDataset`` can skip its scan (one HDF5 open and header parse per volume) by
reading ``raw_samples`` from a pickle keyed by the folder — but it never checks that the folder
still holds the files it scanned, writes the pickle in place (a killed run leaves a broken one)
and shares one file between folders.  Here each folder gets its own cache file in fastmri's
format (``{root: raw_samples}``, so ``SliceDataset(use_dataset_cache=True)`` reads it), written
atomically, with a record beside it of what was scanned — every entry's name, size and
modification time, the challenge and mode — that must match a fresh listing (one ``stat`` per
entry) for the cache to be used.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

from ..atomic import atomic_path

VERSION = 1
KEY = "__mrijac__"


def default_cache_dir() -> Path:
    """``$MRIJAC_CACHE`` or ``$XDG_CACHE_HOME/mrijac`` (``~/.cache/mrijac``)."""
    env = os.environ.get("MRIJAC_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mrijac"


def cache_file(root: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The cache file of data folder ``root`` (named from its absolute path)."""
    key = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:16]
    return Path(cache_dir or default_cache_dir()) / "datasets" / f"{Path(root).name}-{key}.pkl"


def listing(root: str | Path) -> tuple:
    """``(name, size, mtime_ns)`` of every entry of ``root``, sorted."""
    out = []
    with os.scandir(root) as it:
        for e in it:
            st = e.stat()
            out.append((e.name, st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


def signature(root: str | Path, challenge: str, mode: str) -> dict:
    """What a scan of ``root`` depends on (compared in full before a cache is used)."""
    return {
        "version": VERSION,
        "root": str(root),  # as given: the key of the slice list, and the form of its file names
        "challenge": challenge,
        "mode": mode,
        "listing": listing(root),
    }


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sig")


def is_valid(path: Path, sig: dict) -> bool:
    """``path`` holds the slice list of a folder scanned when it looked as ``sig`` says (read
    from the small record beside it; the list itself is read once, by ``SliceDataset``)."""
    if not path.is_file() or not sidecar(path).is_file():
        return False
    try:
        with open(sidecar(path), "rb") as f:
            return pickle.load(f) == sig
    except Exception:  # truncated, foreign or from another version: scan again
        return False


def write(path: Path, root: Path, raw_samples: list, sig: dict) -> None:
    """Write ``{root: raw_samples}`` (fastmri's format), then the record ``sig`` beside it,
    each atomically: a run killed in between leaves a record that no longer matches."""
    with atomic_path(sidecar(path)) as tmp:
        tmp.write_bytes(b"")  # invalidate first
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump({root: list(raw_samples)}, f, protocol=pickle.HIGHEST_PROTOCOL)
    with atomic_path(sidecar(path)) as tmp, open(tmp, "wb") as f:
        pickle.dump(sig, f, protocol=pickle.HIGHEST_PROTOCOL)
