"""The OpenAI wire format: request bodies and response objects (errors: `serve.errors`)."""

from __future__ import annotations

import json
import time
import uuid

from pydantic import BaseModel, ConfigDict

from ownlm.serve.errors import ApiError


class SamplingBody(BaseModel):
    """Fields common to completions and chat: the model (user) and how to sample."""

    model_config = ConfigDict(extra="allow")  # unknown OpenAI fields are accepted and ignored

    model: str
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: str | list[str] | None = None
    stream: bool = False
    seed: int | None = None
    n: int = 1
    ownlm_personalize: bool = True  # add the user's retrieved history and profile (OPPU)

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def check(self) -> None:
        if self.temperature < 0:
            raise ApiError(400, f"temperature must be >= 0, got {self.temperature}", "temperature")
        if not 0 < self.top_p <= 1:
            raise ApiError(400, f"top_p must be in (0, 1], got {self.top_p}", "top_p")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ApiError(400, f"max_tokens must be >= 1, got {self.max_tokens}", "max_tokens")
        if self.n != 1:
            raise ApiError(400, f"n={self.n} is not supported; ownlm returns one choice (n=1)", "n")


class CompletionBody(SamplingBody):
    prompt: str | list[str]

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ApiError(
                400, f"prompt must be one string, got a list of {len(self.prompt)}", "prompt"
            )
        return self.prompt[0]


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | None = ""


class ChatBody(SamplingBody):
    messages: list[Message]
    max_completion_tokens: int | None = None

    def last_user_text(self) -> str:
        for m in reversed(self.messages):
            if m.role == "user":
                return m.content or ""
        raise ApiError(
            400, "messages must contain at least one message with role 'user'", "messages"
        )


# -- responses ----------------------------------------------------------------------


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def completion(
    cid: str, model: str, text: str, finish: str | None, use: dict | None = None
) -> dict:
    body = {
        "id": cid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }
    if use is not None:
        body["usage"] = use
    return body


def chat(cid: str, model: str, text: str, finish: str, use: dict) -> dict:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        ],
        "usage": use,
    }


def chat_chunk(cid: str, model: str, delta: dict, finish: str | None) -> dict:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"
