"""PROPER in the evaluation: its two methods next to OPPU, from the stored adapters.

| method       | model                                                 | prompt                      |
|--------------|-------------------------------------------------------|-----------------------------|
| proper-input | base + group experts + user LoRA, input-dependent router | profile + retrieved + input |
| proper-user  | base + group experts + user LoRA, user-only router       | profile + retrieved + input |

Prompts are OPPU's, so the comparison isolates the parametric part. As for OPPU
(`ownlm.evaluate.coverage`), a router is scored only when the stage-2 groups load and
every evaluated user with history has a usable adapter; users with no history get the
population model (`ownlm.proper.prepare_user`). Serving's untrained "new user"
routing is not used here: it would score stage 2 under the name of the trained method.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING

from ownlm.evaluate.coverage import (
    LOAD_ERRORS,
    AdapterUnusable,
    evaluated_users,
    groups_not_run,
    groups_problem,
    not_run,
    unusable_users,
)
from ownlm.evaluate.report import MethodResult
from ownlm.evaluate.scoring import predict_by_user, test_queries
from ownlm.log import get_logger
from ownlm.proper import group_model, groups_fingerprint, history_vectors, prepare_user
from ownlm.retrieval.prompts import user_context

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)


def user_vectors(run: Run, rows, backbone) -> dict[str, object]:
    """{user id: history vector} of the rows' users that have a history."""
    users = {u.user_id: u for u, _ in rows if u.history}
    vecs = history_vectors(run, list(users.values()), backbone) if users else []
    return dict(zip(users, vecs, strict=True))


def evaluate_proper(
    run: Run, rows=None, contexts=None, routers=("input", "user"), backbone=None
) -> list[MethodResult]:
    """One MethodResult per PROPER router from the stored adapters (train them first with
    `ownlm train --stages groups,users --variants proper-input,proper-user`), on the same
    rows as `evaluate.runner.evaluate_run`; not-run results where adapters fall short."""
    rows = rows if rows is not None else test_queries(run)
    contexts = contexts or {u.user_id: user_context(run.task, u) for u, _ in rows}
    backbone = backbone or run.base()
    names = [f"proper-{r}" for r in routers]
    problem = groups_problem(run, backbone.fingerprint())
    if problem:
        return [groups_not_run(run, name, problem) for name in names]
    fp = groups_fingerprint(run, backbone.fingerprint())
    users = evaluated_users(rows)
    problems = {name: unusable_users(run.store(name), users, fp) for name in names}
    results = {n: not_run(run, n, problems[n], users) for n in names if problems[n]}
    ready = [r for r, n in zip(routers, names, strict=True) if n not in results]
    if ready:
        with group_model(run, backbone) as gm:
            for router in ready:
                results[f"proper-{router}"] = score_router(
                    run, backbone, gm, fp, router, rows, contexts
                )
    return [results[n] for n in names]


def score_router(run: Run, backbone, gm, fp, router: str, rows, contexts) -> MethodResult:
    """Score one router whose users all passed the checks; a load that still fails (or a
    user with history left without an adapter) makes it not run, never a fallback."""
    name, how = f"proper-{router}", {}
    store = run.store(name)

    def answer_with(user):
        try:
            # no history: the population model, by design, whatever is stored
            mode = prepare_user(gm, store if user.history else None, fp, user, router, None)
        except LOAD_ERRORS as e:
            raise AdapterUnusable(user.user_id, f"corrupt: {e}") from e
        if user.history and mode != "adapter":
            raise AdapterUnusable(user.user_id, "missing")
        how[mode] = how.get(mode, 0) + 1
        return nullcontext(backbone.model)

    try:
        result = predict_by_user(run, backbone, rows, contexts, name, answer_with)
    except AdapterUnusable as e:
        return not_run(run, name, {e.user_id: e.reason}, evaluated_users(rows))
    log.info(f"{name}: users served by {how}")
    return result
