import json

import pytest
from rich.console import Console

from ownlm.evaluate.report import (
    MethodResult,
    NotRun,
    lamp_task_id,
    not_run_message,
    plot_buckets,
    plot_methods,
    print_gaps,
    print_table,
    reference_gaps,
    stage_warnings,
    write_json,
    write_lamp_predictions,
)


def _results():
    return [
        MethodResult("population", {"mae": 0.9, "rmse": 1.2}, is_reference=True),
        MethodResult("user", {"mae": 0.7, "rmse": 1.0}, is_reference=True),
        MethodResult("OPPU", {"mae": 0.5, "rmse": 1.1}, [("q1", "u1", "4", "5")], seconds=3.0),
        MethodResult("RAG", {"mae": 0.6, "rmse": 0.9}, [("q1", "u1", "5", "5")], seconds=1.0),
    ]


def test_print_table_marks_references_and_bolds_best():
    console = Console(record=True, width=120, force_terminal=True)
    table = print_table("LaMP-3", _results(), "mae", console=console)
    text = console.export_text()
    assert "population (reference)" in text and "OPPU" in text
    cells = {c.header: list(c._cells) for c in table.columns}
    assert "[bold]0.5000[/bold]" in cells["mae"]  # lower MAE is better
    assert "[bold]0.9000[/bold]" in cells["rmse"]
    assert [c.header for c in table.columns][:2] == ["method", "mae"]


def test_write_json_and_lamp_predictions(tmp_path):
    results = _results()
    path = write_json(tmp_path / "out" / "results.json", "LaMP-3", results)
    data = json.loads(path.read_text())
    assert data["task"] == "LaMP-3"
    assert data["results"][2]["predictions"] == [
        {"id": "q1", "user_id": "u1", "output": "4", "gold": "5"}
    ]
    path = write_lamp_predictions(tmp_path / "lamp.json", "LaMP-3", results[2])
    assert json.loads(path.read_text()) == {
        "task": "LaMP_3",
        "golds": [{"id": "q1", "output": "4"}],
    }
    assert lamp_task_id("lamp_2") == "LaMP_2" and lamp_task_id("peft-u") == "peft-u"


def test_plots_are_written(tmp_path):
    path = plot_methods(tmp_path / "m.png", "LaMP-3", _results(), "mae")
    assert path.read_bytes()[:4] == b"\x89PNG"
    table = {"1-10": {"RAG": 0.3, "OPPU": 0.35}, "11-50": {"RAG": 0.4, "OPPU": 0.5}}
    path = plot_buckets(tmp_path / "b.png", table, "accuracy")
    assert path.read_bytes()[:4] == b"\x89PNG"


def _not_run(n_users=2):
    users = {f"u{i}": "missing" for i in range(n_users)}
    return MethodResult(
        "oppu", {}, not_run=NotRun(f"{n_users}/9 users have no usable adapter", users, "ownlm x")
    )


def test_a_method_not_run_shows_its_status_never_a_score(tmp_path):
    console = Console(record=True, width=200, force_terminal=True)
    table = print_table("LaMP-3", [*_results(), _not_run()], "mae", console=console)
    cells = {c.header: list(c._cells) for c in table.columns}
    assert cells["method"][-1] == "oppu" and cells["mae"][-1] == "–"
    assert cells["seconds"][-1] == "–" and cells["status"][:-1] == [""] * 4
    assert "not run" in cells["status"][-1] and "2/9 users" in cells["status"][-1]
    data = json.loads(write_json(tmp_path / "r.json", "LaMP-3", [_not_run()]).read_text())
    assert data["results"][0]["metrics"] == {}
    assert data["results"][0]["not_run"] == {
        "reason": "2/9 users have no usable adapter",
        "users": {"u0": "missing", "u1": "missing"},
        "command": "ownlm x",
    }
    table = print_table("LaMP-3", _results(), "mae", console=console)
    assert "status" not in [c.header for c in table.columns]  # all scored: no status column


def test_not_run_message_names_five_users_and_the_fix():
    message = not_run_message(_not_run(7))
    assert message.startswith("oppu not run, 7/9 users have no usable adapter: u0 (missing)")
    assert "u4 (missing) and 2 more. Train them with: ownlm x" in message
    assert "u5" not in message and not_run_message(_results()[2]) == ""


def test_gaps_to_the_references_are_signed_plus_for_better():
    gaps = reference_gaps([*_results(), _not_run()], "mae")  # lower mae is better
    assert set(gaps) == {"OPPU", "RAG"}  # references and methods not run have no gap
    assert gaps["OPPU"] == pytest.approx({"population": 0.4, "user": 0.2})
    results = [
        MethodResult("user-majority", {"accuracy": 0.5}, is_reference=True),
        MethodResult("base", {"accuracy": 0.433}),
    ]
    console = Console(record=True, width=120)
    assert print_gaps(results, "accuracy", console=console) == ["base: vs user-majority -0.0670"]
    assert "+ = better" in console.export_text()


def test_stage_warnings_are_read_from_the_run_record():
    record = {
        "stages": {
            "population": {"inputs": "x", "warnings": ["stage 1 lost"]},
            "groups": {"inputs": "y", "warnings": []},
            "users": None,
        }
    }
    assert stage_warnings(record) == ["stage 1 lost"]
    assert stage_warnings(None) == [] and stage_warnings({"stages": {"population": {}}}) == []
    record["tuned"] = {"oppu": {"warning": "tune oppu: not above"}, "peft": {"warning": None}}
    assert stage_warnings(record) == ["stage 1 lost", "tune oppu: not above"]


def test_the_table_marks_each_method_beside_the_stage_that_did_not_learn():
    from ownlm.evaluate.report import method_notes

    methods = ["base", "oppu", "peft", "proper-user"]
    record = {
        "stages": {"population": {"warnings": []}, "groups": {"warnings": ["stage 2 lost"]}},
        "tuned": {"oppu": {"warning": "tune oppu: not above"}},
    }
    notes = method_notes(record, methods)
    assert set(notes) == {"oppu", "proper-user"}
    assert "groups did not learn" in notes["proper-user"] and "user's own" in notes["oppu"]
    record["stages"]["population"]["warnings"] = ["stage 1 lost"]
    notes = method_notes(record, methods)
    assert set(notes) == set(methods) and "population did not learn" in notes["base"]
    results = [MethodResult("user-majority", {"accuracy": 0.5}, is_reference=True)]
    results += [MethodResult(m, {"accuracy": 0.4}) for m in methods]
    console = Console(record=True, width=160)
    print_table("t", results, "accuracy", console=console, notes=notes)
    text = console.export_text()
    assert "oppu ⚠ population did not learn; user stage not above" in text
    assert "user-majority (reference)" in text and "user-majority (reference) ⚠" not in text


def test_eval_prints_the_gaps_and_the_stages_warnings(copy_run, capsys):
    from ownlm.evaluate.runner import evaluate_run

    run = copy_run("population")
    record = json.loads((run.dir / "run.json").read_text())
    record["stages"]["population"]["warnings"] = ["stage 1 (population): it lost to the majority"]
    (run.dir / "run.json").write_text(json.dumps(record))
    results = evaluate_run(run, ["base", "rag"])
    out = capsys.readouterr().out
    base = {r.method: r for r in results}["base"].metrics["accuracy"]
    users = {r.method: r for r in results}["user-majority"].metrics["accuracy"]
    assert "gap to the references on accuracy" in out
    assert "base: vs population-majority" in out and f"vs user-majority {base - users:+.4f}" in out
    assert "rag: vs population-majority" in out
    assert "training warning: stage 1 (population): it lost to the majority" in out
