"""`ownlm import` is all or nothing: a bundle of two variants killed at any step leaves,
once the next import has run, both variants in place or neither, and that import
needs no --replace; a full disk is one line and keeps what the run had."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from ownlm import dirswap
from ownlm.cli import app
from ownlm.errors import StoreError
from ownlm.ownership.bundle import import_bundle, write_bundle
from ownlm.run import forgotten_key
from ownlm.store import AdapterStore
from tests.ownership.test_bundle import _other_adapter_as_u1, _run

STORES = ("adapters", "adapters-peft")


class Killed(BaseException):
    """A SIGKILL, as the process sees it: no handler runs."""


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A run whose user u1 has an oppu and a peft adapter, and u1's bundle of both."""
    tmp = tmp_path_factory.mktemp("restore")
    run = _run(tmp / "run")
    shutil.copytree(run.dir / "adapters/users/u1", run.dir / "adapters-peft/users/u1")
    shutil.copytree(run.dir / "adapters/users/u2", run.dir / "adapters-peft/users/u2")
    done = write_bundle(run, "u1", tmp / "u1.tar")
    assert done.adapters == ["oppu", "peft"]
    return SimpleNamespace(run=run, bundle=done.path)


def _run_without_u1(tmp_path, made, other: bool = False) -> Path:
    """A copy of the run without u1's adapters (`other`: u1 holds u2's weights instead)."""
    run_dir = tmp_path / "run"
    shutil.copytree(made.run.dir, run_dir)
    for store in STORES:
        AdapterStore(run_dir / store).delete("user:u1")
        if other:
            _other_adapter_as_u1(run_dir, store)
    return run_dir


def _u1(run_dir: Path) -> list[str | None]:
    """Each store's u1 adapter: "bundle", "other" (u2's weights) or None (absent)."""
    out = []
    for store in STORES:
        s = AdapterStore(run_dir / store)
        if not s.exists("user:u1"):
            out.append(None)
            continue
        s.verify("user:u1")
        same = s.manifest("user:u1").sha256 == s.manifest("user:u2").sha256
        out.append("other" if same else "bundle")
    return out


def _scratch(run_dir: Path) -> list[Path]:
    prefixes = (dirswap.STAGED, dirswap.PREVIOUS, dirswap.JOURNAL, ".tmp-", ".old-")
    return [p for p in run_dir.rglob("*") if p.name.startswith(prefixes)]


def _killed_at(monkeypatch, n: int) -> None:
    """The import dies at its n-th rename or staged file write."""
    calls = [0]
    real_replace, real_write = os.replace, Path.write_bytes

    def step():
        calls[0] += 1
        if calls[0] == n:
            raise Killed

    def replace(src, dst):
        step()
        real_replace(src, dst)

    def write_bytes(self, data):
        step()
        return real_write(self, data)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(Path, "write_bytes", write_bytes)


@pytest.mark.parametrize("other", [False, True], ids=["new", "over-another"])
@pytest.mark.parametrize("n", range(1, 15))
def test_a_killed_import_is_all_or_none_and_a_rerun_needs_no_replace(
    tmp_path, made, monkeypatch, n, other
):
    run_dir = _run_without_u1(tmp_path, made, other)
    before = ["other", "other"] if other else [None, None]
    _killed_at(monkeypatch, n)
    try:
        import_bundle(made.bundle, run_dir, replace=other)
    except Killed:
        pass
    monkeypatch.undo()
    monkeypatch.setattr(dirswap, "pid_alive", lambda pid: False)  # the killed import is gone
    dirswap.recover(run_dir)
    assert _u1(run_dir) in (before, ["bundle", "bundle"]), n
    done = import_bundle(made.bundle, run_dir, replace=other)
    assert _u1(run_dir) == ["bundle", "bundle"] and not _scratch(run_dir)
    assert sorted(done.adapters + done.unchanged) == ["oppu", "peft"]


KILL_MID_SWAP = """
import os, signal, sys
from ownlm.ownership.bundle import import_bundle
real, calls = os.replace, [0]
def replace(src, dst):
    calls[0] += 1
    if calls[0] == 4:  # journal "staging", journal "decided", oppu in place: peft next
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)
os.replace = replace
import_bundle(sys.argv[1], sys.argv[2])
"""


def test_a_sigkill_between_two_variants_is_finished_by_the_next_import(tmp_path, made):
    run_dir = _run_without_u1(tmp_path, made)
    cmd = [sys.executable, "-c", KILL_MID_SWAP, str(made.bundle), str(run_dir)]
    assert subprocess.run(cmd, timeout=120).returncode == -9
    assert _u1(run_dir) == ["bundle", None]  # cut short: one variant in place
    r = CliRunner().invoke(app, ["import", str(made.bundle), "--run-dir", str(run_dir)])
    assert r.exit_code == 0, r.output
    assert "before it: finished a cut-short swap of adapters/users/u1, adapters-peft" in r.output
    assert _u1(run_dir) == ["bundle", "bundle"] and not _scratch(run_dir)


def test_a_full_disk_while_staging_is_one_line_and_keeps_the_run(tmp_path, made, monkeypatch):
    run_dir = _run_without_u1(tmp_path, made, other=True)
    real_write, calls = Path.write_bytes, [0]

    def write_bytes(self, data):  # the disk fills while the peft adapter is staged
        calls[0] += 1
        if calls[0] == 5:
            raise OSError(28, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    args = ["import", str(made.bundle), "--run-dir", str(run_dir), "--replace"]
    r = CliRunner().invoke(app, args)
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and "Traceback" not in r.output, r.output
    assert lines[0].startswith(
        f"error: no space left on the disk that holds '{run_dir / 'adapters-peft' / 'users'}'"
    )
    assert _u1(run_dir) == ["other", "other"] and not _scratch(run_dir)


def test_a_forgotten_user_is_not_imported_back(tmp_path, made):
    run_dir = _run_without_u1(tmp_path, made)
    (run_dir / "run.json").write_text(json.dumps({"forgotten": [forgotten_key("u1")]}))
    with pytest.raises(StoreError, match="u1 was forgotten from run .* never brought back"):
        import_bundle(made.bundle, run_dir)
    assert _u1(run_dir) == [None, None]
