"""Claiming a run directory for `ownlm train` and `prepare`: one process at a time (a
lock beside the directory), and never over a run trained from other settings or data
unless it is moved aside first."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ownlm.config import load_config, save_config, training_values
from ownlm.errors import ConfigError, DataError, OwnlmError
from ownlm.log import get_logger
from ownlm.run.record import config_changes, data_record, recorded_roles, split_record

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)


_HELD: dict[str, int] = {}  # run lock path -> open descriptor, held for the process's life


def hold_lock(run_dir: Path) -> None:
    """Take `<output_dir>/.<name>.lock` (an exclusive flock, released when the process
    ends) before a run is claimed, so that two `ownlm train` on one run directory never
    write its base and adapters at once: the second stops, naming the first's pid. The
    lock sits beside the directory so that `--overwrite` can move the directory aside."""
    import fcntl

    path = run_dir.parent / f".{run_dir.name}.lock"
    if str(path) in _HELD:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(
            f"run {run_dir} is being trained by another process (pid {holder}); wait for it "
            "to finish, or train under another name (--set name=...)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _HELD[str(path)] = fd


def claim(run: Run, overwrite: bool) -> None:
    """Make `run.dir` this run's before any work: refuse a directory trained from other
    training keys or data (moved aside first with `overwrite`), then write config.yaml
    and run.json."""
    hold_lock(run.dir)
    if overwrite and run.dir.is_dir() and any(run.dir.iterdir()):
        log.info(f"moved the old run aside to {move_aside(run.dir)}")
    run.recover()
    new = {"config": training_values(run.cfg), "data": data_record(run.file_dataset)}
    problem = _mismatch(run, run.recorded(), new)
    if problem is not None:
        raise problem
    run.dir.mkdir(parents=True, exist_ok=True)
    save_config(run.cfg, run.paths.config)
    with run.edit_record() as record:
        created = record.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if recorded_roles(record) is None:  # fixed now, by id: forget never moves a role
            record["split"] = split_record(run.split)
        record.update(new, created=created)


def _mismatch(run: Run, old: dict | None, new: dict) -> OwnlmError | None:
    """Why `run.dir` cannot be resumed with `new` (None when it can)."""
    fix = (
        f"pass --overwrite to move it aside to {run.dir.name}.old-<time>/ and start afresh, "
        "or train under another name (--set name=...)"
    )
    if old is None:
        old = _unrecorded(run)
        if old is None:
            return None
        if not old:
            return ConfigError(f"{run.dir} holds state that ownlm did not record; {fix}")
    changes = config_changes(old["config"], new["config"])
    if changes:
        more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
        return ConfigError(
            f"{run.dir} was trained with other settings ({', '.join(changes[:3])}{more}); "
            f"rerun with the settings it was trained with, {fix}"
        )
    change = old.get("data") and run.data_change(old["data"], new["data"])
    if change:
        return DataError(f"the data of {run.dir} changed since it was trained: {change}; {fix}")
    return None


def _unrecorded(run: Run) -> dict | None:
    """The record of a run made before run.json: None when the directory holds nothing
    trained, its config.yaml's training keys (data unknown), or {} without a config."""
    state = [p for p in run.dir.iterdir() if p.name != "config.yaml"] if run.dir.is_dir() else []
    if not state:
        return None
    cfg_file = run.paths.config
    if not cfg_file.exists():
        return {}
    log.warning(
        f"{run.dir} has no record of its data (made before ownlm kept one): recording "
        "today's; user adapters are still checked against their own histories"
    )
    return {"config": training_values(load_config(cfg_file)), "data": None}


def move_aside(path: Path) -> Path:
    """Rename `path` to `<path>.old-<time>` (nothing is deleted); returns the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = path.with_name(f"{path.name}.old-{stamp}"), 1
    while aside.exists():
        aside, n = path.with_name(f"{path.name}.old-{stamp}-{n}"), n + 1
    path.rename(aside)
    return aside
