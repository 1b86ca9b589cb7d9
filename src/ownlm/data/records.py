"""Typed records shared by every loader, task and stage.

A user owns a history (items they produced: a tagged movie, a headline they wrote,
a label they gave a text) and queries (what the model must answer for them).
Items keep their raw fields so that task templates decide how to render them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Item:
    """One history item, e.g. LaMP-2 `{"tag", "description"}` or a rated text."""

    id: str
    fields: dict[str, str]
    date: str | None = None

    def get(self, name: str) -> str:
        return self.fields[name]


@dataclass(frozen=True)
class Query:
    """One question for a user: the exact task prompt and, when known, the gold output.

    `fields` keeps the query's raw item (e.g. the description alone) when the loader has
    it, so that retrieval can use the bare content instead of the templated prompt.
    """

    id: str
    input: str
    gold: str | None = None
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class User:
    user_id: str
    history: list[Item]
    queries: list[Query] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The adapter name of this user (PEFT-style state keyed by name)."""
        return f"user:{self.user_id}"

    def history_digest(self) -> str:
        """sha256 of the history a user adapter is trained on (ids, fields, dates, in
        order): a stored adapter whose recorded digest differs is stale."""
        items = [[it.id, it.fields, it.date] for it in self.history]
        blob = json.dumps(items, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()


@dataclass
class Dataset:
    """Users of one task. `task` is a task name registered in `ownlm.data.tasks`."""

    task: str
    users: list[User]
    source: str = ""

    def user(self, user_id: str) -> User:
        for u in self.users:
            if u.user_id == str(user_id):
                return u
        raise KeyError(f"user {user_id!r} is not in dataset {self.source or self.task}")
