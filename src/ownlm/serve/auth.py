"""FastAPI dependencies that authenticate a request: `principal` (any valid token) and
`admin` (an admin token). Tokens themselves live in `ownlm.store.tokens`.

    @router.get("/v1/models")
    async def models(who: Principal = Depends(principal)): ...
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header

from ownlm.errors import StoreError
from ownlm.log import get_logger
from ownlm.serve.errors import ApiError
from ownlm.serve.server import Server, get_server
from ownlm.store import Principal

log = get_logger(__name__)

HINT = "create one with `ownlm token create --run-dir RUN --user U`"


def principal(
    server: Annotated[Server, Depends(get_server)],
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    """Who sent the request, from `Authorization: Bearer <token>`; 401 otherwise."""
    if not authorization or not authorization.startswith("Bearer "):
        raise ApiError(
            401,
            f"missing API key: send 'Authorization: Bearer <token>' ({HINT})",
            code="invalid_api_key",
        )
    try:
        who = server.tokens.check(authorization.removeprefix("Bearer ").strip())
    except StoreError as e:  # tokens.json unreadable: the operator's to fix, not the client's
        log.error("%s", e, extra={"markup": False})
        raise ApiError(
            500,
            "the server cannot check API keys: its token file is unreadable (the server log "
            "says why); its operator must restore it",
            code="server_error",
        ) from None
    if who is None:
        raise ApiError(401, f"unknown API key; {HINT}", code="invalid_api_key")
    return who


def admin(who: Annotated[Principal, Depends(principal)]) -> Principal:
    """The sender, if their token is an admin token; 403 otherwise."""
    if not who.admin:
        raise ApiError(
            403,
            "this endpoint needs an admin token (`ownlm token create --run-dir RUN --admin`)",
            code="permission_denied",
        )
    return who
