"""What every loader shares: reading JSON/CSV with clear errors, turning raw records
into history items, and finishing a user list (users without history)."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ownlm.data.records import Item, User
from ownlm.data.tasks import TASKS, Task
from ownlm.errors import DataError
from ownlm.log import get_logger

log = get_logger(__name__)
RESERVED = ("id", "date", "input", "gold", "output")  # record keys that are not item fields


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path} does not exist; check the path (cwd: {Path.cwd()})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); fix or re-download the file") from exc


def read_csv(path: Path, required: Iterable[str] = ()) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(f"{path} does not exist; check the path (cwd: {Path.cwd()})")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = reader.fieldnames or []
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a readable UTF-8 CSV ({exc}); fix the file") from exc
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path} lacks column(s) {missing}; its header is {header}")
    return rows


def task_from_name(name: str, where: Path) -> Task:
    """'LaMP_2M', 'LaMP_2', 'LaMP-4' -> the registered task; DataError when unknown."""
    m = re.fullmatch(r"LaMP[_-]?(\d+)[A-Za-z]?", name.strip())
    key = f"LaMP-{m.group(1)}" if m else name
    if key not in TASKS:
        raise DataError(
            f"{where} names task {name!r}, which ownlm does not know; pass task= one of "
            f"{', '.join(TASKS)}"
        )
    return TASKS[key]


def infer_task(records: list[dict], where: Path) -> Task:
    """Guess the task from the first query prompt, else from the history item fields."""
    for rec in records[:5]:
        for q in rec.get("query", []) if isinstance(rec.get("query"), list) else []:
            for task in TASKS.values():  # LaMP tasks come first, so they win ties
                prefix = task.prompt.split("{", 1)[0]
                if isinstance(q, dict) and str(q.get("input", "")).startswith(prefix):
                    return task
        if isinstance(rec.get("input"), str):
            for task in TASKS.values():
                if rec["input"].startswith(task.prompt.split("{", 1)[0]):
                    return task
    keys = {k for rec in records[:5] for it in rec.get("profile", []) or [] for k in it}
    for task in TASKS.values():
        if set(task.fields) <= keys and task.name.startswith("LaMP"):
            return task
    raise DataError(
        f"cannot tell the task of {where} (history fields {sorted(keys)}); pass task= one of "
        f"{', '.join(TASKS)}"
    )


def make_item(raw: Any, task: Task, where: str, default_id: str) -> Item:
    """One history item; `where` says file, user and position for error messages."""
    if not isinstance(raw, dict):
        raise DataError(f"{where} is a {type(raw).__name__}, not a JSON object; fix the file")
    for name in task.fields:
        if raw.get(name) in (None, ""):
            raise DataError(
                f"{where} lacks field {name!r} needed by task {task.name}; each history item "
                f"must have fields {list(task.fields)} (fix the file or pass the right task=)"
            )
    fields = {k: str(v) for k, v in raw.items() if k not in RESERVED and v is not None}
    date = str(raw["date"]) if raw.get("date") not in (None, "") else None
    return Item(id=str(raw.get("id", default_id)), fields=fields, date=date)


def finish(users: list[User], path: Path, skip_empty: bool) -> list[User]:
    """Raise (or, with skip_empty, drop with a warning) users without history."""
    kept = []
    for user in users:
        if user.history:
            kept.append(user)
        elif skip_empty:
            log.warning("skipping user %r of %s: empty history", user.user_id, path)
        else:
            raise DataError(
                f"user {user.user_id!r} in {path} has an empty history; add items or pass "
                "skip_empty=True to drop such users"
            )
    if not kept:
        raise DataError(f"{path} holds no user with history; check the file")
    return kept
