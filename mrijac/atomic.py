"""Atomic file writes: write to a temporary name in the same folder, then rename."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename,
    on error it is removed (``path`` is never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale(folder: str | Path) -> list[Path]:
    """Remove temporary files that :func:`atomic_path` left in ``folder`` when its process was
    killed (``.<name>.tmp<pid>`` whose process no longer runs); returns what was removed."""
    import re

    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.glob(".*.tmp*"):
        m = re.fullmatch(r"\..+\.tmp(\d+)", p.name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # that process still runs: not ours to remove
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed
