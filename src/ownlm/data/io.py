"""What every loader shares: reading JSON/CSV with clear errors, turning raw records
into history items, and finishing a user list (users without history)."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ownlm.data import checks
from ownlm.data.records import Item, User
from ownlm.data.tasks import TASKS, Task
from ownlm.errors import DataError
from ownlm.log import get_logger

log = get_logger(__name__)
RESERVED = ("id", "date", "input", "gold", "output")  # record keys that are not item fields


def read_text(path: Path) -> str:
    """The whole file as text: UTF-8, a leading BOM dropped (Windows editors write one).
    Any other encoding is a DataError naming the first bad byte, its offset and line."""
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a file; give the data file's path")
    if path.exists() and not path.is_file():  # a FIFO or a device would block or never end
        raise DataError(f"{path} is not a regular file; give the data file's path")
    if not path.is_file():
        raise DataError(f"{path} does not exist; check the path (cwd: {Path.cwd()})")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror}); check its permissions") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path} is not UTF-8: byte {data[exc.start]:#04x} at offset {exc.start} (line "
            f"{line}) is not valid UTF-8; re-encode the file as UTF-8 (e.g. `iconv -f latin1 "
            f"-t utf-8 {path.name} > fixed{path.suffix}`)"
        ) from None


class _RepeatedKey(Exception):
    pass


def _unique_keys(pairs: list) -> dict:
    """json's object hook: a key given twice would silently keep its last value."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set = set()
        raise _RepeatedKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return out


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _lone_surrogate(obj: Any) -> str | None:
    """The first lone surrogate in the strings of a parsed value (JSON's "\\ud800": half
    of a character, which no UTF-8 file, tokenizer or digest takes), else None."""
    stack = [obj]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                return value[exc.start]
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return None


def parse_json(text: str, where: str) -> Any:
    """`json.loads`, every failure a DataError naming `where` (numbers past Python's
    4300-digit limit and absurd nesting raise other errors than JSONDecodeError). An
    object that repeats a key, and a string holding a lone surrogate, are refused too."""
    try:
        obj = json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise DataError(f"{where} is nested too deeply to be data; fix the file") from None
    except _RepeatedKey as exc:
        raise DataError(
            f"{where} repeats key {checks.shown(exc.args[0])} in one object; JSON keeps only "
            "the last value, so keep the one you mean"
        ) from None
    except ValueError as exc:  # JSONDecodeError included
        raise DataError(f"{where} is not valid JSON ({exc}); fix or re-download the file") from None
    if _SURROGATE_ESCAPE.search(text):  # only an escape can put a surrogate in the text
        bad = _lone_surrogate(obj)
        if bad is not None:
            raise DataError(
                f"{where}: a lone surrogate {bad.encode('unicode_escape').decode()!r} (half "
                "of a character, escaped in the JSON) is not text; write the character "
                "itself, or both halves of its escaped pair"
            )
    return obj


def read_json(path: Path) -> Any:
    return parse_json(read_text(path), str(path))


def read_csv(path: Path, required: Iterable[str] = ()) -> list[dict[str, str]]:
    text = read_text(path)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
        header = reader.fieldnames or []
    except csv.Error as exc:
        raise DataError(f"{path} is not a readable CSV ({exc}); fix the file") from None
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        raise DataError(f"{path} repeats column(s) {twice}; each column name must be unique")
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path} lacks column(s) {missing}; its header is {header}")
    return rows


def list_field(record: dict, key: str, where: str) -> list:
    """`record[key]` as a list ([] when absent or null); a DataError for any other type."""
    value = record.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise DataError(
            f"{where}: {key!r} is a {type(value).__name__}; it must be a JSON list of objects"
        )
    return value


def task_from_name(name: str, where: Path) -> Task:
    """'LaMP_2M', 'LaMP_2', 'LaMP-4' -> the registered task; DataError when unknown."""
    m = re.fullmatch(r"LaMP[_-]?(\d+)[A-Za-z]?", name.strip())
    key = f"LaMP-{m.group(1)}" if m else name
    if key not in TASKS:
        raise DataError(
            f"{where} names task {name!r}, which ownlm does not know; set the task "
            f"(--set task=NAME) to one of {', '.join(TASKS)}"
        )
    return TASKS[key]


def infer_task(records: list, where: Path) -> Task:
    """Guess the task from the first query prompt, else from the history item fields."""
    recs = [rec for rec in records[:5] if isinstance(rec, dict)]  # the loader names bad ones
    for rec in recs:
        queries = rec["query"] if isinstance(rec.get("query"), list) else []
        prompts = [q.get("input") for q in queries if isinstance(q, dict)] + [rec.get("input")]
        for text in (p for p in prompts if isinstance(p, str)):
            for task in TASKS.values():  # LaMP tasks come first, so they win ties
                if text.startswith(task.prompt.split("{", 1)[0]):
                    return task
    profiles = [rec["profile"] for rec in recs if isinstance(rec.get("profile"), list)]
    keys = {k for profile in profiles for it in profile if isinstance(it, dict) for k in it}
    for task in TASKS.values():
        if set(task.fields) <= keys and task.name.startswith("LaMP"):
            return task
    raise DataError(
        f"cannot tell the task of {where} (history fields {sorted(keys)}); set the task "
        f"(--set task=NAME) to one of {', '.join(TASKS)}"
    )


def make_item(raw: Any, task: Task, where: str, default_id: str) -> Item:
    """One history item; `where` says file, user and position for error messages."""
    if not isinstance(raw, dict):
        raise DataError(f"{where}: is a {type(raw).__name__}, not a JSON object; fix the file")
    for name in task.fields:
        value = raw.get(name)
        if value is None or value == "":
            said = "null" if value is None else "empty"
            problem = f"field {name!r} is {said}" if name in raw else f"lacks field {name!r}"
            raise DataError(
                f"{where}: {problem}, needed by task {task.name}; each history item must "
                f"have fields {list(task.fields)} with text in them (fix the file, or set "
                "the right task: --set task=NAME)"
            )
        if isinstance(value, dict | list):
            raise DataError(f"{where}: field {name!r} is a {type(value).__name__}; give it as text")
    fields = {k: str(v) for k, v in raw.items() if k not in RESERVED and v is not None}
    if task.labelled_history:
        out = task.output_field
        fields[out] = checks.label(raw[out], task, where, out)
    date = str(raw["date"]) if raw.get("date") not in (None, "") else None
    item_id = checks.record_id(raw.get("id"), default_id, where)
    return Item(id=item_id, fields=fields, date=date)


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
                f"user {user.user_id!r} in {path} has an empty history; add history items "
                "for this user, or remove the user from the file"
            )
    if not kept:
        raise DataError(
            f"{path} holds no user with history; it needs at least one user with history "
            "items (see docs/data.md for the layouts)"
        )
    return kept
