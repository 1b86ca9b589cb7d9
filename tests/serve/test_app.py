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


@pytest.mark.parametrize(
    "model",
    ["toy:../../base", "toy:a/b", "toy:..", "toy:.x", "toy:a\\b", "toy:a\x00b", "toy:" + "a" * 300,
     "toy:" + "a" * 129, "toy:-x", "toy:a b", "toy:caf\u00e9", "toy:"],
)  # fmt: skip
def test_model_names_with_path_characters_are_404_never_500(live, model):
    """Ids the data loaders refuse (ownlm.data.checks: 1-128 of A-Z a-z 0-9 - _ . @ +, no
    leading '.' or '-') name no model either: one rule, answered in one line."""
    h = {"Authorization": f"Bearer {live.tokens['admin']}"}
    r = httpx.post(
        f"{live.url}/v1/completions", json={"model": model, "prompt": "x"}, headers=h, timeout=30
    )
    err = r.json()["error"]
    assert r.status_code == 404 and err["code"] == "model_not_found" and err["param"] == "model"
    assert "\n" not in err["message"] and "does not exist" in err["message"]


def test_the_server_keeps_the_data_loaders_user_id_rule():
    """The server's model names and admin routes read the loaders' rule, not a second one
    (issue #21 item 5): an id a dataset may hold is one the server may name, and back."""
    from ownlm.data import checks
    from ownlm.serve import server
    from ownlm.serve.routes import admin

    assert server.user_id_problem is checks.user_id_problem is admin.user_id_problem
    assert not hasattr(server, "MAX_USER_ID_BYTES")
    for fine in ("alice", "a" * 128, "user@example.com", "u-1_2.3+x", "0"):
        assert server.user_id_problem(fine) is None, fine
    for bad in ("", "a" * 129, ".x", "-x", "a b", "caf\u00e9", "a/b", "a\x00b"):
        assert server.user_id_problem(bad), bad


def test_admin_on_unknown_or_bad_adapter_names_is_404(live):
    h = {"Authorization": f"Bearer {live.tokens['admin']}"}
    r = httpx.delete(f"{live.url}/admin/adapters/zed", headers=h)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    assert "zed" not in httpx.get(f"{live.url}/admin/adapters", headers=h).json()["removed"]
    for bad in ("%2E%2E", "a%00b", "x" * 300):
        assert httpx.post(f"{live.url}/admin/adapters/{bad}", headers=h).status_code == 404
        assert httpx.delete(f"{live.url}/admin/adapters/{bad}", headers=h).status_code == 404
    r = httpx.post(f"{live.url}/admin/tokens", json={"user": "../x"}, headers=h)
    assert r.status_code == 404 and "token users" in r.json()["error"]["message"]


def test_http_level_errors_come_in_openais_shape(live):
    h = {"Authorization": f"Bearer {live.tokens['alice']}"}
    url = f"{live.url}/v1/completions"
    for r, status in [
        (httpx.get(f"{live.url}/v2/nothing"), 404),
        (httpx.put(f"{live.url}/v1/models", headers=h), 405),
        (
            httpx.post(
                url,
                content=b"[" * 100_000 + b"]" * 100_000,
                headers=h | {"Content-Type": "application/json"},
            ),
            400,
        ),
        (
            httpx.post(
                url,
                content=b'{"model": "toy", "prompt": "x"}',
                headers=h | {"Content-Type": "text/plain"},
            ),
            400,
        ),
    ]:
        assert r.status_code == status and set(r.json()["error"]) == {
            "message",
            "type",
            "param",
            "code",
        }


def test_a_user_token_lists_only_its_own_model(live):
    ids = [m.id for m in client(live, "bob").models.list()]
    assert ids == [live.server.base, f"{live.server.base}:bob"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "%s", "prompt": "bad \\ud800 text", "max_tokens": 2}',
        b'{"model": "%s", "prompt": ["\\udc80"], "max_tokens": 2}',
        b'{"model": "%s", "messages": [{"role": "user", "content": "x\\udfff"}], "max_tokens": 2}',
    ],
)
def test_lone_surrogates_in_the_text_are_400_never_500(live, body):
    h = {"Authorization": f"Bearer {live.tokens['alice']}", "Content-Type": "application/json"}
    path = "chat/completions" if b"messages" in body else "completions"
    r = httpx.post(
        f"{live.url}/v1/{path}",
        content=body % f"{live.server.base}:alice".encode(),
        headers=h,
        timeout=30,
    )
    err = r.json()["error"]
    assert r.status_code == 400 and "UTF-8" in err["message"], r.text
    assert err["param"] in ("prompt", "messages")


def test_an_extreme_sampling_request_does_not_fail_the_batch_it_shares(live):
    """temperature=1e-300 or top_p=1e-300 are in range; they once made the sampler raise,
    failing (500) every other user's request decoded in the same batch."""
    base = live.server.base

    async def together():
        async def one(u, **kw):
            c = openai.AsyncOpenAI(base_url=f"{live.url}/v1", api_key=live.tokens[u], max_retries=0)
            r = await c.completions.create(
                model=f"{base}:{u}", prompt="the user likes", max_tokens=4, **kw
            )
            return r.choices[0].text

        return await asyncio.gather(
            one("alice", temperature=1e-300, seed=1),
            one("bob", temperature=1.0, top_p=1e-300, seed=1),
            one("carol", temperature=0),
            one("carol", temperature=0.7, seed=3),
        )

    texts = asyncio.run(together())
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)


def test_no_docs_pages_and_the_schema_only_for_an_admin(live):
    """/docs and /redoc loaded scripts from a CDN and answered anyone; the schema is an
    admin's (issue #19, item 8)."""
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        r = httpx.get(f"{live.url}{path}")
        assert r.status_code == 404 and "cdn" not in r.text.lower(), path
    assert httpx.get(f"{live.url}/openapi.json").status_code == 401
    user = {"Authorization": f"Bearer {live.tokens['alice']}"}
    assert httpx.get(f"{live.url}/openapi.json", headers=user).status_code == 403
    admin = {"Authorization": f"Bearer {live.tokens['admin']}"}
    r = httpx.get(f"{live.url}/openapi.json", headers=admin)
    assert r.status_code == 200 and "/v1/completions" in r.json()["paths"]


def test_an_admin_token_body_is_strict(live):
    admin = {"Authorization": f"Bearer {live.tokens['admin']}"}
    r = httpx.post(f"{live.url}/admin/tokens", json={"admin": "yes"}, headers=admin)
    assert r.status_code == 422 and r.json()["error"]["param"] == "admin"
