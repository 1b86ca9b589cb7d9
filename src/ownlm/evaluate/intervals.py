"""Intervals and paired tests for a methods table: `ownlm.scores.bootstrap` on results.

Every scored row gets a 95% bootstrap interval per metric (users resampled, queries
nested in them), and below the table come the comparisons the papers make, each a
paired bootstrap of the difference on the same users:

- OPPU vs each baseline (base, RAG, PAG, PEFT only) and each reference (OPPU's
  Table 1 compares it with the non-personalized and retrieval/profile baselines);
- PROPER-input / PROPER-user vs OPPU (PROPER's main table) and vs the control base
  (`oppu-control`, docs/proper.md) when it was run;
- oppu-control vs OPPU (what the extra pass without groups does to OPPU).

Studies call `interval_cells` for their own tables.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console

from ownlm.evaluate.report import MethodResult, interval_text
from ownlm.log import console as default_console
from ownlm.scores.bootstrap import (
    LEVEL,
    N_BOOT,
    Paired,
    bootstrap_intervals,
    paired_bootstrap,
)
from ownlm.scores.metrics import LOWER_IS_BETTER, scale
from ownlm.variants import CONTROL, of_method

OPPU_BASELINES = ("base", "rag", "pag", "peft")  # OPPU's Table 1 rows below OPPU
PROPER = tuple(of_method("proper"))


def _scored(results: Sequence[MethodResult]) -> list[MethodResult]:
    return [r for r in results if not r.not_run and r.predictions]


def _rows(result: MethodResult) -> list[tuple[str, str, str]]:
    return [(u, p, g) for _, u, p, g in result.predictions]


def add_intervals(
    results: Sequence[MethodResult], task, n_boot: int = N_BOOT, seed: int = 0
) -> None:
    """Set each scored result's `intervals` to {metric: [low, high]} (95%, users resampled)."""
    lo, hi = scale(task)
    for r in _scored(results):
        found = bootstrap_intervals(task.kind, _rows(r), task.labels, lo, hi, n_boot, seed)
        r.intervals = {m: [iv.low, iv.high] for m, iv in found.items() if m in r.metrics}


def comparison_pairs(results: Sequence[MethodResult]) -> list[tuple[str, str]]:
    """(method, baseline) pairs the papers compare, among the results scored."""
    names = [r.method for r in _scored(results)]
    refs = [r.method for r in _scored(results) if r.is_reference]
    pairs = []
    if "oppu" in names:
        pairs += [("oppu", b) for b in [*OPPU_BASELINES, *refs] if b in names]
    for proper in PROPER:
        pairs += [(proper, b) for b in ("oppu", CONTROL) if proper in names and b in names]
    if CONTROL in names and "oppu" in names:
        pairs.append((CONTROL, "oppu"))
    return pairs


def _aligned(a: MethodResult, b: MethodResult) -> tuple[list, list] | None:
    """Both results' rows on the queries both answered, in a's order."""
    theirs = {(q, u): (u, p, g) for q, u, p, g in b.predictions}
    keys = [(q, u) for q, u, _, _ in a.predictions]
    if set(keys) != set(theirs):
        return None  # different queries: no paired comparison
    return _rows(a), [theirs[k] for k in keys]


def paired_comparisons(
    results: Sequence[MethodResult],
    task,
    metric: str,
    n_boot: int = N_BOOT,
    seed: int = 0,
    pairs: Sequence[tuple[str, str]] | None = None,
) -> list[Paired]:
    """The paired bootstraps of `pairs` (default `comparison_pairs`: the papers') on
    `metric`, the same draws for all."""
    lo, hi = scale(task)
    by_name = {r.method: r for r in _scored(results)}
    out = []
    for a, b in comparison_pairs(results) if pairs is None else pairs:
        if a not in by_name or b not in by_name:
            continue
        rows = _aligned(by_name[a], by_name[b])
        if rows is None:
            continue
        out.append(
            paired_bootstrap(task.kind, *rows, metric, (a, b), task.labels, lo, hi, n_boot, seed)
        )
    return out


def comparison_line(p: Paired) -> str:
    """e.g. "oppu - base: -0.1333 [-0.2500, -0.0167]  oppu better, significant"."""
    return f"{p.method} - {p.baseline}: {p.diff:+.4f} [{p.low:+.4f}, {p.high:+.4f}]  {p.verdict}"


def print_comparisons(
    comparisons: Sequence[Paired],
    n_boot: int = N_BOOT,
    seed: int = 0,
    console: Console | None = None,
) -> list[str]:
    """The paired comparisons after the table, one line each, with how to read them."""
    if not comparisons:
        return []
    metric = comparisons[0].metric
    order = "lower" if metric in LOWER_IS_BETTER else "higher"
    out = console or default_console
    out.print(
        f"paired bootstrap over users ({n_boot} resamples, seed {seed}), {metric} difference "
        f"({order} is better), significant = its {LEVEL:.0%} interval excludes 0:",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    lines = [comparison_line(p) for p in comparisons]
    for line in lines:
        out.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    return lines


def interval_cells(
    results: Sequence[MethodResult], task, metric: str, n_boot: int = N_BOOT, seed: int = 0
) -> dict[str, str]:
    """{method: "0.486 [0.343, 0.629]"} on `metric` for a study's own table; intervals
    are computed for results that have none yet."""
    missing = [r for r in _scored(results) if metric not in r.intervals]
    add_intervals(missing, task, n_boot, seed)
    return {
        r.method: interval_text(r.metrics[metric], r.intervals.get(metric))
        for r in _scored(results)
        if metric in r.metrics
    }
