"""Whole-file writes that a kill cannot cut in half, and the scratch they may leave.

Small files (run.json, tokens.json, a user's updates) are written whole under a scratch
name that carries the writer's pid and host (`.<name>.tmp-<pid>-<host>-<rand>`), then
renamed into place: a reader sees the old file or the new one, never half of one.
`sweep_files` removes the scratch a dead writer left; `real_name` gives the file a
scratch copy stands for, so that `forget` reads it as that file. A foundation module
(no ownlm imports): data, store and run all write this way.
"""

from __future__ import annotations

import os
import re
import socket
import time
import uuid
import zlib
from pathlib import Path

HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"
# scratch file names: ours, and the older forms (no owner: always a dead writer's)
_SCRATCH_FILE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-[0-9a-f]+$")
_OLD_SCRATCH = (
    re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.tmp$"),  # .gus.jsonl.<hex>.tmp
    re.compile(r"^\.(?P<name>.+)\.tmp-[0-9a-f]{8}$"),  # .tokens.json.tmp-<hex>
    re.compile(r"^(?P<name>run\.json)\.tmp$"),  # run.json.tmp
)


def scratch_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{HOST}-{uuid.uuid4().hex[:8]}")


def write_file(path: Path, data: bytes | str, mode: int = 0o644, mtime_after=None) -> None:
    """Replace `path` whole or not at all: written under `scratch_path`, fsynced, renamed.
    `mode` applies from the first byte (tokens.json: 600). `mtime_after`: an mtime (ns)
    the new file's must exceed (readers that compare signatures see every change)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = scratch_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        if mtime_after is not None:
            now = max(time.time_ns(), mtime_after + 1)
            os.utime(tmp, ns=(now, now))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write leaves no copy of what it held


def real_name(name: str) -> str | None:
    """The file a scratch file stands for (`.run.json.tmp-1-ab12cd34-ff` -> `run.json`);
    None when `name` is no scratch file."""
    for pattern in (_SCRATCH_FILE, *_OLD_SCRATCH):
        m = pattern.match(name)
        if m:
            return m["name"]
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def abandoned_file(path: Path) -> bool:
    """A scratch file whose writer is gone: one of ours whose pid is dead on this host,
    or one of the older forms (they carry no owner, and no current writer makes them)."""
    m = _SCRATCH_FILE.match(path.name)
    if m:
        return m["host"] == HOST and not pid_alive(int(m["pid"]))
    return real_name(path.name) is not None


def sweep_files(folder: Path) -> list[Path]:
    """Remove the scratch files dead writers left in `folder` (not below); returns them."""
    if not folder.is_dir():
        return []
    gone = []
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and not entry.is_symlink() and abandoned_file(entry):
            entry.unlink(missing_ok=True)
            gone.append(entry)
    return gone
