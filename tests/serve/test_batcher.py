"""The batcher's queue is bounded: past `max_queued` waiting requests, a 429."""

from __future__ import annotations

import asyncio

import pytest

from ownlm.serve.batcher import Batcher
from ownlm.serve.engine import Request
from ownlm.serve.errors import ApiError


def test_a_full_queue_refuses_with_429():
    async def fill():
        batcher = Batcher(engine=None, cache=None, max_queued=2)  # not started: nothing drains
        for _ in range(2):
            await batcher.submit(Request(ids=[1]), None)
        with pytest.raises(ApiError) as e:
            await batcher.submit(Request(ids=[1]), None)
        return e.value

    err = asyncio.run(fill())
    assert err.status == 429 and err.type == "rate_limit_error" and "max_queued" in err.message
