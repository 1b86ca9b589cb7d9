"""PROPER end to end after training: stored adapters scored, new users routed untrained,
the groups view, and the active-level study that trains users in memory."""

import json

import pytest

from ownlm.errors import ConfigError, NotFoundError
from ownlm.proper.group_stage import train_groups
from ownlm.proper.user_stage import train_proper_users
from ownlm.run import Run
from ownlm.train.population import train_population
from tests.proper.test_group_stage import small_proper


@pytest.mark.slow  # ~2 min on 2 CPUs: trains OPPU and PROPER users in the study
def test_proper_evaluation_new_users_groups_view_and_study(tiny_cfg, tmp_path):
    from ownlm.data.splits import truncate_history
    from ownlm.evaluate.group_view import groups_view
    from ownlm.evaluate.proper import evaluate_proper
    from ownlm.proper import groups_fingerprint, load_groups, prepare_user
    from ownlm.proper.users import proper_pairs
    from ownlm.studies.active_levels import active_level_study

    tiny_cfg.proper = small_proper(user_r=2, user_alpha=4.0, user_lr=1e-3, user_epochs=1.0)
    run = Run(tiny_cfg)
    train_population(run)
    train_groups(run)
    trained, new = run.split.test[0], run.split.test[1]
    train_proper_users(run, "user", users=[trained])

    backbone = run.base()
    fp = groups_fingerprint(run, backbone.fingerprint())
    gm = load_groups(run, backbone)
    store = run.store("proper-user")
    assert prepare_user(gm, store, fp, trained, "user", None) == "adapter"
    assert prepare_user(gm, store, fp, new, "user", None, proper_pairs(run, new)) == "new"
    gates = next(iter(gm.layers.values())).router.logits.softmax(-1)[0]  # the posterior
    assert gm.by_user and abs(float(gates.sum()) - 1) < 1e-5
    assert prepare_user(gm, store, fp, truncate_history(new, 0), "user", None) == "population"

    results = evaluate_proper(run)  # one user trained, for one router: neither is scored
    assert [r.method for r in results] == ["proper-input", "proper-user"]
    assert all(r.metrics == {} for r in results)
    assert results[1].not_run.users == {new.user_id: "missing"}
    train_proper_users(run, "input")
    results = evaluate_proper(run, routers=("input",))
    assert results[0].not_run is None and "accuracy" in results[0].metrics
    view = groups_view(run)
    assert abs(sum(view["share"]) - 1) < 1e-6 and len(view["users"]) == len(
        run.split.train + run.split.test
    )
    assert 0.25 <= view["user_top_gate"] <= 1.0
    assert json.loads((run.dir / "eval" / "groups.json").read_text())["share"] == view["share"]
    with pytest.raises(ConfigError, match="proper.groups=1"):  # not a one-expert twin
        active_level_study(run, buckets=(2,), out_dir=tmp_path / "eval", one_expert=run)
    table = active_level_study(run, buckets=(2,), out_dir=tmp_path / "eval")
    assert set(table["2"]) == {
        "user-majority",
        "pag",
        "oppu",
        "proper-input",
        "proper-user",
        "proper-new",
    }
    assert (tmp_path / "eval" / "active_levels.png").exists()
    saved = json.loads((tmp_path / "eval" / "active_levels.json").read_text())
    for method, cell in saved["intervals"]["2"].items():  # "0.033 [0.000, 0.100]"
        value, low, high = (
            float(x) for x in cell.replace("[", "").replace("]", "").replace(",", "").split()
        )
        assert low <= value <= high and abs(value - table["2"][method]) < 1e-3, (method, cell)
    pairs = {(p["method"], p["baseline"]) for p in saved["paired"]["2"]}
    assert ("proper-new", "pag") in pairs and ("proper-user", "oppu") in pairs
    assert all(p["interval"][0] <= p["diff"] <= p["interval"][1] for p in saved["paired"]["2"])


def test_study_refuses_missing_groups_before_any_training(tiny_cfg, monkeypatch):
    from ownlm.studies import active_levels

    run = Run(tiny_cfg)
    train_population(run)

    def no_training(*args, **kwargs):
        raise AssertionError("the study trained a user before checking its groups")

    monkeypatch.setattr(active_levels, "fit_oppu_user", no_training)
    with pytest.raises(NotFoundError, match="--stages groups"):
        active_levels.active_level_study(run, buckets=(2,))
