"""How ownlm talks to the person running it, in one style.

- Progress and status lines go through `logging` (`log = get_logger(__name__)` in each
  module), with rich markup allowed (`[bold]stage 1[/]`). A program embedding ownlm
  silences or redirects them like any library's logs (the "ownlm" logger, which does
  not propagate to the root logger).
- Results (tables, the final figures) are printed on `console`, stdout, at least 120
  columns wide so that tables keep their method names whole in logs and CI output.
- Long loops go through `progress`: a tqdm bar on a terminal; when stderr is not a
  terminal (CI, `nohup`, a log file), a plain timestamped line every `every` items and
  at the end, never a bar's carriage-return redraws.

`configure_output()` (the CLI calls it first) chooses between the two once: on a
terminal rich and tqdm; elsewhere plain lines, with third-party progress bars
(transformers' "Loading weights", the hub's downloads) and their deprecation warnings
switched off, so that a log file holds one line per event.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings

from rich.console import Console
from rich.errors import MarkupError
from rich.text import Text

console = Console(width=max(Console().width, 120))
_ROOT = "ownlm"
_PROGRESS_ENV = "OWNLM_PROGRESS"  # "bars" or "lines": overrides the terminal check


def interactive() -> bool:
    """True when progress may redraw bars: stderr is a terminal (or OWNLM_PROGRESS=bars)."""
    forced = os.environ.get(_PROGRESS_ENV, "").lower()
    if forced in ("bars", "lines"):
        return forced == "bars"
    return sys.stderr.isatty()


def plain(message: str) -> str:
    """`message` without rich markup; text that only looks like markup stays as it is."""
    try:
        return Text.from_markup(message).plain
    except MarkupError:
        return message


class _PlainFormatter(logging.Formatter):
    """`2026-11-24 18:40:01 stage 1 population LoRA ...`: one unpadded line per record."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        return f"{stamp} {plain(record.getMessage())}"


class _SafeRichHandler(logging.Handler):
    """Rich rendering on a terminal; a message whose brackets are not valid markup (a
    user's text, a path) is printed as is instead of raising."""

    def __init__(self):
        super().__init__()
        self.console = Console(stderr=True, width=max(Console().width, 120))

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        try:
            text = Text.from_markup(message)
        except MarkupError:
            text = Text(message)
        self.console.print(text, soft_wrap=True)


def _handler() -> logging.Handler:
    if interactive():
        return _SafeRichHandler()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PlainFormatter())
    return handler


def get_logger(name: str) -> logging.Logger:
    """The logger of module `name`, under the package logger that prints for ownlm."""
    root = logging.getLogger(_ROOT)
    if not root.handlers:
        root.addHandler(_handler())
        root.setLevel(logging.INFO)
        root.propagate = False  # printed once here, not again by a root handler
    return logging.getLogger(name if name.startswith(_ROOT) else f"{_ROOT}.{name}")


def configure_output() -> None:
    """Decide, before transformers or the hub are imported, how third parties print."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\b")
    if not interactive():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)


HEARTBEAT = 60.0  # seconds between an inner loop's lines off a terminal


class _Lines:
    """tqdm's small interface (iterate, update, set_postfix, close, `with`) printing
    a plain line every `every` items and one at the end, for non-terminal output. With
    `heartbeat` (an inner loop's), a line only once `heartbeat` seconds have passed since
    the last, and none at the end: a short stage stays quiet, a long one shows it lives."""

    def __init__(self, iterable, total, desc, unit, every, log, heartbeat=None):
        self.iterable, self.desc, self.unit, self.log = iterable, desc or "", unit, log
        self.heartbeat, self._last_time = heartbeat, time.perf_counter()
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.postfix = total, 0, ""
        self.every = every or max(10, -(-(total or 0) // 10))
        self.start, self._last_logged = time.perf_counter(), 0

    def __iter__(self):
        for x in self.iterable:
            yield x
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        values = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_description(self, desc=None, refresh=True):
        self.desc = desc or ""

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.heartbeat is not None:
            if time.perf_counter() - self._last_time >= self.heartbeat and self.n != self.total:
                self._emit()
        elif self.n - self._last_logged >= self.every and self.n != self.total:
            self._emit()

    def close(self) -> None:
        if self.heartbeat is None and (self.n != self._last_logged or self.n == 0):
            self._emit()

    def _emit(self) -> None:
        self._last_logged, self._last_time = self.n, time.perf_counter()
        if self.log is None:
            return
        of = f"/{self.total}" if self.total is not None else ""
        rate = f", {time.perf_counter() - self.start:.0f} s"
        extra = f", {self.postfix}" if self.postfix else ""
        self.log.info(f"{self.desc}: {self.n}{of} {self.unit}{rate}{extra}")


def progress(
    iterable=None,
    *,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
    leave: bool = True,
    every: int | None = None,
):
    """A progress bar on a terminal; elsewhere a line every `every` items (default: a
    tenth of `total`, at least 10) and at the end. `leave=False` marks an inner loop (a stage's
    steps): it draws a transient bar on a terminal; elsewhere it prints a line only every
    `HEARTBEAT` seconds (a pre-training of minutes shows it is alive; the stage's own
    lines say what happened). `desc=None` disables it altogether."""
    if interactive() or desc is None:
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=desc is None)
    log = get_logger("ownlm.progress")
    return _Lines(iterable, total, desc, unit, every, log, None if leave else HEARTBEAT)
