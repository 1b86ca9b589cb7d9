"""Load-time checks: safe, unique user ids; unique query ids; labels and golds in the
task's set (numbers included). Each error names file, line or record, user and fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ownlm.data import checks
from ownlm.data.loaders import load_jsonl, load_lamp_official, load_lamp_users
from ownlm.data.tasks import Task, get_task
from ownlm.errors import DataError
from tests.data.test_loaders import lamp2_user, write

LAMP2, LAMP3 = get_task("LaMP-2"), get_task("LaMP-3")


def jsonl(tmp_path: Path, *users: dict) -> Path:
    return write(tmp_path / "mine.jsonl", "\n".join(json.dumps(u) for u in users) + "\n")


def user(uid: object = "ann", tag: object = "comedy", **extra: object) -> dict:
    return {"user_id": uid, "history": [{"description": "A film.", "tag": tag}], **extra}


# -- labels -----------------------------------------------------------------------------------
def test_history_label_outside_the_set_is_caught_at_load(tmp_path: Path) -> None:
    path = jsonl(tmp_path, user("ann"), user("bob", "western"))
    with pytest.raises(DataError) as err:
        load_jsonl(path, "LaMP-2")
    msg = str(err.value)
    assert f"line 2 of {path} (user 'bob'), history item 0: tag 'western'" in msg
    assert "is not one of task LaMP-2's labels ['sci-fi'," in msg and "'true story']" in msg


def test_near_miss_label_suggests_the_right_one(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"tag 'Comedy' is not one.*did you mean 'comedy'\?"):
        load_jsonl(jsonl(tmp_path, user("ann", "Comedy")), "LaMP-2")


def test_lamp_users_and_official_check_labels(tmp_path: Path) -> None:
    bad = lamp2_user("b")
    bad["profile"][2]["tag"] = "western"
    path = write(tmp_path / "LaMP_2M" / "users.json", [lamp2_user("a"), bad])
    with pytest.raises(
        DataError, match=r"record 1 of .*\(user 'b'\), history item 2: tag 'western"
    ):
        load_lamp_users(path)
    question = {"id": "7", "input": LAMP2.query_prompt({"description": "d"}), "profile": []}
    question["profile"] = [{"description": "x", "tag": "western"}]
    qpath = write(tmp_path / "dev_questions.json", [question])
    with pytest.raises(DataError, match=r"\(question '7'\), profile item 0: tag 'western'"):
        load_lamp_official(qpath, task="LaMP-2")


@pytest.mark.parametrize(
    "raw, expected",
    [(3, "3"), (3.0, "3"), ("3", "3"), (3.5, "is not one of task LaMP-3's scores"),
     (7, "7 is not one of"), (True, "is a bool"), ("3.0", "'3.0' is not one of"),
     ([3], "is a list"), (float("nan"), "nan is not one of")],
)  # fmt: skip
def test_rating_labels_accept_whole_json_numbers(raw: object, expected: str) -> None:
    if expected.isdigit():
        assert checks.label(raw, LAMP3, "here") == expected
    else:
        with pytest.raises(DataError, match=expected):
            checks.label(raw, LAMP3, "here")


def test_classification_numbers_only_when_they_spell_a_label(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"tag 5 is a number.*write one of them as a JSON string"):
        load_jsonl(jsonl(tmp_path, user("ann", 5)), "LaMP-2")
    digits = Task("digits", "classification", ("1", "2"), "text", "label", "", "{text}", "{text}")
    assert checks.label(1, digits, "here") == "1"
    with pytest.raises(DataError, match="1.5 is a number"):
        checks.label(1.5, digits, "here")


def test_numeric_labels_load_as_their_string(tmp_path: Path) -> None:
    rows = [{"user_id": "u", "history": [{"text": "ok", "score": 4.0}, {"text": "x", "score": 2}]}]
    data = load_jsonl(jsonl(tmp_path, *rows), "LaMP-3")
    assert [it.fields["score"] for it in data.users[0].history] == ["4", "2"]


def test_lamp1_history_holds_papers_not_labels(tmp_path: Path) -> None:
    row = {"user_id": "u", "history": [{"title": "T", "abstract": "A"}]}
    assert load_jsonl(jsonl(tmp_path, row), "LaMP-1").users[0].history[0].fields["title"] == "T"


def test_gold_outside_the_set_names_file_line_user_and_query(tmp_path: Path) -> None:
    row = user("ann", queries=[{"id": "q1", "description": "d", "gold": "comedy"},
                               {"id": "q2", "description": "d", "gold": "western"}])  # fmt: skip
    path = jsonl(tmp_path, row)
    with pytest.raises(DataError) as err:
        load_jsonl(path, "LaMP-2")
    assert f"line 1 of {path} (user 'ann'), query 1 (id 'q2'): gold 'western'" in str(err.value)
    rec = lamp2_user("a")
    rec["query"][0]["gold"] = "western"
    upath = write(tmp_path / "LaMP_2M" / "users.json", [rec])
    with pytest.raises(DataError, match=r"\(user 'a'\), query 0 \(id 'aq'\): gold 'western'"):
        load_lamp_users(upath)


def test_official_golds_checked_and_unique(tmp_path: Path) -> None:
    question = {"id": "7", "input": LAMP2.query_prompt({"description": "d"}), "profile": []}
    question["profile"] = [{"description": "x", "tag": "comedy"}]
    qpath = write(tmp_path / "dev_questions.json", [question])
    opath = write(tmp_path / "dev_outputs.json", {"golds": [{"id": "7", "output": "western"}]})
    with pytest.raises(DataError, match=r"gold 0 of .*dev_outputs.json \(question '7'\): gold"):
        load_lamp_official(qpath, opath, task="LaMP-2")
    write(opath, {"golds": [{"id": "7", "output": "comedy"}, {"id": "7", "output": "action"}]})
    with pytest.raises(DataError, match=r"gold id '7' at gold 1 repeats gold 0"):
        load_lamp_official(qpath, opath, task="LaMP-2")


# -- ids --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "uid, problem",
    [("../../etc", "starts with '.'"), ("a/b", "contains '/'"), ("a\\b", "contains '\\\\'"),
     (".hidden", "starts with '.'"), ("-rf", "starts with '-'"), ("a\x00b", "contains '\\x00'"),
     ("x" * 129, "is 129 characters long"), ("", "is empty"), ("ann smith", "contains ' '"),
     ("C:", "contains ':'"), ("josé", "contains 'é'"), (None, "is a NoneType"),
     (["a"], "is a list"), (True, "is a bool"), (1.5, "is a float")],
)  # fmt: skip
def test_unsafe_user_ids_are_refused_at_load(tmp_path: Path, uid: object, problem: str) -> None:
    with pytest.raises(DataError) as err:
        load_jsonl(jsonl(tmp_path, user("ok"), user(uid)), "LaMP-2")
    msg = str(err.value)
    assert msg.startswith(f"line 2 of {tmp_path / 'mine.jsonl'}: user_id ") and problem in msg
    assert "\n" not in msg and len(msg) < 400


@pytest.mark.parametrize("uid", ["ann", 8000002, "a.b@c+d_e-f", "M_1", "_x", "@ann", "x" * 128])
def test_safe_user_ids_load(tmp_path: Path, uid: object) -> None:
    assert load_jsonl(jsonl(tmp_path, user(uid)), "LaMP-2").users[0].user_id == str(uid)


def test_path_like_ids_refused_in_every_layout(tmp_path: Path) -> None:
    path = write(tmp_path / "LaMP_2M" / "users.json", [lamp2_user("../x")])
    with pytest.raises(DataError, match=r"record 0 of .*users.json: user_id '../x' starts with"):
        load_lamp_users(path)
    question = {"id": "a/b", "input": "q", "profile": [{"description": "x", "tag": "comedy"}]}
    qpath = write(tmp_path / "dev_questions.json", [question])
    with pytest.raises(DataError, match=r"record 0 of .*: user_id 'a/b' contains '/'"):
        load_lamp_official(qpath, task="LaMP-2")


def test_duplicate_users_name_the_file_and_both_lines(tmp_path: Path) -> None:
    path = jsonl(tmp_path, user("ann"), user("bob"), user("ann"))
    with pytest.raises(DataError) as err:
        load_jsonl(path, "LaMP-2")
    assert str(err.value).startswith(f"{path}: user_id 'ann' at line 3 repeats line 1;")
    with pytest.raises(DataError, match=r"'Ann' at line 2 differs only in case from 'ann' at"):
        load_jsonl(jsonl(tmp_path, user("ann"), user("Ann")), "LaMP-2")
    with pytest.raises(DataError, match=r"user_id '1' at line 2 repeats line 1"):
        load_jsonl(jsonl(tmp_path, user(1), user("1")), "LaMP-2")


def test_duplicate_users_in_lamp_layouts(tmp_path: Path) -> None:
    path = write(tmp_path / "LaMP_2M" / "users.json", [lamp2_user("a"), lamp2_user("a")])
    with pytest.raises(DataError, match=r"users.json: user_id 'a' at record 1 repeats record 0"):
        load_lamp_users(path)
    question = {"id": "7", "input": "q", "profile": [{"description": "x", "tag": "comedy"}]}
    qpath = write(tmp_path / "dev_questions.json", [question, question])
    with pytest.raises(DataError, match=r"user_id '7' at record 1 repeats record 0"):
        load_lamp_official(qpath, task="LaMP-2")


def test_duplicate_query_ids_within_a_user(tmp_path: Path) -> None:
    queries = [{"id": "q", "description": "a"}, {"id": "q", "description": "b"}]
    with pytest.raises(DataError, match=r"\(user 'ann'\): query id 'q' at query 1 repeats query 0"):
        load_jsonl(jsonl(tmp_path, user("ann", queries=queries)), "LaMP-2")
    same_ids = [user("ann", queries=queries[:1]), user("bob", queries=queries[:1])]
    assert len(load_jsonl(jsonl(tmp_path, *same_ids), "LaMP-2").users) == 2  # across users: fine
