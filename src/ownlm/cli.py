"""The `ownlm` command line: demo | prepare | train | tune | eval | update | export | import | forget | serve | token.

Every experiment command takes `--config FILE.yaml` (see configs/) and any number of
`--set key=value` overrides (dotted for nested keys, e.g. `--set user.lr=1e-3`).
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import typer
from rich.markup import escape

from ownlm.config import ServeSettings, describe_fields, load_config
from ownlm.errors import ConfigError, problem_line
from ownlm.log import configure_output, console
from ownlm.paths import RunPaths

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
configure_output()  # bars on a terminal, plain lines in a log file

CONFIG_HELP = "Config keys (--set key=value):\n\n" + "\n\n".join(
    f"{key} = {default}: {help_}" for key, default, help_ in describe_fields()
)
# help is plain text, never rich markup: `pip install 'ownlm[ray]'` must keep its brackets
app = typer.Typer(
    help=__doc__, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None
)
token_app = typer.Typer(
    help="Manage API tokens of the server.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(token_app, name="token")

ConfigOpt = typer.Option(None, "--config", "-c", help="experiment YAML (see configs/)")
SetOpt = typer.Option([], "--set", "-s", help="override a config key: key=value (repeatable)")
OverwriteOpt = typer.Option(
    False,
    "--overwrite",
    help="start the run afresh: its directory is moved aside to <run>.old-<time>/ (never deleted)",
)


def friendly(fn):
    """Print ownlm's own errors and the operating system's (a full disk, a read-only or
    missing folder) as one clear line (exit code 2), not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            line = problem_line(e)
            if line is None:  # a bug: its traceback says where
                raise
            # escaped: a message quoting data such as '[/x]' is text, not rich markup
            console.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _run(config, overrides, write: bool = True, overwrite: bool = False):
    """train/prepare (`write`) claim the run directory: one trained from other data or
    training keys is refused, or moved aside with `overwrite`. eval/export reopen the run
    as it was trained, config.yaml untouched."""
    from ownlm.run import Run

    if not write:
        return Run.reopen(config, overrides)
    return Run(load_config(config, overrides), overwrite=overwrite)


def _list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(b) for b in _list(text))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ConfigError(f"{option} takes positive integers separated by commas, e.g. 2,5,10")
    return values


@app.command(epilog=CONFIG_HELP)
@friendly
def prepare(config: Path = ConfigOpt, set_: list[str] = SetOpt, overwrite: bool = OverwriteOpt):
    """Load and split the data, build the backbone (pre-training the tiny one if needed)."""
    from ownlm.pipeline.stages import prepare as prepare_run

    console.print_json(data=prepare_run(_run(config, set_, overwrite=overwrite)))


@app.command(epilog=CONFIG_HELP)
@friendly
def train(
    config: Path = ConfigOpt,
    set_: list[str] = SetOpt,
    stages: str = typer.Option(
        "population,users",
        help="comma-separated stages: population, groups, control (OPPU's control for PROPER), users",
    ),
    variants: str = typer.Option(
        "oppu,peft",
        help="user-stage variants: oppu (PEFT+retrieval+profile), peft (PEFT only), oppu-control (OPPU on the control base), proper-input, proper-user",
    ),
    executor: str = typer.Option(
        "inprocess",
        help="where OPPU's user stage runs: inprocess, or ray (pip install 'ownlm[ray]')",
    ),
    workers: int = typer.Option(2, help="Ray actors, each loading the base once (--executor ray)"),
    ray_address: str = typer.Option(
        None, help="join this Ray cluster (default: start a local Ray) (--executor ray)"
    ),
    overwrite: bool = OverwriteOpt,
    tune: bool = typer.Option(
        False, "--tune", help="choose the user stage's lr and epochs on the dev users first"
    ),
):
    """Train the stages. A stopped run resumes: stages and users already trained from
    the same data and settings are kept; a run trained from others is refused."""
    from ownlm.pipeline.stages import check_plan, train_stages

    check_plan(_list(stages), _list(variants), executor)  # before any work
    run = _run(config, set_, overwrite=overwrite)
    train_stages(run, _list(stages), _list(variants), executor, workers, ray_address, tune)


@app.command(name="tune", epilog=CONFIG_HELP)
@friendly
def tune_(
    config: Path = ConfigOpt,
    set_: list[str] = SetOpt,
    variants: str = typer.Option(
        "oppu,peft", help="user stages to tune: oppu, peft, proper-input, proper-user"
    ),
):
    """Choose the user stage's learning rate and epochs on the dev users (a run with
    its stage 1), print the table chosen from, and record the choice in the run: the
    user stage trains with it from then on (users of another budget are retrained)."""
    from ownlm.pipeline.tune import open_for_tuning, tune_run

    start = time.perf_counter()
    run = open_for_tuning(config, set_)
    tune_run(run, _list(variants), config=str(config) if config else None)
    console.print(f"tune wall time: {time.perf_counter() - start:.0f} s")


@app.command(name="eval", epilog=CONFIG_HELP)
@friendly
def eval_(
    config: Path = ConfigOpt,
    set_: list[str] = SetOpt,
    active_levels: str = typer.Option(
        "", help="also run the active-level study (PROPER): history sizes to keep, e.g. 2,5,10,50"
    ),
    groups_view: bool = typer.Option(
        False, "--groups-view", help="also print which users went to which group expert (PROPER)"
    ),
    study: str = typer.Option(
        "",
        help="also run these studies, comma-separated: shift (behaviour shift and updates; "
        "shift-swap: with a planted drift), "
        "peft-methods (LoRA vs IA3 vs prompt tuning), formats (history formats)",
    ),
    study_users: int = typer.Option(0, help="studies on the first N test users only (0 = all)"),
    one_expert_run: str = typer.Option(
        "",
        help="active-level study: also the row proper-user-g1, PROPER on the stage 2 of this "
        "run (same output_dir), trained alike with --set proper.groups=1",
    ),
):
    """Evaluate the configured methods side by side with the trivial references. Exits
    with code 3 (after saving the table) when a method could not be run: users without a
    usable adapter; the message names them and the command that trains them."""
    from ownlm.evaluate.runner import evaluate_run

    buckets = _int_list(active_levels, "--active-levels") if active_levels else ()
    studies = _list(study)
    if studies:  # an unknown study stops before any work
        from ownlm.studies import check_studies

        check_studies(studies)
    start = time.perf_counter()
    run = _run(config, set_, write=False)
    results = evaluate_run(run)
    from ownlm.run.outputs import guarded_outputs

    with guarded_outputs(run, run.paths.eval):  # a user forgotten meanwhile: not named
        _more(run, groups_view, buckets, studies, study_users, one_expert_run)
    console.print(f"eval wall time: {time.perf_counter() - start:.0f} s")
    if any(r.not_run for r in results):  # a method asked for has no score: not a success
        raise typer.Exit(3)


def _more(run, groups_view: bool, buckets, studies, study_users: int, one_expert_run: str):
    """`ownlm eval`'s extras: the groups view, the active-level study, the studies."""
    if groups_view:
        from ownlm.evaluate.group_view import groups_view as show_groups

        show_groups(run)
    if buckets:
        from ownlm.run import Run
        from ownlm.studies.active_levels import active_level_study

        one = Run.open(run.dir.parent / one_expert_run) if one_expert_run else None
        active_level_study(run, buckets=buckets, max_users=study_users or None, one_expert=one)
    for name in studies:
        from ownlm.studies import run_named_study

        run_named_study(name, run, max_users=study_users or None)


@app.command()
@friendly
def demo(
    output_dir: str = typer.Option("runs", help="parent folder of the demo runs"),
    configs: str = typer.Option(
        "configs/demo-tags.yaml,configs/demo-headlines.yaml", help="demo experiment configs"
    ),
    overwrite: bool = OverwriteOpt,
):
    """The whole pipeline on built-in data: pre-train, population LoRA, one LoRA per user, eval."""
    from ownlm.studies.demo import run_demo

    start = time.perf_counter()
    console.print(run_demo(_list(configs), output_dir, overwrite=overwrite))
    console.print(f"demo wall time: {time.perf_counter() - start:.0f} s")


@app.command()
@friendly
def forget(
    user: str = typer.Option(
        ..., help="user id whose adapters, tokens and cached state are deleted"
    ),
    run_dir: Path = typer.Option(..., help="run directory (e.g. runs/demo-tags)"),
):
    """Delete everything the run stores of a user (adapters, tokens, stage-2 entry, eval
    outputs naming them) and name what their history trained, with the retrain command."""
    from ownlm.ownership.forget import forget_user

    for line, style in forget_user(run_dir, user).report():
        console.print(line, style=style, markup=False, highlight=False, soft_wrap=True)


@app.command()
@friendly
def export(
    config: Path = ConfigOpt,
    set_: list[str] = SetOpt,
    user: str = typer.Option(..., help="user id to export"),
    out: Path = typer.Option(None, help="output directory (a standard PEFT LoRA directory)"),
    variant: str = typer.Option(
        "auto",
        help="auto (the first the user has of:) proper-user (group experts + user LoRA flattened into one LoRA), oppu, peft (the user's own LoRA)",
    ),
    bundle: Path = typer.Option(
        None, help="instead of --out: write the user's ownership bundle (a tar; `ownlm import`)"
    ),
    with_history: bool = typer.Option(
        False, "--with-history", help="put the user's history in the bundle too"
    ),
):
    """Export a user's model as one vanilla PEFT LoRA directory (PEFT, vLLM --lora-modules),
    or with --bundle everything the run stores for them, in one self-checking archive."""
    if (out is None) == (bundle is None):
        raise ConfigError("give exactly one of --out DIR (a PEFT LoRA) or --bundle FILE")
    run = _run(config, set_, write=False)
    if bundle is not None:
        from ownlm.ownership.bundle import write_bundle

        done = write_bundle(run, user, bundle, with_history)
        console.print(done.summary(), markup=False, highlight=False, soft_wrap=True)
        return
    from ownlm.ownership.export import export_user

    _, message = export_user(run, user, out, variant)
    console.print(message, markup=False, highlight=False, soft_wrap=True)


@app.command()
@friendly
def update(
    run_dir: Path = typer.Option(..., help="run directory (e.g. runs/demo-tags)"),
    user: str = typer.Option(..., help="user id whose OPPU adapter is continued"),
    history: Path = typer.Option(..., help="JSONL file of new history items, one per line"),
    lr: float = typer.Option(
        None, help="learning rate (default: update.lr, else the user stage's)"
    ),
    epochs: float = typer.Option(None, help="epochs over the new items (default: update.epochs)"),
):
    """Continue a user's adapter on new history items (kept in <run>/updates/<user>.jsonl),
    swapped in atomically; a running server serves the new version from its next request."""
    from ownlm.oppu.update import update_user
    from ownlm.run import Run

    done = update_user(Run.open(run_dir), user, history, lr, epochs)
    console.print(done.summary(), markup=False, highlight=False, soft_wrap=True)


@app.command(name="import")
@friendly
def import_(
    bundle: Path = typer.Argument(..., help="a bundle written by `ownlm export --bundle`"),
    run_dir: Path = typer.Option(..., help="the run to restore it into (same base)"),
    replace: bool = typer.Option(
        False, "--replace", help="swap out adapters the run already has for this user"
    ),
):
    """Restore a user's ownership bundle into a run with the same base, checking every
    member's sha256 first; refuses a tampered archive or one for another base."""
    from ownlm.ownership.bundle import import_bundle

    done = import_bundle(bundle, run_dir, replace)
    console.print(done.summary(bundle, run_dir), markup=False, highlight=False, soft_wrap=True)


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


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
