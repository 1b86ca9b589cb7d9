import pytest

from ownlm.errors import ConfigError, DataError
from ownlm.scores.references import (
    population_majority,
    reference_predictions,
    user_majority,
)

STARS = ["1", "2", "3", "4", "5"]


def test_classification_majorities():
    labels = ["action", "comedy", "drama"]
    assert (
        population_majority(["drama", "comedy", "drama", "action"], "classification", labels)
        == "drama"
    )
    # tie comedy/drama -> the task's label order
    assert user_majority(["drama", "comedy"], "classification", labels) == "comedy"


def test_rating_mean_rounded_to_nearest_label():
    # mean (1+5+4+4)/4 = 3.5 -> tie between 3 and 4 -> the lower, 3
    assert population_majority(["1", "5", "4", "4"], "rating", STARS) == "3"
    # mean (5+5+4)/3 = 4.67 -> 5
    assert user_majority(["5", "5", "4"], "rating", STARS) == "5"
    # annotator scale -3..3: mean (-3 - 2 + 1)/3 = -1.33 -> -1
    assert user_majority(["-3", "-2", "1"], "rating", [str(i) for i in range(-3, 4)]) == "-1"


def test_generation_references():
    train = ["the cat sat", "the dog ran far", "a cat ran"]
    # median length 3; counts: the 2, cat 2, ran 2, then a/dog/far/sat 1 -> ties alphabetical
    assert population_majority(train, "generation") == "cat ran the"
    hist = ["stocks fall hard", "stocks rise", "bonds fall hard"]
    # mean ROUGE-1 F of "stocks fall hard" vs the others is highest (shares 2/3 with each)
    assert user_majority(hist, "generation") == "stocks fall hard"
    assert user_majority(["only one"], "generation") == "only one"


def test_reference_predictions_layout():
    got = reference_predictions(
        "rating", ["1", "5", "4", "4"], [(["5", "5", "4"], 2), ([], 1)], STARS
    )
    assert got == {
        "population": ["3", "3", "3"],
        "user": ["5", "5", "3"],
    }  # no history -> population


def test_errors():
    with pytest.raises(DataError):
        population_majority([], "classification")
    with pytest.raises(ConfigError):
        user_majority(["a"], "ranking")
