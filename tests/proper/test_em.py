"""Stage 2 with `proper.assignment: user`: groups found on the demo's planted groups,
one gate vector per user for every layer, stored, shown and forgotten."""

import torch

from ownlm.data.planted import group_agreement, planted_groups
from ownlm.proper.group_stage import train_groups
from ownlm.run import Run
from ownlm.train.population import train_population
from tests.proper.test_group_stage import small_proper


def test_stage_2_recovers_the_planted_groups_and_a_user_is_one_group(tiny_cfg):
    from ownlm.adapters.mixture import routing
    from ownlm.evaluate.group_view import groups_view
    from ownlm.proper import load_groups
    from ownlm.proper.experts import forget_stage2_user, stage2_users

    tiny_cfg.max_users = 20  # 5 per planted group (demo-tags plants 4)
    tiny_cfg.proper = small_proper(em_rounds=1, epochs=1.0)
    run = Run(tiny_cfg)
    train_population(run)
    stats = train_groups(run)
    users = [u for u in run.split.train if u.history]
    assigned = dict(zip([u.user_id for u in users], stats["assignment"], strict=True))
    agreement = group_agreement(assigned, planted_groups(users))
    assert agreement["users"] == len(users) >= 10
    assert agreement["ari"] >= 0.8, agreement
    assert len(stats["rounds"]) == 1 and abs(sum(stats["users"]) - 1) < 1e-6

    backbone = run.base()
    gm = load_groups(run, backbone)
    assert gm.by_user and gm.meta["assignment"] == "user"
    first = users[0]
    gates = gm.train_gates(first.user_id)
    assert int(gates.argmax()) == assigned[first.user_id] and float(gates.max()) == 1.0
    gm.route(gates)
    with torch.no_grad(), routing(gm.state, record=True):
        backbone.loss(backbone.model, ["a movie about a heist", "space"], ["sci-fi", "comedy"])
    layer_gates = gm.state.gates  # one (1, G) per layer
    assert len(layer_gates) == len(gm.layers) > 1
    assert all(torch.equal(g, layer_gates[0]) for g in layer_gates)  # one fact, every layer
    torch.testing.assert_close(layer_gates[0][0], gates)
    gm.close()

    view = groups_view(run)
    rows = {r["user"]: r for r in view["users"]}
    assert view["assignment"] == "user"
    assert all(rows[uid]["top"] == g for uid, g in assigned.items())  # the stored fact
    assert all(abs(sum(r["gates"]) - 1) < 1e-3 for r in view["users"])
    planted = view["planted"]["train"]  # the view's own agreement with the planted groups
    assert planted["users"] == len(users) and planted["ari"] == agreement["ari"]
    assert view["planted"]["test"]["users"] == len([u for u in run.split.test if u.history])
    # test users are routed untrained by their groups' answers (route_new auto, a label task)
    assert view["planted"]["test"]["ari"] >= 0.8, str(view["planted"]["test"]) + str(
        view["planted"]["train"]
    )

    assert forget_stage2_user(run.store(), first.user_id)
    assert first.user_id not in stage2_users(run.store())
    gm = load_groups(run, run.base())
    assert gm.user_table.shape[0] == len(users) - 1 and gm.train_gates(first.user_id) is None
    assert gm.answers is not None  # and the forgotten user's answers no longer route anyone
    assert first.user_id not in {u.user_id for u in gm.answers._users}
    gm.close()


def test_stage_2_watches_the_dev_metric_of_a_label_task_unless_told():
    from types import SimpleNamespace

    from ownlm.config import ProperSettings, ValidationSettings
    from ownlm.proper.em import stage2_monitor

    def run(labels, monitor="auto", validation="loss"):
        cfg = SimpleNamespace(
            proper=ProperSettings(monitor=monitor),
            validation=ValidationSettings(monitor=validation),
        )
        return SimpleNamespace(cfg=cfg, task=SimpleNamespace(labels=labels))

    assert stage2_monitor(run(["a", "b"])) == "metric"  # label task: accuracy, MAE...
    assert stage2_monitor(run([])) == "loss"  # text: as validation.monitor says
    assert stage2_monitor(run([], validation="metric")) == "metric"
    assert stage2_monitor(run(["a", "b"], monitor="loss")) == "loss"
