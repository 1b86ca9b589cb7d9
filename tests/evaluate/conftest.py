"""Tiny trained runs shared by the evaluation tests: trained once per session, copied
into each test's own folder so one test's damage (a deleted manifest, a flipped byte)
never reaches another."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import TINY_OVERRIDES

# PROPER settings small enough for seconds (as tests/train/test_groups.small_proper)
PROPER = [
    "proper.groups=4",
    "proper.r=2",
    "proper.alpha=4.0",
    "proper.user_dim=4",
    "proper.epochs=1.0",
    "proper.batch_size=8",
    "proper.user_r=2",
    "proper.user_alpha=4.0",
    "proper.user_epochs=1.0",
]


def _config(output_dir, *extra):
    from ownlm.config import load_config

    return load_config(
        None,
        [
            f"output_dir={output_dir}",
            "name=t",
            "data=demo-tags",
            "max_users=6",
            "max_queries=2",
            *TINY_OVERRIDES,
            *extra,
        ],
    )


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory):
    """Run dirs: "population" after stage 1 only, "users" the same run after the OPPU and
    PEFT user stages, "proper" its base with stage-2 groups and a proper-user adapter
    for the first test user only; ~6 s on 2 CPUs."""
    from ownlm import run as run_module
    from ownlm.pipeline.stages import train_stages
    from ownlm.proper.user_stage import train_proper_users
    from ownlm.run import Run

    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_module, "CACHE_DIR", root / "cache")
        run = Run(_config(root / "runs"))
        train_stages(run, ["population"], [])
        shutil.copytree(run.dir, root / "population" / "t")
        train_stages(run, ["users"], ["oppu", "peft"])
        proper = Run(_config(root / "proper", *PROPER))
        shutil.copytree(run.dir / "base", proper.dir / "base")
        train_stages(proper, ["groups"], [])
        train_proper_users(proper, "user", users=[proper.split.test[0]])
    return {
        "population": root / "population" / "t",
        "users": run.dir,
        "proper": proper.dir,
        "cache": root / "cache",
    }


@pytest.fixture
def copy_run(trained_runs, tmp_path, monkeypatch):
    """`copy_run(kind)`: a fresh copy of a trained run ("population", "users" or
    "proper") under tmp_path, as a Run."""
    from ownlm import run as run_module
    from ownlm.run import Run

    monkeypatch.setattr(run_module, "CACHE_DIR", trained_runs["cache"])

    def make(kind: str):
        shutil.copytree(trained_runs[kind], tmp_path / "runs" / "t")
        return Run(_config(tmp_path / "runs", *(PROPER if kind == "proper" else ())))

    return make
