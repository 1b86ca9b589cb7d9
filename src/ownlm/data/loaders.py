"""Loaders: every supported on-disk layout -> `Dataset` of users with history and queries.

Layouts (see docs/data.md for examples):

* LaMP per-user (`users.json`, as in OPPU / Per-Pcs): a JSON list of
  `{"user_id", "profile": [item], "query": [{"id", "input", "gold"}]}`;
* LaMP official: `*_questions.json` (`[{"id", "input", "profile"}]`, one question per
  user) and optionally `*_outputs.json` (`{"task": "LaMP_2", "golds": [{"id", "output"}]}`);
* StudEmo (PEFT-U): a directory with `annotation_data.csv` and `text_data.csv`;
* TweetEval hate (PEFT-U): `annotations_g3.csv`, one `label_<annotator>` column each;
* generic JSONL, one user per line (people's own data).

Every error is a `DataError` naming the file, the record and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ownlm.data.io import RESERVED, finish, make_item
from ownlm.data.lamp import load_lamp_official, load_lamp_users
from ownlm.data.peftu import load_studemo, load_tweeteval
from ownlm.data.records import Dataset, Query, User
from ownlm.data.tasks import TASKS, Task, get_task
from ownlm.errors import DataError

LAYOUTS = (
    "a directory with users.json (LaMP per-user layout)",
    "a *_questions.json file or a directory holding one (official LaMP layout)",
    "a directory with annotation_data.csv and text_data.csv (StudEmo, PEFT-U)",
    "a CSV with label_<annotator> columns, e.g. annotations_g3.csv (TweetEval, PEFT-U)",
    "a .jsonl file with one user per line (generic layout; needs task=)",
)
__all__ = [
    "load_dataset",
    "load_jsonl",
    "load_lamp_official",
    "load_lamp_users",
    "load_studemo",
    "load_tweeteval",
]


# -- generic JSONL ------------------------------------------------------------------------------
def _jsonl_user(obj: Any, task: Task, where: str) -> User:
    if not isinstance(obj, dict) or "user_id" not in obj:
        raise DataError(f"{where} is not a JSON object with 'user_id'; see docs/data.md")
    uid = str(obj["user_id"])
    history = [
        make_item(it, task, f"{where} (user {uid!r}), history item {i},", f"{uid}-h{i}")
        for i, it in enumerate(obj.get("history") or [])
    ]
    if history and all(it.date for it in history):
        history.sort(key=lambda it: it.date or "")  # stable: equal dates keep file order
    queries = []
    for j, q in enumerate(obj.get("queries") or []):
        if not isinstance(q, dict):
            raise DataError(f"{where} (user {uid!r}), query {j}, is not a JSON object")
        fields = {k: str(v) for k, v in q.items() if k not in RESERVED and v is not None}
        if "input" in q:
            text = str(q["input"])
        else:
            try:
                text = task.query_prompt(fields)
            except KeyError as exc:
                raise DataError(
                    f"{where} (user {uid!r}), query {j}, has no 'input' and {exc.args[0]}; "
                    f"give 'input' or the task's input field {task.input_field!r}"
                ) from exc
        gold = q.get("gold")
        queries.append(
            Query(
                str(q.get("id", f"{uid}-q{j}")), text, None if gold is None else str(gold), fields
            )
        )
    return User(uid, history, queries)


def load_jsonl(path: str | Path, task: str | Task, skip_empty: bool = False) -> Dataset:
    """Generic layout, one user per line (see docs/data.md for the schema and an example)."""
    path = Path(path)
    the_task = get_task(task)
    if not path.is_file():
        raise DataError(f"{path} does not exist; check the path (cwd: {Path.cwd()})")
    users = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"line {n} of {path} is not valid JSON ({exc}); one user per line"
            ) from exc
        users.append(_jsonl_user(obj, the_task, f"line {n} of {path}"))
    return Dataset(the_task.name, finish(users, path, skip_empty), str(path))


def load_dataset(path: str | Path, task: str | Task | None = None, **options: Any) -> Dataset:
    """Detect the layout of `path` and load it; `options` go to the specific loader."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; check the path (cwd: {Path.cwd()})")
    if path.is_dir():
        if (path / "users.json").is_file():
            return load_lamp_users(path, task, **options)
        if (path / "annotation_data.csv").is_file() and (path / "text_data.csv").is_file():
            name = str(getattr(task, "name", task) or "")
            if name and not name.startswith("studemo-"):
                raise DataError(
                    f"{path} is StudEmo data; its task must be studemo-<dimension>, not {name!r}"
                )
            if name:  # the task names the dimension, e.g. studemo-arousal
                options.setdefault("dimension", name.removeprefix("studemo-"))
            return load_studemo(path, **options)
        if (path / "annotations_g3.csv").is_file():
            return load_tweeteval(path / "annotations_g3.csv", **options)
        questions = sorted(path.glob("*_questions.json"))
        if len(questions) == 1:
            return load_lamp_official(questions[0], task=task, **options)
    elif path.name.endswith("_questions.json"):
        return load_lamp_official(path, task=task, **options)
    elif path.suffix == ".json":
        return load_lamp_users(path, task, **options)
    elif path.suffix == ".jsonl":
        if task is None:
            raise DataError(f"{path} is a generic JSONL file; pass task= one of {', '.join(TASKS)}")
        return load_jsonl(path, task, **options)
    elif path.suffix == ".csv":
        return load_tweeteval(path, **options)
    raise DataError(
        f"cannot tell the layout of {path}; supported layouts:\n  - " + "\n  - ".join(LAYOUTS)
    )
