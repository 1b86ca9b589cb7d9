"""What one client may hold of the server's connections: a deadline for each request's
headers, and a cap on open connections.

uvicorn bounds neither. Its keep-alive timeout restarts at every byte received, so a
client that sends a header line every 4 s holds its connection for ever, and 100 such
sockets (a "slow loris") kept a normal request waiting 22 s once the process ran out of
file descriptors (asyncio then pauses accepting). `GuardedH11` is uvicorn's h11 protocol
with two additions:

* a connection has `header_timeout_s` to send a request's headers, counted from when it
  connected or from its previous response; a slower one is answered 408 and closed;
* past `max_connections` open connections (kept under the process's file-descriptor
  limit), a new connection closes the one that has waited longest for its headers (a
  slow or idle client; a request being answered is never cut), or, when every
  connection is busy answering, is itself answered 503 and closed.

The request body has its own bound (`serve.limits.BodyLimit`).
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.h11_impl import H11Protocol

from ownlm.serve.errors import error_body

FD_RESERVE = 64  # descriptors left for model files, logs and the store when capping


def guarded_h11(header_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """The protocol class to give uvicorn (`uvicorn.Config(http=...)`) for these limits."""
    cap = max(1, min(max_connections, _descriptor_limit() - FD_RESERVE))
    return type("GuardedH11", (GuardedH11,), {"header_timeout_s": header_timeout_s, "cap": cap})


def _descriptor_limit() -> int:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # not POSIX: no limit to stay under
        return 1 << 30
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


class GuardedH11(H11Protocol):
    header_timeout_s: float = 10.0
    cap: int = 512

    def connection_made(self, transport) -> None:
        self._deadline = None  # the timer of the headers awaited, None when none are
        self._waiting_since: float | None = None
        self._cycle_seen = None
        super().connection_made(transport)
        self._await_headers()
        if len(self.connections) > self.cap:
            self._make_room()

    def connection_lost(self, exc) -> None:
        self._headers_arrived()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not self._cycle_seen:  # a request's headers arrived whole
            self._cycle_seen = self.cycle
            self._headers_arrived()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request at once
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._await_headers()  # the next request's, on this kept-alive connection

    def _await_headers(self) -> None:
        self._headers_arrived()
        self._waiting_since = self.loop.time()
        self._deadline = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _headers_arrived(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self._waiting_since = None

    def _too_slow(self) -> None:
        self._refuse(
            408,
            f"request headers not complete within {self.header_timeout_s:g} s; send each "
            "request whole and at once",
            "request_timeout",
        )

    def _make_room(self) -> None:
        waiting = [
            c
            for c in self.connections
            if isinstance(c, GuardedH11) and c._waiting_since is not None and c is not self
        ]
        if waiting:
            oldest = min(waiting, key=lambda c: c._waiting_since)
            oldest._refuse(
                408,
                f"the server is at its limit of {self.cap} connections and this one was "
                "the slowest to send a request; reconnect and send it at once",
                "request_timeout",
            )
            return
        self._refuse(
            503,
            f"the server is at its limit of {self.cap} open connections, each answering a "
            "request; retry shortly",
            "server_busy",
        )

    def _refuse(self, status: int, message: str, code: str) -> None:
        """Answer `status` and close, outside h11 (no request was read to answer)."""
        self._headers_arrived()
        self.connections.discard(self)  # gone now, as far as the cap counts
        if self.transport.is_closing():
            return
        body = json.dumps(error_body(message, "invalid_request_error", None, code)).encode()
        reason = {408: b"Request Timeout", 503: b"Service Unavailable"}[status]
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, reason, len(body))
        )
        self.transport.write(head + body)
        self.transport.close()
