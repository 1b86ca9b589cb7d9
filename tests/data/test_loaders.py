"""Loaders on small fixture files, bad input, and a smoke test on the shared real data."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from ownlm.data.loaders import (
    load_dataset,
    load_jsonl,
    load_lamp_official,
    load_lamp_users,
    load_studemo,
    load_tweeteval,
)
from ownlm.data.tasks import get_task
from ownlm.errors import ConfigError, DataError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
LAMP2 = get_task("LaMP-2")


def lamp2_user(uid: str, n: int = 3) -> dict:
    profile = [{"id": f"{uid}{i}", "description": f"movie {i}", "tag": "comedy"} for i in range(n)]
    query = [
        {
            "id": f"{uid}q",
            "input": LAMP2.query_prompt({"description": "A space film."}),
            "gold": "sci-fi",
        }
    ]
    return {"user_id": uid, "profile": profile, "query": query}


def write(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


# -- LaMP per-user -----------------------------------------------------------------------------
def test_lamp_users_task_from_folder(tmp_path: Path) -> None:
    write(tmp_path / "LaMP_2M" / "users.json", [lamp2_user("a"), lamp2_user("b")])
    data = load_lamp_users(tmp_path / "LaMP_2M")
    assert data.task == "LaMP-2" and [u.user_id for u in data.users] == ["a", "b"]
    user = data.users[0]
    assert [it.fields for it in user.history][0] == {"description": "movie 0", "tag": "comedy"}
    assert user.queries[0].gold == "sci-fi"
    assert user.queries[0].fields == {"description": "A space film."}
    assert load_dataset(tmp_path / "LaMP_2M").users[1].user_id == "b"


def test_lamp_users_task_inferred_from_prompt(tmp_path: Path) -> None:
    lamp4 = get_task("LaMP-4")
    rec = {
        "user_id": 7,
        "profile": [{"text": "body", "title": "Head", "id": 1}],
        "query": [{"id": "q", "input": lamp4.query_prompt({"text": "news"}), "gold": "H"}],
    }
    data = load_lamp_users(write(tmp_path / "x" / "users.json", [rec]))
    assert data.task == "LaMP-4" and data.users[0].user_id == "7"
    assert data.users[0].queries[0].fields == {"text": "news"}


def test_lamp_users_missing_field_names_file_record_and_fix(tmp_path: Path) -> None:
    bad = lamp2_user("a")
    del bad["profile"][1]["tag"]
    path = write(tmp_path / "LaMP_2M" / "users.json", [lamp2_user("z"), bad])
    with pytest.raises(DataError) as err:
        load_lamp_users(path)
    msg = str(err.value)
    assert str(path) in msg and "record 1" in msg and "'tag'" in msg and "LaMP-2" in msg
    assert "must have fields ['description', 'tag']" in msg


def test_lamp_users_malformed_json_and_wrong_path(tmp_path: Path) -> None:
    path = write(tmp_path / "LaMP_2M" / "users.json", "[{not json")
    with pytest.raises(DataError, match=r"users.json is not valid JSON .*fix"):
        load_lamp_users(path)
    with pytest.raises(DataError, match=r"nowhere.* does not exist; check the path"):
        load_lamp_users(tmp_path / "nowhere")


def test_empty_history_raises_or_skips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "LaMP_2M" / "users.json", [lamp2_user("a"), lamp2_user("b", n=0)])
    with pytest.raises(
        DataError, match=r"user 'b' in .*users.json has an empty history; add history items"
    ):
        load_lamp_users(path)
    with caplog.at_level(logging.WARNING, logger="ownlm"):
        data = load_lamp_users(path, skip_empty=True)
    assert [u.user_id for u in data.users] == ["a"] and "skipping user 'b'" in caplog.text


def test_unknown_task_argument(tmp_path: Path) -> None:
    path = write(tmp_path / "LaMP_2M" / "users.json", [lamp2_user("a")])
    with pytest.raises(ConfigError, match="known tasks"):
        load_lamp_users(path, task="LaMP-99")


# -- LaMP official -------------------------------------------------------------------------------
def test_lamp_official_joins_golds(tmp_path: Path) -> None:
    questions = [
        {
            "id": "10",
            "input": LAMP2.query_prompt({"description": "d1"}),
            "profile": [{"id": "p1", "description": "x", "tag": "comedy"}],
        },
        {
            "id": "11",
            "input": LAMP2.query_prompt({"description": "d2"}),
            "profile": [{"id": "p2", "description": "y", "tag": "action"}],
        },
    ]
    qpath = write(tmp_path / "dev_questions.json", questions)
    write(
        tmp_path / "dev_outputs.json",
        {"task": "LaMP_2", "golds": [{"id": "10", "output": "classic"}]},
    )
    data = load_lamp_official(qpath)  # outputs found next to the questions
    assert data.task == "LaMP-2" and len(data.users) == 2
    assert [u.queries[0].gold for u in data.users] == ["classic", None]
    assert data.users[1].queries[0].fields == {"description": "d2"}
    assert load_dataset(tmp_path).users[0].user_id == "10"
    assert load_dataset(qpath, task="LaMP-2").users[0].queries[0].gold == "classic"


def test_lamp_official_bad_outputs(tmp_path: Path) -> None:
    qpath = write(tmp_path / "a_questions.json", [{"id": "1", "input": "x", "profile": []}])
    opath = write(tmp_path / "a_outputs.json", {"task": "LaMP_9", "golds": []})
    with pytest.raises(DataError, match=r"a_outputs.json names task 'LaMP_9'.*--set task="):
        load_lamp_official(qpath, opath)
    write(opath, {"golds": [{"id": "1"}]})
    with pytest.raises(DataError, match=r"gold 0 of .*a_outputs.json lacks"):
        load_lamp_official(qpath, opath, task="LaMP-2")


# -- PEFT-U --------------------------------------------------------------------------------------
STUDEMO_HEADER = "text_id,annotator_id,joy,trust,anticipation,surprise,fear,sadness,disgust,anger,valence,arousal\n"


def write_studemo(root: Path, bad_value: str = "1.0") -> Path:
    write(
        root / "text_data.csv",
        "text_id,text\n" + "".join(f'{i},"text {i}, ok"\n' for i in range(6)),
    )
    rows = [
        f"{t},{a},1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,{v},2.0\n"
        for a, v in (("8", "-2.0"), ("3", bad_value))
        for t in range(5)
    ]
    write(root / "annotation_data.csv", STUDEMO_HEADER + "".join(rows))
    return root


def test_studemo(tmp_path: Path) -> None:
    root = write_studemo(tmp_path / "studemo")
    data = load_studemo(root, dimension="valence", query_frac=0.2, seed=0)
    assert data.task == "studemo-valence" and [u.user_id for u in data.users] == ["8", "3"]
    user = data.users[0]
    assert len(user.history) == 4 and len(user.queries) == 1
    assert {it.fields["label"] for it in user.history} == {"-2"}
    assert user.queries[0].gold == "-2" and user.queries[0].fields["text"].startswith("text ")
    assert load_studemo(root, "joy").users[0].history[0].fields["label"] == "1"
    assert load_dataset(root, dimension="arousal").task == "studemo-arousal"
    again = load_studemo(root)
    assert [q.id for q in again.users[0].queries] == [q.id for q in user.queries]


def test_studemo_bad_value_and_dimension(tmp_path: Path) -> None:
    root = write_studemo(tmp_path / "studemo", bad_value="high")
    with pytest.raises(DataError, match=r"row 7 of .*annotation_data.csv has valence='high'"):
        load_studemo(root)
    with pytest.raises(DataError, match="unknown StudEmo dimension 'love'"):
        load_studemo(root, dimension="love")


def test_tweeteval(tmp_path: Path) -> None:
    rows = ["id,text,label_M_1,label_F_2"] + [
        f"{i},tweet {i},{'Hateful' if i % 2 else 'Non-hateful'},{'' if i == 0 else 'Hateful'}"
        for i in range(6)
    ]
    path = write(tmp_path / "annotations_g3.csv", "\n".join(rows) + "\n")
    data = load_tweeteval(path)
    assert data.task == "tweeteval-hate" and [u.user_id for u in data.users] == ["M_1", "F_2"]
    assert sum(len(u.history) + len(u.queries) for u in data.users) == 11  # one empty cell
    assert load_dataset(path).users[1].user_id == "F_2"
    write(path, "id,text,label_M_1\n1,x,maybe\n")
    with pytest.raises(DataError, match=r"row 2 of .*label_M_1: label 'maybe'"):
        load_tweeteval(path)


# -- JSONL ---------------------------------------------------------------------------------------
def test_jsonl(tmp_path: Path) -> None:
    lines = [
        {
            "user_id": "ann",
            "history": [
                {"date": "2021-05-01", "description": "later", "tag": "comedy"},
                {"id": "e", "date": "2020-01-01", "description": "earlier", "tag": "action"},
            ],
            "queries": [{"description": "A film.", "gold": "comedy"}, {"id": "x", "input": "raw?"}],
        },
        {"user_id": 2, "history": [{"description": "d", "tag": "classic"}]},
    ]
    path = write(tmp_path / "mine.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    data = load_jsonl(path, "LaMP-2")
    ann = data.users[0]
    assert [it.id for it in ann.history] == ["e", "ann-h0"]  # sorted by date
    assert ann.history[0].date == "2020-01-01"
    assert ann.queries[0].id == "ann-q0" and ann.queries[0].input == LAMP2.query_prompt(
        {"description": "A film."}
    )
    assert ann.queries[1].input == "raw?" and ann.queries[1].gold is None
    assert data.users[1].user_id == "2" and data.users[1].queries == []
    assert load_dataset(path, task="LaMP-2").users[0].user_id == "ann"


def test_jsonl_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.jsonl", '{"user_id": "a", "history": []}\n{oops\n')
    with pytest.raises(DataError, match=r"line 2 of .*bad.jsonl is not valid JSON"):
        load_jsonl(path, "LaMP-2")
    write(path, json.dumps({"user_id": "a", "history": [{"tag": "x"}]}))
    with pytest.raises(
        DataError,
        match=r"line 1 of .*bad.jsonl \(user 'a'\), history item 0: lacks field 'description'",
    ):
        load_jsonl(path, "LaMP-2")
    write(
        path,
        json.dumps(
            {
                "user_id": "a",
                "history": [{"description": "d", "tag": "comedy"}],
                "queries": [{"gold": "comedy"}],
            }
        ),
    )
    with pytest.raises(
        DataError, match=r"query 0 \(id 'a-q0'\): has no 'input'.*input field 'description'"
    ):
        load_jsonl(path, "LaMP-2")
    with pytest.raises(DataError, match=r"bad.jsonl is a generic JSONL file.*--set task=NAME"):
        load_dataset(path)


def test_unknown_layout_lists_supported(tmp_path: Path) -> None:
    path = write(tmp_path / "notes.txt", "hello")
    with pytest.raises(
        DataError, match=r"cannot tell the layout of .*notes.txt; supported layouts"
    ):
        load_dataset(path)
    with pytest.raises(DataError, match="users.json"):
        load_dataset(tmp_path)


# -- the shared real data (skipped when absent) ------------------------------------------------------
def test_shared_data_smoke() -> None:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent")
    lamp2 = load_dataset(SHARED / "lamp" / "LaMP_2M")
    assert lamp2.task == "LaMP-2" and len(lamp2.users) == 72
    assert all(q.gold in LAMP2.labels and q.fields for u in lamp2.users for q in u.queries)
    lamp4 = load_dataset(SHARED / "lamp" / "LaMP_4")
    assert lamp4.task == "LaMP-4" and len(lamp4.users) == 100
    assert all(q.fields.get("text") for u in lamp4.users for q in u.queries)
    studemo = load_dataset(SHARED / "peft_u" / "studemo")
    assert studemo.task == "studemo-valence" and len(studemo.users) == 25
    tweets = load_dataset(SHARED / "peft_u" / "tweeteval" / "annotations_g3.csv")
    assert tweets.task == "tweeteval-hate" and len(tweets.users) == 20


# -- hostile files: one clear DataError each, never a traceback -----------------------------------
def jsonl_line(uid: object = "ann", tag: object = "comedy", **extra: object) -> str:
    user = {"user_id": uid, "history": [{"description": "A film.", "tag": tag}], **extra}
    return json.dumps(user)


def test_jsonl_not_utf8_names_offset_line_and_fix(tmp_path: Path) -> None:
    data = (jsonl_line("ann") + "\n" + jsonl_line("bob", "comedy")).encode()
    data = data.replace(b"A film.", "Amélie".encode("latin-1"))  # é as latin-1: 0xe9
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(data)
    with pytest.raises(DataError) as err:
        load_jsonl(path, "LaMP-2")
    offset = data.index(b"\xe9")
    assert f"byte 0xe9 at offset {offset} (line 1)" in str(err.value)
    assert "latin1.jsonl" in str(err.value) and "re-encode the file as UTF-8" in str(err.value)


def test_jsonl_accepts_bom_crlf_and_line_separators_in_text(tmp_path: Path) -> None:
    lines = [jsonl_line("ann"), jsonl_line("bob", queries=[{"description": "a\u2028b"}])]
    path = tmp_path / "win.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    data = load_jsonl(path, "LaMP-2")
    assert [u.user_id for u in data.users] == ["ann", "bob"]
    assert data.users[1].queries[0].fields == {"description": "a\u2028b"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("", r"empty.jsonl is empty; it must hold one JSON object per line"),
        ("\n \n", r"empty.jsonl is empty"),
        ('[{"user_id": "ann"}]', r"holds a JSON array; a .jsonl file holds one JSON object per"),
        ('[\n  {"user_id": "ann"}\n]', r"holds a JSON array"),
        ('"ann"', r"line 1 of .*empty.jsonl is a str; each line must be a JSON object with"),
        ("42", r"line 1 of .* is a int; each line must be a JSON object with 'user_id'"),
        ('{"name": "ann"}', r"line 1 of .* is an object without 'user_id'"),
        ('{"user_id": "ann", "history": "x"}', r"'history' is a str; it must be a JSON list"),
        ("[" * 100_000 + "]" * 100_000, r"holds a JSON array"),
        ('{"a": ' * 100_000 + "1" + "}" * 100_000, r"line 1 of .* is nested too deeply"),
        ('{"user_id": ' + "9" * 5000 + "}", r"line 1 of .* is not valid JSON"),
    ],
)
def test_jsonl_hostile_shapes(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "empty.jsonl", text)
    with pytest.raises(DataError, match=message) as err:
        load_jsonl(path, "LaMP-2")
    assert len(str(err.value)) < 400 and "\n" not in str(err.value)


def test_huge_values_are_cut_in_messages(tmp_path: Path) -> None:
    path = write(tmp_path / "huge.jsonl", jsonl_line("ann", tag="x" * 1_000_000))
    with pytest.raises(DataError, match=r"tag 'xxx.*\.\.\. \(1000000 chars\) is not one of") as err:
        load_jsonl(path, "LaMP-2")
    assert len(str(err.value)) < 600


def test_lamp_files_not_utf8_or_with_bom(tmp_path: Path) -> None:
    path = tmp_path / "LaMP_2M" / "users.json"
    path.parent.mkdir()
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([lamp2_user("a")]).encode())
    assert load_lamp_users(path).users[0].user_id == "a"  # a BOM is accepted
    path.write_bytes(json.dumps([lamp2_user("a")]).encode("utf-16"))
    with pytest.raises(DataError, match=r"users.json is not UTF-8: byte 0xff at offset 0"):
        load_lamp_users(path)
    with pytest.raises(DataError, match=r"LaMP_2M is a directory, not a file"):
        load_jsonl(path.parent, "LaMP-2")


def test_lamp_users_bad_shapes(tmp_path: Path) -> None:
    path = write(tmp_path / "LaMP_2M" / "users.json", ["ann", lamp2_user("b")])
    with pytest.raises(DataError, match=r"record 0 of .*users.json is not an object"):
        load_lamp_users(path)
    rec = lamp2_user("a")
    rec["query"][0]["input"] = ["not", "text"]
    write(path, [rec])
    with pytest.raises(DataError, match=r"record 0 .*\(user 'a'\), query 0: lacks a text field"):
        load_lamp_users(path)


def test_csv_with_bom_and_repeated_columns(tmp_path: Path) -> None:
    path = tmp_path / "annotations_g3.csv"
    path.write_bytes(b"\xef\xbb\xbfid,text,label_M_1\n1,x,Hateful\n2,y,Non-hateful\n")
    assert load_tweeteval(path).users[0].user_id == "M_1"
    write(path, "id,text,label_M_1,label_M_1\n1,x,Hateful,Non-hateful\n2,y,Hateful,Hateful\n")
    with pytest.raises(DataError, match=r"repeats column\(s\) \['label_M_1'\]"):
        load_tweeteval(path)


def test_studemo_refuses_fractions_and_off_scale_scores(tmp_path: Path) -> None:
    for value, message in [("2.5", "valence 2.5 is not one of"), ("7.0", "valence 7.0 is not")]:
        root = write_studemo(tmp_path / value, bad_value=value)
        with pytest.raises(DataError, match=rf"row 7 of .*annotation_data.csv: {message}"):
            load_studemo(root)


@pytest.mark.parametrize(
    "line, message",
    [
        (
            '{"user_id": "ann", "history": [{"description": "a \\ud800 b", "tag": "comedy"}]}',
            r"line 1 of .*: a lone surrogate '\\\\ud800' .* not text",
        ),
        (
            '{"user_id": "ann", "history": [{"description": "x", "tag": "comedy"}], '
            '"queries": [{"input": "q \\udc80", "gold": "comedy"}]}',
            r"line 1 of .*: a lone surrogate '\\\\udc80'",
        ),
        (
            '{"user_id": "ann", "user_id": "bob", "history": '
            '[{"description": "x", "tag": "comedy"}]}',
            r"line 1 of .* repeats key 'user_id'",
        ),
        (
            '{"user_id": "ann", "history": [{"description": "x", "tag": "comedy", '
            '"tag": "classic"}]}',
            r"line 1 of .* repeats key 'tag'",
        ),
    ],
)
def test_jsonl_text_json_cannot_hold_as_data(tmp_path: Path, line: str, message: str) -> None:
    """A lone surrogate (JSON's "\\ud800") is no text a tokenizer or a UTF-8 file takes
    (a traceback at training before); a repeated key would silently keep its last value."""
    path = write(tmp_path / "u.jsonl", line)
    with pytest.raises(DataError, match=message) as err:
        load_jsonl(path, "LaMP-2")
    assert "\n" not in str(err.value)


def test_jsonl_escaped_surrogate_pairs_are_fine(tmp_path: Path) -> None:
    line = '{"user_id": "ann", "history": [{"description": "\\ud83d\\ude00", "tag": "comedy"}]}'
    user = load_jsonl(write(tmp_path / "u.jsonl", line), "LaMP-2").users[0]
    assert user.history[0].fields["description"] == "\U0001f600" and user.history_digest()


def test_a_fifo_or_device_is_not_read_as_data(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "users.jsonl"
    os.mkfifo(fifo)  # reading it would block until a writer came
    with pytest.raises(DataError, match="is not a regular file"):
        load_jsonl(fifo, "LaMP-2")


@pytest.mark.parametrize(
    "item, message",
    [({"description": "", "tag": "comedy"}, "field 'description' is empty, needed by task"),
     ({"description": None, "tag": "comedy"}, "field 'description' is null, needed by task"),
     ({"tag": "comedy"}, "lacks field 'description', needed by task")],
    ids=["empty", "null", "absent"],
)  # fmt: skip
def test_an_empty_field_is_said_to_be_empty_not_missing(tmp_path: Path, item, message) -> None:
    path = write(tmp_path / "u.jsonl", json.dumps({"user_id": "a", "history": [item]}))
    with pytest.raises(DataError, match=r"history item 0: " + message):
        load_jsonl(path, "LaMP-2")
