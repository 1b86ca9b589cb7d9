"""The experiment commands: prepare, train, tune, eval and demo. Each parses its options
and calls one library function, imported lazily so that `--help` loads no torch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ownlm.cli.common import (
    CONFIG_HELP,
    ConfigOpt,
    OverwriteOpt,
    SetOpt,
    app,
    friendly,
    int_list,
    open_run,
    split_list,
)
from ownlm.log import console

if TYPE_CHECKING:
    from ownlm.run import Run


@app.command(epilog=CONFIG_HELP)
@friendly
def prepare(config: Path = ConfigOpt, set_: list[str] = SetOpt, overwrite: bool = OverwriteOpt):
    """Load and split the data, build the backbone (pre-training the tiny one if needed)."""
    from ownlm.pipeline.stages import prepare as prepare_run

    console.print_json(data=prepare_run(open_run(config, set_, overwrite=overwrite)))


@app.command(epilog=CONFIG_HELP)
@friendly
def train(
    config: Path = ConfigOpt,
    set_: list[str] = SetOpt,
    stages: str = typer.Option(
        "population,users",
        help="comma-separated stages: population, groups, control (OPPU's control for PROPER), users",
    ),
    variants: str = typer.Option(
        "oppu,peft",
        help="user-stage variants: oppu (PEFT+retrieval+profile), peft (PEFT only), oppu-control (OPPU on the control base), proper-input, proper-user",
    ),
    executor: str = typer.Option(
        "inprocess",
        help="where OPPU's user stage runs: inprocess, or ray (pip install 'ownlm[ray]')",
    ),
    workers: int = typer.Option(2, help="Ray actors, each loading the base once (--executor ray)"),
    ray_address: str = typer.Option(
        None, help="join this Ray cluster (default: start a local Ray) (--executor ray)"
    ),
    overwrite: bool = OverwriteOpt,
    tune: bool = typer.Option(
        None,
        "--tune/--no-tune",
        help="choose the user stage's lr and epochs on the dev users first; by default it "
        "does when tune.auto is on and there are tune.min_dev_users dev users (3)",
        show_default=False,
    ),
):
    """Train the stages. A stopped run resumes: stages and users already trained from
    the same data and settings are kept; a run trained from others is refused."""
    from ownlm.pipeline.stages import check_plan, train_stages

    check_plan(split_list(stages), split_list(variants), executor)  # before any work
    run = open_run(config, set_, overwrite=overwrite)
    train_stages(
        run, split_list(stages), split_list(variants), executor, workers, ray_address, tune
    )


@app.command(name="tune", epilog=CONFIG_HELP)
@friendly
def tune_(
    config: Path = ConfigOpt,
    set_: list[str] = SetOpt,
    variants: str = typer.Option(
        "oppu,peft", help="user stages to tune: oppu, peft, proper-input, proper-user"
    ),
):
    """Choose the user stage's learning rate and epochs on the dev users (a run with
    its stage 1), print the table chosen from, and record the choice in the run: the
    user stage trains with it from then on (users of another budget are retrained)."""
    from ownlm.pipeline.tune import open_for_tuning, tune_run

    start = time.perf_counter()
    run = open_for_tuning(config, set_)
    tune_run(run, split_list(variants), config=str(config) if config else None)
    console.print(f"tune wall time: {time.perf_counter() - start:.0f} s")


@app.command(name="eval", epilog=CONFIG_HELP)
@friendly
def eval_(
    config: Path = ConfigOpt,
    set_: list[str] = SetOpt,
    active_levels: str = typer.Option(
        "", help="also run the active-level study (PROPER): history sizes to keep, e.g. 2,5,10,50"
    ),
    groups_view: bool = typer.Option(
        False, "--groups-view", help="also print which users went to which group expert (PROPER)"
    ),
    study: str = typer.Option(
        "",
        help="also run these studies, comma-separated: shift (behaviour shift and updates; "
        "shift-swap: with a planted drift), "
        "peft-methods (LoRA vs IA3 vs prompt tuning), formats (history formats)",
    ),
    study_users: int = typer.Option(0, help="studies on the first N test users only (0 = all)"),
    one_expert_run: str = typer.Option(
        "",
        help="active-level study: also the row proper-user-g1, PROPER on the stage 2 of this "
        "run (same output_dir), trained alike with --set proper.groups=1",
    ),
):
    """Evaluate the configured methods side by side with the trivial references. Exits
    with code 3 (after saving the table) when a method could not be run: users without a
    usable adapter; the message names them and the command that trains them."""
    from ownlm.evaluate.runner import evaluate_run

    buckets = int_list(active_levels, "--active-levels") if active_levels else ()
    studies = split_list(study)
    if studies:  # an unknown study stops before any work
        from ownlm.studies import check_studies

        check_studies(studies)
    start = time.perf_counter()
    run = open_run(config, set_, write=False)
    results = evaluate_run(run)
    from ownlm.run.outputs import guarded_outputs

    with guarded_outputs(run, run.paths.eval):  # a user forgotten meanwhile: not named
        _more(run, groups_view, buckets, studies, study_users, one_expert_run)
    console.print(f"eval wall time: {time.perf_counter() - start:.0f} s")
    if any(r.not_run for r in results):  # a method asked for has no score: not a success
        raise typer.Exit(3)


def _more(run: Run, groups_view: bool, buckets, studies, study_users: int, one_expert_run: str):
    """`ownlm eval`'s extras: the groups view, the active-level study, the studies."""
    if groups_view:
        from ownlm.evaluate.group_view import groups_view as show_groups

        show_groups(run)
    if buckets:
        from ownlm.run import Run
        from ownlm.studies.active_levels import active_level_study

        one = Run.open(run.dir.parent / one_expert_run) if one_expert_run else None
        active_level_study(run, buckets=buckets, max_users=study_users or None, one_expert=one)
    for name in studies:
        from ownlm.studies import run_named_study

        run_named_study(name, run, max_users=study_users or None)


@app.command()
@friendly
def demo(
    output_dir: str = typer.Option("runs", help="parent folder of the demo runs"),
    configs: str = typer.Option(
        "configs/demo-tags.yaml,configs/demo-headlines.yaml,configs/demo-rewrite.yaml",
        help="demo experiment configs",
    ),
    overwrite: bool = OverwriteOpt,
):
    """The whole pipeline on built-in data: pre-train, population LoRA, one LoRA per user, eval."""
    from ownlm.studies.demo import run_demo

    start = time.perf_counter()
    console.print(run_demo(split_list(configs), output_dir, overwrite=overwrite))
    console.print(f"demo wall time: {time.perf_counter() - start:.0f} s")
