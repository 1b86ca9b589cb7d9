"""Issue #24's targets, read off evaluated runs: does each method beat what it must?

For every run directory given (default: the three `ownlm demo` runs under runs/), the
run's eval/results.json predictions are compared pairwise with the paired bootstrap of
`ownlm eval` (users resampled, the same draws for both methods, 95% intervals):

- generation and label tasks: OPPU vs the user's own reference (majority label, mean
  score or most central output) and OPPU vs the non-personalized base, each must be
  better and significant;
- label tasks: the base vs the population reference (must be better), and OPPU vs
  TF-IDF + per-user offset (must not be significantly worse).

    python bench/demo_targets.py [RUN_DIR ...] [--n-boot 1000]

Prints a markdown table, one row per (run, comparison), with "met" or "not met": a
target missed is reported, never hidden. A run or method missing is an error line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ownlm.data.tasks import get_task  # noqa: E402
from ownlm.scores.bootstrap import paired_bootstrap  # noqa: E402
from ownlm.scores.metrics import PRIMARY, scale  # noqa: E402

DEMO_RUNS = ("runs/demo-tags", "runs/demo-headlines", "runs/demo-rewrite")
# (method, baseline, what is required): "better" = better and significant; "not worse" =
# not significantly worse
GENERATION = (("oppu", "user-majority", "better"), ("oppu", "base", "better"))
LABEL = (
    *GENERATION,
    ("base", "population-majority", "better"),
    ("oppu", "tfidf-user", "not worse"),
)


def rows_of(result: dict) -> list[tuple[str, str, str]]:
    """(user, prediction, gold) per query, as the bootstrap takes them."""
    return [(p["user_id"], p["output"], p["gold"]) for p in result["predictions"]]


def compare(run_dir: Path, n_boot: int) -> list[list[str]]:
    """The target rows of one evaluated run."""
    path = run_dir / "eval" / "results.json"
    if not path.exists():
        sys.exit(f"error: {path} not found; run `ownlm demo` (or ownlm train + ownlm eval) first")
    payload = json.loads(path.read_text())
    task = get_task(payload["task"])
    metric = PRIMARY[task.kind]
    lo, hi = scale(task)
    by_method = {r["method"]: r for r in payload["results"] if not r.get("not_run")}
    out = []
    for method, baseline, need in GENERATION if task.kind == "generation" else LABEL:
        missing = [m for m in (method, baseline) if m not in by_method]
        if missing:
            sys.exit(f"error: {run_dir}: no result for {', '.join(missing)} in {path}")
        a, b = rows_of(by_method[method]), rows_of(by_method[baseline])
        p = paired_bootstrap(
            task.kind, a, b, metric, (method, baseline), task.labels, lo, hi, n_boot
        )
        diff, low, high = p.gain  # + = method better
        met = low > 0 if need == "better" else high > 0
        out.append(
            [
                f"{run_dir.name} ({metric})",
                f"{method} vs {baseline}",
                f"{diff:+.3f} [{low:+.3f}, {high:+.3f}]",
                need,
                "met" if met else "**not met**",
            ]
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", default=list(DEMO_RUNS))
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args()
    print("| run | comparison | difference (+ = better) [95% CI] | required | |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        for row in compare(Path(run), args.n_boot):
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
