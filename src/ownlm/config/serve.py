"""`ownlm serve`'s settings: the adapter cache, batching, and the limits on clients."""

from __future__ import annotations

from dataclasses import dataclass

from ownlm.config.fields import check_bounds, setting


@dataclass
class ServeSettings:
    """`ownlm serve`: how many adapters stay loaded, how requests are batched, and the
    limits that keep one client from taking the server's memory or time."""

    cache_size: int = setting(64, "user adapters held in memory (LRU); also the LoRA slots", ge=1)
    max_batch_size: int = setting(16, "rows per forward pass", ge=1)
    max_wait_ms: float = setting(10, "how long a batch's first request waits for company", ge=0)
    default_max_tokens: int = setting(
        16, "when a request names no max_tokens (OpenAI's default)", ge=1
    )
    device: str = setting("auto", "where the base runs (as the run's)")
    dtype: str = setting("auto", "precision of the base (as the run's)")
    max_body_bytes: int = setting(
        4 * 2**20, "largest request body; a larger one is refused (413) before it is read", ge=1
    )
    max_prompt_tokens: int = setting(
        0, "longest prompt in tokens, checked before model work (0 = context)", ge=0
    )
    max_queued: int = setting(
        1024, "requests waiting for a batch at most; more are refused (429)", ge=1
    )
    header_timeout_s: float = setting(
        10.0,
        "seconds a connection has to send a request's headers (from connecting, or from its "
        "previous response); a slower one is answered 408 and closed",
        gt=0,
    )
    max_connections: int = setting(
        512,
        "open connections at most (and below the file-descriptor limit); past it, the one "
        "waiting longest for its headers is closed to make room",
        ge=1,
    )

    def __post_init__(self):
        """The limits, checked where they are set: a server must never start unlimited.
        Built from the CLI's options, not loaded, so the bounds are checked here."""
        check_bounds(self, "ServeSettings.")
