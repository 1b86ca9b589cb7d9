"""Recipes that train and evaluate: the studies of the papers (active levels, behaviour
shift, PEFT methods, history formats), the demo. They call the stages (`ownlm.train`)
and the scoring (`ownlm.evaluate`); nothing calls them but the CLI.

`ownlm eval --study NAME` runs the study registered here under NAME: a function
`run_study(run, max_users=None)` (named "module" or "module:function") that trains what it needs in memory or in its own folder
under the run, prints its table, writes `eval/<name>.json` (and a plot), and returns
the table."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ownlm.run import Run

# name on the command line -> "module" (its `run_study`) or "module:function"
STUDIES = {
    "shift": "ownlm.studies.shift",
    "shift-swap": "ownlm.studies.shift:run_swap_study",  # with a planted drift
    "peft-methods": "ownlm.studies.peft_methods",
    "formats": "ownlm.studies.formats",
}


def check_studies(names) -> None:
    """A ConfigError naming the first unknown study in `names` and the known ones."""
    from ownlm.errors import ConfigError

    for name in names:
        if name not in STUDIES:
            raise ConfigError(
                f"unknown study {name!r}: choose among {', '.join(sorted(STUDIES))} "
                "(the active-level study is --active-levels)"
            )


def run_named_study(name: str, run: Run, max_users: int | None = None):
    """Run the study `name` on `run` (`check_studies` first)."""
    check_studies([name])
    module, _, function = STUDIES[name].partition(":")
    study = getattr(importlib.import_module(module), function or "run_study")
    return study(run, max_users=max_users)
