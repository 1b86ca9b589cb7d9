"""The history-format study (OPPU, Sec. 5: OPPU stays "robust across various user history
formats"): the same test users with their history written in each format of
`ownlm.data.formats` (the task's template, fields renamed and reordered, terse
key=value, and a field dropped where the task has one to drop).

Per format, what reads history is rebuilt: the retrieved items in RAG's, PAG's and
OPPU's prompts, and the user stage's training pairs, PEFT-only's and OPPU's LoRAs
trained per user in memory (nothing stored; the template's are the run's stored
adapters where current, `stored_models`: the same training). Queries keep the task's
own prompt in every format, so the study asks whether a user's module still helps when
their history is written differently from the questions they are asked. Stage 1 (the merged base) is
reused for every format: it was trained on the template, as a deployed base is trained
once, and the per-format part is the user's own. The profile is statistical
(`retrieval.profiles`: label shares, scores, habits of the outputs) and quotes no item,
so it reads the same in every format. The trivial references and the non-personalized
base read no history; they are scored once.

Each cell carries a 95% bootstrap interval over users; a method's spread is its best
format's score minus its worst's, with the paired bootstrap interval of that difference
on the same users (`scores.bootstrap.paired_bootstrap`): a spread whose interval holds 0
is within noise. Writes `<run>/eval/formats.json` and `formats.png`; the run's stores
are read, never written.
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from ownlm.adapters.lora import detach
from ownlm.data.formats import history_formats
from ownlm.evaluate.coverage import evaluated_users, loading, unusable_users
from ownlm.evaluate.intervals import interval_cells
from ownlm.evaluate.report import MethodResult
from ownlm.evaluate.scoring import PRIMARY, predict_by_user, references, scale, test_queries
from ownlm.log import console, get_logger
from ownlm.oppu.model import user_model
from ownlm.oppu.sequential import fit_user
from ownlm.retrieval.prompts import user_context
from ownlm.scores.bootstrap import paired_bootstrap
from ownlm.scores.metrics import LOWER_IS_BETTER
from ownlm.train.budget import budget_reason, user_budget

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)

METHODS = ("rag", "pag", "peft", "oppu")  # the rows that read history, scored per format
FEW_USERS = 5  # below this, the intervals over users are said to be rough


def with_task(run: Run, task):
    """A view of `run` whose task is `task` (a history format): the stages and the
    scoring read `run.task`, the view shares everything else (stores, split, config)."""
    view = copy.copy(run)
    view.task = task  # shadows the cached property on this copy only
    return view


def _user_model(run: Run, backbone, variant: str):
    """`answer_with` for a user stage trained in memory on the view's history format."""

    @contextmanager
    def answer_with(user):
        if not user.history:  # nothing to train on: the base answers, as in the methods table
            yield backbone.model
            return
        model, _ = fit_user(run, backbone, user, variant)
        try:
            yield model
        finally:
            detach(backbone, model)

    return answer_with


def stored_models(run: Run, backbone, variant: str, users):
    """`answer_with` loading the run's stored adapters of `variant` when every user's is
    current (this base, their history, the budget the stage trains with): those are what
    training the template's pairs in memory gives (same stage, seed and budget), so the
    template column is the methods table's rows and is not trained again. None when one
    is not current."""
    store, fp = run.store(variant), backbone.fingerprint()
    budget = user_budget(run, variant, fp)
    current = not unusable_users(store, users, fp) and not any(
        budget_reason(store, u.name, budget) for u in users if u.history
    )
    if not current:
        return None

    def answer_with(user):
        if not user.history:
            return nullcontext(backbone.model)
        return loading(user.user_id, user_model(backbone, store, user, fp))

    return answer_with


def format_results(view, backbone, rows, stored: bool = False) -> list[MethodResult]:
    """RAG, PAG, PEFT only and OPPU with the history written in `view.task`'s format;
    `stored` (the template): the run's user adapters where current (`stored_models`)."""
    contexts = {u.user_id: user_context(view.task, u) for u, _ in rows}
    k, profile = view.cfg.retrieval_k, view.cfg.profile
    users = evaluated_users(rows)

    def users_of(variant: str):
        found = stored_models(view, backbone, variant, users) if stored else None
        log.info(f"{variant}: {'stored adapters' if found else 'trained in memory'}")
        return found or _user_model(view, backbone, variant)

    base = lambda user: nullcontext(backbone.model)  # noqa: E731
    return [
        predict_by_user(view, backbone, rows, contexts, "rag", base, k, False),
        predict_by_user(view, backbone, rows, contexts, "pag", base, k, profile),
        predict_by_user(view, backbone, rows, contexts, "peft", users_of("peft"), 0, False),
        predict_by_user(view, backbone, rows, contexts, "oppu", users_of("oppu")),
    ]


def _bootstrap_rows(result: MethodResult):
    return [(u, p, g) for _, u, p, g in result.predictions]


def spread(run: Run, by_format: dict[str, MethodResult], metric: str) -> dict:
    """Best format minus worst on `metric` for one method, with the paired interval of
    that difference (signed so that + = the best format's advantage)."""
    lower = metric in LOWER_IS_BETTER
    ranked = sorted(by_format, key=lambda f: by_format[f].metrics[metric], reverse=not lower)
    best, worst = ranked[0], ranked[-1]
    lo, hi = scale(run.task)
    p = paired_bootstrap(
        run.task.kind,
        _bootstrap_rows(by_format[best]),
        _bootstrap_rows(by_format[worst]),
        metric,
        (best, worst),
        run.task.labels,
        lo,
        hi,
    )
    sign = -1.0 if lower else 1.0
    low, high = sorted((sign * p.low, sign * p.high))
    return {
        "best": best,
        "worst": worst,
        "spread": round(sign * p.diff, 4) + 0.0,  # + 0.0: no "-0.000" when formats tie
        "interval": [round(low, 4) + 0.0, round(high, 4) + 0.0],
        "significant": p.significant,
    }


def format_study(
    run: Run,
    formats=None,
    out_dir: Path | None = None,
    max_users: int | None = None,
    reuse_stored: bool = True,
):
    """The history-format table: {"task", "metric", "formats", "users", "examples",
    "references": {name: cell}, "table": {method: {format: cell}}, "spread": {method:
    {...}}, ...}. `formats`: format names (default: every one the task has);
    `max_users`: the first N test users only; `reuse_stored`: the template's user
    adapters loaded from the run's stores when current (`stored_models`), not trained."""
    metric = PRIMARY[run.task.kind]
    out_dir = out_dir or run.paths.eval
    rows = test_queries(run)
    keep = list(dict.fromkeys(u.user_id for u, _ in rows))[:max_users]
    rows = [(u, q) for u, q in rows if u.user_id in keep]
    if len(keep) < FEW_USERS:
        log.warning(
            f"{len(keep)} test users: a bootstrap over so few users has few distinct "
            "resamples, so its intervals (and a spread's *) are rough; use more users"
        )
    backbone = run.base()
    tasks = history_formats(run.task, formats)
    base = lambda user: nullcontext(backbone.model)  # noqa: E731
    fixed = references(run, rows)
    bare = {u.user_id: user_context(run.task, u) for u, _ in rows}  # read by no prompt (k=0)
    fixed.append(predict_by_user(run, backbone, rows, bare, "base", base, 0, False))
    results: dict[str, dict[str, MethodResult]] = {m: {} for m in METHODS}
    for name, task in tasks.items():
        log.info(f"history format {name}: {_example(run, task)}")
        stored = reuse_stored and name == "template"
        for r in format_results(with_task(run, task), backbone, rows, stored):
            results[r.method][name] = r
        interval_cells([results[m][name] for m in METHODS], run.task, metric)  # sets intervals
    interval_cells(fixed, run.task, metric)
    out = _record(run, metric, tasks, keep, fixed, results)
    print_formats(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "formats.json").write_text(json.dumps(out, indent=2, ensure_ascii=False))
    plot_formats(out_dir / "formats.png", out)
    return out


def _example(run: Run, task) -> str:
    """One history item of the first test user with history, rendered as a retrieved item."""
    for user in run.split.test:
        if user.history:
            return task.render_item(user.history[0], 120)
    return ""


def _cell(r: MethodResult, metric: str) -> dict:
    return {
        "value": round(r.metrics[metric], 4),
        "interval": [round(x, 4) for x in r.intervals.get(metric, [])],
        "seconds": round(r.seconds, 1),
    }


def _record(run: Run, metric, tasks, users, fixed, results) -> dict:
    return {
        "task": run.task.name,
        "metric": metric,
        "formats": list(tasks),
        "users": len(users),
        "examples": {name: _example(run, task) for name, task in tasks.items()},
        "references": {r.method: _cell(r, metric) for r in fixed},
        "table": {m: {f: _cell(r, metric) for f, r in by.items()} for m, by in results.items()},
        "spread": {m: spread(run, by, metric) for m, by in results.items()},
    }


def _text(cell: dict) -> str:
    low_high = cell["interval"]
    if not low_high:
        return f"{cell['value']:.3f}"
    return f"{cell['value']:.3f} [{low_high[0]:.3f}, {low_high[1]:.3f}]"


def print_formats(out: dict) -> Table:
    """Methods as rows, formats as columns, the spread last; the rows that read no history
    (references, base) once, in the first column."""
    metric, formats = out["metric"], out["formats"]
    arrow = "↓" if metric in LOWER_IS_BETTER else "↑"
    title = (
        f"{out['task']}: history formats, {metric} {arrow} [95% interval over "
        f"{out['users']} users]; spread = best - worst format [paired 95%]"
    )
    table = Table(title=escape(title))
    table.add_column("method")
    for name in formats:
        table.add_column(name, justify="right")
    table.add_column("spread", justify="right")
    for name, cell in out["references"].items():
        rest = ["·"] * (len(formats) - 1)
        table.add_row(f"[italic]{name} (any format)[/italic]", escape(_text(cell)), *rest, "–")
    for method, by_format in out["table"].items():
        s = out["spread"][method]
        mark = " *" if s["significant"] else ""
        shown = f"{s['spread']:.3f} [{s['interval'][0]:.3f}, {s['interval'][1]:.3f}]{mark}"
        cells = [escape(_text(by_format[f])) for f in formats]
        table.add_row(method, *cells, escape(shown))
    console.print(table)
    console.print(
        "spread: best minus worst format (+ = the best's advantage); * its paired interval "
        "excludes 0. Format-independent rows are shown once.",
        markup=False,
        soft_wrap=True,
    )
    return table


def plot_formats(path: Path, out: dict) -> Path:
    """Grouped bars: one group per method, one bar per format, 95% intervals as error
    bars; the format-independent rows as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    metric, formats, methods = out["metric"], out["formats"], list(out["table"])
    width = 0.8 / len(formats)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(methods) + 2), 4))
    for j, name in enumerate(formats):
        cells = [out["table"][m][name] for m in methods]
        values = [c["value"] for c in cells]
        errors = [
            [max(c["value"] - c["interval"][0], 0.0) if c["interval"] else 0.0 for c in cells],
            [max(c["interval"][1] - c["value"], 0.0) if c["interval"] else 0.0 for c in cells],
        ]
        xs = [i + (j - (len(formats) - 1) / 2) * width for i in range(len(methods))]
        ax.bar(xs, values, width, yerr=errors, capsize=2, label=name)
    styles = ["--", ":", "-."]
    for i, (name, cell) in enumerate(out["references"].items()):
        ax.axhline(cell["value"], color="gray", linestyle=styles[i % 3], linewidth=1, label=name)
    ax.set_xticks(range(len(methods)), methods)
    arrow = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
    ax.set_ylabel(f"{metric} ({arrow})")
    ax.set_title(f"{out['task']}: history formats (bars: 95% intervals over users)", fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_study(run: Run, max_users: int | None = None) -> dict:
    """`ownlm eval --study formats [--study-users N]`."""
    return format_study(run, max_users=max_users)
