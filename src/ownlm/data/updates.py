"""History items added to a run by `ownlm update` (ownlm.oppu.update), kept beside it.

An update writes two things, the user's adapter and their items; so that a kill between
the two leaves neither half, the items are first written to a journal
(`updates/pending/<user>.jsonl`), then the adapter is swapped in, then the items are
appended and the journal removed. `Run.recover` finishes a journal whose adapter landed
and drops one whose adapter did not.

The run reads its users from its data file, which ownlm never edits, so the new items
of user U are kept in `<run>/updates/U.jsonl`, one history item per line (the generic
layout's item fields, docs/data.md), rewritten whole and renamed into place.
`Run.dataset` appends them to U's history, so every reader of the run (eval, serve,
export, a resumed `ownlm train`) sees the updated history; run.json's data record
stays that of the data file (`Run.file_dataset`).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from ownlm.data.checks import USER_ID_RULE, user_id_problem
from ownlm.data.io import make_item, parse_json, read_text
from ownlm.data.records import Item, User
from ownlm.errors import DataError
from ownlm.files import write_file
from ownlm.paths import PENDING, UPDATES  # R/updates/<user>.jsonl, R/updates/pending/


def updates_path(run_dir: str | Path, user_id: str) -> Path:
    problem = user_id_problem(user_id)
    if problem:
        raise DataError(f"user id {user_id!r} {problem}; {USER_ID_RULE}")
    return Path(run_dir) / UPDATES / f"{user_id}.jsonl"


def updates_stat(run_dir: str | Path, user_id: str) -> tuple | None:
    """(mtime, inode, size) of the user's updates file; None without one (the server
    compares it on each request to rebuild a changed user's index and profile)."""
    try:
        st = os.stat(updates_path(run_dir, user_id))
    except (OSError, DataError):
        return None
    return (st.st_mtime_ns, st.st_ino, st.st_size)


def read_items(path: Path, task, user_id: str, known: set[str] = frozenset()) -> list[Item]:
    """History items of a JSONL file, one per line; DataError (one line) on bad JSON, a
    missing field, or an id already in `known` or repeated in the file."""
    items, seen = [], set(known)
    for n, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"line {n} of {path}"
        item = make_item(parse_json(line, where), task, where, f"{user_id}-u{len(seen)}")
        if item.id in seen:
            raise DataError(
                f"{where}: item id {item.id!r} is already in user {user_id}'s history; "
                "give each new item an id of its own"
            )
        seen.add(item.id)
        items.append(item)
    return items


def with_updates(run_dir: str | Path, users: list[User], task) -> list[User]:
    """`users` with the items of their updates file appended to their history."""
    folder = Path(run_dir) / UPDATES
    if not folder.is_dir():
        return users
    out = []
    for user in users:
        path = folder / f"{user.user_id}.jsonl"
        if not user_id_problem(user.user_id) and path.is_file():
            user = replace(user, history=user.history + read_items(path, task, user.user_id))
        out.append(user)
    return out


def write_updates(run_dir: Path, user_id: str, items: list[Item]) -> Path:
    """Append `items` to the user's updates file: written whole, then renamed."""
    path = updates_path(run_dir, user_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = read_text(path) if path.is_file() else ""
    lines = [json.dumps(_item_row(it)) for it in items]
    write_file(
        path, old + ("" if not old or old.endswith("\n") else "\n") + "\n".join(lines) + "\n"
    )
    return path


def pending_path(run_dir: str | Path, user_id: str) -> Path:
    return updates_path(run_dir, user_id).parent / PENDING / f"{user_id}.jsonl"


def write_pending(run_dir: Path, user_id: str, items: list[Item]) -> Path:
    """The journal of an update under way: its items, before its adapter is swapped in."""
    path = pending_path(run_dir, user_id)
    write_file(path, "".join(json.dumps(_item_row(it)) + "\n" for it in items))
    return path


def pending_users(run_dir: str | Path) -> list[str]:
    """Users with an update journal left behind (a kill cut their update short)."""
    folder = Path(run_dir) / UPDATES / PENDING
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.jsonl") if not user_id_problem(p.stem))


def _item_row(it: Item) -> dict:
    return {"id": it.id, **({"date": it.date} if it.date else {}), **it.fields}
