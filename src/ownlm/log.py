"""How ownlm talks to the person running it, in one style.

- Progress and status lines go through `logging` (`log = get_logger(__name__)` in each
  module), rendered by rich on stderr, with rich markup allowed (`[bold]stage 1[/]`).
  A program embedding ownlm silences or redirects them like any library's logs (the
  "ownlm" logger, which does not propagate to the root logger).
- Results (tables, the final figures) are printed on `console`, stdout, at least 120
  columns wide so that tables keep their method names whole in logs and CI output.
- Long loops show a tqdm bar (stderr).
"""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler

console = Console(width=max(Console().width, 120))
_ROOT = "ownlm"


def get_logger(name: str) -> logging.Logger:
    """The logger of module `name`, under the package logger that prints with rich."""
    root = logging.getLogger(_ROOT)
    if not root.handlers:
        handler = RichHandler(
            console=Console(stderr=True, width=max(Console().width, 120)),
            markup=True,
            show_time=False,
            show_path=False,
            show_level=False,
        )
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False  # printed once here, not again by a root handler
    return logging.getLogger(name if name.startswith(_ROOT) else f"{_ROOT}.{name}")
