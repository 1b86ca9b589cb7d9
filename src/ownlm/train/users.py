"""Stage 3 (OPPU): a fresh adapter per user, trained on that user's history only: a
LoRA, or the PEFT method `user.method` names (IA3, prompt tuning: `adapters.methods`).

Each user starts from the same merged base: the LoRA is injected, trained, saved and
then unloaded, so nothing of one user reaches the next (OPPU's public code lets later
users' training sets accumulate earlier users' items; ownlm does not). Users whose
adapter is already stored for this base and their present history are skipped, so a
stopped run resumes; a user whose history changed since is trained again (`plan_users`,
shared by every user stage), as is one trained with another budget than the run's
(`train.budget`: the configured lr and epochs, or those `ownlm tune` chose).
"""

from __future__ import annotations

from dataclasses import replace

from ownlm.adapters.lora import detach
from ownlm.adapters.methods import inject_method
from ownlm.log import get_logger, progress
from ownlm.methods.oppu import VARIANTS, check_variant, user_pairs, user_seed
from ownlm.store import Manifest
from ownlm.train.budget import Budget, budget_reason, user_budget
from ownlm.train.loop import train_pairs

log = get_logger(__name__)


def user_manifest(
    run, user, stage: str, fingerprint: str, losses: list[float], budget: Budget | None = None
) -> Manifest:
    """What a user stage records next to the weights: what it was trained on and how
    (the lr and epochs of `budget`, so that another budget retrains it)."""
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
            **(budget.extra() if budget else {}),
        },
    )


def plan_users(store, users, fingerprint: str, budget: Budget | None = None) -> tuple[list, dict]:
    """Which of `users` a user stage trains: (users to train, counts). Skipped: those
    whose stored adapter stands for this base (`fingerprint`), their history and
    `budget` ("resumed"), and those without history ("empty": the population model
    serves them; an adapter they still have is of a history they no longer have, and is
    removed). "history_changed" and "budget_changed" count the users trained again
    because their history changed, or because the run's budget did (`ownlm tune`)."""
    todo, counts = [], {"resumed": 0, "empty": 0, "history_changed": 0, "budget_changed": 0}
    for user in users:
        reason = store.stale_reason(user.name, fingerprint, user.history_digest())
        if reason is None and budget is not None:
            reason = budget_reason(store, user.name, budget)
        if reason is None:
            counts["resumed"] += 1
        elif not user.history:
            counts["empty"] += 1
            if reason != "missing":
                store.delete(user.name)
        else:
            todo.append(user)
            counts["history_changed"] += reason == "history changed"
            counts["budget_changed"] += reason == "other budget"
    return todo, counts


def stage_line(trained: int, counts: dict) -> str:
    """`trained 3 (1 because their history changed, 2 for a new budget), resumed 2, ...`."""
    why = [
        f"{n} {what}"
        for n, what in (
            (counts["history_changed"], "because their history changed"),
            (counts.get("budget_changed", 0), "for a new budget"),
        )
        if n
    ]
    why = f" ({', '.join(why)})" if why else ""
    return f"trained {trained}{why}, resumed {counts['resumed']}, no history {counts['empty']}"


def save_user(run, store, user, write, manifest, seen: dict) -> bool:
    """Save `user`'s trained adapter (`write(dir)` writes the PEFT files) under their lock,
    unless they were forgotten, or their history changed (`ownlm update`), since the
    stage planned (`seen`: `Run.current_histories` then; `Run.writing_user`): then
    nothing is written, it says why, and False."""
    with run.writing_user(user.user_id, "train", seen.get(user.user_id)) as why:
        if why is None:
            store.save(user.name, write, manifest)
            return True
    if why == "forgotten":
        log.warning(f"user {user.user_id} was forgotten while being trained: nothing saved")
    else:
        log.warning(
            f"user {user.user_id}'s history changed while being trained (`ownlm update`): "
            "not saved; train the user stage again to train them on all of it"
        )
    return False


def fit_user(
    run, backbone, user, variant: str = "oppu", ctx=None, budget=None, watch=None, method=None
):
    """Inject a fresh adapter and train it on `user`'s history: (PEFT model, step losses).
    `budget`: its lr and epochs (default: the run's, `user_budget`). `method`: the PEFT
    method (default the run's `user.method`; the PEFT-methods study tries each).
    `watch(model)` may give an `EarlyStopping` that validates it (`ownlm tune`). The
    caller saves the model and gives the base back with `detach(backbone, model)`."""
    budget = budget or user_budget(run, variant, backbone.fingerprint())
    s = budget.lora(run.cfg.user)
    s = replace(s, method=method) if method else s
    seed = user_seed(run.cfg.seed, user.user_id)
    pairs = user_pairs(run, user, variant, ctx)
    model = inject_method(backbone, s, seed, run.cfg.gradient_checkpointing)
    try:
        stopper = watch(model) if watch else None
        return model, train_pairs(backbone, model, pairs, s, seed, early_stopping=stopper)
    except BaseException:
        detach(backbone, model)
        raise


def train_users(run, variant: str = "oppu", users=None, backbone=None) -> dict:
    check_variant(variant)
    users = run.split.test if users is None else users
    backbone = backbone or run.base()
    base_fp = backbone.fingerprint()
    store = run.store(variant)
    budget = user_budget(run, variant, base_fp)
    todo, counts = plan_users(store, users, base_fp, budget)
    seen = run.current_histories(todo)  # an update or forget landing later: not saved
    what = "LoRAs" if run.cfg.user.method == "lora" else f"{run.cfg.user.method} adapters"
    saved = 0
    for user in progress(todo, desc=f"user {what} ({variant})", unit="user"):
        model, losses = fit_user(run, backbone, user, variant, budget=budget)
        try:
            manifest = user_manifest(run, user, f"user/{variant}", base_fp, losses, budget)
            saved += save_user(run, store, user, model.save_pretrained, manifest, seen)
        finally:
            detach(backbone, model)
    log.info(f"[bold]stage 3[/] {VARIANTS[variant]} ({budget}): {stage_line(saved, counts)}")
    return {"trained": saved, **counts}
