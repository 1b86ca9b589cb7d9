"""What every evaluation shares: the queries scored, how a method's predictions become a
`MethodResult`, the trivial references, and the per-user prediction loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ownlm.backbone.context import counting_cuts
from ownlm.backbone.decode import decode_rule
from ownlm.evaluate.report import MethodResult
from ownlm.log import progress
from ownlm.retrieval.prompts import query_prompt
from ownlm.scores.metrics import PRIMARY, per_user_metrics, scale
from ownlm.scores.references import reference_predictions
from ownlm.scores.tfidf import TfidfUser, tfidf_predictions

if TYPE_CHECKING:
    from ownlm.run import Run

__all__ = ["PRIMARY", "scale"]  # re-exported: evaluation and studies read them here


def test_queries(run: Run):
    """(user, query) pairs evaluated, the same for every method."""
    rows = []
    for user in run.split.test:
        queries = [q for q in user.queries if q.gold is not None]
        rows += [(user, q) for q in queries[: run.cfg.max_queries or None]]
    return rows


def score(run: Run, name, rows, preds, seconds, reference=False) -> MethodResult:
    """Metrics (micro and per-user macro) of `preds`, one per row of `rows`."""
    lo, hi = scale(run.task)
    metrics = per_user_metrics(
        run.task.kind,
        [(u.user_id, p, q.gold) for (u, q), p in zip(rows, preds, strict=True)],
        run.task.labels,
        lo,
        hi,
    )
    return MethodResult(
        name,
        metrics,
        [(q.id, u.user_id, p, q.gold) for (u, q), p in zip(rows, preds, strict=True)],
        seconds,
        reference,
    )


def references(run: Run, rows) -> list[MethodResult]:
    """The population's majority / mean and each user's own, on `rows`."""
    task = run.task
    train_outputs = [
        it.fields.get(task.output_field, "") for u in run.split.train for it in u.history
    ]
    per_user, order = {}, []
    for u, _ in rows:
        if u.user_id not in per_user:
            per_user[u.user_id] = [it.fields.get(task.output_field, "") for it in u.history]
            order.append(u.user_id)
    counts = [sum(1 for u, _ in rows if u.user_id == uid) for uid in order]
    refs = reference_predictions(
        task.kind,
        train_outputs,
        [(per_user[uid], n) for uid, n in zip(order, counts, strict=True)],
        task.labels,
    )
    # reference_predictions repeats per user in `order`; rows are grouped by user already
    return [
        score(run, "population-majority", rows, refs["population"], 0.0, reference=True),
        score(run, "user-majority", rows, refs["user"], 0.0, reference=True),
    ]


def _pairs(task, items) -> list[tuple[str, str]]:
    """(input text, label) of labelled history items, the task's own field names."""
    labelled = [(task.item_text(it), it.fields.get(task.output_field, "").strip()) for it in items]
    return [(text, label) for text, label in labelled if label]


def tfidf_references(run: Run, rows) -> list[MethodResult]:
    """The TF-IDF linear models and their per-user offset (`ownlm.scores.tfidf`) on
    `rows`, for label tasks whose history items carry the labels; [] for the others."""
    task = run.task
    if task.kind == "generation" or not task.labelled_history:
        return []
    groups = by_user(rows)
    users = [
        TfidfUser(_pairs(task, rows[idx[0]][0].history), [task.query_text(rows[i][1]) for i in idx])
        for idx in groups.values()
    ]
    start = time.perf_counter()
    found = tfidf_predictions(
        task.kind,
        task.labels,
        _pairs(task, [it for u in run.split.train for it in u.history]),
        users,
    )
    seconds = time.perf_counter() - start
    order = [i for idx in groups.values() for i in idx]  # predictions come user by user
    out = []
    for name, preds in found.items():
        by_row = dict(zip(order, preds, strict=True))
        out.append(score(run, name, rows, [by_row[i] for i in range(len(rows))], seconds, True))
    return out


def by_user(rows) -> dict[str, list[int]]:
    """{user id: indices of that user's rows}, users in first-seen order."""
    out: dict[str, list[int]] = {}
    for i, (u, _) in enumerate(rows):
        out.setdefault(u.user_id, []).append(i)
    return out


def predict_by_user(
    run: Run,
    backbone,
    rows,
    contexts,
    name: str,
    answer_with: Callable,
    k: int | None = None,
    use_profile: bool | None = None,
) -> MethodResult:
    """Score method `name`: for each user, `answer_with(user)` is a context manager that
    yields the model answering for them; prompts carry `k` retrieved items and the
    profile (default: the run's, as OPPU's prompts). Labels are picked by the run's
    `decode` (`backbone.decode`: the median for ordinal tasks by default). The result
    counts the prompts cut to fit the backbone's context (`prompts_cut`)."""
    cfg, task = run.cfg, run.task
    decode = decode_rule(cfg.decode, task)  # argmax, or median for ordinal tasks
    k = cfg.retrieval_k if k is None else k
    use_profile = cfg.profile if use_profile is None else use_profile
    start = time.perf_counter()
    out = [""] * len(rows)
    with counting_cuts() as cuts:
        for uid, idx in progress(by_user(rows).items(), desc=f"eval {name}", unit="user"):
            user = rows[idx[0]][0]
            prompts = [query_prompt(task, contexts[uid], rows[i][1], k, use_profile) for i in idx]
            with answer_with(user) as model:
                preds = backbone.predict(model, task, prompts, decode=decode)
            for i, p in zip(idx, preds, strict=True):
                out[i] = p
    result = score(run, name, rows, out, time.perf_counter() - start)
    result.prompts_cut = list(cuts.counts) if backbone.kind == "causal" else None
    return result
