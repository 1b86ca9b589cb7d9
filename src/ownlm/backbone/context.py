"""A causal backbone's context length, and prompts fitted to it.

`context_length` is what a prompt and its answer may fill: the `context_length`
setting, else the model's own (`max_position_embeddings`) up to `DEFAULT_MAX_CONTEXT`,
a bound on the memory activations take; never more than the model's positions.

`fit_ids` makes a prompt fit a token budget by giving up personal context, as the
prompt itself orders it (`data.prompt.Prompt.shorter`: the least relevant retrieved
items first, then the profile), so the task instruction and input survive. Only when
the bare task input is too long are its middle tokens cut. Every prompt fitted inside
`counting_cuts()` is counted, so training warns and evaluation reports how many were cut.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

from ownlm.errors import ConfigError

DEFAULT_MAX_CONTEXT = 4096  # tokens, when no context_length is set: activations' memory


def context_length(config, requested: int | None = None) -> int:
    """The context a backbone runs with (see the module's docstring)."""
    positions = getattr(config, "max_position_embeddings", None)
    if requested is None:
        return min(positions or DEFAULT_MAX_CONTEXT, DEFAULT_MAX_CONTEXT)
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 2:
        raise ConfigError(f"context_length must be an integer >= 2, got {requested!r}")
    if positions is not None and requested > positions:
        raise ConfigError(
            f"context_length={requested} is over the model's {positions} positions "
            f"(max_position_embeddings); use --set context_length={positions} or less"
        )
    return requested


class CutTally:
    """Distinct prompts fitted, and those that lost part of themselves."""

    def __init__(self):
        self.seen: set[str] = set()
        self.cut: set[str] = set()

    @property
    def counts(self) -> tuple[int, int]:
        """(prompts cut, prompts fitted)."""
        return len(self.cut), len(self.seen)


_TALLIES: list[CutTally] = []
_LOCK = threading.Lock()


@contextmanager
def counting_cuts():
    """Yield a `CutTally` of every prompt fitted until the block ends (any thread)."""
    tally = CutTally()
    with _LOCK:
        _TALLIES.append(tally)
    try:
        yield tally
    finally:
        with _LOCK:
            _TALLIES.remove(tally)


def _count(prompt: str, cut: bool) -> None:
    with _LOCK:
        for tally in _TALLIES:
            tally.seen.add(prompt)
            if cut:
                tally.cut.add(prompt)


def fit_ids(fmt, prompt: str, budget: int, cut_middle: bool = True) -> list[int]:
    """`prompt`'s ids in format `fmt` (`backbone.prompt_format.PromptFormat`) within
    `budget` tokens: the prompt, else its first fallback that fits, else the bare
    task input with its middle cut out (head: the instruction; tail: the input's end
    and the answer cue). With `cut_middle=False` that last one comes back whole, too
    long, for the caller to refuse (the server: the client's own text is too long)."""
    ids, cut = fmt.prompt_ids(prompt), False
    for shorter in getattr(prompt, "shorter", ()):
        if len(ids) <= budget:
            break
        ids, cut = fmt.prompt_ids(shorter), True
    if len(ids) > budget:
        cut = True
        if cut_middle and budget > 0:
            head = budget // 2
            ids = ids[:head] + ids[len(ids) - (budget - head) :]
    _count(prompt, cut)
    return ids
