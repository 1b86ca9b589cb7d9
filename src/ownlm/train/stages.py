"""Run the stages a command asks for, in pipeline order: what `ownlm prepare` and
`ownlm train` do, as library calls."""

from __future__ import annotations

from ownlm.backbone.context import counting_cuts
from ownlm.errors import ConfigError
from ownlm.log import get_logger
from ownlm.methods.oppu import CONTROL, VARIANTS
from ownlm.methods.proper.users import METHODS as PROPER_VARIANTS

STAGES = ("population", "groups", "control", "users")  # control: docs/proper.md
EXECUTORS = ("inprocess", "ray")  # where OPPU's user stage runs

log = get_logger(__name__)


def check_plan(stages: list[str], variants: list[str], executor: str = "inprocess") -> None:
    """Refuse unknown stages, variants and executors before any work starts."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    if executor == "ray":
        from ownlm.train.ray_executor import import_ray

        import_ray()  # not installed: say how to install it now, not after stage 1
    if executor == "ray" and CONTROL in variants:
        raise ConfigError(
            f"{CONTROL} trains in this process (Ray workers load stage 1's base, not the "
            f"control base): train it in its own command, without --executor ray"
        )
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    for variant in variants:
        if variant not in VARIANTS and variant not in PROPER_VARIANTS:
            raise ConfigError(
                f"unknown variant {variant!r}; choose from {sorted(VARIANTS)} or "
                f"{', '.join(PROPER_VARIANTS)}"
            )


def train_stages(
    run,
    stages: list[str],
    variants: list[str],
    executor: str = "inprocess",
    workers: int = 2,
    address: str | None = None,
    tune: bool = False,
) -> None:
    """Train `stages` of `run`; the user stage once per variant (oppu, peft, proper-*),
    OPPU's on `executor` ("inprocess", or "ray" with `workers` actors). `tune`: choose
    the tunable variants' budgets on the dev users first (`train.tune`; a recorded
    tune of the same base and settings is kept)."""
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


def _train(run, stages, variants, executor, workers, address, tune) -> None:
    from ownlm.train.groups import train_groups
    from ownlm.train.population import train_population
    from ownlm.train.proper_users import train_proper_users

    if "population" in stages:
        train_population(run)
    if "groups" in stages:
        train_groups(run)
    if "control" in stages:
        from ownlm.train.control import train_control

        train_control(run)
    if tune:
        from ownlm.train.tune import TUNABLE, tune_run

        tune_run(run, [v for v in variants if v in TUNABLE], reuse=True)
    if "users" in stages:
        for variant in variants:
            if variant not in VARIANTS:
                train_proper_users(run, router=PROPER_VARIANTS[variant])
            elif variant == CONTROL:
                from ownlm.train.control import train_control_users

                train_control_users(run)
            elif executor == "ray":
                from ownlm.train.ray_executor import train_users_ray

                train_users_ray(run, variant, workers=workers, address=address)
            else:
                from ownlm.train.user_stage import train_user_stage

                train_user_stage(run, variant)


def prepare(run) -> dict:
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
