"""Served users get the personal prompt evaluation builds: retrieval + profile."""

from __future__ import annotations

from ownlm.data.demo import make_demo_tags
from ownlm.data.tasks import get_task
from ownlm.serve.personalize import Personalizer


def test_personalized_prompt_adds_profile_and_retrieval():
    ds = make_demo_tags(seed=0)
    user = ds.users[0]
    pers = Personalizer(get_task(ds.task), {"alice": user}, k=1, use_profile=True)
    text = user.queries[0].input
    prompt = pers.prompt("alice", text)
    assert prompt.startswith("User profile:") and prompt.endswith(text)


def test_personalizer_reads_the_runs_users(tmp_path):
    from ownlm.config import ExperimentConfig, save_config

    assert Personalizer.from_run(tmp_path) is None  # no config: served without user data
    save_config(
        ExperimentConfig(name="r", data="demo-tags", output_dir="elsewhere"),
        tmp_path / "config.yaml",
    )
    before = (tmp_path / "config.yaml").read_text()
    pers = Personalizer.from_run(tmp_path)
    assert pers is not None and pers.has("t000") and not pers.has("nobody") and not pers.has(None)
    assert (tmp_path / "config.yaml").read_text() == before  # serving never rewrites the run


def test_one_users_large_history_does_not_hold_up_other_users(monkeypatch):
    """A user's retrieval index is built on their first request; a huge history took the
    personalizer's lock for the whole build, so every other user's request waited."""
    import threading
    import time

    import ownlm.retrieval.prompts as prompts

    ds = make_demo_tags(seed=0)
    pers = Personalizer(
        get_task(ds.task), {"big": ds.users[0], "small": ds.users[1]}, k=1, use_profile=True
    )
    real, building = prompts.user_context, threading.Event()

    def slow(task, user):
        if user is ds.users[0]:
            building.set()
            time.sleep(2.0)
        return real(task, user)

    monkeypatch.setattr(prompts, "user_context", slow)
    big = threading.Thread(target=pers.prompt, args=("big", "x"))
    big.start()
    building.wait(5)
    start = time.perf_counter()
    query = ds.users[1].queries[0].input
    assert pers.prompt("small", query).endswith(query)
    assert time.perf_counter() - start < 1.0
    big.join()
    assert pers.built() == {"big", "small"}
    pers.forget("big")
    assert pers.built() == {"small"} and not pers.has("big")
