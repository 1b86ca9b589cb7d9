"""History formats: the same history items written another way, for the history-format
study (`ownlm.studies.formats`; OPPU, Sec. 5, finds OPPU "robust across various user
history formats").

A format is a variant of a `Task` that changes how HISTORY items are written, and only
that: the retrieved items in a prompt (`item_template`) and the user stage's training
pairs built from history items (`pair_prompt`). The query prompt, the labels, the output
field and the text BM25 indexes stay the task's own, so every format retrieves the same
items for the same queries and is scored on the same prompts. Formats are built from the
task's `{field}` templates alone, so they exist for every task, YAML tasks included:

* `template`: the task itself (LaMP's wording);
* `renamed`: fields renamed (the inputs "input" / "input 1", "input 2", ...; the answer
  "answer") and reordered (a retrieved item shows the answer first, the inputs in
  reverse order), joined by " | ": ``answer: crime | input: A detective ...``;
* `kv`: terse key=value with the task's own field names, no instruction:
  ``description=A detective ...; tag=crime``;
* `dropped`: `kv` without one auxiliary field (an item field that is neither the task
  input nor the answer). Only tasks whose templates read such a field have it; none of
  the built-in tasks does, as a YAML task's templates read the input and output alone.

A training pair's prompt ends with the answer's key (``tag=``, ``answer:``), the target
being the item's answer, as in the template's pairs.
"""

from __future__ import annotations

from dataclasses import replace

from ownlm.data.tasks import _FIELD, Task
from ownlm.errors import ConfigError

FORMATS = ("template", "renamed", "kv", "dropped")


def _names(template: str) -> list[str]:
    return list(dict.fromkeys(_FIELD.findall(template)))


def item_fields(task: Task) -> list[str]:
    """Fields a retrieved item shows in the template, the answer last."""
    names = [n for n in _names(task.item_template) if n != task.output_field]
    return [*names, task.output_field]


def pair_inputs(task: Task) -> list[str]:
    """Fields a training pair's prompt reads in the template (the answer too where the
    input is the answer: LaMP-7 paraphrases the user's own tweet)."""
    return _names(task.pair_prompt or task.prompt)


def auxiliary_field(task: Task) -> str | None:
    """The field `dropped` removes: the last one the templates read that is neither the
    task input nor the answer; None when there is none (then the task has no `dropped`)."""
    names = dict.fromkeys(pair_inputs(task) + item_fields(task))
    extra = [n for n in names if n not in (task.input_field, task.output_field)]
    return extra[-1] if extra else None


def _renamed(task: Task) -> Task:
    inputs = list(dict.fromkeys(pair_inputs(task) + item_fields(task)[:-1]))
    alias = {n: "input" if len(inputs) == 1 else f"input {i}" for i, n in enumerate(inputs, 1)}

    def shown(names: list[str]) -> list[str]:
        return [f"{alias[n]}: {{{n}}}" for n in names]

    answer = f"answer: {{{task.output_field}}}"
    item = " | ".join([answer, *shown(list(reversed(item_fields(task)[:-1])))])
    pair = " | ".join([*shown(list(reversed(pair_inputs(task)))), "answer:"])
    return replace(task, item_template=item, pair_prompt=pair)


def _kv(task: Task, drop: str | None = None) -> Task:
    def shown(names: list[str]) -> str:
        return "; ".join(f"{n}={{{n}}}" for n in names if n != drop)

    pair = shown(pair_inputs(task))
    return replace(
        task,
        item_template=shown(item_fields(task)),
        pair_prompt=f"{pair}; {task.output_field}=",
        text_fields=tuple(n for n in task.text_fields if n != drop),
    )


def available_formats(task: Task) -> tuple[str, ...]:
    """The formats `task` has: all of FORMATS, `dropped` only with an auxiliary field."""
    return tuple(f for f in FORMATS if f != "dropped" or auxiliary_field(task))


def history_format(task: Task, name: str) -> Task:
    """`task` with its history items written in format `name` (see the module's list)."""
    if name not in FORMATS:
        raise ConfigError(f"history format must be one of {FORMATS} but the value is {name!r}")
    if name == "template":
        return task
    if name == "renamed":
        return _renamed(task)
    if name == "kv":
        return _kv(task)
    drop = auxiliary_field(task)
    if drop is None:
        raise ConfigError(
            f"task {task.name} has no field to drop (its templates read only the input "
            f"{task.input_field!r} and the answer {task.output_field!r}); use the formats "
            f"{', '.join(available_formats(task))}"
        )
    return _kv(task, drop)


def history_formats(task: Task, names=None) -> dict[str, Task]:
    """{format name: task variant} for `names` (default: every format `task` has)."""
    return {name: history_format(task, name) for name in names or available_formats(task)}
