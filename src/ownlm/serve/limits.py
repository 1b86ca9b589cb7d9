"""The request body limit, enforced before the body is in memory.

FastAPI reads a body whole before any route runs, so a 50 MB prompt used to be read,
parsed, validated and tokenized before anything could refuse it (9 GB, no answer in two
minutes). `BodyLimit` is plain ASGI middleware in front of the app: a body that declares
a `Content-Length` over the limit is answered 413 from its headers alone; a chunked body
is read only until it passes the limit, then refused. A body within the limit is passed
on as it came (FastAPI would have held it whole anyway).
"""

from __future__ import annotations

import json

from ownlm.serve.errors import error_body


class _ClientGone(Exception):
    """The client disconnected before its body was complete: nobody to answer."""


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

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
        if body is None:  # over the limit without saying so up front: stop reading, close
            await self._refuse(send, "request body (sent without a length) is larger", close=True)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive) -> bytes | None:
        """The whole body, or None as soon as more than `max_bytes` arrived."""
        chunks, size = [], 0
        while True:
            message = await receive()
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
        payload = json.dumps(
            error_body(message, "invalid_request_error", None, "request_too_large")
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ] + ([(b"connection", b"close")] if close else [])
        await send({"type": "http.response.start", "status": 413, "headers": headers})
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
