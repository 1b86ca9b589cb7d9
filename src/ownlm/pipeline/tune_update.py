"""`ownlm update`'s budget chosen on the dev users by simulating an update (#24, item 4).

An update trains a user's stored adapter on their new items only. How many passes it
should make is a question of the data: too few and the adapter keeps the old habit
(issue #24 measured the former default, one epoch, moving nothing), too many and it
forgets the rest of the history. So after the OPPU user stage's budget is tuned, each
dev user with at least `MIN_ITEMS` history items is cut in history order:

    older (first half) | new (the next part) | validation (the last `tune.val_frac`)

An adapter is trained on the older part with the tuned user budget, as the user stage
would have trained it; then, from that same state, an update on the new items is
simulated at each of `FACTORS` times the user stage's epochs (the user stage's lr),
and validated on the items after them (prompts with retrieval and profile over older
+ new, as `ownlm update` leaves them). The factor with the best mean validation metric
over the dev users wins (ties: fewer epochs). The choice is recorded in run.json
("tuned" -> "update", with the base it was chosen on) and `oppu.update.update_budget`
reads it when `update.epochs` is empty.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from ownlm.adapters.lora import detach
from ownlm.log import get_logger, progress
from ownlm.oppu.sequential import fit_user
from ownlm.oppu.update import continue_user
from ownlm.retrieval.prompts import user_context
from ownlm.scores.metrics import LOWER_IS_BETTER, PRIMARY
from ownlm.train.budget import Budget
from ownlm.train.validation import pair_validator

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)
FACTORS = (0.25, 0.5, 1.0, 2.0)  # update epochs tried, times the user stage's epochs
MIN_ITEMS = 6  # a dev user needs older, new and validation items
UPDATE = "update"  # its key under run.json's "tuned"


def dev_cuts(run: Run) -> list[tuple]:
    """(older user, older+new user, number of new items, validation items) per usable dev
    user, in history order."""
    out = []
    for u in run.split.dev:
        n = len(u.history)
        if n < MIN_ITEMS:
            continue
        n_val = max(1, round(n * run.cfg.tune.val_frac))
        half = (n - n_val) // 2
        older = dataclasses.replace(u, history=u.history[:half], queries=[])
        grown = dataclasses.replace(u, history=u.history[: n - n_val], queries=[])
        out.append((older, grown, n - n_val - half, u.history[n - n_val :]))
    return out[: run.cfg.tune.max_users or None]


def tune_update(run: Run, budget: Budget, validation_set, extra: dict) -> dict | None:
    """Choose, record and return the update's epochs for the OPPU user stage's `budget`
    (`validation_set(user, items)`: the `ValidationSet` of a dev user's items, as the
    tune builds it; `extra`: more to record, the tune's settings); None (nothing
    recorded) with fewer than `tune.min_dev_users` usable dev users."""
    cuts = dev_cuts(run)
    if len(cuts) < run.cfg.tune.min_dev_users:
        log.info(
            f"update budget not tuned: {len(cuts)} dev user(s) with >= {MIN_ITEMS} history "
            f"items, fewer than tune.min_dev_users={run.cfg.tune.min_dev_users}"
        )
        return None
    start, metric = time.perf_counter(), PRIMARY[run.task.kind]
    backbone = run.base()
    scores: dict[float, list[float]] = {f: [] for f in FACTORS}
    for older, grown, n_new, val in progress(cuts, desc="tune update", unit="user"):
        vset = validation_set(grown, val)
        model, _ = fit_user(run, backbone, older, "oppu", budget=budget)
        try:
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            ctx = user_context(run.task, grown)
            for f in FACTORS:
                model.load_state_dict(state)
                continue_user(run, backbone, model, grown, n_new, budget.lr, f * budget.epochs, ctx)
                model.eval()
                validate = pair_validator(backbone, model, run.task, vset)
                scores[f].append(validate()[metric])
        finally:
            detach(backbone, model)
    seconds = time.perf_counter() - start
    return _record(run, budget, scores, metric, len(cuts), seconds, backbone, extra)


def _record(run: Run, budget: Budget, scores, metric, users, seconds, backbone, extra) -> dict:
    """The choice in run.json, and one line saying it."""
    means = {f: sum(v) / len(v) for f, v in scores.items()}
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    best = max(FACTORS, key=lambda f: (sign * means[f], -f))
    info = {
        "epochs": best * budget.epochs,
        "factor": best,
        "lr": budget.lr,
        "metric": metric,
        "table": {f"{f:g}": round(means[f], 4) for f in FACTORS},
        "dev_users": users,
        "fingerprint": backbone.fingerprint(),
        "user": [budget.lr, budget.epochs],  # the user budget it was chosen for
        "seconds": round(seconds, 1),
        **extra,
    }
    run.record_tuned(UPDATE, info)
    table = ", ".join(f"{f:g}x {means[f]:.4f}" for f in FACTORS)
    log.info(
        f"update budget tuned on {users} dev users (mean validation {metric} after a "
        f"simulated update, by epochs x the user stage's {budget.epochs:g}: {table}): "
        f"{info['epochs']:g} epochs at lr {budget.lr:.3g}"
    )
    return info
