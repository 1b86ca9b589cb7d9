"""Side-by-side evaluation of the methods on the same test users and queries. It loads
what training stored and scores it; it never trains.

| method | model                      | prompt                          |
|--------|----------------------------|---------------------------------|
| base   | population-merged base     | task input                      |
| rag    | population-merged base     | retrieved history + input       |
| pag    | population-merged base     | profile + retrieved + input     |
| peft   | base + user LoRA (bare)    | task input                      |
| oppu   | base + user LoRA           | profile + retrieved + input     |
| proper-input / proper-user: see `ownlm.evaluate.proper`                   |

Every table also carries the trivial references (population majority / mean, each
user's own majority / mean), so a model that learned nothing of the user shows it.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from ownlm.errors import ConfigError
from ownlm.evaluate.report import (
    MethodResult,
    plot_methods,
    print_table,
    write_json,
    write_lamp_predictions,
)
from ownlm.evaluate.scoring import PRIMARY, predict_by_user, references, test_queries
from ownlm.log import console, get_logger
from ownlm.methods.oppu import user_model
from ownlm.methods.proper.users import METHODS as PROPER_METHODS
from ownlm.retrieval.prompts import user_context

log = get_logger(__name__)


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


def run_method(run, backbone, method: Method, rows, contexts) -> MethodResult:
    """One method of the table above: each user's stored LoRA (or the base, where the
    method has none, or the user has none: no history, or not trained)."""
    store = run.store(method.adapters) if method.adapters else None
    fp = backbone.fingerprint() if store else None

    def answer_with(user):
        if store is None:
            return nullcontext(backbone.model)
        return user_model(backbone, store, user, fp)

    k = run.cfg.retrieval_k if method.retrieval else 0
    use_profile = method.profile and run.cfg.profile
    return predict_by_user(run, backbone, rows, contexts, method.name, answer_with, k, use_profile)


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
        console=console,
    )
    write_json(out_dir / "results.json", run.task.name, results)
    for r in results:
        if not r.is_reference:
            write_lamp_predictions(out_dir / f"predictions_{r.method}.json", run.task.name, r)
    plot_methods(out_dir / "methods.png", run.task.name, results, primary)
    log.info(f"results: {out_dir / 'results.json'}, chart: {out_dir / 'methods.png'}")
