"""Does a file name a user: a YAML file is read through ownlm's one YAML loader, so a
billion laughs is read as the text it is, at once, and still found naming the user."""

import time

from ownlm.ownership.mentions import file_strings, names_user
from tests.test_safe_yaml import laughs


def test_a_billion_laughs_yaml_is_read_as_text_at_once(tmp_path):
    path = tmp_path / "notes.yaml"
    path.write_text(laughs(9) + "owner: gus\n")
    start = time.perf_counter()
    assert names_user(path, "gus") and not names_user(path, "fay")
    assert time.perf_counter() - start < 1.0
    assert len("".join(file_strings(path))) < 1000


def test_a_plain_yaml_is_read_as_its_strings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("users: [gus, fay]\nnote: &n x\nagain: *n\n")
    assert sorted(file_strings(path)) == ["again", "fay", "gus", "note", "users", "x", "x"]
