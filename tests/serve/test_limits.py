"""Limits that act before any work: the body limit (413 before the body is read) and the
prompt limit in tokens (400 before the model runs)."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest

from ownlm.serve.errors import ApiError
from ownlm.serve.limits import BodyLimit


def _http(live, path="/v1/completions"):
    return f"{live.url}{path}", {
        "Authorization": f"Bearer {live.tokens['alice']}",
        "Content-Type": "application/json",
    }


def _response(s: socket.socket) -> tuple[bytes, bytes]:
    """Read one HTTP response (headers, body) from a socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += s.recv(65536)
    return head, body


def test_declared_oversize_body_is_refused_from_its_headers(live):
    """A client announces 50 MB and sends nothing more: the 413 comes at once."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", live.port), timeout=5) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\n\r\n"
        )
        head, body = _response(s)
    assert head.split(b" ")[1] == b"413" and time.perf_counter() - start < 1
    err = json.loads(body)["error"]
    assert err["code"] == "request_too_large" and "50000000 bytes" in err["message"]
    assert "--max-body-mb" in err["message"]


def test_oversize_bodies_sent_whole_or_chunked_get_a_413(live):
    url, headers = _http(live)
    limit = live.server.settings.max_body_bytes
    big = b'{"model":"toy:alice","prompt":"' + b"a" * (limit + 10) + b'"}'
    r = httpx.post(url, content=big, headers=headers, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"

    def chunks():
        for i in range(0, len(big), 1 << 16):
            yield big[i : i + (1 << 16)]

    r = httpx.post(url, content=chunks(), headers=headers, timeout=30)
    assert r.status_code == 413 and "without a length" in r.json()["error"]["message"]
    ok = httpx.post(
        url, json={"model": "toy:alice", "prompt": "x", "max_tokens": 2}, headers=headers
    )
    assert ok.status_code == 200  # and the server goes on serving


def _run_asgi(limit: int, messages: list[dict], headers: list) -> tuple[list, list, int]:
    """Drive BodyLimit over a stub app: (what was sent, bodies the app saw, receives)."""
    sent, seen, received = [], [], 0

    async def app(scope, receive, send):
        seen.append((await receive())["body"])

    async def receive():
        nonlocal received
        received += 1
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "headers": headers}
    asyncio.run(BodyLimit(app, limit)(scope, receive, send))
    return sent, seen, received


def test_middleware_reads_no_byte_of_a_declared_oversize_body():
    sent, seen, received = _run_asgi(10, [], [(b"content-length", b"11")])
    assert received == 0 and seen == [] and sent[0]["status"] == 413


def test_middleware_stops_a_chunked_body_once_over_the_limit():
    parts = [{"type": "http.request", "body": b"x" * 6, "more_body": True} for _ in range(100)]
    sent, seen, received = _run_asgi(10, parts, [])
    assert received == 2 and seen == [] and sent[0]["status"] == 413
    assert (b"connection", b"close") in sent[0]["headers"]
    within = [{"type": "http.request", "body": b"ab", "more_body": True}] * 2 + [
        {"type": "http.request", "body": b"c", "more_body": False}
    ]
    sent, seen, _ = _run_asgi(10, list(within), [])
    assert seen == [b"ababc"] and sent == []  # passed on whole, the app answers


@pytest.fixture
def prompt_limit(live):
    server = live.server
    old = server.max_prompt_tokens
    server.max_prompt_tokens = 8
    yield server
    server.max_prompt_tokens = old


def test_prompt_over_max_prompt_tokens_is_a_400_naming_length_and_limit(live, prompt_limit):
    url, headers = _http(live)
    body = {"model": "toy:alice", "prompt": "the user likes " * 3, "max_tokens": 2}
    r = httpx.post(url, json=body, headers=headers)
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "prompt"
    assert err["code"] == "context_length_exceeded"
    n = len(live.server.tokenize(body["prompt"]))
    assert f"is {n} tokens" in err["message"] and "limit of 8 tokens" in err["message"]
    chat = {"model": "toy:alice", "messages": [{"role": "user", "content": body["prompt"]}]}
    r = httpx.post(_http(live, "/v1/chat/completions")[0], json=chat, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_a_text_that_cannot_fit_is_refused_without_tokenizing(live, prompt_limit, monkeypatch):
    server = prompt_limit

    def never(text):
        raise AssertionError("tokenized a text that cannot fit")

    monkeypatch.setattr(server, "tokenize", never)
    from ownlm.serve.protocol import CompletionBody

    text = "a" * (8 * server.max_token_chars + 1)
    with pytest.raises(ApiError) as e:
        server.build(CompletionBody(model="toy", prompt=text), None, text, chat=False)
    assert e.value.status == 400 and f"{len(text)} characters" in e.value.message


def test_default_prompt_limit_is_the_models_context(live):
    assert live.server.max_prompt_tokens == live.server.engine.max_len
    assert live.server.settings.max_body_bytes == 4 * 2**20


def test_a_body_that_stops_arriving_is_a_408_not_a_connection_held_forever():
    """A Content-Length larger than what is sent: the middleware stops waiting."""
    sent = []

    async def app(scope, receive, send):  # never reached
        raise AssertionError("the app must not see an incomplete body")

    async def receive():
        if not sent and not getattr(receive, "once", False):
            receive.once = True
            return {"type": "http.request", "body": b'{"model"', "more_body": True}
        await asyncio.sleep(3600)  # the client went silent

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "headers": [(b"content-length", b"1000")]}
    start = time.perf_counter()
    asyncio.run(BodyLimit(app, 1 << 20, timeout_s=0.2)(scope, receive, send))
    assert time.perf_counter() - start < 2
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_timeout"
