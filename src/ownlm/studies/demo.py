"""The demo: the whole pipeline on built-in data, one summary table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rich.table import Table

from ownlm.config import load_config
from ownlm.errors import NotFoundError, StoreError
from ownlm.evaluate.runner import evaluate_run
from ownlm.evaluate.scoring import PRIMARY
from ownlm.log import console
from ownlm.pipeline.stages import train_stages
from ownlm.run import Run
from ownlm.scores.bootstrap import Paired

COLUMNS = (
    "task",
    "backbone",
    "metric",
    "user-majority",
    "base",
    "RAG",
    "OPPU",
    "OPPU - base [95% CI]",
    "OPPU - user's own [95% CI]",
)


def run_demo(configs: list[str], output_dir: str = "runs", overwrite: bool = False) -> Table:
    """Pre-train, population LoRA, one LoRA per user, evaluation, for each config. A demo
    run trained with other settings (an older demo config) is refused as any run is;
    `overwrite` moves it aside to <run>.old-<time>/ first."""
    summary = Table(title="demo: does each user's own LoRA learn the user?")
    for col in COLUMNS:
        summary.add_column(col)
    for path in configs:
        if not Path(path).exists():
            raise NotFoundError(
                f"demo config {path} not found; run `ownlm demo` from the repository root"
            )
        run = Run(load_config(Path(path), [f"output_dir={output_dir}"]), overwrite=overwrite)
        console.rule(f"[bold]{run.cfg.name}[/]: {run.task.description}")
        train_stages(run, ["population", "users"], ["oppu", "peft"])
        evaluated = evaluate_run(run)
        missing = [r.method for r in evaluated if r.not_run]
        if missing:  # the demo trains every method it shows; a gap is a bug to report
            raise StoreError(f"demo {run.cfg.name}: {', '.join(missing)} did not run (see above)")
        results = {r.method: r.metrics for r in evaluated}
        metric = PRIMARY[run.task.kind]
        row = [results[m][metric] for m in ("user-majority", "base", "rag", "oppu")]
        paired = _paired(run.paths.eval / "results.json")
        summary.add_row(
            run.task.name,
            run.cfg.backbone,
            metric,
            *(f"{v:.3f}" for v in row),
            paired.get("base", f"{row[3] - row[1]:+.3f}"),
            paired.get("user-majority", "–"),
        )
    return summary


def _paired(results: Path) -> dict[str, str]:
    """{baseline: "+0.123 [+0.010, +0.240] *"}: OPPU minus each baseline from the
    evaluation's paired bootstrap over users (results.json), signed so that + is OPPU
    better (for MAE too); "*" marks a difference whose interval excludes 0."""
    payload = json.loads(results.read_text())
    out = {}
    fields = [f.name for f in dataclasses.fields(Paired)]
    for c in payload.get("comparisons") or []:
        if c["method"] != "oppu":
            continue
        diff, low, high = Paired(**{k: c[k] for k in fields}).gain
        star = " *" if c["significant"] else ""
        out[c["baseline"]] = f"{diff:+.3f} [{low:+.3f}, {high:+.3f}]{star}"
    return out
