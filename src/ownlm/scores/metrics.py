"""LaMP metrics, equal to the official evaluation (LaMP repo, `eval/evaluation.py`).

- classification (LaMP-1, LaMP-2): strip, map each output to its index in the label
  list (-1 when absent), accuracy over all, sklearn macro F1 over the label indices.
- rating (LaMP-3): MAE and RMSE; an unparsable prediction counts as the worst score
  for that gold (1 or 5 for LaMP-3), generalized here to any [lo, hi] scale.
- generation (LaMP-4..7): ROUGE-1 and ROUGE-L F-measure.

`per_user_metrics` adds the per-user macro average (PEFT-U reports accuracy averaged
over users, so that very active users do not dominate).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from rouge_score import rouge_scorer
from sklearn.metrics import f1_score

from ownlm.data.tasks import check_kind
from ownlm.errors import DataError

LOWER_IS_BETTER = frozenset({"mae", "rmse", "user_mae"})
PRIMARY = {"classification": "accuracy", "rating": "mae", "generation": "rouge-1"}  # by kind


def scale(task) -> tuple[float | None, float | None]:
    """A rating task's [lo, hi] from its labels, which `parse_rating` needs for the worst
    case; (None, None) for other kinds."""
    if task.kind != "rating":
        return None, None
    values = [float(x) for x in task.labels]
    return min(values), max(values)


def _check_lengths(preds: Sequence[str], golds: Sequence[str]) -> None:
    if len(preds) != len(golds):
        raise DataError(f"got {len(preds)} predictions for {len(golds)} golds; pass one per query")
    if not golds:
        raise DataError("no predictions to evaluate; pass at least one (prediction, gold) pair")


def classification_metrics(
    preds: Sequence[str], golds: Sequence[str], labels: Sequence[str]
) -> dict[str, float]:
    """{"accuracy", "f1_macro"} as LaMP's `create_metric_f1_accuracy`."""
    _check_lengths(preds, golds)
    index = {lab: i for i, lab in enumerate(labels)}
    gold_ids = []
    for g in golds:
        if str(g).strip() not in index:
            raise DataError(f"gold label {g!r} is not one of the task's labels {list(labels)}")
        gold_ids.append(index[str(g).strip()])
    pred_ids = [index.get(str(p).strip(), -1) for p in preds]  # off-label output -> -1
    accuracy = float(np.mean([p == g for p, g in zip(pred_ids, gold_ids, strict=True)]))
    f1 = f1_score(
        gold_ids, pred_ids, labels=list(range(len(labels))), average="macro", zero_division=0
    )
    return {"accuracy": accuracy, "f1_macro": float(f1)}


def parse_rating(pred: str, gold: float, lo: float = 1.0, hi: float = 5.0) -> float:
    """float(pred), or the scale end farther from gold when pred is not a finite number.

    LaMP's rule for 1..5: `1.0 if abs(1 - gold) > abs(5 - gold) else 5.0`.
    (LaMP would keep "nan"/"inf"; here they count as unparsable, so the mean stays finite.)
    """
    try:
        value = float(str(pred).strip())
        if math.isfinite(value):
            return value
    except ValueError:
        pass
    return lo if abs(lo - gold) > abs(hi - gold) else hi


def rating_metrics(
    preds: Sequence[str], golds: Sequence[str], lo: float = 1.0, hi: float = 5.0
) -> dict[str, float]:
    """{"mae", "rmse"} as LaMP's `create_metric_mae_rmse`, on a [lo, hi] scale."""
    _check_lengths(preds, golds)
    try:
        gold_values = np.array([float(g) for g in golds])
    except ValueError as e:
        raise DataError(f"rating golds must be numbers: {e}") from None
    pred_values = np.array(
        [parse_rating(p, g, lo, hi) for p, g in zip(preds, gold_values, strict=True)]
    )
    err = pred_values - gold_values
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err**2)))}


def rouge_f(preds: Sequence[str], golds: Sequence[str]) -> tuple[list[float], list[float]]:
    """Per-pair ROUGE-1 and ROUGE-L F-measures (rouge_score, no stemmer, stripped texts)."""
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    r1, rl = [], []
    for p, g in zip(preds, golds, strict=True):
        s = scorer.score(str(g).strip(), str(p).strip())  # score(target, prediction)
        r1.append(s["rouge1"].fmeasure)
        rl.append(s["rougeL"].fmeasure)
    return r1, rl


def generation_metrics(preds: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
    """{"rouge-1", "rouge-L"}: the mean F-measure over pairs.

    The official script calls HF `evaluate`'s rouge, which wraps the same rouge_score
    scorer (use_stemmer=False) but aggregates with a `BootstrapAggregator` and reports
    its `mid`, the median of bootstrap resampled means: it equals this plain mean up to
    resampling noise (exactly, in expectation), and this mean is deterministic.
    """
    _check_lengths(preds, golds)
    r1, rl = rouge_f(preds, golds)
    return {"rouge-1": float(np.mean(r1)), "rouge-L": float(np.mean(rl))}


def compute_metrics(
    kind: str,
    preds: Sequence[str],
    golds: Sequence[str],
    labels: Sequence[str] = (),
    lo: float | None = None,
    hi: float | None = None,
) -> dict[str, float]:
    """Dispatch on the task kind. `lo`/`hi` bound a rating scale (default LaMP-3's 1..5)."""
    if check_kind(kind) == "classification":
        return classification_metrics(preds, golds, labels)
    if kind == "rating":
        return rating_metrics(preds, golds, 1.0 if lo is None else lo, 5.0 if hi is None else hi)
    return generation_metrics(preds, golds)


def per_user_metrics(
    kind: str,
    rows: Sequence[tuple[str, str, str]],
    labels: Sequence[str] = (),
    lo: float | None = None,
    hi: float | None = None,
) -> dict[str, float]:
    """Micro metrics over all rows plus the macro average over users (the PEFT-U way).

    rows: (user_id, pred, gold). Returns the keys of `compute_metrics` (micro) and
    "user_accuracy" (classification), "user_mae" (rating) or "user_rouge-1",
    "user_rouge-L" (generation): each user's metric, averaged with equal user weight;
    plus "n_users".
    """
    if not rows:
        raise DataError("no predictions to evaluate; pass at least one (user, pred, gold) row")
    users: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for user_id, pred, gold in rows:
        users[str(user_id)][0].append(pred)
        users[str(user_id)][1].append(gold)
    micro = compute_metrics(kind, [r[1] for r in rows], [r[2] for r in rows], labels, lo, hi)
    per_user = [compute_metrics(kind, p, g, labels, lo, hi) for p, g in users.values()]
    keys = {"classification": ["accuracy"], "rating": ["mae"], "generation": ["rouge-1", "rouge-L"]}
    macro = {f"user_{k}": float(np.mean([m[k] for m in per_user])) for k in keys[kind]}
    return {**micro, **macro, "n_users": float(len(users))}
