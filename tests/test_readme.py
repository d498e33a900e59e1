"""The README's Python examples run as written (every ```python block, in order, one namespace)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert python_blocks(), "README.md lost its Python examples"


@pytest.mark.parametrize("i", range(len(python_blocks())))
def test_readme_python_block_runs(i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    exec(compile(python_blocks()[i], f"README.md block {i}", "exec"), {})
