"""Results of one task: a rich table, JSON, LaMP-format predictions and plots.

References (population / user majority) travel as `MethodResult(is_reference=True)`:
the table marks them, the bar chart draws them as dashed lines. A method that could not
be run as asked (a user's adapter missing, stale or corrupt) travels as a `MethodResult`
with `not_run` set and no metrics: the table shows its status, never a score.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ownlm.log import console as default_console
from ownlm.scores.metrics import LOWER_IS_BETTER

# (query_id, user_id, prediction, gold)
Prediction = tuple[str, str, str, str]
COUNT_KEYS = frozenset({"n_users"})  # metrics-dict entries that are counts, never bolded


@dataclass
class NotRun:
    """Why a method has no score: a score over only the users who have an adapter, or
    with the base standing in for the others, would pass for the method's own."""

    reason: str  # one line for the table, e.g. "2/15 users have no usable adapter"
    # user id -> "missing" | "other base" | "history changed" | "corrupt: ..."
    users: dict[str, str] = field(default_factory=dict)
    command: str = ""  # the command that trains what is missing


@dataclass
class MethodResult:
    """One method's (or reference's) run on one task; `not_run` set = no score."""

    method: str
    metrics: dict[str, float]
    predictions: list[Prediction] = field(default_factory=list)
    seconds: float = 0.0
    is_reference: bool = False
    not_run: NotRun | None = None
    # metric -> [low, high]: 95% bootstrap interval over users (`evaluate.intervals`)
    intervals: dict[str, list[float]] = field(default_factory=dict)
    # [cut, all]: its prompts that gave up personal context (or, bare, their middle) to
    # fit the context (`backbone.context.fit_ids`); None for references (no prompt)
    prompts_cut: list[int] | None = None


def not_run_message(result: MethodResult, shown: int = 5) -> str:
    """One line per method not run: the reason, the first `shown` users and why, the fix."""
    nr = result.not_run
    if nr is None:
        return ""
    named = ", ".join(f"{uid} ({why})" for uid, why in list(nr.users.items())[:shown])
    if len(nr.users) > shown:
        named += f" and {len(nr.users) - shown} more"
    users = f": {named}" if named else ""
    fix = f". Train them with: {nr.command}" if nr.command else ""
    return f"{result.method} not run, {nr.reason}{users}{fix}"


def _task_name(task: object) -> str:
    return task if isinstance(task, str) else str(getattr(task, "name", task))


def _best(results: Sequence[MethodResult], metric: str) -> float | None:
    values = [r.metrics[metric] for r in results if metric in r.metrics]
    if not values:
        return None
    return min(values) if metric in LOWER_IS_BETTER else max(values)


def _metric_columns(results: Sequence[MethodResult], primary: str) -> list[str]:
    names: list[str] = []
    for r in results:
        names += [m for m in r.metrics if m not in names]
    return sorted(names, key=lambda m: (m != primary, names.index(m)))


def interval_text(value: float, interval: Sequence[float] | None, digits: int = 3) -> str:
    """ "0.486 [0.343, 0.629]", or the bare value when there is no interval."""
    if not interval:
        return f"{value:.{digits}f}"
    low, high = interval
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _score_cells(r: MethodResult, columns: list[str], best: dict) -> list[str]:
    """Metric cells; the primary (first) column with its interval when there is one."""
    cells = []
    for m in columns:
        if m not in r.metrics:
            cells.append("–")
        elif m in COUNT_KEYS:  # a count, not a score: no "best"
            cells.append(f"{r.metrics[m]:.0f}")
        else:
            interval = r.intervals.get(m) if m == columns[0] else None
            text = interval_text(r.metrics[m], interval) if interval else f"{r.metrics[m]:.4f}"
            cells.append(f"[bold]{text}[/bold]" if r.metrics[m] == best[m] else text)
    return cells


def print_table(
    task_name: str,
    results: Sequence[MethodResult],
    primary_metric: str,
    console: Console | None = None,
    notes: Mapping[str, str] | None = None,
) -> Table:
    """Methods as rows (references first, in italics), metrics as columns, best in bold;
    the primary metric with its 95% interval when the results have one. Methods not run
    get dashes and, in a "status" column, why (no partial score). `notes`: a marker
    beside a method (`method_notes`: a stage it stands on did not learn)."""
    notes = notes or {}
    arrow = "↓" if primary_metric in LOWER_IS_BETTER else "↑"
    table = Table(title=f"{task_name} — primary metric: {primary_metric} {arrow}")
    table.add_column("method")
    columns = _metric_columns(results, primary_metric)
    for m in columns:
        table.add_column(m, justify="right")
    table.add_column("seconds", justify="right")
    status = any(r.not_run for r in results)
    if status:
        table.add_column("status")
    best = {m: _best(results, m) for m in columns}
    ordered = sorted(results, key=lambda r: not r.is_reference)  # stable: references first
    for r in ordered:
        name = f"{r.method} [yellow]{notes[r.method]}[/]" if r.method in notes else r.method
        cells = [f"[italic]{r.method} (reference)[/italic]" if r.is_reference else name]
        cells += _score_cells(r, columns, best)
        cells.append("–" if r.not_run else f"{r.seconds:.1f}")
        if status:
            cells.append(f"[bold red]not run[/]: {escape(r.not_run.reason)}" if r.not_run else "")
        table.add_row(*cells)
    (console or default_console).print(table)
    return table


def reference_gaps(results: Sequence[MethodResult], metric: str) -> dict[str, dict[str, float]]:
    """{method: {reference: gap}} on `metric` for every method scored, the gap signed so
    that + means better than the reference (for MAE: the reference's MAE minus the
    method's). A method that does not beat the population reference has not learned the
    task; one that does not beat the user's own majority has not learned the user."""
    refs = [r for r in results if r.is_reference and metric in r.metrics]
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    return {
        r.method: {ref.method: sign * (r.metrics[metric] - ref.metrics[metric]) for ref in refs}
        for r in results
        if not r.is_reference and not r.not_run and metric in r.metrics
    }


def print_gaps(
    results: Sequence[MethodResult], metric: str, console: Console | None = None
) -> list[str]:
    """After the table, one line per method: its gap to each reference on `metric`,
    e.g. "base: vs population-majority +0.033, vs user-majority -0.067" (+ = better)."""
    gaps = reference_gaps(results, metric)
    if not gaps or not any(gaps.values()):
        return []
    lines = [
        f"{method}: " + ", ".join(f"vs {ref} {gap:+.4f}" for ref, gap in by_ref.items())
        for method, by_ref in gaps.items()
    ]
    out = console or default_console
    out.print(f"gap to the references on {metric} (+ = better than the reference):")
    for line in lines:
        out.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    return lines


def print_cuts(
    results: Sequence[MethodResult], context: int, console: Console | None = None
) -> str | None:
    """The table's footer: how many prompts each method cut to fit `context` tokens
    (the least relevant retrieved items, then the profile, given up first)."""
    counted = [r for r in results if r.prompts_cut is not None and not r.not_run]
    if not counted:
        return None
    cut = [f"{r.method} {r.prompts_cut[0]}/{r.prompts_cut[1]}" for r in counted if r.prompts_cut[0]]
    line = f"prompts cut to fit the context of {context} tokens: " + (
        ", ".join(cut) + " (retrieved items, then the profile, left out)" if cut else "none"
    )
    (console or default_console).print(line, markup=False, highlight=False, soft_wrap=True)
    return line


def stage_warnings(record: Mapping | None) -> list[str]:
    """The warnings the run's stages recorded in run.json (`train.validation.finish`),
    in stage order, then those of the user stages' tuning (a budget that does not beat
    the dev users' own reference, `pipeline.tune_table.verdict`)."""
    stages = (record or {}).get("stages") or {}
    tuned = (record or {}).get("tuned") or {}
    out = [w for info in stages.values() if info for w in info.get("warnings") or []]
    return out + [info["warning"] for info in tuned.values() if info and info.get("warning")]


# the methods whose model stands on a stage's result: stage 1 is merged into every base
STAGE_METHODS = {
    "population": None,  # every method that is not a reference
    "groups": ("proper-input", "proper-user"),
    "control": ("oppu-control",),
}


def method_notes(record: Mapping | None, methods: Sequence[str]) -> dict[str, str]:
    """{method: "⚠ stage 1 ..."} for each of `methods` standing on a stage that warned
    it did not beat its reference on the dev users, or whose user stage's tuned budget
    did not (run.json's "stages" and "tuned" records): the table says it beside them."""
    record = record or {}
    notes: dict[str, list[str]] = {}
    for stage, info in (record.get("stages") or {}).items():
        if info and info.get("warnings") and stage in STAGE_METHODS:
            for m in STAGE_METHODS[stage] or methods:
                notes.setdefault(m, []).append(f"{stage} did not learn")
    for variant, info in (record.get("tuned") or {}).items():
        if info and info.get("warning"):
            notes.setdefault(variant, []).append("user stage not above the user's own")
    return {m: "⚠ " + "; ".join(v) for m, v in notes.items() if m in methods}


def print_stage_warnings(warnings: Sequence[str], console: Console | None = None) -> None:
    """The stages' warnings, after the table: a table is read with them in mind."""
    out = console or default_console
    for warning in warnings:
        out.print(f"training warning: {warning}", style="yellow", markup=False, soft_wrap=True)


def _write_atomic(path: str | os.PathLike[str], payload: object) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, ensure_ascii=False)
    os.replace(tmp, path)  # readers never see a half-written file
    return path


def write_json(
    path: str | os.PathLike[str],
    task: object,
    results: Sequence[MethodResult],
    comparisons: Sequence[object] = (),
    bootstrap: Mapping | None = None,
    decode: str | None = None,
) -> Path:
    """All results of a task: {"task", "results": [{method, metrics, intervals, seconds,
    is_reference, predictions, not_run}]}; `not_run` is null, or {reason, users: {id:
    why}, command}; with `comparisons` (`scores.bootstrap.Paired`), also "comparisons":
    [{method, baseline, metric, diff, low, high, significant, better}] and "bootstrap"
    (how the intervals were drawn); with `decode`, how labels were picked ("argmax" or
    "median", `backbone.decode`)."""
    rows = []
    for r in results:
        row = asdict(r)
        row["predictions"] = [
            {"id": q, "user_id": u, "output": p, "gold": g} for q, u, p, g in r.predictions
        ]
        rows.append(row)
    payload: dict = {"task": _task_name(task), "results": rows}
    if bootstrap:
        payload["bootstrap"] = dict(bootstrap)
    if decode:
        payload["decode"] = decode
    if comparisons:
        payload["comparisons"] = [{**asdict(c), "better": c.better} for c in comparisons]
    return _write_atomic(path, payload)


def lamp_task_id(task_name: str) -> str:
    """The official script's spelling: "LaMP-2" / "lamp_2" -> "LaMP_2"; others unchanged."""
    if task_name.lower().replace("-", "_").startswith("lamp_"):
        return "LaMP_" + task_name[5:]
    return task_name


def write_lamp_predictions(
    path: str | os.PathLike[str], task_name: str, result: MethodResult
) -> Path:
    """One method's predictions as the official LaMP evaluation reads them.

    {"task": "LaMP_2", "golds": [{"id": query_id, "output": prediction}, ...]}
    (the official format calls the predictions file's entries "golds" too).
    """
    golds = [{"id": q, "output": p} for q, _, p, _ in result.predictions]
    return _write_atomic(path, {"task": lamp_task_id(task_name), "golds": golds})


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_methods(
    path: str | os.PathLike[str], task_name: str, results: Sequence[MethodResult], metric: str
) -> Path:
    """Bar chart of `metric` per method; references as dashed horizontal lines; the 95%
    intervals, where the results have them, as error bars (references: shaded bands)."""
    plt = _pyplot()
    methods = [r for r in results if not r.is_reference and metric in r.metrics]
    refs = [r for r in results if r.is_reference and metric in r.metrics]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(methods) + 2), 4))
    values = [r.metrics[metric] for r in methods]
    bars = ax.bar(
        [r.method for r in methods], values, color="#4C72B0", yerr=_yerr(methods, metric), capsize=3
    )
    for bar, value in zip(bars, values, strict=True):  # beside the error bar, not on it
        x = bar.get_x() + bar.get_width() / 2
        ax.annotate(f"{value:.3f}", (x, value), (4, 2), textcoords="offset points", fontsize=8)
    styles, colors = ["--", ":", "-."], ["#C44E52", "#55A868", "#8172B2", "#CCB974"]
    for i, r in enumerate(refs):
        ax.axhline(
            r.metrics[metric],
            color=colors[i % len(colors)],
            linestyle=styles[i % 3],
            linewidth=1.5,
            label=f"{r.method} (reference)",
        )
        if metric in r.intervals:
            ax.axhspan(*r.intervals[metric], color=colors[i % len(colors)], alpha=0.08)
    arrow = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
    ax.set_ylabel(f"{metric} ({arrow})")
    shown = " (bars: 95% intervals, users resampled)" if any(r.intervals for r in results) else ""
    ax.set_title(f"{task_name}: {metric}{shown}", fontsize=10)
    highs = [r.intervals[metric][1] for r in methods + refs if metric in r.intervals]
    top = max(values + [r.metrics[metric] for r in refs] + highs + [0.0])
    ax.set_ylim(0, top * 1.3 or 1.0)  # headroom for the legend
    if refs:
        ax.legend(loc="upper left", ncol=min(len(refs), 2), fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    return _save(fig, path)


def _yerr(methods: Sequence[MethodResult], metric: str):
    """(2, n) distances below / above each bar to its interval's ends; None when no bar
    has an interval (a bar without one gets none)."""
    if not any(metric in r.intervals for r in methods):
        return None
    below, above = [], []
    for r in methods:
        low, high = r.intervals.get(metric, (r.metrics[metric], r.metrics[metric]))
        below.append(max(r.metrics[metric] - low, 0.0))
        above.append(max(high - r.metrics[metric], 0.0))
    return [below, above]


def plot_buckets(
    path: str | os.PathLike[str],
    table: Mapping[str, Mapping[str, float]],
    metric: str,
    title: str | None = None,
) -> Path:
    """Line plot for active-level studies: x = history-size buckets (in the table's order),
    one line per method. table: {bucket: {method: value}}."""
    plt = _pyplot()
    buckets = list(table)
    methods: list[str] = []
    for row in table.values():
        methods += [m for m in row if m not in methods]
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in methods:
        xs = [i for i, b in enumerate(buckets) if m in table[b]]
        ax.plot(xs, [table[buckets[i]][m] for i in xs], marker="o", label=m)
    ax.set_xticks(range(len(buckets)), buckets)
    ax.set_xlabel("history size (items)")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} by user activity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path
