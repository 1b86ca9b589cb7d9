"""LaMP's two layouts: the per-user `users.json` of OPPU / Per-Pcs and the official
`*_questions.json` (+ `*_outputs.json`)."""

from __future__ import annotations

import re
from pathlib import Path

from ownlm.data.io import finish, infer_task, make_item, read_json, task_from_name
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
    users = []
    for r, rec in enumerate(records):
        if not isinstance(rec, dict) or "user_id" not in rec:
            raise DataError(f"record {r} of {file} is not an object with 'user_id'; fix it")
        uid = str(rec["user_id"])
        history = [
            make_item(
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
    return Dataset(the_task.name, finish(users, file, skip_empty), str(file))


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
    golds: dict[str, str] = {}
    out_task = None
    if outputs_path is not None:
        ofile = Path(outputs_path)
        outputs = read_json(ofile)
        if not isinstance(outputs, dict) or not isinstance(outputs.get("golds"), list):
            raise DataError(f'{ofile} must be {{"task": ..., "golds": [{{"id", "output"}}]}}')
        for g, gold in enumerate(outputs["golds"]):
            if not isinstance(gold, dict) or "id" not in gold or "output" not in gold:
                raise DataError(f"gold {g} of {ofile} lacks 'id' or 'output'; fix the file")
            golds[str(gold["id"])] = str(gold["output"])
        if outputs.get("task"):
            out_task = task_from_name(str(outputs["task"]), ofile)
    the_task = get_task(task) if task is not None else out_task or infer_task(questions, qfile)
    users = []
    for r, rec in enumerate(questions):
        if not isinstance(rec, dict) or "id" not in rec or "input" not in rec:
            raise DataError(
                f"record {r} of {qfile} lacks 'id' or 'input'; each question is "
                '{"id", "input", "profile": [...]}'
            )
        uid = str(rec["id"])
        history = [
            make_item(
                it,
                the_task,
                f"record {r} (question {uid!r}) of {qfile}, profile item {i},",
                f"{uid}-h{i}",
            )
            for i, it in enumerate(rec.get("profile") or [])
        ]
        query = Query(uid, rec["input"], golds.get(uid), the_task.extract_fields(rec["input"]))
        users.append(User(uid, history, [query]))
    return Dataset(the_task.name, finish(users, qfile, skip_empty), str(qfile))
