"""Stage 3 (PROPER's user level): per test user, a residual LoRA and a router trained on
the frozen group model of stage 2 (`ownlm.proper.users` says what they are and
how they are stored); resumable like OPPU's stage, with the run's budget (`train.budget`:
`proper.user_lr` and `proper.user_epochs`, or those `ownlm tune` chose)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from ownlm.log import get_logger
from ownlm.proper.experts import group_model, groups_fingerprint, proper_settings
from ownlm.proper.routing import history_vectors
from ownlm.proper.users import (
    ROUTERS,
    check_router,
    finish_user,
    new_user_params,
    proper_pairs,
    write_user,
)
from ownlm.train.budget import user_budget
from ownlm.train.loop import fit_mixture
from ownlm.train.per_user import (
    plan_users,
    stage_line,
    train_each,
    user_seed,
)

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)


def fit_proper_user(
    run: Run, gm, user, vector, router: str, budget=None, early_stopping=None
) -> list[float]:
    """Train one user's residual LoRA and router on the frozen group model. Leaves the
    model set up for this user (call `gm.reset()` before the next one). `budget`: the
    residual's lr and the epochs (default: the run's, `user_budget`); `early_stopping`
    validates it (`ownlm tune`)."""
    s, seed = proper_settings(run), user_seed(run.cfg.seed, user.user_id)
    if budget is None:
        fp = groups_fingerprint(run, gm.backbone.fingerprint())
        budget = user_budget(run, f"proper-{router}", fp)
    torch.manual_seed(seed)
    pairs = proper_pairs(run, user)
    routing_params, shared, emb_fn = new_user_params(gm, run, pairs, vector, router, user.history)
    losses = fit_mixture(
        gm.backbone,
        gm.state,
        pairs,
        [{"params": routing_params, "lr": s.router_lr}, {"params": shared, "lr": budget.lr}],
        budget.epochs,
        s.batch_size,
        seed,
        emb_fn,
        early_stopping=early_stopping,
    )
    finish_user(gm, router)
    return losses


def batched_users(run: Run, gm) -> int:
    """How many users train together in one batch (`user.users_per_batch`, as OPPU's
    stage); 1 (one at a time, said in the log) where the batched trainer cannot."""
    k = run.cfg.user.users_per_batch
    if k <= 1:
        return 1
    from ownlm.proper.batched import why_one_at_a_time

    if reason := why_one_at_a_time(gm):
        log.info(reason)
        return 1
    return k


def train_proper_users(run: Run, router: str = "input", users=None, backbone=None) -> dict:
    """Stage 3 for `users` (default: the test users); resumable like OPPU's stage."""
    check_router(router)
    s = proper_settings(run)
    users = run.split.test if users is None else users
    backbone = backbone or run.base()
    fp = groups_fingerprint(run, backbone.fingerprint())  # base + stage-2 weights
    store = run.store(f"proper-{router}")
    budget = user_budget(run, f"proper-{router}", fp)
    todo, counts = plan_users(store, users, fp, budget)
    seen = run.current_histories(todo)  # an update or forget landing later: not saved
    with group_model(run, backbone) as gm:
        if (k := batched_users(run, gm)) > 1:
            from ownlm.proper.batched import train_proper_batched

            saved = train_proper_batched(run, gm, todo, seen, router, fp, budget, k)
            log.info(
                f"[bold]stage 3[/] PROPER ({ROUTERS[router]}, {k} at once, {budget}): "
                f"{stage_line(saved, counts)}"
            )
            return {"trained": saved, **counts}
        # a 'user' assignment routes by the history's likelihood: no history vectors
        vectors = history_vectors(run, todo, backbone) if todo and not gm.by_user else []
        vectors = vectors if len(vectors) else [None] * len(todo)

        @contextmanager
        def fit(i, user):
            gm.reset()
            losses = fit_proper_user(run, gm, user, vectors[i], router, budget)
            yield (lambda d: write_user(d, gm, router, s.user_alpha)), losses

        stage, desc = f"user/proper-{router}", f"PROPER users ({router})"
        saved = train_each(run, store, todo, seen, fit, stage, fp, budget, desc)
    log.info(f"[bold]stage 3[/] PROPER ({ROUTERS[router]}, {budget}): {stage_line(saved, counts)}")
    return {"trained": saved, **counts}
