"""PROPER in the evaluation: its two methods next to OPPU, from the stored adapters.

| method       | model                                                 | prompt                      |
|--------------|-------------------------------------------------------|-----------------------------|
| proper-input | base + group experts + user LoRA, input-dependent router | profile + retrieved + input |
| proper-user  | base + group experts + user LoRA, user-only router       | profile + retrieved + input |

Prompts are OPPU's, so the comparison isolates the parametric part. Users without a
stored adapter follow `ownlm.methods.proper.prepare_user` (new user: stage-2 routing from
the history embedding; no history: population model).
"""

from __future__ import annotations

from contextlib import nullcontext

from ownlm.evaluate.report import MethodResult
from ownlm.evaluate.scoring import predict_by_user, test_queries
from ownlm.log import get_logger
from ownlm.methods.proper import group_model, groups_fingerprint, history_vectors, prepare_user
from ownlm.retrieval.prompts import user_context

log = get_logger(__name__)


def user_vectors(run, rows, backbone) -> dict[str, object]:
    """{user id: history vector} of the rows' users that have a history."""
    users = {u.user_id: u for u, _ in rows if u.history}
    vecs = history_vectors(run, list(users.values()), backbone) if users else []
    return dict(zip(users, vecs, strict=True))


def evaluate_proper(
    run, rows=None, contexts=None, routers=("input", "user"), backbone=None
) -> list[MethodResult]:
    """One MethodResult per PROPER router from the stored adapters (train them first with
    `ownlm train --variants proper-input,proper-user`), on the same rows as
    `evaluate.runner.evaluate_run`."""
    rows = rows if rows is not None else test_queries(run)
    contexts = contexts or {u.user_id: user_context(run.task, u) for u, _ in rows}
    backbone = backbone or run.base()
    fp = groups_fingerprint(run, backbone.fingerprint())
    vectors = user_vectors(run, rows, backbone)
    results, how = [], {}
    with group_model(run, backbone) as gm:
        for router in routers:
            store = run.store(f"proper-{router}")

            def answer_with(user, store=store, router=router):
                mode = prepare_user(gm, store, fp, user, router, vectors.get(user.user_id))
                how[mode] = how.get(mode, 0) + 1
                return nullcontext(backbone.model)

            name = f"proper-{router}"
            results.append(predict_by_user(run, backbone, rows, contexts, name, answer_with))
    log.info(f"PROPER users served by: {how}")
    return results
