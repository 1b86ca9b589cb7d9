"""What every user stage shares, whatever the method: which users to train (`plan_users`:
resumed, history changed, budget changed, no history), each user's own seed, what is
recorded beside a user's weights (`user_manifest`), saving a user under their lock unless
they were forgotten or updated meanwhile (`save_user`), and the stage's summary line.
OPPU's (`ownlm.oppu.user_stage`) and PROPER's (`ownlm.proper.user_stage`) user stages
both call these."""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

from ownlm.log import get_logger, progress
from ownlm.store import Manifest
from ownlm.train.budget import Budget, budget_reason

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)


def user_seed(seed: int, user_id: str) -> int:
    """Each user's own seed: the same user gets the same initialisation in every run."""
    return (seed * 1_000_003 + zlib.crc32(user_id.encode())) % (2**31)


def user_manifest(
    run: Run, user, stage: str, fingerprint: str, losses: list[float], budget: Budget | None = None
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


def save_user(run: Run, store, user, write, manifest, seen: dict) -> bool:
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


def train_each(
    run: Run,
    store,
    todo,
    seen: dict,
    fit,
    stage: str,
    fingerprint: str,
    budget: Budget | None,
    desc: str,
) -> int:
    """The loop of a one-user-at-a-time stage: for each user of `todo` (planned by
    `plan_users`), `fit(i, user)` (a context manager: trains the i-th user and gives
    (write, losses), where `write(dir)` writes their adapter; it gives the base back on
    leaving) and `save_user` under their lock with `user_manifest`. Returns how many
    were saved."""
    saved = 0
    for i, user in enumerate(progress(todo, desc=desc, unit="user")):
        with fit(i, user) as (write, losses):
            manifest = user_manifest(run, user, stage, fingerprint, losses, budget)
            saved += save_user(run, store, user, write, manifest, seen)
    return saved
