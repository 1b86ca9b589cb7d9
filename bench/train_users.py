"""User-stage throughput: OPPU users trained per hour, batched vs one at a time.

The default tiny backbone size (random-init Llama of `TinyConfig()`: 4 layers, d=256,
4 heads, FFN 688, vocab 4096, its BPE trained on the generated text), the demo-tags
task's prompts (retrieval k=1 + profile, ~100 tokens each), OPPU's user settings
(r=8 on q/v, 2 epochs, 16 pairs per step). Two populations: 16 users of 10 items
(2 steps each) and 16 users of 40 items (5 steps each). For each, the whole stage as
the pipeline runs it (prompts, initialisation, training, saving to a fresh store):

  (a) batched:    train_users_batched, --users-per-batch users trained together
  (b) sequential: train_users, one user after another

Both see the same users and the same batches (`batch_plan`). Runs are interleaved in
one process; medians of --runs repetitions. Peak RSS is the process's high-water mark
(ru_maxrss only grows) read after each method's first run, sequential first.

    python bench/train_users.py [--threads 1] [--device cpu] [--users-per-batch 16]
                                [--runs 3] [--quick]
    python bench/train_users.py --memory    # peak RSS, 16 vs 64 users, each in a fresh process
    python bench/train_users.py --device cuda --dtype bfloat16 [--size 1b]   # on a GPU

The last line is `batched/sequential=X.XX`: users per hour, batched over sequential,
for the 10-item users.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from ownlm.backbone.base import CausalBackbone  # noqa: E402
from ownlm.backbone.tiny import build_model  # noqa: E402
from ownlm.backbone.tokenizer import train_tokenizer  # noqa: E402
from ownlm.config import TinyConfig, load_config  # noqa: E402
from ownlm.data.demo import FILLERS, GENRES, MOODS  # noqa: E402
from ownlm.data.records import Item, User  # noqa: E402
from ownlm.data.tasks import DEMO_TAGS, get_task  # noqa: E402
from ownlm.oppu.batched import train_users_batched  # noqa: E402
from ownlm.oppu.model import user_pairs  # noqa: E402
from ownlm.oppu.sequential import train_users  # noqa: E402
from ownlm.run import Run  # noqa: E402

N_USERS, SIZES = 16, (10, 40)
SENTENCES = [s for group in (GENRES, MOODS) for lines in group.values() for s in lines] + FILLERS


def make_users(n_users: int, n_items: int, seed: int) -> list[User]:
    """Users of `n_items` one-sentence movie descriptions and their tags."""
    rng = random.Random(seed)
    users = []
    for u in range(n_users):
        uid = f"b{n_items}-{u:02d}"
        history = [
            Item(
                f"{uid}-h{i}",
                {"description": rng.choice(SENTENCES), "tag": rng.choice(DEMO_TAGS)},
            )
            for i in range(n_items)
        ]
        users.append(User(uid, history))
    return users


# --size: the default tiny backbone, or a ~1B Llama (random weights) for a GPU
SIZES_CFG = {
    "tiny": TinyConfig(),
    "1b": TinyConfig(hidden_size=2048, layers=16, heads=16, intermediate_size=5632),
}


def make_backbone(corpus: list[str], device: str, size: str = "tiny") -> CausalBackbone:
    cfg = SIZES_CFG[size]
    tok = train_tokenizer(corpus, vocab_size=cfg.vocab_size)
    model = build_model(cfg, max(cfg.vocab_size, len(tok))).to(device)
    return CausalBackbone(model.eval(), tok, name="bench", max_len=cfg.max_len)


def new_run(root: Path, name: str, users_per_batch: int) -> Run:
    cfg = load_config(
        None,
        [
            f"output_dir={root}",
            f"name={name}",
            "data=demo-tags",
            "task=demo-tags",
            f"user.users_per_batch={users_per_batch}",
        ],
    )
    return Run(cfg)


def timed(method: str, root: Path, tag: str, users, backbone, k: int) -> float:
    """Seconds per user of one whole user stage into a fresh store."""
    run = new_run(root, tag, k)
    start = time.perf_counter()
    if method == "batched":
        stats = train_users_batched(run, users=users, backbone=backbone, users_per_batch=k)
    else:
        stats = train_users(run, users=users, backbone=backbone)
    if backbone.model.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    assert stats["trained"] == len(users), stats
    return elapsed / len(users)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(root: Path, populations, backbone, k: int, runs: int):
    """{(items, method): [seconds per user]} and {method: peak RSS MB after its first run}."""
    times: dict[tuple[int, str], list[float]] = {}
    rss: dict[str, float] = {}
    for i in range(runs):
        for n, users in populations.items():
            for method in ("sequential", "batched"):
                t = timed(method, root, f"{method}-{n}-{i}", users, backbone, k)
                times.setdefault((n, method), []).append(t)
                rss.setdefault(method, rss_mb())
    return times, rss


def report(times, rss) -> None:
    print(f"{'items':>5} {'method':>10} {'s/user':>8} {'users/hour':>11} {'peak RSS MB':>12}")
    ratio = {}
    for n in SIZES:
        per_hour = {}
        for method in ("batched", "sequential"):
            sec = statistics.median(times[(n, method)])
            per_hour[method] = 3600 / sec
            print(f"{n:>5} {method:>10} {sec:>8.3f} {per_hour[method]:>11.0f} {rss[method]:>12.0f}")
        ratio[n] = per_hour["batched"] / per_hour["sequential"]
        print(f"{n:>5} {'ratio':>10} {'':>8} {ratio[n]:>11.2f}")
    print(f"batched/sequential={ratio[SIZES[0]]:.2f}")


def memory_child(n_users: int, args) -> None:
    """Train `n_users` users of 10 items batched in this (fresh) process; print peak RSS."""
    users = make_users(n_users, SIZES[0], seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        probe = new_run(Path(tmp), "probe", 1)
        pairs = [p for u in users[:16] for p in user_pairs(probe, u)]
        backbone = make_backbone([f"{p} {t}" for p, t in pairs] * 2, args.device)
        before = rss_mb()
        run = new_run(Path(tmp), "mem", args.users_per_batch)
        stats = train_users_batched(run, users=users, backbone=backbone)
        assert stats["trained"] == n_users, stats
    print(f"RSS {n_users} {before:.0f} {rss_mb():.0f}")


def memory(args) -> None:
    """Peak RSS of the batched user stage for 16 and for 64 users, each in a new process:
    finished users' adapters must leave memory (target: within 10%)."""
    import subprocess
    import sys

    peak = {}
    for n in (16, 64):
        cmd = [sys.executable, __file__, "--memory-users", str(n), "--device", args.device]
        cmd += ["--users-per-batch", str(args.users_per_batch)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        line = next(x for x in out.splitlines() if x.startswith("RSS "))
        _, _, start, end = line.split()
        peak[n] = float(end)
        print(
            f"{n:>3} users: RSS after model set-up {float(start):.0f} MB, peak {float(end):.0f} MB"
        )
    print(f"rss64/rss16={peak[64] / peak[16]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--users-per-batch", type=int, default=16, help="users trained together")
    ap.add_argument("--runs", type=int, default=3, help="repetitions (median reported)")
    ap.add_argument("--quick", action="store_true", help="one run: a smoke test")
    ap.add_argument("--memory", action="store_true", help="peak RSS, 16 vs 64 users")
    ap.add_argument("--size", choices=sorted(SIZES_CFG), default="tiny", help="backbone size")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--memory-users", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_users:
        return memory_child(args.memory_users, args)
    if args.memory:
        return memory(args)
    runs = 1 if args.quick else args.runs
    populations = {n: make_users(N_USERS, n, seed=n) for n in SIZES}
    with tempfile.TemporaryDirectory() as tmp:
        probe = new_run(Path(tmp), "probe", 1)
        pairs = [p for u in populations[SIZES[0]] for p in user_pairs(probe, u)]
        corpus = [f"{p} {t}" for p, t in pairs] * 2
        backbone = make_backbone(corpus, args.device, args.size)
        if args.dtype == "bfloat16":
            backbone.model.to(torch.bfloat16)
        tokens = statistics.mean(len(backbone.tokenizer(p)["input_ids"]) for p, _ in pairs)
        print(
            f"task {get_task('demo-tags').name}, {torch.get_num_threads()} thread(s), "
            f"device {args.device}, {args.size} {args.dtype}, {args.users_per_batch} users per batch, "
            f"prompt ~{tokens:.0f} tokens, {runs} run(s)"
        )
        times, rss = measure(Path(tmp), populations, backbone, args.users_per_batch, runs)
    report(times, rss)


if __name__ == "__main__":
    main()
