"""Non-parametric personal knowledge: each user's retrieval index and profile, and the
prompts built from them, identical at training, evaluation and serving (OPPU, Sec. 3.2).
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
    texts = [task.item_text(it) for it in items]
    outputs = [it.fields.get(task.output_field, "") for it in items]
    profile = build_profile(task.kind, outputs, texts, labels=task.labels)
    return UserContext(user, UserIndex(items, texts), profile)


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


def population_pairs(task, ctx: UserContext, k: int, use_profile: bool, rng: random.Random):
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


def personal_prompt(
    task,
    ctx: UserContext,
    task_input: str,
    k: int,
    use_profile: bool,
    search: str | None = None,
    exclude_ids: frozenset[str] = frozenset(),
) -> str:
    """The prompt for one input: the history items BM25 finds for `search` (default: the
    input itself), the profile, then the input. Evaluation and serving both build it."""
    query = task_input if search is None else search
    retrieved = ctx.index.top_k(query, k, exclude_ids=exclude_ids) if k else []
    return task.build_prompt(task_input, retrieved, ctx.profile if use_profile else None)


def query_prompt(task, ctx: UserContext, query: Query, k: int, use_profile: bool) -> str:
    """The prompt for one test query (its own id never retrieved)."""
    return personal_prompt(
        task, ctx, query.input, k, use_profile, task.query_text(query), frozenset({query.id})
    )
