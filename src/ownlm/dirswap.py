"""Several directories replaced together, or none of them, whatever moment a kill lands.

The adapter store swaps one directory at a time. An `ownlm import` writes one user's
adapter into several stores (adapters/, adapters-peft/, ...) and must leave every one
of them or none, so `swap_in` runs a small journal beside them:

1. the journal `<root>/.swap-<tx>.json` lists each target with its staged copy
   (`.new-<name>-<tx>`) and the place its previous version goes (`.prev-<name>-<tx>`),
   marked "staging", before anything is written;
2. the caller fills every staged copy completely;
3. the journal is marked "decided": from here on the swap is finished, whatever happens;
4. each previous version is moved aside and its staged copy renamed into place;
5. the previous versions are removed, then the journal.

`recover` finishes what a killed process left: a "decided" journal is carried on from
step 4 (each step can be done again), a "staging" one is undone (its staged copies
removed). It acts only for dead writers on this host: `<tx>` is `<pid>-<host>-<rand>`.
Scratch names start with a dot, which the store's readers skip, and with prefixes the
store's own sweep leaves alone, so that a sweep never takes half a decided swap away.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from ownlm.files import HOST, pid_alive, write_file

JOURNAL = ".swap-"  # <root>/.swap-<tx>.json
STAGED, PREVIOUS = ".new-", ".prev-"  # beside each target: <prefix><name>-<tx>


def swap_in(root: Path, targets: list[Path], fill: Callable[[Path, Path], None]) -> None:
    """Replace each directory of `targets` (all below `root`; absent ones are created)
    with what `fill(staged, target)` writes into `staged`, all together or not at all.
    An exception while filling removes what was staged; nothing was replaced."""
    root = Path(root)
    tx = f"{os.getpid()}-{HOST}-{uuid.uuid4().hex[:8]}"
    moves = [
        {
            "target": str(t.relative_to(root)),
            "staged": str(t.with_name(f"{STAGED}{t.name}-{tx}").relative_to(root)),
            "previous": str(t.with_name(f"{PREVIOUS}{t.name}-{tx}").relative_to(root)),
        }
        for t in map(Path, targets)
    ]
    journal = root / f"{JOURNAL}{tx}.json"
    _mark(journal, "staging", moves)
    try:
        for m in moves:
            (root / m["target"]).parent.mkdir(parents=True, exist_ok=True)
            fill(root / m["staged"], root / m["target"])
        _mark(journal, "decided", moves)
    except Exception:
        _undo(root, journal, moves)
        raise
    _finish(root, journal, moves)


def recover(root: Path) -> list[str]:
    """Finish (or undo, when it was still staging) every swap under `root` whose
    writer died. Returns what it did, one line each."""
    root = Path(root)
    done = []
    for journal in sorted(root.glob(f"{JOURNAL}*.json")) if root.is_dir() else []:
        pid, host = (journal.name[len(JOURNAL) :].split("-") + ["", ""])[:2]
        if host != HOST or not pid.isdigit() or pid_alive(int(pid)):
            continue  # a live writer's, or another host's (whose writer may be alive)
        try:
            record = json.loads(journal.read_text())
            state, moves = record["state"], record["moves"]
            paths = [Path(m[k]) for m in moves for k in ("target", "staged", "previous")]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a journal we wrote: left for a person to read
        if any(p.is_absolute() or ".." in p.parts for p in paths):
            continue  # nor is one that points outside `root`
        if state == "decided":
            _finish(root, journal, moves)
            done.append(f"finished a cut-short swap of {', '.join(m['target'] for m in moves)}")
        else:
            _undo(root, journal, moves)
            done.append(f"undid a cut-short swap of {', '.join(m['target'] for m in moves)}")
    return done


def _mark(journal: Path, state: str, moves: list[dict]) -> None:
    write_file(journal, json.dumps({"state": state, "moves": moves}, indent=1), mode=0o600)


def _undo(root: Path, journal: Path, moves: list[dict]) -> None:
    for m in moves:
        shutil.rmtree(root / m["staged"], ignore_errors=True)
    journal.unlink(missing_ok=True)


def _finish(root: Path, journal: Path, moves: list[dict]) -> None:
    """Steps 4-5; each step checks what is already done, so a rerun carries on."""
    for m in moves:
        target, staged, previous = (root / m[k] for k in ("target", "staged", "previous"))
        if not staged.exists():
            continue  # already in place
        if target.exists() and not previous.exists():
            os.replace(target, previous)
        elif target.exists():  # written meanwhile, after its previous version went aside
            shutil.rmtree(target)
        os.replace(staged, target)
    for m in moves:
        shutil.rmtree(root / m["previous"], ignore_errors=True)
    journal.unlink(missing_ok=True)
