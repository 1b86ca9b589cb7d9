"""Stage 3 (OPPU): a fresh LoRA per user, trained on that user's history only.

Each user starts from the same merged base: the LoRA is injected, trained, saved and
then unloaded, so nothing of one user reaches the next (OPPU's public code lets later
users' training sets accumulate earlier users' items; ownlm does not). Users whose
adapter is already stored for this base and their present history are skipped, so a
stopped run resumes; a user whose history changed since is trained again (`plan_users`,
shared by every user stage).
"""

from __future__ import annotations

from ownlm.adapters.lora import detach, inject
from ownlm.log import get_logger, progress
from ownlm.methods.oppu import VARIANTS, check_variant, user_pairs, user_seed
from ownlm.store import Manifest
from ownlm.train.loop import train_pairs

log = get_logger(__name__)


def user_manifest(run, user, stage: str, fingerprint: str, losses: list[float]) -> Manifest:
    """What a user stage records next to the weights: what it was trained on and how."""
    return Manifest(
        name=user.name,
        stage=stage,
        task=run.task.name,
        base_fingerprint=fingerprint,
        extra={
            "items": len(user.history),
            "history_sha256": user.history_digest(),
            "loss_first": losses[0],
            "loss_last": losses[-1],
        },
    )


def plan_users(store, users, fingerprint: str) -> tuple[list, dict]:
    """Which of `users` a user stage trains: (users to train, counts). Skipped: those
    whose stored adapter stands for this base (`fingerprint`) and their history
    ("resumed"), and those without history ("empty": the population model serves them;
    an adapter they still have is of a history they no longer have, and is removed).
    "history_changed" counts the users trained again because their history changed."""
    todo, counts = [], {"resumed": 0, "empty": 0, "history_changed": 0}
    for user in users:
        reason = store.stale_reason(user.name, fingerprint, user.history_digest())
        if reason is None:
            counts["resumed"] += 1
        elif not user.history:
            counts["empty"] += 1
            if reason != "missing":
                store.delete(user.name)
        else:
            todo.append(user)
            counts["history_changed"] += reason == "history changed"
    return todo, counts


def stage_line(trained: int, counts: dict) -> str:
    """`trained 3 (1 because their history changed), resumed 2, no history 1`."""
    changed = counts["history_changed"]
    why = f" ({changed} because their history changed)" if changed else ""
    return f"trained {trained}{why}, resumed {counts['resumed']}, no history {counts['empty']}"


def fit_user(run, backbone, user, variant: str = "oppu", ctx=None):
    """Inject a fresh LoRA and train it on `user`'s history: (PEFT model, step losses).
    The caller saves it and gives the base back with `detach(backbone, model)`."""
    seed = user_seed(run.cfg.seed, user.user_id)
    pairs = user_pairs(run, user, variant, ctx)
    model = inject(backbone, run.cfg.user, seed, run.cfg.gradient_checkpointing)
    try:
        return model, train_pairs(backbone, model, pairs, run.cfg.user, seed)
    except BaseException:
        detach(backbone, model)
        raise


def train_users(run, variant: str = "oppu", users=None, backbone=None) -> dict:
    check_variant(variant)
    users = run.split.test if users is None else users
    backbone = backbone or run.base()
    base_fp = backbone.fingerprint()
    store = run.store(variant)
    todo, counts = plan_users(store, users, base_fp)
    for user in progress(todo, desc=f"user LoRAs ({variant})", unit="user"):
        model, losses = fit_user(run, backbone, user, variant)
        try:
            store.save(
                user.name,
                model.save_pretrained,
                user_manifest(run, user, f"user/{variant}", base_fp, losses),
            )
        finally:
            detach(backbone, model)
    log.info(f"[bold]stage 3[/] {VARIANTS[variant]}: {stage_line(len(todo), counts)}")
    return {"trained": len(todo), **counts}
