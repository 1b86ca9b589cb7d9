"""Splits: file-order default, seeded shuffles, chronological item splits."""

from __future__ import annotations

import pytest

from ownlm.data.records import Dataset, Item, User
from ownlm.data.splits import split_items, split_users, truncate_history
from ownlm.errors import ConfigError


def dataset(n: int) -> Dataset:
    return Dataset(
        "LaMP-2", [User(str(i), [Item(f"{i}-{j}", {}) for j in range(5)]) for i in range(n)]
    )


def ids(users: list[User]) -> list[str]:
    return [u.user_id for u in users]


def test_default_keeps_file_order_last_30_percent_test() -> None:
    split = split_users(dataset(10))
    assert ids(split.train) == [str(i) for i in range(7)]
    assert ids(split.test) == ["7", "8", "9"] and split.dev == []


def test_dev_and_seeded_shuffle_deterministic() -> None:
    a = split_users(dataset(20), test_frac=0.25, dev_frac=0.25, seed=3)
    b = split_users(dataset(20), test_frac=0.25, dev_frac=0.25, seed=3)
    assert (ids(a.train), ids(a.dev), ids(a.test)) == (ids(b.train), ids(b.dev), ids(b.test))
    assert len(a.train) == 10 and len(a.dev) == 5 and len(a.test) == 5
    assert sorted(ids(a.train) + ids(a.dev) + ids(a.test), key=int) == [str(i) for i in range(20)]
    assert ids(a.test) != ids(split_users(dataset(20), 0.25, 0.25).test)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"test_frac": 1.2},
        {"test_frac": -0.1},
        {"dev_frac": 1.0},
        {"test_frac": 0.6, "dev_frac": 0.4},
    ],
)
def test_bad_fractions(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="frac"):
        split_users(dataset(5), **kwargs)


def test_split_items_chronological_when_dated() -> None:
    items = [Item(str(i), {}, date=f"2020-01-{10 - i:02d}") for i in range(10)]
    history, queries = split_items(items, query_frac=0.2)
    assert [q.id for q in queries] == ["1", "0"]  # the latest dates
    assert max(h.date for h in history) < min(q.date for q in queries)


def test_split_items_seeded_and_bounded() -> None:
    items = [Item(str(i), {}) for i in range(10)]
    assert split_items(items, seed=1) == split_items(items, seed=1)
    assert split_items(items, seed=1) != split_items(items, seed=2)
    h, q = split_items(items, query_frac=0.2)
    assert len(h) == 8 and len(q) == 2 and {x.id for x in h}.isdisjoint(x.id for x in q)
    assert [len(x) for x in split_items(items[:2], query_frac=0.01)] == [1, 1]
    assert [len(x) for x in split_items(items[:2], query_frac=0.9)] == [1, 1]
    assert [len(x) for x in split_items(items[:1])] == [1, 0]
    assert split_items([]) == ([], [])


def test_truncate_history_keeps_last() -> None:
    user = dataset(1).users[0]
    short = truncate_history(user, 2)
    assert [it.id for it in short.history] == ["0-3", "0-4"] and len(user.history) == 5
    assert truncate_history(user, 0).history == []
    assert len(truncate_history(user, 99).history) == 5
    with pytest.raises(ConfigError):
        truncate_history(user, -1)
