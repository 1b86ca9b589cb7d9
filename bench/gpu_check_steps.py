"""The checks of `bench/gpu_check.py`, each returning (status, detail, metrics).

Training, evaluation, export and serving go through the `ownlm` command line (as a
user runs them), the logit comparison and the throughput through the library."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "from ownlm.cli import app; app()"]


@dataclass
class Check:
    out: Path
    model_dir: Path
    cpu: bool

    @property
    def device(self) -> str:
        return "cpu" if self.cpu else "cuda"

    @property
    def dtype(self) -> str:
        return "float32" if self.cpu else "bfloat16"

    def sets(self, name: str, *extra: str) -> list[str]:
        """`--set` arguments of a run `name` on the check's model (small on the CPU)."""
        size = ["max_users=10", "max_history=8"] if self.cpu else [
            "max_users=56", "max_history=20"]  # fmt: skip
        keys = [
            f"backbone={self.model_dir}", "data=demo-tags", f"name={name}",
            f"output_dir={self.out / 'runs'}", f"device={self.device}", f"dtype={self.dtype}",
            "population.epochs=1", "user.epochs=1", "validation.dev_frac=0",
            "methods=[base,oppu]", "n_boot=20", "context_length=512", *size, *extra,
        ]  # fmt: skip
        return [a for k in keys for a in ("--set", k)]

    def ownlm(self, *args: str, timeout: float = 600) -> str:
        """Run `ownlm ARGS` with this repository's source; its stdout, or raise with stderr."""
        env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
        res = subprocess.run(
            [*CLI, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO
        )
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"ownlm {args[0]} exited {res.returncode}: {' | '.join(tail)}")
        return res.stdout

    def run(self, name: str, *extra: str):
        from ownlm.config import load_config
        from ownlm.run import Run

        keys = self.sets(name, *extra)[1::2]
        return Run(load_config(None, keys))


def gpu_tests(check: Check):
    if check.cpu:
        return "skip", "no CUDA (--cpu): the gpu-marked tests skip themselves", {}
    # the gpu-marked tests live in tests/test_gpu.py (collecting all of tests/ would need
    # the dev extra, e.g. openai, which a GPU machine may lack)
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
           "tests/test_gpu.py"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    last = (res.stdout.strip().splitlines() or ["(no output)"])[-1]
    return ("ok" if res.returncode == 0 else "fail"), last, {"rc": res.returncode}


def train_eval(check: Check):
    check.ownlm("train", *check.sets("check"), "--variants", "oppu")
    out = check.ownlm("eval", *check.sets("check"))
    rows = [line for line in out.splitlines() if "oppu" in line.lower()][:1]
    return "ok", f"trained and evaluated in {check.dtype}: {' '.join(rows)[:120]}", {}


def engine_peft(check: Check):
    """The engine's logits for a user's slot against PEFT's on the exported adapter."""
    import torch
    from peft import AutoPeftModelForCausalLM

    from ownlm.config import ServeSettings
    from ownlm.ownership.export import export_user
    from ownlm.serve.server import build_server

    run = check.run("check")
    user = run.split.test[0].user_id
    path, _ = export_user(run, user, check.out / "export-oppu", "oppu")
    settings = ServeSettings(cache_size=4, max_batch_size=4, device=check.device, dtype=check.dtype)
    server = build_server(run.dir, settings)
    tok = server.backbone.tokenizer
    ids = tok(["a movie about a wizard and a tower"] * 2, return_tensors="pt")["input_ids"]
    ids = ids.to(server.engine.device)
    slot = server.cache.slots_for([user])[0]
    with torch.inference_mode(), server.engine.lora.use([slot] * len(ids)):
        served = server.engine.model(input_ids=ids).logits.float()
    dtype = torch.float32 if check.cpu else torch.bfloat16
    peft = AutoPeftModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(check.device)
    with torch.inference_mode():
        want = peft.eval()(input_ids=ids).logits.float()
    gap = float((served - want).abs().max() / want.abs().max())
    agree = float((served.argmax(-1) == want.argmax(-1)).float().mean())
    bound = 1e-4 if check.cpu else 5e-2
    status = "ok" if gap <= bound else "fail"
    detail = (
        f"max|engine - PEFT| / max|logit| = {gap:.2e} (bound {bound:g}); argmax agree {agree:.0%}"
    )
    return status, detail, {"relative_gap": gap, "argmax_agree": agree}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, token: str, body: dict) -> tuple[int, float]:
    req = urllib.request.Request(url, json.dumps(body).encode(), method="POST")
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        json.loads(r.read())
        return r.status, time.perf_counter() - start


def serve_16(check: Check):
    run_dir = check.out / "runs" / "check"
    users = [u.user_id for u in check.run("check").split.test]
    tokens = {u: check.ownlm("token", "create", "--run-dir", str(run_dir), "--user", u)
              for u in users}  # fmt: skip
    tokens = {u: out.strip().splitlines()[-1].strip() for u, out in tokens.items()}
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    args = ["serve", "--run-dir", str(run_dir), "--port", str(port), "--device", check.device,
            "--dtype", check.dtype]  # fmt: skip
    log = open(check.out / "serve.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen([*CLI, *args], env=env, stdout=log, stderr=log, cwd=REPO)
    try:
        url = f"http://127.0.0.1:{port}/v1/completions"
        _wait_ready(port, server)
        base = _base_name(port, tokens[users[0]])
        bodies = [({"model": f"{base}:{u}", "prompt": "a movie about a wizard", "max_tokens": 16,
                    "temperature": 0}, tokens[u]) for u in (users * 16)[:16]]  # fmt: skip
        start = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(lambda b: _post(url, b[1], b[0]), bodies))
        wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    ok = sum(code == 200 for code, _ in got)
    lat = sorted(t for _, t in got)
    detail = f"{ok}/16 answered in {wall:.1f}s, p50 {lat[8]:.2f}s, max {lat[-1]:.2f}s"
    return ("ok" if ok == 16 else "fail"), detail, {"answered": ok, "wall_s": wall}


def _base_name(port: int, token: str) -> str:
    """The served base's name, as GET /v1/models lists it first."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models")
    req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["data"][0]["id"].partition(":")[0]


def _wait_ready(port: int, server, limit: float = 180) -> None:
    stop = time.time() + limit
    while time.time() < stop:
        if server.poll() is not None:
            raise RuntimeError(f"ownlm serve exited {server.returncode} (see serve.log)")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers (a 401 or 404 is an answer)
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"ownlm serve did not answer within {limit:.0f}s")


def users_hour(check: Check):
    """Users per hour and peak memory, batched vs one at a time, on the same users."""
    import torch

    from ownlm.oppu.batched import train_users_batched
    from ownlm.oppu.sequential import train_users

    backbone = check.run("check").base()
    metrics = {}
    for method in ("sequential", "batched"):
        run = check.run(f"speed-{method}")
        users = run.split.test
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        if method == "batched":
            stats = train_users_batched(run, users=users, backbone=backbone)
        else:
            stats = train_users(run, users=users, backbone=backbone)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**30
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process RSS
        seconds = time.perf_counter() - start
        per_hour = 3600 * stats["trained"] / seconds
        metrics[method] = {"users_per_hour": per_hour, "peak_gb": peak, "users": len(users),
                           "seconds": seconds}  # fmt: skip
    s, b = metrics["sequential"], metrics["batched"]
    where = "GPU allocated" if torch.cuda.is_available() else "process RSS"
    detail = (
        f"{b['users']} users: batched {b['users_per_hour']:.0f}/h ({b['peak_gb']:.2f} GB), "
        f"one at a time {s['users_per_hour']:.0f}/h ({s['peak_gb']:.2f} GB) peak {where}"
    )
    return "ok", detail, metrics


def _can_4bit(check: Check) -> str | None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "bitsandbytes is not installed (pip install 'ownlm[qlora]')"
    return None


def qlora(check: Check):
    if why := _can_4bit(check):
        return "skip", why, {}
    extra = ("quantize=4bit",)
    check.ownlm("train", *check.sets("qlora", *extra), "--variants", "oppu")
    check.ownlm("eval", *check.sets("qlora", *extra))
    user = check.run("qlora", *extra).split.test[0].user_id
    out = check.out / "export-qlora"
    check.ownlm("export", *check.sets("qlora", *extra), "--user", user, "--out", str(out))
    return "ok", "4-bit NF4 base: trained, evaluated, exported", {}


def proper_flat(check: Check):
    import torch
    from peft import AutoPeftModelForCausalLM

    extra = ("proper.groups=2", "proper.em_rounds=1", "proper.epochs=1", "proper.user_epochs=1")
    stages = ["--stages", "population,groups,users", "--variants", "proper-user"]
    check.ownlm("train", *check.sets("proper", *extra), *stages)
    user = check.run("proper", *extra).split.test[0].user_id
    out = check.out / "export-proper"
    check.ownlm("export", *check.sets("proper", *extra), "--user", user, "--out", str(out),
                "--variant", "proper-user")  # fmt: skip
    model = AutoPeftModelForCausalLM.from_pretrained(str(out)).to(check.device)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([[1, 5, 6, 7]], device=check.device)).logits
    r = json.loads((out / "adapter_config.json").read_text())["r"]
    finite = bool(torch.isfinite(logits).all())
    return ("ok" if finite else "fail"), f"flat proper-user export (r={r}) loads in PEFT", {"r": r}


STEPS = {
    "gpu-tests": gpu_tests,
    "train-eval": train_eval,
    "engine-peft": engine_peft,
    "serve-16": serve_16,
    "users-hour": users_hour,
    "qlora": qlora,
    "proper-flat": proper_flat,
}
