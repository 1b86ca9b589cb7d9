"""Shared fixtures: tiny models and runs that build in seconds, with no network."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_OVERRIDES = [
    "tiny.vocab_size=400",
    "tiny.hidden_size=32",
    "tiny.layers=1",
    "tiny.heads=2",
    "tiny.intermediate_size=64",
    "tiny.max_len=192",
    "tiny.min_steps=2",
    "tiny.epochs=0.1",
    "tiny.copy_steps=0",  # the small preset's copy phase: minutes, not a unit test's seconds
    "population.epochs=0.5",
    "user.epochs=1",
    "user.batch_size=8",
    "validation.max_items=8",  # validation runs in every tiny stage: keep it cheap
]


@pytest.fixture
def tiny_cfg(tmp_path, monkeypatch):
    """A demo-tags experiment on 6 users with a 1-layer Llama, cached under tmp_path."""
    from ownlm import run as run_module
    from ownlm.config import load_config

    monkeypatch.setattr(run_module, "CACHE_DIR", tmp_path / "cache")
    return load_config(
        None,
        [
            f"output_dir={tmp_path / 'runs'}",
            "name=t",
            "data=demo-tags",
            "max_users=6",
            "max_queries=2",
            *TINY_OVERRIDES,
        ],
    )


def trained_demo_run(root, max_users: int):
    """A demo-tags run under `root` with stage 1 and its test users' OPPU adapters
    (tiny sizes, its own backbone cache); returns the run directory. For module-scoped
    fixtures that copy it per test."""
    from ownlm import run as run_module
    from ownlm.config import load_config
    from ownlm.oppu.sequential import train_users
    from ownlm.run import Run
    from ownlm.train.population import train_population

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_module, "CACHE_DIR", root / "cache")
        keys = [f"output_dir={root / 'runs'}", "name=t", "data=demo-tags"]
        run = Run(
            load_config(None, [*keys, f"max_users={max_users}", "max_queries=2", *TINY_OVERRIDES])
        )
        train_population(run)
        train_users(run, "oppu")
    return run.dir
