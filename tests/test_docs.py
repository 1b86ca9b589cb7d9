"""The documentation: the mkdocs site builds with --strict, no page is left out of its
nav, and the README stays short and keeps its two fresh-machine commands at the top."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"


def _nav_pages(node) -> list[str]:
    """Every page path named in mkdocs.yml's nav, at any depth."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [page for item in node for page in _nav_pages(item)]
    if isinstance(node, dict):
        return [page for value in node.values() for page in _nav_pages(value)]
    return []


def _first_code_block(text: str) -> str:
    match = re.search(r"^```[^\n]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    assert match, "README.md has no fenced code block"
    return match.group(1)


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
    reason="mkdocs-material and mkdocstrings[python] are in the dev extra: pip install -e '.[dev]'",
)
def test_site_builds_strict(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 250, f"README.md has {len(lines)} lines; move detail into docs/"


def test_every_docs_page_is_in_the_nav():
    config = yaml.load(MKDOCS_YML.read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
    assert config.get("docs_dir", "docs") == "docs"
    in_nav = set(_nav_pages(config["nav"]))
    missing = [p for p in in_nav if not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml's nav names pages that do not exist: {missing}"
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    orphans = sorted(pages - in_nav)
    assert not orphans, f"pages in docs/ that mkdocs.yml's nav does not reach: {orphans}"


def test_readme_starts_with_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert text.index("```") < text.index("\n## "), "the commands come before the first section"
    block = _first_code_block(text)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands[:2] == ["make demo", "make test"], commands
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE), f"no `{target}` target"
