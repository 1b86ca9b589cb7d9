"""The OpenAI-compatible HTTP app: one base model, every user's adapter, mixed batches.

    GET  /v1/models               the base and the users' adapters (`<base>:<user_id>`)
    POST /v1/completions          text completion (stream or not)
    POST /v1/chat/completions     chat: the last user message is the task input
    GET  /health
    POST/DELETE /admin/adapters/{user_id}, GET /admin/adapters, POST /admin/tokens

`create_app` only wires: the batcher's lifetime, the error handlers (OpenAI's error
body; status by error type, `serve.errors`) and the routers (`serve.routes`), which reach
the `Server` (`serve.server`) through `app.state.server`.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from ownlm.errors import OwnlmError
from ownlm.serve.errors import (
    ApiError,
    api_error_handler,
    ownlm_error_handler,
    validation_error_handler,
)
from ownlm.serve.routes import admin, health, openai
from ownlm.serve.server import Server


def create_app(server: Server) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        server.batcher.start()  # the batch loop runs on the server's event loop
        yield
        await server.batcher.stop()

    app = FastAPI(title="ownlm", lifespan=lifespan)
    app.state.server = server
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(OwnlmError, ownlm_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    for router in (openai.router, admin.router, health.router):
        app.include_router(router)
    return app
