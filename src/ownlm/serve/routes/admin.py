"""Admin endpoints (admin token only): load, reload and remove users' adapters; tokens.

GET    /admin/adapters              loaded and removed adapters
POST   /admin/adapters/{user_id}    (re)load from the store, checked
DELETE /admin/adapters/{user_id}    unload and stop serving (the store keeps it)
POST   /admin/tokens                {"user": "42"} or {"admin": true} -> a new token
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from ownlm.errors import OwnlmError
from ownlm.serve.auth import admin
from ownlm.serve.errors import api_error
from ownlm.serve.server import Server, get_server

router = APIRouter(prefix="/admin", dependencies=[Depends(admin)])
Serving = Annotated[Server, Depends(get_server)]


class TokenBody(BaseModel):
    user: str | None = None
    admin: bool = False


@router.get("/adapters")
async def loaded(server: Serving):
    return {"loaded": server.cache.loaded(), "removed": sorted(server.cache.removed)}


@router.post("/adapters/{user_id}")
async def load_adapter(user_id: str, server: Serving):
    try:
        slot = await run_in_threadpool(server.cache.reload, user_id)
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
    was_loaded = await run_in_threadpool(server.cache.remove, user_id)
    return {"user": user_id, "was_loaded": was_loaded, "status": "removed"}


@router.post("/tokens")
async def new_token(body: TokenBody, server: Serving):
    try:
        token = server.tokens.create(body.user, body.admin)
    except OwnlmError as e:  # ConfigError: not exactly one of a user or admin
        raise api_error(e, "user") from e
    return {"token": token, "user": body.user, "admin": body.admin}
