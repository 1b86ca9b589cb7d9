"""`serve` shows a run's first admin token once, then serves."""

from __future__ import annotations

import uvicorn

from ownlm.config import ServeSettings
from ownlm.serve.launch import serve
from ownlm.store import TokenStore
from ownlm.testing import toy_run


def test_serve_creates_and_shows_an_admin_token_once(tmp_path, monkeypatch, capsys):
    toy_run(tmp_path, ["alice"])
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append(kw))
    settings = ServeSettings(cache_size=2, max_batch_size=2)
    serve(tmp_path, port=8123, settings=settings)
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert TokenStore(tmp_path).check(token).admin  # printed once, on stdout
    assert started == [{"host": "127.0.0.1", "port": 8123, "log_level": "info"}]
    serve(tmp_path, settings=settings)  # the run has an admin now: no new token
    assert "ownlm-" not in capsys.readouterr().out
    assert len(started) == 2
