"""A live ownlm server on 127.0.0.1 (random free port, uvicorn in a thread) over a toy run."""

from __future__ import annotations

import pytest

from ownlm.config import ServeSettings
from ownlm.serve.launch import serve_in_thread
from ownlm.serve.server import build_server
from ownlm.store.tokens import TokenStore
from ownlm.testing import toy_run

USERS = ["alice", "bob", "carol"]


class LiveServer:
    def __init__(self, server, uv, thread, port: int, tokens: dict[str, str]):
        self.server, self.uv, self.thread, self.port = server, uv, thread, port
        self.url = f"http://127.0.0.1:{port}"
        self.tokens = tokens  # "alice" ... and "admin" -> bearer token


@pytest.fixture(scope="session")
def toy_run_dir(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("served-run")
    toy_run(run_dir, USERS)
    return run_dir


@pytest.fixture(scope="session")
def live(toy_run_dir):
    store = TokenStore(toy_run_dir)
    tokens = {u: store.create(u) for u in USERS} | {"admin": store.create(admin=True)}
    server = build_server(
        toy_run_dir, ServeSettings(cache_size=4, max_batch_size=4, max_wait_ms=20)
    )
    uv, thread, port = serve_in_thread(server)
    yield LiveServer(server, uv, thread, port, tokens)
    uv.should_exit = True
    thread.join(timeout=10)
