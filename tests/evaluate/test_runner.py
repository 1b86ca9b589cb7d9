"""The methods table never reports a method that did not run (issue #10): a user without
a usable adapter makes the method "not run", naming them, why and the fix, while the
other methods and users are still scored."""

import json

from typer.testing import CliRunner

from ownlm.cli import app


def _by_method(results):
    return {r.method: r for r in results}


def _weights(run, variant, user):
    return run.store(variant).path(user.name) / "adapter_model.safetensors"


def test_eval_after_population_only_shows_no_user_method_and_exits_3(copy_run, tmp_path):
    run = copy_run("population")
    sets = ["--set", f"output_dir={tmp_path / 'runs'}"]
    sets += ["--set", "methods=base,peft,oppu,proper-user"]
    r = CliRunner().invoke(app, ["eval", "-c", str(run.dir / "config.yaml"), *sets])
    assert r.exit_code == 3, r.output
    config = run.dir / "config.yaml"
    assert "oppu not run, 2/2 users have no usable adapter" in r.output
    assert f"ownlm train -c {config} --stages users --variants oppu" in r.output
    assert f"ownlm train -c {config} --stages users --variants peft" in r.output
    assert f"ownlm train -c {config} --stages groups,users --variants proper-user" in r.output
    saved = {
        row["method"]: row
        for row in json.loads((run.dir / "eval/results.json").read_text())["results"]
    }
    assert saved["base"]["metrics"]["n_users"] == 2 and saved["base"]["not_run"] is None
    for method in ("peft", "oppu"):
        assert saved[method]["metrics"] == {} and saved[method]["predictions"] == []
        assert set(saved[method]["not_run"]["users"].values()) == {"missing"}
    assert "stage-2 groups (router): missing" in saved["proper-user"]["not_run"]["reason"]
    assert not (run.dir / "eval/predictions_oppu.json").exists()
    assert (run.dir / "eval/predictions_base.json").exists()


def test_a_deleted_manifest_makes_the_method_incomplete_naming_the_user(copy_run):
    from ownlm.evaluate.runner import evaluate_run

    run = copy_run("users")
    gone, kept = run.split.test
    (run.store("oppu").path(gone.name) / "ownlm.json").unlink()
    results = _by_method(evaluate_run(run, ["base", "oppu"]))
    assert results["oppu"].metrics == {}
    assert results["oppu"].not_run.users == {gone.user_id: "missing"}
    assert results["oppu"].not_run.reason == "1/2 users have no usable adapter"
    assert results["base"].metrics["n_users"] == 2


def test_one_corrupt_adapter_stops_only_its_method(copy_run):
    from ownlm.evaluate.runner import evaluate_run

    run = copy_run("users")
    bad = run.split.test[0]
    path = _weights(run, "oppu", bad)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the weights
    path.write_bytes(bytes(data))
    results = _by_method(evaluate_run(run, ["base", "peft", "oppu"]))
    why = results["oppu"].not_run.users
    assert list(why) == [bad.user_id] and why[bad.user_id].startswith("corrupt: ")
    assert "sha256" in why[bad.user_id]
    assert results["peft"].not_run is None and results["peft"].metrics["n_users"] == 2
    assert results["base"].metrics["n_users"] == 2


def test_history_changed_after_training_is_named(copy_run):
    from ownlm.evaluate.runner import evaluate_run

    run = copy_run("users")
    changed = run.split.test[1]
    changed.history.pop()  # a history item removed (e.g. a user deleted a post)
    results = _by_method(evaluate_run(run, ["oppu"]))
    assert results["oppu"].not_run.users == {changed.user_id: "history changed"}


def test_a_user_without_history_is_answered_by_the_base(copy_run):
    from ownlm.evaluate.runner import evaluate_run

    run = copy_run("users")
    run.split.test[0].history.clear()  # nothing to train on: covered by design
    results = _by_method(evaluate_run(run, ["oppu"]))
    assert results["oppu"].not_run is None and results["oppu"].metrics["n_users"] == 2


def test_an_adapter_that_fails_to_load_stops_only_its_method(copy_run):
    from ownlm.evaluate.runner import evaluate_run

    run = copy_run("users")
    bad = run.split.test[1]
    (run.store("oppu").path(bad.name) / "adapter_config.json").write_text("{not json")
    results = _by_method(evaluate_run(run, ["oppu", "peft"]))
    assert list(results["oppu"].not_run.users) == [bad.user_id]
    assert results["oppu"].not_run.users[bad.user_id].startswith("corrupt: ")
    assert results["peft"].not_run is None
