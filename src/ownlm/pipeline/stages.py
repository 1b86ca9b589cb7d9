"""Run the stages a command asks for, in pipeline order: what `ownlm prepare` and
`ownlm train` do, as library calls."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ownlm.backbone.context import counting_cuts
from ownlm.errors import ConfigError
from ownlm.log import get_logger
from ownlm.variants import CONTROL, variant

if TYPE_CHECKING:
    from ownlm.run import Run

STAGES = ("population", "groups", "control", "users")  # control: docs/proper.md
EXECUTORS = ("inprocess", "ray")  # where OPPU's user stage runs

log = get_logger(__name__)


def check_plan(stages: list[str], variants: list[str], executor: str = "inprocess") -> None:
    """Refuse unknown stages, variants and executors before any work starts."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    if executor == "ray":
        from ownlm.pipeline.ray_executor import import_ray

        import_ray()  # not installed: say how to install it now, not after stage 1
    if executor == "ray" and CONTROL in variants:
        raise ConfigError(
            f"{CONTROL} trains in this process (Ray workers load stage 1's base, not the "
            f"control base): train it in its own command, without --executor ray"
        )
    proper = [v for v in variants if variant(v).is_proper]
    if executor == "ray" and proper:
        raise ConfigError(
            f"{', '.join(proper)} train in this process (PROPER's user stage has no Ray route "
            f"yet; it batches users itself): train them in their own command, without "
            f"--executor ray"
        )
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    for name in variants:
        variant(name)  # a ConfigError naming the known variants


def train_stages(
    run: Run,
    stages: list[str],
    variants: list[str],
    executor: str = "inprocess",
    workers: int = 2,
    address: str | None = None,
    tune: bool | None = None,
) -> None:
    """Train `stages` of `run`; the user stage once per variant (oppu, peft, proper-*),
    OPPU's on `executor` ("inprocess", or "ray" with `workers` actors). `tune`: choose
    the tunable variants' budgets on the dev users first (`pipeline.tune`; a recorded
    tune of the same base and settings is kept); None: when the user stage trains,
    `tune.auto` is on and there are enough dev users (`should_tune`)."""
    from ownlm.train.preflight import check_targets

    check_plan(stages, variants, executor)
    check_targets(run.cfg, stages, variants)  # every LoRA placeable, before stage 1 trains
    with counting_cuts() as cuts:  # prompts fitted in this process (not Ray's workers)
        _train(run, stages, variants, executor, workers, address, tune)
    cut, seen = cuts.counts
    if cut:
        log.warning(
            "%d of %d training prompts did not fit the context (context_length): their "
            "least relevant retrieved items, then their profile, were left out (the task "
            "input's middle when even it did not fit); raise context_length if the model "
            "allows it",
            cut,
            seen,
        )


def _train(run: Run, stages, variants, executor, workers, address, tune) -> None:
    from ownlm.proper.group_stage import train_groups
    from ownlm.train.population import train_population

    if "population" in stages:
        train_population(run)
    if "groups" in stages:
        train_groups(run)
    if "control" in stages:
        from ownlm.proper.control_stage import train_control

        train_control(run)
    from ownlm.pipeline.tune import TUNABLE, tune_run

    tunable = [v for v in variants if v in TUNABLE]
    if tune or (tune is None and "users" in stages and tunable and should_tune(run)):
        tune_run(run, tunable, reuse=True)
    if "users" in stages:
        for name in variants:
            train_user_stage(run, name, executor, workers, address)


def should_tune(run: Run) -> bool:
    """Whether `ownlm train` tunes the user stage by itself: `tune.auto` is on and at
    least `tune.min_dev_users` dev users have `tune.min_items` history items (fewer
    would choose a budget by noise; the run then trains with its configured one, and
    says so)."""
    t = run.cfg.tune
    if not t.auto:
        return False
    from ownlm.pipeline.tune import tunable_dev_users

    usable = len(tunable_dev_users(run))
    if usable < t.min_dev_users:
        log.info(
            f"user stage not tuned: {usable} dev user(s) with >= {t.min_items} history items, "
            f"fewer than tune.min_dev_users={t.min_dev_users}; training with the configured "
            f"budget (user.lr {run.cfg.user.lr:g}, user.epochs {run.cfg.user.epochs:g})"
        )
        return False
    return True


def train_user_stage(run: Run, name: str, executor="inprocess", workers=2, address=None) -> None:
    """The user stage of variant `name`: PROPER's, OPPU's on the control base, or OPPU's
    in this process or on Ray."""
    v = variant(name)
    if v.is_proper:
        from ownlm.proper.user_stage import train_proper_users

        train_proper_users(run, router=v.router)
    elif v.control:
        train_control_users(run)
    elif executor == "ray":
        from ownlm.pipeline.ray_executor import train_users_ray

        train_users_ray(run, name, workers=workers, address=address)
    else:
        from ownlm.oppu.user_stage import train_oppu_users

        train_oppu_users(run, name)


def train_control_users(run: Run, users=None) -> dict:
    """OPPU's user stage on PROPER's control base: the same users, prompts, LoRA and
    budget as "oppu", stored in run.store("oppu-control"). Refused, with the command that
    trains it, while the control base is missing or stands on an old stage-1 base."""
    from ownlm.oppu.user_stage import train_oppu_users
    from ownlm.run.control import load_control

    return train_oppu_users(run, CONTROL, users, load_control(run))


def prepare(run: Run) -> dict:
    """Load and split the data, build the initial backbone; returns (and writes to
    <run>/data_summary.json) what was found."""
    import json

    from ownlm.train.pretrain import initial_backbone

    ds, split = run.dataset, run.split
    summary = {
        "task": run.task.name,
        "users": len(ds.users),
        "train_users": len(split.train),
        "dev_users": len(split.dev),
        "test_users": len(split.test),
        "history_items": sum(len(u.history) for u in ds.users),
        "queries": sum(len(u.queries) for u in ds.users),
    }
    backbone = initial_backbone(run)
    summary["backbone"] = {
        "name": backbone.name,
        "kind": backbone.kind,
        "fingerprint": backbone.fingerprint(),
        "context_length": backbone.max_len,
    }
    if hasattr(backbone, "prompt_format"):
        summary["backbone"]["prompt_format"] = backbone.prompt_format.name
    (run.dir / "data_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
