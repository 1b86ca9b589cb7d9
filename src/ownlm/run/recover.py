"""What a killed writer left in a run, finished or rolled back by the next command."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ownlm.files import sweep_files
from ownlm.paths import RunPaths
from ownlm.store import AdapterStore

if TYPE_CHECKING:
    from ownlm.run import Run


def finish_pending(run: Run, user_id: str) -> str | None:
    """A journal `ownlm update` left (`ownlm.data.updates`): its items appended when the
    adapter it trained landed (its manifest stands for the history with them), else
    dropped. Returns what was done (None without a journal)."""
    from ownlm.data.updates import pending_path, read_items, write_updates

    journal = pending_path(run.dir, user_id)
    if not journal.is_file():
        return None
    user = next((u for u in run.dataset.users if u.user_id == user_id), None)
    landed = False
    if user is not None:
        items = read_items(journal, run.task, user_id)
        digest = replace(user, history=user.history + items).history_digest()
        landed = run.store("oppu").current(user.name, run.base_fingerprint(), digest)
        if landed:
            write_updates(run.dir, user_id, items)
    journal.unlink()
    return f"{'finished' if landed else 'rolled back'} a cut-short update of user {user_id}"


def recover(run_dir: Path) -> list[str]:
    """Finish or roll back what killed writers left in a run: each store's cut-short swaps
    (`AdapterStore.sweep`: the previous version back in place, or the new one kept) and
    an import's several stores swapped together (`ownlm.dirswap`), and the scratch copies of
    run.json, tokens.json and the updates files. Every command that
    writes a user, and the server at start-up, call it first. Returns what it did."""
    from ownlm import dirswap

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    done = dirswap.recover(run_dir)  # an import cut short: finished or undone
    paths = RunPaths(run_dir)
    for store in paths.stores():
        done += AdapterStore(store).sweep()
    for folder in (run_dir, paths.updates):
        done += [f"removed {p}" for p in sweep_files(folder)]
    return done
