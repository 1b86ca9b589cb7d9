"""The user stage on Ray: 2 local actors, one killed after its first chunk (Ray restarts
it and retries), the run complete and idempotent; a clear error without Ray."""

import sys

import pytest
import torch

from ownlm.errors import ConfigError
from ownlm.pipeline.stages import check_plan
from ownlm.run import Run
from ownlm.train.population import train_population


def test_executor_ray_without_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'ownlm\[ray\]'"):
        check_plan(["users"], ["oppu"], "ray")
    with pytest.raises(ConfigError, match="unknown executor"):
        check_plan(["users"], ["oppu"], "dask")


@pytest.mark.slow  # ~1 min on 2 CPUs: starts a local Ray and two actors, twice
def test_ray_actors_train_every_user_through_a_crash(tiny_cfg, monkeypatch):
    pytest.importorskip("ray")
    from safetensors.torch import load_file

    from ownlm.oppu.sequential import train_users
    from ownlm.pipeline.ray_executor import CRASH_ENV, train_users_ray

    tiny_cfg.max_users = 8  # 3 test users: chunks of 1 user, 2 actors
    tiny_cfg.user.users_per_batch = 1  # one user a chunk: both actors work and crash
    run = Run(tiny_cfg)
    train_population(run)
    users = run.split.test
    monkeypatch.setenv(CRASH_ENV, "1")  # each actor dies once, after its first chunk
    stats = train_users_ray(run, "oppu", workers=2)
    assert stats["trained"] == len(users) and stats["restarts"] >= 1
    store = run.store("oppu")
    assert all(store.exists(u.name) for u in users)
    monkeypatch.delenv(CRASH_ENV)
    again = train_users_ray(run, "oppu", workers=2)
    assert again["trained"] == 0 and again["resumed"] == len(users)
    # the same weights as the in-process stage: each user's training is its own
    first = users[0]
    on_ray = load_file(store.path(first.name) / "adapter_model.safetensors")
    store.delete(first.name)
    assert train_users(run, "oppu", users=[first])["trained"] == 1
    here = load_file(store.path(first.name) / "adapter_model.safetensors")
    assert on_ray.keys() == here.keys()
    assert all(torch.allclose(on_ray[k], here[k], atol=1e-5) for k in here)
