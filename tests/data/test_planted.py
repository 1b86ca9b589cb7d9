"""Planted groups read from data (both demos, a JSONL file) and their agreement with
assigned groups (adjusted Rand index pinned against a hand computation and sklearn)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from sklearn.metrics import adjusted_rand_score

from ownlm.data.demo import TAG_GROUPS, make_demo_headlines, make_demo_tags
from ownlm.data.loaders import load_dataset
from ownlm.data.planted import group_agreement, planted_groups
from ownlm.data.records import Item, User


def test_planted_groups_of_both_demos() -> None:
    tags = make_demo_tags(n_users=12)
    groups = planted_groups(tags)
    assert groups is not None and set(groups) == {u.user_id for u in tags.users}
    assert sorted(set(groups.values())) == [f"g{g}" for g in range(TAG_GROUPS)]
    assert planted_groups(tags.users) == groups  # a list of users works as well
    heads = make_demo_headlines(n_users=12)
    styles = planted_groups(heads)
    assert styles == {u.user_id: u.history[0].fields["style"] for u in heads.users}


def test_planted_groups_skip_users_without_one_and_none_without_groups() -> None:
    def user(uid: str, *groups: str | None) -> User:
        items = [
            Item(f"{uid}{i}", {"tag": "x"} | ({"group": g} if g else {}))
            for i, g in enumerate(groups)
        ]
        return User(uid, items)

    users = [user("a", "g1", "g1"), user("b", "g1", "g2"), user("c", "g2", None), user("d")]
    assert planted_groups(users) == {"a": "g1"}  # mixed, partial and empty histories skipped
    assert planted_groups([user("e", None), user("f")]) is None


def test_planted_groups_from_a_jsonl_file(tmp_path: Path) -> None:
    """The JSONL loader keeps extra item fields, so people's own data can plant groups."""
    lines = [
        {
            "user_id": uid,
            "history": [
                {"description": f"movie {i}", "tag": "comedy", "group": group} for i in range(3)
            ],
            "queries": [{"description": "a film", "gold": "crime", "group": group}],
        }
        for uid, group in (("ann", "fans"), ("bob", "critics"), ("cy", "fans"))
    ]
    path = tmp_path / "users.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines), encoding="utf-8")
    data = load_dataset(path, task="demo-tags")
    assert planted_groups(data) == {"ann": "fans", "bob": "critics", "cy": "fans"}
    assert data.users[0].queries[0].fields["group"] == "fans"
    assert "fans" not in data.users[0].queries[0].input  # no prompt shows the group


def test_group_agreement_is_one_for_a_relabelled_perfect_match() -> None:
    planted = {"u1": "a", "u2": "a", "u3": "b", "u4": "c", "u5": "c"}
    assigned = {"u1": 2, "u2": 2, "u3": 0, "u4": 1, "u5": 1, "new": 0}  # "new": not planted
    out = group_agreement(assigned, planted)
    assert out["ari"] == pytest.approx(1.0) and out["users"] == 5
    assert out["rows"] == [0, 1, 2] and out["columns"] == ["a", "b", "c"]
    assert out["counts"] == [[0, 1, 0], [0, 0, 2], [2, 0, 0]]


def test_group_agreement_is_near_zero_for_a_random_assignment() -> None:
    rng = random.Random(0)
    planted = {f"u{i}": f"g{i % 4}" for i in range(400)}
    assigned = {u: rng.randrange(4) for u in planted}
    out = group_agreement(assigned, planted)
    assert abs(out["ari"]) < 0.02 and out["users"] == 400
    assert sum(map(sum, out["counts"])) == 400


def test_group_agreement_pinned_on_a_small_fixture() -> None:
    """Hand computation: pairs together in both = 2, expected 3 * 6 / 15 = 1.2, maximum
    (3 + 6) / 2 = 4.5, so ARI = (2 - 1.2) / (4.5 - 1.2) = 8/33, as sklearn says."""
    planted = dict(zip("pqrstu", "aaabbb", strict=True))
    assigned = dict(zip("pqrstu", [0, 0, 1, 1, 2, 2], strict=True))
    out = group_agreement(assigned, planted)
    assert out["ari"] == pytest.approx(8 / 33)
    assert out["ari"] == pytest.approx(adjusted_rand_score(list("aaabbb"), [0, 0, 1, 1, 2, 2]))
    assert out["counts"] == [[2, 0], [1, 1], [0, 2]]
    assert group_agreement({"x": 1}, planted) == {
        "ari": None,
        "users": 0,
        "rows": [],
        "columns": [],
        "counts": [],
    }
