"""Trivial references every results table shows next to the methods.

A personalized method is only interesting if it beats both:

- population: one prediction for everybody, from the training users' outputs —
  the majority label; for ratings the mean score rounded to the nearest label; for
  generation a "frequent-words" text: the L most frequent words of all training
  outputs, most frequent first, where L is the median output length in words (the
  best a model can do on ROUGE-1 knowing only corpus statistics, nothing of the user
  or the input).
- user: one prediction per user, from their own history outputs — their majority
  label, their mean score rounded to the nearest label, or for generation their most
  ROUGE-central past output (the history output with the highest mean ROUGE-1 F
  against their other outputs). A user without history gets the population one.

Neither looks at the query input: that is what makes them references.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from statistics import median

from rouge_score.tokenizers import DefaultTokenizer

from ownlm.data.tasks import check_kind
from ownlm.errors import DataError

MAX_CENTRAL = 200  # most recent outputs compared for the user's central output: O(n^2)


def _majority(outputs: Sequence[str], labels: Sequence[str]) -> str:
    counts = Counter(o.strip() for o in outputs)
    rank = {lab: i for i, lab in enumerate(labels)}  # ties: the task's label order
    return min(counts, key=lambda lab: (-counts[lab], rank.get(lab, len(rank)), lab))


def _mean_rating(outputs: Sequence[str], labels: Sequence[str]) -> str:
    values = []
    for o in outputs:
        try:
            values.append(float(o))
        except ValueError:
            continue
    if not values:
        raise DataError("no numeric rating among the outputs; rating outputs must be numbers")
    avg = sum(values) / len(values)
    numeric = [lab for lab in labels if _is_number(lab)]
    if not numeric:
        return f"{round(avg):d}"
    # Nearest label to the mean; tie -> the lower label.
    return min(numeric, key=lambda lab: (abs(float(lab) - avg), float(lab)))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _frequent_words(outputs: Sequence[str]) -> str:
    tokens = [o.split() for o in outputs]
    length = max(1, round(median(len(t) for t in tokens)))
    counts = Counter(w.lower() for t in tokens for w in t)
    ranked = sorted(counts, key=lambda w: (-counts[w], w))
    return " ".join(ranked[:length])


def _rouge1_f(a: Counter[str], b: Counter[str]) -> float:
    overlap = sum((a & b).values())
    if overlap == 0:
        return 0.0
    p, r = overlap / sum(b.values()), overlap / sum(a.values())
    return 2 * p * r / (p + r)


def _central_output(outputs: Sequence[str]) -> str:
    """The output with the highest mean ROUGE-1 F against the others (ties: most recent)."""
    recent = list(outputs)[-MAX_CENTRAL:]
    if len(recent) == 1:
        return recent[0]
    tok = DefaultTokenizer(use_stemmer=False)  # the tokenizer of the ROUGE metric itself
    bags = [Counter(tok.tokenize(o)) for o in recent]
    scores = [
        sum(_rouge1_f(bags[i], bags[j]) for j in range(len(bags)) if j != i)
        for i in range(len(bags))
    ]
    best = max(range(len(recent)), key=lambda i: (scores[i], i))
    return recent[best]


def population_majority(train_outputs: Sequence[str], kind: str, labels: Sequence[str] = ()) -> str:
    """The one prediction for every query, from all training users' outputs."""
    check_kind(kind)
    outputs = [o.strip() for o in train_outputs if o and o.strip()]
    if not outputs:
        raise DataError(
            "no training outputs for the population reference; pass train users' outputs"
        )
    if kind == "classification":
        return _majority(outputs, labels)
    if kind == "rating":
        return _mean_rating(outputs, labels)
    return _frequent_words(outputs)


def user_majority(
    history_outputs: Sequence[str], kind: str, labels: Sequence[str] = (), fallback: str = ""
) -> str:
    """One user's prediction from their own history outputs; `fallback` when they have none."""
    check_kind(kind)
    outputs = [o.strip() for o in history_outputs if o and o.strip()]
    if not outputs:
        return fallback
    if kind == "classification":
        return _majority(outputs, labels)
    if kind == "rating":
        try:
            return _mean_rating(outputs, labels)
        except DataError:
            return fallback
    return _central_output(outputs)


def reference_predictions(
    kind: str,
    train_outputs: Sequence[str],
    users: Sequence[tuple[Sequence[str], int]],
    labels: Sequence[str] = (),
) -> dict[str, list[str]]:
    """Predictions of both references for every query, in order.

    users: (history_outputs, n_queries) per test user, in the order their queries are
    evaluated. Returns {"population": [...], "user": [...]}, each of length
    sum(n_queries): a user's prediction is repeated for each of their queries.
    """
    population = population_majority(train_outputs, kind, labels)
    pop_preds: list[str] = []
    user_preds: list[str] = []
    for history, n_queries in users:
        pop_preds += [population] * n_queries
        user_preds += [user_majority(history, kind, labels, fallback=population)] * n_queries
    return {"population": pop_preds, "user": user_preds}
