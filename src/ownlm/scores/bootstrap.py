"""How far a score can be trusted: percentile bootstrap intervals that resample users.

Queries are nested in users (LaMP-2 has one query per user, StudEmo fifteen, and a
user's queries share their taste), so the unit resampled is the **user**: a resample
draws `n_users` users with replacement and brings all of each drawn user's queries; the
metric is recomputed on the pooled queries of the resample, so that corpus-level
metrics such as macro-F1 are resampled as they are computed, not averaged per user.

Draws, so that a reference computation can replay them: users are numbered in
first-seen order of the rows, and resample b draws users
`np.random.default_rng(seed).integers(0, n_users, size=(n_boot, n_users))[b]`.

Every metric of `per_user_metrics` is a function of per-user sums (correct answers and
query counts, absolute and squared errors, ROUGE F sums, the pooled confusion matrix for
macro-F1, one mean per user for the user-averaged metrics), so a resample's value is
its drawn users' sums added up: all resamples at once, as one matrix product. Any other
metric is recomputed on the pooled rows of each resample (`compute_metrics`).

A paired bootstrap of two methods on the same queries uses the same draws for both; the
difference is significant when its 95% interval excludes 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ownlm.errors import DataError
from ownlm.scores.metrics import LOWER_IS_BETTER, compute_metrics, parse_rating, rouge_f

N_BOOT = 1000
LEVEL = 0.95
Row = tuple[str, str, str]  # (user_id, prediction, gold), as `per_user_metrics`


@dataclass(frozen=True)
class Interval:
    """A score and its percentile bootstrap interval."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class Paired:
    """`method` minus `baseline` on `metric` over the same users' queries."""

    method: str
    baseline: str
    metric: str
    diff: float  # method's score minus baseline's (raw: for MAE, negative = method better)
    low: float
    high: float
    significant: bool  # the interval excludes 0

    @property
    def better(self) -> bool:
        """Whether the method scored better than the baseline (sign-aware for MAE/RMSE)."""
        return self.diff < 0 if self.metric in LOWER_IS_BETTER else self.diff > 0

    @property
    def gain(self) -> tuple[float, float, float]:
        """(difference, low, high) signed so that + means the method is better (for
        MAE/RMSE the raw difference negated, its interval turned round)."""
        sign = -1.0 if self.metric in LOWER_IS_BETTER else 1.0
        low, high = sorted((sign * self.low, sign * self.high))
        return sign * self.diff, low, high

    @property
    def verdict(self) -> str:
        if not self.significant:
            return "not significant"
        return f"{self.method} {'better' if self.better else 'worse'}, significant"


@dataclass
class _Stat:
    """A metric as a function of per-user sums: finish((B, k) pooled sums) -> (B,)."""

    sums: np.ndarray  # (U, k)
    finish: Callable[[np.ndarray], np.ndarray]


def _ratio(pooled: np.ndarray) -> np.ndarray:  # (B, 2) [sum, count] -> (B,) mean
    return pooled[:, 0] / pooled[:, 1]


def _groups(rows: Sequence[Row]) -> tuple[np.ndarray, int]:
    """(query -> user number, users in first-seen order), the numbering of the draws."""
    number: dict[str, int] = {}
    owner = np.array([number.setdefault(str(r[0]), len(number)) for r in rows])
    return owner, len(number)


def _per_user(owner: np.ndarray, n_users: int, values: np.ndarray) -> np.ndarray:
    """(U, k) sums of per-query `values` (Q, k) by user."""
    out = np.zeros((n_users, values.shape[1]))
    np.add.at(out, owner, values)
    return out


def _mean_stats(owner, n_users, values: dict[str, np.ndarray]) -> dict[str, _Stat]:
    """Micro means of per-query values, and the per-user macro mean as `user_<name>`."""
    ones = np.ones(len(owner))
    stats = {}
    for name, v in values.items():
        sums = _per_user(owner, n_users, np.stack([v, ones], axis=1))
        stats[name] = _Stat(sums, _ratio)
        user_means = sums[:, 0] / sums[:, 1]
        stats[f"user_{name}"] = _Stat(np.stack([user_means, np.ones(n_users)], axis=1), _ratio)
    return stats


def _f1_finish(n_labels: int) -> Callable[[np.ndarray], np.ndarray]:
    """Macro F1 over the label indices from the pooled confusion matrix, as sklearn's
    `f1_score(labels=range(L), average="macro", zero_division=0)`: a label never
    predicted nor gold scores 0."""

    def finish(pooled: np.ndarray) -> np.ndarray:
        conf = pooled.reshape(len(pooled), n_labels + 1, n_labels)  # (B, pred (+off), gold)
        tp = np.diagonal(conf[:, :n_labels, :], axis1=1, axis2=2)
        denom = conf[:, :n_labels, :].sum(2) + conf.sum(1)  # predicted + gold = 2tp+fp+fn
        f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp, dtype=float), where=denom > 0)
        return f1.mean(1)

    return finish


def _classification(rows, labels, owner, n_users) -> dict[str, _Stat]:
    index = {lab: i for i, lab in enumerate(labels)}
    n = len(labels)
    gold = np.array([index.get(str(g).strip(), -1) for _, _, g in rows])
    if (gold < 0).any():
        raise DataError(f"a gold label is not one of the task's labels {list(labels)}")
    pred = np.array([index.get(str(p).strip(), n) for _, p, _ in rows])  # off-label -> n
    stats = _mean_stats(owner, n_users, {"accuracy": (pred == gold).astype(float)})
    cells = np.zeros((len(rows), (n + 1) * n))
    cells[np.arange(len(rows)), pred * n + gold] = 1.0
    stats["f1_macro"] = _Stat(_per_user(owner, n_users, cells), _f1_finish(n))
    return {k: stats[k] for k in ("accuracy", "f1_macro", "user_accuracy")}


def _rating(rows, owner, n_users, lo: float, hi: float) -> dict[str, _Stat]:
    try:
        gold = np.array([float(g) for _, _, g in rows])
    except ValueError as e:
        raise DataError(f"rating golds must be numbers: {e}") from None
    pred = np.array([parse_rating(p, g, lo, hi) for (_, p, _), g in zip(rows, gold, strict=True)])
    err = pred - gold
    stats = _mean_stats(owner, n_users, {"mae": np.abs(err)})
    ones = np.ones(len(rows))
    squares = _per_user(owner, n_users, np.stack([err**2, ones], axis=1))
    stats["rmse"] = _Stat(squares, lambda pooled: np.sqrt(_ratio(pooled)))
    return {k: stats[k] for k in ("mae", "rmse", "user_mae")}


def user_statistics(
    kind: str,
    rows: Sequence[Row],
    labels: Sequence[str] = (),
    lo: float | None = None,
    hi: float | None = None,
) -> dict[str, _Stat]:
    """Every metric of `per_user_metrics` (but the count `n_users`) as per-user sums."""
    if not rows:
        raise DataError("no predictions to resample; pass at least one (user, pred, gold) row")
    owner, n_users = _groups(rows)
    if kind == "classification":
        return _classification(rows, labels, owner, n_users)
    if kind == "rating":
        return _rating(rows, owner, n_users, 1.0 if lo is None else lo, 5.0 if hi is None else hi)
    r1, rl = rouge_f([r[1] for r in rows], [r[2] for r in rows])
    return _mean_stats(owner, n_users, {"rouge-1": np.array(r1), "rouge-L": np.array(rl)})


def draw_counts(n_users: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """(n_boot, n_users): how often each user is drawn in each resample (the draws of the
    module docstring)."""
    if n_boot < 1:
        raise DataError(f"n_boot must be a positive integer but the value passed is {n_boot}")
    draws = np.random.default_rng(seed).integers(0, n_users, size=(n_boot, n_users))
    flat = (draws + n_users * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n_users).reshape(n_boot, n_users).astype(float)


def _replay(kind, rows, metric, counts, labels, lo, hi) -> np.ndarray:
    """The slow path for a metric without per-user sums: recompute on pooled rows."""
    owner, _ = _groups(rows)
    by_user = [np.flatnonzero(owner == u) for u in range(counts.shape[1])]
    values = []
    for drawn in counts.astype(int):
        idx = np.concatenate([np.repeat(by_user[u], c) for u, c in enumerate(drawn) if c])
        preds, golds = [rows[i][1] for i in idx], [rows[i][2] for i in idx]
        values.append(compute_metrics(kind, preds, golds, labels, lo, hi)[metric])
    return np.array(values)


def resampled(
    kind, rows, metric, counts, labels=(), lo=None, hi=None, stats=None
) -> tuple[float, np.ndarray]:
    """(the metric on `rows`, its value in each resample of `counts` (B, U)); `stats`:
    `user_statistics` of the rows when already computed."""
    stats = user_statistics(kind, rows, labels, lo, hi) if stats is None else stats
    if metric in stats:
        stat = stats[metric]
        point = float(stat.finish(stat.sums.sum(0, keepdims=True))[0])
        return point, stat.finish(counts @ stat.sums)
    point = compute_metrics(kind, [r[1] for r in rows], [r[2] for r in rows], labels, lo, hi)
    return float(point[metric]), _replay(kind, rows, metric, counts, labels, lo, hi)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_intervals(
    kind: str,
    rows: Sequence[Row],
    labels: Sequence[str] = (),
    lo: float | None = None,
    hi: float | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
    metrics: Sequence[str] | None = None,
) -> dict[str, Interval]:
    """{metric: Interval} for `metrics` (default: all of `per_user_metrics` but n_users)."""
    stats = user_statistics(kind, rows, labels, lo, hi)
    counts = draw_counts(_groups(rows)[1], n_boot, seed)
    out = {}
    for name in metrics or list(stats):
        point, values = resampled(kind, rows, name, counts, labels, lo, hi, stats)
        out[name] = Interval(point, *_percentiles(values, level))
    return out


def paired_bootstrap(
    kind: str,
    rows: Sequence[Row],
    baseline_rows: Sequence[Row],
    metric: str,
    names: tuple[str, str] = ("method", "baseline"),
    labels: Sequence[str] = (),
    lo: float | None = None,
    hi: float | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> Paired:
    """The difference `rows` minus `baseline_rows` on `metric`, both resampled with the
    same draws of users. Both must answer the same queries in the same order."""
    if len(rows) != len(baseline_rows) or any(
        (a[0], a[2]) != (b[0], b[2]) for a, b in zip(rows, baseline_rows, strict=True)
    ):
        raise DataError(
            f"{names[0]} and {names[1]} did not answer the same queries (same users and "
            "golds, in the same order); a paired comparison needs them aligned"
        )
    counts = draw_counts(_groups(rows)[1], n_boot, seed)
    point_a, a = resampled(kind, rows, metric, counts, labels, lo, hi)
    point_b, b = resampled(kind, baseline_rows, metric, counts, labels, lo, hi)
    low, high = _percentiles(a - b, level)
    return Paired(*names, metric, point_a - point_b, low, high, not low <= 0.0 <= high)
