"""The OpenAI-compatible HTTP app: one base model, every user's adapter, mixed batches.

    GET  /v1/models               the base and the users' adapters (`<base>:<user_id>`)
    POST /v1/completions          text completion (stream or not)
    POST /v1/chat/completions     chat: the last user message is the task input
    GET  /health
    POST/DELETE /admin/adapters/{user_id}, GET /admin/adapters, POST /admin/tokens
    GET  /openapi.json            the API's schema, to an admin token (no /docs, /redoc)

`create_app` only wires: the batcher's lifetime and the sweep that drops forgotten users
from memory, the body limit (`serve.limits`, in front of everything), the error handlers
(OpenAI's error body; status by error type, `serve.errors`) and the routers
(`serve.routes`), which reach the `Server` (`serve.server`) through `app.state.server`.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ownlm.errors import OwnlmError
from ownlm.log import get_logger
from ownlm.serve.errors import (
    ApiError,
    api_error_handler,
    http_error_handler,
    ownlm_error_handler,
    unexpected_error_handler,
    validation_error_handler,
)
from ownlm.serve.limits import BodyLimit
from ownlm.serve.routes import admin, health, openai
from ownlm.serve.server import Server

log = get_logger(__name__)
SWEEP_S = 1.0  # how often memory is checked for users forgotten by another process


def create_app(server: Server) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        server.batcher.start()  # the batch loop runs on the server's event loop
        sweeper = asyncio.get_running_loop().create_task(sweep(server))
        yield
        sweeper.cancel()
        await server.batcher.stop()

    # no /docs, /redoc: their pages load scripts from a CDN; the schema is for admins
    app = FastAPI(title="ownlm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    app.add_middleware(BodyLimit, max_bytes=server.settings.max_body_bytes)
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(OwnlmError, ownlm_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)  # 404/405 of routing too
    app.add_exception_handler(Exception, unexpected_error_handler)  # a bug: still OpenAI's shape
    for router in (openai.router, admin.router, admin.schema, health.router):
        app.include_router(router)
    return app


async def sweep(server: Server) -> None:
    """Every SWEEP_S, drop from memory the users whose adapters left the store (`ownlm
    forget` in another process), even if no request names them again."""
    while True:
        await asyncio.sleep(SWEEP_S)
        try:
            await run_in_threadpool(server.forget_gone)
        except Exception:  # the next sweep tries again; serving goes on
            log.exception("sweep of forgotten users failed")
