"""API tokens: stored hashed, scoped to one user (or admin), listed without secrets,
revocable from another process with effect on the very next check."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat

import pytest
from typer.testing import CliRunner

from ownlm.cli import app
from ownlm.errors import ConfigError, NotFoundError, StoreError
from ownlm.store import AdapterStore, Manifest
from ownlm.store.tokens import TokenStore, stored_users

runner = CliRunner()


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


def test_revoked_elsewhere_fails_on_the_next_check(tmp_path):
    """The server's store has verified (and cached) the tokens; another process (the
    CLI, `ownlm forget`) revokes them: the very next check fails, without a restart."""
    server = TokenStore(tmp_path)
    alice, bob = server.create("alice"), server.create("bob")
    assert server.check(alice).user == "alice" and server.check(bob).user == "bob"
    cli = TokenStore(tmp_path)  # another process's view of the same file
    assert cli.revoke_user("alice") == 1
    assert server.check(alice) is None and server.check(bob).user == "bob"
    cli.revoke(server.check(bob).token_id)
    assert server.check(bob) is None
    with pytest.raises(NotFoundError, match="token list"):
        cli.revoke("feedfeedfeed")


def test_listing_shows_whom_and_when_never_secrets(tmp_path):
    store = TokenStore(tmp_path)
    token, admin = store.create("42"), store.create(admin=True)
    rows = store.tokens()
    assert {r["id"] for r in rows} == {token.split("-")[1], admin.split("-")[1]}
    assert all(set(r) == {"id", "user", "admin", "created"} for r in rows)
    assert {(r["user"], r["admin"]) for r in rows} == {("42", False), (None, True)}
    assert token.split("-", 2)[2] not in json.dumps(rows)


def test_file_is_mode_600_after_every_write(tmp_path):
    store = TokenStore(tmp_path)
    store.create("42")
    store.create("43")
    store.revoke_user("42")
    assert stat.S_IMODE(os.stat(tmp_path / "tokens.json").st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.json", "tokens.json.lock"]


def _create_many(run_dir, user, n):
    store = TokenStore(run_dir)
    for _ in range(n):
        store.create(user)


def test_two_processes_writing_at_once_lose_no_token(tmp_path):
    """Read-modify-write under a file lock: without it one process's tokens overwrite
    the other's (the CLI and the server write the same file)."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_create_many, args=(tmp_path, u, 6)) for u in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(r["user"] for r in TokenStore(tmp_path).tokens()) == ["a"] * 6 + ["b"] * 6


def _adapter(store_dir, user):
    def write(d):
        d.mkdir(parents=True)
        (d / "adapter_model.safetensors").write_bytes(b"x")

    AdapterStore(store_dir).save(f"user:{user}", write, Manifest("", "user", "t", "fp"))


def test_only_users_the_run_knows_get_a_token(tmp_path):
    _adapter(tmp_path / "adapters", "alice")
    _adapter(tmp_path / "adapters-peft", "bob")
    assert stored_users(tmp_path) == {"alice", "bob"}
    store = TokenStore(tmp_path)
    store.check_known("alice")
    store.check_known("bob")
    store.check_known("carol", lambda: ["carol"])  # in the run's data, no adapter yet
    with pytest.raises(NotFoundError, match="'zed' is unknown.*ownlm token users"):
        store.check_known("zed", lambda: ["carol"])


def test_cli_create_list_revoke(tmp_path):
    _adapter(tmp_path / "adapters", "alice")
    run = ["--run-dir", str(tmp_path)]
    r = runner.invoke(app, ["token", "create", *run, "--user", "zed"])
    assert r.exit_code == 2 and "unknown" in r.output and "token users" in r.output
    assert not (tmp_path / "tokens.json").exists()
    r = runner.invoke(app, ["token", "create", *run, "--user", "alice"])
    assert r.exit_code == 0, r.output
    token = r.output.strip().splitlines()[-1]
    listed = runner.invoke(app, ["token", "list", *run])
    token_id = token.split("-")[1]
    assert token_id in listed.output and "user alice" in listed.output
    assert token.split("-", 2)[2] not in listed.output
    assert "alice  adapter" in runner.invoke(app, ["token", "users", *run]).output
    r = runner.invoke(app, ["token", "revoke", *run, "--id", token_id])
    assert r.exit_code == 0 and TokenStore(tmp_path).check(token) is None
    r = runner.invoke(app, ["token", "revoke", *run, "--user", "alice", "--id", "x"])
    assert r.exit_code == 2 and "exactly one" in r.output


def test_cli_allows_a_user_of_the_runs_data(tmp_path):
    from ownlm.config import ExperimentConfig, save_config

    save_config(ExperimentConfig(name="r", data="demo-tags"), tmp_path / "config.yaml")
    r = runner.invoke(app, ["token", "create", "--run-dir", str(tmp_path), "--user", "t000"])
    assert r.exit_code == 0, r.output
    assert TokenStore(tmp_path).tokens()[0]["user"] == "t000"


@pytest.mark.parametrize("content", ["[]", "null", '"x"', "7", "\xff{"])
def test_a_tokens_file_that_is_not_an_object_is_one_clear_error(tmp_path, content):
    (tmp_path / "tokens.json").write_bytes(content.encode("latin-1"))
    run = ["--run-dir", str(tmp_path)]
    for cmd in (
        ["token", "list"],
        ["token", "revoke", "--user", "a"],
        ["token", "create", "--admin"],
    ):
        r = runner.invoke(app, [*cmd, *run])
        assert r.exit_code == 2 and "tokens.json is corrupt" in r.output, (cmd, r.output)
    with pytest.raises(StoreError, match="corrupt"):
        TokenStore(tmp_path).check("ownlm-abc-def")


@pytest.mark.parametrize(
    "entry",
    [
        "x",
        None,
        {"user": "42"},
        {"user": "42", "admin": False, "salt": "zz", "scrypt": "00"},
        {"user": ["42"], "admin": False, "salt": "00", "scrypt": "00", "created": 5},
        {"user": "42", "admin": True, "salt": "00", "scrypt": "00"},
    ],
)
def test_a_hand_edited_entry_never_authenticates_and_can_be_revoked(tmp_path, entry):
    store = TokenStore(tmp_path)
    good = store.create(admin=True)
    data = json.loads((tmp_path / "tokens.json").read_text())
    (tmp_path / "tokens.json").write_text(json.dumps(data | {"abc": entry}))
    assert TokenStore(tmp_path).check("ownlm-abc-def") is None
    assert TokenStore(tmp_path).check(good).admin  # the others still work
    run = ["--run-dir", str(tmp_path)]
    listed = runner.invoke(app, ["token", "list", *run])
    assert listed.exit_code == 0 and "abc  malformed entry" in listed.output, listed.output
    assert runner.invoke(app, ["token", "revoke", *run, "--user", "42"]).exit_code == 0
    data = json.loads((tmp_path / "tokens.json").read_text())
    (tmp_path / "tokens.json").write_text(json.dumps(data | {"abc": entry}))
    r = runner.invoke(app, ["token", "revoke", *run, "--id", "abc"])
    assert r.exit_code == 0 and "abc" not in json.loads((tmp_path / "tokens.json").read_text())
