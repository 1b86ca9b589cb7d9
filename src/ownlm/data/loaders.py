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

from pathlib import Path
from typing import Any

from ownlm.data import checks
from ownlm.data.checks import shown
from ownlm.data.io import RESERVED, finish, list_field, make_item, parse_json, read_text
from ownlm.data.lamp import load_lamp_official, load_lamp_users
from ownlm.data.peftu import load_studemo, load_tweeteval
from ownlm.data.records import Dataset, Query, User
from ownlm.data.task_file import resolve_task
from ownlm.data.tasks import TASKS, Task
from ownlm.errors import DataError

LAYOUTS = (
    "a directory with users.json (LaMP per-user layout)",
    "a *_questions.json file or a directory holding one (official LaMP layout)",
    "a directory with annotation_data.csv and text_data.csv (StudEmo, PEFT-U)",
    "a CSV with label_<annotator> columns, e.g. annotations_g3.csv (TweetEval, PEFT-U)",
    "a .jsonl file with one user per line (generic layout; needs --set task=NAME or a task file)",
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
def _jsonl_query(q: Any, task: Task, uid: str, j: int, where: str) -> Query:
    if not isinstance(q, dict):
        raise DataError(f"{where}: is a {type(q).__name__}, not a JSON object; fix the file")
    qid = checks.record_id(q.get("id"), f"{uid}-q{j}", where)
    where = f"{where} (id {shown(qid)})"
    fields = {k: str(v) for k, v in q.items() if k not in RESERVED and v is not None}
    if "input" in q:
        if not isinstance(q["input"], str):
            raise DataError(f"{where}: 'input' is a {type(q['input']).__name__}; give text")
        text = q["input"]
    else:
        try:
            text = task.query_prompt(fields)
        except KeyError as exc:
            raise DataError(
                f"{where}: has no 'input' and {exc.args[0]}; give 'input' or the task's "
                f"input field {task.input_field!r}"
            ) from None
    return Query(qid, text, checks.gold(q.get("gold"), task, where), fields)


def _jsonl_user(obj: Any, task: Task, where: str) -> User:
    if not isinstance(obj, dict) or "user_id" not in obj:
        what = "an object without 'user_id'" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise DataError(
            f"{where} is {what}; each line must be a JSON object with 'user_id' (one user "
            "per line, see docs/data.md)"
        )
    uid = checks.user_id(obj["user_id"], where)
    where = f"{where} (user {uid!r})"
    history = [
        make_item(it, task, f"{where}, history item {i}", f"{uid}-h{i}")
        for i, it in enumerate(list_field(obj, "history", where))
    ]
    if history and all(it.date for it in history):
        history.sort(key=lambda it: it.date or "")  # stable: equal dates keep file order
    queries, ids = [], checks.query_ids(where)
    for j, q in enumerate(list_field(obj, "queries", where)):
        queries.append(_jsonl_query(q, task, uid, j, f"{where}, query {j}"))
        ids.add(queries[-1].id, f"query {j}")
    return User(uid, history, queries)


def load_jsonl(path: str | Path, task: str | dict | Task, skip_empty: bool = False) -> Dataset:
    """Generic layout, one user per line (see docs/data.md for the schema and an example).
    UTF-8 with or without a BOM, LF or CRLF line ends."""
    path = Path(path)
    the_task = resolve_task(task)
    text = read_text(path)
    if text.lstrip().startswith("["):
        raise DataError(
            f"{path} holds a JSON array; a .jsonl file holds one JSON object per line, one "
            "user each: write each user on its own line"
        )
    users, seen = [], checks.user_ids(path)
    # split on "\n" only: str.splitlines() also splits on U+2028 and other characters
    # that JSON strings may hold raw
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"line {n} of {path}"
        users.append(_jsonl_user(parse_json(line, where), the_task, where))
        seen.add(users[-1].user_id, f"line {n}")
    if not users:
        raise DataError(
            f"{path} is empty; it must hold one JSON object per line, one user each "
            "(see docs/data.md)"
        )
    return Dataset(the_task.name, finish(users, path, skip_empty), str(path))


def load_dataset(
    path: str | Path, task: str | dict | Task | None = None, **options: Any
) -> Dataset:
    """Detect the layout of `path` and load it; `options` go to the specific loader."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; check the path (cwd: {Path.cwd()})")
    task = None if task is None else resolve_task(task)  # a name, a task file or a mapping
    if path.is_dir():
        if (path / "users.json").is_file():
            return load_lamp_users(path, task, **options)
        if (path / "annotation_data.csv").is_file() and (path / "text_data.csv").is_file():
            name = str(getattr(task, "name", task) or "")
            if name and not name.startswith("studemo-"):
                raise DataError(
                    f"{path} is StudEmo data; its task must be studemo-<dimension>, not "
                    f"{name!r}: e.g. --set task=studemo-valence"
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
            raise DataError(
                f"{path} is a generic JSONL file, which does not name its task; set it with "
                f"--set task=NAME, NAME one of {', '.join(TASKS)}, or define your own in YAML "
                "(--set task=path/to/task.yaml, docs/data.md)"
            )
        return load_jsonl(path, task, **options)
    elif path.suffix == ".csv":
        return load_tweeteval(path, **options)
    raise DataError(
        f"cannot tell the layout of {path}; supported layouts:\n  - " + "\n  - ".join(LAYOUTS)
    )
