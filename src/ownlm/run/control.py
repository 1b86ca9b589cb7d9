"""OPPU's control base (`<run>/base-control`): stage 1 plus the same extra pass over the
train users that PROPER's stage 2 makes, without groups (docs/proper.md, "A fair
control"). PROPER's control stage builds it; the oppu-control variant's users stand on
it; evaluation loads it. Here: whether it can stand beside the run's base, and loading it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ownlm.backbone.checksum import META_FILE, read_base_meta
from ownlm.errors import NotFoundError, StoreError
from ownlm.paths import CONTROL_BASE, RunPaths
from ownlm.variants import CONTROL

if TYPE_CHECKING:
    from ownlm.run import Run


def control_problem(run: Run) -> str | None:
    """Why the control base cannot stand beside the run's base (None: it can): missing,
    or built on a stage-1 base that has been trained again since (its record names the
    base it was built on), so it would not be stage 1 + the control pass any more."""
    if not (run.dir / CONTROL_BASE / META_FILE).exists():
        return "missing"
    try:
        parent = read_base_meta(run.dir / CONTROL_BASE).get("parent_fingerprint")
    except StoreError as e:
        return f"corrupt: {e}"
    if parent != run.base_fingerprint():
        return f"built on another stage-1 base ({parent}, not {run.base_fingerprint()})"
    return None


def control_command(run: Run) -> str:
    """The command that (re)builds the control base and trains its users."""
    config = RunPaths(run.dir).config
    return f"ownlm train -c {config} --stages control,users --variants {CONTROL}"


def load_control(run: Run):
    """The control base, loaded like `run.base()`; NotFoundError / StoreError with the
    command that trains it when it is missing or stands on an old stage-1 base."""
    problem = control_problem(run)
    if problem is not None:
        error = NotFoundError if problem == "missing" else StoreError
        raise error(f"control base ({CONTROL_BASE}) {problem}; train it: {control_command(run)}")
    return run.base(CONTROL_BASE)
