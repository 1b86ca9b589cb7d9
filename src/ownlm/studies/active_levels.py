"""PROPER's active-level study (Zhang et al. 2025; OPPU Sec. 5 "various active levels"):
how each method does as a user's history shrinks.

Test users' histories are cut to their last `keep` items; OPPU's and PROPER's user
stages are trained on each cut in memory (nothing stored) and scored on the same queries,
next to the user's own majority / mean over the cut history (the trivial reference), PAG,
and "proper-new" (the group model routed from the cut history's embedding, no user
training: how PROPER serves a user it has not trained).

Users are trained in memory, so no stored user adapter is read; the stage-2 groups are,
and the study refuses to start (before any training) when they are missing, stale or
corrupt, naming the command that trains them (`ownlm.evaluate.coverage`).
"""

from __future__ import annotations

import json
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from ownlm.adapters.lora import detach
from ownlm.data.splits import truncate_history
from ownlm.evaluate.coverage import require_groups
from ownlm.evaluate.intervals import interval_cells, paired_comparisons
from ownlm.evaluate.proper import user_vectors
from ownlm.evaluate.report import MethodResult, plot_buckets
from ownlm.evaluate.scoring import PRIMARY, predict_by_user, references, test_queries
from ownlm.log import get_logger
from ownlm.oppu.sequential import fit_user as fit_oppu_user
from ownlm.proper import group_model, prepare_user
from ownlm.proper.user_stage import fit_proper_user
from ownlm.proper.users import proper_pairs
from ownlm.retrieval.prompts import user_context

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)


def _oppu(run: Run, backbone, rows, contexts) -> MethodResult:
    @contextmanager
    def answer_with(user):
        if not user.history:
            yield backbone.model
            return
        model, _ = fit_oppu_user(run, backbone, user, "oppu", contexts[user.user_id])
        try:
            yield model
        finally:
            detach(backbone, model)

    return predict_by_user(run, backbone, rows, contexts, "oppu", answer_with)


def _proper(run: Run, backbone, rows, contexts, router: str, name: str = "") -> MethodResult:
    """`router` "input" / "user": trained on the cut history; "new": untrained routing.
    `name`: the row's name (default proper-<router>)."""
    vectors = user_vectors(run, rows, backbone)
    with group_model(run, backbone) as gm:

        def answer_with(user):
            if router == "new" or not user.history:  # served untrained, as `prepare_user` does
                pairs = proper_pairs(run, user) if user.history else None
                prepare_user(gm, None, None, user, router, vectors.get(user.user_id), pairs)
            else:
                gm.reset()
                fit_proper_user(run, gm, user, vectors[user.user_id], router)
            return nullcontext(backbone.model)

        name = name or f"proper-{router}"
        return predict_by_user(run, backbone, rows, contexts, name, answer_with)


def active_level_study(
    run: Run,
    buckets=(2, 5, 10, 50),
    routers=("input", "user"),
    out_dir: Path | None = None,
    max_users: int | None = None,
    one_expert=None,
) -> dict[str, dict[str, float]]:
    """Scores at each history size in `buckets`. `max_users` keeps the first N test users
    (each bucket trains 1 + len(routers) user stages per user). `one_expert`: a second
    run, trained alike but with `proper.groups=1` (`check_one_expert`), whose stage 2
    gives the row "proper-user-g1": PROPER's user stage on one expert, at the same
    training budget. Returns {bucket: {method: primary metric}}; prints the table with
    95% bootstrap intervals over users and, per bucket, the paired differences of
    PROPER's rows to OPPU, to the base (PAG) and to one expert; writes
    active_levels.json (with the intervals and differences) and a plot."""
    primary = PRIMARY[run.task.kind]
    out_dir = out_dir or run.paths.eval
    rows0 = test_queries(run)
    keep_ids = list(dict.fromkeys(u.user_id for u, _ in rows0))[:max_users]
    rows0 = [(u, q) for u, q in rows0 if u.user_id in keep_ids]
    backbone = run.base()
    require_groups(run, backbone.fingerprint())
    one_base = check_one_expert(run, one_expert) if one_expert is not None else None
    table: dict[str, dict[str, float]] = {}
    cells: dict[str, dict[str, str]] = {}
    paired: dict[str, list[dict]] = {}
    n_boot, seed = run.cfg.n_boot, run.cfg.boot_seed
    for keep in buckets:
        cut = {u.user_id: truncate_history(u, keep) for u, _ in rows0}
        rows = [(cut[u.user_id], q) for u, q in rows0]
        contexts = {uid: user_context(run.task, u) for uid, u in cut.items()}
        results = [r for r in references(run, rows) if r.method == "user-majority"]
        pag = lambda user: nullcontext(backbone.model)  # noqa: E731
        results.append(predict_by_user(run, backbone, rows, contexts, "pag", pag))
        results.append(_oppu(run, backbone, rows, contexts))
        results += [_proper(run, backbone, rows, contexts, r) for r in (*routers, "new")]
        if one_base is not None:
            g1 = _proper(one_expert, one_base, rows, contexts, "user", "proper-user-g1")
            results.append(g1)
        table[str(keep)] = {r.method: round(r.metrics[primary], 4) for r in results}
        cells[str(keep)] = interval_cells(results, run.task, primary, n_boot, seed)
        paired[str(keep)] = _differences(results, run.task, primary, n_boot, seed)
        log.info(f"active level {keep}: {table[str(keep)]}")
    _print(run.task.name, primary, cells, paired)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"task": run.task.name, "metric": primary, "table": table, "intervals": cells}
    record |= {"paired": paired, "bootstrap": {"unit": "user", "n_boot": n_boot, "seed": seed}}
    (out_dir / "active_levels.json").write_text(json.dumps(record, indent=2))
    plot_buckets(out_dir / "active_levels.png", table, primary, f"{run.task.name}: {primary}")
    return table


# the comparisons the study is for: PROPER's rows against OPPU, the base and one expert
PAIRS = tuple(
    (m, b)
    for m in ("proper-new", "proper-user", "proper-input")
    for b in ("oppu", "pag", "proper-user-g1")
)


def _differences(results, task, metric: str, n_boot: int, seed: int) -> list[dict]:
    """Paired bootstrap differences (same users) for `PAIRS` among `results`."""
    found = {r.method for r in results}
    pairs = [(m, b) for m, b in PAIRS if m in found and b in found]
    out = paired_comparisons(results, task, metric, n_boot, seed, pairs=pairs)
    return [
        {"method": p.method, "baseline": p.baseline, "diff": round(p.diff, 4),
         "interval": [round(p.low, 4), round(p.high, 4)], "significant": p.significant}
        for p in out
    ]  # fmt: skip


def _print(task_name: str, metric: str, cells: dict, paired: dict) -> None:
    """Methods as rows, history sizes as columns, each cell `score [95% interval]`;
    then the significant paired differences."""
    from rich.markup import escape
    from rich.table import Table

    from ownlm.log import console

    table = Table(title=escape(f"{task_name}: active levels, {metric} [95% over users]"))
    table.add_column("method")
    for keep in cells:
        table.add_column(f"{keep} items", justify="right")
    methods = list(dict.fromkeys(m for row in cells.values() for m in row))
    for m in methods:
        table.add_row(m, *(escape(cells[k].get(m, "–")) for k in cells))
    console.print(table)
    for keep, rows in paired.items():
        for p in rows:
            verdict = "significant" if p["significant"] else "not significant"
            lo, hi = p["interval"]
            console.print(
                f"  {keep} items: {p['method']} - {p['baseline']}: {p['diff']:+.4f} "
                f"[{lo:+.4f}, {hi:+.4f}] {verdict}",
                markup=False,
                highlight=False,
            )


def check_one_expert(run: Run, other):
    """`other`'s base, once it is the one-expert twin of `run`: stage 2 with
    `proper.groups=1` (no `groups_choices`), the same test users, and otherwise the same PROPER settings (so
    the rows differ by the groups alone); else a ConfigError naming the fix."""
    from dataclasses import asdict

    from ownlm.errors import ConfigError

    mine, theirs = asdict(run.cfg.proper), asdict(other.cfg.proper)
    g_keys = ("groups", "groups_choices")  # the twin has one expert, chosen or not
    differ = sorted(k for k in mine if k not in g_keys and mine[k] != theirs[k])
    same_users = [u.user_id for u in run.split.test] == [u.user_id for u in other.split.test]
    one = theirs["groups"] == 1 and not theirs["groups_choices"]
    if not one or differ or not same_users:
        why = (
            f"groups={theirs['groups']}, groups_choices={theirs['groups_choices']}"
            if not one
            else (f"proper.{differ[0]} differs" if differ else "other test users")
        )
        raise ConfigError(
            f"--one-expert-run {other.dir.name}: not the one-expert twin of {run.dir.name} "
            f"({why}); train it with the same config and `--set proper.groups=1 --set "
            f"proper.groups_choices=[] --set name={run.dir.name}-g1 --stages population,groups`"
        )
    base = other.base()
    require_groups(other, base.fingerprint())
    return base
