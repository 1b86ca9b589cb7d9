import numpy as np
import pytest

from ownlm.errors import DataError
from ownlm.scores.metrics import classification_metrics, rating_metrics
from ownlm.scores.tfidf import TfidfUser, _nearest_label, tfidf_predictions

FILLER = "movie plot actor scene story music ending cast script camera".split()
SCALE = [str(i) for i in range(-3, 4)]


def _texts(word, n, rng):
    """n texts: the word that carries the label and three shared filler words."""
    return [" ".join([word, *rng.choice(FILLER, 3, replace=False)]) for _ in range(n)]


def test_a_generous_rater_is_scored_right_only_with_the_user_offset():
    rng = np.random.default_rng(0)
    # train users: good -> 1, bad -> -1; the test user rates everything two points higher
    train = [(t, "1") for t in _texts("good", 60, rng)]
    train += [(t, "-1") for t in _texts("bad", 60, rng)]
    history = [(t, "3") for t in _texts("good", 8, rng)]
    history += [(t, "1") for t in _texts("bad", 8, rng)]
    queries = _texts("good", 5, rng) + _texts("bad", 5, rng)
    golds = ["3"] * 5 + ["1"] * 5
    got = tfidf_predictions("rating", SCALE, train, [TfidfUser(history, queries)])
    plain = rating_metrics(got["tfidf"], golds, -3, 3)["mae"]
    offset = rating_metrics(got["tfidf-user"], golds, -3, 3)["mae"]
    assert offset < 0.5 < 1.5 < plain
    assert set(got["tfidf"] + got["tfidf-user"]) <= set(SCALE)  # rounded to the scale


def test_a_user_indicator_learns_the_users_own_class_prior():
    rng = np.random.default_rng(0)
    labels = ["pos", "neg"]
    # train users call "meh" texts neg; this user calls them pos
    train = [(t, "neg") for t in _texts("meh", 50, rng)]
    train += [(t, "pos") for t in _texts("great", 50, rng)]
    train += [(t, "neg") for t in _texts("awful", 50, rng)]
    history = [(t, "pos") for t in _texts("meh", 10, rng) + _texts("great", 5, rng)]
    user = TfidfUser(history, _texts("meh", 5, rng))
    got = tfidf_predictions("classification", labels, train, [user])
    golds = ["pos"] * 5
    plain = classification_metrics(got["tfidf"], golds, labels)["accuracy"]
    offset = classification_metrics(got["tfidf-user"], golds, labels)["accuracy"]
    assert plain == 0.0 and offset == 1.0


def test_a_user_without_history_gets_the_train_users_model_and_no_offset():
    rng = np.random.default_rng(1)
    train = [(t, "2") for t in _texts("good", 20, rng)]
    train += [(t, "-2") for t in _texts("bad", 20, rng)]
    users = [TfidfUser([], _texts("good", 3, rng)), TfidfUser([], [])]
    got = tfidf_predictions("rating", SCALE, train, users)
    assert got["tfidf"] == got["tfidf-user"] and len(got["tfidf"]) == 3


def test_one_class_only_and_kinds_that_are_not_label_tasks():
    got = tfidf_predictions("classification", ["x", "y"], [("a b", "x")], [TfidfUser([], ["c"])])
    assert got == {"tfidf": ["x"], "tfidf-user": ["x"]}
    with pytest.raises(DataError, match="label tasks"):
        tfidf_predictions("generation", [], [("a", "b")], [])
    with pytest.raises(DataError, match="no train items"):
        tfidf_predictions("rating", SCALE, [], [])


def test_scores_round_to_the_nearest_label_ties_to_the_lower():
    scores = np.array([-7.0, -0.5, 0.4, 2.5, 9.0])
    assert _nearest_label(scores, SCALE) == ["-3", "-1", "0", "2", "3"]
