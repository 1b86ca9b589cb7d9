"""HTTP errors in OpenAI's shape, and the one place that picks a status for ownlm's errors.

Every error body reads {"error": {"message", "type", "param", "code"}}. The status of
one of ownlm's typed errors (`ownlm.errors`) comes from its type alone, through
`STATUS_BY_TYPE`; nothing here reads a message's text to decide.
"""

from __future__ import annotations

from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ownlm.errors import (
    ConfigError,
    DataError,
    NotFoundError,
    OwnlmError,
    RequestError,
    StoreError,
)
from ownlm.log import get_logger

log = get_logger(__name__)

# Checked in order, so a subclass sits above its parent (NotFoundError is a StoreError).
STATUS_BY_TYPE: tuple[tuple[type[OwnlmError], int], ...] = (
    (NotFoundError, 404),  # nothing stored under that name: no adapter, or removed
    (StoreError, 409),  # an adapter is stored but corrupt or for another base
    (ConfigError, 400),
    (DataError, 400),
    (RequestError, 400),  # e.g. prompt + max_tokens over the context
)


class ApiError(Exception):
    """An HTTP error with OpenAI's body, raised where the route knows the status itself
    (401, 403, a bad field of the request)."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @property
    def type(self) -> str:
        return error_type(self.status)


def error_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status."""
    return {
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
    }.get(status, "invalid_request_error" if status < 500 else "server_error")


def status_of(e: OwnlmError) -> int:
    """The HTTP status of one of ownlm's errors; 500 for a kind no client can fix."""
    return next((status for kind, status in STATUS_BY_TYPE if isinstance(e, kind)), 500)


def api_error(e: OwnlmError, param: str | None = None) -> ApiError:
    """`e` as an HTTP error about request field `param`. A 404 about the `model` field
    carries OpenAI's code `model_not_found`, which clients branch on."""
    status = status_of(e)
    code = "model_not_found" if status == 404 and param == "model" else None
    return ApiError(status, str(e), param, code)


def error_body(message: str, type_: str, param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, type_: str, param=None, code=None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status)


async def api_error_handler(_: HttpRequest, e: ApiError) -> JSONResponse:
    return error_response(e.status, e.message, e.type, e.param, e.code)


async def ownlm_error_handler(request: HttpRequest, e: OwnlmError) -> JSONResponse:
    """Any of ownlm's errors a route did not turn into an ApiError itself."""
    return await api_error_handler(request, api_error(e))


async def http_error_handler(request: HttpRequest, e: HTTPException) -> JSONResponse:
    """Starlette's own HTTP errors (no such path 404, wrong method 405, a body that
    could not be parsed 400) in OpenAI's shape, like every other error."""
    hint = {
        404: f"no endpoint {request.url.path!r}; the API is under /v1 (GET /v1/models)",
        405: f"{request.method} is not allowed on {request.url.path!r}",
        400: "request body could not be read as JSON (malformed, or nested too deeply)",
    }.get(e.status_code, str(e.detail))
    return error_response(e.status_code, hint, error_type(e.status_code))


async def validation_error_handler(request: HttpRequest, e: RequestValidationError) -> JSONResponse:
    err = e.errors()[0] if e.errors() else {}
    if err.get("type") == "json_invalid":
        return error_response(
            400, f"request body is not valid JSON: {err.get('msg')}", "invalid_request_error"
        )
    kind = request.headers.get("content-type", "")
    if request.method == "POST" and "json" not in kind:
        return error_response(
            400,
            f"request body must be JSON: send 'Content-Type: application/json' (got {kind!r})",
            "invalid_request_error",
        )
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    return error_response(
        422,
        f"invalid value for '{param}': {err.get('msg', 'invalid request')}",
        "invalid_request_error",
        param,
    )


async def unexpected_error_handler(request: HttpRequest, e: Exception) -> JSONResponse:
    """An error no route expected (a bug): logged with its traceback, answered 500 in
    OpenAI's shape without internals; the server keeps serving."""
    log.error("%s %s failed", request.method, request.url.path, exc_info=e)
    return error_response(
        500,
        f"internal error ({type(e).__name__}) while serving {request.url.path}; the server "
        "log has the details",
        "server_error",
    )
