"""`ownlm eval --study NAME`: every registered study resolves to a function of
(run, max_users), and an unknown name stops the command before any work."""

import importlib
import inspect

from typer.testing import CliRunner

from ownlm.cli import app
from ownlm.studies import STUDIES


def test_every_registered_study_is_a_function_of_run_and_max_users():
    assert {"shift", "shift-swap", "peft-methods", "formats"} <= set(STUDIES)
    for name, where in STUDIES.items():
        module, _, function = where.partition(":")
        study = getattr(importlib.import_module(module), function or "run_study")
        params = list(inspect.signature(study).parameters)
        assert params[:2] == ["run", "max_users"], (name, params)


def test_an_unknown_study_is_refused_before_the_run_is_opened(tmp_path):
    missing = tmp_path / "runs" / "never-trained"  # no run: opening it would fail otherwise
    r = CliRunner().invoke(
        app,
        ["eval", "--set", f"output_dir={missing.parent}", "--set", "name=never-trained",
         "--study", "shift,nope"],
    )  # fmt: skip
    assert r.exit_code != 0
    out = r.output + str(r.exception or "")
    assert "unknown study 'nope'" in out and "peft-methods" in out
    assert not missing.exists()
