"""The shape every one-model stage shares (stage 1 population, stage 2 groups, PROPER's
control pass): what it reads, how it resumes, fits, saves and records.

A stage first reads its inputs: the training pairs, the dev users' validation set and a
digest of everything the result depends on (`resume.inputs_digest`). When run.json says
the stored result was trained from the same inputs and is still what was stored
(`resume.still_valid`), the stage is kept. Otherwise `fit` trains, validates and saves
it; the stage is then marked done with its inputs and the identity of what it stored,
and `validation.finish` prints and records its validation with the guard's warning.
The user stages share `train.per_user` instead: many small models, one per user.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ownlm.log import get_logger
from ownlm.train.resume import inputs_digest, mark_done, still_valid
from ownlm.train.validation import ValidationSet, finish, settings_record, validation_set

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)


@dataclass
class StagePlan:
    """What one stage read before training. `name`: its key in run.json. `title`: how
    tables and warnings name it. `inputs`: the digest of what it trains from.
    `identity()`: what it leaves behind (fingerprints, checksums). `kept`: the line
    logged when the stored result is kept. `hints`: the settings the guard suggests
    changing when the stage loses to its reference (`validation.tuning_hints`)."""

    name: str
    title: str
    pairs: list
    vset: ValidationSet | None
    inputs: str
    identity: Callable[[], object]
    kept: str
    hints: dict[str, str]


def validated_inputs(run: Run, dev_pairs, **parts) -> tuple[ValidationSet | None, str]:
    """What a stage reads besides its pairs: the dev users' validation set built from
    `dev_pairs` (None without dev users), and the digest of what the stage trains from,
    `parts` (fingerprints, pairs, settings, seed) with the validation's settings."""
    vset = validation_set(run, dev_pairs)
    return vset, inputs_digest(**parts, validation=settings_record(run, vset))


def run_stage(run: Run, plan: StagePlan, fit: Callable[[], dict]) -> dict:
    """Keep the stored result when it still holds, else `fit()` (trains, validates and
    saves; returns statistics with its "validation" record), mark the stage done and
    record its validation. Returns the statistics, with "warnings"."""
    if still_valid(run, plan.name, plan.inputs, plan.identity):
        log.info(plan.kept)
        return {"pairs": len(plan.pairs), "kept": True}
    stats = fit()
    mark_done(run, plan.name, plan.inputs, plan.identity)
    stats["warnings"] = finish(run, plan.name, plan.title, stats.pop("validation"), plan.hints)
    return stats
