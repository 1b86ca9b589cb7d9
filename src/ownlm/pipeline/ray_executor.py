"""The user stage fanned out over Ray actors (`ownlm train --executor ray`).

Each actor opens the run read-only, loads the merged base once, and trains the users it
is handed with the in-process user stage (`oppu.user_stage.train_oppu_users`: batched when
`user.users_per_batch` > 1), writing each finished user to the store itself. The driver
hands out chunks of users, shows one progress bar over all of them, and leaves fault
tolerance to Ray: an actor that dies is restarted (`max_restarts`) and its pending
chunks are retried (`max_task_retries`); users stored before the crash are skipped on
retry, as in any resumed run. A local Ray is started on the spot unless `address`
names a running cluster (whose workers must see the run directory and the data at the
same paths). Ray is an optional extra: `pip install 'ownlm[ray]'`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ownlm.errors import ConfigError, StoreError
from ownlm.log import get_logger, progress
from ownlm.train.budget import user_budget
from ownlm.train.per_user import plan_users, stage_line

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)
# Test-only fault injection: an actor's first incarnation exits after finishing this many
# chunks, so the tests can check that Ray restarts it and the run still completes.
CRASH_ENV = "OWNLM_RAY_CRASH_AFTER_CHUNKS"


def import_ray():
    try:
        import ray
    except ImportError as e:
        raise ConfigError(
            "--executor ray needs Ray, which is not installed: pip install 'ownlm[ray]' "
            "(or use the default in-process executor)"
        ) from e
    return ray


class UserWorker:
    """One Ray actor: the run and its base, loaded once; trains chunks of users."""

    def __init__(self, run_dir: str, cwd: str, variant: str, threads: int):
        import torch

        from ownlm.run import Run

        os.chdir(cwd)  # relative data paths in the config mean what they meant to the driver
        torch.set_num_threads(threads)
        self.run = Run.open(run_dir)
        self.backbone = self.run.base()
        self.variant = variant
        self.chunks = 0

    def train(self, user_ids: list[str]) -> dict:
        import ray

        from ownlm.oppu.user_stage import train_oppu_users

        wanted = set(user_ids)
        users = [u for u in self.run.split.test if u.user_id in wanted]
        stats = train_oppu_users(self.run, self.variant, users, self.backbone)
        self.chunks += 1
        restarted = ray.get_runtime_context().was_current_actor_reconstructed
        crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)
        if crash_after and not restarted and self.chunks >= crash_after:
            os._exit(1)  # as if the machine died right after this chunk was stored
        return {**stats, "restarted": restarted}


def train_users_ray(
    run: Run,
    variant: str = "oppu",
    users=None,
    workers: int = 2,
    address: str | None = None,
    max_retries: int = 2,
) -> dict:
    """Train the user stage of `users` (default: the test users) on `workers` Ray actors.
    Returns {"trained", "resumed", "empty", "history_changed", "budget_changed",
    "restarts"} like the in-process stage."""
    ray = import_ray()
    if workers < 1:
        raise ConfigError(f"--workers must be a positive integer, got {workers}")
    users = run.split.test if users is None else users
    store, fp = run.store(variant), run.base_fingerprint()
    budget = user_budget(run, variant, fp)  # each actor reads the same from run.json
    todo, counts = plan_users(store, users, fp, budget)
    size = max(1, run.cfg.user.users_per_batch)
    chunks = [[u.user_id for u in todo[i : i + size]] for i in range(0, len(todo), size)]
    started = _start(ray, address, workers)
    try:
        stats = _fan_out(ray, run, variant, chunks, workers, max_retries)
    finally:
        if started:
            ray.shutdown()
    # what the store holds now is the result: a chunk retried after a crash reports its
    # users as resumed, though they were trained in this run
    trained = [u for u in todo if store.current(u.name, fp, u.history_digest())]
    missing = [u.user_id for u in todo if u not in trained]
    if missing:
        raise StoreError(
            f"{len(missing)} user(s) were not trained on Ray: {missing[:5]}; rerun the same "
            "command (finished users are skipped)"
        )
    log.info(
        f"[bold]stage 3[/] on Ray ({workers} workers, {budget}): "
        f"{stage_line(len(trained), counts)}, "
        f"actor restarts {stats['restarts']}"
    )
    return {"trained": len(trained), **counts, **stats}


def _start(ray, address: str | None, workers: int) -> bool:
    """Join `address`, or start a local Ray with a CPU slot per worker; True if started."""
    if ray.is_initialized():
        return False
    env = {k: v for k, v in os.environ.items() if k.startswith(("OWNLM_", "HF_"))}
    ray.init(
        address=address,
        num_cpus=None if address else max(workers, os.cpu_count() or 1),
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )
    return True


def _fan_out(ray, run: Run, variant, chunks, workers, max_retries) -> dict:
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    actor = ray.remote(UserWorker).options(
        num_cpus=1,
        num_gpus=gpus / workers if gpus else 0,  # a fractional GPU per actor
        max_restarts=max_retries,
        max_task_retries=max_retries,
    )
    threads = max(1, (os.cpu_count() or 1) // workers)
    cwd, run_dir = os.getcwd(), str(Path(run.dir).resolve())
    actors = [actor.remote(run_dir, cwd, variant, threads) for _ in range(workers)]
    pending = {
        actors[i % workers].train.remote(chunk): len(chunk) for i, chunk in enumerate(chunks)
    }
    totals = {"restarts": 0}
    with progress(
        total=sum(pending.values()), desc=f"user LoRAs ({variant}, Ray)", unit="user"
    ) as bar:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            n = pending.pop(ready[0])
            out = ray.get(ready[0])  # an actor that failed past its retries raises here
            totals["restarts"] += int(out["restarted"])
            bar.update(n)
    return totals
