"""PROPER's rows follow the same rule as OPPU's: scored only when the stage-2 groups load
and every evaluated user with history has a usable adapter; never the untrained
"new user" routing under the trained method's name."""

import pytest

from ownlm.errors import StoreError


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_proper_rows_need_an_adapter_for_every_user(copy_run):
    from ownlm.evaluate.proper import evaluate_proper
    from ownlm.proper.user_stage import train_proper_users

    run = copy_run("proper")
    trained, untrained = run.split.test
    results = {r.method: r for r in evaluate_proper(run)}
    assert results["proper-user"].metrics == {}
    assert results["proper-user"].not_run.users == {untrained.user_id: "missing"}
    assert results["proper-user"].not_run.command.endswith(
        "--stages groups,users --variants proper-user"
    )
    assert set(results["proper-input"].not_run.users) == {trained.user_id, untrained.user_id}

    train_proper_users(run, "user", users=[untrained])
    (scored,) = evaluate_proper(run, routers=("user",))
    assert scored.not_run is None and scored.metrics["n_users"] == 2
    trained.history.pop()
    (stale,) = evaluate_proper(run, routers=("user",))
    assert stale.not_run.users == {trained.user_id: "history changed"}


def test_corrupt_group_expert_stops_proper_rows_and_the_groups_view(copy_run):
    from ownlm.evaluate.group_view import groups_view
    from ownlm.evaluate.proper import evaluate_proper

    run = copy_run("proper")
    _flip_byte(run.store().path("group:1") / "adapter_model.safetensors")
    results = evaluate_proper(run)
    assert [r.method for r in results] == ["proper-input", "proper-user"]
    for r in results:
        assert r.metrics == {}
        assert r.not_run.reason.startswith("PROPER stage-2 groups (group:1): corrupt: ")
    with pytest.raises(StoreError, match="--stages groups"):
        groups_view(run)
