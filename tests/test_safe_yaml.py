"""ownlm's one YAML loader: a few hundred bytes of nested aliases (a "billion laughs")
are refused before they are built, cheaply, in one short line."""

import time

import pytest

from ownlm.errors import ConfigError
from ownlm.safe_yaml import MAX_ALIAS_VALUES, load_yaml


def laughs(levels: int = 6, key: str = "methods") -> str:
    """`levels` lists of ten aliases each to the one before: 10**levels values."""
    lines = [
        f"{key}:",
        '  - &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
    ]
    for i in range(1, levels):
        lines.append(f"  - &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]")
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_is_refused_at_once_in_one_short_line():
    text = laughs(9)  # a billion values from 500 bytes
    assert len(text) < 600
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"x.yaml: its aliases \(\*name\) repeat more than") as e:
        load_yaml(text, "config file x.yaml")
    assert time.perf_counter() - start < 1.0
    assert len(str(e.value)) < 200 and "\n" not in str(e.value)


def test_aliases_that_repeat_little_are_read_as_written():
    text = "base: &b {lr: 0.001, r: 8}\nuser: {<<: *b, r: 4}\nagain: *b\n"
    assert load_yaml(text, "x") == {
        "base": {"lr": 0.001, "r": 8},
        "user": {"lr": 0.001, "r": 4},
        "again": {"lr": 0.001, "r": 8},
    }
    wide = "a: &a [" + ", ".join(["1"] * 100) + "]\nb: [" + ", ".join(["*a"] * 90) + "]\n"
    assert len(load_yaml(wide, "x")["b"]) == 90  # 9,090 values: under the bound
    assert MAX_ALIAS_VALUES < 10_100


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: &a [1, *a]\n", "an alias refers to the value that holds it"),
        ("[" * 5000 + "]" * 5000, "nests too deeply"),
        ("a: !!python/object:os.system " + "x" * 10_000, "not valid YAML: could not determine"),
        ("a: *" + "n" * 10_000 + "\n", "not valid YAML: found undefined alias"),
    ],
)
def test_a_hostile_document_is_one_short_line(text, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_yaml(text, "task file t.yaml")
    assert len(str(e.value)) < 300 and "\n" not in str(e.value)


def test_empty_is_none():
    assert load_yaml("", "x") is None and load_yaml("# nothing\n", "x") is None
