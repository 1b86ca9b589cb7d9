"""Request bodies: every value ownlm cannot honour is a 400 naming the field; nothing that
would change the answer is silently ignored."""

from __future__ import annotations

import json

import httpx
import pytest

from ownlm.serve.errors import ApiError
from ownlm.serve.protocol import ChatBody, CompletionBody

BASE = {"model": "toy:alice", "prompt": "x"}


def refused(body: dict, cls=CompletionBody) -> ApiError:
    with pytest.raises(ApiError) as e:
        parsed = cls.model_validate(body)
        parsed.check()
        if cls is ChatBody:
            parsed.last_user_text()
    assert e.value.status == 400
    return e.value


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "2.5", "-0.1"])
def test_temperature_must_be_finite_and_in_openais_range(literal):
    body = json.loads(f'{{"model": "toy", "prompt": "x", "temperature": {literal}}}')
    err = refused(body)
    assert err.param == "temperature" and "[0, 2]" in err.message


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"top_p": float("nan")}, "top_p"),
        ({"seed": 2**70}, "seed"),
        ({"n": 2}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": "x" * 257}, "stop"),
        ({"logprobs": 3}, "logprobs"),
        ({"echo": True}, "echo"),
        ({"best_of": 3}, "best_of"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"logit_bias": {"50": 100}}, "logit_bias"),
        ({"suffix": "tail"}, "suffix"),
        ({"max_token": 5}, "max_token"),  # a typo is named, not ignored
    ],
)
def test_completion_fields_ownlm_cannot_honour_are_named(extra, field):
    err = refused(BASE | extra)
    assert err.param == field and field in err.message


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"max_completion_tokens": -5}, "max_completion_tokens"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages",
        ),
    ],
)
def test_chat_fields_ownlm_cannot_honour_are_named(extra, field):
    body = {"model": "toy", "messages": [{"role": "user", "content": "x"}]} | extra
    err = refused(body, ChatBody)
    assert err.param == field


def test_defaults_and_harmless_fields_are_accepted():
    neutral = {
        "logprobs": None,
        "echo": False,
        "best_of": 1,
        "frequency_penalty": 0,
        "presence_penalty": 0.0,
        "logit_bias": {},
        "user": "someone",
        "seed": 2**63 - 1,
        "stop": ["a", "b", "c", "d"],
    }
    CompletionBody.model_validate(BASE | neutral).check()
    chat = ChatBody.model_validate(
        {
            "model": "toy",
            "messages": [
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
            ],
            "tools": [],
            "tool_choice": "none",
            "response_format": {"type": "text"},
            "parallel_tool_calls": True,
            "metadata": {"k": "v"},
        }
    )
    chat.check()
    assert chat.last_user_text() == "a\nb"


def test_nan_literal_over_http_is_a_400(live):
    h = {"Authorization": f"Bearer {live.tokens['alice']}", "Content-Type": "application/json"}
    raw = b'{"model": "toy:alice", "prompt": "x", "temperature": NaN}'
    r = httpx.post(f"{live.url}/v1/completions", content=raw, headers=h)
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    r = httpx.post(f"{live.url}/v1/completions", json=BASE | {"tools": [{}]}, headers=h)
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"


def test_stream_options_include_usage_adds_openais_usage_chunk(live):
    h = {"Authorization": f"Bearer {live.tokens['alice']}"}
    body = BASE | {"max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{live.url}/v1/completions", json=body, headers=h) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == [] and last["usage"]["prompt_tokens"] > 0
    assert last["usage"]["completion_tokens"] <= 3


@pytest.mark.parametrize(
    "field, value",
    [("max_tokens", True), ("max_tokens", "5"), ("max_tokens", 5.0), ("temperature", True),
     ("temperature", "1"), ("top_p", False), ("stream", "yes"), ("stream", 1), ("n", True),
     ("seed", "7"), ("ownlm_personalize", "no"), ("stop", 5)],
)  # fmt: skip
def test_a_value_of_the_wrong_type_is_refused_not_coerced_over_http(live, field, value):
    """OpenAI's API refuses `max_tokens: true` and `stream: "yes"`; so does ownlm."""
    h = {"Authorization": f"Bearer {live.tokens['alice']}"}
    r = httpx.post(f"{live.url}/v1/completions", json=BASE | {field: value}, headers=h)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"].startswith(field)
    chat = {"model": "toy:alice", "messages": [{"role": "user", "content": "x"}], field: value}
    r = httpx.post(f"{live.url}/v1/chat/completions", json=chat, headers=h)
    assert r.status_code == 422 and r.json()["error"]["param"].startswith(field)


@pytest.mark.parametrize(
    "extra",
    [{"stream_options": {"include_usage": "yes"}},
     {"messages": [{"role": "user", "content": 5}]},
     {"max_completion_tokens": True}],
)  # fmt: skip
def test_nested_chat_fields_are_strict_too(live, extra):
    h = {"Authorization": f"Bearer {live.tokens['alice']}"}
    chat = {"model": "toy:alice", "messages": [{"role": "user", "content": "x"}], **extra}
    r = httpx.post(f"{live.url}/v1/chat/completions", json=chat, headers=h)
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request_error"


def test_numbers_stay_numbers_and_neutral_values_are_not_coerced():
    ok = CompletionBody.model_validate(BASE | {"temperature": 1, "top_p": 1, "max_tokens": 2})
    ok.check()
    assert ok.temperature == 1.0
    CompletionBody.model_validate(BASE | {"frequency_penalty": 0.0, "logprobs": 0}).check()
    for extra in ({"echo": 0}, {"frequency_penalty": False}, {"best_of": True}):
        assert refused(BASE | extra).param == next(iter(extra))
