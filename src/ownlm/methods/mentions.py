"""Does a file name a user? What `forget` checks every file of a run with.

A user id is often a short number ("42"), so a byte search would find it in every weight
file and in every count. Only text is read: the strings of JSON and YAML files (numbers
are never ids), the JSON header of safetensors files (their metadata and tensor names),
and plain text files; an id counts where it stands as a word of its own (`user:42`,
`42-q0`, `"42"`), not inside a longer number or word (`0.42`, `142`, `t420`).
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import yaml

TEXT_SUFFIXES = {".txt", ".log", ".csv", ".jsonl", ".md", ".tsv"}


def id_pattern(user: str) -> re.Pattern:
    """`user` as a word of its own: not inside a longer word or a decimal number."""
    return re.compile(rf"(?<![\w.]){re.escape(user)}(?![\w]|\.\d)")


def _strings(obj):
    """Every string of a parsed JSON/YAML value, keys included."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _strings(v)


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file (tensor names, shapes, metadata)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return {}
        (n,) = struct.unpack("<Q", head)
        if n > 100 << 20:
            return {}
        return json.loads(f.read(n))


def file_strings(path: Path) -> list[str]:
    """The text of a file that could name a user ([] for binaries such as images)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return list(_strings(json.loads(path.read_text(encoding="utf-8"))))
        if suffix in (".yaml", ".yml"):
            return list(_strings(yaml.safe_load(path.read_text(encoding="utf-8"))))
        if suffix == ".safetensors":
            return list(_strings(safetensors_header(path)))
        if suffix in TEXT_SUFFIXES:
            return [path.read_text(encoding="utf-8", errors="replace")]
    except (ValueError, yaml.YAMLError):  # not what its suffix says: read it as text
        return [path.read_bytes().decode("utf-8", errors="replace")]
    return []


def names_user(path: Path, user: str) -> bool:
    """True when `path`'s text names `user` (see the module docstring)."""
    pattern = id_pattern(user)
    return any(pattern.search(s) for s in file_strings(path))
