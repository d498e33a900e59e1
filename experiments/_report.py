"""Write an experiment's results: ``<out>.json`` (data) and ``<out>.md`` (table), then print it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def write_report(out: Path, data, lines: list[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def mode_parser(doc: str, config: Path | None = None, report_only: bool = True) -> argparse.ArgumentParser:
    """The command line the paper reproductions share: ``--quick`` (the committed CPU run) or
    ``--full`` (the paper's protocol), optionally ``--report-only``, and ``--config`` when the
    protocol lives in a YAML file (``config``: its default)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--quick", action="store_true", help="the committed CPU run (its budget: the protocol)")
    mode.add_argument("--full", action="store_true", help="the paper's protocol")
    if report_only:
        mode.add_argument("--report-only", action="store_true", help="rewrite the report from <out>.json")
    if config is not None:
        ap.add_argument("--config", default=str(config))
    return ap
