"""Abuse test: oversized requests against a live ownlm server, answer time and memory.

Builds a toy run (`ownlm.testing`), starts `ownlm.serve.launch.serve` on it in a child
process (so that the server's memory is its own, not the client's 50 MB buffers), and
sends, one after another:

    50 MB body, Content-Length      a 50 MB prompt, the whole body sent (httpx)
    50 MB declared, headers only    the headers alone; answered before any body byte?
    50 MB body, chunked             the same prompt without a length (chunked upload)
    3.9 MB prompt                   a prompt just under the body limit (the prompt limit)
    normal completion               a 4-token prompt: still served, and how fast

For each: the status, the seconds until the answer, and the server's resident memory
(VmRSS) before and after, plus its peak (VmHWM) so far. Linux only (/proc).

    python bench/serve_abuse.py [--timeout 120] [--max-body-mb 4]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

MB = 10**6
PROMPT_BYTES = 50 * MB


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of process `pid` in MiB, from /proc; NaN once the
    process has died."""
    fields = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except FileNotFoundError:  # died and reaped
        lines = []
    for line in lines:
        key, _, value = line.partition(":")
        fields[key] = value.split()
    if "VmRSS" not in fields:  # a zombie: it died
        return float("nan"), float("nan")
    return int(fields["VmRSS"][0]) / 1024, int(fields["VmHWM"][0]) / 1024


def body_of(prompt_bytes: int) -> bytes:
    return b'{"model":"toy:alice","max_tokens":4,"prompt":"' + b"a " * (prompt_bytes // 2) + b'"}'


def headers_only(port: int, token: str, declared: int, timeout: float) -> int:
    """Send a request's headers declaring `declared` body bytes, no body; the status."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(
            f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n".encode()
        )
        return int(s.recv(4096).split(b" ", 2)[1])


def cases(url: str, port: int, token: str, timeout: float):
    """(name, function returning the HTTP status) for each abuse, in order."""
    h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    big = body_of(PROMPT_BYTES)

    def post(content) -> int:
        return httpx.post(
            f"{url}/v1/completions", content=content, headers=h, timeout=timeout
        ).status_code

    def chunked():
        for i in range(0, len(big), 1 << 16):
            yield big[i : i + (1 << 16)]

    return [
        ("50 MB body, Content-Length", lambda: post(big)),
        ("50 MB declared, headers only", lambda: headers_only(port, token, len(big), timeout)),
        ("50 MB body, chunked", lambda: post(chunked())),
        ("3.9 MB prompt", lambda: post(body_of(int(3.9 * MB)))),
        ("normal completion", lambda: post(body_of(8))),
    ]


def measure(proc: subprocess.Popen, name: str, send) -> tuple:
    before, _ = rss_mb(proc.pid)
    start = time.perf_counter()
    try:
        status = str(send())
    except (httpx.HTTPError, OSError) as e:
        status = "timeout" if isinstance(e, (httpx.TimeoutException, TimeoutError)) else "error"
    seconds = time.perf_counter() - start
    after, peak = rss_mb(proc.pid)
    if proc.poll() is not None:
        status = "died"
    return name, status, seconds, before, after, peak


def start_server(run_dir: Path, port: int, max_body_mb: float | None) -> subprocess.Popen:
    args = [sys.executable, __file__, "--child", str(run_dir), "--port", str(port)]
    if max_body_mb is not None:
        args += ["--max-body-mb", str(max_body_mb)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start within 120 s")


def child(run_dir: str, port: int, max_body_mb: float | None) -> None:
    """The server process: `ownlm serve` on the toy run, until killed."""
    from ownlm.config import ServeSettings
    from ownlm.serve.launch import serve

    settings = ServeSettings(cache_size=2, max_batch_size=2)
    if max_body_mb is not None:
        settings.max_body_bytes = int(max_body_mb * 2**20)
    serve(Path(run_dir), port=port, settings=settings)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--timeout", type=float, default=120, help="seconds to wait for each answer")
    ap.add_argument("--max-body-mb", type=float, default=None, help="server's body limit")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.port, a.max_body_mb)
        return

    from ownlm.store import TokenStore
    from ownlm.testing import toy_run

    run_dir = Path(tempfile.mkdtemp(prefix="ownlm-abuse-"))
    toy_run(run_dir, ["alice"])
    token = TokenStore(run_dir).create(admin=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", a.port))
        port = s.getsockname()[1]
    proc = start_server(run_dir, port, a.max_body_mb)
    try:
        url = f"http://127.0.0.1:{port}"
        rows = [measure(proc, name, send) for name, send in cases(url, port, token, a.timeout)]
    finally:
        proc.kill()
    print(
        f"{'case':30} {'status':>8} {'answer s':>9} {'RSS before':>11} {'RSS after':>10} {'peak':>8}"
    )
    for name, status, seconds, before, after, peak in rows:
        print(f"{name:30} {status:>8} {seconds:9.3f} {before:9.0f}MB {after:8.0f}MB {peak:6.0f}MB")


if __name__ == "__main__":
    main()
