"""Built-in demo data with planted, learnable preferences (seeded, no downloads).

demo-tags: every movie description has a genre aspect (space, magic, heist, love) and
a mood aspect (grim, funny, tense, hopeful), plus filler. Users fall into `TAG_GROUPS`
planted groups (balanced). A group has a habit: the aspect its members tag by and an
injective mapping from that aspect's 4 values to 4 of the 10 `DEMO_TAGS`; groups that
share an aspect disagree on every value. Each user adds a personal habit: one of the 4
values re-mapped to a tag of their own (one the group's mapping does not use). A user's
tag is a function of (content, group, user): a non-personalized model is weak, a model
that knows the group gets the 3 shared values right, only one that knows the user gets
the 4th; each user spreads over 4 tags, so their majority tag is not enough.
`HABIT_NOISE` of items get another tag. Items carry ground truth (`genre`, `mood`,
`group`) that no prompt shows (PROPER's meso level, Zhang et al. 2025: users who share
habits should share an expert; `ownlm.data.planted` measures that).

demo-headlines: articles from templates (topic, entity, event, number, day). The key
facts make a core headline "{Entity} {verb}s {object}"; each user has one style
(`HEADLINE_STYLES`) that wraps it, so the right headline depends on article and user.
Users of one style form a planted group (`group` = `style` on every item).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ownlm.data.demo_rewrite import make_demo_rewrite
from ownlm.data.records import Dataset, Item, Query, User
from ownlm.data.tasks import DEMO_TAGS, get_task
from ownlm.errors import ConfigError

HABIT_NOISE = 0.1  # fraction of demo-tags items whose tag is replaced by a random other tag
TAG_GROUPS = 4  # planted demo-tags groups: 2 tag by genre, 2 by mood (PROPER's default 4 experts)

# aspect value -> description sentences (two per value; one is drawn per movie)
GENRES = {
    "space": [
        "A crew of explorers drifts toward a distant star aboard an aging starship.",
        "An astronaut stranded on a cold moon waits for a rescue signal from Earth.",
    ],
    "magic": [
        "A young apprentice discovers a forbidden spellbook in the wizard's tower.",
        "An old sorceress must return a stolen dragon egg to the enchanted forest.",
    ],
    "heist": [
        "A gang of thieves plans to rob the city's largest bank vault in one night.",
        "A retired safecracker is pulled back for one last casino robbery.",
    ],
    "love": [
        "Two strangers keep meeting on the same night train and slowly fall in love.",
        "A florist and a violinist write each other letters across a long summer.",
    ],
}
MOODS = {
    "grim": [
        "Everything goes wrong and the ending is bleak and bitter.",
        "Loss and betrayal hang over every scene, and few make it out.",
    ],
    "funny": [
        "The story is full of silly jokes, pratfalls and absurd misunderstandings.",
        "Every scene plays for laughs, with a goofy sidekick stealing the show.",
    ],
    "tense": [
        "The clock is ticking and the suspense never lets up until the last minute.",
        "Danger lurks at every corner and nobody can be trusted.",
    ],
    "hopeful": [
        "Against all odds, kindness wins and the ending is warm and uplifting.",
        "Friends help each other through hard times toward a bright new start.",
    ],
}
FILLERS = [
    "The film runs just under two hours.",
    "It was shot in three countries.",
    "The score was written by a newcomer.",
    "It premiered at a small festival.",
    "Most of the cast are unknown actors.",
    "The director also wrote the script.",
    "It is told in chronological order.",
    "The film was released in the autumn.",
]
ASPECTS = {"genre": tuple(GENRES), "mood": tuple(MOODS)}


@dataclass(frozen=True)
class TagHabit:
    """A user's hidden tagging habit: the aspect they look at and their vocabulary."""

    aspect: str  # "genre" | "mood"
    mapping: dict[str, str]  # aspect value -> tag, injective
    group: str = ""  # planted group, "g0".."g3"
    personal: str = ""  # the aspect value this user tags unlike their group

    def tag(self, genre: str, mood: str) -> str:
        return self.mapping[genre if self.aspect == "genre" else mood]


def _description(rng: random.Random, genre: str, mood: str) -> str:
    sentences = [rng.choice(GENRES[genre]), rng.choice(MOODS[mood])]
    sentences += rng.sample(FILLERS, rng.randint(0, 1))
    return " ".join(sentences)  # ~20-40 words


def group_habits(rng: random.Random, n_groups: int = TAG_GROUPS) -> list[TagHabit]:
    """The groups' habits: group g tags by genre (even g) or mood (odd g), each with its
    own injective 4-value vocabulary; groups of one aspect differ on every value."""
    habits: list[TagHabit] = []
    for g in range(n_groups):
        aspect = tuple(ASPECTS)[g % len(ASPECTS)]
        values = ASPECTS[aspect]
        taken = [h.mapping for h in habits if h.aspect == aspect]
        while True:  # rejection sampling; with 10 tags and 4 values it ends at once
            mapping = dict(zip(values, rng.sample(DEMO_TAGS, len(values)), strict=True))
            if all(m[v] != mapping[v] for m in taken for v in values):
                break
        habits.append(TagHabit(aspect, mapping, f"g{g}"))
    return habits


def plant_tag_habits(rng: random.Random, n_users: int) -> list[TagHabit]:
    """Every user's habit: their group's, with one value re-mapped to a personal tag
    (outside the group's vocabulary). Groups are balanced: each run of `TAG_GROUPS`
    users holds one member of each group, in a shuffled order, so any prefix of users
    (`max_users`) and the train/test split keep the groups near equal."""
    groups = group_habits(rng)
    habits = []
    for start in range(0, n_users, len(groups)):
        for g in rng.sample(range(len(groups)), len(groups))[: n_users - start]:
            group = groups[g]
            personal = rng.choice(ASPECTS[group.aspect])
            own = rng.choice([t for t in DEMO_TAGS if t not in group.mapping.values()])
            mapping = {**group.mapping, personal: own}
            habits.append(TagHabit(group.aspect, mapping, group.group, personal))
    return habits


def _tag_item(rng: random.Random, habit: TagHabit, genre: str, mood: str, item_id: str) -> Item:
    tag = habit.tag(genre, mood)
    if rng.random() < HABIT_NOISE:
        tag = rng.choice([t for t in DEMO_TAGS if t != tag])
    fields = {
        "description": _description(rng, genre, mood),
        "tag": tag,
        "genre": genre,
        "mood": mood,
        "group": habit.group,
    }  # genre/mood/group: ground truth for analysis
    return Item(item_id, fields)


def make_demo_tags(
    n_users: int = 40, history: int = 20, queries: int = 5, seed: int = 0
) -> Dataset:
    """Users tagging movie descriptions by their group's habit and a personal one (see
    the module docstring; the habits are `plant_tag_habits(random.Random(seed), n_users)`).

    History covers each value of the user's aspect equally often (shuffled), so the
    habit is identifiable from history; query contents are drawn uniformly. Items keep
    "genre", "mood" and "group" fields (ground truth for analysis; prompts never show them).
    """
    rng = random.Random(seed)
    task = get_task("demo-tags")
    users = []
    for u, habit in enumerate(plant_tag_habits(rng, n_users)):
        uid = f"t{u:03d}"
        own = list(ASPECTS[habit.aspect])
        # balanced cover of the user's aspect values: (history,) values cycling over 4
        covered = [own[i % len(own)] for i in range(history)]
        rng.shuffle(covered)
        items = []
        for i, value in enumerate(covered):
            other = rng.choice(ASPECTS["mood" if habit.aspect == "genre" else "genre"])
            genre, mood = (value, other) if habit.aspect == "genre" else (other, value)
            items.append(_tag_item(rng, habit, genre, mood, f"{uid}-h{i}"))
        qs = []
        for j in range(queries):
            item = _tag_item(
                rng, habit, rng.choice(ASPECTS["genre"]), rng.choice(ASPECTS["mood"]), f"{uid}-q{j}"
            )
            qs.append(
                Query(
                    item.id, task.query_prompt(item.fields), item.fields["tag"], dict(item.fields)
                )
            )
        users.append(User(uid, items, qs))
    return Dataset(task.name, users, f"demo-tags(seed={seed})")


# -- headlines -----------------------------------------------------------------------------------
# topic -> (entities, events as (3rd person verb, base verb, object))
TOPICS = {
    "sports": (
        ["Harbor City FC", "Northside United", "coach Ana Ruiz"],
        [
            ("wins", "win", "the regional cup"),
            ("signs", "sign", "a young striker"),
            ("loses", "lose", "the season opener"),
        ],
    ),
    "tech": (
        ["Lumen Labs", "the startup Orbix", "engineer Sam Patel"],
        [
            ("launches", "launch", "a solar phone"),
            ("opens", "open", "a new research lab"),
            ("recalls", "recall", "its smart watch"),
        ],
    ),
    "city": (
        ["the city council", "Mayor Lena Brook", "the transit agency"],
        [
            ("approves", "approve", "a new bike lane"),
            ("closes", "close", "the old bridge"),
            ("plans", "plan", "a riverside park"),
        ],
    ),
    "health": (
        ["the county hospital", "Dr. Omar Haddad", "a local clinic"],
        [
            ("opens", "open", "a free night clinic"),
            ("tests", "test", "a new flu vaccine"),
            ("hires", "hire", "extra nurses"),
        ],
    ),
}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
HEADLINE_STYLES = ("breaking", "question", "listicle", "colon", "lowercase", "exclaim")


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def style_headline(style: str, facts: dict[str, str]) -> str:
    """The headline a user of `style` writes for an article's key facts (6-12 words)."""
    core = f"{_cap(facts['entity'])} {facts['verb']} {facts['object']}"
    if style == "breaking":
        return f"BREAKING: {core}"
    if style == "question":
        return f"Will {facts['entity']} {facts['base']} {facts['object']}?"
    if style == "listicle":
        return f"{facts['number']} things to know: {core}"
    if style == "colon":
        return f"{_cap(facts['topic'])}: {core}"
    if style == "lowercase":
        return core.lower()
    if style == "exclaim":
        return f"{core}!"
    raise ConfigError(f"unknown headline style {style!r}; use one of {HEADLINE_STYLES}")


def _article(rng: random.Random) -> tuple[str, dict[str, str]]:
    topic = rng.choice(tuple(TOPICS))
    entities, events = TOPICS[topic]
    entity = rng.choice(entities)
    verb, base, obj = rng.choice(events)
    facts = {
        "topic": topic,
        "entity": entity,
        "verb": verb,
        "base": base,
        "object": obj,
        "number": str(rng.randint(3, 9)),
        "day": rng.choice(DAYS),
    }
    text = (
        f"On {facts['day']}, {entity} {verb} {obj}, officials said. "
        f"It took {facts['number']} months of work to get here. "
        f"Local {topic} watchers expect more news in the coming weeks."
    )
    return text, facts


def make_demo_headlines(
    n_users: int = 40, history: int = 20, queries: int = 5, seed: int = 0
) -> Dataset:
    """Users writing headlines for template articles in their own style (see module doc).

    Items keep "style" and "group" (= style) fields (ground truth for analysis; prompts
    never show them), so both demos expose planted groups the same way.
    """
    rng = random.Random(seed)
    task = get_task("demo-headlines")
    users = []
    for u in range(n_users):
        uid = f"h{u:03d}"
        style = HEADLINE_STYLES[rng.randrange(len(HEADLINE_STYLES))]
        items = []
        for i in range(history + queries):
            text, facts = _article(rng)
            title = style_headline(style, facts)
            fields = {"text": text, "title": title, "style": style, "group": style}
            items.append(
                Item(
                    f"{uid}-{'h' if i < history else 'q'}{i if i < history else i - history}",
                    fields,
                )
            )
        qs = [
            Query(it.id, task.query_prompt(it.fields), it.fields["title"], dict(it.fields))
            for it in items[history:]
        ]
        users.append(User(uid, items[:history], qs))
    return Dataset(task.name, users, f"demo-headlines(seed={seed})")


# the built-in data sets a config's `data` may name, each seeded by the run's seed
DEMOS = {
    "demo-tags": make_demo_tags,
    "demo-headlines": make_demo_headlines,
    "demo-rewrite": make_demo_rewrite,
}
