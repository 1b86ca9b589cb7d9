"""The PEFT-methods study (issue #11, item 3; OPPU Sec. 5: OPPU is "versatile with
different PEFT methods"): the same users' OPPU adapters trained with LoRA, IA3 and
prompt tuning (`user.method`, `adapters.methods`), side by side.

    ownlm eval -c C --study peft-methods [--study-users N]

Protocol: for each method, each test user's adapter is trained in memory on their
history exactly as the user stage trains it (`oppu.sequential.fit_user`: OPPU's prompts,
the run's budget, tuned or configured, the same lr and epochs for every method), saved
to a temporary folder to be measured, scored on the run's test queries with retrieval
and profile (the OPPU row), and taken off. Nothing of the run's stores is read or
written. Per method: the primary metric with its 95% bootstrap interval over users, the
paired difference to LoRA on the same users, trainable parameters (PEFT's count; on the
MiniLM backbone it includes the per-user label head every method trains), bytes per
user (the saved adapter_model.safetensors) and the median seconds of training per user.
Prompt tuning needs a causal backbone: on MiniLM its row is not run, and says why.

Writes <run>/eval/peft_methods.json and peft_methods.png (bars with error bars).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from ownlm.adapters.lora import detach
from ownlm.adapters.methods import METHODS, NAMES, PROMPT_ON_ENCODER, trainable_parameters
from ownlm.adapters.peft_io import WEIGHTS_FILE
from ownlm.evaluate.intervals import interval_cells, print_comparisons
from ownlm.evaluate.report import MethodResult, NotRun, plot_methods
from ownlm.evaluate.scoring import (
    PRIMARY,
    predict_by_user,
    references,
    scale,
    test_queries,
    tfidf_references,
)
from ownlm.log import console, get_logger
from ownlm.oppu.sequential import fit_user
from ownlm.retrieval.prompts import user_context
from ownlm.scores.bootstrap import paired_bootstrap
from ownlm.train.budget import user_budget

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)
BASELINE = "lora"  # every other method's paired difference is to it


def row_name(method: str) -> str:
    """The table's row of a method: "oppu-lora", "oppu-ia3", "oppu-prompt"."""
    return f"oppu-{method}"


@dataclass
class Costs:
    """What one method's users cost, one entry per user trained."""

    train_s: list[float] = field(default_factory=list)
    params: list[int] = field(default_factory=list)
    bytes: list[int] = field(default_factory=list)

    def summary(self) -> dict:
        if not self.train_s:
            return {"users_trained": 0}
        return {
            "users_trained": len(self.train_s),
            "trainable_params": max(self.params),  # the same for every user
            "bytes_per_user": round(statistics.median(self.bytes)),
            "train_s_per_user": round(statistics.median(self.train_s), 3),
            "train_s_total": round(sum(self.train_s), 2),
        }


def _method_row(run: Run, backbone, rows, contexts, method: str, scratch: Path):
    """(the method's OPPU result, its costs): each user trained, measured, scored, detached."""
    costs = Costs()

    @contextmanager
    def answer_with(user):
        if not user.history:  # nothing to train on: the base answers, as in `ownlm eval`
            yield backbone.model
            return
        start = time.perf_counter()
        model, _ = fit_user(run, backbone, user, "oppu", contexts[user.user_id], method=method)
        try:
            costs.train_s.append(time.perf_counter() - start)
            costs.params.append(trainable_parameters(model))
            out = scratch / method / str(len(costs.bytes))  # user ids need not be file names
            model.save_pretrained(str(out))
            costs.bytes.append((out / WEIGHTS_FILE).stat().st_size)
            yield model
        finally:
            detach(backbone, model)

    return predict_by_user(run, backbone, rows, contexts, row_name(method), answer_with), costs


def _not_run(method: str, reason: str) -> MethodResult:
    return MethodResult(row_name(method), {}, not_run=NotRun(reason))


def _paired(run: Run, results, metric: str):
    """Each method minus LoRA, paired over the same users and queries."""
    lo, hi = scale(run.task)
    scored = {r.method: r for r in results if r.predictions and not r.not_run}
    base = scored.get(row_name(BASELINE))
    if base is None:
        return []
    out = []
    for method in METHODS:
        other = scored.get(row_name(method))
        if method == BASELINE or other is None:
            continue
        rows = [[(u, p, g) for _, u, p, g in r.predictions] for r in (other, base)]
        out.append(
            paired_bootstrap(
                run.task.kind,
                *rows,
                metric,
                (other.method, base.method),
                run.task.labels,
                lo,
                hi,
                run.cfg.n_boot,
                run.cfg.boot_seed,
            )
        )
    return out


def peft_methods_study(
    run: Run, max_users: int | None = None, methods=METHODS, out_dir: Path | None = None
) -> dict:
    """The study on the run's first `max_users` test users (all: None), for `methods`:
    prints the table and the differences to LoRA, writes peft_methods.json and .png to
    `out_dir` (default <run>/eval) and returns the JSON's content."""
    task, primary = run.task, PRIMARY[run.task.kind]
    rows = test_queries(run)
    keep = list(dict.fromkeys(u.user_id for u, _ in rows))[:max_users]
    rows = [(u, q) for u, q in rows if u.user_id in keep]
    backbone = run.base()
    budget = user_budget(run, "oppu", backbone.fingerprint())
    contexts = {u.user_id: user_context(task, u) for u, _ in rows}
    results = references(run, rows) + tfidf_references(run, rows)
    costs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="ownlm-peft-methods-") as scratch:
        for method in methods:
            if method == "prompt" and backbone.kind != "causal":
                results.append(_not_run(method, PROMPT_ON_ENCODER))
                costs[method] = {"users_trained": 0}
                continue
            result, spent = _method_row(run, backbone, rows, contexts, method, Path(scratch))
            results.append(result)
            costs[method] = spent.summary()
            log.info(f"peft-methods {method}: {result.metrics.get(primary)} {costs[method]}")
    comparisons = _paired(run, results, primary)
    payload = {
        "task": task.name,
        "backbone": run.cfg.backbone,
        "metric": primary,
        "users": len(keep),
        "queries": len(rows),
        "budget": {"lr": budget.lr, "epochs": budget.epochs, "source": budget.source},
        "settings": {
            "lora": {"r": run.cfg.user.r, "alpha": run.cfg.user.alpha},
            "prompt": {"virtual_tokens": run.cfg.user.virtual_tokens},
        },
        "table": _table(run, results, costs, comparisons, primary),
        "comparisons": [{**asdict(c), "better": c.better} for c in comparisons],
        "predictions": {r.method: r.predictions for r in results if r.predictions},
    }
    _print(payload, comparisons, run)
    out_dir = out_dir or run.paths.eval
    _write(out_dir / "peft_methods.json", payload)
    title = f"{task.name} ({run.cfg.backbone})"  # plot_methods adds the metric and bars
    plot_methods(out_dir / "peft_methods.png", title, results, primary)
    log.info(f"peft-methods study: {out_dir / 'peft_methods.json'}, chart: peft_methods.png")
    return payload


def run_study(run: Run, max_users: int | None = None) -> dict:
    """`ownlm eval --study peft-methods` (`ownlm.studies.STUDIES`)."""
    return peft_methods_study(run, max_users=max_users)


def _table(run: Run, results, costs, comparisons, primary) -> dict:
    """{row: {reference?, metrics, interval, cell, vs LoRA, costs, not run reason}}."""
    cells = interval_cells(results, run.task, primary, run.cfg.n_boot, run.cfg.boot_seed)
    diffs = {c.method: c for c in comparisons}
    table = {}
    for r in results:
        method = r.method.removeprefix("oppu-") if r.method.startswith("oppu-") else None
        diff = diffs.get(r.method)
        table[r.method] = {
            "reference": r.is_reference,
            "method": method,
            "metrics": r.metrics,
            "interval": r.intervals.get(primary),
            "cell": cells.get(r.method, "–"),
            "vs_lora": None
            if diff is None
            else {"diff": diff.diff, "low": diff.low, "high": diff.high, "verdict": diff.verdict},
            "answer_s": round(r.seconds, 2),
            **(costs.get(method, {}) if method else {}),
            "not_run": r.not_run.reason if r.not_run else None,
        }
    return table


def _print(payload: dict, comparisons, run: Run) -> None:
    primary = payload["metric"]
    b = payload["budget"]
    table = Table(
        title=(
            f"{payload['task']} · {payload['backbone']} · OPPU by PEFT method · "
            f"{payload['users']} users, {payload['queries']} queries · lr {b['lr']:.3g}, "
            f"{b['epochs']:g} epochs ({b['source']})"
        )
    )
    columns = ("row", f"{primary} [95%]", "- lora [95%]", "trainable", "bytes/user", "train s/user")
    for column in columns:
        table.add_column(column, justify="left" if column == "row" else "right")
    for name, row in payload["table"].items():
        if row["reference"]:
            table.add_row(f"[italic]{name} (reference)[/italic]", row["cell"], "", "", "", "")
            continue
        if row["not_run"]:
            table.add_row(name, "[bold red]not run[/]", "", "", "", "")
            continue
        d = row["vs_lora"]
        vs = f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" if d else ""
        table.add_row(
            f"{name} ({NAMES[row['method']]})",
            row["cell"],
            vs,
            f"{row.get('trainable_params', 0):,}",
            f"{row.get('bytes_per_user', 0):,}",
            f"{row.get('train_s_per_user', 0):.2f}",
        )
    console.print(table)
    for name, row in payload["table"].items():
        if row["not_run"]:
            console.print(f"{name} not run: {row['not_run']}", markup=False, soft_wrap=True)
    print_comparisons(comparisons, run.cfg.n_boot, run.cfg.boot_seed, console=console)


def _write(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    os.replace(tmp, path)  # readers never see a half-written file
