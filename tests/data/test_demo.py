"""Demo data: determinism, sizes, and planted preferences (trivial baselines vs an oracle)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from ownlm.data.demo import (
    HEADLINE_STYLES,
    TOPICS,
    make_demo_headlines,
    make_demo_tags,
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
