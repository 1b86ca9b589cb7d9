"""Checks every loader applies to each record as it reads it, so that bad data fails at
load, in one line naming the file, the line or record, the user and the fix, before any
model is loaded or trained.

* user ids name folders (adapters live under `users/<id>/`): a safe character set, and
  unique in a file, case-insensitively (`Ann` and `ann` share a folder on macOS/Windows);
* query ids are unique within a user (predictions and the LaMP files are keyed by them);
* history labels and golds of a label task are in the task's label set.
"""

from __future__ import annotations

import difflib
import string
from typing import Any

from ownlm.data.tasks import Task
from ownlm.errors import DataError, shown  # noqa: F401 (shown: re-exported)

MAX_USER_ID = 128
USER_ID_CHARS = "letters A-Z a-z, digits and - _ . @ +"
_USER_ID_SET = frozenset(string.ascii_letters + string.digits + "-_.@+")
USER_ID_RULE = (
    f"user ids are 1-{MAX_USER_ID} characters from {USER_ID_CHARS}, not starting with '.' "
    "or '-' (each names a folder, users/<id>/)"
)


def user_id_problem(uid: str) -> str | None:
    """Why `uid` cannot name a user (None when it can): the one rule for user ids, applied
    by the loaders, `ownlm update`, bundle restore and the server's model names and admin
    routes, so that an id one accepts is never a folder name another refuses."""
    if not uid:
        return "is empty"
    if len(uid) > MAX_USER_ID:
        return f"is {len(uid)} characters long"
    if uid[0] in ".-":
        return f"starts with {uid[0]!r}"
    bad = next((c for c in uid if c not in _USER_ID_SET), None)
    return f"contains {bad!r}" if bad is not None else None


def user_id(raw: Any, where: str) -> str:
    """The user id of a record as a string, refused unless it is safe as a folder name."""
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise DataError(
            f"{where}: user_id {shown(raw)} is a {type(raw).__name__}; give a string or an integer"
        )
    uid = str(raw)
    problem = user_id_problem(uid)
    if problem:
        raise DataError(f"{where}: user_id {shown(uid)} {problem}; {USER_ID_RULE}: rename it")
    return uid


def record_id(raw: Any, default: str, where: str) -> str:
    """An item's or query's id as a string (`default` when absent or null)."""
    if raw is None:
        return default
    if isinstance(raw, dict | list):
        raise DataError(f"{where}: id is a {type(raw).__name__}; give a string or a number")
    return str(raw)


class UniqueIds:
    """Ids met so far in one file (or one user of it); a repeat names both places.

    `fold`: compare case-insensitively (user ids: folder names on macOS and Windows).
    """

    def __init__(self, source: str, what: str, fix: str, fold: bool = False):
        self.source, self.what, self.fix, self.fold = source, what, fix, fold
        self.seen: dict[str, tuple[str, str]] = {}

    def add(self, key: str, place: str) -> None:
        """Record `key` met at `place` (e.g. "line 3"); a DataError if it came before."""
        k = key.casefold() if self.fold else key
        if k in self.seen:
            first, first_place = self.seen[k]
            same = "repeats" if first == key else f"differs only in case from {shown(first)} at"
            raise DataError(
                f"{self.source}: {self.what} {shown(key)} at {place} {same} {first_place}; "
                f"{self.fix}"
            )
        self.seen[k] = (key, place)


def user_ids(path: Any) -> UniqueIds:
    """The duplicate check of one file's user ids: a second record would be merged into
    (or overwrite) the first user's adapter."""
    fix = "each user must appear once: merge the two records, or rename one user"
    return UniqueIds(str(path), "user_id", fix, fold=True)


def query_ids(source: str) -> UniqueIds:
    """The duplicate check of one user's query ids (predictions are keyed by them)."""
    fix = "give each query of a user its own id (or drop 'id' to get <user>-q<i>)"
    return UniqueIds(source, "query id", fix)


def _number_label(raw: int | float, task: Task, where: str, what: str) -> str:
    """A JSON number as a label: a rating task takes a whole number as its string form."""
    if task.kind == "rating":
        if float(raw).is_integer() and str(int(raw)) in task.labels:
            return str(int(raw))
        raise DataError(
            f"{where}: {what} {raw} is not one of task {task.name}'s scores "
            f"{list(task.labels)}; give a whole number in that range"
        )
    if str(raw) in task.labels:
        return str(raw)
    raise DataError(
        f"{where}: {what} {raw} is a number, but task {task.name}'s labels are "
        f"{list(task.labels)}; write one of them as a JSON string"
    )


def label(raw: Any, task: Task, where: str, what: str = "label") -> str:
    """`raw` as one of the labels of a label task, else a DataError naming the allowed
    labels (and the closest one, for a near miss such as a capital letter)."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise DataError(
            f"{where}: {what} {shown(raw)} is a {type(raw).__name__}; give one of "
            f"task {task.name}'s labels {list(task.labels)} as a string"
        )
    if not isinstance(raw, str):
        return _number_label(raw, task, where, what)
    if raw in task.labels:
        return raw
    lowered = {lab.lower(): lab for lab in task.labels}
    near = difflib.get_close_matches(raw.strip().lower()[:100], lowered, n=1, cutoff=0.8)
    hint = f" (did you mean {lowered[near[0]]!r}?)" if near else ""
    raise DataError(
        f"{where}: {what} {shown(raw)} is not one of task {task.name}'s labels "
        f"{list(task.labels)}{hint}; fix the value, or set the right task (--set task=NAME)"
    )


def gold(raw: Any, task: Task, where: str) -> str | None:
    """A query's gold answer: None when absent; a label for label tasks; else text."""
    if raw is None:
        return None
    if task.labels:
        return label(raw, task, where, "gold")
    if isinstance(raw, dict | list):
        raise DataError(f"{where}: gold is a {type(raw).__name__}; give the answer as a string")
    return str(raw)
