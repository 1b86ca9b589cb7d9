"""The CLI as a new user meets it: prepare, train, eval, forget, and clear errors."""

import json

import pytest
from typer.testing import CliRunner

from ownlm.cli import app
from tests.conftest import TINY_OVERRIDES

runner = CliRunner()


def _sets(tmp_path, *extra):
    out = []
    for kv in [
        f"output_dir={tmp_path / 'runs'}",
        "name=cli",
        "data=demo-headlines",
        "max_users=5",
        "max_queries=1",
        *TINY_OVERRIDES,
        *extra,
    ]:
        out += ["--set", kv]
    return out


def test_prepare_train_eval_forget(tmp_path, monkeypatch):
    from ownlm import run as run_module

    monkeypatch.setattr(run_module, "CACHE_DIR", tmp_path / "cache")
    sets = _sets(tmp_path)
    r = runner.invoke(app, ["prepare", *sets])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "runs/cli/data_summary.json").read_text())
    assert summary["task"] == "demo-headlines" and summary["test_users"] >= 1
    r = runner.invoke(app, ["train", *sets, "--variants", "oppu"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", *sets, "--set", "methods=base,oppu"])
    assert r.exit_code == 0, r.output
    results = json.loads((tmp_path / "runs/cli/eval/results.json").read_text())
    methods = [row["method"] for row in results["results"]]
    assert methods == ["population-majority", "user-majority", "base", "oppu"]
    assert (tmp_path / "runs/cli/eval/methods.png").stat().st_size > 1000
    user = results["results"][-1]["predictions"][0]["user_id"]
    r = runner.invoke(app, ["forget", "--user", user, "--run-dir", str(tmp_path / "runs/cli")])
    assert r.exit_code == 0 and "adapters" in r.output
    assert not (tmp_path / f"runs/cli/adapters/users/{user}").exists()


def test_errors_are_one_clear_line(tmp_path):
    r = runner.invoke(
        app,
        [
            "prepare",
            "--set",
            f"output_dir={tmp_path}",
            "--set",
            f"data={tmp_path / 'missing.json'}",
        ],
    )
    assert r.exit_code == 2 and "error:" in r.output and "missing.json" in r.output
    r = runner.invoke(app, ["prepare", "--set", f"output_dir={tmp_path}", "--set", "task=LaMP-99"])
    assert r.exit_code == 2 and "unknown task" in r.output
    r = runner.invoke(app, ["train", "--set", f"output_dir={tmp_path}", "--stages", "everything"])
    assert r.exit_code == 2 and "unknown stage" in r.output


def test_forget_says_what_stage_2_keeps_of_a_group_train_user(tmp_path):
    router = tmp_path / "run" / "adapters" / "router"
    router.mkdir(parents=True)
    (router / "router.json").write_text(json.dumps({"users": ["u7"]}))
    r = runner.invoke(app, ["forget", "--user", "u7", "--run-dir", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert "stage-2" in r.output and "retrain stage 2" in r.output
    r = runner.invoke(app, ["forget", "--user", "u8", "--run-dir", str(tmp_path / "run")])
    assert "stage-2" not in r.output


def test_eval_rejects_bad_active_levels_before_any_work(tmp_path):
    r = runner.invoke(app, ["eval", *_sets(tmp_path), "--active-levels", "2,x"])
    assert r.exit_code != 0
    assert "--active-levels takes positive integers" in r.output
    assert not (tmp_path / "runs" / "cli").exists()  # nothing was built or evaluated


def _user_line(uid="ann", tag="comedy", gold="comedy"):
    history = [{"description": "A heist in space.", "tag": tag}]
    return json.dumps(
        {"user_id": uid, "history": history, "queries": [{"input": "q", "gold": gold}]}
    )


BAD_DATA = {
    "latin-1": (_user_line().replace("heist", "h\u00e9ist").encode("latin-1"), "byte 0xe9 at"),
    "label": (_user_line(tag="western").encode(), "tag 'western' is not one of task LaMP-2's"),
    "markup": (_user_line(tag="[/x]").encode(), "tag '[/x]' is not one of task LaMP-2's labels"),
    "gold": (_user_line(gold="western").encode(), "query 0 (id 'ann-q0'): gold 'western'"),
    "number": (_user_line(tag=3).encode(), "tag 3 is a number"),
    "path": (_user_line("../../etc").encode(), "user_id '../../etc' starts with '.'"),
    "twice": (f"{_user_line()}\n{_user_line()}".encode(), "'ann' at line 2 repeats line 1"),
    "array": (f"[{_user_line()}]".encode(), "holds a JSON array"),
    "empty": (b"", "is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_train_on_bad_data_is_one_line_before_any_work(tmp_path, case):
    content, message = BAD_DATA[case]
    path = tmp_path / "mine.jsonl"
    path.write_bytes(content)
    sets = _sets(tmp_path, f"data={path}", "task=LaMP-2")
    r = runner.invoke(app, ["train", *sets])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.output
    assert str(path) in lines[0] and "Traceback" not in r.output
    run_dir = tmp_path / "runs" / "cli"
    assert not (run_dir / "base").exists() and not (run_dir / "adapters").exists()


@pytest.mark.parametrize(
    "override, message",
    [("user.r=0", "'user.r' is 0; it must be an integer >= 1"),
     ("test_frac=1.5", "'test_frac' is 1.5; it must be in (0, 1)"),
     ("device=gpu", "'device' is 'gpu'; it must be one of auto, cpu"),
     ("user.lr", "must look like key=value")],
)  # fmt: skip
def test_train_with_nonsense_settings_is_one_line_before_any_work(tmp_path, override, message):
    r = runner.invoke(app, ["train", *_sets(tmp_path, override)])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and message in lines[0], r.output
    assert not (tmp_path / "runs" / "cli").exists()


def test_a_billion_laughs_config_is_one_short_line_at_once(tmp_path):
    import time

    from tests.test_safe_yaml import laughs

    path = tmp_path / "c.yaml"
    path.write_text(laughs(6))
    start = time.perf_counter()
    r = runner.invoke(app, ["train", "--config", str(path), *_sets(tmp_path)])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and "repeat more than" in lines[0], r.output
    assert len(lines[0]) < 300 and time.perf_counter() - start < 2


def _one_error_line(r) -> str:
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "Traceback" not in r.output
    return lines[0]


def test_an_output_dir_that_is_a_file_is_one_line_naming_it(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    line = _one_error_line(runner.invoke(app, ["prepare", *_sets(tmp_path)]))
    assert f"'{tmp_path / 'runs'}' is a file, not a folder: move it away" in line
    (tmp_path / "runs").unlink()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "cli").write_text("not a folder either")
    line = _one_error_line(runner.invoke(app, ["prepare", *_sets(tmp_path)]))
    assert "cli' is a file, not a folder" in line and "output_dir" in line


@pytest.mark.parametrize(
    "code, message",
    [(13, "permission denied on '{}': make it writable"),
     (30, "'{}' is on a read-only file system: remount it writable")],
    ids=["permission", "read-only"],
)  # fmt: skip
def test_an_output_dir_ownlm_may_not_write_is_one_line_naming_it(
    tmp_path, monkeypatch, code, message
):
    """Tests run as root, which a chmod does not stop: the folder refuses as a read-only
    mount (EROFS) or a folder of another user (EACCES) would."""
    import os
    import pathlib

    real_mkdir = pathlib.Path.mkdir
    runs = tmp_path / "runs"

    def mkdir(self, *args, **kwargs):
        if self == runs or runs in self.parents:
            raise OSError(code, os.strerror(code), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    line = _one_error_line(runner.invoke(app, ["prepare", *_sets(tmp_path)]))
    assert message.format(runs / "cli") in line or message.format(runs) in line, line
    assert "--set output_dir=DIR" in line


def test_help_keeps_bracketed_text():
    """Help is plain text: `pip install 'ownlm[ray]'` keeps its brackets (rich markup
    would take `[ray]` for a style and drop it)."""
    from typer.testing import CliRunner

    from ownlm.cli import app

    out = CliRunner().invoke(app, ["train", "--help"], terminal_width=200).output
    assert "'ownlm[ray]'" in out and "'ownlm[qlora]'" in out
