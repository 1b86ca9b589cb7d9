"""`serve` shows a run's first admin token once, then serves."""

from __future__ import annotations

import pytest
import uvicorn

from ownlm.config import ServeSettings
from ownlm.errors import ConfigError
from ownlm.serve.launch import serve
from ownlm.store import TokenStore
from ownlm.testing import toy_run


def test_serve_creates_and_shows_an_admin_token_once(tmp_path, monkeypatch, capsys):
    toy_run(tmp_path, ["alice"])
    started = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda uv: started.append(uv.config))
    settings = ServeSettings(cache_size=2, max_batch_size=2)
    serve(tmp_path, port=8123, settings=settings)
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert TokenStore(tmp_path).check(token).admin  # printed once, on stdout
    config = started[0]
    assert (config.host, config.port, config.log_level) == ("127.0.0.1", 8123, "info")
    assert config.http.header_timeout_s == 10 and config.http.cap <= 512  # the guarded h11
    serve(tmp_path, settings=settings)  # the run has an admin now: no new token
    assert "ownlm-" not in capsys.readouterr().out
    assert len(started) == 2


def test_cli_serve_passes_the_limits(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ownlm.cli import app
    from ownlm.serve import launch

    got = []
    monkeypatch.setattr(launch, "serve", lambda run_dir, host, port, settings: got.append(settings))
    args = [
        "serve",
        "--run-dir",
        str(tmp_path),
        "--max-body-mb",
        "0.5",
        "--max-prompt-tokens",
        "100",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (got[0].max_body_bytes, got[0].max_prompt_tokens, got[0].max_queued) == (
        2**19,
        100,
        1024,
    )
    r = CliRunner().invoke(app, ["serve", "--run-dir", str(tmp_path), "--max-body-mb", "0"])
    assert r.exit_code == 2 and "--max-body-mb must be > 0" in r.output
    r = CliRunner().invoke(app, ["serve", "--run-dir", str(tmp_path), "--max-queued", "0"])
    assert r.exit_code == 2 and "max_queued is 0" in r.output and not got[1:]


def test_settings_refuse_a_server_without_limits():
    for bad in ({"max_body_bytes": 0}, {"max_prompt_tokens": -1}, {"max_queued": 0}):
        with pytest.raises(ConfigError, match=f"{next(iter(bad))} is"):
            ServeSettings(**bad)
