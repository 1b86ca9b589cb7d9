"""Stage 1 (OPPU's task-level LoRA; PROPER's population level): one LoRA trained on the
histories of all train users, saved to the store, then merged into the backbone (a
float32 one; a bfloat16 or 4-bit base keeps it unmerged beside its weights:
`backbone.unmerged`).

With dev users it is validated each epoch on their items, as stage-1 pairs
(`train.validation`): it stops early, keeps its best epoch, prints its table and warns
when the kept LoRA loses to the population reference.

A resumed run keeps the stored stage (base/ untouched, no training) when it was trained
from the same initial backbone, the same pairs and the same LoRA settings
(`train.resume`); anything else trains it again.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import asdict
from typing import TYPE_CHECKING

from ownlm.adapters.lora import inject
from ownlm.backbone.base import fingerprint_model, write_base_meta
from ownlm.backbone.unmerged import (
    UNMERGED_DIR,
    attach,
    combined_fingerprint,
    keeps_unmerged,
    save_unmerged,
)
from ownlm.log import get_logger
from ownlm.retrieval.prompts import population_pairs, user_context
from ownlm.store import Manifest
from ownlm.train.loop import train_pairs
from ownlm.train.pretrain import initial_backbone
from ownlm.train.stage import StagePlan, run_stage, validated_inputs
from ownlm.train.validation import (
    dev_users,
    early_stopping,
    pair_validator,
    summary,
    tuning_hints,
)

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)


def stage1_pairs(run: Run, users=None) -> list[tuple[str, str]]:
    """(prompt, target) pairs of every history item of `users` (default: the train
    users), sampled as OPPU's stage 1."""
    cfg = run.cfg
    rng = random.Random(cfg.seed)
    pairs = []
    for user in run.split.train if users is None else users:
        if user.history:
            pairs += population_pairs(
                run.task, user_context(run.task, user), cfg.retrieval_k, cfg.profile, rng
            )
    return pairs


def stored_identity(run: Run) -> list:
    """What stage 1 leaves behind: the merged base's fingerprint, the LoRA's checksums."""
    return [run.base_fingerprint(), run.store().manifest("population").sha256]


def train_population(run: Run) -> dict:
    """Train stage 1 and merge it into base/, or keep the stored one if it still holds."""
    cfg = run.cfg
    backbone = initial_backbone(run)
    base_fp = backbone.fingerprint()
    pairs = stage1_pairs(run)
    vset, inputs = validated_inputs(
        run,
        stage1_pairs(run, dev_users(run)),
        backbone=base_fp,
        pairs=pairs,
        lora=asdict(cfg.population),
        seed=cfg.seed,
    )
    plan = StagePlan(
        "population",
        "stage 1 (population)",
        pairs,
        vset,
        inputs,
        lambda: stored_identity(run),
        f"[bold]stage 1[/] population LoRA kept: trained from the same backbone, "
        f"{len(pairs)} pairs and settings (base/ untouched)",
        tuning_hints("population", cfg.population.epochs, cfg.population.lr),
    )
    return run_stage(run, plan, lambda: fit_population(run, backbone, pairs, vset))


def fit_population(run: Run, backbone, pairs, vset) -> dict:
    """Train the population LoRA (validated on `vset`), store it and merge it into base/."""
    cfg, base_fp = run.cfg, backbone.fingerprint()
    log.info(
        f"[bold]stage 1[/] population LoRA on {len(pairs)} pairs from {len(run.split.train)} train users ({backbone.name})"
    )
    model = inject(backbone, cfg.population, cfg.seed, cfg.gradient_checkpointing)
    stopper = None
    if vset:  # validated on the dev users each epoch, kept at its best
        stopper = early_stopping(run, vset, pair_validator(backbone, model, run.task, vset))
    losses = train_pairs(
        backbone, model, pairs, cfg.population, cfg.seed, "population LoRA", stopper
    )
    record = summary(stopper, vset)
    stats = {"pairs": len(pairs), "loss_first": losses[0], "loss_last": losses[-1]}
    run.store().save(
        "population",
        model.save_pretrained,
        Manifest(
            name="population",
            stage="population",
            task=run.task.name,
            base_fingerprint=base_fp,
            extra={**stats, "validation": record},
        ),
    )
    write_merged(run, backbone, run.base_dir, lora=(model, "population"))
    return {**stats, "validation": record}


def write_base(run: Run, backbone) -> None:
    """Save the backbone as base/, replacing the old one only once it is whole."""
    write_merged(run, backbone, run.base_dir)


def write_merged(run: Run, backbone, final, lora=None, **meta) -> None:
    """Save a backbone to `final` (with `write_base_meta` and `meta`) whole or not at all:
    written beside it, the old one moved aside, the new one renamed in. `lora`: (the
    trained PEFT model on `backbone.model`, its stage's name), folded in by `fold_in`."""
    tmp, old = final.with_name(f"{final.name}.tmp"), final.with_name(f"{final.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    kept = fold_in(backbone, *lora, tmp) if lora is not None else []
    backbone.save(tmp)
    if kept:  # the weights are the bare base's: the identity includes the kept LoRAs
        meta["unmerged"] = kept
        meta["fingerprint"] = combined_fingerprint(fingerprint_model(backbone.model), tmp, kept)
    max_len = getattr(backbone, "max_len", 384)
    write_base_meta(tmp, backbone, task=run.task.name, max_len=max_len, **meta)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.replace(old)
    tmp.replace(final)
    shutil.rmtree(old, ignore_errors=True)
    if kept:  # the backbone in memory answers as the saved one will when loaded
        attach(backbone.model, final / UNMERGED_DIR / kept[-1])


def fold_in(backbone, peft_model, name: str, out) -> list[str]:
    """Take the trained LoRA off into the backbone for good. A float32 base gets it
    merged (exact to ~1e-7: the default path). A bfloat16 or 4-bit base keeps it
    unmerged, saved into the base being written at `out` with the ones already kept
    (`backbone.unmerged`: a merge there rounds away most of a small update); returns
    the kept LoRAs' names, [] when merged."""
    if not keeps_unmerged(backbone.model):
        backbone.model = peft_model.merge_and_unload().eval()
        backbone.recorded_fingerprint = None  # the merged weights are a new base
        return []
    kept = save_unmerged(peft_model.get_base_model(), peft_model, out, name)
    # unloaded as a merge would leave it: a trained head (modules_to_save) stays in place
    backbone.model = peft_model.unload().eval()
    vars(backbone.model).pop("peft_config", None)
    return kept
