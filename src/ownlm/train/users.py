"""Stage 3 (OPPU): a fresh LoRA per user, trained on that user's history only.

Each user starts from the same merged base: the LoRA is injected, trained, saved and
then unloaded, so nothing of one user reaches the next (OPPU's public code lets later
users' training sets accumulate earlier users' items; ownlm does not). Users whose
adapter is already stored for this base are skipped, so a stopped run resumes.
"""

from __future__ import annotations

import zlib

from rich.console import Console
from tqdm.auto import tqdm

from ownlm.backbone.base import detach
from ownlm.personal import training_pairs, user_context
from ownlm.store import Manifest
from ownlm.train.loop import inject, train_pairs

console = Console(stderr=True)
VARIANTS = {"oppu": "PEFT + retrieval + profile", "peft": "PEFT only (bare prompts)"}


def user_seed(seed: int, user_id: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(user_id.encode())) % (2**31)


def train_users(run, variant: str = "oppu", users=None, backbone=None) -> dict:
    cfg = run.cfg
    users = run.split.test if users is None else users
    backbone = backbone or run.base()
    base_fp = backbone.fingerprint()
    store = run.store(variant)
    k, use_profile = (cfg.retrieval_k, cfg.profile) if variant == "oppu" else (0, False)
    done = skipped = empty = 0
    for user in tqdm(users, desc=f"user LoRAs ({variant})", unit="user"):
        if store.exists(user.name) and store.manifest(user.name).base_fingerprint == base_fp:
            skipped += 1
            continue
        if not user.history:
            empty += 1  # no history: this user is served by the population model
            continue
        pairs = training_pairs(run.task, user_context(run.task, user), k, use_profile)
        model = inject(backbone, cfg.user, user_seed(cfg.seed, user.user_id))
        try:
            losses = train_pairs(
                backbone, model, pairs, cfg.user, user_seed(cfg.seed, user.user_id)
            )
            store.save(
                user.name,
                model.save_pretrained,
                Manifest(
                    name=user.name,
                    stage=f"user/{variant}",
                    task=run.task.name,
                    base_fingerprint=base_fp,
                    extra={"items": len(pairs), "loss_first": losses[0], "loss_last": losses[-1]},
                ),
            )
        finally:
            detach(backbone, model)
        done += 1
    console.print(
        f"[bold]stage 3[/] {VARIANTS[variant]}: trained {done}, resumed {skipped}, no history {empty}"
    )
    return {"trained": done, "resumed": skipped, "empty": empty}
