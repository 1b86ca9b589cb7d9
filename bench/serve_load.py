"""Load test: N concurrent clients against a live ownlm server on 127.0.0.1.

Builds a toy run (random-weight Llama, one random rank-8 LoRA per user, so users answer
differently), computes every user's greedy answer alone (offline engine, batch of one),
starts the server, and lets N clients send completions for random users for a bounded
time while an admin task removes and re-adds some users' adapters and adds a new user's
adapter to the store mid-run. Every answer is checked against its user's own answer:
a mismatch would be one user served another's adapter.

Reports p50/p99 latency, throughput, errors (any failure other than a 404 for an adapter
that is removed at that moment), refused requests (those 404s) and cross-user mismatches.

    python bench/serve_load.py [--clients 16] [--seconds 20] [--users 12]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import random
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import torch

from ownlm.backbone.load import load_base
from ownlm.config import ServeSettings
from ownlm.serve.engine import Engine, Request
from ownlm.serve.launch import serve_in_thread
from ownlm.serve.server import build_server
from ownlm.store import AdapterStore, Manifest, TokenStore
from ownlm.testing import add_user_adapter, toy_run

PROMPT, MAX_TOKENS = "the user likes", 8


def expected_answers(run_dir: Path, staging: AdapterStore, users: list[str]) -> dict[str, str]:
    """Each user's greedy completion, run alone (batch of one) on a separate engine."""
    backbone = load_base(run_dir / "base")
    engine = Engine(copy.deepcopy(backbone.model), backbone.tokenizer, 1, max_len=backbone.max_len)
    store = AdapterStore(run_dir / "adapters")
    ids = backbone.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    out = {}
    for u in users:
        path = store.path(f"user:{u}") if store.exists(f"user:{u}") else staging.path(f"user:{u}")
        engine.lora.load(0, path)
        out[u] = engine.generate([Request(ids=ids, slot=0, max_tokens=MAX_TOKENS)])[0].text
    return out


async def client(url, tokens, users, expected, stop_at, stats, removed):
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        while time.perf_counter() < stop_at:
            u = random.choice(users)
            body = {
                "model": f"toy:{u}",
                "prompt": PROMPT,
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
            }
            t = time.perf_counter()
            try:
                r = await http.post(
                    "/v1/completions", json=body, headers={"Authorization": f"Bearer {tokens[u]}"}
                )
            except httpx.HTTPError as e:
                stats["errors"].append(f"{u}: {e!r}")
                continue
            if r.status_code == 404 and (u in removed or "late" in u):
                stats["refused"] += 1
            elif r.status_code != 200:
                stats["errors"].append(f"{u}: {r.status_code} {r.text[:200]}")
            else:
                stats["latency"].append(time.perf_counter() - t)
                stats["tokens"] += r.json()["usage"]["completion_tokens"]
                if r.json()["choices"][0]["text"] != expected[u]:
                    stats["mismatch"] += 1


async def admin(url, token, churn, late, run_dir, staging, fingerprint, stop_at, removed, log):
    """Remove and re-add churn users' adapters; add the late user's adapter mid-run."""
    h = {"Authorization": f"Bearer {token}"}
    store = AdapterStore(run_dir / "adapters")
    added = False
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        start = time.perf_counter()
        while time.perf_counter() < stop_at:
            if not added and time.perf_counter() - start > (stop_at - start) / 3:
                src = staging.path(f"user:{late}")
                store.save(
                    f"user:{late}",
                    lambda d, src=src: shutil.copytree(src, d),
                    Manifest("", "user", "toy", fingerprint),
                )
                r = await http.post(f"/admin/adapters/{late}", headers=h)
                log.append(f"added {late}: {r.status_code}")
                added = True
            u = random.choice(churn)
            removed.add(u)
            r = await http.delete(f"/admin/adapters/{u}", headers=h)
            log.append(f"removed {u}: {r.status_code}")
            await asyncio.sleep(0.3)
            r = await http.post(f"/admin/adapters/{u}", headers=h)
            removed.discard(u)
            log.append(f"re-added {u}: {r.status_code}")
            await asyncio.sleep(0.5)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def report(args, n_users, batch, distinct, log, stats, health, wall) -> None:
    """The run's settings, then what happened: batches, errors, mismatches, latency."""
    lat = stats["latency"]
    print(
        f"clients={args.clients} seconds={args.seconds:.0f} users={n_users} cache_size={args.cache_size} max_batch={batch} torch_threads={torch.get_num_threads()}"
    )
    print(f"distinct expected answers: {distinct} of {n_users} users")
    print(
        f"admin actions: {len(log)} ({sum('removed' in x for x in log)} removals, {sum('added' in x for x in log)} adds)"
    )
    print(
        f"batches={health['batches']} rows={health['rows']} mean rows/batch={health['rows'] / max(1, health['batches']):.1f}"
    )
    for e in stats["errors"][:5]:
        print("error:", e)
    print(
        f"requests ok={len(lat)} refused_while_removed={stats['refused']} errors={len(stats['errors'])} "
        f"mismatches={stats['mismatch']} p50={pct(lat, 0.5) * 1000:.0f}ms p99={pct(lat, 0.99) * 1000:.0f}ms "
        f"throughput={len(lat) / wall:.1f} req/s {stats['tokens'] / wall:.0f} tok/s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients")
    ap.add_argument("--seconds", type=float, default=20, help="duration of the load")
    ap.add_argument("--users", type=int, default=12, help="users with an adapter at start")
    ap.add_argument(
        "--cache-size", type=int, default=8, help="adapter LRU size (< users: evictions happen)"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        users = [f"user{i}" for i in range(args.users)]
        backbone = toy_run(run_dir, users)
        late = "late0"
        staging = AdapterStore(Path(tmp) / "staging")
        add_user_adapter(backbone, staging, late, seed=999)
        all_users = users + [late]
        expected = expected_answers(run_dir, staging, all_users)
        distinct = len(set(expected.values()))
        tokens_store = TokenStore(run_dir)
        tokens = {u: tokens_store.create(u) for u in all_users}
        admin_token = tokens_store.create(admin=True)
        batch = min(16, args.cache_size)
        server = build_server(
            run_dir, ServeSettings(cache_size=args.cache_size, max_batch_size=batch, max_wait_ms=10)
        )
        uv, thread, port = serve_in_thread(server)
        url = f"http://127.0.0.1:{port}"
        stats = {"latency": [], "tokens": 0, "errors": [], "refused": 0, "mismatch": 0}
        removed: set[str] = set()
        log: list[str] = []

        async def run():
            stop_at = time.perf_counter() + args.seconds
            await asyncio.gather(
                admin(
                    url,
                    admin_token,
                    users[:3],
                    late,
                    run_dir,
                    staging,
                    backbone.fingerprint(),
                    stop_at,
                    removed,
                    log,
                ),
                *(
                    client(url, tokens, all_users, expected, stop_at, stats, removed)
                    for _ in range(args.clients)
                ),
            )

        t0 = time.perf_counter()
        asyncio.run(run())
        wall = time.perf_counter() - t0
        health = httpx.get(f"{url}/health").json()
        uv.should_exit = True
        thread.join(timeout=10)
    report(args, len(all_users), batch, distinct, log, stats, health, wall)


if __name__ == "__main__":
    main()
