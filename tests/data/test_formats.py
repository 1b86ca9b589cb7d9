"""History formats (issue #11, item 4): every task, YAML ones included, written as its
template, renamed and reordered, terse key=value, and with a field dropped where it has
one; queries keep the task's own prompt."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ownlm.data.formats import (
    FORMATS,
    auxiliary_field,
    available_formats,
    history_format,
    history_formats,
    item_fields,
    pair_inputs,
)
from ownlm.data.records import Item
from ownlm.data.task_file import resolve_task
from ownlm.data.tasks import TASKS, get_task
from ownlm.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "tasks" / "example-task.yaml"
TASK_NAMES = [*TASKS, str(EXAMPLE)]


def _item(task) -> Item:
    """An item whose every field holds a value no template contains: "<field>-value"."""
    return Item("i1", {n: f"{n}-value" for n in [*task.fields, "extra"]})


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_format_renders_the_fields_it_should(name):
    task = resolve_task(name)
    item = _item(task)
    for fmt, variant in history_formats(task).items():
        rendered = variant.render_item(item)
        for field in item_fields(task):  # the answer included: the item shows what they said
            assert f"{field}-value" in rendered, (fmt, field, rendered)
        prompt, target = variant.item_pair(item)
        assert target == f"{task.output_field}-value"
        for field in pair_inputs(task):
            assert f"{field}-value" in prompt, (fmt, field, prompt)
        if task.output_field not in pair_inputs(task):  # the answer is the target, not a hint
            assert target not in prompt
        # what the queries read stays the task's own
        assert (variant.prompt, variant.labels, variant.output_field) == (
            task.prompt,
            task.labels,
            task.output_field,
        )
        assert variant.item_text(item) == task.item_text(item)


def test_the_formats_differ_from_the_template_as_described():
    task = get_task("demo-tags")
    item = Item("i1", {"description": "A detective in the rain.", "tag": "crime"})
    rendered = {f: t.render_item(item) for f, t in history_formats(task).items()}
    pairs = {f: t.item_pair(item)[0] for f, t in history_formats(task).items()}
    assert rendered == {
        "template": 'the tag for the movie: "A detective in the rain." is "crime"',
        "renamed": "answer: crime | input: A detective in the rain.",
        "kv": "description=A detective in the rain.; tag=crime",
    }
    assert pairs["renamed"] == "input: A detective in the rain. | answer:"
    assert pairs["kv"] == "description=A detective in the rain.; tag="
    assert pairs["template"] == task.query_prompt({"description": "A detective in the rain."})
    assert history_format(task, "template") is task
    assert "Which tag" not in pairs["kv"] + rendered["kv"] + pairs["renamed"]


def test_a_dropped_field_is_really_absent():
    base = get_task("demo-tags")
    assert available_formats(base) == ("template", "renamed", "kv")  # nothing to drop
    with pytest.raises(ConfigError, match="no field to drop"):
        history_format(base, "dropped")
    task = replace(
        base,
        item_template='the tag for the {year} movie: "{description}" is "{tag}"',
        text_fields=("description", "year"),
    )
    assert auxiliary_field(task) == "year" and available_formats(task) == FORMATS
    dropped = history_format(task, "dropped")
    item = Item("i1", {"description": "A detective.", "year": "1999", "tag": "crime"})
    assert dropped.render_item(item) == "description=A detective.; tag=crime"
    prompt, target = dropped.item_pair(item)
    assert "1999" not in prompt + dropped.item_text(item) and target == "crime"
    assert "year" not in dropped.fields and "1999" in history_format(task, "kv").render_item(item)


def test_an_unknown_format_is_refused_with_the_known_ones():
    with pytest.raises(ConfigError, match="template"):
        history_format(get_task("demo-tags"), "xml")
