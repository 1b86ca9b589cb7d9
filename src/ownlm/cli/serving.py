"""The serving commands: serve a trained run, and manage its API tokens (`ownlm token
create | users | list | revoke`). The server and token store are imported lazily."""

from __future__ import annotations

from pathlib import Path

import typer

from ownlm.cli.common import app, friendly, token_app
from ownlm.config import ServeSettings
from ownlm.errors import ConfigError
from ownlm.log import console
from ownlm.paths import RunPaths


@app.command(name="serve")
@friendly
def serve_cmd(
    run_dir: Path = typer.Option(..., help="a trained run directory, e.g. runs/demo-headlines"),
    host: str = typer.Option("127.0.0.1", help="address to bind"),
    port: int = typer.Option(8000, help="port to bind"),
    cache_size: int = typer.Option(64, help="user adapters kept in memory (LRU)"),
    max_batch_size: int = typer.Option(16, help="requests decoded together in one batch"),
    max_wait_ms: float = typer.Option(10, help="how long the batcher waits to fill a batch"),
    device: str = typer.Option("auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N"),
    dtype: str = typer.Option("auto", help="auto (bf16 on a GPU that has it), float32, bfloat16"),
    max_body_mb: float = typer.Option(4, help="largest request body in MiB; larger: 413"),
    max_prompt_tokens: int = typer.Option(
        0, help="longest prompt in tokens (0 = the model's context); longer: 400"
    ),
    max_queued: int = typer.Option(1024, help="requests waiting for a batch at most; more: 429"),
    header_timeout_s: float = typer.Option(
        10, help="seconds a connection has to send its request's headers; slower: 408, closed"
    ),
    max_connections: int = typer.Option(
        512, help="open connections at most (kept 64 below the descriptor limit)"
    ),
):
    """OpenAI-compatible server: one base, every user's adapter, mixed-user batches."""
    from ownlm.serve.launch import serve

    if max_body_mb <= 0:
        raise ConfigError(f"--max-body-mb must be > 0, got {max_body_mb}; e.g. --max-body-mb 4")
    settings = ServeSettings(
        cache_size,
        max_batch_size,
        max_wait_ms,
        device=device,
        dtype=dtype,
        max_body_bytes=int(max_body_mb * 2**20),
        max_prompt_tokens=max_prompt_tokens,
        max_queued=max_queued,
        header_timeout_s=header_timeout_s,
        max_connections=max_connections,
    )
    serve(run_dir, host, port, settings)


@token_app.command("create")
@friendly
def token_create(
    run_dir: Path = typer.Option(..., help="the served run directory"),
    user: str = typer.Option(None, help="user id the token may reach"),
    admin: bool = typer.Option(False, help="create an admin token (manages adapters and tokens)"),
):
    """Create an API token, printed once (only its hash is stored).

    A user token is for a user the run knows: one with an adapter, or in its data
    (`ownlm token users` lists them)."""
    from ownlm.store.tokens import TokenStore

    if admin == bool(user):
        raise ConfigError("give exactly one of --user U (a user token) or --admin (an admin token)")
    store = TokenStore(run_dir)
    if user:  # a user the run knows: an adapter in a store, or a user of its data
        token = store.create_for_user(user, lambda: _data_users(run_dir))
    else:
        token = store.create(admin=True)
    who = "admin" if admin else f"user {user}"
    console.print(f"token for {who} (shown once, keep it secret):\n{token}", soft_wrap=True)


def _data_users(run_dir: Path) -> list[str]:
    """The user ids of a run's data (none when the run has no config.yaml)."""
    if not RunPaths(run_dir).config.exists():
        return []
    from ownlm.run import Run

    return [u.user_id for u in Run.open(run_dir).dataset.users]


@token_app.command("users")
@friendly
def token_users(run_dir: Path = typer.Option(..., help="the served run directory")):
    """List the users a token can be created for: with an adapter, or in the run's data."""
    from ownlm.store.tokens import stored_users

    stored = stored_users(run_dir)
    for user in sorted(stored | set(_data_users(run_dir))):
        console.print(f"{user}  {'adapter' if user in stored else 'data only (no adapter yet)'}")


@token_app.command("list")
@friendly
def token_list(run_dir: Path = typer.Option(..., help="the served run directory")):
    """List the run's tokens: id, whom it serves, when it was made (never secrets)."""
    from ownlm.store.tokens import TokenStore

    rows = TokenStore(run_dir).tokens()
    for row in rows:
        who = "admin" if row["admin"] else f"user {row['user']}"
        if row.get("malformed"):  # edited by hand: never accepted
            who = "malformed entry (never accepted; `ownlm token revoke --id` removes it)"
        console.print(f"{row['id']}  {who}  {row['created']}", soft_wrap=True, markup=False)
    if not rows:
        console.print(f"no tokens in {run_dir}; create one with `ownlm token create`")


@token_app.command("revoke")
@friendly
def token_revoke(
    run_dir: Path = typer.Option(..., help="the served run directory"),
    id_: str = typer.Option(None, "--id", help="the token id to revoke (`ownlm token list`)"),
    user: str = typer.Option(None, help="revoke every token of this user"),
):
    """Revoke tokens; a running server refuses them from its next request on."""
    from ownlm.store.tokens import TokenStore

    if bool(id_) == bool(user):
        raise ConfigError("give exactly one of --id ID (see `ownlm token list`) or --user U")
    store = TokenStore(run_dir)
    if id_:
        store.revoke(id_)
        console.print(f"revoked token {id_}", markup=False)
    else:
        console.print(f"revoked {store.revoke_user(user)} token(s) of user {user}", markup=False)
