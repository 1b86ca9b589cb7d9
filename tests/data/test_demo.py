"""Demo data: determinism, sizes, planted preferences (trivial baselines vs an oracle) and
planted groups (demo-tags: a group habit plus a personal one; demo-headlines: styles)."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Callable
from itertools import combinations

from ownlm.data.demo import (
    ASPECTS,
    HEADLINE_STYLES,
    TAG_GROUPS,
    TOPICS,
    TagHabit,
    group_habits,
    make_demo_headlines,
    make_demo_tags,
    plant_tag_habits,
    style_headline,
)
from ownlm.data.records import Dataset, Query, User
from ownlm.data.tasks import DEMO_TAGS, get_task

Predict = Callable[[User, Query], str | None]


def accuracy(data: Dataset, predict: Predict) -> float:
    pairs = [(u, q) for u in data.users for q in u.queries]
    return sum(predict(u, q) == q.gold for u, q in pairs) / len(pairs)


def test_demo_is_deterministic_and_seeded() -> None:
    assert make_demo_tags(seed=1) == make_demo_tags(seed=1)
    assert make_demo_tags(seed=1) != make_demo_tags(seed=2)
    assert make_demo_headlines(seed=1) == make_demo_headlines(seed=1)
    assert make_demo_headlines(seed=1) != make_demo_headlines(seed=2)


def test_demo_shapes_and_sizes() -> None:
    tags = make_demo_tags(n_users=6, history=8, queries=3)
    assert tags.task == "demo-tags" and len(tags.users) == 6
    task = get_task("demo-tags")
    for user in tags.users:
        assert len(user.history) == 8 and len(user.queries) == 3
        for it in user.history:
            assert it.fields["tag"] in DEMO_TAGS
            assert 15 <= len(it.fields["description"].split()) <= 45
            task.item_pair(it)  # every item is a valid training pair
        assert all(q.input == task.query_prompt(q.fields) for q in user.queries)
    heads = make_demo_headlines(n_users=6, history=8, queries=3)
    assert heads.task == "demo-headlines" and len(heads.users[0].queries) == 3
    for user in heads.users:
        for it in user.history:
            assert 5 <= len(it.fields["title"].split()) <= 12
            assert it.fields["title"] in get_task("demo-headlines").item_pair(it)


def test_tags_personalization_is_needed_and_learnable() -> None:
    """Baselines pinned in docs/data.md (seed 0, 40 users x 5 queries)."""
    data = make_demo_tags()
    population = Counter(it.fields["tag"] for u in data.users for it in u.history)
    by_content: dict[tuple[str, str], Counter] = {}
    for u in data.users:
        for it in u.history:
            by_content.setdefault((it.fields["genre"], it.fields["mood"]), Counter())[
                it.fields["tag"]
            ] += 1

    def majority(_: User, __: Query) -> str:
        return population.most_common(1)[0][0]

    def content_majority(_: User, q: Query) -> str:  # best non-personalized use of content
        return by_content[(q.fields["genre"], q.fields["mood"])].most_common(1)[0][0]

    def user_majority(u: User, _: Query) -> str:
        return Counter(it.fields["tag"] for it in u.history).most_common(1)[0][0]

    def learned_habit(u: User, q: Query) -> str | None:
        """Learn the aspect and vocabulary from the user's history only."""
        best = None
        for aspect in ("genre", "mood"):
            table: dict[str, Counter] = {}
            for it in u.history:
                table.setdefault(it.fields[aspect], Counter())[it.fields["tag"]] += 1
            fit = sum(c.most_common(1)[0][1] for c in table.values())
            if best is None or fit > best[0]:
                best = (fit, aspect, table)
        _, aspect, table = best
        seen = table.get(q.fields[aspect])
        return seen.most_common(1)[0][0] if seen else None

    scores = {
        f.__name__: accuracy(data, f)
        for f in (majority, content_majority, user_majority, learned_habit)
    }
    assert scores["majority"] <= 0.2
    assert scores["content_majority"] <= 0.3
    assert scores["user_majority"] <= 0.35
    assert scores["learned_habit"] >= 0.8
    assert scores["learned_habit"] >= scores["user_majority"] + 0.4


def test_headlines_personalization_is_needed_and_learnable() -> None:
    data = make_demo_headlines()
    styles = Counter(u.history[0].fields["style"] for u in data.users)
    assert set(styles) <= set(HEADLINE_STYLES) and len(styles) >= 4

    def facts_of(q: Query) -> dict[str, str]:
        # the oracle reads the article's key facts back from the template text
        text = q.fields["text"]
        day, rest = text[3:].split(", ", 1)
        number = text.split("It took ")[1].split(" ")[0]
        topic = text.split("Local ")[1].split(" ")[0]
        for entity in TOPICS[topic][0]:
            for verb, base, obj in TOPICS[topic][1]:
                if rest.startswith(f"{entity} {verb} {obj},"):
                    return {
                        "topic": topic,
                        "entity": entity,
                        "verb": verb,
                        "base": base,
                        "object": obj,
                        "number": number,
                        "day": day,
                    }
        raise AssertionError(text)

    def best_single_style(_: User, q: Query) -> str:  # a non-personalized model's best
        return style_headline(styles.most_common(1)[0][0], facts_of(q))

    def user_style(u: User, q: Query) -> str:  # the style, learned from history
        return style_headline(u.history[0].fields["style"], facts_of(q))

    def copy_last_headline(u: User, _: Query) -> str:  # user-only, ignoring the article
        return u.history[-1].fields["title"]

    assert accuracy(data, best_single_style) <= 0.3
    assert accuracy(data, copy_last_headline) <= 0.1
    assert accuracy(data, user_style) == 1.0


def habits_of(data: Dataset, seed: int = 0) -> dict[str, TagHabit]:
    """The habits make_demo_tags planted (its first draws from random.Random(seed))."""
    habits = plant_tag_habits(random.Random(seed), len(data.users))
    return {u.user_id: h for u, h in zip(data.users, habits, strict=True)}


def test_tags_groups_share_a_habit_and_members_add_a_personal_one() -> None:
    data = make_demo_tags()
    habits = habits_of(data)
    groups = {h.group: h for h in group_habits(random.Random(0))}
    assert len(groups) == TAG_GROUPS
    assert Counter(h.group for h in habits.values()) == {g: 10 for g in groups}  # balanced
    for a, b in combinations(groups.values(), 2):  # groups of one aspect differ everywhere
        if a.aspect == b.aspect:
            assert all(a.mapping[v] != b.mapping[v] for v in ASPECTS[a.aspect])
    for group in groups.values():
        members = [h for h in habits.values() if h.group == group.group]
        for h in members:
            assert h.aspect == group.aspect and len(set(h.mapping.values())) == 4  # injective
            shared = {v for v in ASPECTS[h.aspect] if v != h.personal}
            assert all(h.mapping[v] == group.mapping[v] for v in shared)
            assert h.mapping[h.personal] not in group.mapping.values()
        for a, b in combinations(members, 2):  # members agree beyond their personal values
            differ = {v for v in ASPECTS[a.aspect] if a.mapping[v] != b.mapping[v]}
            assert differ <= {a.personal, b.personal}
        personal = {(h.personal, h.mapping[h.personal]) for h in members}
        assert len(personal) >= len(members) // 2  # the personal part differs between members
    # the data follows the habits, up to HABIT_NOISE
    items = [(u, it) for u in data.users for it in [*u.history, *u.queries]]
    follows = [
        habits[u.user_id].tag(it.fields["genre"], it.fields["mood"]) == it.fields["tag"]
        for u, it in items
    ]
    assert 0.85 <= sum(follows) / len(follows) <= 0.95


def test_tags_group_knowledge_helps_and_user_knowledge_helps_more() -> None:
    """docs/data.md's group rows (seed 0): the group's habit gets the 3 shared values,
    the user's the 4th; with 3 history items the group, inferred from them, beats them."""
    data = make_demo_tags()
    habits = habits_of(data)
    groups = {h.group: h for h in group_habits(random.Random(0))}

    def group_habit(u: User, q: Query) -> str:
        return groups[habits[u.user_id].group].tag(q.fields["genre"], q.fields["mood"])

    def user_habit(u: User, q: Query) -> str:
        return habits[u.user_id].tag(q.fields["genre"], q.fields["mood"])

    def own_three(u: User, q: Query) -> str | None:  # the value's tag among 3 items, if seen
        aspect = habits[u.user_id].aspect
        seen = [it.fields["tag"] for it in u.history[:3] if it.fields[aspect] == q.fields[aspect]]
        return Counter(seen).most_common(1)[0][0] if seen else None

    def group_of_three(u: User, q: Query) -> str:  # the group that best explains 3 items
        def fit(g: TagHabit) -> int:
            return sum(g.tag(it.fields["genre"], it.fields["mood"]) == it.fields["tag"]
                       for it in u.history[:3])  # fmt: skip

        return max(groups.values(), key=fit).tag(q.fields["genre"], q.fields["mood"])

    assert 0.6 <= accuracy(data, group_habit) <= 0.8
    assert accuracy(data, user_habit) >= accuracy(data, group_habit) + 0.15
    assert accuracy(data, group_of_three) >= accuracy(data, own_three) + 0.15


def test_every_demo_item_carries_its_group_and_no_prompt_shows_it() -> None:
    for data, task in (
        (make_demo_tags(n_users=8, history=6, queries=2), get_task("demo-tags")),
        (make_demo_headlines(n_users=8, history=6, queries=2), get_task("demo-headlines")),
    ):
        for user in data.users:
            group = user.history[0].fields["group"]
            for it in user.history:
                assert it.fields["group"] == group
                if "style" in it.fields:
                    assert group == it.fields["style"]
                hidden = dataclasses.replace(
                    it, fields={k: v for k, v in it.fields.items() if k != "group"}
                )
                assert task.item_pair(it) == task.item_pair(hidden)
                assert task.render_item(it) == task.render_item(hidden)
            for q in user.queries:
                assert q.fields["group"] == group
                bare = {k: v for k, v in q.fields.items() if k != "group"}
                assert q.input == task.query_prompt(bare)
