"""The run's locks: re-entrant in a thread, exclusive across processes, released by the
kernel when the holder is killed; whole-file writes and the scratch of dead writers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ownlm.files import HOST, real_name, sweep_files, write_file
from ownlm.store.guard import LOCKS, BusyError, lock_key, user_lock

HOLD = """
import sys, time
from pathlib import Path
from ownlm.store.guard import user_lock
with user_lock(Path(sys.argv[1]), sys.argv[2], "update"):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(run_dir: Path, user: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir), user], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_lock_held_by_another_process_is_refused_naming_it_and_freed_by_its_death(tmp_path):
    proc = _holder(tmp_path, "gus")
    try:
        with pytest.raises(BusyError, match=rf"user gus .* \(pid {proc.pid}: update\); wait"):
            with user_lock(tmp_path, "gus", "forget"):
                pass
        with user_lock(tmp_path, "hana", "update"):  # another user's lock is free
            pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with user_lock(tmp_path, "gus", "forget", wait=5):  # the kernel released it
        pass


def test_a_waiter_gets_the_lock_when_the_holder_ends(tmp_path):
    proc = _holder(tmp_path, "gus")
    t0 = time.monotonic()
    subprocess.Popen(["sh", "-c", f"sleep 1; kill {proc.pid}"])
    with user_lock(tmp_path, "gus", "forget", wait=30):
        waited = time.monotonic() - t0
    proc.wait()
    assert 0.5 < waited < 20


def test_locks_are_reentrant_in_a_thread_and_name_no_user(tmp_path):
    with user_lock(tmp_path, "gus", "forget"), user_lock(tmp_path, "gus", "forget"):
        files = list((tmp_path / LOCKS).iterdir())
        assert [f.name for f in files] == [f"user-{lock_key('gus')}.lock"]
        assert "gus" not in files[0].read_text() and files[0].read_text().endswith("forget")


def test_whole_file_writes_leave_no_scratch_and_dead_writers_scratch_is_swept(tmp_path):
    path = tmp_path / "tokens.json"
    write_file(path, "{}", mode=0o600)
    assert path.read_text() == "{}" and oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.json"]
    dead = tmp_path / f".run.json.tmp-999999999-{HOST}-ab12cd34"
    live = tmp_path / f".run.json.tmp-{os.getpid()}-{HOST}-ab12cd34"
    legacy = [tmp_path / ".gus.jsonl.1a2b3c4d.tmp", tmp_path / ".tokens.json.tmp-1a2b3c4d"]
    for p in (dead, live, *legacy):
        p.write_text("gus")
    assert real_name(dead.name) == "run.json" and real_name(legacy[0].name) == "gus.jsonl"
    assert sorted(sweep_files(tmp_path)) == sorted([dead, *legacy])
    assert live.exists()  # its writer (this process) is alive
