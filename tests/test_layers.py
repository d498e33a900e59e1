"""Modules import downward only: operators → models/jacobian/data → tasks/inference → train,
evaluate → cli.  Parsed from the source (imports inside functions count too)."""

import ast
from pathlib import Path

import mrijac

ROOT = Path(mrijac.__file__).parent
LAYER = {
    "atomic": 0,
    "names": 0,
    "operators": 0,
    "metrics": 0,
    "runtime": 0,
    "models": 1,
    "jacobian": 1,
    "data": 1,
    "regularizers": 1,
    "config": 2,
    "tasks": 2,
    "checkpoint": 2,
    "inference": 2,
    "train": 3,
    "evaluate": 3,
    "demo": 4,
    "sweep": 4,
    "cli": 4,
}


def _unit(parts: list[str]) -> str:
    return parts[0] if parts else ""


def _imports(path: Path):
    """Top-level mrijac units that ``path`` imports (relative or absolute)."""
    rel = path.relative_to(ROOT).with_suffix("").parts
    pkg = list(rel[:-1]) if rel[-1] != "__init__" else list(rel[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                target = base + (node.module.split(".") if node.module else [])
                names = [a.name for a in node.names] if not target else []
                yield _unit(target) if target else _unit(names)
            elif node.module and node.module.split(".")[0] == "mrijac":
                yield _unit(node.module.split(".")[1:])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "mrijac":
                    yield _unit(a.name.split(".")[1:])


def test_every_unit_has_a_layer():
    units = {
        p.stem if p.is_file() else p.name
        for p in ROOT.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()
    }
    assert units <= set(LAYER), f"assign a layer to {sorted(units - set(LAYER))}"


def test_no_upward_import():
    bad = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("").parts
        me = rel[0] if rel[0] != "__init__" else None
        if me is None:
            continue
        for unit in _imports(path):
            if not unit or unit == me or unit == "__init__":
                continue
            if LAYER[unit] > LAYER[me] or (LAYER[unit] == LAYER[me] == 3):
                bad.append(f"{path.relative_to(ROOT)} imports mrijac.{unit}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The parser must catch both import styles (or the test above could never fail)."""
    p = ROOT / "evaluate" / "_probe_upward.py"
    p.write_text("from ..train import trainer\nimport mrijac.cli\n")
    try:
        assert set(_imports(p)) == {"train", "cli"}
    finally:
        p.unlink()
