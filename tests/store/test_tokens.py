"""API tokens: stored hashed, scoped to one user (or admin), revocable."""

from __future__ import annotations

import json

import pytest

from ownlm.errors import ConfigError
from ownlm.store.tokens import TokenStore


def test_tokens_are_hashed_and_scoped(tmp_path):
    token = TokenStore(tmp_path).create("42", admin=False)
    raw = (tmp_path / "tokens.json").read_text()
    assert token.split("-", 2)[2] not in raw  # only the scrypt hash is kept
    store = TokenStore(tmp_path)
    who = store.check(token)
    assert who.user == "42" and not who.admin
    assert who.may_use("42") and who.may_use(None) and not who.may_use("43")
    assert store.check(token[:-1] + ("x" if token[-1] != "x" else "y")) is None
    assert store.check("Bearer nonsense") is None
    admin = store.create(admin=True)
    assert TokenStore(tmp_path).check(admin).admin and store.has_admin()
    assert store.revoke_user("42") == 1 and store.check(token) is None
    assert all("scrypt" in e for e in json.loads((tmp_path / "tokens.json").read_text()).values())


@pytest.mark.parametrize("user, admin", [(None, False), ("42", True)])
def test_a_token_is_for_one_user_or_an_admin(tmp_path, user, admin):
    with pytest.raises(ConfigError, match="exactly one of a user or an admin"):
        TokenStore(tmp_path).create(user, admin)
    assert not (tmp_path / "tokens.json").exists()
