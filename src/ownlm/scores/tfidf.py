"""A strong non-neural reference for label tasks: a TF-IDF linear model.

For each test user, one model is fit on the train users' history items plus that user's
own history (an item's input text -> its label) and answers the user's queries:

- classification: `TfidfVectorizer` + `LogisticRegression` (scikit-learn defaults);
- rating: `TfidfVectorizer` + `Ridge`, its score rounded to the nearest label of the
  scale (so clipped to it: MAE is scored on labels).

And the same with a **per-user offset** (`tfidf-user`):

- rating: the mean residual of the model on the user's own history items (gold minus
  predicted score) is added to every score of theirs before rounding;
- classification: one extra feature, 1 on the user's own items and queries and 0 on
  the train users' items, so the model learns the user's own shift of the class scores
  (a per-user intercept in logit space, L2-regularized as every weight: with few items
  it stays near the population's).

A user without history gets the model of the train users alone, without offset. The
models read the query input, unlike the majority references; a personalized LLM that
loses to them has not used its parameters well. Nothing here is tuned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from threadpoolctl import threadpool_limits  # installed with scikit-learn

from ownlm.errors import DataError

Pair = tuple[str, str]  # (input text, label)
NAMES = ("tfidf", "tfidf-user")  # the reference rows: plain, with the per-user offset


@dataclass(frozen=True)
class TfidfUser:
    """One test user: their history pairs and the input texts of their queries."""

    history: Sequence[Pair]
    queries: Sequence[str]


def _nearest_label(scores: np.ndarray, labels: Sequence[str]) -> list[str]:
    """Each score as the nearest label of the scale (ties: the lower), as the references."""
    values = np.array([float(lab) for lab in labels])
    order = np.argsort(values, kind="stable")
    values, ordered = values[order], [labels[i] for i in order]
    picks = np.abs(scores[:, None] - values[None, :]).argmin(1)  # first = lower on a tie
    return [ordered[i] for i in picks]


def _with_indicator(x, on: bool):
    """Append the user-indicator column (all 1 when `on`, else 0) to a sparse matrix."""
    column = sparse.csr_matrix(np.full((x.shape[0], 1), 1.0 if on else 0.0))
    return sparse.hstack([x, column], format="csr")


def _classify(train: Sequence[Pair], user: TfidfUser) -> tuple[list[str], list[str]]:
    texts = [t for t, _ in train] + [t for t, _ in user.history]
    y = [lab for _, lab in train] + [lab for _, lab in user.history]
    if len(set(y)) == 1:  # one class only: logistic regression cannot fit
        return [y[0]] * len(user.queries), [y[0]] * len(user.queries)
    vec = TfidfVectorizer()
    x = vec.fit_transform(texts)
    q = vec.transform(user.queries)
    plain = LogisticRegression(max_iter=1000).fit(x, y).predict(q).tolist()
    if not user.history:
        return plain, plain
    own = np.r_[np.zeros(len(train)), np.ones(len(user.history))][:, None]
    x_user = sparse.hstack([x, sparse.csr_matrix(own)], format="csr")
    offset = LogisticRegression(max_iter=1000).fit(x_user, y)
    return plain, offset.predict(_with_indicator(q, True)).tolist()


def _rate(
    train: Sequence[Pair], user: TfidfUser, labels: Sequence[str]
) -> tuple[list[str], list[str]]:
    texts = [t for t, _ in train] + [t for t, _ in user.history]
    y = np.array([float(lab) for _, lab in train] + [float(lab) for _, lab in user.history])
    vec = TfidfVectorizer()
    model = Ridge().fit(vec.fit_transform(texts), y)
    scores = model.predict(vec.transform(user.queries))
    offset = 0.0
    if user.history:
        own = model.predict(vec.transform([t for t, _ in user.history]))
        offset = float(np.mean(y[len(train) :] - own))  # mean residual on the user's items
    return _nearest_label(scores, labels), _nearest_label(scores + offset, labels)


def tfidf_predictions(
    kind: str, labels: Sequence[str], train: Sequence[Pair], users: Sequence[TfidfUser]
) -> dict[str, list[str]]:
    """{"tfidf": [...], "tfidf-user": [...]}: one prediction per query, users in order.

    train: (input text, label) of the train users' history items.
    """
    if kind not in ("classification", "rating"):
        raise DataError(f"the TF-IDF reference is for label tasks, not {kind!r} ones")
    if not train:
        raise DataError("no train items for the TF-IDF reference; pass train users' items")
    plain: list[str] = []
    offset: list[str] = []
    # Small fits: one BLAS thread is fastest, and on a busy machine several threads per
    # fit are ~50x slower (LaMP-2: 5.7 s instead of 0.1 s per logistic regression).
    with threadpool_limits(limits=1):
        for user in users:
            if not user.queries:
                continue
            fit = _classify(train, user) if kind == "classification" else _rate(train, user, labels)
            plain += fit[0]
            offset += fit[1]
    return dict(zip(NAMES, (plain, offset), strict=True))
