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

import csv
import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ownlm.data.records import Dataset, Item, Query, User
from ownlm.data.splits import split_items
from ownlm.data.tasks import STUDEMO_DIMENSIONS, TASKS, Task, get_task
from ownlm.errors import DataError

log = logging.getLogger(__name__)

LAYOUTS = (
    "a directory with users.json (LaMP per-user layout)",
    "a *_questions.json file or a directory holding one (official LaMP layout)",
    "a directory with annotation_data.csv and text_data.csv (StudEmo, PEFT-U)",
    "a CSV with label_<annotator> columns, e.g. annotations_g3.csv (TweetEval, PEFT-U)",
    "a .jsonl file with one user per line (generic layout; needs task=)",
)
_RESERVED = ("id", "date", "input", "gold", "output")


# -- shared helpers -------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path} does not exist; check the path (cwd: {Path.cwd()})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); fix or re-download the file") from exc


def _read_csv(path: Path, required: Iterable[str] = ()) -> list[dict[str, str]]:
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


def _task_from_name(name: str, where: Path) -> Task:
    """'LaMP_2M', 'LaMP_2', 'LaMP-4' -> the registered task; DataError when unknown."""
    m = re.fullmatch(r"LaMP[_-]?(\d+)[A-Za-z]?", name.strip())
    key = f"LaMP-{m.group(1)}" if m else name
    if key not in TASKS:
        raise DataError(
            f"{where} names task {name!r}, which ownlm does not know; pass task= one of "
            f"{', '.join(TASKS)}"
        )
    return TASKS[key]


def _infer_task(records: list[dict], where: Path) -> Task:
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


def _make_item(raw: Any, task: Task, where: str, default_id: str) -> Item:
    """One history item; `where` says file, user and position for error messages."""
    if not isinstance(raw, dict):
        raise DataError(f"{where} is a {type(raw).__name__}, not a JSON object; fix the file")
    for name in task.fields:
        if raw.get(name) in (None, ""):
            raise DataError(
                f"{where} lacks field {name!r} needed by task {task.name}; each history item "
                f"must have fields {list(task.fields)} (fix the file or pass the right task=)"
            )
    fields = {k: str(v) for k, v in raw.items() if k not in _RESERVED and v is not None}
    date = str(raw["date"]) if raw.get("date") not in (None, "") else None
    return Item(id=str(raw.get("id", default_id)), fields=fields, date=date)


def _finish(users: list[User], path: Path, skip_empty: bool) -> list[User]:
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


# -- LaMP ------------------------------------------------------------------------------------
def load_lamp_users(
    path: str | Path, task: str | Task | None = None, skip_empty: bool = False
) -> Dataset:
    """Per-user LaMP layout (OPPU / Per-Pcs): `users.json` or its directory.

    The task is `task`, else the folder name (LaMP_2M -> LaMP-2), else guessed from the
    query prompts / item fields. `Query.fields` holds the raw input recovered from the
    prompt (LaMP-2: the description after "description:").
    """
    path = Path(path)
    file = path / "users.json" if path.is_dir() else path
    records = _read_json(file)
    if not isinstance(records, list):
        raise DataError(f"{file} must hold a JSON list of users; got {type(records).__name__}")
    if task is not None:
        the_task = get_task(task)
    elif re.fullmatch(r"LaMP_\d+[A-Za-z]?", file.parent.name):
        the_task = _task_from_name(file.parent.name, file)
    else:
        the_task = _infer_task(records, file)
    users = []
    for r, rec in enumerate(records):
        if not isinstance(rec, dict) or "user_id" not in rec:
            raise DataError(f"record {r} of {file} is not an object with 'user_id'; fix it")
        uid = str(rec["user_id"])
        history = [
            _make_item(
                it,
                the_task,
                f"record {r} (user {uid!r}) of {file}, history item {i},",
                f"{uid}-h{i}",
            )
            for i, it in enumerate(rec.get("profile") or [])
        ]
        queries = []
        for j, q in enumerate(rec.get("query") or []):
            if not isinstance(q, dict) or "input" not in q:
                raise DataError(
                    f"record {r} (user {uid!r}) of {file}, query {j}, lacks field 'input'; "
                    'each query must be {"id", "input", "gold"}'
                )
            gold = q.get("gold", q.get("output"))
            queries.append(
                Query(
                    id=str(q.get("id", f"{uid}-q{j}")),
                    input=q["input"],
                    gold=None if gold is None else str(gold),
                    fields=the_task.extract_fields(q["input"]),
                )
            )
        users.append(User(uid, history, queries))
    return Dataset(the_task.name, _finish(users, file, skip_empty), str(file))


def load_lamp_official(
    questions_path: str | Path,
    outputs_path: str | Path | None = None,
    task: str | Task | None = None,
    skip_empty: bool = False,
) -> Dataset:
    """Official LaMP layout: each question is one user whose profile is their history.

    `outputs_path` defaults to the sibling `*_outputs.json` when it exists. Golds are
    joined by id (a question without gold gets None); the task comes from `task`, else
    the outputs' "task" field, else the question prompts.
    """
    qfile = Path(questions_path)
    questions = _read_json(qfile)
    if not isinstance(questions, list):
        raise DataError(
            f"{qfile} must hold a JSON list of questions; got {type(questions).__name__}"
        )
    if outputs_path is None and "questions" in qfile.name:
        sibling = qfile.with_name(qfile.name.replace("questions", "outputs"))
        outputs_path = sibling if sibling.is_file() else None
    golds: dict[str, str] = {}
    out_task = None
    if outputs_path is not None:
        ofile = Path(outputs_path)
        outputs = _read_json(ofile)
        if not isinstance(outputs, dict) or not isinstance(outputs.get("golds"), list):
            raise DataError(f'{ofile} must be {{"task": ..., "golds": [{{"id", "output"}}]}}')
        for g, gold in enumerate(outputs["golds"]):
            if not isinstance(gold, dict) or "id" not in gold or "output" not in gold:
                raise DataError(f"gold {g} of {ofile} lacks 'id' or 'output'; fix the file")
            golds[str(gold["id"])] = str(gold["output"])
        if outputs.get("task"):
            out_task = _task_from_name(str(outputs["task"]), ofile)
    the_task = get_task(task) if task is not None else out_task or _infer_task(questions, qfile)
    users = []
    for r, rec in enumerate(questions):
        if not isinstance(rec, dict) or "id" not in rec or "input" not in rec:
            raise DataError(
                f"record {r} of {qfile} lacks 'id' or 'input'; each question is "
                '{"id", "input", "profile": [...]}'
            )
        uid = str(rec["id"])
        history = [
            _make_item(
                it,
                the_task,
                f"record {r} (question {uid!r}) of {qfile}, profile item {i},",
                f"{uid}-h{i}",
            )
            for i, it in enumerate(rec.get("profile") or [])
        ]
        query = Query(uid, rec["input"], golds.get(uid), the_task.extract_fields(rec["input"]))
        users.append(User(uid, history, [query]))
    return Dataset(the_task.name, _finish(users, qfile, skip_empty), str(qfile))


# -- PEFT-U annotator data ---------------------------------------------------------------------
def _annotator_users(
    per_user: dict[str, list[Item]], task: Task, query_frac: float, seed: int
) -> list[User]:
    """Split each annotator's labelled items into history / queries (seeded, per user)."""
    users = []
    for uid, items in per_user.items():
        history, held = split_items(items, query_frac=query_frac, seed=seed)
        queries = [
            Query(
                it.id, task.query_prompt(it.fields), it.fields["label"], {"text": it.fields["text"]}
            )
            for it in held
        ]
        users.append(User(uid, history, queries))
    return users


def load_studemo(
    directory: str | Path,
    dimension: str = "valence",
    query_frac: float = 0.2,
    seed: int = 0,
    skip_empty: bool = False,
) -> Dataset:
    """StudEmo: each annotator is a user; items are {text, label} for one `dimension`.

    Labels are integer strings ("2", "-1"); users keep file order of first appearance.
    """
    directory = Path(directory)
    if dimension not in STUDEMO_DIMENSIONS:
        raise DataError(f"unknown StudEmo dimension {dimension!r}; use one of {STUDEMO_DIMENSIONS}")
    task = get_task(f"studemo-{dimension}")
    texts_file, ann_file = directory / "text_data.csv", directory / "annotation_data.csv"
    texts = {row["text_id"]: row["text"] for row in _read_csv(texts_file, ("text_id", "text"))}
    per_user: dict[str, list[Item]] = {}
    for r, row in enumerate(_read_csv(ann_file, ("text_id", "annotator_id", dimension))):
        value = (row.get(dimension) or "").strip()
        if not value:
            continue  # this annotator did not rate this dimension
        where = f"row {r + 2} of {ann_file}"
        if row["text_id"] not in texts:
            raise DataError(f"{where} names text_id {row['text_id']!r}, absent from {texts_file}")
        try:
            label = str(int(float(value)))
        except ValueError as exc:
            raise DataError(f"{where} has {dimension}={value!r}, not a number; fix it") from exc
        uid = str(row["annotator_id"]).strip()
        item = Item(f"{row['text_id']}", {"text": texts[row["text_id"]], "label": label})
        per_user.setdefault(uid, []).append(item)
    users = _annotator_users(per_user, task, query_frac, seed)
    return Dataset(task.name, _finish(users, ann_file, skip_empty), str(directory))


def load_tweeteval(
    csv_path: str | Path, query_frac: float = 0.2, seed: int = 0, skip_empty: bool = False
) -> Dataset:
    """TweetEval hate (PEFT-U `annotations_g3.csv`): one `label_<X>` column per annotator X."""
    path = Path(csv_path)
    rows = _read_csv(path, ("id", "text"))
    columns = [c for c in (rows[0] if rows else {}) if c.startswith("label_")]
    if not columns:
        raise DataError(f"{path} has no label_<annotator> column; is it annotations_g3.csv?")
    task = get_task("tweeteval-hate")
    per_user: dict[str, list[Item]] = {c[len("label_") :]: [] for c in columns}
    for r, row in enumerate(rows):
        for col in columns:
            label = (row.get(col) or "").strip()
            if not label:
                continue  # this annotator did not label this tweet
            if label not in task.labels:
                raise DataError(
                    f"row {r + 2} of {path}, column {col}: label {label!r} is not "
                    f"one of {task.labels}; fix the cell"
                )
            item = Item(str(row["id"]), {"text": row["text"], "label": label})
            per_user[col[len("label_") :]].append(item)
    users = _annotator_users(per_user, task, query_frac, seed)
    return Dataset(task.name, _finish(users, path, skip_empty), str(path))


# -- generic JSONL ------------------------------------------------------------------------------
def _jsonl_user(obj: Any, task: Task, where: str) -> User:
    if not isinstance(obj, dict) or "user_id" not in obj:
        raise DataError(f"{where} is not a JSON object with 'user_id'; see docs/data.md")
    uid = str(obj["user_id"])
    history = [
        _make_item(it, task, f"{where} (user {uid!r}), history item {i},", f"{uid}-h{i}")
        for i, it in enumerate(obj.get("history") or [])
    ]
    if history and all(it.date for it in history):
        history.sort(key=lambda it: it.date or "")  # stable: equal dates keep file order
    queries = []
    for j, q in enumerate(obj.get("queries") or []):
        if not isinstance(q, dict):
            raise DataError(f"{where} (user {uid!r}), query {j}, is not a JSON object")
        fields = {k: str(v) for k, v in q.items() if k not in _RESERVED and v is not None}
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
    return Dataset(the_task.name, _finish(users, path, skip_empty), str(path))


# -- dispatch ------------------------------------------------------------------------------------
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
