"""`ownlm` command line: demo | prepare | train | eval | export | forget | serve | token.

Every experiment command takes `--config FILE.yaml` (see configs/) and any number of
`--set key=value` overrides (dotted for nested keys, e.g. `--set user.lr=1e-3`).
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import typer
from rich.console import Console

from ownlm.config import describe_fields, load_config
from ownlm.errors import ConfigError, OwnlmError

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time

console = Console(width=max(Console().width, 120))  # tables in full, even in logs
CONFIG_HELP = "Config keys (--set key=value):\n\n" + "\n\n".join(
    f"{key} = {default}: {help_}" for key, default, help_ in describe_fields()
)
app = typer.Typer(help=__doc__, no_args_is_help=True, pretty_exceptions_enable=False)
token_app = typer.Typer(help="Manage API tokens of the server.", no_args_is_help=True)
app.add_typer(token_app, name="token")

ConfigOpt = typer.Option(None, "--config", "-c", help="experiment YAML (see configs/)")
SetOpt = typer.Option([], "--set", "-s", help="override a config key: key=value (repeatable)")


def friendly(fn):
    """Print ownlm's own errors as one clear line (exit code 2), not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (OwnlmError, FileNotFoundError) as e:
            console.print(f"[bold red]error:[/] {e}")
            raise typer.Exit(2) from None

    return wrapper


def _run(config, overrides):
    from ownlm.run import Run

    return Run(load_config(config, overrides))


@app.command(epilog=CONFIG_HELP)
@friendly
def prepare(config: Path = ConfigOpt, set_: list[str] = SetOpt):
    """Load and split the data, build the backbone (pre-training the tiny one if needed)."""
    run = _run(config, set_)
    ds, split = run.dataset, run.split
    summary = {
        "task": run.task.name,
        "users": len(ds.users),
        "train_users": len(split.train),
        "dev_users": len(split.dev),
        "test_users": len(split.test),
        "history_items": sum(len(u.history) for u in ds.users),
        "queries": sum(len(u.queries) for u in ds.users),
    }
    backbone = run.initial_backbone()
    summary["backbone"] = {
        "name": backbone.name,
        "kind": backbone.kind,
        "fingerprint": backbone.fingerprint(),
    }
    (run.dir / "data_summary.json").write_text(json.dumps(summary, indent=2))
    console.print_json(data=summary)


@app.command(epilog=CONFIG_HELP)
@friendly
def train(
    config: Path = ConfigOpt,
    set_: list[str] = SetOpt,
    stages: str = typer.Option(
        "population,users", help="comma-separated stages: population, groups, users"
    ),
    variants: str = typer.Option(
        "oppu,peft",
        help="user-stage variants: oppu (PEFT+retrieval+profile), peft (PEFT only), proper-input, proper-user",
    ),
):
    """Train the stages; a stopped run resumes, skipping users already trained."""
    run = _run(config, set_)
    train_stages(
        run,
        [s.strip() for s in stages.split(",") if s.strip()],
        [v.strip() for v in variants.split(",") if v.strip()],
    )


def train_stages(run, stages: list[str], variants: list[str]) -> None:
    from ownlm.errors import ConfigError
    from ownlm.train.population import train_population
    from ownlm.train.users import VARIANTS, train_users

    known = {"population", "groups", "users"}
    if set(stages) - known:
        raise ConfigError(
            f"unknown stage(s) {sorted(set(stages) - known)}; choose from population, groups, users"
        )
    if "population" in stages:
        train_population(run)
    if "groups" in stages:
        from ownlm.train.groups import train_groups

        train_groups(run)
    if "users" in stages:
        for variant in variants:
            if variant in VARIANTS:
                train_users(run, variant)
            elif variant.startswith("proper-"):
                from ownlm.train.proper import train_proper_users

                train_proper_users(run, router=variant.removeprefix("proper-"))
            else:
                raise ConfigError(
                    f"unknown variant {variant!r}; choose from {sorted(VARIANTS)} or proper-input, proper-user"
                )


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ConfigError(f"{option} takes positive integers separated by commas, e.g. 2,5,10")
    return values


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
    study_users: int = typer.Option(
        0, help="active-level study on the first N test users only (0 = all)"
    ),
):
    """Evaluate the configured methods side by side with the trivial references."""
    from ownlm.evaluate.runner import evaluate_run

    buckets = _int_list(active_levels, "--active-levels") if active_levels else ()
    start = time.perf_counter()
    run = _run(config, set_)
    evaluate_run(run)
    if groups_view:
        from ownlm.evaluate.proper import groups_view as show_groups

        show_groups(run)
    if buckets:
        from ownlm.evaluate.proper import active_level_study

        active_level_study(run, buckets=buckets, max_users=study_users or None)
    console.print(f"eval wall time: {time.perf_counter() - start:.0f} s")


@app.command()
@friendly
def demo(
    output_dir: str = typer.Option("runs", help="parent folder of the demo runs"),
    configs: str = typer.Option(
        "configs/demo-tags.yaml,configs/demo-headlines.yaml", help="demo experiment configs"
    ),
):
    """The whole pipeline on built-in data: pre-train, population LoRA, one LoRA per user, eval."""
    from rich.table import Table

    from ownlm.evaluate.runner import PRIMARY, evaluate_run

    start = time.perf_counter()
    summary = Table(title="demo: does each user's own LoRA learn the user?")
    for col in (
        "task",
        "backbone",
        "metric",
        "user-majority",
        "base",
        "RAG",
        "OPPU",
        "OPPU - base",
    ):
        summary.add_column(col)
    for path in [p for p in configs.split(",") if p]:
        if not Path(path).exists():
            raise FileNotFoundError(
                f"demo config {path} not found; run `ownlm demo` from the repository root"
            )
        run = _run(Path(path), [f"output_dir={output_dir}"])
        console.rule(f"[bold]{run.cfg.name}[/]: {run.task.description}")
        train_stages(run, ["population", "users"], ["oppu", "peft"])
        results = {r.method: r.metrics for r in evaluate_run(run)}
        metric = PRIMARY[run.task.kind]
        row = [results[m][metric] for m in ("user-majority", "base", "rag", "oppu")]
        summary.add_row(
            run.task.name,
            run.cfg.backbone,
            metric,
            *(f"{v:.3f}" for v in row),
            f"{row[3] - row[1]:+.3f}",
        )
    console.print(summary)
    console.print(f"demo wall time: {time.perf_counter() - start:.0f} s")


@app.command()
@friendly
def forget(
    user: str = typer.Option(
        ..., help="user id whose adapters, tokens and cached state are deleted"
    ),
    run_dir: Path = typer.Option(..., help="run directory (e.g. runs/demo-tags)"),
):
    """Delete everything ownlm stored for a user: their adapters in every store, their tokens."""
    from ownlm.store import AdapterStore

    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    removed = []
    for store_dir in sorted(
        p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith("adapters")
    ):
        if AdapterStore(store_dir).delete(f"user:{user}"):
            removed.append(store_dir.name)
    tokens = run_dir / "tokens.json"
    if tokens.exists():
        data = json.loads(tokens.read_text())
        kept = {
            k: v
            for k, v in data.items()
            if not (isinstance(v, dict) and str(v.get("user")) == user)
        }
        if len(kept) != len(data):
            tmp = tokens.with_suffix(".tmp")
            tmp.write_text(json.dumps(kept, indent=2))
            tmp.replace(tokens)
            removed.append("tokens")
    console.print(f"user {user}: removed from {', '.join(removed) or 'nothing (no stored state)'}")
    router = AdapterStore(run_dir / "adapters").path("router") / "router.json"
    if router.exists() and user in json.loads(router.read_text()).get("users", []):
        console.print(
            f"[yellow]user {user} was a stage-2 (PROPER group) train user: the group experts "
            "were trained on their history and the group router keeps a learned embedding "
            "for them. Remove their data and retrain stage 2 (`ownlm train --stages groups,"
            "users`) to take those out too.[/]"
        )


@app.command()
@friendly
def export(
    config: Path = ConfigOpt,
    set_: list[str] = SetOpt,
    user: str = typer.Option(..., help="user id to export"),
    out: Path = typer.Option(..., help="output directory (a standard PEFT LoRA directory)"),
    variant: str = typer.Option(
        "proper-user",
        help="proper-user (group experts + user LoRA flattened into one LoRA) or oppu / peft (the user's own LoRA, copied with its base)",
    ),
):
    """Export a user's model as one vanilla PEFT LoRA directory (PEFT, vLLM --lora-modules)."""
    import shutil

    from ownlm.errors import ConfigError

    run = _run(config, set_)
    if variant in ("oppu", "peft"):
        src = run.store(variant).verify(f"user:{user}", run.base().fingerprint())
        if out.exists():
            raise ConfigError(f"{out} already exists; choose a new output directory")
        shutil.copytree(src, out)
        path = out
    elif variant == "proper-user":
        from ownlm.adapters.export import export_user

        path = export_user(run, user, out)
    elif variant == "proper-input":
        from ownlm.adapters.export import INPUT_ROUTER_MSG

        raise ConfigError(INPUT_ROUTER_MSG)
    else:
        raise ConfigError(f"unknown variant {variant!r}; choose proper-user, oppu or peft")
    from ownlm.adapters.export import vllm_hint

    base = run.base_dir.resolve()
    console.print(f"exported user {user} ({variant}) to {path}; base model: {base}")
    kind = json.loads((base / "ownlm_base.json").read_text())["kind"]  # as `load_base` reads it
    console.print(vllm_hint(base, Path(path).resolve(), f"user-{user}", kind))


@app.command(name="serve")
@friendly
def serve_cmd(
    run_dir: Path = typer.Option(..., help="a trained run directory, e.g. runs/demo-headlines"),
    host: str = typer.Option("127.0.0.1", help="address to bind"),
    port: int = typer.Option(8000, help="port to bind"),
    cache_size: int = typer.Option(64, help="user adapters kept in memory (LRU)"),
    max_batch_size: int = typer.Option(16, help="requests decoded together in one batch"),
    max_wait_ms: float = typer.Option(10, help="how long the batcher waits to fill a batch"),
):
    """OpenAI-compatible server: one base, every user's adapter, mixed-user batches."""
    from ownlm.serve.cli import serve

    serve(run_dir, host, port, cache_size, max_batch_size, max_wait_ms)


@token_app.command("create")
@friendly
def token_create(
    run_dir: Path = typer.Option(..., help="the served run directory"),
    user: str = typer.Option(None, help="user id the token may reach"),
    admin: bool = typer.Option(False, help="create an admin token (manages adapters and tokens)"),
):
    """Create an API token; it is printed once and only its hash is stored."""
    from ownlm.errors import ConfigError
    from ownlm.serve.cli import create_token

    if not admin and not user:
        raise ConfigError("give --user U for a user token, or --admin for an admin token")
    create_token(run_dir, user, admin)


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
