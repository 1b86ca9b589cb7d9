"""The ownership commands: forget, export, update and import a user's models and data.
Each parses its options and calls one library function, imported lazily."""

from __future__ import annotations

from pathlib import Path

import typer

from ownlm.cli.common import ConfigOpt, SetOpt, app, friendly, open_run
from ownlm.errors import ConfigError
from ownlm.log import console


@app.command()
@friendly
def forget(
    user: str = typer.Option(
        ..., help="user id whose adapters, tokens and cached state are deleted"
    ),
    run_dir: Path = typer.Option(..., help="run directory (e.g. runs/demo-tags)"),
):
    """Delete everything the run stores of a user (adapters, tokens, stage-2 entry, eval
    outputs naming them) and name what their history trained, with the retrain command."""
    from ownlm.ownership.forget import forget_user

    for line, style in forget_user(run_dir, user).report():
        console.print(line, style=style, markup=False, highlight=False, soft_wrap=True)


@app.command()
@friendly
def export(
    config: Path = ConfigOpt,
    set_: list[str] = SetOpt,
    user: str = typer.Option(..., help="user id to export"),
    out: Path = typer.Option(None, help="output directory (a standard PEFT LoRA directory)"),
    variant: str = typer.Option(
        "auto",
        help="auto (the first the user has of:) proper-user (group experts + user LoRA flattened into one LoRA), oppu, peft (the user's own LoRA)",
    ),
    bundle: Path = typer.Option(
        None, help="instead of --out: write the user's ownership bundle (a tar; `ownlm import`)"
    ),
    with_history: bool = typer.Option(
        False, "--with-history", help="put the user's history in the bundle too"
    ),
):
    """Export a user's model as one vanilla PEFT LoRA directory (PEFT, vLLM --lora-modules),
    or with --bundle everything the run stores for them, in one self-checking archive."""
    if (out is None) == (bundle is None):
        raise ConfigError("give exactly one of --out DIR (a PEFT LoRA) or --bundle FILE")
    run = open_run(config, set_, write=False)
    if bundle is not None:
        from ownlm.ownership.bundle import write_bundle

        done = write_bundle(run, user, bundle, with_history)
        console.print(done.summary(), markup=False, highlight=False, soft_wrap=True)
        return
    from ownlm.ownership.export import export_user

    _, message = export_user(run, user, out, variant)
    console.print(message, markup=False, highlight=False, soft_wrap=True)


@app.command()
@friendly
def update(
    run_dir: Path = typer.Option(..., help="run directory (e.g. runs/demo-tags)"),
    user: str = typer.Option(..., help="user id whose OPPU adapter is continued"),
    history: Path = typer.Option(..., help="JSONL file of new history items, one per line"),
    lr: float = typer.Option(
        None, help="learning rate (default: update.lr, else the user stage's)"
    ),
    epochs: float = typer.Option(
        None, help="epochs over the new items (default: update.epochs, else the user stage's)"
    ),
):
    """Continue a user's adapter on new history items (kept in <run>/updates/<user>.jsonl),
    swapped in atomically; a running server serves the new version from its next request."""
    from ownlm.oppu.update import update_user
    from ownlm.run import Run

    done = update_user(Run.open(run_dir), user, history, lr, epochs)
    console.print(done.summary(), markup=False, highlight=False, soft_wrap=True)


@app.command(name="import")
@friendly
def import_(
    bundle: Path = typer.Argument(..., help="a bundle written by `ownlm export --bundle`"),
    run_dir: Path = typer.Option(..., help="the run to restore it into (same base)"),
    replace: bool = typer.Option(
        False, "--replace", help="swap out adapters the run already has for this user"
    ),
):
    """Restore a user's ownership bundle into a run with the same base, checking every
    member's sha256 first; refuses a tampered archive or one for another base."""
    from ownlm.ownership.bundle import import_bundle

    done = import_bundle(bundle, run_dir, replace)
    console.print(done.summary(bundle, run_dir), markup=False, highlight=False, soft_wrap=True)
