"""Deterministic splits: users into train/dev/test, a user's items into history/queries.

Conventions of the shared evaluation data (see the data README): the first 70% of users
of a file, in file order, are dev/train users and the last 30% are test users; StudEmo
and TweetEval split each annotator's items 80/20 (history/queries) with a fixed seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import TypeVar

from ownlm.data.records import Dataset, Item, User
from ownlm.errors import ConfigError

T = TypeVar("T")
ROLES = ("train", "dev", "test")


@dataclass
class UserSplit:
    """Users of a dataset split three ways; every user is in exactly one list."""

    train: list[User] = field(default_factory=list)
    dev: list[User] = field(default_factory=list)
    test: list[User] = field(default_factory=list)


def _check_frac(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be in [0, 1); got {value}. Use e.g. {name}=0.3")


def split_users(
    dataset: Dataset, test_frac: float = 0.3, dev_frac: float = 0.0, seed: int | None = None
) -> UserSplit:
    """Split users into train / dev / test.

    Without `seed` the file order is kept: train first, then dev, and the last
    `test_frac` of users are test (the shared data's 70/30 convention). With `seed`, the
    users are shuffled by `random.Random(seed)` first. Counts round to the nearest user.
    """
    _check_frac("test_frac", test_frac)
    _check_frac("dev_frac", dev_frac)
    users = list(dataset.users)
    if seed is not None:
        random.Random(seed).shuffle(users)
    n = len(users)
    n_test = round(n * test_frac)
    n_dev = round(n * dev_frac)
    n_train = n - n_test - n_dev
    if n_train < 1:
        raise ConfigError(
            f"test_frac={test_frac} and dev_frac={dev_frac} leave no train user out of {n} "
            f"users of {dataset.source or dataset.task}; lower test_frac (e.g. --set "
            "test_frac=0.3) or use more users (max_users)"
        )
    return UserSplit(
        train=users[:n_train],
        dev=users[n_train : n_train + n_dev],
        test=users[n_train + n_dev :],
    )


def split_by_roles(dataset: Dataset, roles: dict[str, list[str]]) -> tuple[UserSplit, list[str]]:
    """The split that `roles` ({"train": [ids], "dev": [...], "test": [...]}, as a run
    recorded it) gives `dataset`'s users, each role in the data's order; and the ids of
    the users it names no role for. An id in `roles` that the data lacks (a forgotten
    user) is simply absent."""
    role_of = {uid: role for role in ROLES for uid in roles.get(role, [])}
    split, unknown = UserSplit(), []
    for user in dataset.users:
        role = role_of.get(user.user_id)
        if role is None:
            unknown.append(user.user_id)
        else:
            getattr(split, role).append(user)
    return split, unknown


def split_items(items: list[T], query_frac: float = 0.2, seed: int = 0) -> tuple[list[T], list[T]]:
    """Split one user's items into (history, queries).

    Chronological when every item is an `Item` with a date: the latest items become
    queries (nothing from the future leaks into the history). Otherwise a shuffle by
    `random.Random(seed)`. With two or more items, each side keeps at least one.
    """
    _check_frac("query_frac", query_frac)
    items = list(items)
    n = len(items)
    if n == 0:
        return [], []
    dated = all(isinstance(it, Item) and it.date for it in items)
    if dated:
        order = sorted(range(n), key=lambda i: (items[i].date, i))  # type: ignore[union-attr]
    else:
        order = list(range(n))
        random.Random(seed).shuffle(order)
    n_query = round(n * query_frac)
    if n >= 2:
        n_query = min(max(n_query, 1), n - 1)
    else:
        n_query = 0
    cut = n - n_query
    return [items[i] for i in order[:cut]], [items[i] for i in order[cut:]]


def truncate_history(user: User, keep: int) -> User:
    """A copy of `user` keeping only the last `keep` history items (active-level studies)."""
    if keep < 0:
        raise ConfigError(f"keep must be >= 0; got {keep}")
    history = user.history[len(user.history) - keep :] if keep else []
    return replace(user, history=list(history), queries=list(user.queries))


def time_order(items: list[Item]) -> tuple[list[Item], str]:
    """A user's history oldest first, and how it was ordered: "date" when every item
    has a date (sorted by it; equal dates keep file order), else "file" (as given: the
    loader's order, for data without dates)."""
    items = list(items)
    if items and all(it.date for it in items):
        return sorted(items, key=lambda it: it.date or ""), "date"  # stable sort
    return items, "file"


def shift_split(
    items: list[T], old_frac: float = 0.5, max_queries: int = 5
) -> tuple[list[T], list[T], list[T]] | None:
    """A time-ordered history cut for the behaviour-shift study: (old, new, held).

    `old` is the first `old_frac` of the items (at least one); the rest is the newer
    part, whose last `min(max_queries, half of it)` items are `held` out as queries and
    whose items before those are `new` (what an update trains on). None when the
    history is too short for one item in each part (fewer than 3 items)."""
    if not 0.0 < old_frac < 1.0:
        raise ConfigError(f"old_frac must be in (0, 1); got {old_frac}. Use e.g. 0.5")
    if max_queries < 1:
        raise ConfigError(f"max_queries must be >= 1; got {max_queries}")
    n = len(items)
    n_old = min(max(round(n * old_frac), 1), n - 2)
    n_held = min(max_queries, (n - n_old) // 2)
    if n_old < 1 or n_held < 1:
        return None
    cut = n - n_held
    return list(items[:n_old]), list(items[n_old:cut]), list(items[cut:])
