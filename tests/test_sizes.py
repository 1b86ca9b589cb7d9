"""Sizes a reader can hold in mind (#21): no module of ownlm over 400 lines, no function
or method over 60 (from its `def` line to its last line, decorators not counted)."""

from __future__ import annotations

import ast
from pathlib import Path

import ownlm

SRC = Path(ownlm.__file__).parent
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _name(path: Path) -> str:
    return str(path.relative_to(SRC.parent))


def long_files(max_lines: int = MAX_FILE_LINES) -> list[str]:
    """Every module over `max_lines` lines, with its length."""
    out = []
    for path in _sources():
        lines = len(path.read_text().splitlines())
        if lines > max_lines:
            out.append(f"{_name(path)}: {lines} lines")
    return out


def long_functions(max_lines: int = MAX_FUNCTION_LINES) -> list[str]:
    """Every function and method (async too, nested too) over `max_lines` lines, from
    its `def` line to its last, with where it starts and its length."""
    out = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > max_lines:
                    out.append(f"{_name(path)}:{node.lineno} {node.name}: {lines} lines")
    return out


def test_no_module_over_400_lines():
    offenders = long_files()
    assert not offenders, f"modules over {MAX_FILE_LINES} lines (split by concern):\n" + "\n".join(
        offenders
    )


def test_no_function_over_60_lines():
    offenders = long_functions()
    assert not offenders, (
        f"functions over {MAX_FUNCTION_LINES} lines (split into named steps):\n"
        + "\n".join(offenders)
    )


def test_the_rules_see_an_offender(tmp_path, monkeypatch):
    """The checks measure what they claim: a 61-line function and a 401-line module fail."""
    body = "\n".join(f"    x{i} = {i}" for i in range(59))
    package = tmp_path / "ownlm"
    package.mkdir()
    (package / "big.py").write_text(f"@staticmethod\ndef f():\n{body}\n    return 0\n" + "\n" * 339)
    monkeypatch.setattr(f"{__name__}.SRC", package)
    assert long_functions() == ["ownlm/big.py:2 f: 61 lines"]
    assert long_files() == ["ownlm/big.py: 401 lines"]
    assert long_functions(61) == [] and long_files(401) == []
