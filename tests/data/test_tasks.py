"""Task templates: exact LaMP prompts, pairs, retrieval text, prompt building, parsing."""

from __future__ import annotations

import pytest

from ownlm.data.records import Item, Query
from ownlm.data.tasks import LAMP2_TAGS, MAX_ITEM_CHARS, TASKS, get_task, truncate
from ownlm.errors import ConfigError

LAMP2_PREFIX = (
    "Which tag does this movie relate to among the following tags? Just answer with the tag "
    "name without further explanation. tags: [sci-fi, based on a book, comedy, action, twist "
    "ending, dystopia, dark comedy, classic, psychology, fantasy, romance, thought-provoking, "
    "social commentary, violence, true story] description: "
)


def sample_item(task_name: str) -> Item:
    """An item with every field the task needs, each value naming its field."""
    task = get_task(task_name)
    fields = {name: f"<{name}>" for name in task.fields}
    if task.labels:
        fields[task.output_field] = task.labels[0]
    return Item("i1", fields)


def test_registry_has_every_task() -> None:
    expected = {f"LaMP-{i}" for i in range(1, 8)} | {
        "tweeteval-hate",
        "demo-tags",
        "demo-headlines",
    }
    expected |= {
        f"studemo-{d}"
        for d in (
            "joy",
            "trust",
            "anticipation",
            "surprise",
            "fear",
            "sadness",
            "disgust",
            "anger",
            "valence",
            "arousal",
        )
    }
    assert expected <= set(TASKS)
    assert get_task("LaMP-2").labels == LAMP2_TAGS and len(LAMP2_TAGS) == 15


def test_unknown_task_names_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown task 'LaMP-9'; known tasks: LaMP-1"):
        get_task("LaMP-9")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_builds_prompts(name: str) -> None:
    task = TASKS[name]
    assert task.kind in ("classification", "rating", "generation")
    assert bool(task.labels) == (task.kind != "generation")
    if task.kind == "rating":
        assert [float(x) for x in task.labels] == sorted(float(x) for x in task.labels)
    item = sample_item(name)
    prompt, target = task.item_pair(item)
    assert prompt and target == item.fields[task.output_field]
    assert task.item_text(item)
    rendered = task.render_item(item)
    full = task.build_prompt(prompt, [item, item], profile="likes X")
    assert full.startswith("User profile: likes X\n") and full.endswith("\n" + prompt)
    assert f"{rendered}, and {rendered}." in full
    # the non-personalized baseline: nothing added
    assert task.build_prompt(prompt, [], None) == prompt
    assert task.build_prompt(prompt) == prompt


def test_exact_lamp_prompts() -> None:
    assert get_task("LaMP-2").query_prompt({"description": "A film."}) == LAMP2_PREFIX + "A film."
    assert get_task("LaMP-3").query_prompt({"text": "ok"}) == (
        "What is the score of the following review on a scale of 1 to 5? just answer with 1, 2, "
        "3, 4, or 5 without further explanation. review: ok"
    )
    assert get_task("LaMP-4").query_prompt({"text": "T"}) == (
        "Generate a headline for the following article: T"
    )
    assert get_task("LaMP-5").query_prompt({"abstract": "A"}) == (
        "Generate a title for the following abstract of a paper: A"
    )
    assert get_task("LaMP-6").query_prompt({"text": "E"}) == (
        "Generate a subject for the following email: E"
    )
    assert get_task("LaMP-7").query_prompt({"text": "W"}) == (
        "Paraphrase the following tweet without any explanation before or after it: W"
    )
    assert get_task("LaMP-1").query_prompt({"title": "T", "ref1": "A", "ref2": "B"}) == (
        'For an author who has written the paper with the title "T", which reference is related? '
        'Just answer with [1] or [2] without explanation. [1]: "A" [2]: "B"'
    )


def test_item_pair_and_render_follow_lamp() -> None:
    lamp2 = get_task("LaMP-2")
    item = Item("1", {"description": "A heist.", "tag": "twist ending"})
    assert lamp2.item_pair(item) == (LAMP2_PREFIX + "A heist.", "twist ending")
    assert lamp2.render_item(item) == 'the tag for the movie: "A heist." is "twist ending"'
    lamp4 = get_task("LaMP-4")
    item4 = Item("2", {"text": "Body.", "title": "Head"})
    assert lamp4.render_item(item4) == '"Head" is the title for "Body."'
    assert lamp4.build_prompt("Q", [item4]) == '"Head" is the title for "Body.".\nQ'
    # LaMP-1 history items are papers: they train abstract -> title
    lamp1 = get_task("LaMP-1")
    paper = Item("3", {"title": "T", "abstract": "A"})
    assert lamp1.item_pair(paper) == (
        "Generate a title for the following abstract of a paper: A",
        "T",
    )


def test_long_fields_are_truncated() -> None:
    task = get_task("LaMP-4")
    long = "word " * 400
    rendered = task.render_item(Item("1", {"text": long, "title": "T"}))
    assert len(rendered) < MAX_ITEM_CHARS + 40 and "..." in rendered
    assert len(task.render_item(Item("1", {"text": long, "title": "T"}), max_chars=50)) < 80
    assert truncate("short", 10) == "short" and truncate("a b c d e f", 8).endswith("...")


def test_query_text_uses_raw_fields_or_strips_instruction() -> None:
    task = get_task("LaMP-2")
    assert task.query_text(Query("q", LAMP2_PREFIX + "A film.", fields={"description": "D"})) == "D"
    assert task.query_text(Query("q", LAMP2_PREFIX + "A film.")) == "A film."
    assert task.query_text(Query("q", "free text")) == "free text"
    lamp1 = get_task("LaMP-1")
    q = lamp1.query_prompt({"title": "T", "ref1": "R1", "ref2": "R2"})
    assert lamp1.extract_fields(q) == {"title": "T", "ref1": "R1", "ref2": "R2"}
    assert lamp1.query_text(Query("q", q)) == "R1 R2"


def test_parse_output() -> None:
    assert get_task("LaMP-2").parse_output("  dark comedy, because...") == "dark comedy"
    assert get_task("LaMP-2").parse_output("Comedy") == "comedy"
    assert get_task("LaMP-2").parse_output(" nothing ") == "nothing"
    assert get_task("LaMP-3").parse_output("4 stars") == "4"
    assert get_task("studemo-valence").parse_output("-1") == "-1"
    assert get_task("LaMP-1").parse_output("[2]") == "[2]"
    assert get_task("tweeteval-hate").parse_output("non-hateful.") == "Non-hateful"
    assert get_task("LaMP-4").parse_output("  A headline \n") == "A headline"


def test_labelled_history_says_which_histories_hold_labels() -> None:
    labelled = {name for name, task in TASKS.items() if task.labelled_history}
    assert {"LaMP-2", "LaMP-3", "tweeteval-hate", "demo-tags", "studemo-joy"} <= labelled
    assert not {"LaMP-1", "LaMP-4", "LaMP-7", "demo-headlines"} & labelled  # LaMP-1: papers
