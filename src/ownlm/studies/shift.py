"""The behaviour-shift study (issue #11, item 2; OPPU Sec. 5: a personal adapter
"adapts to user behavior shifts"): what a user's adapter is worth after their history
grows, kept as it was, updated (`ownlm update`), or trained again.

    ownlm eval -c C --study shift [--study-users N]

Protocol (OPPU gives no exact one; these are ownlm's choices, docs/shift.md):

- **Time order.** Each test user's history is put oldest first: by date when every
  item has one, else in the order the run's data gives it ("file"; LaMP's per-user
  files and the demo data have no dates; StudEmo's history is the loader's seeded
  80/20 draw, so it has no time in it at all). The JSON says which, per user count.
- **Split** (`data.splits.shift_split`): the first `OLD_FRAC` of the history is the
  older part; of the newer part, the last `min(MAX_QUERIES, half of it)` items are
  held out as queries (their labels are the golds) and the items before them are the
  new items. Queries are never trained on or retrieved by any row. The run's own test
  queries are not used (they carry no time). Users with under 3 items are left out.
- **Rows**, all on the same held-out queries:
  - references: the population majority / mean, the user's majority / mean over the
    updated history (older + new) and over the older part only (`user-majority-old`:
    the gap to `user-majority` is how much the shift alone moves the trivial answer),
    and for label tasks the TF-IDF references over the updated history;
  - `rag`, `pag`: the merged base, retrieval (and profile) over the updated history;
  - `stale`: an OPPU adapter trained on the older part, served as ownlm serves it
    after new items arrive: retrieval and profile are rebuilt from the updated history
    (ownlm stores neither, docs/update.md), only the weights are old;
  - `stale-old-context`: the same adapter with retrieval and profile over the older
    part too, as if nothing had been refreshed (stale minus this row: what the
    non-parametric refresh alone gives);
  - `updated`: the stale adapter continued on the new items exactly as `ownlm update`
    does (`oppu.update.continue_user` with `oppu.update.update_budget`: update.lr and
    update.epochs, else the user stage's lr and epochs, over the new items);
  - `retrained`: a fresh adapter trained on older + new items (the user stage).
- **Time**: per row the median seconds per user of the training that row needs when
  the new items arrive on top of what existed (stale: its first training, paid
  earlier; updated: the update alone; retrained: the whole fit), and the seconds of
  answering all queries. Quality carries 95% bootstrap intervals over users, and the
  differences updated - stale, retrained - stale, updated - retrained and stale -
  stale-old-context are paired bootstraps over the same users.

Everything is trained in memory: no store of the run is read for users or written.
Writes <run>/eval/shift.json and shift.png.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from ownlm.adapters.lora import detach
from ownlm.backbone.decode import decode_rule
from ownlm.data.records import Item, Query, User
from ownlm.data.splits import shift_split, time_order
from ownlm.errors import ConfigError
from ownlm.evaluate.intervals import interval_cells, print_comparisons
from ownlm.evaluate.report import MethodResult, plot_methods
from ownlm.evaluate.scoring import PRIMARY, references, scale, score, tfidf_references
from ownlm.log import console, get_logger, progress
from ownlm.oppu.sequential import fit_user
from ownlm.oppu.update import continue_user, update_budget
from ownlm.retrieval.prompts import query_prompt, user_context
from ownlm.scores.bootstrap import paired_bootstrap

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)

OLD_FRAC = 0.5  # the older part: the first half of a user's time-ordered history
MAX_QUERIES = 5  # held-out queries per user, the last items of the newer part
ADAPTER_ROWS = ("stale", "stale-old-context", "updated", "retrained")
PAIRS = (
    ("updated", "stale"),
    ("retrained", "stale"),
    ("updated", "retrained"),
    ("stale", "stale-old-context"),
)


@dataclass
class ShiftUser:
    """One test user cut in time: `old` and `updated` hold the older part and the older
    part + the new items as history; `queries` are the held-out newest items."""

    old: User
    updated: User
    n_new: int
    queries: list[Query]
    order: str  # "date" | "file"


def held_query(task, item: Item) -> Query:
    """A history item asked as a query: its prompt, its output as the gold."""
    fields = {k: v for k, v in item.fields.items() if k != task.output_field}
    return Query(item.id, task.query_prompt(fields), item.fields[task.output_field].strip(), fields)


def swap_top_two(task, old: list[Item], newer: list[Item]) -> list[Item]:
    """A planted drift: `newer` with the two labels the user gave most in `old` (ties:
    the task's label order) trading places, so a habit learned from `old` is now wrong
    on those items; unchanged when `old` has fewer than two labels."""
    counts = Counter(it.fields[task.output_field].strip() for it in old)
    rank = {label: i for i, label in enumerate(task.labels)}
    top = sorted(counts, key=lambda label: (-counts[label], rank.get(label, len(rank))))[:2]
    if len(top) < 2:
        return list(newer)
    swap = {top[0]: top[1], top[1]: top[0]}
    out = task.output_field
    return [
        replace(it, fields={**it.fields, out: swap.get(it.fields[out].strip(), it.fields[out])})
        for it in newer
    ]


DRIFTS = {"swap": swap_top_two}  # shift_study(drift=name): (task, old, newer) -> newer


def shift_users(
    run: Run, users, old_frac: float = OLD_FRAC, max_queries: int = MAX_QUERIES, drift=None
):
    """(cut users, ids of users left out for a history too short). `drift`: a name in
    `DRIFTS`, planted in the newer part (new items and queries alike)."""
    if drift is not None and (drift not in DRIFTS or not run.task.labels):
        raise ConfigError(
            f"drift {drift!r}: choose among {', '.join(DRIFTS)}, on a task with labels "
            f"(task {run.task.name} is {run.task.kind})"
        )
    if run.task.pair_prompt is not None:
        raise ConfigError(
            f"task {run.task.name}: its history items are not queries of the task (they "
            "have their own training prompt), so the shift study cannot ask them; use a "
            "task whose history items are answered like its queries"
        )
    cut, short = [], []
    for user in users:
        items, order = time_order(user.history)
        parts = shift_split(items, old_frac, max_queries)
        if parts is None:
            short.append(user.user_id)
            continue
        old, new, held = parts
        if drift is not None:
            newer = DRIFTS[drift](run.task, old, new + held)
            new, held = newer[: len(new)], newer[len(new) :]
        queries = [held_query(run.task, it) for it in held]
        cut.append(
            ShiftUser(
                replace(user, history=old, queries=[]),
                replace(user, history=old + new, queries=[]),
                len(new),
                queries,
                order,
            )
        )
    return cut, short


@dataclass
class _Row:
    preds: list[str]
    train: list[float]  # seconds per user
    answer: float = 0.0  # seconds answering, all users


def _answer(
    run: Run, backbone, model, ctx, queries, decode, profile=True
) -> tuple[list[str], float]:
    """Answers of `model` to `queries` with `ctx`'s retrieval (and profile): (preds, s)."""
    k, use_profile = run.cfg.retrieval_k, profile and run.cfg.profile
    start = time.perf_counter()
    prompts = [query_prompt(run.task, ctx, q, k, use_profile) for q in queries]
    preds = backbone.predict(model, run.task, prompts, decode=decode)
    return preds, time.perf_counter() - start


def _trainable(model) -> list:
    return [p.detach().clone() for p in model.parameters() if p.requires_grad]


def _adapters(run: Run, backbone, su: ShiftUser, rows: dict, decode, lr, epochs) -> float:
    """Train and ask the user's three adapters, adding to `rows`; returns how far the
    update moved the adapter's weights (L2 norm of the change)."""
    ctx_old, ctx_new = user_context(run.task, su.old), user_context(run.task, su.updated)

    def ask(name, model, ctx, train_s):
        preds, seconds = _answer(run, backbone, model, ctx, su.queries, decode)
        rows[name].preds += preds
        rows[name].train.append(train_s)
        rows[name].answer += seconds

    start = time.perf_counter()
    model, _ = fit_user(run, backbone, su.old, "oppu", ctx_old)
    try:
        stale_s = time.perf_counter() - start
        ask("stale", model, ctx_new, stale_s)
        ask("stale-old-context", model, ctx_old, stale_s)
        before = _trainable(model)
        start = time.perf_counter()
        continue_user(run, backbone, model, su.updated, su.n_new, lr, epochs, ctx_new)
        ask("updated", model, ctx_new, time.perf_counter() - start)
        after = _trainable(model)
        moved = sum(float((a - b).float().pow(2).sum()) for a, b in zip(after, before, strict=True))
    finally:
        detach(backbone, model)
    start = time.perf_counter()
    model, _ = fit_user(run, backbone, su.updated, "oppu", ctx_new)
    try:
        ask("retrained", model, ctx_new, time.perf_counter() - start)
    finally:
        detach(backbone, model)
    return moved**0.5


def _base_rows(run: Run, backbone, cut, decode) -> dict[str, _Row]:
    """RAG and PAG over the updated history (the merged base, no training)."""
    out = {}
    for name, profile in (("rag", False), ("pag", True)):
        row = _Row([], [])
        for su in cut:
            ctx = user_context(run.task, su.updated)
            preds, seconds = _answer(
                run, backbone, backbone.model, ctx, su.queries, decode, profile
            )
            row.preds += preds
            row.answer += seconds
        out[name] = row
    return out


def _references(run: Run, cut) -> list[MethodResult]:
    """Population, user (updated and older part) and TF-IDF references on the queries."""
    updated = [(su.updated, q) for su in cut for q in su.queries]
    old = [(su.old, q) for su in cut for q in su.queries]
    refs = references(run, updated)
    old_user = next(r for r in references(run, old) if r.method == "user-majority")
    return [*refs, replace(old_user, method="user-majority-old"), *tfidf_references(run, updated)]


def shift_study(
    run: Run,
    max_users: int | None = None,
    old_frac: float = OLD_FRAC,
    max_queries: int = MAX_QUERIES,
    out_dir: Path | None = None,
    drift: str | None = None,
) -> dict:
    """The study on the run's first `max_users` test users (all: None): prints the table
    and the paired differences, writes shift.json and shift.png to `out_dir` (default
    <run>/eval), returns shift.json's content. `drift` (`DRIFTS`): a shift planted in
    the newer part; its files are shift-<drift>.json and .png."""
    task, primary = run.task, PRIMARY[run.task.kind]
    decode = decode_rule(run.cfg.decode, task)
    cut, short = shift_users(run, run.split.test[:max_users], old_frac, max_queries, drift)
    if not cut:
        raise ConfigError(
            f"no test user of {run.dir} has the 3 history items the shift study needs"
        )
    backbone = run.base()
    lr, epochs = update_budget(run, backbone.fingerprint())
    rows = _base_rows(run, backbone, cut, decode)
    rows.update({name: _Row([], []) for name in ADAPTER_ROWS})
    moved = {}
    for su in progress(cut, desc="shift study", unit="user"):
        moved[su.old.user_id] = _adapters(run, backbone, su, rows, decode, lr, epochs)
    pairs = [(su.updated, q) for su in cut for q in su.queries]
    results = _references(run, cut) + [
        score(run, name, pairs, row.preds, row.answer) for name, row in rows.items()
    ]
    comparisons = _paired(run, results, primary)
    payload = {
        "task": task.name,
        "metric": primary,
        "users": len(cut),
        "queries": len(pairs),
        "short_users": short,
        "order": {o: sum(su.order == o for su in cut) for o in ("date", "file")},
        "drift": drift,
        "protocol": {
            "old_frac": old_frac,
            "max_queries": max_queries,
            "old_items": _spread([len(su.old.history) for su in cut]),
            "new_items": _spread([su.n_new for su in cut]),
            "update": {"lr": lr, "epochs": epochs},
        },
        "table": _table(run, results, rows, primary),
        "comparisons": [{**asdict(c), "better": c.better} for c in comparisons],
        "update_moved": moved,  # L2 norm of each user's adapter change by the update
        "predictions": {r.method: r.predictions for r in results},
    }
    _print(run, payload, comparisons)
    out_dir = out_dir or run.paths.eval
    name = f"shift-{drift}" if drift else "shift"
    _write(out_dir / f"{name}.json", payload)
    title = f"{task.name}: behaviour shift{f' ({drift} drift)' if drift else ''}, {len(cut)} users"
    plot_methods(out_dir / f"{name}.png", title, results, primary)
    log.info(f"shift study: {out_dir / f'{name}.json'}, chart: {out_dir / f'{name}.png'}")
    return payload


def run_study(run: Run, max_users: int | None = None) -> dict:
    """`ownlm eval --study shift` (`ownlm.studies.STUDIES`)."""
    return shift_study(run, max_users=max_users)


def run_swap_study(run: Run, max_users: int | None = None) -> dict:
    """`ownlm eval --study shift-swap`: the study with the planted drift "swap"."""
    return shift_study(run, max_users=max_users, drift="swap")


def _spread(values: list[int]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _paired(run: Run, results, metric):
    """The paired bootstraps of `PAIRS` (every row answers the same queries in order)."""
    lo, hi = scale(run.task)
    by_name = {r.method: [(u, p, g) for _, u, p, g in r.predictions] for r in results}
    n_boot, seed = run.cfg.n_boot, run.cfg.boot_seed
    return [
        paired_bootstrap(
            run.task.kind,
            by_name[a],
            by_name[b],
            metric,
            (a, b),
            run.task.labels,
            lo,
            hi,
            n_boot,
            seed,
        )
        for a, b in PAIRS
    ]


def _table(run: Run, results, rows, primary) -> dict:
    """{row: {metrics, primary with interval, train seconds, answer seconds}}."""
    cells = interval_cells(results, run.task, primary, run.cfg.n_boot, run.cfg.boot_seed)
    table = {}
    for r in results:
        train = rows[r.method].train if r.method in rows else []
        table[r.method] = {
            "reference": r.is_reference,
            "metrics": r.metrics,
            "interval": r.intervals.get(primary),
            "cell": cells[r.method],
            "train_s_per_user": round(statistics.median(train), 3) if train else 0.0,
            "train_s_total": round(sum(train), 2),
            "answer_s": round(r.seconds, 2),
        }
    return table


def _print(run: Run, payload, comparisons) -> None:
    primary = payload["metric"]
    order = ", ".join(f"{n} by {o}" for o, n in payload["order"].items() if n)
    p = payload["protocol"]
    table = Table(
        title=(
            f"{payload['task']} · behaviour shift"
            + (f" ({payload['drift']} drift planted)" if payload["drift"] else "")
            + f" · {payload['users']} users ({order}) · "
            f"{p['old_items']['median']:g} old + {p['new_items']['median']:g} new items, "
            f"{payload['queries']} queries"
        )
    )
    for column in ("row", f"{primary} [95%]", "train s/user", "answer s"):
        table.add_column(column, justify="left" if column == "row" else "right")
    for name, row in payload["table"].items():
        label = f"[italic]{name} (reference)[/italic]" if row["reference"] else name
        train = f"{row['train_s_per_user']:.2f}" if row["train_s_total"] else "–"
        table.add_row(label, row["cell"], train, f"{row['answer_s']:.2f}")
    console.print(table)
    print_comparisons(comparisons, run.cfg.n_boot, run.cfg.boot_seed, console=console)
    if payload["short_users"]:
        console.print(f"left out (under 3 history items): {', '.join(payload['short_users'])}")


def _write(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    os.replace(tmp, path)  # readers never see a half-written file
