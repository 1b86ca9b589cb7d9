"""OpenAI's API: /v1/models, /v1/completions, /v1/chat/completions (stream or not).

The `model` field selects the user (`<base>:<user_id>`, or the base alone for no
adapter); a user's token reaches the base and its own adapter only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ownlm.errors import OwnlmError, StoreError
from ownlm.serve import protocol as P
from ownlm.serve.auth import principal
from ownlm.serve.batcher import Job
from ownlm.serve.engine import Output
from ownlm.serve.errors import ApiError, api_error, error_body
from ownlm.serve.server import Server, get_server
from ownlm.store import Principal

router = APIRouter(prefix="/v1")
Who = Annotated[Principal, Depends(principal)]
Serving = Annotated[Server, Depends(get_server)]


@router.get("/models")
async def models(who: Who, server: Serving):
    data = [
        {"id": m, "object": "model", "created": 0, "owned_by": "ownlm"}
        for m in server.model_ids(who)
    ]
    return {"object": "list", "data": data}


@router.post("/completions")
async def completions(body: P.CompletionBody, who: Who, server: Serving):
    user = await run_in_threadpool(server.resolve, body.model, who)
    req = await run_in_threadpool(server.build, body, user, body.text(), False)
    job = await server.batcher.submit(req, user, body.stream)
    cid = P.new_id("cmpl")
    if body.stream:
        return stream(
            job,
            lambda text, fin: P.completion(cid, body.model, text, fin),
            usage=usage_chunk(body, lambda: P.completion(cid, body.model, "", None)),
        )
    out = await result(job)
    use = P.usage(out.prompt_tokens, len(out.tokens))
    return P.completion(cid, body.model, out.text, out.finish_reason, use)


@router.post("/chat/completions")
async def chat_completions(body: P.ChatBody, who: Who, server: Serving):
    user = await run_in_threadpool(server.resolve, body.model, who)
    req = await run_in_threadpool(server.build, body, user, body.last_user_text(), True)
    job = await server.batcher.submit(req, user, body.stream)
    cid = P.new_id("chatcmpl")
    if body.stream:
        first = P.chat_chunk(cid, body.model, {"role": "assistant", "content": ""}, None)

        def chunk(text: str, fin: str | None) -> dict:
            delta = {"content": text} if fin is None else {}  # the last chunk only finishes
            return P.chat_chunk(cid, body.model, delta, fin)

        last = usage_chunk(body, lambda: P.chat_chunk(cid, body.model, {}, None))
        return stream(job, chunk, first, last)
    out = await result(job)
    use = P.usage(out.prompt_tokens, len(out.tokens))
    return P.chat(cid, body.model, out.text, out.finish_reason, use)


async def result(job: Job) -> Output:
    try:
        return await job.result()
    except OwnlmError as e:
        raise job_error(e) from e


def job_error(e: OwnlmError) -> ApiError:
    """A failed job's error as HTTP. An adapter problem is about the `model` field: 404
    model_not_found when it is gone, 409 when it is refused; a request problem 400."""
    return api_error(e, "model" if isinstance(e, StoreError) else None)


def usage_chunk(body: P.SamplingBody, empty: Callable[[], dict]):
    """With `stream_options: {"include_usage": true}`, a builder of OpenAI's last chunk:
    no choices, the usage of the whole answer; None otherwise."""
    if not (body.stream_options and body.stream_options.include_usage):
        return None
    return lambda out: (
        empty()
        | {
            "choices": [],
            "usage": P.usage(out.prompt_tokens, len(out.tokens)),
        }
    )


def stream(
    job: Job,
    chunk: Callable[[str, str | None], dict],
    first: dict | None = None,
    usage: Callable[[Output], dict] | None = None,
) -> StreamingResponse:
    """Server-sent events: `data: {chunk}` per piece of text, a final chunk, the usage
    chunk when asked for, `data: [DONE]`. An error after the stream has begun (status 200
    already sent) comes as an error event."""

    async def events():
        if first is not None:
            yield P.sse(first)
        while True:
            kind, value = await job.events.get()
            if kind == "text":
                yield P.sse(chunk(value, None))
            elif kind == "done":
                yield P.sse(chunk("", value.finish_reason))
                if usage is not None:
                    yield P.sse(usage(value))
                break
            else:
                yield P.sse(error_event(value))
                break
        yield P.sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")


def error_event(e: Exception) -> dict:
    if isinstance(e, OwnlmError):
        err = job_error(e)
        return error_body(err.message, err.type, err.param, err.code)
    return error_body(str(e), "server_error")
