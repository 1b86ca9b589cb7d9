"""Admin endpoints (admin token only): load, reload and remove users' adapters; tokens.

GET    /admin/adapters              loaded and removed adapters
POST   /admin/adapters/{user_id}    (re)load from the store, checked
DELETE /admin/adapters/{user_id}    unload and stop serving (the store keeps it); 404 if unknown
POST   /admin/tokens                {"user": "42"} or {"admin": true} -> a new token, for a
                                    user the run knows (an adapter, or in its data)
GET    /openapi.json                the API's schema (`schema`: FastAPI's own route is off)
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from ownlm.errors import OwnlmError
from ownlm.serve.auth import admin
from ownlm.serve.errors import ApiError, api_error
from ownlm.serve.server import Server, get_server, user_id_problem

router = APIRouter(prefix="/admin", dependencies=[Depends(admin)])
schema = APIRouter(dependencies=[Depends(admin)])
Serving = Annotated[Server, Depends(get_server)]


class TokenBody(BaseModel):
    model_config = ConfigDict(strict=True)  # "admin": "yes" is refused, not read as true
    user: str | None = None
    admin: bool = False


@schema.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> dict:
    return request.app.openapi()


def checked(user_id: str) -> str:
    """`user_id` if it can name a stored adapter; 404 otherwise (never a path outside
    the store, never a 500 from the filesystem)."""
    problem = user_id_problem(user_id)
    if problem:
        raise ApiError(404, f"no adapter for user {user_id[:100]!r}: {problem}", "user_id")
    return user_id


@router.get("/adapters")
async def loaded(server: Serving):
    await run_in_threadpool(server.forget_gone)  # never list a user forgotten meanwhile
    return {"loaded": server.cache.loaded(), "removed": sorted(server.cache.removed)}


@router.post("/adapters/{user_id}")
async def load_adapter(user_id: str, server: Serving):
    try:
        slot = await run_in_threadpool(server.cache.reload, checked(user_id))
    except OwnlmError as e:  # 404 none stored, 409 corrupt or for another base
        raise api_error(e, "user_id") from e
    return {
        "user": user_id,
        "model": f"{server.base}:{user_id}",
        "slot": slot,
        "status": "loaded",
    }


@router.delete("/adapters/{user_id}")
async def remove_adapter(user_id: str, server: Serving):
    try:
        was_loaded = await run_in_threadpool(server.cache.remove, checked(user_id))
    except OwnlmError as e:  # 404: neither stored nor loaded
        raise api_error(e, "user_id") from e
    return {"user": user_id, "was_loaded": was_loaded, "status": "removed"}


@router.post("/tokens")
async def new_token(body: TokenBody, server: Serving):
    def create() -> str:
        if body.user and not body.admin:  # a user the run knows, as `ownlm token create`
            data = server.personalizer.users if server.personalizer else ()
            server.tokens.check_known(body.user, lambda: data)
        return server.tokens.create(body.user, body.admin)

    try:
        token = await run_in_threadpool(create)  # scrypt and file locks: off the event loop
    except OwnlmError as e:  # ConfigError: not one of a user or admin; NotFoundError: unknown
        raise api_error(e, "user") from e
    return {"token": token, "user": body.user, "admin": body.admin}
