"""PROPER user-stage throughput: users trained per hour, batched vs one at a time.

The protocol of bench/train_users.py (OPPU's): the default tiny backbone (random-init
Llama of `TinyConfig()`, its BPE trained on the generated text), the demo-tags task's
prompts, two populations of 16 users (10 items: 2 steps each; 40 items: 5 steps each),
runs interleaved in one process, medians of --runs repetitions. On top of it, stage 2
is trained once (a short 'user'-assignment stage 2 on the run's demo-tags train users:
`--groups` experts on the FFN) and every timing is the whole PROPER user stage as the
pipeline runs it (`train_proper_users`: routing start, prompts, training, saving into
an emptied store), with PROPER's default user settings (r_u=8, 2 epochs, 16 pairs per
step), for --router (user or input):

  (a) batched:    user.users_per_batch = --users-per-batch (`proper.batched`)
  (b) sequential: user.users_per_batch = 1, one user after another

    python bench/train_proper_users.py [--threads 1] [--router user] [--runs 3] [--quick]
                                       [--chunk-rows 16] [--device cuda]

The last line is `batched/sequential=X.XX`: users per hour, batched over sequential,
for the 10-item users.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/train_users.py's helpers

import torch  # noqa: E402
from train_users import SIZES, make_backbone, make_users, report, rss_mb  # noqa: E402

from ownlm.config import load_config  # noqa: E402
from ownlm.proper.group_stage import train_groups  # noqa: E402
from ownlm.proper.user_stage import train_proper_users  # noqa: E402
from ownlm.proper.users import proper_pairs  # noqa: E402
from ownlm.run import Run  # noqa: E402

N_USERS = 16


def new_run(root: Path, groups: int) -> Run:
    """A demo-tags run with a short stage-2 budget (stage 2 is set-up, not measured)."""
    cfg = load_config(
        None,
        [
            f"output_dir={root}",
            "name=proper-bench",
            "data=demo-tags",
            "task=demo-tags",
            "max_users=24",
            f"proper.groups={groups}",
            "proper.em_rounds=1",
            "proper.epochs=0.5",
        ],
    )
    return Run(cfg)


def timed(run: Run, method: str, users, backbone, router: str, k: int) -> float:
    """Seconds per user of one whole PROPER user stage into an emptied store."""
    shutil.rmtree(run.store(f"proper-{router}").root, ignore_errors=True)
    run.cfg.user.users_per_batch = k if method == "batched" else 1
    start = time.perf_counter()
    stats = train_proper_users(run, router, users=users, backbone=backbone)
    if backbone.model.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    assert stats["trained"] == len(users), stats
    return elapsed / len(users)


def measure(run: Run, populations, backbone, router: str, k: int, runs: int):
    """{(items, method): [seconds per user]} and {method: peak RSS MB after its first run}."""
    times: dict[tuple[int, str], list[float]] = {}
    rss: dict[str, float] = {}
    for _ in range(runs):
        for n, users in populations.items():
            for method in ("sequential", "batched"):
                t = timed(run, method, users, backbone, router, k)
                times.setdefault((n, method), []).append(t)
                rss.setdefault(method, rss_mb())
    return times, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--router", choices=("user", "input"), default="user")
    ap.add_argument("--users-per-batch", type=int, default=16, help="users trained together")
    ap.add_argument("--groups", type=int, default=4, help="stage-2 experts G")
    ap.add_argument("--chunk-rows", type=int, default=0, help="rows per forward (0: the run's)")
    ap.add_argument("--runs", type=int, default=3, help="repetitions (median reported)")
    ap.add_argument("--quick", action="store_true", help="one run: a smoke test")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = 1 if args.quick else args.runs
    populations = {n: make_users(N_USERS, n, seed=n) for n in SIZES}
    with tempfile.TemporaryDirectory() as tmp:
        run = new_run(Path(tmp), args.groups)
        run.cfg.user.chunk_rows = args.chunk_rows or run.cfg.user.chunk_rows
        pairs = [p for u in populations[SIZES[0]] for p in proper_pairs(run, u)]
        backbone = make_backbone([f"{p} {t}" for p, t, _ in pairs] * 2, args.device)
        known = {u.user_id: u.history_digest() for us in populations.values() for u in us}
        run.current_history = known.get  # the bench's users are not in the run's data file
        start = time.perf_counter()
        train_groups(run, backbone)
        tokens = statistics.mean(len(backbone.tokenizer(p)["input_ids"]) for p, _, _ in pairs)
        print(
            f"PROPER proper-{args.router}, {torch.get_num_threads()} thread(s), device "
            f"{args.device}, {args.users_per_batch} users per batch ({run.cfg.user.chunk_rows} rows "
            f"per forward), G={args.groups}, prompt "
            f"~{tokens:.0f} tokens, {runs} run(s); stage 2 set-up "
            f"{time.perf_counter() - start:.0f} s"
        )
        times, rss = measure(run, populations, backbone, args.router, args.users_per_batch, runs)
    report(times, rss)


if __name__ == "__main__":
    main()
