"""Stage 3 (OPPU), one user after another: a fresh adapter per user, trained on that user's history only: a
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

from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

from ownlm.adapters.lora import detach
from ownlm.adapters.methods import inject_method
from ownlm.log import get_logger
from ownlm.oppu.model import VARIANTS, check_variant, user_pairs
from ownlm.train.budget import user_budget
from ownlm.train.loop import train_pairs
from ownlm.train.per_user import (
    plan_users,
    stage_line,
    train_each,
    user_seed,
)

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)


def fit_user(
    run: Run, backbone, user, variant: str = "oppu", ctx=None, budget=None, watch=None, method=None
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


def train_users(run: Run, variant: str = "oppu", users=None, backbone=None) -> dict:
    check_variant(variant)
    users = run.split.test if users is None else users
    backbone = backbone or run.base()
    base_fp = backbone.fingerprint()
    store = run.store(variant)
    budget = user_budget(run, variant, base_fp)
    todo, counts = plan_users(store, users, base_fp, budget)
    seen = run.current_histories(todo)  # an update or forget landing later: not saved
    what = "LoRAs" if run.cfg.user.method == "lora" else f"{run.cfg.user.method} adapters"

    @contextmanager
    def fit(_, user):
        model, losses = fit_user(run, backbone, user, variant, budget=budget)
        try:
            yield model.save_pretrained, losses
        finally:
            detach(backbone, model)

    stage, desc = f"user/{variant}", f"user {what} ({variant})"
    saved = train_each(run, store, todo, seen, fit, stage, base_fp, budget, desc)
    log.info(f"[bold]stage 3[/] {VARIANTS[variant]} ({budget}): {stage_line(saved, counts)}")
    return {"trained": saved, **counts}
