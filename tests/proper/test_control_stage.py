"""OPPU's control for PROPER (docs/proper.md, "A fair control"): stage 2's extra pass
over the train users with one plain LoRA of the experts' size, merged into base-control,
with OPPU users trained and evaluated on it."""

from pathlib import Path

import pytest
import yaml

from ownlm.errors import NotFoundError, StoreError
from ownlm.oppu.model import CONTROL, CONTROL_BASE
from ownlm.pipeline.stages import train_stages
from ownlm.proper.control_stage import train_control
from ownlm.proper.group_stage import train_groups
from ownlm.run import Run
from ownlm.train import loop
from ownlm.train.population import train_population
from tests.proper.test_group_stage import small_proper


@pytest.fixture
def run(tiny_cfg):
    # watch the loss: the tiny model's dev accuracy ties across epochs, so the metric would
    # keep the untrained epoch 0 of stage 2 and of the control alike (the control follows
    # stage 2's monitor; test_control_follows_stage_2s_monitor)
    tiny_cfg.proper = small_proper(epochs=1.5, batch_size=4, monitor="loss")
    run = Run(tiny_cfg)
    train_population(run)
    return run


def spy_fit(monkeypatch) -> list[dict]:
    """Record what every call of the one loop trains on: its items and batch plan."""
    import ownlm.proper.control_stage as control

    calls, real = [], loop.fit

    def fit(step_loss, items, groups, **kw):
        plan = loop.batch_plan(len(items), kw["epochs"], kw["batch_size"], kw["seed"])
        calls.append({"items": list(items), "plan": plan, "lrs": [g["lr"] for g in groups]})
        return real(step_loss, items, groups, **kw)

    monkeypatch.setattr(loop, "fit", fit)
    monkeypatch.setattr(control, "fit", fit)
    return calls


def test_control_trains_stage_2s_plan_with_the_experts_size(run, monkeypatch):
    from ownlm.proper import load_groups

    calls = spy_fit(monkeypatch)
    train_groups(run)
    stats = train_control(run)
    stage2, control = calls
    assert control["items"] == stage2["items"]  # the same pairs, in the same order
    assert control["plan"] == stage2["plan"] and stats["steps"] == len(stage2["plan"])
    assert control["lrs"] == [run.cfg.proper.lr] == stage2["lrs"][:1]  # experts' lr
    experts = load_groups(run, run.base()).layers.values()
    assert stats["trainable"] == sum(m.A.numel() + m.B.numel() for m in experts)
    lora = run.store(CONTROL).path("control") / "adapter_config.json"
    assert f'"r": {4 * 2}' in lora.read_text()  # rank G*r
    assert run.base_fingerprint(CONTROL_BASE) != run.base_fingerprint()
    groups, ours = run.stage_record("groups"), run.stage_record("control")
    assert ours["validation"]["items"] == groups["validation"]["items"] > 0  # same dev pairs
    assert ours["validation"]["monitor"] == groups["validation"]["monitor"]


def test_control_is_kept_on_resume_until_stage_1_changes(run):
    first = train_control(run)
    weights = run.dir / CONTROL_BASE / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = Run(run.cfg)  # a resumed command: a new Run on the same directory
    assert train_control(again) == {"pairs": first["pairs"], "kept": True}
    assert weights.stat().st_mtime_ns == stamp
    run.cfg.proper.user_lr *= 2  # a stage-3 setting: the control still holds
    assert train_control(run)["kept"]

    run.cfg.population.lr *= 3  # stage 1 trained again: the control stands on an old base
    train_population(run)
    with pytest.raises(StoreError, match="--stages control,users --variants oppu-control"):
        train_stages(run, ["users"], [CONTROL])
    assert "kept" not in train_control(run)


def test_control_users_stand_on_the_control_base_and_are_evaluated(run):
    from ownlm.evaluate.runner import evaluate_run

    train_stages(run, ["control", "users"], ["oppu", CONTROL])
    control_fp = run.base_fingerprint(CONTROL_BASE)
    for user in run.split.test:
        assert run.store(CONTROL).manifest(user.name).base_fingerprint == control_fp
        assert run.store("oppu").manifest(user.name).base_fingerprint == run.base_fingerprint()
    results = {r.method: r for r in evaluate_run(run, ["oppu", CONTROL])}
    assert results[CONTROL].not_run is None
    assert results[CONTROL].metrics["n_users"] == results["oppu"].metrics["n_users"] > 0

    weights = run.dir / CONTROL_BASE / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # a flipped bit: not scored
    (broken,) = evaluate_run(run, [CONTROL])[-1:]
    assert broken.metrics == {} and "corrupt" in broken.not_run.reason


def test_missing_control_is_not_run_with_the_command_that_trains_it(run):
    from ownlm.evaluate.runner import evaluate_run

    command = (
        f"ownlm train -c {run.dir / 'config.yaml'} --stages control,users --variants {CONTROL}"
    )
    with pytest.raises(NotFoundError, match="control,users"):
        train_stages(run, ["users"], [CONTROL])
    (result,) = [r for r in evaluate_run(run, ["base", CONTROL]) if r.method == CONTROL]
    assert result.metrics == {} and "missing" in result.not_run.reason
    assert result.not_run.command == command


def test_proper_configs_compare_against_the_control():
    from ownlm.evaluate.runner import ROWS

    configs = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*proper*.yaml"))
    assert configs
    for path in configs:
        methods = yaml.safe_load(path.read_text()).get("methods") or []
        assert CONTROL in methods and "proper-user" in methods, path.name
        assert set(methods) <= set(ROWS), path.name


def test_control_follows_stage_2s_monitor(run):
    run.cfg.proper.monitor = "metric"
    train_groups(run)
    train_control(run)
    groups = run.stage_record("groups")["validation"]
    ours = run.stage_record("control")["validation"]
    assert groups["monitor"] == ours["monitor"] == "accuracy"
