"""Stage 1 (OPPU's task-level LoRA; PROPER's population level): one LoRA trained on the
histories of all train users, saved to the store, then merged into the backbone.
"""

from __future__ import annotations

import random
import shutil

from ownlm.adapters.lora import inject
from ownlm.backbone.base import write_base_meta
from ownlm.log import get_logger
from ownlm.retrieval.prompts import population_pairs, user_context
from ownlm.store import Manifest
from ownlm.train.loop import train_pairs
from ownlm.train.pretrain import initial_backbone

log = get_logger(__name__)


def train_population(run) -> dict:
    cfg = run.cfg
    backbone = initial_backbone(run)
    base_fp = backbone.fingerprint()
    rng = random.Random(cfg.seed)
    pairs = []
    for user in run.split.train:
        if user.history:
            pairs += population_pairs(
                run.task, user_context(run.task, user), cfg.retrieval_k, cfg.profile, rng
            )
    log.info(
        f"[bold]stage 1[/] population LoRA on {len(pairs)} pairs from {len(run.split.train)} train users ({backbone.name})"
    )
    model = inject(backbone, cfg.population, cfg.seed, cfg.gradient_checkpointing)
    losses = train_pairs(backbone, model, pairs, cfg.population, cfg.seed, desc="population LoRA")
    run.store().save(
        "population",
        model.save_pretrained,
        Manifest(
            name="population",
            stage="population",
            task=run.task.name,
            base_fingerprint=base_fp,
            extra={"pairs": len(pairs), "loss_first": losses[0], "loss_last": losses[-1]},
        ),
    )
    backbone.model = model.merge_and_unload().eval()
    tmp = run.base_dir.with_name("base.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    backbone.save(tmp)
    write_base_meta(tmp, backbone, task=run.task.name, max_len=getattr(backbone, "max_len", 384))
    shutil.rmtree(run.base_dir, ignore_errors=True)
    tmp.replace(run.base_dir)
    return {"pairs": len(pairs), "loss_first": losses[0], "loss_last": losses[-1]}
