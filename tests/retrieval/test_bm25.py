from types import SimpleNamespace

import pytest

from ownlm.data.records import Item
from ownlm.errors import ConfigError, DataError
from ownlm.retrieval.bm25 import UserIndex, retrieve_for


def _items(texts):
    return [Item(id=str(i), fields={"text": t}) for i, t in enumerate(texts)]


TEXTS = [
    "space aliens invade earth in a sci-fi epic",
    "a romantic comedy about two chefs",
    "aliens and robots fight in space",
    "a quiet drama about a family farm",
]


def test_top_k_ranks_by_bm25():
    index = UserIndex(_items(TEXTS), TEXTS)
    got = index.top_k("aliens in space", k=2)
    assert {it.id for it in got} == {"0", "2"}
    assert index.top_k("chefs comedy", k=1)[0].id == "1"


def test_before_excludes_the_future():
    index = UserIndex(_items(TEXTS), TEXTS)
    # For the 3rd item (position 2) only items 0 and 1 may be retrieved.
    got = index.top_k("aliens robots space", k=5, before=2)
    assert [it.id for it in got] == ["0", "1"]
    assert index.top_k("aliens", k=3, before=0) == []


def test_exclude_ids_never_leak():
    index = UserIndex(_items(TEXTS), TEXTS)
    got = index.top_k("aliens in space", k=4, exclude_ids={"2"})
    assert "2" not in {it.id for it in got}
    assert got[0].id == "0"


def test_ties_and_zero_scores_prefer_recent_items():
    texts = ["same words", "same words", "other"]
    index = UserIndex(_items(texts), texts)
    assert [it.id for it in index.top_k("same words", k=2)] == ["1", "0"]
    # No overlap at all: k items still come back, most recent first (as rank_bm25's get_top_n).
    assert [it.id for it in index.top_k("zebra", k=2)] == ["2", "1"]


def test_edge_cases():
    assert UserIndex([], []).top_k("x", k=3) == []
    one = UserIndex(_items(["only item"]), ["only item"])
    assert [it.id for it in one.top_k("item", k=3)] == ["0"]
    assert one.top_k("item", k=0) == []
    # Texts without a single token (empty, stopwords, punctuation) still work.
    blank = ["", "the and of", "!!"]
    assert len(UserIndex(_items(blank), blank).top_k("the", k=2)) == 2
    assert len(UserIndex(_items(TEXTS), TEXTS).top_k("", k=2)) == 2
    with pytest.raises(DataError):
        UserIndex(_items(TEXTS), TEXTS[:2])
    with pytest.raises(ConfigError):
        one.top_k("item", k=-1)


def test_retrieve_for_uses_task_item_text():
    task = SimpleNamespace(item_text=lambda item: item.fields["text"])
    got = retrieve_for(task, _items(TEXTS), "family farm drama", k=1)
    assert got[0].id == "3"


def test_fast_for_a_large_history():
    import time

    texts = [f"item {i} about topic{i % 17} and word{i % 5}" for i in range(400)]
    index = UserIndex(_items(texts), texts)
    t0 = time.perf_counter()
    for i in range(400):
        index.top_k(texts[i], k=1, before=i)
    assert time.perf_counter() - t0 < 2.0
