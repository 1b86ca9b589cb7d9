"""What every `ownlm` command shares: the typer app, the common options, the one-line
error printer and the helpers that open a run or read a comma-separated list.

Importing it stays light (no torch): each command imports its library lazily."""

from __future__ import annotations

import functools
import os

import typer
from rich.markup import escape

from ownlm.config import describe_fields, load_config
from ownlm.errors import ConfigError, problem_line
from ownlm.log import configure_output, console

HELP = """The `ownlm` command line: demo | prepare | train | tune | eval | update | export | import | forget | serve | token.

Every experiment command takes `--config FILE.yaml` (see configs/) and any number of
`--set key=value` overrides (dotted for nested keys, e.g. `--set user.lr=1e-3`).
"""

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
configure_output()  # bars on a terminal, plain lines in a log file

CONFIG_HELP = "Config keys (--set key=value):\n\n" + "\n\n".join(
    f"{key} = {default}: {help_}" for key, default, help_ in describe_fields()
)
# help is plain text, never rich markup: `pip install 'ownlm[ray]'` must keep its brackets
app = typer.Typer(
    help=HELP, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None
)
token_app = typer.Typer(
    help="Manage API tokens of the server.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(token_app, name="token")

ConfigOpt = typer.Option(None, "--config", "-c", help="experiment YAML (see configs/)")
SetOpt = typer.Option([], "--set", "-s", help="override a config key: key=value (repeatable)")
OverwriteOpt = typer.Option(
    False,
    "--overwrite",
    help="start the run afresh: its directory is moved aside to <run>.old-<time>/ (never deleted)",
)


def friendly(fn):
    """Print ownlm's own errors and the operating system's (a full disk, a read-only or
    missing folder) as one clear line (exit code 2), not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            line = problem_line(e)
            if line is None:  # a bug: its traceback says where
                raise
            # escaped: a message quoting data such as '[/x]' is text, not rich markup
            console.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def open_run(config, overrides, write: bool = True, overwrite: bool = False):
    """train/prepare (`write`) claim the run directory: one trained from other data or
    training keys is refused, or moved aside with `overwrite`. eval/export reopen the run
    as it was trained, config.yaml untouched."""
    from ownlm.run import Run

    if not write:
        return Run.reopen(config, overrides)
    return Run(load_config(config, overrides), overwrite=overwrite)


def split_list(text: str) -> list[str]:
    """The non-empty items of a comma-separated option, stripped."""
    return [s.strip() for s in text.split(",") if s.strip()]


def int_list(text: str, option: str) -> tuple[int, ...]:
    """A comma-separated option of positive integers; anything else is a ConfigError
    naming the option, with an example."""
    try:
        values = tuple(int(b) for b in split_list(text))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ConfigError(f"{option} takes positive integers separated by commas, e.g. 2,5,10")
    return values
