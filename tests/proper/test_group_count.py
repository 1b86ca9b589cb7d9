"""`proper.groups_choices`: stage 2's G chosen on dev users, stored, and read back from the
store by everything after stage 2."""

import json

import pytest
import torch

from ownlm.errors import ConfigError
from ownlm.proper.group_count import best_value, pick
from ownlm.proper.group_stage import train_groups
from ownlm.run import Run
from ownlm.train.population import train_population
from tests.proper.test_group_stage import small_proper


def record(monitor: str, values: list[float], kept: int) -> dict:
    return {"monitor": monitor, "kept": kept, "records": [{monitor: v} for v in values]}


def test_the_best_dev_validation_wins_and_a_tie_goes_to_fewer_groups():
    assert best_value(record("val_loss", [2.0, 1.5], kept=1)) == 1.5
    assert best_value(record("accuracy", [0.4, 0.7], kept=1)) == -0.7  # higher is better
    assert best_value(None) == float("inf")
    table = [
        {"groups": 2, "score": 1.30},
        {"groups": 4, "score": 1.10},
        {"groups": 6, "score": 1.10},
        {"groups": 8, "score": 1.20},
    ]
    assert pick(table)["groups"] == 4


def test_choices_are_refused_with_per_token_routing_or_a_G_below_one():
    from ownlm.config import load_config

    with pytest.raises(ConfigError, match="assignment=user"):
        load_config(None, ["proper.assignment=token", "proper.groups_choices=[2,4]"])
    with pytest.raises(ConfigError, match=r"holds \[0\]"):
        load_config(None, ["proper.groups_choices=[0,4]"])
    assert load_config(None, ["proper.groups_choices=[]"]).proper.groups_choices == []


def test_stage_2_chooses_G_on_dev_users_and_stores_it(tiny_cfg):
    from ownlm.proper import load_groups
    from ownlm.proper.control_stage import stored_groups
    from ownlm.proper.experts import ROUTER
    from ownlm.proper.group_stage import stage2_pairs
    from ownlm.proper.user_stage import train_proper_users

    tiny_cfg.max_users = 12  # 3 per planted group (demo-tags plants 4)
    tiny_cfg.proper = small_proper(groups=3, groups_choices=[3, 2], epochs=0.5, user_epochs=0.5)
    run = Run(tiny_cfg)
    train_population(run)
    stats = train_groups(run)
    choice = run.stage_record("groups")["choice"]
    assert choice == stats["choice"]
    rows = choice["candidates"]
    assert [c["groups"] for c in rows] == [2, 3]  # every candidate, ascending
    # stage 2 of a label task watches the dev metric (proper.monitor auto); the loss is kept too
    assert all(c["monitor"] == "accuracy" and c["val_loss"] is not None for c in rows)
    assert all(c["train_ari"] is not None for c in rows)  # demo-tags plants groups
    chosen = choice["chosen"]
    assert chosen == min(rows, key=lambda c: (c["score"], c["groups"]))["groups"]
    assert len(stats["users"]) == chosen  # the stats are the chosen candidate's

    store = run.store()
    meta = json.loads((store.path(ROUTER) / "router.json").read_text())
    assert meta["groups"] == chosen and len(store.names("group")) == chosen
    assert stored_groups(run) == chosen  # the control's rank G*r follows the stored G

    backbone = run.base()
    gm = load_groups(run, backbone)  # the untrained routing: gates from a few items
    newcomer = next(u for u in run.split.test if u.history)
    gates = gm.history_gates(stage2_pairs(run, [newcomer])[:3])
    assert gates.shape[-1] == chosen and torch.isclose(gates.sum(), torch.tensor(1.0))
    gm.close()
    assert train_proper_users(run, "user", users=[newcomer], backbone=backbone) is not None


def test_choosing_G_needs_dev_users(tiny_cfg):
    tiny_cfg.validation.dev_frac = 0.0
    tiny_cfg.proper = small_proper(groups_choices=[2, 3], epochs=0.5)
    run = Run(tiny_cfg)
    train_population(run)
    with pytest.raises(ConfigError, match="validation.dev_frac"):
        train_groups(run)
    assert not run.store().exists("router")  # nothing stored
