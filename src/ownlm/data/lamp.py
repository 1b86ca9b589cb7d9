"""LaMP's two layouts: the per-user `users.json` of OPPU / Per-Pcs and the official
`*_questions.json` (+ `*_outputs.json`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ownlm.data import checks
from ownlm.data.io import finish, infer_task, list_field, make_item, read_json, task_from_name
from ownlm.data.records import Dataset, Query, User
from ownlm.data.tasks import Task, get_task
from ownlm.errors import DataError


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
    records = read_json(file)
    if not isinstance(records, list):
        raise DataError(f"{file} must hold a JSON list of users; got {type(records).__name__}")
    if task is not None:
        the_task = get_task(task)
    elif re.fullmatch(r"LaMP_\d+[A-Za-z]?", file.parent.name):
        the_task = task_from_name(file.parent.name, file)
    else:
        the_task = infer_task(records, file)
    users, seen = [], checks.user_ids(file)
    for r, rec in enumerate(records):
        users.append(_lamp_user(rec, the_task, f"record {r} of {file}"))
        seen.add(users[-1].user_id, f"record {r}")
    return Dataset(the_task.name, finish(users, file, skip_empty), str(file))


def _lamp_user(rec: Any, task: Task, where: str) -> User:
    """One user of the per-user layout; `where` names the record for error messages."""
    if not isinstance(rec, dict) or "user_id" not in rec:
        raise DataError(f"{where} is not an object with 'user_id'; fix it")
    uid = checks.user_id(rec["user_id"], where)
    where = f"{where} (user {uid!r})"
    history = [
        make_item(it, task, f"{where}, history item {i}", f"{uid}-h{i}")
        for i, it in enumerate(list_field(rec, "profile", where))
    ]
    queries, ids = [], checks.query_ids(where)
    for j, q in enumerate(list_field(rec, "query", where)):
        qwhere = f"{where}, query {j}"
        if not isinstance(q, dict) or not isinstance(q.get("input"), str):
            raise DataError(
                f"{qwhere}: lacks a text field 'input'; each query must be "
                '{"id", "input", "gold"}'
            )
        qid = checks.record_id(q.get("id"), f"{uid}-q{j}", qwhere)
        qwhere = f"{qwhere} (id {checks.shown(qid)})"
        gold = q["gold"] if "gold" in q else q.get("output")
        queries.append(
            Query(qid, q["input"], checks.gold(gold, task, qwhere), task.extract_fields(q["input"]))
        )
        ids.add(qid, f"query {j}")
    return User(uid, history, queries)


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
    questions = read_json(qfile)
    if not isinstance(questions, list):
        raise DataError(
            f"{qfile} must hold a JSON list of questions; got {type(questions).__name__}"
        )
    if outputs_path is None and "questions" in qfile.name:
        sibling = qfile.with_name(qfile.name.replace("questions", "outputs"))
        outputs_path = sibling if sibling.is_file() else None
    golds, out_task = _read_golds(Path(outputs_path)) if outputs_path is not None else ({}, None)
    the_task = get_task(task) if task is not None else out_task or infer_task(questions, qfile)
    users, seen = [], checks.user_ids(qfile)
    for r, rec in enumerate(questions):
        users.append(_question_user(rec, the_task, f"record {r} of {qfile}", golds))
        seen.add(users[-1].user_id, f"record {r}")
    return Dataset(the_task.name, finish(users, qfile, skip_empty), str(qfile))


Golds = dict[str, tuple[Any, str]]  # question id -> (raw gold, where it is)


def _read_golds(ofile: Path) -> tuple[Golds, Task | None]:
    """The outputs file's golds by question id (checked once the task is known) and the
    task it names."""
    outputs = read_json(ofile)
    if not isinstance(outputs, dict) or not isinstance(outputs.get("golds"), list):
        raise DataError(f'{ofile} must be {{"task": ..., "golds": [{{"id", "output"}}]}}')
    golds: Golds = {}
    seen = checks.UniqueIds(str(ofile), "gold id", "give each question one gold")
    for g, gold in enumerate(outputs["golds"]):
        if not isinstance(gold, dict) or "id" not in gold or "output" not in gold:
            raise DataError(f"gold {g} of {ofile} lacks 'id' or 'output'; fix the file")
        gid = str(gold["id"])
        seen.add(gid, f"gold {g}")
        golds[gid] = (gold["output"], f"gold {g} of {ofile} (question {gid!r})")
    task = task_from_name(str(outputs["task"]), ofile) if outputs.get("task") else None
    return golds, task


def _question_user(rec: Any, task: Task, where: str, golds: Golds) -> User:
    """One question of the official layout as a user with one query."""
    if not isinstance(rec, dict) or "id" not in rec or not isinstance(rec.get("input"), str):
        raise DataError(
            f"{where} lacks 'id' or a text 'input'; each question is "
            '{"id", "input", "profile": [...]}'
        )
    uid = checks.user_id(rec["id"], where)
    where = f"{where} (question {uid!r})"
    history = [
        make_item(it, task, f"{where}, profile item {i}", f"{uid}-h{i}")
        for i, it in enumerate(list_field(rec, "profile", where))
    ]
    raw, gold_where = golds.get(uid, (None, ""))
    gold = checks.gold(raw, task, gold_where)
    return User(uid, history, [Query(uid, rec["input"], gold, task.extract_fields(rec["input"]))])
