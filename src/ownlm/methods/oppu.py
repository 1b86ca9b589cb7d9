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
import zlib
from contextlib import contextmanager
from pathlib import Path

from ownlm.adapters.lora import detach
from ownlm.backbone.checksum import META_FILE, read_base_meta
from ownlm.errors import ConfigError, NotFoundError, StoreError
from ownlm.retrieval.prompts import training_pairs, user_context

CONTROL = "oppu-control"
CONTROL_BASE = "base-control"  # <run>/base-control: stage 1 + the control pass, merged
VARIANTS = {
    "oppu": "PEFT + retrieval + profile",
    "peft": "PEFT only (bare prompts)",
    CONTROL: "OPPU on the control base (stage 1 + stage 2's pass without groups)",
}


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ConfigError(f"OPPU variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    return variant


def user_seed(seed: int, user_id: str) -> int:
    """Each user's own seed: the same user gets the same initialisation in every run."""
    return (seed * 1_000_003 + zlib.crc32(user_id.encode())) % (2**31)


def prompt_settings(run, variant: str) -> tuple[int, bool]:
    """(retrieved items k, profile on?) of the variant's prompts."""
    cfg = run.cfg
    return (0, False) if check_variant(variant) == "peft" else (cfg.retrieval_k, cfg.profile)


def user_pairs(run, user, variant: str = "oppu", ctx=None) -> list[tuple[str, str]]:
    """(prompt, target) per history item, with only earlier items retrievable."""
    k, use_profile = prompt_settings(run, variant)
    return training_pairs(run.task, ctx or user_context(run.task, user), k, use_profile)


def control_problem(run) -> str | None:
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


def control_command(run) -> str:
    """The command that (re)builds the control base and trains its users."""
    config = run.dir / "config.yaml"
    return f"ownlm train -c {config} --stages control,users --variants {CONTROL}"


def load_control(run):
    """The control base, loaded like `run.base()`; NotFoundError / StoreError with the
    command that trains it when it is missing or stands on an old stage-1 base."""
    problem = control_problem(run)
    if problem is not None:
        error = NotFoundError if problem == "missing" else StoreError
        raise error(f"control base ({CONTROL_BASE}) {problem}; train it: {control_command(run)}")
    return run.base(CONTROL_BASE)


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


def export_user(run, user_id: str, out_dir: Path, variant: str = "oppu") -> Path:
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
