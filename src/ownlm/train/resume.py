"""What lets a resumed run keep a finished stage instead of training it again.

Stages 1 and 2 are each one model trained on all train users: a resume that retrains
them costs minutes and, where training is not bit-for-bit repeatable (GPUs), changes the
merged base under every user adapter. So each records, in <run>/run.json, a digest of
what it was trained from (`inputs_digest`) and the identity of what it stored; a later
run keeps the stage when both still hold (`still_valid`), and trains it again otherwise.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from ownlm.errors import OwnlmError

if TYPE_CHECKING:
    from ownlm.run import Run


def inputs_digest(**parts) -> str:
    """sha256 of a stage's inputs (fingerprints, training pairs, settings), as JSON."""
    h = hashlib.sha256()
    for key in sorted(parts):
        h.update(json.dumps([key, parts[key]], sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()


def still_valid(run: Run, stage: str, inputs: str, identity: Callable[[], object]) -> bool:
    """True when `stage`'s stored result was trained from `inputs` and is still what was
    stored then: `identity()` (e.g. the base's fingerprint and the adapter's checksums)
    equals the recorded one. A result that is gone or corrupt (an OwnlmError) is not."""
    record = run.stage_record(stage)
    if not record or record.get("inputs") != inputs:
        return False
    try:
        return json.loads(json.dumps(identity())) == record.get("identity")
    except OwnlmError:
        return False


def mark_done(run: Run, stage: str, inputs: str, identity: Callable[[], object]) -> None:
    """Record that `stage` finished from `inputs`, with what it stored."""
    run.record_stage(stage, {"inputs": inputs, "identity": identity()})
