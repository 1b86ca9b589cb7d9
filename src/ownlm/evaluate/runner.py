"""Side-by-side evaluation of the methods on the same test users and queries.

| method | model                      | prompt                          |
|--------|----------------------------|---------------------------------|
| base   | population-merged base     | task input                      |
| rag    | population-merged base     | retrieved history + input       |
| pag    | population-merged base     | profile + retrieved + input     |
| peft   | base + user LoRA (bare)    | task input                      |
| oppu   | base + user LoRA           | profile + retrieved + input     |

Every table also carries the trivial references (population majority / mean, each
user's own majority / mean), so a model that learned nothing of the user shows it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from peft import PeftModel
from rich.console import Console
from tqdm.auto import tqdm

from ownlm.backbone.base import detach
from ownlm.errors import ConfigError
from ownlm.evaluate.metrics import per_user_metrics
from ownlm.evaluate.references import reference_predictions
from ownlm.evaluate.report import (
    MethodResult,
    plot_methods,
    print_table,
    write_json,
    write_lamp_predictions,
)
from ownlm.personal import query_prompt, user_context

console = Console(stderr=True)


@dataclass(frozen=True)
class Method:
    name: str
    adapters: str | None  # store variant holding the user LoRAs, None = no adapter
    retrieval: bool
    profile: bool
    label: str


METHODS = {
    "base": Method("base", None, False, False, "non-personalized"),
    "rag": Method("rag", None, True, False, "RAG: retrieval"),
    "pag": Method("pag", None, True, True, "PAG: retrieval + profile"),
    "peft": Method("peft", "peft", False, False, "PEFT only"),
    "oppu": Method("oppu", "oppu", True, True, "OPPU: PEFT + retrieval + profile"),
}

PRIMARY = {"classification": "accuracy", "rating": "mae", "generation": "rouge-1"}


def scale(task) -> tuple[float | None, float | None]:
    if task.kind != "rating":
        return None, None
    values = [float(x) for x in task.labels]
    return min(values), max(values)


def test_queries(run):
    """(user, query) pairs evaluated, the same for every method."""
    rows = []
    for user in run.split.test:
        queries = [q for q in user.queries if q.gold is not None]
        rows += [(user, q) for q in queries[: run.cfg.max_queries or None]]
    return rows


def _score(run, name, rows, preds, seconds, reference=False) -> MethodResult:
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


def references(run, rows) -> list[MethodResult]:
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
        _score(run, "population-majority", rows, refs["population"], 0.0, reference=True),
        _score(run, "user-majority", rows, refs["user"], 0.0, reference=True),
    ]


def run_method(run, backbone, method: Method, rows, contexts) -> MethodResult:
    cfg, task = run.cfg, run.task
    k = cfg.retrieval_k if method.retrieval else 0
    use_profile = method.profile and cfg.profile
    start = time.perf_counter()
    preds: list[str] = []
    by_user: dict[str, list[int]] = {}
    for i, (u, _) in enumerate(rows):
        by_user.setdefault(u.user_id, []).append(i)
    out = [""] * len(rows)
    store = run.store(method.adapters) if method.adapters else None
    fp = backbone.fingerprint() if store else None
    for uid, idx in tqdm(by_user.items(), desc=f"eval {method.name}", unit="user", leave=False):
        user = rows[idx[0]][0]
        prompts = [query_prompt(task, contexts[uid], rows[i][1], k, use_profile) for i in idx]
        if store is not None and store.exists(user.name):
            path = store.verify(user.name, fp)
            model = PeftModel.from_pretrained(backbone.model, path)
            try:
                preds = backbone.predict(model, task, prompts)
            finally:
                detach(backbone, model)
        else:  # no adapter (no history, or not trained): the population model answers
            preds = backbone.predict(backbone.model, task, prompts)
        for i, p in zip(idx, preds, strict=True):
            out[i] = p
    return _score(run, method.name, rows, out, time.perf_counter() - start)


PROPER_METHODS = {"proper-input": "input", "proper-user": "user"}


def evaluate_run(
    run, methods: list[str] | None = None, out_dir: Path | None = None
) -> list[MethodResult]:
    methods = methods or run.cfg.methods
    unknown = [m for m in methods if m not in METHODS and m not in PROPER_METHODS]
    if unknown:
        raise ConfigError(
            f"unknown method(s) {unknown}; choose from {sorted(METHODS) + sorted(PROPER_METHODS)}"
        )
    rows = test_queries(run)
    backbone = run.base()
    contexts = {u.user_id: user_context(run.task, u) for u, _ in rows}
    results = references(run, rows)
    for name in methods:
        if name in METHODS:
            results.append(run_method(run, backbone, METHODS[name], rows, contexts))
    routers = tuple(PROPER_METHODS[m] for m in methods if m in PROPER_METHODS)
    if routers:
        from ownlm.evaluate.proper import evaluate_proper

        results += evaluate_proper(run, rows, contexts, routers=routers, backbone=backbone)
    report(run, results, out_dir or run.dir / "eval")
    return results


def report(run, results, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    primary = PRIMARY[run.task.kind]
    print_table(
        f"{run.task.name} · {run.cfg.backbone} · {len({p[1] for p in results[0].predictions})} test users",
        results,
        primary,
        console=Console(width=max(Console().width, 120)),  # method names in full, even in logs
    )
    write_json(out_dir / "results.json", run.task.name, results)
    for r in results:
        if not r.is_reference:
            write_lamp_predictions(out_dir / f"predictions_{r.method}.json", run.task.name, r)
    plot_methods(out_dir / "methods.png", run.task.name, results, primary)
    console.print(f"results: {out_dir / 'results.json'}, chart: {out_dir / 'methods.png'}")
