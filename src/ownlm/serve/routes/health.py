"""GET /health: liveness and counters, no token needed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from ownlm.serve.server import Server, get_server

router = APIRouter()


@router.get("/health")
async def health(server: Annotated[Server, Depends(get_server)]):
    return {
        "status": "ok",
        "base": server.base,
        "loaded_adapters": len(server.cache.loaded()),
        "batches": server.batcher.batches,
        "rows": server.batcher.rows,
    }
