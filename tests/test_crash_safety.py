"""`ownlm train` SIGKILLed at several moments: the rerun completes every user, nothing
half-written is ever loadable, and no scratch directory is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import TINY_OVERRIDES

SCRATCH = (".tmp-", ".old-", ".del-")


def _settings(tmp_path: Path) -> list[str]:
    keys = [
        f"output_dir={tmp_path / 'runs'}",
        "name=crash",
        "data=demo-tags",
        "max_users=6",
        *[o for o in TINY_OVERRIDES if not o.startswith("user.epochs")],
        "user.epochs=30",  # a user stage of a few seconds, long enough to be killed in
    ]
    return [a for k in keys for a in ("--set", k)]


def _train(tmp_path: Path, kill_at: str = "") -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # cwd tmp_path: its own .cache
    env.pop("OWNLM_TEST_KILL_AT", None)
    if kill_at:
        env["OWNLM_TEST_KILL_AT"] = kill_at
    cmd = [sys.executable, "-m", "ownlm.cli", "train", *_settings(tmp_path)]
    return subprocess.Popen(
        cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _scratch(run_dir: Path) -> list[str]:
    return sorted(
        str(p.relative_to(run_dir))
        for p in run_dir.rglob("*")
        if p.name.startswith(SCRATCH) or p.name.endswith(".tmp")
    )


def _loadable_users(run_dir: Path) -> dict[str, list[str]]:
    """Per store, the users whose adapter verifies against its manifest and the base."""
    from ownlm.run import Run
    from ownlm.store import AdapterStore

    fp = Run.open(run_dir).base_fingerprint()
    out = {}
    for variant in ("adapters", "adapters-peft"):
        store = AdapterStore(run_dir / variant)
        out[variant] = [n for n in store.names("user") if store.verify(n, fp)]
    return out


def _kill_when(proc: subprocess.Popen, folder: Path, pattern: str, delay: float) -> None:
    """SIGKILL `proc` `delay` seconds after a file matching `pattern` appears in `folder`
    (the step before is done)."""
    end, path = time.time() + 240, folder / pattern
    while not any(folder.glob(pattern)):
        assert proc.poll() is None, f"train ended before {path} appeared:\n{proc.stdout.read()}"
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.05)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "train finished before it could be killed"


def _finish(tmp_path: Path) -> None:
    proc = _train(tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out


def test_train_killed_during_users_and_store_writes_resumes_cleanly(tmp_path):
    run_dir = tmp_path / "runs" / "crash"
    # 1. killed inside the second adapter write (the first user's): weights on disk, no
    #    manifest, no swap yet
    proc = _train(tmp_path, kill_at="write:2")
    assert proc.wait(timeout=300) == -signal.SIGKILL, proc.stdout.read()
    assert _scratch(run_dir), "the kill left no half-written adapter to test with"
    assert sum(map(len, _loadable_users(run_dir).values())) == 0
    # 2. killed while the "peft" users train (the "oppu" ones are stored by then)
    _kill_when(_train(tmp_path), run_dir / "adapters" / "users", "*/ownlm.json", delay=0.3)
    # 3. the rerun completes every user with history, and sweeps what the kills left
    _finish(tmp_path)
    users = _loadable_users(run_dir)
    from ownlm.run import Run

    expected = sorted(u.name for u in Run.open(run_dir).split.test if u.history)
    assert users == {"adapters": expected, "adapters-peft": expected}
    assert _scratch(run_dir) == []
