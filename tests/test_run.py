"""The run directory: reading a run, its corpus and data, and its record (run.json) that
keeps it from being silently overwritten or mixed."""

import dataclasses
import json
import os

import pytest

from ownlm.config import EVAL_KEYS, RUNTIME_KEYS
from ownlm.errors import ConfigError, DataError
from ownlm.run import Run
from tests.conftest import TINY_OVERRIDES


def test_open_reads_a_run_without_rewriting_it(tiny_cfg):
    run = Run(tiny_cfg)
    cfg_file = run.dir / "config.yaml"
    stamp = cfg_file.stat().st_mtime_ns
    again = Run.open(run.dir)
    assert again.cfg.data == "demo-tags" and again.dir == run.dir
    assert [u.user_id for u in again.split.test] == [u.user_id for u in run.split.test]
    assert cfg_file.stat().st_mtime_ns == stamp


def test_open_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(ConfigError, match="not a run directory"):
        Run.open(tmp_path)


def test_corpus_is_the_train_users_history_as_task_pairs(tiny_cfg):
    run = Run(tiny_cfg)
    expected = [
        p + "\nAnswer: " + a for u in run.split.train for p, a in map(run.task.item_pair, u.history)
    ]
    assert run.corpus() == expected


def test_max_history_keeps_the_last_items(tiny_cfg):
    tiny_cfg.max_history = 3
    run = Run(tiny_cfg)
    assert all(len(u.history) == 3 for u in run.dataset.users)


def _changed_demo(monkeypatch, edit):
    """The demo data with `edit(users)` applied, as if the data file had changed."""
    from ownlm import run as run_module

    make = run_module.DEMOS["demo-tags"]

    def changed(seed):
        ds = make(seed=seed)
        edit(ds.users)
        return ds

    monkeypatch.setitem(run_module.DEMOS, "demo-tags", changed)


def test_a_run_records_its_training_keys_and_data(tiny_cfg):
    run = Run(tiny_cfg)
    record = json.loads((run.dir / "run.json").read_text())
    assert record["config"]["user.lr"] == tiny_cfg.user.lr
    assert record["config"]["tiny.layers"] == 1
    for key in EVAL_KEYS + RUNTIME_KEYS:  # eval-only and runtime keys are not recorded
        assert key not in record["config"]
    assert [u[0] for u in record["data"]["users"]] == [u.user_id for u in run.dataset.users]
    assert record["data"]["users"][0][1] == run.dataset.users[0].history_digest()[:16]


def test_other_training_keys_are_refused_and_overwrite_moves_the_run_aside(tiny_cfg):
    run = Run(tiny_cfg)
    (run.dir / "base").mkdir()  # state of the first run
    Run(dataclasses.replace(tiny_cfg, methods=["base"], device="cpu"))  # eval/runtime keys
    other = dataclasses.replace(tiny_cfg, user=dataclasses.replace(tiny_cfg.user, lr=1e-3))
    with pytest.raises(ConfigError, match=r"user.lr 0.003 -> 0.001.*--overwrite"):
        Run(other)
    assert json.loads((run.dir / "run.json").read_text())["config"]["user.lr"] == 3e-3
    Run(other, overwrite=True)
    (aside,) = run.dir.parent.glob("t.old-*")
    assert (aside / "base").is_dir() and "lr: 0.003" in (aside / "config.yaml").read_text()
    assert not (run.dir / "base").exists()
    assert json.loads((run.dir / "run.json").read_text())["config"]["user.lr"] == 1e-3


def test_other_data_is_refused_with_what_changed(tiny_cfg, monkeypatch):
    from ownlm.data.records import User

    Run(tiny_cfg)

    def edit(users):
        users[1] = User(users[1].user_id, users[1].history[1:], users[1].queries)
        users.insert(0, User("new", users[2].history))

    _changed_demo(monkeypatch, edit)
    with pytest.raises(DataError, match="1 user added, 1 user removed, 1 history changed"):
        Run(tiny_cfg)  # max_users=6 keeps the new user and drops the last one


def test_a_test_users_new_history_is_accepted_a_train_users_is_not(tiny_cfg, monkeypatch):
    from ownlm.data.records import User

    run = Run(tiny_cfg)
    test_ids = [u.user_id for u in run.split.test]

    def edit_test_user(users):
        i = next(i for i, u in enumerate(users) if u.user_id == test_ids[0])
        users[i] = User(users[i].user_id, users[i].history[1:], users[i].queries)

    _changed_demo(monkeypatch, edit_test_user)
    again = Run(tiny_cfg)  # stages 1-2 never saw it: only that user is retrained
    recorded = {u[0]: u[1] for u in json.loads((run.dir / "run.json").read_text())["data"]["users"]}
    user = again.dataset.user(test_ids[0])
    assert recorded[user.user_id] == user.history_digest()[:16]
    Run.reopen(None, [f"output_dir={tiny_cfg.output_dir}", "name=t"])

    def edit_train_user(users):
        edit_test_user(users)
        users[0] = User(users[0].user_id, users[0].history[1:], users[0].queries)

    _changed_demo(monkeypatch, edit_train_user)  # on top of the first edit
    with pytest.raises(DataError, match=r"2 histories changed; pass --overwrite"):
        Run(tiny_cfg)


def test_reopen_keeps_the_trained_config_and_refuses_other_training_keys(tiny_cfg, monkeypatch):
    run = Run(tiny_cfg)
    cfg_file = run.dir / "config.yaml"
    before = cfg_file.read_bytes()
    where = [f"output_dir={tiny_cfg.output_dir}", "name=t"]
    again = Run.reopen(None, [*where, "methods=base", "max_queries=1", "device=cpu"])
    assert again.cfg.methods == ["base"] and again.cfg.max_queries == 1
    assert again.cfg.tiny.layers == 1  # the trained config, not the defaults
    assert cfg_file.read_bytes() == before
    with pytest.raises(ConfigError, match="trained with user.lr=0.003, not 0.001"):
        Run.reopen(None, [*where, "user.lr=1e-3"])
    Run.reopen(None, [*where, "user.lr=0.003"])  # the same value is fine
    _changed_demo(monkeypatch, lambda users: users.pop(0))
    with pytest.raises(DataError, match="changed since it was trained"):
        Run.reopen(None, where)
    assert cfg_file.read_bytes() == before


def test_a_run_made_before_run_json_is_adopted_only_with_its_own_settings(tiny_cfg):
    run = Run(tiny_cfg)
    (run.dir / "run.json").unlink()
    (run.dir / "base").mkdir()
    other = dataclasses.replace(tiny_cfg, retrieval_k=3)
    with pytest.raises(ConfigError, match="retrieval_k 1 -> 3"):
        Run(other)
    Run(tiny_cfg)
    assert (run.dir / "run.json").exists()


@pytest.mark.parametrize("name", ["../../escape", "a/b", "..", ""])
def test_a_run_name_cannot_leave_output_dir(tiny_cfg, name):
    with pytest.raises(ConfigError, match="plain folder name"):
        Run(dataclasses.replace(tiny_cfg, name=name))


def _cli_sets(tmp_path, *extra) -> list[str]:
    keys = [f"output_dir={tmp_path / 'runs'}", "name=cli", "data=demo-headlines"]
    keys += ["max_users=5", *TINY_OVERRIDES, *extra]
    return [a for k in keys for a in ("--set", k)]


def test_cli_resume_keeps_stage_1_eval_writes_nothing_other_settings_are_refused(
    tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    from ownlm import run as run_module
    from ownlm.cli import app

    monkeypatch.setattr(run_module, "CACHE_DIR", tmp_path / "cache")
    cli, sets = CliRunner(), _cli_sets(tmp_path)
    run_dir, weights = tmp_path / "runs/cli", tmp_path / "runs/cli/base/model.safetensors"
    r = cli.invoke(app, ["train", *sets, "--stages", "population"])
    assert r.exit_code == 0, r.output
    stamp = weights.stat().st_mtime_ns
    r = cli.invoke(app, ["train", *sets, "--stages", "population"])
    assert r.exit_code == 0, r.output
    assert weights.stat().st_mtime_ns == stamp  # stage 1 kept: base/ untouched
    trained_with = (run_dir / "config.yaml").read_bytes()
    r = cli.invoke(app, ["eval", *sets, "--set", "methods=base", "--set", "max_queries=1"])
    assert r.exit_code == 0, r.output
    lr = ["--set", "population.lr=1e-3"]
    r = cli.invoke(app, ["eval", *sets, *lr, "--set", "methods=base"])
    assert r.exit_code == 2 and "trained with population.lr=0.002" in r.output
    assert (run_dir / "config.yaml").read_bytes() == trained_with  # eval rewrote nothing
    r = cli.invoke(app, ["train", *sets, *lr, "--stages", "population"])
    assert r.exit_code == 2 and "population.lr 0.002 -> 0.001" in r.output
    assert "--overwrite" in r.output and weights.stat().st_mtime_ns == stamp
    r = cli.invoke(app, ["prepare", *sets, *lr, "--overwrite"])
    assert r.exit_code == 0, r.output
    (aside,) = (tmp_path / "runs").glob("cli.old-*")
    assert (aside / "base/model.safetensors").stat().st_mtime_ns == stamp
    assert not weights.exists()


def test_cli_refuses_a_run_name_that_escapes_output_dir(tmp_path):
    from typer.testing import CliRunner

    from ownlm.cli import app

    out = tmp_path / "deep" / "runs"
    sets = _cli_sets(tmp_path, f"output_dir={out}", "name=../../escape")
    r = CliRunner().invoke(app, ["prepare", *sets])
    assert r.exit_code == 2 and "plain folder name" in r.output
    assert not (tmp_path / "escape").exists() and not out.exists()


def test_a_second_process_cannot_claim_a_run_being_trained(tiny_cfg):
    import subprocess
    import sys

    Run(tiny_cfg)  # this process holds the run's lock now
    code = (
        "from ownlm.config import load_config; from ownlm.run import Run; "
        f"Run(load_config(None, ['output_dir={tiny_cfg.output_dir}', 'name={tiny_cfg.name}', "
        "'data=demo-tags', 'max_users=6']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0
    assert f"is being trained by another process (pid {os.getpid()})" in out.stderr
    Run(tiny_cfg)  # the holder itself claims it again freely


def test_a_hand_edited_config_yaml_is_refused_not_used(tiny_cfg):
    run = Run(tiny_cfg)
    cfg_file = run.dir / "config.yaml"
    cfg_file.write_text(cfg_file.read_text().replace("retrieval_k: 1", "retrieval_k: 7"))
    with pytest.raises(
        ConfigError, match=r"differs from what the run was trained with \(retrieval_k 1 -> 7"
    ):
        Run.open(run.dir)  # serve, export, eval: was used silently


def test_a_run_recorded_under_a_renamed_key_is_the_same_run(monkeypatch):
    """A key renamed since a run was trained (`config.RENAMED`): the run's record, under
    the old name, compares equal to the same value under the new one, and a key given
    by its old name counts as the new one."""
    from ownlm.config import load as config_load
    from ownlm.run.record import config_changes, given_keys

    monkeypatch.setitem(config_load.RENAMED, "user.lr_old", "user.lr")
    assert config_changes({"user.lr_old": 1e-3}, {"user.lr": 1e-3}) == []
    assert config_changes({"user.lr_old": 1e-3}, {"user.lr": 2e-3}) == ["user.lr 0.001 -> 0.002"]
    assert given_keys(None, ["user.lr_old=0.001"]) == {"user.lr"}


def test_a_run_made_before_a_key_existed_was_trained_with_its_old_behaviour():
    """`tiny.copy_share` came after some runs: such a run (its record lacks the key) was
    pre-trained on the corpus alone, so asking it for copy sequences is a change."""
    from ownlm.run.record import config_changes

    assert config_changes({}, {"tiny.copy_share": 0.0}) == []
    assert config_changes({}, {"tiny.copy_share": 0.3}) == ["tiny.copy_share 0.0 -> 0.3"]
