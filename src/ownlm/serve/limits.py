"""The request body limit, enforced before the body is in memory.

FastAPI reads a body whole before any route runs, so a 50 MB prompt used to be read,
parsed, validated and tokenized before anything could refuse it (9 GB, no answer in two
minutes). `BodyLimit` is plain ASGI middleware in front of the app: a body that declares
a `Content-Length` over the limit is answered 413 from its headers alone; a chunked body
is read only until it passes the limit, then refused. A body within the limit is passed
on as it came (FastAPI would have held it whole anyway).

A client that stops sending mid-body (a `Content-Length` larger than what it sends, a
chunked body never finished) would hold its connection and task forever: each wait for
the next piece of the body is bounded by `timeout_s` (BODY_TIMEOUT_S), after which the
request is answered 408 and the connection closed.
"""

from __future__ import annotations

import asyncio
import json

from ownlm.serve.errors import error_body

BODY_TIMEOUT_S = 30.0  # longest wait for the next piece of a request body


class _TooSlow(Exception):
    """No piece of the body arrived within the timeout."""


class _ClientGone(Exception):
    """The client disconnected before its body was complete: nobody to answer."""


class BodyLimit:
    def __init__(self, app, max_bytes: int, timeout_s: float = BODY_TIMEOUT_S):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            # the rest of a declared body is finite: uvicorn discards it after our answer,
            # so a client that sends everything before reading still gets the 413
            await self._refuse(send, f"request body is {declared} bytes", close=False)
            return
        try:
            body = await self._read(receive)
        except _ClientGone:
            return
        except _TooSlow:
            await self._answer(
                send,
                408,
                f"request body incomplete after waiting {self.timeout_s:g} s for more of it; "
                "send the whole body (its Content-Length must match what is sent)",
                "request_timeout",
                close=True,
            )
            return
        if body is None:  # over the limit without saying so up front: stop reading, close
            await self._refuse(send, "request body (sent without a length) is larger", close=True)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive) -> bytes | None:
        """The whole body, or None as soon as more than `max_bytes` arrived."""
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except TimeoutError:
                raise _TooSlow from None
            if message["type"] != "http.request":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse(self, send, what: str, close: bool) -> None:
        limit_mb = self.max_bytes / 2**20
        message = (
            f"{what}, over this server's limit of {self.max_bytes} bytes ({limit_mb:g} MiB); "
            "send a shorter prompt, or start the server with a larger `ownlm serve --max-body-mb`"
        )
        await self._answer(send, 413, message, "request_too_large", close)

    @staticmethod
    async def _answer(send, status: int, message: str, code: str, close: bool) -> None:
        payload = json.dumps(error_body(message, "invalid_request_error", None, code)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ] + ([(b"connection", b"close")] if close else [])
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server refuses a malformed length itself
    return None


def _replay(body: bytes, receive):
    """A `receive` that gives the app the body read here, then the client's own events
    (a disconnect, which streaming responses listen for)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
