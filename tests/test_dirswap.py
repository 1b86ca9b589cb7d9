"""Several directories replaced together or not at all: a kill at any rename leaves,
once `recover` has run, every target old or every target new, and no scratch behind."""

import os
from pathlib import Path

import pytest

from ownlm import dirswap


class Killed(BaseException):
    """A SIGKILL, as the process sees it: no handler runs."""


def _targets(root: Path) -> list[Path]:
    """Two existing directories (version "old") and one not there yet."""
    out = [root / "a" / "users" / "u1", root / "b" / "users" / "u1", root / "c" / "users" / "u1"]
    for t in out[:2]:
        t.mkdir(parents=True)
        (t / "w.txt").write_text("old")
    return out


def _fill(staged: Path, target: Path) -> None:
    staged.mkdir()
    (staged / "w.txt").write_text("new")
    (staged / "more.txt").write_text(target.parent.parent.name)


def _versions(targets: list[Path]) -> list[str | None]:
    return [(t / "w.txt").read_text() if (t / "w.txt").exists() else None for t in targets]


def _scratch(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.startswith((".new-", ".prev-", ".swap-"))
    )


def test_every_target_is_replaced(tmp_path):
    targets = _targets(tmp_path)
    dirswap.swap_in(tmp_path, targets, _fill)
    assert _versions(targets) == ["new"] * 3 and not _scratch(tmp_path)
    assert (targets[2] / "more.txt").read_text() == "c"


def test_a_failure_while_staging_replaces_nothing(tmp_path):
    targets = _targets(tmp_path)

    def fill(staged, target):
        if target == targets[2]:
            raise OSError(28, "No space left on device")
        _fill(staged, target)

    with pytest.raises(OSError):
        dirswap.swap_in(tmp_path, targets, fill)
    assert _versions(targets) == ["old", "old", None] and not _scratch(tmp_path)


def _kill_at(monkeypatch, n: int, fill_calls: list) -> None:
    """Kill the writer at its n-th rename or staged directory, whichever comes n-th."""
    calls = [0]
    real_replace = os.replace

    def step():
        calls[0] += 1
        if calls[0] == n:
            raise Killed

    def replace(src, dst):
        step()
        real_replace(src, dst)

    monkeypatch.setattr(dirswap.os, "replace", replace)
    monkeypatch.setattr("ownlm.files.os.replace", replace)
    fill_calls.append(step)


@pytest.mark.parametrize("n", range(1, 12))
def test_a_kill_at_any_step_is_finished_or_undone_by_recover(tmp_path, monkeypatch, n):
    targets = _targets(tmp_path)
    steps: list = []
    _kill_at(monkeypatch, n, steps)

    def fill(staged, target):
        steps[0]()
        _fill(staged, target)

    try:
        dirswap.swap_in(tmp_path, targets, fill)
    except Killed:
        pass
    monkeypatch.undo()
    monkeypatch.setattr(dirswap, "pid_alive", lambda pid: False)  # the killed writer is gone
    dirswap.recover(tmp_path)
    assert _versions(targets) in (["old", "old", None], ["new"] * 3), n
    assert not [s for s in _scratch(tmp_path) if not s.startswith("..swap-")]


def test_recover_leaves_a_live_or_foreign_writers_swap_and_one_pointing_outside(
    tmp_path, monkeypatch
):
    targets = _targets(tmp_path)
    journal = tmp_path / f".swap-{os.getpid()}-{dirswap.HOST}-abcd.json"
    dirswap._mark(journal, "staging", [{"target": "a/users/u1", "staged": "x", "previous": "y"}])
    assert dirswap.recover(tmp_path) == [] and journal.exists()  # ours: alive
    journal.unlink()
    monkeypatch.setattr(dirswap, "pid_alive", lambda pid: False)
    elsewhere = tmp_path / ".swap-1-00000000-ab.json"  # another host's: it may be alive
    dirswap._mark(elsewhere, "staging", [{"target": "a", "staged": "a/users/u1", "previous": "z"}])
    outside = tmp_path / f".swap-1-{dirswap.HOST}-ab.json"
    moves = [{"target": "../../etc", "staged": "a/users/u1", "previous": "z"}]
    dirswap._mark(outside, "decided", moves)
    assert dirswap.recover(tmp_path) == [] and _versions(targets)[0] == "old"
