"""PEFT-U's annotator data: each annotator is a user whose labelled items are split
into history and queries (StudEmo, TweetEval hate)."""

from __future__ import annotations

from pathlib import Path

from ownlm.data import checks
from ownlm.data.io import finish, read_csv
from ownlm.data.records import Dataset, Item, Query, User
from ownlm.data.splits import split_items
from ownlm.data.tasks import STUDEMO_DIMENSIONS, Task, get_task
from ownlm.errors import DataError


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


def _score(value: str, task: Task, where: str, dimension: str) -> str:
    """A StudEmo cell ("2.0", "-1") as the task's label string ("2", "-1"); a fraction
    or a score outside the scale is an error, not silently cut."""
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"{where} has {dimension}={value!r}, not a number; fix the cell") from None
    return checks.label(number, task, where, dimension)


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
    texts = {row["text_id"]: row["text"] for row in read_csv(texts_file, ("text_id", "text"))}
    per_user: dict[str, list[Item]] = {}
    for r, row in enumerate(read_csv(ann_file, ("text_id", "annotator_id", dimension))):
        value = (row.get(dimension) or "").strip()
        if not value:
            continue  # this annotator did not rate this dimension
        where = f"row {r + 2} of {ann_file}"
        if row["text_id"] not in texts:
            raise DataError(f"{where} names text_id {row['text_id']!r}, absent from {texts_file}")
        label = _score(value, task, where, dimension)
        uid = checks.user_id(str(row["annotator_id"]).strip(), where)
        item = Item(f"{row['text_id']}", {"text": texts[row["text_id"]], "label": label})
        per_user.setdefault(uid, []).append(item)
    users = _annotator_users(per_user, task, query_frac, seed)
    return Dataset(task.name, finish(users, ann_file, skip_empty), str(directory))


def load_tweeteval(
    csv_path: str | Path, query_frac: float = 0.2, seed: int = 0, skip_empty: bool = False
) -> Dataset:
    """TweetEval hate (PEFT-U `annotations_g3.csv`): one `label_<X>` column per annotator X."""
    path = Path(csv_path)
    rows = read_csv(path, ("id", "text"))
    columns = [c for c in (rows[0] if rows else {}) if c.startswith("label_")]
    if not columns:
        raise DataError(f"{path} has no label_<annotator> column; is it annotations_g3.csv?")
    task = get_task("tweeteval-hate")
    per_user: dict[str, list[Item]] = {
        checks.user_id(c[len("label_") :], f"{path}, column {c}"): [] for c in columns
    }
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
    return Dataset(task.name, finish(users, path, skip_empty), str(path))
