"""OPPU (Tan et al. 2024) as a method: one PEFT LoRA per user on the population-merged
base, trained on that user's history turned into the prompts used at inference.

Three variants share this home: "oppu" (PEFT + retrieval + profile, the paper's method),
"peft" (the "PEFT only" ablation: a LoRA trained on bare prompts) and "oppu-control"
(OPPU on the control base: stage 1 plus the same extra pass over the train users that
PROPER's stage 2 makes, without groups; docs/proper.md, "A fair control"). Each keeps
its users in its own store (`run.store(variant)`), as vanilla PEFT directories.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ownlm.adapters.lora import detach
from ownlm.errors import ConfigError
from ownlm.paths import CONTROL_BASE
from ownlm.retrieval.prompts import training_pairs, user_context
from ownlm.variants import CONTROL, of_method
from ownlm.variants import variant as variant_of

if TYPE_CHECKING:
    from ownlm.run import Run

VARIANTS = {n: v.label for n, v in of_method("oppu").items()}  # name -> what it is


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ConfigError(f"OPPU variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    return variant


def prompt_settings(run: Run, variant: str) -> tuple[int, bool]:
    """(retrieved items k, profile on?) of the variant's prompts."""
    cfg = run.cfg
    if not variant_of(check_variant(variant)).retrieval:
        return 0, False
    return cfg.retrieval_k, cfg.profile


def user_pairs(run: Run, user, variant: str = "oppu", ctx=None) -> list[tuple[str, str]]:
    """(prompt, target) per history item, with only earlier items retrievable."""
    k, use_profile = prompt_settings(run, variant)
    return training_pairs(run.task, ctx or user_context(run.task, user), k, use_profile)


@contextmanager
def user_model(backbone, store, user, base_fp: str):
    """The model that answers for `user`: the base with their stored LoRA (checked
    against its manifest and the base), or the bare base when they have none."""
    if store is None or not store.exists(user.name):
        yield backbone.model
        return
    from peft import PeftModel

    model = PeftModel.from_pretrained(backbone.model, store.verify(user.name, base_fp))
    try:
        yield model
    finally:
        detach(backbone, model)


def export_adapter(run: Run, user_id: str, out_dir: Path, variant: str = "oppu") -> Path:
    """Copy the user's verified PEFT directory to `out_dir` (with its base: run.base_dir)."""
    if variant == CONTROL:
        raise ConfigError(
            f"{CONTROL} is an evaluation control (its users stand on {CONTROL_BASE}, not on "
            "the run's base): export an oppu, peft or proper-user adapter instead"
        )
    src = run.store(check_variant(variant)).verify(f"user:{user_id}", run.base_fingerprint())
    if Path(out_dir).exists():
        raise ConfigError(f"{out_dir} already exists; choose a new output directory")
    shutil.copytree(src, out_dir)
    return Path(out_dir)
