"""Does a file name a user? What `forget` checks every file of a run with.

A user id is often a short number ("42"), so a byte search would find it in every weight
file and in every count. Only text is read: the strings of JSON and YAML files (numbers
are never ids), the JSON header of safetensors files (their metadata and tensor names),
plain text files, and the member names and JSON/YAML/text members of tar archives (an
ownership bundle exported into the run holds the user's history); an id counts where it
stands as a word of its own (`user:42`, `42-q0`, `"42"`), not inside a longer number or
word (`0.42`, `142`, `t420`).
"""

from __future__ import annotations

import json
import re
import struct
import tarfile
import zlib
from pathlib import Path

from ownlm.errors import ConfigError
from ownlm.files import real_name
from ownlm.safe_yaml import load_yaml

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


def _text_strings(name: str, read) -> list[str]:
    """The strings of a JSON/YAML/text file named `name` whose bytes `read()` gives."""
    suffix = Path(name).suffix.lower()
    if suffix not in (".json", ".yaml", ".yml", *TEXT_SUFFIXES):
        return []
    data = read()
    try:
        if suffix == ".json":
            return list(_strings(json.loads(data.decode("utf-8"))))
        if suffix in (".yaml", ".yml"):
            return list(_strings(load_yaml(data.decode("utf-8"), name)))
    except (ValueError, RecursionError, ConfigError):  # not YAML, or a billion laughs
        pass
    return [data.decode("utf-8", errors="replace")]


MAX_ARCHIVE_MEMBERS, MAX_MEMBER_BYTES = 1000, 16 << 20


def archive_strings(path: Path) -> list[str]:
    """Member names and the text of the JSON/YAML/text members of a tar archive (e.g. a
    user's ownership bundle exported into the run: its index, profile and history)."""
    out = []
    try:
        with tarfile.open(path, "r:*") as tar:
            for n, info in enumerate(tar):
                if n >= MAX_ARCHIVE_MEMBERS:
                    break
                out.append(info.name)
                if info.isreg() and info.size <= MAX_MEMBER_BYTES:
                    out += _text_strings(info.name, lambda i=info: tar.extractfile(i).read())
    except (tarfile.TarError, EOFError, OSError, zlib.error):
        pass  # a cut-short archive: what was read so far
    return out


def file_strings(path: Path) -> list[str]:
    """The text of a file that could name a user ([] for binaries such as weights). A
    writer's scratch copy (`.run.json.tmp-<pid>-...`) is read as the file it stands
    for; a file of another suffix is read as text when it is UTF-8 text."""
    name = real_name(path.name) or path.name
    suffix = Path(name).suffix.lower()
    try:
        if suffix == ".safetensors":
            return list(_strings(safetensors_header(path)))
        if suffix in (".json", ".yaml", ".yml", *TEXT_SUFFIXES):
            return _text_strings(name, path.read_bytes)
        if tarfile.is_tarfile(path):
            return archive_strings(path)
        return _plain_text(path)
    except (ValueError, RecursionError):  # not what its suffix says: read it as text
        return [path.read_bytes().decode("utf-8", errors="replace")]
    except OSError:  # unreadable (a dangling link): nothing to read
        return []


def _plain_text(path: Path) -> list[str]:
    """A file of no known suffix, as text when it is UTF-8 (a binary seldom is)."""
    if path.stat().st_size > MAX_MEMBER_BYTES:
        return []
    try:
        return [path.read_bytes().decode("utf-8")]
    except UnicodeDecodeError:
        return []


def names_user(path: Path, user: str) -> bool:
    """True when `path`'s text names `user` (see the module docstring)."""
    pattern = id_pattern(user)
    return any(pattern.search(s) for s in file_strings(path))
