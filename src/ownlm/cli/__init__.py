"""The `ownlm` command line: demo | prepare | train | tune | eval | update | export | import | forget | serve | token.

Every experiment command takes `--config FILE.yaml` (see configs/) and any number of
`--set key=value` overrides (dotted for nested keys, e.g. `--set user.lr=1e-3`).

The typer `app` and what the commands share live in `common`; the commands by concern
in `experiment` (prepare, train, tune, eval, demo), `ownership` (forget, export, update,
import) and `serving` (serve, token). Importing a command module registers its commands.
"""

from __future__ import annotations

from ownlm.cli import experiment, ownership, serving  # noqa: F401  (registers the commands)
from ownlm.cli.common import app

__all__ = ["app", "main"]


def main():  # pragma: no cover
    """The console script's entry: run the app on the process's arguments."""
    app()
