"""Who may write what in a run, at the same time as whom.

Every command that writes a user (the user stages, `update`, `import`, `token create`,
`forget`) holds that user's lock while it decides and writes; `run.json` is only
rewritten under the record lock, as a read-modify-write. Locks are `flock`s on files in
`<run>/.locks/`: the kernel releases them when their process dies, so a SIGKILLed
command never leaves a lock behind. A user's lock file is named by a one-way hash of
the id (`lock_key`), and holds only the holder's pid and command: nothing in it names
the user.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ownlm.errors import StoreError
from ownlm.log import get_logger
from ownlm.paths import LOCKS, RunPaths  # <run>/.locks/: user-<key>.lock, record.lock

try:  # POSIX; elsewhere only threads of one process are kept apart
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

log = get_logger(__name__)
FORGET_WAIT = 600.0  # seconds forget waits for a command writing the user to finish


class BusyError(StoreError):
    """Another process holds the lock a command needs (it names the holder)."""


def lock_key(user: str) -> str:
    """The one-way key a user's lock file is named by (no file names the id itself)."""
    return hashlib.sha256(f"ownlm-lock\0{user}".encode()).hexdigest()[:24]


_held: dict[tuple[str, int], int] = {}  # (lock path, thread) -> depth: re-entrant per thread
_held_mutex = threading.Lock()


def _holder(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip() or "?"
    except OSError:
        return "?"


@contextlib.contextmanager
def exclusive(path: Path, what: str, wait: float, busy: str) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if need be) for the `with` block.
    Re-entrant within a thread. `wait`: seconds to wait for another holder (0: refuse
    at once); then BusyError(`busy`, its `{holder}` the holder's pid and command)."""
    key = (str(path), threading.get_ident())
    with _held_mutex:
        if key in _held:
            _held[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _held_mutex:
                _held[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _acquire(fd, wait, busy)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {what}".encode(), 0)
        with _held_mutex:
            _held[key] = 1
        try:
            yield
        finally:
            with _held_mutex:
                _held.pop(key, None)
    finally:
        os.close(fd)  # closing releases the flock


def _acquire(fd: int, wait: float, busy: str) -> None:
    if fcntl is None:  # pragma: no cover
        return
    deadline, told = time.monotonic() + wait, False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                pid, _, what = _holder(fd).partition(" ")
                raise BusyError(busy.format(holder=f"pid {pid}: {what or '?'}")) from None
            if not told and wait >= 1:
                log.info(f"waiting for pid {_holder(fd)} to finish (at most {wait:.0f} s)")
                told = True
            time.sleep(0.05)


def user_lock(run_dir: Path, user: str, what: str, wait: float = 0.0):
    """The lock of one user of a run: held by whatever writes their adapters, history,
    tokens or record, and by `forget`. `what` names the command (shown to a waiter)."""
    busy = (
        f"user {user} of run {run_dir} is being written by another ownlm command "
        "({holder}); wait for it to finish, then run this again"
    )
    return exclusive(Path(run_dir) / LOCKS / f"user-{lock_key(user)}.lock", what, wait, busy)


def record_lock(run_dir: Path, what: str = "run.json"):
    """The lock of `<run>/run.json`: every read-modify-write of it holds it (a few ms)."""
    busy = f"{Path(run_dir) / 'run.json'} is being rewritten by another process ({{holder}}); try again"
    return exclusive(Path(run_dir) / LOCKS / "record.lock", what, 60.0, busy)


# -- users a run has forgotten -------------------------------------------------------------
def forgotten_key(user_id: str) -> str:
    """The one-way key under which run.json remembers a user erased by `ownlm forget`, so
    that the run leaves them out of its data from then on without naming them."""
    return hashlib.sha256(f"ownlm-forgotten\0{user_id}".encode()).hexdigest()


def forgotten_keys(run_dir: Path) -> set[str]:
    """The `forgotten_key`s run.json keeps, read afresh (empty when it is unreadable)."""
    try:
        record = json.loads(RunPaths(run_dir).record.read_text())
    except (OSError, ValueError, RecursionError):
        return set()
    keys = record.get("forgotten") if isinstance(record, dict) else None
    return {k for k in keys if isinstance(k, str)} if isinstance(keys, list) else set()


class ForgottenUsers:
    """`forgotten_keys` of a run for a long-lived reader (the server): run.json is read
    again only when its (mtime, inode, size) changed. A user marked there is gone even
    while a forget cut short has left some of their files: nobody serves them or gives
    them a token."""

    def __init__(self, run_dir: Path):
        self.path = RunPaths(run_dir).record
        self._seen: tuple | None = None
        self._keys: set[str] = set()
        self._mutex = threading.Lock()

    def keys(self) -> set[str]:
        """The `forgotten_key`s now: one stat, run.json read again only when it changed."""
        try:
            st = os.stat(self.path)
            sig = (st.st_mtime_ns, st.st_ino, st.st_size)
        except OSError:
            sig = None
        with self._mutex:
            if sig != self._seen:
                self._keys = forgotten_keys(self.path.parent) if sig else set()
                self._seen = sig
            return self._keys

    def __contains__(self, user_id: str) -> bool:
        return forgotten_key(user_id) in self.keys()
