"""`ownlm demo`: the pipeline end to end on a built-in dataset, and an older demo run
(trained with other settings) refused unless `overwrite` moves it aside."""

import pytest
import yaml

from ownlm.errors import OwnlmError
from tests.conftest import TINY_OVERRIDES


def _demo_config(path, user_lr: float):
    config = {"name": "demo-mini", "data": "demo-tags", "backbone": "tiny", "max_users": 6}
    for key_value in [*TINY_OVERRIDES, f"user.lr={user_lr}"]:
        key, value = key_value.split("=")
        section, name = key.split(".")
        config.setdefault(section, {})[name] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_demo_runs_and_an_older_demo_run_is_moved_aside_with_overwrite(tmp_path, monkeypatch):
    from ownlm import run as run_module
    from ownlm.studies.demo import run_demo

    monkeypatch.setattr(run_module, "CACHE_DIR", tmp_path / "cache")
    out = tmp_path / "runs"
    table = run_demo([_demo_config(tmp_path / "a.yaml", 1e-3)], str(out))
    assert table.row_count == 1 and (out / "demo-mini" / "eval" / "results.json").is_file()
    cells = {c.header: c._cells[0] for c in table.columns}
    for column in ("OPPU - base [95% CI]", "OPPU - user's own [95% CI]"):
        diff, interval = cells[column].split(" [")  # e.g. "+0.100 [-0.200, +0.400]"
        low, high = (float(x) for x in interval.split("]")[0].split(", "))
        assert low <= float(diff) <= high

    newer = _demo_config(tmp_path / "b.yaml", 2e-3)  # the demo config changed since
    with pytest.raises(OwnlmError, match="--overwrite"):
        run_demo([newer], str(out))
    assert run_demo([newer], str(out), overwrite=True).row_count == 1
    assert [p.name.split(".old-")[0] for p in out.glob("demo-mini.old-*")] == ["demo-mini"]
