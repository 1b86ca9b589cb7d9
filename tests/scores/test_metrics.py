"""Golden tests: expected numbers are computed by hand (arithmetic in comments/code) and,
for F1 and ROUGE, with the library calls the official LaMP script makes, pinned as literals."""

import math

import pytest
from rouge_score import rouge_scorer
from sklearn.metrics import f1_score

from ownlm.errors import ConfigError, DataError
from ownlm.scores.metrics import (
    classification_metrics,
    compute_metrics,
    generation_metrics,
    per_user_metrics,
    rating_metrics,
)

LABELS = ["sci-fi", "comedy", "action", "drama"]
GOLDS = ["sci-fi", "comedy", "comedy", "action", "drama", "sci-fi"]
PREDS = ["sci-fi", " comedy ", "action", "action", "horror", "comedy"]  # "horror" -> -1


def test_classification_golden():
    got = classification_metrics(PREDS, GOLDS, LABELS)
    # pred ids 0,1,2,2,-1,1 vs gold ids 0,1,1,2,3,0: positions 0,1,3 right -> 3/6
    assert got["accuracy"] == pytest.approx(3 / 6)
    # per-label F1: sci-fi P=1 R=1/2 -> 2/3; comedy P=1/2 R=1/2 -> 1/2;
    # action P=1/2 R=1 -> 2/3; drama 0. Macro = (2/3 + 1/2 + 2/3 + 0) / 4 = 11/24
    assert got["f1_macro"] == pytest.approx(11 / 24)
    # The official call: f1 over label indices with labels=range(len(labels)), average=macro.
    official = f1_score(
        [0, 1, 1, 2, 3, 0], [0, 1, 2, 2, -1, 1], labels=[0, 1, 2, 3], average="macro"
    )
    assert official == pytest.approx(0.4583333333333333, abs=1e-12)
    assert got["f1_macro"] == pytest.approx(0.4583333333333333, abs=1e-12)


def test_classification_rejects_bad_input():
    with pytest.raises(DataError):
        classification_metrics(["a"], ["unknown"], ["a", "b"])
    with pytest.raises(DataError):
        classification_metrics(["a", "b"], ["a"], ["a", "b"])
    with pytest.raises(DataError):
        classification_metrics([], [], ["a"])


def test_rating_golden_with_lamp_worst_case_rule():
    got = rating_metrics(["4", "x", "2.5", "five", "1"], ["5", "2", "3", "4", "1"])
    # "x" for gold 2: |1-2|=1 > |5-2|=3 is false -> 5.0, error 3
    # "five" for gold 4: |1-4|=3 > |5-4|=1 -> 1.0, error 3
    errors = [1, 3, 0.5, 3, 0]
    assert got["mae"] == pytest.approx(sum(errors) / 5)  # 1.5
    assert got["rmse"] == pytest.approx(math.sqrt(sum(e * e for e in errors) / 5))  # sqrt(3.85)
    # Tie (gold 3): LaMP picks 5.0.
    assert rating_metrics(["?"], ["3"])["mae"] == pytest.approx(2.0)
    # "nan" counts as unparsable: the mean stays finite.
    assert rating_metrics(["nan"], ["1"])["mae"] == pytest.approx(4.0)


def test_rating_annotator_scales():
    # -3..3, gold -2: |-3+2|=1 > |3+2|=5 false -> 3, error 5
    assert rating_metrics(["??"], ["-2"], lo=-3, hi=3)["mae"] == pytest.approx(5.0)
    # 0..3, gold 3: |0-3|=3 > 0 -> 0, error 3
    assert compute_metrics("rating", ["bad"], ["3"], lo=0, hi=3)["mae"] == pytest.approx(3.0)


GEN_PREDS = ["the cat sat on the mat", "hello there", "mat on sat cat"]
GEN_GOLDS = ["a cat sat on a mat", "hello world there", "cat sat on mat"]


def test_generation_golden():
    got = generation_metrics(GEN_PREDS, GEN_GOLDS)
    # pair 1: 4 shared unigrams of 6/6 -> F=2/3; LCS "cat sat on mat" = 4 -> 2/3
    # pair 2: P=2/2, R=2/3 -> F=0.8; LCS "hello there" -> 0.8
    # pair 3: all 4 unigrams shared -> 1.0; LCS length 1 -> P=R=1/4 -> 0.25
    assert got["rouge-1"] == pytest.approx((2 / 3 + 0.8 + 1.0) / 3)
    assert got["rouge-L"] == pytest.approx((2 / 3 + 0.8 + 0.25) / 3)
    # The library the official script's HF `evaluate` rouge wraps, pinned.
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    scores = [scorer.score(g, p) for p, g in zip(GEN_PREDS, GEN_GOLDS, strict=True)]
    assert sum(s["rouge1"].fmeasure for s in scores) / 3 == pytest.approx(0.8222222222222223)
    assert got["rouge-1"] == pytest.approx(0.8222222222222223, abs=1e-12)
    assert got["rouge-L"] == pytest.approx(0.5722222222222223, abs=1e-12)


def test_per_user_macro_and_micro():
    rows = [("u1", "4", "5"), ("u1", "5", "5"), ("u2", "1", "3")]
    got = per_user_metrics("rating", rows)
    assert got["mae"] == pytest.approx((1 + 0 + 2) / 3)  # micro
    assert got["user_mae"] == pytest.approx((0.5 + 2.0) / 2)  # macro over users
    assert got["n_users"] == 2
    rows = [("a", "x", "x"), ("a", "y", "x"), ("a", "x", "x"), ("a", "x", "x"), ("b", "y", "x")]
    got = per_user_metrics("classification", rows, labels=["x", "y"])
    assert got["accuracy"] == pytest.approx(3 / 5)
    assert got["user_accuracy"] == pytest.approx((3 / 4 + 0) / 2)
    got = per_user_metrics("generation", [("a", "hi there", "hi there"), ("b", "no", "yes")])
    assert got["user_rouge-1"] == pytest.approx(0.5)


def test_dispatcher():
    assert compute_metrics("classification", PREDS, GOLDS, LABELS)["accuracy"] == 0.5
    assert set(compute_metrics("generation", ["a b"], ["a b"])) == {"rouge-1", "rouge-L"}
    with pytest.raises(ConfigError):
        compute_metrics("ranking", ["a"], ["a"])
