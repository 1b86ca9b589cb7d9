"""Every methods table carries 95% intervals over users and the papers' paired
comparisons (issue #11 item 5), and the TF-IDF references for label tasks (item 6)."""

import json
from types import SimpleNamespace

import pytest
from rich.console import Console

from ownlm.evaluate.intervals import (
    add_intervals,
    comparison_pairs,
    interval_cells,
    paired_comparisons,
    print_comparisons,
)
from ownlm.evaluate.report import MethodResult, NotRun, plot_methods, print_table, write_json

TASK = SimpleNamespace(kind="rating", labels=("1", "2", "3", "4", "5"))


def _result(name, preds, reference=False):
    golds = ["3", "4", "2", "5", "1", "3"] * 5
    rows = [
        (f"q{i}", f"u{i // 2}", p, g) for i, (p, g) in enumerate(zip(preds, golds, strict=True))
    ]
    errors = [abs(float(p) - float(g)) for _, _, p, g in rows]
    return MethodResult(name, {"mae": sum(errors) / len(rows)}, rows, is_reference=reference)


def _results():
    golds = ["3", "4", "2", "5", "1", "3"] * 5
    return [
        _result("population-majority", ["3"] * 30, reference=True),
        _result("base", ["5" if g != "5" else "1" for g in golds]),  # far off everywhere
        _result("rag", [str(min(5, int(g) + 1)) for g in golds]),
        _result("oppu", golds[:-1] + ["5"]),  # right but once
        _result("proper-user", golds),
        MethodResult("peft", {}, not_run=NotRun("1/15 users have no usable adapter")),
    ]


def test_pairs_are_the_papers_comparisons_among_the_methods_scored():
    results = _results()
    assert comparison_pairs(results) == [
        ("oppu", "base"),
        ("oppu", "rag"),
        ("oppu", "population-majority"),
        ("proper-user", "oppu"),
    ]  # peft was not run: no pair
    control = [*results, _result("oppu-control", ["3"] * 30)]
    pairs = comparison_pairs(control)
    assert ("proper-user", "oppu-control") in pairs and ("oppu-control", "oppu") in pairs


def test_comparisons_are_signed_for_lower_is_better_and_marked():
    results = _results()
    comparisons = {
        (p.method, p.baseline): p for p in paired_comparisons(results, TASK, "mae", n_boot=300)
    }
    clear = comparisons[("oppu", "base")]
    assert clear.diff < 0 and clear.significant and clear.verdict == "oppu better, significant"
    close = comparisons[("proper-user", "oppu")]  # one query of one user apart
    assert close.low <= 0 <= close.high and close.verdict == "not significant"
    console = Console(record=True, width=200)
    lines = print_comparisons(list(comparisons.values()), 300, 0, console=console)
    assert lines[0].startswith("oppu - base: -") and lines[0].endswith("oppu better, significant")
    assert "mae difference (lower is better)" in console.export_text()


def test_table_json_and_chart_carry_the_intervals(tmp_path):
    results = _results()
    add_intervals(results, TASK, n_boot=200, seed=1)
    oppu = {r.method: r for r in results}["oppu"]
    low, high = oppu.intervals["mae"]
    assert low <= oppu.metrics["mae"] <= high and results[-1].intervals == {}
    table = print_table("t", results, "mae", console=Console(record=True, width=200))
    cells = list(table.columns[1]._cells)
    assert f"{oppu.metrics['mae']:.3f} [{low:.3f}, {high:.3f}]" in " ".join(cells)
    comparisons = paired_comparisons(results, TASK, "mae", n_boot=200, seed=1)
    path = write_json(tmp_path / "r.json", "t", results, comparisons, {"n_boot": 200})
    data = json.loads(path.read_text())
    assert data["bootstrap"] == {"n_boot": 200}
    saved = {r["method"]: r for r in data["results"]}
    assert saved["oppu"]["intervals"]["mae"] == pytest.approx([low, high])
    first = data["comparisons"][0]
    assert (first["method"], first["baseline"], first["better"]) == ("oppu", "base", True)
    assert plot_methods(tmp_path / "m.png", "t", results, "mae").read_bytes()[:4] == b"\x89PNG"


def test_interval_cells_for_a_studys_own_table():
    cells = interval_cells(_results(), TASK, "mae", n_boot=100)
    assert set(cells) == {"population-majority", "base", "rag", "oppu", "proper-user"}
    assert cells["proper-user"] == "0.000 [0.000, 0.000]"


def test_eval_shows_intervals_comparisons_and_the_tfidf_references(copy_run, capsys):
    from ownlm.evaluate.runner import evaluate_run

    run = copy_run("users")
    run.cfg.n_boot = 200
    results = {r.method: r for r in evaluate_run(run, ["base", "oppu"])}
    out = capsys.readouterr().out
    for name in ("tfidf", "tfidf-user"):  # demo-tags is a label task
        assert results[name].is_reference and "accuracy" in results[name].intervals
        assert len(results[name].predictions) == len(results["base"].predictions)
    assert "tfidf-user (reference)" in out
    assert "paired bootstrap over users (200 resamples, seed 0)" in out
    assert "oppu - base:" in out and "oppu - tfidf-user:" in out
    saved = json.loads((run.dir / "eval/results.json").read_text())
    assert {r["method"] for r in saved["results"]} >= {"tfidf", "tfidf-user", "oppu"}
    assert saved["bootstrap"]["unit"] == "user" and saved["bootstrap"]["n_boot"] == 200
    pairs = [(c["method"], c["baseline"]) for c in saved["comparisons"]]
    assert pairs == [
        ("oppu", "base"),
        ("oppu", "population-majority"),
        ("oppu", "user-majority"),
        ("oppu", "tfidf"),
        ("oppu", "tfidf-user"),
    ]
