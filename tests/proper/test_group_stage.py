import torch

from ownlm.config import ProperSettings
from ownlm.proper import load_groups
from ownlm.proper.group_stage import train_groups
from ownlm.run import Run
from ownlm.train.population import train_population


def small_proper(**kw):
    base = dict(
        groups=4,
        r=2,
        alpha=4.0,
        user_dim=4,
        balance=1.0,
        lr=2e-3,
        epochs=1.0,
        batch_size=8,
        em_rounds=1,
    )
    base.update(kw)
    return ProperSettings(**base)


def test_balance_term_keeps_every_expert_in_use(tiny_cfg):
    tiny_cfg.proper = small_proper(assignment="token")  # the per-token routers' balance term
    run = Run(tiny_cfg)
    train_population(run)
    stats = train_groups(run)
    assert len(stats["tokens"]) == len(stats["users"]) == 4
    assert abs(sum(stats["tokens"]) - 1) < 1e-3 and abs(sum(stats["users"]) - 1) < 1e-3
    assert min(stats["tokens"]) > 0.05, stats["tokens"]  # no expert left unused
    assert 0.25 <= stats["user_top_gate"] <= 1.0
    store = run.store()
    assert store.names("group") == [f"group:{g}" for g in range(4)]

    backbone = run.base()
    gm = load_groups(run, backbone)  # experts and router come back frozen
    assert all(not p.requires_grad for p in backbone.model.parameters())
    layer = next(iter(gm.layers.values()))
    assert layer.B.abs().sum() > 0
    with torch.no_grad():
        gm.state.user_emb = gm.user_table[:1]
        gm.state.record = True
        backbone.loss(backbone.model, ["a b c"], ["x"])
    gates = gm.state.gates[0]
    torch.testing.assert_close(gates.sum(-1), torch.ones(gates.shape[:-1]))


def test_proper_without_stage_2_names_the_command_that_trains_it(tiny_cfg):
    import pytest

    from ownlm.errors import StoreError
    from ownlm.proper.user_stage import train_proper_users

    run = Run(tiny_cfg)
    train_population(run)
    with pytest.raises(StoreError, match="--stages groups,users"):
        train_proper_users(run, "user", users=run.split.test[:1])


def test_unknown_new_user_mode_is_refused_before_training(tiny_cfg):
    import pytest

    from ownlm.errors import ConfigError

    tiny_cfg.proper = small_proper(new_user="nearest")
    with pytest.raises(ConfigError, match="projection"):
        train_groups(Run(tiny_cfg))


def test_groups_are_kept_while_their_inputs_hold(tiny_cfg):
    tiny_cfg.proper = small_proper(epochs=0.5)
    run = Run(tiny_cfg)
    train_population(run)
    first = train_groups(run)
    router = run.store().path("router") / "router.safetensors"
    stamp = router.stat().st_mtime_ns
    assert train_groups(run) == {"pairs": first["pairs"], "kept": True}
    assert router.stat().st_mtime_ns == stamp
    run.cfg.proper.user_lr *= 2  # a stage-3 setting: stage 2 still holds
    assert train_groups(run)["kept"]
    run.cfg.proper.lr *= 2
    assert "kept" not in train_groups(run)


def test_stage_2_is_validated_on_dev_users_routed_as_new_users(tiny_cfg):
    tiny_cfg.proper = small_proper(epochs=2.0, em_rounds=2)  # 'user': validated each round
    run = Run(tiny_cfg)
    train_population(run)
    stats = train_groups(run)
    record = run.stage_record("groups")
    v = record["validation"]
    assert record["inputs"] and record["identity"]  # what a resume checks, kept beside it
    assert v["dev_users"] == len(run.split.dev) == 1 and v["metric"] == "accuracy"
    assert [r["epoch"] for r in v["records"]][:2] == [0, 1] and v["records"][1]["train_loss"]
    assert all({"val_loss", "accuracy", "reference"} <= set(r) for r in v["records"])
    # a label task's stage 2 keeps the round of best dev accuracy (proper.monitor auto)
    assert v["records"][v["kept"]]["accuracy"] == max(r["accuracy"] for r in v["records"])
    assert record["warnings"] == stats["warnings"]
    assert run.store().manifest("router").extra["validation"] == v
