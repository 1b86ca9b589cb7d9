"""The auth dependencies: a Bearer token names who asks; admin routes need an admin."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ownlm.serve.auth import admin, principal
from ownlm.serve.errors import ApiError
from ownlm.store.tokens import TokenStore


@pytest.fixture
def server(tmp_path):
    return SimpleNamespace(tokens=TokenStore(tmp_path))  # principal reads only .tokens


def test_bearer_token_names_its_user(server):
    token = server.tokens.create("42")
    who = principal(server, f"Bearer {token}")
    assert who.user == "42" and not who.admin
    assert principal(server, f"Bearer  {token} ") == who  # surrounding spaces ignored


@pytest.mark.parametrize("header", [None, "", "Basic abc", "ownlm-x-y", "Bearer ownlm-x-y"])
def test_missing_or_unknown_token_is_401(server, header):
    with pytest.raises(ApiError) as e:
        principal(server, header)
    assert e.value.status == 401 and e.value.code == "invalid_api_key"
    assert e.value.type == "authentication_error" and "token create" in e.value.message


def test_admin_routes_need_an_admin_token(server):
    user = principal(server, f"Bearer {server.tokens.create('42')}")
    with pytest.raises(ApiError) as e:
        admin(user)
    assert e.value.status == 403 and e.value.type == "permission_error"
    boss = principal(server, f"Bearer {server.tokens.create(admin=True)}")
    assert admin(boss) is boss


def test_an_unreadable_tokens_file_is_a_500_that_names_no_path(server):
    server.tokens.path.write_text("[]")
    with pytest.raises(ApiError) as e:
        principal(server, "Bearer ownlm-abc-def")
    assert e.value.status == 500 and e.value.type == "server_error"
    assert str(server.tokens.path) not in e.value.message
