"""A running server follows the store and the token file on disk: a user forgotten by
another process (`ownlm forget`) is dropped at once, a revoked token fails on its next
request, a retrained adapter is served without an admin reload."""

from __future__ import annotations

import time

import httpx
import pytest

from ownlm.config import ServeSettings
from ownlm.data.demo import make_demo_tags
from ownlm.data.tasks import get_task
from ownlm.serve.launch import serve_in_thread
from ownlm.serve.personalize import Personalizer
from ownlm.serve.server import build_server
from ownlm.store import AdapterStore, TokenStore
from ownlm.testing import add_user_adapter, toy_run
from tests.serve.conftest import LiveServer

USERS = ["alice", "bob", "carol", "dave", "erin"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("forget-run")
    backbone = toy_run(run_dir, USERS)
    store = TokenStore(run_dir)
    tokens = {u: store.create(u) for u in USERS} | {"admin": store.create(admin=True)}
    server = build_server(run_dir, ServeSettings(cache_size=4, max_batch_size=4, max_wait_ms=5))
    demo = make_demo_tags(seed=0)
    server.personalizer = Personalizer(
        get_task(demo.task), dict(zip(USERS, demo.users, strict=False)), k=1, use_profile=True
    )
    uv, thread, port = serve_in_thread(server)
    yield LiveServer(server, uv, thread, port, tokens), run_dir, backbone
    uv.should_exit = True
    thread.join(timeout=10)


def forget_user(run_dir, user: str) -> None:
    """What `ownlm forget` does to what a server holds, from outside the server: the
    user's adapter deleted from the store, their tokens revoked (own TokenStore)."""
    assert AdapterStore(run_dir / "adapters").delete(f"user:{user}")
    assert TokenStore(run_dir).revoke_user(user) == 1


def ask(live, who: str, user: str) -> httpx.Response:
    return httpx.post(
        f"{live.url}/v1/completions",
        json={
            "model": f"toy:{user}",
            "prompt": "the user likes",
            "max_tokens": 4,
            "temperature": 0,
            "ownlm_personalize": False,
        },
        headers={"Authorization": f"Bearer {live.tokens[who]}"},
        timeout=30,
    )


def admin_get(live, path: str) -> dict:
    return httpx.get(
        f"{live.url}{path}", headers={"Authorization": f"Bearer {live.tokens['admin']}"}
    ).json()


def test_forgotten_user_is_dropped_on_the_next_request(served):
    live, run_dir, _ = served
    server = live.server
    assert ask(live, "alice", "alice").status_code == 200
    server.personalizer.prompt("alice", "x")  # alice's index and profile now in memory
    assert "alice" in server.cache.slots and server.personalizer.has("alice")
    forget_user(run_dir, "alice")  # what `ownlm forget` does, with its own TokenStore
    assert ask(live, "alice", "alice").status_code == 401  # her token: revoked
    r = ask(live, "admin", "alice")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "alice" not in server.cache.slots and "alice" not in server.cache.seen
    assert "alice" not in server.personalizer.built() and not server.personalizer.has("alice")
    listed = admin_get(live, "/admin/adapters")
    assert "alice" not in listed["loaded"] + listed["removed"]
    assert "toy:alice" not in [m["id"] for m in admin_get(live, "/v1/models")["data"]]


def test_forgotten_user_leaves_memory_without_any_request(served):
    live, run_dir, _ = served
    assert ask(live, "bob", "bob").status_code == 200
    assert "bob" in live.server.cache.slots
    forget_user(run_dir, "bob")
    deadline = time.time() + 5
    while "bob" in live.server.cache.slots and time.time() < deadline:
        time.sleep(0.1)  # the server's sweep runs every second
    assert "bob" not in live.server.cache.slots


def test_admin_removed_then_forgotten_is_never_listed(served):
    live, run_dir, _ = served
    h = {"Authorization": f"Bearer {live.tokens['admin']}"}
    assert httpx.delete(f"{live.url}/admin/adapters/carol", headers=h).status_code == 200
    assert "carol" in admin_get(live, "/admin/adapters")["removed"]
    forget_user(run_dir, "carol")
    listed = admin_get(live, "/admin/adapters")
    assert "carol" not in listed["loaded"] + listed["removed"]


def test_revoked_token_fails_on_the_next_request(served):
    live, run_dir, _ = served
    assert ask(live, "dave", "dave").status_code == 200  # verified and cached
    other = TokenStore(run_dir)  # another process: `ownlm token revoke --id ...`
    other.revoke(live.tokens["dave"].split("-")[1])
    assert ask(live, "dave", "dave").status_code == 401
    assert ask(live, "erin", "erin").status_code == 200  # the others keep working


def test_retrained_adapter_is_served_without_a_reload(served):
    live, run_dir, backbone = served
    before = ask(live, "admin", "erin").json()["choices"][0]["text"]
    add_user_adapter(backbone, AdapterStore(run_dir / "adapters"), "erin", seed=999)
    after = ask(live, "admin", "erin").json()["choices"][0]["text"]
    h = {"Authorization": f"Bearer {live.tokens['admin']}"}
    assert httpx.post(f"{live.url}/admin/adapters/erin", headers=h).status_code == 200
    assert ask(live, "admin", "erin").json()["choices"][0]["text"] == after != before
