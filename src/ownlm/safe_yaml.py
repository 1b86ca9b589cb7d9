"""YAML as ownlm reads it (configs, task files, the files `forget` scans): PyYAML's safe
loader, a document whose aliases expand past a small bound refused, every problem one line.

PyYAML resolves an alias (`*a`) to its anchor's (`&a`) node without copying it, so a
few hundred bytes of nested aliases stand for a million values (a "billion laughs"),
which whatever walks the result (the config's checks, an error message quoting it,
`forget`'s scan) then pays for in time and memory. So the composed node graph is walked
first, each node's expanded size counted once, and such a document is refused before
any value is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ownlm.errors import ConfigError

MAX_ALIAS_VALUES = 10_000  # values aliases may repeat in all: a config's anchors repeat dozens
MAX_PROBLEM_CHARS = 160  # PyYAML's problem text may quote the document


def load_yaml_file(path: Path, what: str, fix: str) -> Any:
    """The YAML in the file `path` (UTF-8, a BOM is fine), loaded as `load_yaml` does;
    a missing file, a directory or bytes that are not UTF-8 said in one line, naming
    `what` it is ("config file", "task file") and, for a wrong path, `fix`."""
    if not path.is_file():
        state = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"{what} {path} {state}; {fix}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{what} {path} is not UTF-8 (byte {e.object[e.start]:#04x} at offset "
            f"{e.start}); re-encode it as UTF-8"
        ) from None
    return load_yaml(text, f"{what} {path}")


def load_yaml(text: str, what: str) -> Any:
    """The YAML document in `text` (None when empty); a ConfigError naming `what` (e.g.
    "config file x.yaml") when it is not valid YAML, nests too deep, refers to itself or
    repeats more than MAX_ALIAS_VALUES values through aliases."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_aliases(node, what)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or " ".join(str(e).split())
        if len(problem) > MAX_PROBLEM_CHARS:
            problem = problem[: MAX_PROBLEM_CHARS - 3] + "..."
        raise ConfigError(f"{what} is not valid YAML: {problem}{at}; fix it") from None
    except RecursionError:
        raise ConfigError(f"{what} nests too deeply for YAML; flatten it") from None
    finally:
        loader.dispose()


def _check_aliases(root: yaml.Node, what: str) -> None:
    sizes: dict[int, int] = {}  # id(node) -> values it expands to, itself included
    if _expanded(root, sizes, set(), what) - len(sizes) > MAX_ALIAS_VALUES:
        raise ConfigError(
            f"{what}: its aliases (*name) repeat more than {MAX_ALIAS_VALUES} values (a "
            "'billion laughs'); write the values out, or repeat fewer"
        )


def _expanded(node: yaml.Node, sizes: dict[int, int], open_: set[int], what: str) -> int:
    """How many values `node` stands for once every alias in it is expanded; memoised by
    node, so a graph of n nodes costs n steps however far it expands."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:  # `&a [*a]`: an anchor inside itself
        raise ConfigError(f"{what}: an alias refers to the value that holds it; remove it")
    open_.add(key)
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded(child, sizes, open_, what) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(
            _expanded(k, sizes, open_, what) + _expanded(v, sizes, open_, what)
            for k, v in node.value
        )
    else:
        size = 1
    open_.discard(key)
    sizes[key] = size
    return size
