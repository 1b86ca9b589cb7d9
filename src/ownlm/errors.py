"""Errors ownlm raises on bad input. Each message names the bad value and the fix.

The type says what went wrong, so callers branch on it, never on a message's text:
the CLI prints any `OwnlmError` as one line, the server picks the HTTP status by type
(`ownlm.serve.errors`).
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path


class OwnlmError(Exception):
    """Base class: a problem the user can fix; the CLI prints it without a traceback."""


class DataError(OwnlmError):
    """A data file is missing, malformed, or lacks a field a task needs."""


class ConfigError(OwnlmError):
    """A config value, command-line option or API argument is invalid."""


class StoreError(OwnlmError):
    """An adapter in the store is corrupt, or was trained for another base model."""


class NotFoundError(StoreError):
    """Nothing is stored under the name asked for (no adapter, no stage result)."""


class RequestError(OwnlmError):
    """A generation request the model cannot run as given (e.g. longer than its context)."""


def shown(value, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters: messages stay one short line even when
    a hostile file holds a megabyte-long value."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(str(value))} chars)"


_ELSEWHERE = "or point ownlm at another folder (--set output_dir=DIR, or --run-dir DIR)"


def os_problem(e: OSError) -> str:
    """An operating-system error (full disk, read-only or missing folder, a file where a
    folder should be) as one line naming the path and the fix."""
    path = _path_of(e)
    where = shown(path, 200) if path else "a file"
    code = e.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        # the folder, not the file or a writer's scratch copy (`.tmp-...`) in it
        parents = [p for p in Path(path or "").parents if not p.name.startswith(".")]
        where = shown(str(parents[0]), 200) if path and parents else where
        return (
            f"no space left on the disk that holds {where} ({e.strerror}): free space there "
            f"{_ELSEWHERE}, then rerun; what was stored before is untouched"
        )
    if code == errno.EROFS:
        return f"{where} is on a read-only file system: remount it writable {_ELSEWHERE}"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied on {where}: make it writable for this user {_ELSEWHERE}"
    if code in (errno.EEXIST, errno.ENOTDIR) and path:
        blocker = next((p for p in [Path(path), *Path(path).parents] if p.is_file()), None)
        if blocker is not None:
            return f"{shown(str(blocker), 200)} is a file, not a folder: move it away {_ELSEWHERE}"
    if code == errno.ENOENT:
        return f"{where} does not exist: check the path"
    if code == errno.EISDIR:
        return f"{where} is a folder, not a file: give the path of a file"
    return f"{where}: {e.strerror or e}; check the path and the disk it is on"


def _path_of(e: OSError) -> str | None:
    """The path `e` is about. An OSError names it only when opening failed; a write that
    fills the disk names none, so look in the frames that were writing for it."""
    if e.filename is not None:
        return os.fsdecode(e.filename)
    frames, tb = [], e.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for key in ("path", "filename", "self", "file", "f"):
            value = frame.f_locals.get(key)
            value = getattr(value, "name", value) if hasattr(value, "write") else value
            if isinstance(value, os.PathLike | str) and value:
                return os.fsdecode(value)
    return None


def as_os_error(e: BaseException) -> OSError | None:
    """`e` as the OSError it is or wraps (safetensors reports a full disk as its own
    error type, "... (os error 28)"); None when it is none."""
    if isinstance(e, OSError):
        return e if e.errno is not None else None
    if type(e).__name__ == "SafetensorError":
        found = re.search(r"\(os error (\d+)\)", str(e))
        if found:
            code = int(found[1])  # the traceback keeps the frames that name the file
            return OSError(code, os.strerror(code)).with_traceback(e.__traceback__)
    return None


def problem_line(e: BaseException) -> str | None:
    """What the CLI prints as its one `error:` line for `e`: ownlm's own errors and the
    operating system's; None for a bug, which keeps its traceback."""
    if isinstance(e, OwnlmError):
        return str(e)
    os_error = as_os_error(e)
    return os_problem(os_error) if os_error is not None else None
