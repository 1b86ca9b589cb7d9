"""A live ownlm server on 127.0.0.1 (random free port, uvicorn in a thread) over a toy run."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn

from ownlm.serve.app import ServeSettings, build_server, create_app
from ownlm.serve.toy import toy_run

USERS = ["alice", "bob", "carol"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, server, port: int, thread, uv):
        self.server, self.port, self.thread, self.uv = server, port, thread, uv
        self.url = f"http://127.0.0.1:{port}"
        self.tokens: dict[str, str] = {}


def start_server(run_dir, settings: ServeSettings) -> LiveServer:
    server = build_server(run_dir, settings)
    port = free_port()
    uv = uvicorn.Server(
        uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not uv.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("ownlm test server did not start within 20 s")
        time.sleep(0.02)
    return LiveServer(server, port, thread, uv)


@pytest.fixture(scope="session")
def toy_run_dir(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("served-run")
    toy_run(run_dir, USERS)
    return run_dir


@pytest.fixture(scope="session")
def live(toy_run_dir):
    from ownlm.serve.auth import TokenStore

    store = TokenStore(toy_run_dir)
    srv = start_server(toy_run_dir, ServeSettings(cache_size=4, max_batch_size=4, max_wait_ms=20))
    srv.tokens = {u: store.create(u) for u in USERS} | {"admin": store.create(admin=True)}
    yield srv
    srv.uv.should_exit = True
    srv.thread.join(timeout=10)
