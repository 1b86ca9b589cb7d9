"""demo-rewrite: answers made of the input's words, styled by a planted group and a
personal sign-off, so that a user's central past answer cannot carry a new one."""

from __future__ import annotations

from collections import Counter

from ownlm.data.demo_rewrite import (
    GROUP_STYLES,
    REWRITE_GROUPS,
    SIGN_OFFS,
    make_demo_rewrite,
    plant_styles,
    rewrite,
)
from ownlm.data.tasks import get_task
from ownlm.scores.metrics import generation_metrics
from ownlm.scores.references import population_majority, user_majority


def _words(text: str) -> set[str]:
    return {w.strip(".,:?!").lower() for w in text.split()} - {""}


def test_it_is_seeded_sized_and_registered():
    a, b = make_demo_rewrite(seed=3), make_demo_rewrite(seed=3)
    assert a == b and a != make_demo_rewrite(seed=4)
    assert len(a.users) == 40 and {len(u.history) for u in a.users} == {20}
    assert {len(u.queries) for u in a.users} == {5}
    assert get_task("demo-rewrite").kind == "generation" and a.task == "demo-rewrite"


def test_groups_are_balanced_in_any_prefix_and_no_prompt_shows_them():
    import random

    styles = plant_styles(random.Random(0), 10)
    for n in (4, 8):
        assert Counter(s for s, _, _ in styles[:n]) == Counter(GROUP_STYLES * (n // 4))
    data = make_demo_rewrite(n_users=12)
    for u in data.users:
        groups = {it.fields["group"] for it in u.history} | {q.fields["group"] for q in u.queries}
        assert len(groups) == 1 and groups <= {f"g{g}" for g in range(REWRITE_GROUPS)}
        for q in u.queries:
            assert q.fields["style"] not in q.input and q.fields["sign_off"] not in q.input


def test_answers_carry_the_inputs_words_and_the_users_own():
    data = make_demo_rewrite()
    for u in data.users:
        for item in u.history:
            answer, notice = _words(item.fields["rewrite"]), _words(item.fields["text"])
            own = _words(item.fields["sign_off"])
            style_words = {"note", "heads", "up", "lol", "did", "you", "hear"}
            assert answer - notice - own <= style_words, item.fields
            assert len(answer & notice) >= 3  # the notice's subject and event at least
    assert rewrite("terse", "the bike shed", "is free", "tonight", "xo") == "Bike shed: is free. xo"


def test_the_users_own_central_answer_scores_far_below_their_style_applied_to_the_input():
    """The user reference cannot win by itself: what scores is carrying the input."""
    data = make_demo_rewrite()
    train_outputs = [it.fields["rewrite"] for u in data.users for it in u.history]
    pop = population_majority(train_outputs, "generation")
    own, oracle, popular, golds = [], [], [], []
    for u in data.users:
        central = user_majority([it.fields["rewrite"] for it in u.history], "generation")
        for q in u.queries:
            golds.append(q.gold)
            own.append(central)
            popular.append(pop)
            oracle.append(q.gold)
    score = {
        name: generation_metrics(preds, golds)["rouge-1"]
        for name, preds in (("own", own), ("pop", popular), ("oracle", oracle))
    }
    assert score["oracle"] == 1.0
    assert score["own"] < 0.55 and score["pop"] < 0.4, score
    assert set(SIGN_OFFS) >= {q.fields["sign_off"] for u in data.users for q in u.queries}
