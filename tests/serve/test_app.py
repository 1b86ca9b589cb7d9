"""The server through the official `openai` client, on a live uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.serve.conftest import USERS


def client(live, who: str | None) -> openai.OpenAI:
    key = live.tokens[who] if who else "ownlm-nope-nope"
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=key, max_retries=0, timeout=30)


def test_models_lists_base_and_own_adapter(live):
    base = live.server.base
    own = [m.id for m in client(live, "alice").models.list()]
    assert own == [base, f"{base}:alice"]
    every = [m.id for m in client(live, "admin").models.list()]
    assert every == [base] + [f"{base}:{u}" for u in sorted(USERS)]


def test_completion_greedy_matches_engine_alone(live):
    base = live.server.base
    c = client(live, "bob")
    r = c.completions.create(
        model=f"{base}:bob", prompt="the user likes", max_tokens=8, temperature=0
    )
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens <= 8
    again = c.completions.create(
        model=f"{base}:bob", prompt="the user likes", max_tokens=8, temperature=0
    )
    assert again.choices[0].text == r.choices[0].text
    plain = c.completions.create(model=base, prompt="the user likes", max_tokens=8, temperature=0)
    assert plain.choices[0].text != r.choices[0].text  # bob's adapter changes the answer


def test_chat_and_streaming_agree(live):
    base = live.server.base
    c = client(live, "carol")
    kw = dict(
        model=f"{base}:carol",
        messages=[{"role": "user", "content": "news about science"}],
        max_tokens=10,
        temperature=0,
    )
    full = c.chat.completions.create(**kw)
    pieces = [
        ch.choices[0].delta.content or "" for ch in c.chat.completions.create(stream=True, **kw)
    ]
    assert "".join(pieces) == full.choices[0].message.content
    assert full.choices[0].message.role == "assistant"
    comp = list(
        c.completions.create(
            model=f"{base}:carol", prompt="music", max_tokens=6, temperature=0, stream=True
        )
    )
    assert comp[-1].choices[0].finish_reason in ("stop", "length")


def test_sampling_with_seed_and_stop(live):
    base = live.server.base
    c = client(live, "alice")
    kw = dict(
        model=f"{base}:alice", prompt="a user", max_tokens=12, temperature=0.9, top_p=0.8, seed=7
    )
    assert c.completions.create(**kw).choices[0].text == c.completions.create(**kw).choices[0].text
    greedy = (
        c.completions.create(model=base, prompt="a user", max_tokens=12, temperature=0)
        .choices[0]
        .text
    )
    if len(greedy) > 3:
        cut = c.completions.create(
            model=base, prompt="a user", max_tokens=12, temperature=0, stop=[greedy[2:4]]
        )
        assert cut.choices[0].text == greedy[: greedy.find(greedy[2:4])]


def test_unknown_token_401_and_other_user_403(live):
    base = live.server.base
    with pytest.raises(openai.AuthenticationError):
        client(live, None).models.list()
    with pytest.raises(openai.PermissionDeniedError) as e:
        client(live, "alice").completions.create(model=f"{base}:bob", prompt="x", max_tokens=2)
    assert "may not use" in e.value.body["message"]
    r = httpx.get(f"{live.url}/v1/models")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_bad_requests_name_the_field_and_server_keeps_serving(live):
    base = live.server.base
    c = client(live, "alice")
    for kw, field in [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"prompt": "news " * 400}, "prompt"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(
                **({"model": f"{base}:alice", "prompt": "x", "max_tokens": 4} | kw)
            )
        assert e.value.body["param"] == field and field in e.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="nope:alice", prompt="x", max_tokens=2)
    h = {"Authorization": f"Bearer {live.tokens['alice']}", "Content-Type": "application/json"}
    bad = httpx.post(f"{live.url}/v1/completions", content=b"{not json", headers=h)
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]["message"]
    missing = httpx.post(f"{live.url}/v1/completions", json={"model": base}, headers=h)
    assert missing.status_code == 422 and missing.json()["error"]["param"] == "prompt"
    assert httpx.get(f"{live.url}/health").json()["status"] == "ok"


def test_concurrent_users_are_batched_and_isolated(live):
    base = live.server.base
    prompts = {
        u: f"the user likes {w}" for u, w in zip(USERS, ["movies", "books", "music"], strict=True)
    }

    def alone(u):
        c = client(live, u)
        return (
            c.completions.create(
                model=f"{base}:{u}", prompt=prompts[u], max_tokens=8, temperature=0
            )
            .choices[0]
            .text
        )

    expected = {u: alone(u) for u in USERS}

    async def together():
        async def one(u):
            c = openai.AsyncOpenAI(base_url=f"{live.url}/v1", api_key=live.tokens[u], max_retries=0)
            r = await c.completions.create(
                model=f"{base}:{u}", prompt=prompts[u], max_tokens=8, temperature=0
            )
            return u, r.choices[0].text

        return await asyncio.gather(*(one(u) for u in USERS * 3))

    before = live.server.batcher.batches
    got = asyncio.run(together())
    assert all(text == expected[u] for u, text in got)
    assert live.server.batcher.batches - before < len(got)  # some requests shared a batch


def test_admin_reload_remove_and_tokens(live):
    base = live.server.base
    h = {"Authorization": f"Bearer {live.tokens['admin']}"}
    assert httpx.post(f"{live.url}/admin/adapters/bob", headers=h).json()["status"] == "loaded"
    assert httpx.delete(f"{live.url}/admin/adapters/bob", headers=h).status_code == 200
    with pytest.raises(openai.NotFoundError):
        client(live, "bob").completions.create(model=f"{base}:bob", prompt="x", max_tokens=2)
    assert httpx.post(f"{live.url}/admin/adapters/bob", headers=h).status_code == 200
    assert (
        client(live, "bob")
        .completions.create(model=f"{base}:bob", prompt="x", max_tokens=2)
        .choices
    )
    assert httpx.post(f"{live.url}/admin/adapters/zed", headers=h).status_code == 404
    user_h = {"Authorization": f"Bearer {live.tokens['alice']}"}
    assert httpx.post(f"{live.url}/admin/adapters/alice", headers=user_h).status_code == 403
    tok = httpx.post(f"{live.url}/admin/tokens", json={"user": "carol"}, headers=h).json()["token"]
    assert [m.id for m in openai.OpenAI(base_url=f"{live.url}/v1", api_key=tok).models.list()][
        -1
    ] == f"{base}:carol"
