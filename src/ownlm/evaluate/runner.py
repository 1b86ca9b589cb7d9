"""Side-by-side evaluation of the methods on the same test users and queries. It loads
what training stored and scores it; it never trains.

| method | model                      | prompt                          |
|--------|----------------------------|---------------------------------|
| base   | population-merged base     | task input                      |
| rag    | population-merged base     | retrieved history + input       |
| pag    | population-merged base     | profile + retrieved + input     |
| peft   | base + user LoRA (bare)    | task input                      |
| oppu   | base + user LoRA           | profile + retrieved + input     |
| oppu-control | control base + user LoRA (docs/proper.md) | as oppu            |
| proper-input / proper-user: see `ownlm.evaluate.proper`                   |

Every table also carries the trivial references (population majority / mean, each
user's own majority / mean), so a model that learned nothing of the user shows it.

A method with user LoRAs is scored only when every evaluated user with history has a
usable one (`ownlm.evaluate.coverage`); otherwise its row says "not run" with the users,
why, and the command that trains them, and the other methods are scored as usual.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ownlm.backbone.decode import decode_rule
from ownlm.errors import ConfigError, StoreError
from ownlm.evaluate.coverage import (
    AdapterUnusable,
    control_not_run,
    evaluated_users,
    loading,
    not_run,
    unusable_users,
)
from ownlm.evaluate.intervals import add_intervals, paired_comparisons, print_comparisons
from ownlm.evaluate.report import (
    MethodResult,
    method_notes,
    not_run_message,
    plot_methods,
    print_cuts,
    print_gaps,
    print_stage_warnings,
    print_table,
    stage_warnings,
    write_json,
    write_lamp_predictions,
)
from ownlm.evaluate.scoring import (
    PRIMARY,
    predict_by_user,
    references,
    test_queries,
    tfidf_references,
)
from ownlm.log import console, get_logger
from ownlm.oppu.model import user_model
from ownlm.paths import CONTROL_BASE
from ownlm.retrieval.prompts import user_context
from ownlm.run.control import control_problem
from ownlm.variants import CONTROL, of_method

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)


@dataclass(frozen=True)
class Method:
    name: str
    adapters: str | None  # store variant holding the user LoRAs, None = no adapter
    retrieval: bool
    profile: bool
    label: str


# the rows of the methods table that one model answers for a user: the base with or
# without retrieval and profile, and each OPPU variant (PROPER's rows: evaluate.proper)
METHODS = {
    "base": Method("base", None, False, False, "non-personalized"),
    "rag": Method("rag", None, True, False, "RAG: retrieval"),
    "pag": Method("pag", None, True, True, "PAG: retrieval + profile"),
} | {n: Method(n, n, v.retrieval, v.retrieval, v.table) for n, v in of_method("oppu").items()}
PROPER_METHODS = {n: v.router for n, v in of_method("proper").items()}
ROWS = (*METHODS, *PROPER_METHODS)  # every row `methods:` may name


def run_method(run: Run, backbone, method: Method, rows, contexts) -> MethodResult:
    """One method of the table above. With user LoRAs: scored only if every evaluated
    user with history has a usable one (users without history get the base), else a
    not-run result naming who lacks one and why."""
    k = run.cfg.retrieval_k if method.retrieval else 0
    use_profile = method.profile and run.cfg.profile
    if method.adapters is None:
        answer_with = lambda user: nullcontext(backbone.model)  # noqa: E731
        return predict_by_user(
            run, backbone, rows, contexts, method.name, answer_with, k, use_profile
        )
    store, fp = run.store(method.adapters), backbone.fingerprint()
    users = evaluated_users(rows)
    problems = unusable_users(store, users, fp)
    if problems:
        return not_run(run, method.name, problems, users)

    def answer_with(user):
        if not user.history:  # nothing to train on: the base answers, by design
            return nullcontext(backbone.model)
        return loading(user.user_id, user_model(backbone, store, user, fp))

    try:
        return predict_by_user(
            run, backbone, rows, contexts, method.name, answer_with, k, use_profile
        )
    except AdapterUnusable as e:  # passed the checks, failed to load (e.g. its PEFT config)
        return not_run(run, method.name, {e.user_id: e.reason}, users)


def run_control(run: Run, rows, contexts) -> MethodResult:
    """OPPU on the control base (stage 1 + stage 2's pass, no groups): its users'
    LoRAs answer with the base they were trained on, checked against its fingerprint.
    Not run, with the command that trains it, while that base is missing or stale."""
    problem = control_problem(run)
    if problem is not None:
        return control_not_run(run, CONTROL, problem)
    try:
        backbone = run.base(CONTROL_BASE)  # its files checked against their sha256
    except StoreError as e:
        return control_not_run(run, CONTROL, f"corrupt: {e}")
    return run_method(run, backbone, METHODS[CONTROL], rows, contexts)


def evaluate_run(
    run: Run, methods: list[str] | None = None, out_dir: Path | None = None
) -> list[MethodResult]:
    """References and `methods` (default: the run's) on the run's test queries, printed and
    written to `out_dir` (default <run>/eval). A method that could not be run as asked
    comes back with `not_run` set and no metrics: callers must not read it as a score
    (`ownlm eval` exits with code 3 when one is there)."""
    methods = methods or run.cfg.methods
    unknown = [m for m in methods if m not in ROWS]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; choose from {sorted(ROWS)}")
    decode_rule(run.cfg.decode, run.task)  # decode=median on a non-ordinal task: refused now
    rows = test_queries(run)
    backbone = run.base()
    contexts = {u.user_id: user_context(run.task, u) for u, _ in rows}
    results = references(run, rows) + tfidf_references(run, rows)
    for name in methods:
        if name == CONTROL:
            results.append(run_control(run, rows, contexts))
        elif name in METHODS:
            results.append(run_method(run, backbone, METHODS[name], rows, contexts))
    routers = tuple(PROPER_METHODS[m] for m in methods if m in PROPER_METHODS)
    if routers:
        from ownlm.evaluate.proper import evaluate_proper

        results += evaluate_proper(run, rows, contexts, routers=routers, backbone=backbone)
    report(run, results, out_dir or run.paths.eval, getattr(backbone, "max_len", None))
    return results


def report(run: Run, results, out_dir: Path, context: int | None = None) -> None:
    """Print the table (95% intervals over users), how many prompts were cut to fit the
    `context` (a causal backbone's), the paired comparisons and one line per method not
    run; write results.json, the official prediction files of the methods
    scored, and the chart."""
    out_dir.mkdir(parents=True, exist_ok=True)
    primary = PRIMARY[run.task.kind]
    n_boot, seed = run.cfg.n_boot, run.cfg.boot_seed
    add_intervals(results, run.task, n_boot, seed)
    comparisons = paired_comparisons(results, run.task, primary, n_boot, seed)
    decode = decode_rule(run.cfg.decode, run.task) if run.task.labels else None
    users = len({p[1] for p in results[0].predictions})
    print_table(
        f"{run.task.name} · {run.cfg.backbone} · {users} test users"
        + (f" · labels by {decode}" if decode else ""),
        results,
        primary,
        console=console,
        notes=method_notes(run.recorded(), [r.method for r in results if not r.is_reference]),
    )
    if context:
        print_cuts(results, context, console=console)
    print_gaps(results, primary, console=console)
    print_comparisons(comparisons, n_boot, seed, console=console)
    print_stage_warnings(stage_warnings(run.recorded()), console=console)
    boot = {"unit": "user", "n_boot": n_boot, "seed": seed, "level": 0.95, "metric": primary}
    with run.edit_record(write=False):  # a forget runs wholly before these writes, or after
        run.check_forgotten_since(f"{out_dir} (its predictions name every test user)")
        _write_outputs(run, results, out_dir, primary, comparisons, boot, decode)
    log.info(f"results: {out_dir / 'results.json'}, chart: {out_dir / 'methods.png'}")


def _write_outputs(run: Run, results, out_dir: Path, primary, comparisons, boot, decode) -> None:
    write_json(out_dir / "results.json", run.task.name, results, comparisons, boot, decode)
    for r in results:
        path = out_dir / f"predictions_{r.method}.json"
        if r.not_run:
            path.unlink(missing_ok=True)  # an earlier evaluation's file must not pass for this one
            message = not_run_message(r)  # one unwrapped line: its command is copied as is
            console.print(message, style="bold red", markup=False, highlight=False, soft_wrap=True)
        elif not r.is_reference:
            write_lamp_predictions(path, run.task.name, r)
    plot_methods(out_dir / "methods.png", run.task.name, results, primary)
