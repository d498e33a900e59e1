"""Write an experiment's results: ``<out>.json`` (data) and ``<out>.md`` (table), then print it."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(out: Path, data, lines: list[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
