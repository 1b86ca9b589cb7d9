"""A task of one's own in YAML (issue #11, item 8): read from a file or an inline `task:`
mapping, every mistake one line naming the key and the fix, and a YAML task trained and
evaluated end to end on the tiny backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ownlm.data.loaders import load_dataset
from ownlm.data.task_file import resolve_task
from ownlm.errors import ConfigError
from tests.conftest import TINY_OVERRIDES

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "configs" / "tasks" / "example-task.yaml"
DATA = ROOT / "tests" / "data" / "fixtures" / "example-task.jsonl"


def spec(**changes) -> dict:
    """The example task's mapping with `changes` (a value of None removes the key)."""
    out = {**yaml.safe_load(EXAMPLE.read_text()), **changes}
    return {k: v for k, v in out.items() if v is not None}


def test_the_example_file_and_its_mapping_define_the_same_task():
    task = resolve_task(str(EXAMPLE))
    assert task == resolve_task(spec())
    assert (task.name, task.kind, task.labels) == ("product-stars", "rating", tuple("12345"))
    assert task.fields == ("text", "stars") and task.ordinal and task.labelled_history
    data = load_dataset(DATA, str(EXAMPLE))  # the generic JSONL layout reads it
    assert data.task == "product-stars" and len(data.users) == 8
    query = data.users[0].queries[0]
    assert query.input == task.query_prompt({"text": query.fields["text"]})
    assert {it.fields["stars"] for u in data.users for it in u.history} <= set(task.labels)


def test_a_classification_and_a_generation_task():
    yes_no = resolve_task(spec(name="liked", kind="classification", labels=["yes", "no"]))
    assert yes_no.labels == ("yes", "no") and not yes_no.ordinal
    headline = resolve_task(
        spec(
            name="my-headlines",
            kind="generation",
            labels=None,
            output_field="title",
            prompt="Write this user's headline for: {text}",
            item_template='"{title}" is the headline for "{text}"',
        )
    )
    assert headline.labels == () and headline.fields == ("text", "title")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"lables": [1, 2]}, r"unknown key 'lables' \(did you mean 'labels'\?\).*remove or rename"),
        ({"prompt": None}, r"key 'prompt' is missing; add it, e.g. prompt: "),
        ({"kind": "rate"}, r"kind 'rate' must be one of classification, rating, generation"),
        ({"name": 2024}, r"key 'name' is 2024 \(int, not text\); give text, e.g. name: "),
        ({"name": "LaMP-3"}, r"name 'LaMP-3' is a built-in task; give your task another name"),
        ({"name": "my/task"}, r"name 'my/task' must be 1-64 characters from letters"),
        (
            {"prompt": "Score: {review}"},
            r"prompt placeholder \{review\} is not a field of the task; the prompt may use \{text\}",
        ),
        (
            {"item_template": "{user}: {stars}"},
            r"item_template placeholder \{user\} is not a field",
        ),
        ({"prompt": "Score { text }: {text}"}, r"prompt has a brace that is not a \{field\}"),
        ({"prompt": "Score the review."}, r"prompt does not place the input field; add \{text\}"),
        (
            {"item_template": '"{text}"'},
            r"item_template does not show the user's answer; add \{stars\}",
        ),
        ({"input_field": "gold"}, r"input_field 'gold' is a record key, not an item field"),
        ({"kind": "generation"}, r"labels are given for a generation task.*remove labels"),
        ({"labels": None}, r"labels is missing; a rating task lists at least 2 answers"),
        ({"labels": [1, 2.5, 3]}, r"rating label '2.5' is not a whole number"),
        ({"labels": ["1", 1, 2]}, r"label '1' is listed twice"),
        ({"kind": "classification", "labels": ["Yes", "yes"]}, r"label 'yes' is listed twice"),
        ({"labels": [1, [2]]}, r"label \[2\] is a list; give text or a number"),
    ],
)
def test_each_mistake_is_one_line_naming_the_key_and_the_fix(changes, message):
    with pytest.raises(ConfigError, match=message) as err:
        resolve_task(spec(**changes))
    assert "\n" not in str(err.value) and str(err.value).startswith("config key 'task': ")


def test_a_file_that_is_no_task_says_so(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="task file .*nope.yaml does not exist; check the path"):
        resolve_task(str(missing))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML: .* at line 2"):
        resolve_task(str(bad))
    listed = tmp_path / "list.yaml"
    listed.write_text("- name: x\n")
    with pytest.raises(
        ConfigError, match=r"list.yaml must be a mapping of task keys .*, not a list"
    ):
        resolve_task(str(listed))
    with pytest.raises(ConfigError, match=r"unknown task 'my-task'.*your own in YAML"):
        resolve_task("my-task")


def _experiment(tmp_path: Path, task) -> Path:
    path = tmp_path / "experiment.yaml"
    values = {"name": "mine", "data": str(DATA), "task": task, "output_dir": str(tmp_path / "runs")}
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def test_a_bad_task_stops_train_before_any_work(tmp_path):
    from ownlm.cli import app

    config = _experiment(tmp_path, spec(kind="rate"))
    r = CliRunner().invoke(app, ["train", "-c", str(config), *_sets(TINY_OVERRIDES)])
    assert r.exit_code == 2, r.output
    assert "config key 'task': kind 'rate' must be one of" in r.output
    assert not (tmp_path / "runs" / "mine").exists()


def _sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def test_a_yaml_task_trains_and_evaluates_end_to_end(tmp_path, monkeypatch):
    """An inline `task:` mapping in the experiment config: stage 1 and OPPU's users on
    the tiny backbone, then `ownlm eval` from the run's own config.yaml (the mapping
    round-trips), scored by MAE with the median decode (a rating task)."""
    from ownlm import run as run_module
    from ownlm.cli import app

    monkeypatch.setattr(run_module, "CACHE_DIR", tmp_path / "cache")
    config = _experiment(tmp_path, spec())
    sets = _sets([*TINY_OVERRIDES, "max_queries=1"])
    train = ["train", "-c", str(config), "--stages", "population,users", "--variants", "oppu"]
    r = CliRunner().invoke(app, [*train, *sets])
    assert r.exit_code == 0, r.output
    run_dir = tmp_path / "runs" / "mine"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["task"] == spec()
    r = CliRunner().invoke(
        app, ["eval", "-c", str(run_dir / "config.yaml"), "--set", "methods=base,oppu"]
    )
    assert r.exit_code == 0, r.output
    assert "product-stars" in r.output and "labels by median" in r.output
    saved = json.loads((run_dir / "eval" / "results.json").read_text())
    assert saved["task"] == "product-stars" and saved["decode"] == "median"
    scores = {row["method"]: row["metrics"] for row in saved["results"]}
    assert {"base", "oppu", "tfidf-user"} <= scores.keys()
    assert scores["oppu"]["n_users"] == 2 and 0 <= scores["oppu"]["mae"] <= 4
    outputs = {p["output"] for p in saved["results"][-1]["predictions"]}
    assert outputs <= set("12345")


def test_a_task_file_of_nested_aliases_is_refused_at_once(tmp_path):
    from tests.test_safe_yaml import laughs

    path = tmp_path / "t.yaml"
    path.write_text(laughs(7, key="labels"))
    with pytest.raises(ConfigError, match=r"task file .*t.yaml: its aliases .* repeat more"):
        resolve_task(str(path))
