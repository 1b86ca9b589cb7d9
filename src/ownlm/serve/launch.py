"""Start the server: `serve` (what `ownlm serve` runs, until interrupted) and
`serve_in_thread` (a live server beside the caller, for tests and the load test)."""

from __future__ import annotations

from pathlib import Path

from ownlm.config import ServeSettings
from ownlm.log import console, get_logger

log = get_logger(__name__)


def serve(
    run_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
) -> None:
    """Serve a trained run over OpenAI's HTTP API until interrupted. A run without an
    admin token gets one, shown here once (only its hash is kept)."""
    import uvicorn

    from ownlm.serve.app import create_app
    from ownlm.serve.server import build_server

    server = build_server(Path(run_dir), settings)
    if not server.tokens.has_admin():
        token = server.tokens.create(admin=True)
        log.info("no admin token in this run yet; created one (shown once, keep it secret):")
        console.print(token, soft_wrap=True)
    log.info(
        "serving %s and %d user adapters on http://%s:%d/v1",
        server.base,
        len(server.store.names("user")),
        host,
        port,
        extra={"markup": False},  # names and hosts are not rich markup
    )
    uvicorn.Server(uvicorn_config(create_app(server), server.settings, host, port)).run()


def uvicorn_config(app, settings: ServeSettings, host: str, port: int, log_level="info"):
    """uvicorn's settings for the app: its h11 protocol with the header deadline and the
    connection cap of `settings` (`serve.connections`)."""
    import uvicorn

    from ownlm.serve.connections import guarded_h11

    http = guarded_h11(settings.header_timeout_s, settings.max_connections)
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=http)


def serve_in_thread(server, host: str = "127.0.0.1", port: int = 0, timeout: float = 20):
    """Start uvicorn for a built `Server` on a daemon thread; port 0 picks a free one.
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
    uv = uvicorn.Server(uvicorn_config(create_app(server), server.settings, host, port, "warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.time() + timeout
    while not uv.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError(
                f"server on {host}:{port} did not start within {timeout} s; "
                "is the port taken? pass another port, or a longer timeout"
            )
        time.sleep(0.02)
    return uv, thread, port
