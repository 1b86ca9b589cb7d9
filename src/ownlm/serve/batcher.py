"""Gather concurrent requests into mixed-user batches (max batch size, max wait in ms).

Requests wait in an asyncio queue; the loop takes the first, waits at most `max_wait_ms`
for more (up to `max_batch_size`), and runs them as one batch on a single worker thread,
so the event loop keeps accepting requests while the model computes. Each job receives
its text pieces and its final Output (or error) on its own asyncio queue.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ownlm.log import get_logger
from ownlm.serve.cache import AdapterCache
from ownlm.serve.engine import Engine, Output, Request
from ownlm.serve.errors import ApiError

log = get_logger(__name__)


@dataclass
class Job:
    request: Request
    user: str | None  # whose adapter; None = the bare base
    events: asyncio.Queue = field(
        default_factory=asyncio.Queue
    )  # ("text", str) ... ("done", Output) | ("error", exc)

    async def result(self) -> Output:
        while True:
            kind, value = await self.events.get()
            if kind == "done":
                return value
            if kind == "error":
                raise value


class Batcher:
    def __init__(
        self,
        engine: Engine,
        cache: AdapterCache,
        max_batch_size: int = 16,
        max_wait_ms: float = 10,
        max_queued: int = 1024,
    ):
        self.engine, self.cache = engine, cache
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queued = max_queued  # beyond it a request is refused, not held in memory
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="ownlm-engine")
        self.batches = 0  # counters for /health
        self.rows = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def submit(self, request: Request, user: str | None, stream: bool = False) -> Job:
        if self.queue.qsize() >= self.max_queued:
            raise ApiError(
                429,
                f"the server has {self.max_queued} requests waiting already (max_queued); "
                "retry shortly",
                code="server_busy",
            )
        loop = asyncio.get_running_loop()
        job = Job(request, user)
        if stream:  # text pieces only when someone reads them: decoding each step costs
            request.on_text = lambda text: loop.call_soon_threadsafe(
                job.events.put_nowait, ("text", text)
            )
        await self.queue.put(job)
        return job

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch_size:
                try:
                    batch.append(
                        await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                    )
                except TimeoutError:
                    break
            try:
                await loop.run_in_executor(self.pool, self._run, batch, loop)
            except Exception as e:  # never let one batch stop the loop: fail its jobs only
                log.exception("batch of %d failed", len(batch))
                for job in batch:
                    job.events.put_nowait(("error", e))

    def _run(self, batch: list[Job], loop) -> None:
        """On the engine thread: resolve slots (loading misses), generate, deliver."""

        def send(job: Job, kind: str, value) -> None:
            loop.call_soon_threadsafe(job.events.put_nowait, (kind, value))

        with self.cache.lock:
            ready = []
            for job in batch:
                try:
                    job.request.slot = self.cache.slots_for(
                        [job.user], pinned={j.user for j in ready if j.user}
                    )[0]
                    self.engine.check(job.request)
                    ready.append(job)
                except Exception as e:  # a bad adapter or request fails alone, not the batch
                    send(job, "error", e)
            if not ready:
                return
            try:
                outputs = self.engine.generate([j.request for j in ready])
            except Exception as e:
                for job in ready:
                    send(job, "error", e)
                return
        self.batches += 1
        self.rows += len(ready)
        for job, out in zip(ready, outputs, strict=True):
            send(job, "done", out)
