"""Non-parametric personal knowledge: each user's retrieval index and profile, and the
prompts built from them, identical at training and inference (OPPU, Sec. 3.2).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ownlm.data.records import Query, User
from ownlm.retrieval.bm25 import UserIndex
from ownlm.retrieval.profiles import build_profile


@dataclass
class UserContext:
    user: User
    index: UserIndex
    profile: str


def user_context(task, user: User) -> UserContext:
    """BM25 over the user's own history and a statistical profile of it."""
    items = list(user.history)
    index = UserIndex(items, [task.item_text(it) for it in items])
    outputs = [it.fields.get(task.output_field, "") for it in items]
    profile = build_profile(
        task.kind, outputs, [task.item_text(it) for it in items], labels=task.labels
    )
    return UserContext(user, index, profile)


def training_pairs(task, ctx: UserContext, k: int, use_profile: bool) -> list[tuple[str, str]]:
    """(prompt, target) for each history item. The i-th item may retrieve only items
    before it, so nothing from its own future leaks into its prompt."""
    pairs = []
    for i, item in enumerate(ctx.user.history):
        task_input, target = task.item_pair(item)
        retrieved = ctx.index.top_k(task.item_text(item), k, before=i) if k else []
        pairs.append(
            (task.build_prompt(task_input, retrieved, ctx.profile if use_profile else None), target)
        )
    return pairs


def mixed_population_pairs(task, ctx: UserContext, k: int, use_profile: bool, rng: random.Random):
    """Stage-1 pairs with each prompt drawn from the three formats (bare, retrieval,
    retrieval + profile), so the merged base reads every format the methods use."""
    pairs = []
    for i, item in enumerate(ctx.user.history):
        task_input, target = task.item_pair(item)
        fmt = rng.randrange(3) if k else 0
        retrieved = ctx.index.top_k(task.item_text(item), k, before=i) if fmt else []
        profile = ctx.profile if (fmt == 2 and use_profile) else None
        pairs.append((task.build_prompt(task_input, retrieved, profile), target))
    return pairs


def query_prompt(task, ctx: UserContext, query: Query, k: int, use_profile: bool) -> str:
    """The prompt for one query: its retrieved history items and profile, then the input."""
    retrieved = ctx.index.top_k(task.query_text(query), k, exclude_ids={query.id}) if k else []
    return task.build_prompt(query.input, retrieved, ctx.profile if use_profile else None)
