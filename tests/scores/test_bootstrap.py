import numpy as np
import pytest
from sklearn.metrics import f1_score

from ownlm.errors import DataError
from ownlm.scores.bootstrap import (
    bootstrap_intervals,
    draw_counts,
    paired_bootstrap,
    resampled,
)
from ownlm.scores.metrics import per_user_metrics

LABELS = ["a", "b", "c"]
# 5 users with 1..4 queries; "zz" is off the label list (counts as wrong, as LaMP)
CLASS_ROWS = [
    ("u1", "a", "a"),
    ("u1", "b", "a"),
    ("u2", "c", "c"),
    ("u3", "a", "b"),
    ("u3", "b", "b"),
    ("u3", "zz", "c"),
    ("u3", "c", "c"),
    ("u4", "b", "b"),
    ("u5", "a", "c"),
    ("u5", "a", "a"),
]
RATING_ROWS = [("u1", "3", "5"), ("u1", "4", "4"), ("u2", "1", "2"), ("u3", "x", "2")]
RATING_ROWS += [("u3", "2", "2"), ("u4", "5", "1"), ("u5", "3", "3"), ("u5", "2", "4")]


def _reference(rows, n_boot, seed, metric):
    """The interval by an explicit loop over resamples, written apart from the module:
    draw users (first-seen order) with the documented generator call, pool their rows,
    score the pool directly."""
    users = list(dict.fromkeys(r[0] for r in rows))
    draws = np.random.default_rng(seed).integers(0, len(users), size=(n_boot, len(users)))
    values = []
    for drawn in draws:
        pool = [r for u in drawn for r in rows if r[0] == users[u]]
        values.append(metric(pool))
    return tuple(np.percentile(values, [2.5, 97.5]))


def _accuracy(pool):
    return np.mean([p == g for _, p, g in pool])


def _f1(pool):
    index = {lab: i for i, lab in enumerate(LABELS)}
    golds = [index[g] for _, _, g in pool]
    preds = [index.get(p, -1) for _, p, _ in pool]
    return f1_score(golds, preds, labels=[0, 1, 2], average="macro", zero_division=0)


def _mae(pool):
    values = []
    for _, p, g in pool:
        try:
            values.append(abs(float(p) - float(g)))
        except ValueError:  # LaMP: the scale end farther from the gold
            values.append(max(abs(1 - float(g)), abs(5 - float(g))))
    return np.mean(values)


def _rmse(pool):
    return np.sqrt(np.mean([_mae([r]) ** 2 for r in pool]))


@pytest.mark.parametrize(
    "rows,kind,metric,fn",
    [
        (CLASS_ROWS, "classification", "accuracy", _accuracy),
        (CLASS_ROWS, "classification", "f1_macro", _f1),
        (RATING_ROWS, "rating", "mae", _mae),
        (RATING_ROWS, "rating", "rmse", _rmse),
    ],
)
def test_interval_equals_an_explicit_loop_over_resampled_users(rows, kind, metric, fn):
    labels = LABELS if kind == "classification" else ()
    got = bootstrap_intervals(kind, rows, labels, n_boot=300, seed=7)[metric]
    assert got.value == pytest.approx(fn(rows))
    assert (got.low, got.high) == pytest.approx(_reference(rows, 300, 7, fn))


def test_user_averaged_metric_counts_a_user_drawn_twice_twice():
    # the per-user mean of each drawn user, averaged over the draws (with repeats)
    got = bootstrap_intervals("classification", CLASS_ROWS, LABELS, n_boot=200, seed=3)
    users = list(dict.fromkeys(r[0] for r in CLASS_ROWS))
    draws = np.random.default_rng(3).integers(0, 5, size=(200, 5))
    means = {u: np.mean([p == g for uu, p, g in CLASS_ROWS if uu == u]) for u in users}
    expected = np.percentile([np.mean([means[users[i]] for i in d]) for d in draws], [2.5, 97.5])
    assert (got["user_accuracy"].low, got["user_accuracy"].high) == pytest.approx(expected)


def test_point_values_are_the_metrics_of_the_table():
    for kind, rows, labels in [
        ("classification", CLASS_ROWS, LABELS),
        ("rating", RATING_ROWS, ()),
        ("generation", [("u1", "the cat", "a cat"), ("u2", "dog", "the dog ran")], ()),
    ]:
        table = per_user_metrics(kind, rows, labels)
        got = bootstrap_intervals(kind, rows, labels, n_boot=20)
        assert set(got) == set(table) - {"n_users"}
        for name, interval in got.items():
            assert interval.value == pytest.approx(table[name])


def test_a_user_with_many_queries_moves_together():
    # one user with 50 queries, all right; nine users with one query each, all wrong.
    rows = [("big", "a", "a")] * 50 + [(f"s{i}", "b", "a") for i in range(9)]
    counts = draw_counts(10, n_boot=500, seed=0)
    _, values = resampled("classification", rows, "accuracy", counts, LABELS)
    # resampling users: the big user's 50 queries come in or out together, so a
    # resample's accuracy is 50k / (50k + m) with k + m = 10 draws
    whole_users = {round(50 * k / (50 * k + 10 - k), 9) for k in range(11)}
    assert {round(v, 9) for v in values} <= whole_users
    low, high = np.percentile(values, [2.5, 97.5])
    assert low == 0.0  # ~35% of resamples miss the big user: they score 0
    assert high > 0.95


def test_paired_difference_is_significant_only_when_it_is_clear():
    golds = [(f"u{i}", "a") for i in range(30) for _ in range(2)]
    good = [(u, "a" if j % 10 else "b", g) for j, (u, g) in enumerate(golds)]  # 90% right
    bad = [(u, "a" if j % 5 == 0 else "b", g) for j, (u, g) in enumerate(golds)]  # 20% right
    clear = paired_bootstrap("classification", good, bad, "accuracy", ("oppu", "base"), LABELS)
    assert clear.diff == pytest.approx(0.7) and clear.low > 0 and clear.significant
    assert clear.better and clear.verdict == "oppu better, significant"
    # the same answers but for one query each way: the interval straddles 0
    near = list(good)
    near[0], near[1] = (near[0][0], "a", "a"), (near[1][0], "b", "a")
    tie = paired_bootstrap("classification", near, good, "accuracy", ("oppu", "rag"), LABELS)
    assert tie.low <= 0 <= tie.high and not tie.significant
    assert tie.verdict == "not significant"


def test_lower_is_better_reads_a_negative_mae_difference_as_better():
    rows = [(f"u{i}", "3", "3") for i in range(20)]
    worse = [(f"u{i}", "5", "3") for i in range(20)]
    paired = paired_bootstrap("rating", rows, worse, "mae", ("oppu", "base"), n_boot=100)
    assert paired.diff == pytest.approx(-2.0) and paired.significant and paired.better
    assert paired.verdict == "oppu better, significant"
    flipped = paired_bootstrap("rating", worse, rows, "mae", ("base", "oppu"), n_boot=100)
    assert not flipped.better and flipped.verdict == "base worse, significant"


def test_paired_needs_the_same_queries_and_n_boot_must_be_positive():
    with pytest.raises(DataError, match="same queries"):
        paired_bootstrap("classification", CLASS_ROWS, CLASS_ROWS[:-1], "accuracy")
    with pytest.raises(DataError, match="n_boot must be a positive integer"):
        bootstrap_intervals("classification", CLASS_ROWS, LABELS, n_boot=0)


def test_a_metric_without_per_user_sums_is_recomputed_on_the_pooled_rows():
    from ownlm.scores import bootstrap

    counts = draw_counts(5, n_boot=50, seed=1)
    fast = resampled("classification", CLASS_ROWS, "f1_macro", counts, LABELS)[1]
    slow = bootstrap._replay("classification", CLASS_ROWS, "f1_macro", counts, LABELS, None, None)
    np.testing.assert_allclose(fast, slow)


def test_a_thousand_resamples_are_fast():
    import time

    rng = np.random.default_rng(0)
    rows = [(f"u{rng.integers(200)}", LABELS[rng.integers(3)], "a") for _ in range(3000)]
    start = time.perf_counter()
    bootstrap_intervals("classification", rows, LABELS, n_boot=1000)
    assert time.perf_counter() - start < 2.0


def test_gain_is_signed_so_that_plus_means_the_method_is_better():
    from ownlm.scores.bootstrap import Paired

    mae = Paired("oppu", "base", "mae", -0.2, -0.3, -0.1, True)  # lower MAE: oppu better
    assert mae.gain == (0.2, 0.1, 0.3) and mae.better
    acc = Paired("oppu", "base", "accuracy", -0.1, -0.2, 0.05, False)
    assert acc.gain == (-0.1, -0.2, 0.05) and not acc.better
