"""The OpenAI wire format: request bodies and response objects (errors: `serve.errors`)."""

from __future__ import annotations

import json
import math
import time
import uuid

from pydantic import BaseModel, ConfigDict

from ownlm.serve.errors import ApiError

# OpenAI's bounds where it states them ("up to 4 sequences"); ours where it does not.
MAX_STOPS, MAX_STOP_CHARS = 4, 256
MAX_TEMPERATURE = 2.0
SEED_RANGE = (-(2**63), 2**64 - 1)  # what a torch.Generator takes
ROLES = {"system", "developer", "user", "assistant", "tool", "function"}

# OpenAI fields that never change the text: accepted and ignored.
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls"}
# OpenAI fields ownlm does not implement: accepted at the value that changes nothing (so
# clients that send defaults work), refused (400, naming the field) at any other value.
NEUTRAL: dict[str, tuple] = {
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "logit_bias": (None, {}),
    "logprobs": (None, False, 0),  # an int for completions, a bool for chat
    "top_logprobs": (None, 0),
    "echo": (False,),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "modalities": (None, ["text"]),
}


# Every body is strict, as OpenAI's API is: `max_tokens: true`, `temperature: "1"` and
# `stream: "yes"` are refused (422, naming the field), never coerced; an integer is a
# number where a float is asked.
STRICT = ConfigDict(strict=True)


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False  # a last chunk with the usage, before [DONE]


class SamplingBody(BaseModel):
    """Fields common to completions and chat: the model (user) and how to sample.
    Every field changes the answer as OpenAI documents it, or is refused by `check`:
    nothing that would change the text is silently ignored."""

    model_config = ConfigDict(strict=True, extra="allow")  # extras kept for `check` to name

    model: str
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    n: int = 1
    ownlm_personalize: bool = True  # add the user's retrieved history and profile (OPPU)

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def check(self) -> None:
        """A 400 naming the field for any value ownlm cannot honour."""
        self._check_extras()
        t = self.temperature
        if not (math.isfinite(t) and 0 <= t <= MAX_TEMPERATURE):
            raise ApiError(
                400, f"temperature must be in [0, {MAX_TEMPERATURE:g}], got {t}", "temperature"
            )
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise ApiError(400, f"top_p must be in (0, 1], got {self.top_p}", "top_p")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ApiError(400, f"max_tokens must be >= 1, got {self.max_tokens}", "max_tokens")
        if self.n != 1:
            raise ApiError(400, f"n={self.n} is not supported; ownlm returns one choice (n=1)", "n")
        if self.seed is not None and not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise ApiError(400, f"seed must be a 64-bit integer, got {self.seed}", "seed")
        self._check_stops()

    def _check_stops(self) -> None:
        stops = self.stops()
        if len(stops) > MAX_STOPS:
            raise ApiError(
                400, f"stop has {len(stops)} sequences; at most {MAX_STOPS} are allowed", "stop"
            )
        long = next((s for s in stops if len(s) > MAX_STOP_CHARS), None)
        if long is not None:
            raise ApiError(
                400,
                f"a stop sequence is {len(long)} characters; at most {MAX_STOP_CHARS} are allowed",
                "stop",
            )

    def _check_extras(self) -> None:
        for key, value in (self.model_extra or {}).items():
            if key in IGNORED or any(_same(value, v) for v in NEUTRAL.get(key, ())):
                continue
            if key in NEUTRAL:
                raise ApiError(
                    400,
                    f"{key}={json.dumps(value)[:80]} is not supported by ownlm; leave it out "
                    f"(accepted values: {', '.join(json.dumps(v) for v in NEUTRAL[key])})",
                    key,
                )
            raise ApiError(
                400,
                f"unknown or unsupported field {key[:80]!r}; ownlm takes model, prompt or "
                "messages, max_tokens, temperature, top_p, stop, seed, n=1, stream, "
                "stream_options, ownlm_personalize (docs/serving.md lists every field)",
                key[:80],
            )


def _same(value, neutral) -> bool:
    """`value` is `neutral`, without Python's coercions: `false` is not `0`, nor `1` `true`."""
    return value == neutral and isinstance(value, bool) == isinstance(neutral, bool)


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
    model_config = ConfigDict(strict=True, extra="allow")  # name, tool_call_id, ...: not read
    role: str
    content: str | list[dict] | None = ""

    def text(self) -> str:
        """The content; for a list of parts (newer clients), its text parts joined."""
        if not isinstance(self.content, list):
            return self.content or ""
        kinds = {str(part.get("type")) for part in self.content} - {"text"}
        if kinds:
            raise ApiError(
                400,
                f"message content of type {sorted(kinds)[0][:40]!r} is not supported; "
                "ownlm reads text (a string, or parts of type 'text')",
                "messages",
            )
        return "\n".join(str(part.get("text", "")) for part in self.content)


class ChatBody(SamplingBody):
    messages: list[Message]
    max_completion_tokens: int | None = None

    def check(self) -> None:
        super().check()
        n = self.max_completion_tokens
        if n is not None and n < 1:
            raise ApiError(
                400, f"max_completion_tokens must be >= 1, got {n}", "max_completion_tokens"
            )
        bad = next((m.role for m in self.messages if m.role not in ROLES), None)
        if bad is not None:
            raise ApiError(
                400, f"message role {bad[:40]!r} is unknown; use one of {sorted(ROLES)}", "messages"
            )

    def last_user_text(self) -> str:
        """The task input: earlier turns and system messages are not read (ownlm's users'
        models answer one task input, as they were trained)."""
        for m in reversed(self.messages):
            if m.role == "user":
                return m.text()
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
