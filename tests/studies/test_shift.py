"""The behaviour-shift study: histories cut in time order, queries held out of every
training part, the rows scored on the tiny backbone in memory, the run untouched."""

import hashlib
import json
from dataclasses import replace

import pytest

from ownlm.data.records import Item
from ownlm.data.splits import shift_split, time_order
from ownlm.errors import ConfigError
from ownlm.run import Run
from ownlm.train.population import train_population


def _items(n, dates=None):
    return [Item(f"i{i}", {"x": str(i)}, dates[i] if dates else None) for i in range(n)]


def test_time_order_sorts_by_date_only_when_every_item_has_one():
    dated = _items(4, ["2021-03", "2020-01", "2021-03", "2019-12"])
    ordered, how = time_order(dated)
    assert how == "date" and [it.id for it in ordered] == ["i3", "i1", "i0", "i2"]  # ties: file
    partly = [*_items(2, ["2021", "2020"]), Item("i9", {"x": "9"})]
    assert time_order(partly) == (partly, "file")
    assert time_order(_items(3)) == (_items(3), "file")


def test_shift_split_cuts_old_new_and_held_queries():
    old, new, held = shift_split(list(range(20)))
    assert (old, new, held) == (list(range(10)), list(range(10, 15)), list(range(15, 20)))
    old, new, held = shift_split(list(range(40)), old_frac=0.25, max_queries=5)
    assert (len(old), len(new), len(held)) == (10, 25, 5)
    assert shift_split([0, 1, 2]) == ([0], [1], [2])
    assert shift_split([0, 1]) is None
    with pytest.raises(ConfigError, match="old_frac"):
        shift_split(list(range(10)), old_frac=1.0)


def _digests(run_dir):
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and "eval" not in p.relative_to(run_dir).parts
    }


@pytest.fixture
def based(tiny_cfg):
    run = Run(tiny_cfg)
    train_population(run)
    return run


def test_dated_histories_are_cut_by_date_and_queries_never_trained_on(based):
    from ownlm.studies.shift import shift_users

    user = based.split.test[0]
    n = len(user.history)
    dates = [f"2020-01-{n - i:02d}" for i in range(n)]  # newest first in the file
    history = [replace(it, date=d) for it, d in zip(user.history, dates, strict=True)]
    dated = replace(user, history=history)
    (su,), short = shift_users(based, [dated, replace(user, history=user.history[:2])])
    assert short == [user.user_id] and su.order == "date"
    newest_first = [it.id for it in user.history]
    assert [it.id for it in su.old.history] == newest_first[::-1][: n // 2]  # the oldest half
    held = {q.id for q in su.queries}
    assert held and not held & {it.id for it in su.updated.history}
    assert held == set(newest_first[: len(held)])  # the newest items
    assert all(
        q.gold == it.fields["tag"] for q in su.queries for it in user.history if it.id == q.id
    )


def test_study_scores_every_row_in_memory_and_leaves_the_run_alone(based, tmp_path):
    from ownlm.studies.shift import run_study

    before = _digests(based.dir)
    payload = run_study(based, max_users=2)
    assert _digests(based.dir) == before  # no store written, nothing else either
    rows = set(payload["table"])
    assert {"stale", "stale-old-context", "updated", "retrained", "rag", "pag"} <= rows
    assert {"population-majority", "user-majority", "user-majority-old"} <= rows
    assert payload["users"] == 2 and payload["order"] == {"date": 0, "file": 2}
    assert all(moved > 0 for moved in payload["update_moved"].values())  # updated != stale
    assert payload["table"]["updated"]["train_s_per_user"] > 0
    assert {(c["method"], c["baseline"]) for c in payload["comparisons"]} >= {
        ("updated", "stale"),
        ("retrained", "stale"),
        ("updated", "retrained"),
    }
    written = json.loads((based.dir / "eval" / "shift.json").read_text())
    assert written["table"]["updated"]["cell"] == payload["table"]["updated"]["cell"]
    assert (based.dir / "eval" / "shift.png").exists()


def _tagged(tags, prefix):
    return [Item(f"{prefix}{i}", {"description": "d", "tag": t}) for i, t in enumerate(tags)]


def test_planted_swap_drift_trades_the_two_labels_used_most_in_the_older_part(based):
    from ownlm.studies.shift import shift_users, swap_top_two

    old = _tagged(["comedy", "comedy", "drama"], "o")
    newer = swap_top_two(based.task, old, _tagged(["drama", "comedy", "action"], "n"))
    assert [it.fields["tag"] for it in newer] == ["comedy", "drama", "action"]
    user = based.split.test[0]
    (plain,), _ = shift_users(based, [user])
    (drifted,), _ = shift_users(based, [user], drift="swap")
    assert drifted.old.history == plain.old.history  # the older part is untouched
    assert [q.id for q in drifted.queries] == [q.id for q in plain.queries]
    asked = [Item(q.id, {"tag": q.gold}) for q in plain.queries]
    swapped = swap_top_two(based.task, plain.old.history, asked)
    assert [q.gold for q in drifted.queries] == [it.fields["tag"] for it in swapped]
    with pytest.raises(ConfigError, match="choose among swap"):
        shift_users(based, [user], drift="flip")
