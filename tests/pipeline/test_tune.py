"""`ownlm tune`: user-stage budgets chosen on dev users (#12 item 2). The loop validates
at the very state each epoch count ends in; the search picks the clearly best
candidate; the user stages train with the choice, record it, and retrain a user of
another budget; a run without its base is refused; the CLI prints the table."""

import json
import math
import shutil

import pytest
import torch
from typer.testing import CliRunner

from ownlm import run as run_module
from ownlm.cli import app
from ownlm.config import load_config
from ownlm.errors import ConfigError
from ownlm.oppu.sequential import train_users
from ownlm.pipeline import tune
from ownlm.pipeline.stages import train_stages
from ownlm.run import Run
from ownlm.train.loop import EarlyStopping, fit
from ownlm.train.population import train_population
from tests.conftest import TINY_OVERRIDES

# 8 users: 4 train, 2 dev (15 train + 5 validation items each), 2 test; small groups
PROPER = dict(groups=4, r=2, alpha=4.0, user_dim=4, balance=1.0, lr=2e-3, epochs=1.0,
              batch_size=8, user_r=2, user_alpha=4.0, user_epochs=1.0)  # fmt: skip
SETS = ["data=demo-tags", "max_users=8", "max_queries=2", *TINY_OVERRIDES, "user.lr=1e-3",
        "validation.dev_frac=0.4", "tune.max_epochs=3",
        *(f"proper.{k}={v}" for k, v in PROPER.items())]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run with its stages 1 and 2, trained once for the module; tests copy it."""
    from ownlm.proper.group_stage import train_groups

    root = tmp_path_factory.mktemp("tune")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_module, "CACHE_DIR", root / "cache")
        run = Run(load_config(None, [f"output_dir={root}", "name=t", *SETS]))
        train_population(run)
        train_groups(run)
    return run.dir


def _sets(tmp_path, *tune_sets) -> list[str]:
    return [f"output_dir={tmp_path}", "name=t", *SETS, *(f"tune.{s}" for s in tune_sets)]


def _copy(trained, tmp_path, *tune_sets) -> Run:
    """The trained run in `tmp_path`, claimed as `ownlm train` claims it, with `tune_sets`."""
    shutil.copytree(trained, tmp_path / "t")
    return Run(load_config(None, _sets(tmp_path, *tune_sets)))


def test_fit_validates_at_the_state_each_epoch_count_ends_in():
    """10 items in batches of 4: 1, 2 and 3 epochs end after steps 3, 5 and 8
    (`batch_plan`), so that is where validations must look, not every 3 steps."""

    def train(epochs, watch=False):
        w = torch.nn.Parameter(torch.zeros(()))
        stop = EarlyStopping(lambda: {"val_loss": 0.0, "w": w.item()}, patience=99)
        fit(
            lambda batch: (w - torch.tensor(batch, dtype=torch.float).mean()) ** 2,
            list(range(10)),
            [{"params": [w], "lr": 0.1}],
            epochs=epochs,
            batch_size=4,
            seed=0,
            early_stopping=stop if watch else None,
        )
        return w.item(), stop.records

    _, records = train(3, watch=True)
    assert [(r["step"], r["epoch"]) for r in records] == [(0, 0), (3, 1), (5, 2), (8, 3)]
    for k in (1, 2, 3):
        assert records[k]["w"] == pytest.approx(train(k)[0], abs=1e-7)


def _fake_search(best_lr: int, best_epochs: int, stop_huge_after: int | None = None):
    """A stand-in for the per-(user, lr) trainings: the lr of index `best_lr` peaks at
    `best_epochs` (accuracy 0.8, worse before and after); the others stay at 0.2 with a
    lower validation loss. The largest lr can stop early (its records end), as
    EarlyStopping leaves them."""

    def search(run, variant, devs, vsets, lrs, max_epochs):
        bs = run.cfg.proper.batch_size if variant.startswith("proper") else run.cfg.user.batch_size
        curves = {}
        for i, dev in enumerate(devs):
            n = len(dev.user.history)
            for j, lr in enumerate(lrs):
                records = []
                for k in range(max_epochs + 1):
                    acc = 0.8 - 0.2 * abs(k - best_epochs) if j == best_lr else 0.2
                    loss = 3.0 if j == best_lr else 1.0
                    step = math.ceil(n * k / bs)
                    records.append({"step": step, "epoch": k, "val_loss": loss, "accuracy": acc})
                if stop_huge_after is not None and j == len(lrs) - 1:
                    records = records[: stop_huge_after + 1]
                curves[i, lr] = records
        fp = tune._fingerprint(run, variant)
        return curves, fp

    return search


def test_tune_picks_the_clearly_best_candidate_and_records_it(trained, tmp_path, monkeypatch):
    run = _copy(trained, tmp_path)
    monkeypatch.setattr(tune, "oppu_curves", _fake_search(1, 2, stop_huge_after=1))
    info = tune.tune_run(run, ["oppu"])["oppu"]
    lrs = tune.grid(run, "oppu")[0]
    assert (info["user.lr"], info["user.epochs"]) == (lrs[1], 2.0)
    assert len(info["table"]) == 3 * 3 and info["table"][info["chosen"]]["accuracy"] == 0.8
    huge = [r for r in info["table"] if r["lr"] == lrs[2]]
    assert [r["reached"] for r in huge] == [2, 0, 0]  # stopped after epoch 1: carried on
    assert info["dev_users"] == [u.user_id for u in run.split.dev]
    assert info["val_items"] == 2 * 5 and set(info["references"]) == {"user", "population"}
    assert json.loads((run.dir / "run.json").read_text())["tuned"]["oppu"] == info

    monkeypatch.setattr(tune, "oppu_curves", _fake_search(2, 3))  # now the largest lr
    info = tune.tune_run(run, ["oppu"])["oppu"]
    assert (info["user.lr"], info["user.epochs"]) == (lrs[2], 3.0)


def test_choose_follows_the_metric_direction():
    rows = [
        {"lr": 1e-3, "epochs": 1, "mae": 0.9, "val_loss": 1.0},
        {"lr": 1e-3, "epochs": 2, "mae": 0.5, "val_loss": 2.0},
        {"lr": 3e-3, "epochs": 2, "mae": 0.5, "val_loss": 1.5},
        {"lr": 3e-3, "epochs": 3, "mae": 0.1, "val_loss": 0.1, "reached": 1},  # 1 of 3
    ]
    rows = [{"users": 3, "reached": 3, **r} for r in rows]
    assert tune.choose(rows, "mae", 1e-3) == 2  # lower MAE, then lower validation loss
    rows = [{**r, "accuracy": r.pop("mae")} for r in rows]
    assert tune.choose(rows, "accuracy", 1e-3) == 0


def test_dev_split_keeps_history_order_and_skips_short_users(trained, tmp_path):
    run = _copy(trained, tmp_path, "min_items=3")
    devs = tune.dev_split(run)
    for dev, user in zip(devs, run.split.dev, strict=True):
        assert dev.user.history + dev.val == user.history and len(dev.val) == 5
        assert dev.user.queries == []
    run.cfg.tune.min_items = 21  # demo users have 20 items
    with pytest.raises(ConfigError, match="no dev user"):
        tune.dev_split(run)


def test_the_user_stage_trains_with_the_tuned_budget(trained, tmp_path, monkeypatch):
    """`train --tune`: the user stage trains with the tuned values and records them; a
    second train resumes (tuning is no settings change); a new choice retrains."""
    run = _copy(trained, tmp_path)
    test_users = run.split.test
    monkeypatch.setattr(tune, "oppu_curves", _fake_search(0, 2))
    train_stages(run, ["users"], ["oppu"], tune=True)
    lr = run.recorded()["tuned"]["oppu"]["user.lr"]
    assert lr == tune.grid(run, "oppu")[0][0] < run.cfg.user.lr
    for user in test_users:
        extra = run.store().manifest(user.name).extra
        assert (extra["lr"], extra["epochs"], extra["budget"]) == (lr, 2.0, "tuned")

    again = Run(run.cfg)  # `ownlm train` again: not refused as other settings
    assert train_users(again, "oppu")["resumed"] == len(test_users)
    monkeypatch.setattr(tune, "oppu_curves", _fake_search(2, 1))
    tune.tune_run(again, ["oppu"])
    stats = train_users(again, "oppu")  # sequential; test_batched_users covers batched
    assert stats["trained"] == stats["budget_changed"] == len(test_users)
    extra = again.store().manifest(test_users[0].name).extra
    assert (extra["lr"], extra["epochs"]) == (tune.grid(run, "oppu")[0][2], 1.0)


def test_a_tune_of_another_base_is_not_used(trained, tmp_path, monkeypatch):
    from ownlm.train.budget import user_budget

    run = _copy(trained, tmp_path)
    monkeypatch.setattr(tune, "oppu_curves", _fake_search(1, 2))
    tune.tune_run(run, ["oppu"])
    assert user_budget(run, "oppu", run.base_fingerprint()).source == "tuned"
    other = user_budget(run, "oppu", "another-base")
    assert (other.lr, other.epochs, other.source) == (
        run.cfg.user.lr,
        run.cfg.user.epochs,
        "config",
    )
    assert user_budget(run, "peft", run.base_fingerprint()).source == "config"  # not tuned


def test_tune_without_a_base_refuses_with_the_train_command(tmp_path):
    sets = ["--set", f"output_dir={tmp_path}", "--set", "name=fresh"]
    r = CliRunner().invoke(app, ["tune", *sets])
    assert r.exit_code == 2
    assert "no trained base" in r.output and "ownlm train --stages population" in r.output
    assert not (tmp_path / "fresh").exists()  # nothing written


def test_cli_tune_prints_the_table_and_prefers_a_learning_rate_that_learns(trained, tmp_path):
    """Real trainings on the tiny demo: lr 1e-9 cannot move the user LoRA, 1e-2 can;
    the table is printed and the choice recorded."""
    shutil.copytree(trained, tmp_path / "t")
    sets = _sets(tmp_path, "lr_factors=[1e-6,10]", "max_epochs=2")
    flags = [x for s in sets for x in ("--set", s)]
    r = CliRunner().invoke(app, ["tune", *flags, "--variants", "oppu"])
    assert r.exit_code == 0, r.output
    assert "ownlm tune oppu" in r.output and "own majority" in r.output
    assert "no user training" in r.output and "tune wall time" in r.output
    tuned = json.loads((tmp_path / "t" / "run.json").read_text())["tuned"]["oppu"]
    assert tuned["user.lr"] == pytest.approx(1e-2)
    assert len(tuned["table"]) == 2 * 2


def test_proper_user_stage_is_tuned_and_trains_with_it(trained, tmp_path):
    """A real (one-run) search of PROPER's user stage; its user stage then uses it."""
    from ownlm.proper.user_stage import train_proper_users

    run = _copy(trained, tmp_path, "lr_factors=[3.0]", "max_epochs=1", "max_users=1")
    info = tune.tune_run(run, ["proper-user"])["proper-user"]
    assert (info["proper.user_lr"], info["proper.user_epochs"]) == (
        pytest.approx(3 * run.cfg.proper.user_lr),
        1.0,
    )
    assert info["table"][0]["reached"] == 1 and "val_loss" in info["untrained"]
    user = run.split.test[0]
    assert train_proper_users(run, "user", users=[user])["trained"] == 1
    extra = run.store("proper-user").manifest(user.name).extra
    assert (extra["lr"], extra["epochs"], extra["budget"]) == (info["proper.user_lr"], 1.0, "tuned")


def test_tune_settings_are_checked_and_are_no_training_keys():
    from ownlm.config import training_values

    with pytest.raises(ConfigError, match="tune.lr_factors"):
        load_config(None, ["tune.lr_factors=[0,1]"])
    with pytest.raises(ConfigError, match="tune.val_frac"):
        load_config(None, ["tune.val_frac=1"])
    assert not [k for k in training_values(load_config(None, [])) if k.startswith("tune.")]


def test_the_update_budget_is_chosen_by_a_simulated_update_on_dev_users(trained, tmp_path):
    """After OPPU's tune, each dev user's older half trains an adapter, every update
    length is tried on the next items and validated on the last: the best is recorded
    and `ownlm update` trains with it (when update.epochs is empty)."""
    from ownlm.oppu.update import update_budget
    from ownlm.pipeline.tune_update import FACTORS, dev_cuts

    run = _copy(trained, tmp_path, "min_dev_users=2")
    (older, grown, n_new, val), _ = dev_cuts(run)
    assert older.history == grown.history[: len(older.history)] and n_new > 0
    assert grown.history + val == run.split.dev[0].history  # history order, nothing lost
    out = tune.tune_run(run, ["oppu"])
    chosen, update = out["oppu"], out["update"]
    assert update["factor"] in FACTORS and set(update["table"]) == {f"{f:g}" for f in FACTORS}
    assert update["epochs"] == update["factor"] * chosen["user.epochs"]
    assert update["dev_users"] == 2 and update["lr"] == chosen["user.lr"]
    fp = run.base_fingerprint()
    assert update_budget(run, fp) == (chosen["user.lr"], update["epochs"])
    assert update_budget(run, fp, epochs=5.0) == (chosen["user.lr"], 5.0)  # given: it wins
    assert tune.update_tune(run, chosen, reuse=True) == update  # kept, not searched again
    run = _copy(trained, tmp_path / "b")  # 2 dev users < tune.min_dev_users (3)
    assert tune.tune_run(run, ["oppu"])["update"] is None
    assert "update" not in json.loads((run.dir / "run.json").read_text())["tuned"]
