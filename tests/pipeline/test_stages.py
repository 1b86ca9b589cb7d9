"""The stage plan is checked before any work."""

import pytest

from ownlm.errors import ConfigError
from ownlm.pipeline.stages import check_plan


def test_unknown_stages_and_variants_are_refused():
    check_plan(["population", "groups", "users"], ["oppu", "peft", "proper-input", "proper-user"])
    with pytest.raises(ConfigError, match="unknown stage"):
        check_plan(["everything"], [])
    with pytest.raises(ConfigError, match="unknown variant 'proper-x'"):
        check_plan(["users"], ["proper-x"])


def test_training_warns_how_many_prompts_were_cut(monkeypatch):
    """Every prompt fitted while the stages train is counted; cut ones are one warning."""
    from types import SimpleNamespace

    from ownlm.backbone.context import fit_ids
    from ownlm.config import ExperimentConfig
    from ownlm.data.records import Item
    from ownlm.data.tasks import get_task
    from ownlm.pipeline import stages
    from ownlm.testing import toy_backbone

    fmt, task = toy_backbone().prompt_format, get_task("demo-tags")
    item = Item("i", {"description": "the movies " * 40, "tag": "comedy"})
    prompts = [task.build_prompt(f"query {i}", [item], "likes comedy") for i in range(3)]

    def train(run, *args):  # stands for the stages: two prompts of three do not fit
        for p in prompts:
            fit_ids(fmt, p, 30 if p != prompts[0] else 10_000)

    warned = []
    monkeypatch.setattr(stages, "_train", train)
    monkeypatch.setattr(stages.log, "warning", lambda msg, *a: warned.append(msg % a))
    stages.train_stages(SimpleNamespace(cfg=ExperimentConfig()), [], [])
    assert len(warned) == 1 and warned[0].startswith("2 of 3 training prompts did not fit")


def test_proper_variants_are_refused_on_ray_in_one_line(monkeypatch):
    """PROPER's user stage has no Ray route: asking for one is refused before any work,
    not run in this process behind the person's back."""
    from ownlm.errors import ConfigError
    from ownlm.pipeline import ray_executor
    from ownlm.pipeline.stages import check_plan

    monkeypatch.setattr(ray_executor, "import_ray", lambda: None)
    with pytest.raises(ConfigError, match="proper-user train in this process"):
        check_plan(["users"], ["oppu", "proper-user"], "ray")
    check_plan(["users"], ["oppu", "peft"], "ray")  # OPPU's variants go to Ray
