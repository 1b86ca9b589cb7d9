"""A task defined in YAML, so that people bring their own task without writing Python.

A task file (or an inline `task:` mapping in an experiment config) holds::

    name: my-ratings                 # any name but a built-in task's
    kind: rating                     # classification | rating | generation
    labels: [1, 2, 3, 4, 5]          # the answers (classification, rating); none for generation
    input_field: text                # the history-item field holding the task input
    output_field: score              # the history-item field holding the user's answer
    prompt: "How would you score this review from 1 to 5? Just answer with the score. review: {text}"
    item_template: '{score} is the score for "{text}"'   # one retrieved item in a prompt
    description: optional, one line
    history_note: optional, written after the retrieved items

`resolve_task` reads a `task` setting: a built-in task's name, a task file's path or a
mapping. `{field}` placeholders name item fields: the prompt reads the input field, the item
template the input and output fields; any other brace is refused. Every mistake is one
`ConfigError` naming the key and the fix, raised when the task is read, before any data
is loaded. The generic JSONL layout (`data.loaders.load_jsonl`) then works for the task.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from ownlm.data.checks import shown
from ownlm.data.io import RESERVED
from ownlm.data.tasks import _FIELD, KINDS, TASKS, Task, get_task
from ownlm.errors import ConfigError
from ownlm.safe_yaml import load_yaml_file

REQUIRED = ("name", "kind", "input_field", "output_field", "prompt", "item_template")
OPTIONAL = ("labels", "description", "history_note")
EXAMPLES = {  # shown in the fix of a missing or malformed key
    "name": "name: my-ratings",
    "kind": "kind: rating",
    "labels": "labels: [1, 2, 3, 4, 5]",
    "input_field": "input_field: text",
    "output_field": "output_field: score",
    "prompt": 'prompt: "Score this review from 1 to 5. review: {text}"',
    "item_template": "item_template: '{score} is the score for \"{text}\"'",
    "description": "description: the score each user gives a review",
    "history_note": 'history_note: " Following the given patterns"',
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_WORD = re.compile(r"\w+", re.ASCII)
_WHOLE = re.compile(r"-?\d+")


def resolve_task(spec: str | dict | Task) -> Task:
    """The task a `task` setting names: a registered task's name, a mapping defining one,
    or the path of a YAML task file (`.yaml`, `.yml`); a Task passes through."""
    if isinstance(spec, dict):
        return task_from_mapping(spec, "config key 'task'")
    if isinstance(spec, str) and spec.strip().lower().endswith((".yaml", ".yml")):
        return task_from_mapping(read_task_file(Path(spec)), f"task file {spec}")
    return get_task(spec)


def read_task_file(path: Path) -> Any:
    """The YAML in `path` (UTF-8, a BOM is fine), its problems said in one line."""
    return load_yaml_file(path, "task file", f"check the path (cwd: {Path.cwd()})")


def task_from_mapping(raw: Any, where: str) -> Task:
    """A `Task` from its YAML mapping, every key checked (`where` names the source)."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where} must be a mapping of task keys ({', '.join(REQUIRED)}), not a "
            f"{type(raw).__name__}; see configs/tasks/example-task.yaml"
        )
    _check_keys(raw, where)
    text = {k: _text(raw, k, where) for k in REQUIRED + OPTIONAL if k != "labels" and k in raw}
    name, kind = text["name"], text["kind"]
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: name {shown(name)} must be 1-64 characters from letters, digits and . _ - "
            "(starting with a letter or digit); rename it, e.g. name: my-ratings"
        )
    if name in TASKS:
        raise ConfigError(
            f"{where}: name {name!r} is a built-in task; give your task another name, or "
            f"set task: {name} to use the built-in one"
        )
    if kind not in KINDS:
        raise ConfigError(
            f"{where}: kind {shown(kind)} must be one of {', '.join(KINDS)}; e.g. kind: rating"
        )
    _check_fields(text, where)
    _check_templates(text, where)
    return Task(
        name=name,
        kind=kind,
        labels=_labels(raw.get("labels"), kind, where),
        input_field=text["input_field"],
        output_field=text["output_field"],
        description=text.get("description", ""),
        prompt=text["prompt"],
        item_template=text["item_template"],
        history_note=text.get("history_note", ""),
    )


def _check_keys(raw: dict, where: str) -> None:
    for key in raw:
        if key not in REQUIRED + OPTIONAL:
            near = difflib.get_close_matches(str(key), REQUIRED + OPTIONAL, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(
                f"{where}: unknown key {shown(str(key))}{hint}; a task's keys are "
                f"{', '.join(REQUIRED + OPTIONAL)}: remove or rename it"
            )
    for key in REQUIRED:
        if raw.get(key) is None:
            raise ConfigError(f"{where}: key {key!r} is missing; add it, e.g. {EXAMPLES[key]}")


def _text(raw: dict, key: str, where: str) -> str:
    value = raw[key]
    if value is None and key in OPTIONAL:
        return ""
    if not isinstance(value, str) or (key in REQUIRED and not value.strip()):
        what = (
            "empty"
            if isinstance(value, str)
            else f"{shown(value)} ({type(value).__name__}, not text)"
        )
        raise ConfigError(f"{where}: key {key!r} is {what}; give text, e.g. {EXAMPLES[key]}")
    return value.strip() if key != "history_note" else value


def _check_fields(text: dict, where: str) -> None:
    for key in ("input_field", "output_field"):
        name = text[key]
        if not _WORD.fullmatch(name) or name in RESERVED:
            why = "is a record key, not an item field" if name in RESERVED else "is not a word"
            raise ConfigError(
                f"{where}: {key} {shown(name)} {why}; name the field with letters, digits and _ "
                f"(not {', '.join(RESERVED)}), e.g. {EXAMPLES[key]}"
            )


def _check_templates(text: dict, where: str) -> None:
    """Each template's placeholders are fields of the task, and no stray brace is left."""
    inp, out = text["input_field"], text["output_field"]
    allowed = {"prompt": {inp}, "item_template": {inp, out}}
    for key, fields in allowed.items():
        template = text[key]
        for name in _FIELD.findall(template):
            if name not in fields:
                say = " or ".join(f"{{{f}}}" for f in sorted(fields))
                raise ConfigError(
                    f"{where}: {key} placeholder {{{name}}} is not a field of the task; "
                    f"the {key} may use {say}: fix the name, or set input_field/output_field"
                )
        if "{" in _FIELD.sub("", template) or "}" in _FIELD.sub("", template):
            raise ConfigError(
                f"{where}: {key} has a brace that is not a {{field}} placeholder; write "
                f"placeholders as {{{inp}}} and remove other braces"
            )
    if f"{{{inp}}}" not in text["prompt"]:
        raise ConfigError(
            f"{where}: prompt does not place the input field; add {{{inp}}} where the input "
            "goes, e.g. " + EXAMPLES["prompt"]
        )
    if f"{{{out}}}" not in text["item_template"]:
        raise ConfigError(
            f"{where}: item_template does not show the user's answer; add {{{out}}}, e.g. "
            + EXAMPLES["item_template"]
        )


def _labels(raw: Any, kind: str, where: str) -> tuple[str, ...]:
    """The task's labels as strings: none for generation, >= 2 distinct ones otherwise;
    a rating task's are whole numbers (its scale, scored by MAE)."""
    if kind == "generation":
        if raw not in (None, []):
            raise ConfigError(
                f"{where}: labels are given for a generation task, whose answers are free "
                "text; remove labels, or set kind: classification (or rating)"
            )
        return ()
    if not isinstance(raw, list) or len(raw) < 2:
        got = "missing" if raw is None else shown(raw)
        raise ConfigError(
            f"{where}: labels is {got}; a {kind} task lists at least 2 answers, e.g. "
            + ("labels: [1, 2, 3, 4, 5]" if kind == "rating" else "labels: [positive, negative]")
        )
    labels = tuple(_label(x, kind, where) for x in raw)
    folded = [x.casefold() for x in labels]
    repeat = next((x for i, x in enumerate(labels) if x.casefold() in folded[:i]), None)
    if repeat is not None:
        raise ConfigError(
            f"{where}: label {shown(repeat)} is listed twice (answers are read case-insensitively); "
            "list each label once"
        )
    return labels


def _label(value: Any, kind: str, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(
            f"{where}: label {shown(value)} is a {type(value).__name__}; give text or a number"
        )
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    label = str(value).strip()
    if not label:
        raise ConfigError(
            f"{where}: a label is empty; give every label as text, e.g. labels: [yes, no]"
        )
    if kind == "rating" and not _WHOLE.fullmatch(label):
        raise ConfigError(
            f"{where}: rating label {shown(label)} is not a whole number; a rating task's labels "
            "are its scale, e.g. labels: [1, 2, 3, 4, 5] (or use kind: classification)"
        )
    return str(int(label)) if kind == "rating" else label  # "03" is 3, as data reads it
