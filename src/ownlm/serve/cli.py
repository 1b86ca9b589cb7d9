"""Entry points the `ownlm` CLI wires up: `ownlm serve` and `ownlm token create`."""

from __future__ import annotations

from pathlib import Path

from ownlm.serve.auth import TokenStore


def create_token(run_dir: Path, user_id: str | None = None, admin: bool = False) -> str:
    """Create an API token for `user_id` (or an admin token), print it once, return it.
    Only its scrypt hash is kept, in <run>/tokens.json."""
    token = TokenStore(Path(run_dir)).create(user_id, admin)
    who = "admin" if admin else f"user {user_id}"
    print(f"token for {who} (shown once, keep it secret):\n{token}")
    return token


def serve(
    run_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    cache_size: int = 64,
    max_batch_size: int = 16,
    max_wait_ms: float = 10,
) -> None:
    """Serve a trained run over OpenAI's HTTP API until interrupted."""
    import uvicorn

    from ownlm.serve.app import ServeSettings, build_server, create_app

    run_dir = Path(run_dir)
    server = build_server(run_dir, ServeSettings(cache_size, max_batch_size, max_wait_ms))
    if not server.tokens.has_admin():
        create_token(run_dir, None, admin=True)
    print(
        f"serving {server.base} and {len(server.store.names('user'))} user adapters on http://{host}:{port}/v1"
    )
    uvicorn.run(create_app(server), host=host, port=port, log_level="info")


def serve_in_thread(server, host: str = "127.0.0.1", port: int = 0, timeout: float = 20):
    """Start uvicorn for a built `Server` on a daemon thread (tests, load test).
    Returns (uvicorn.Server, thread, port); stop with `uv.should_exit = True`."""
    import socket
    import threading
    import time

    import uvicorn

    from ownlm.serve.app import create_app

    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    uv = uvicorn.Server(
        uvicorn.Config(create_app(server), host=host, port=port, log_level="warning")
    )
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.time() + timeout
    while not uv.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError(f"server on {host}:{port} did not start within {timeout} s")
        time.sleep(0.02)
    return uv, thread, port
