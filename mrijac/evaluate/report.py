"""Evaluation outputs: metrics.json, metrics.csv, report.md and a self-contained report.html."""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_dir(out, overwrite: bool = False):
    """Write into a temporary sibling folder, then move it to ``out`` (nothing half-written).

    Refuses an existing non-empty ``out`` unless ``overwrite``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: names an existing file; --out must be a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} already holds files; use --overwrite to replace them")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would make the results private
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=1, default=_jsonable) + "\n")


def _jsonable(v):
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON serialisable: {type(v)}")


def write_csv(path, rows: list[dict]) -> None:
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def fmt(v, digits=4) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:.{digits}g}"
    return "–" if v is None else str(v)


def _cell(c) -> str:
    return fmt(c).replace("|", "\\|")  # a '|' inside a cell (e.g. |test − train|) must not split it


def md_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; ``|`` inside cells is escaped, so columns stay where they belong."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def split_row(line: str) -> list[str]:
    """Cells of a Markdown table row (``\\|`` is a literal bar inside a cell)."""
    s = line.strip()
    s = s[1:] if s.startswith("|") else s
    s = s[:-1] if s.endswith("|") and not s.endswith("\\|") else s
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", s)]


def markdown_to_html(md: str, base: Path, title: str) -> str:
    """A small Markdown subset (headings, tables, images, paragraphs, code) to one HTML page,
    with every image embedded as base64 so the file stands alone."""
    out, table, in_code = [], [], False

    def flush_table():
        if table:
            rows = [split_row(r) for r in table if not set(r) <= set("|-: ")]
            out.append("<table>")
            for i, r in enumerate(rows):
                tag = "th" if i == 0 else "td"
                out.append("<tr>" + "".join(f"<{tag}>{html.escape(c.strip())}</{tag}>" for c in r) + "</tr>")
            out.append("</table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("```"):
            flush_table()
            out.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            out.append(html.escape(line))
            continue
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("![") and "](" in line:
            alt = line[2 : line.index("]")]
            src = line[line.index("](") + 2 : line.rindex(")")]
            p = base / src
            if p.exists():
                data = base64.b64encode(p.read_bytes()).decode()
                out.append(
                    f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,'
                    f'{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'
                )
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush_table()
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}th{background:#f3f3f3}img{max-width:100%}"
        "pre{background:#f6f6f6;padding:8px}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n"
    )


def write_report(out: Path, md: str, title: str) -> None:
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(markdown_to_html(md, out, title))
