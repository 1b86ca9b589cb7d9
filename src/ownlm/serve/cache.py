"""LRU cache of user adapters in the engine's LoRA slots, loaded on demand from the store.

Every slot write and every batch run under one lock (`AdapterCache.lock`), so a request
sees an adapter either wholly before or wholly after a reload, never half-copied.
Files are read and checked (sha256, base fingerprint) before the lock is taken.

The store on disk is the truth, not memory: each use of a cached adapter first stats its
manifest. Gone (`ownlm forget` in another process) -> the slot is cleared and the
request refused; replaced (retrained) -> the new files are loaded before it is used.
An adapter of another PEFT method than LoRA (`user.method`: IA3, prompt tuning) is
refused when it is read, with what serves it (`adapters.methods.how_served`).

Each entry is keyed by the user and the variant served (`served_key`): an OPPU user by
their id, another variant's as `<user>/<variant>` (a user id never holds a "/"). A
variant whose stored files are not a plain LoRA (proper-user: experts, gates and a
residual) comes with its own reader, which gives the one LoRA a slot holds.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ownlm.adapters.batched import BatchedLora
from ownlm.adapters.methods import NAMES, adapter_method, how_served
from ownlm.adapters.peft_io import LoadedAdapter, read_peft_adapter
from ownlm.errors import NotFoundError, OwnlmError, StoreError
from ownlm.store import AdapterStore
from ownlm.store.store import MANIFEST


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


class AdapterRemoved(NotFoundError):
    """The adapter was removed by an admin, or deleted from the store, between a
    request's admission and its batch (served as 404: the model no longer exists)."""


@dataclass(frozen=True)
class Served:
    """A served variant's store, the fingerprint its adapters must carry, and how a
    verified adapter directory is read into a slot's LoRA (None: as a PEFT LoRA)."""

    store: AdapterStore
    fingerprint: str
    read: Callable[[Path], LoadedAdapter] | None = None


def served_key(user: str, variant: str = "oppu") -> str:
    """The cache's key of `user`'s adapter of `variant`."""
    return user if variant == "oppu" else f"{user}/{variant}"


def split_key(key: str) -> tuple[str, str]:
    """(user, variant) of a cache key."""
    user, _, variant = key.partition("/")
    return user, variant or "oppu"


class AdapterCache:
    def __init__(
        self,
        lora: BatchedLora,
        store: AdapterStore,
        base_fingerprint: str,
        variants: dict[str, Served] | None = None,
    ):
        self.lora = lora
        self.store = store
        self.fingerprint = base_fingerprint
        self.variants = dict(variants or {})  # besides OPPU's (`store`)
        self.lock = threading.Lock()
        self.slots: OrderedDict[str, int] = OrderedDict()  # user id -> slot, oldest first
        self.seen: dict[str, tuple] = {}  # user id -> its manifest's stat when loaded
        self.removed: set[str] = set()  # unloaded by an admin: not served until re-added

    @property
    def size(self) -> int:
        return self.lora.n_slots

    def stat(self, key: str) -> tuple | None:
        """(mtime, inode, size) of the key's stored manifest; None when not stored. A
        stat per use is how a deletion or a retraining by another process is noticed."""
        user, variant = split_key(key)
        served = self.served(variant)
        if served is None:
            return None
        try:
            st = os.stat(served.store.path(f"user:{user}") / MANIFEST)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ino, st.st_size)

    def stored(self, key: str) -> bool:
        return self.stat(key) is not None

    def served(self, variant: str) -> Served | None:
        """How `variant`'s adapters are served (None: not served)."""
        if variant == "oppu":
            return Served(self.store, self.fingerprint)
        return self.variants.get(variant)

    @property
    def variant_names(self) -> list[str]:
        return ["oppu", *self.variants]

    def stored_variants(self, user: str) -> list[str]:
        """The served variants the store holds an adapter of `user` for."""
        return [v for v in self.variant_names if self.stored(served_key(user, v))]

    def servable(self, user: str) -> bool:
        return user not in self.removed and self.stored(user)

    def read(self, key: str) -> tuple[LoadedAdapter, tuple | None]:
        """Check the stored adapter against its manifest and our base; read its weights.
        Returns them with the manifest's stat from before the read."""
        seen = self.stat(key)
        user, variant = split_key(key)
        served = self.served(variant)
        path = served.store.verify(f"user:{user}", served.fingerprint)
        try:
            if served.read is not None:
                return served.read(path), seen
            method = adapter_method(path)
            if method != "lora":  # the slots apply LoRA only: refused here, never batched
                raise StoreError(
                    f"user {user!r} has a {NAMES.get(method, method)} adapter: "
                    + how_served(method)
                )
            return read_peft_adapter(path), seen
        except OwnlmError:
            raise
        except Exception as e:  # a weight file that matches its sha256 yet does not parse
            raise StoreError(
                f"stored adapter of user {user!r} ({path}) cannot be read "
                f"({_first_line(e)}); retrain it"
            ) from None

    def slots_for(self, users: list[str | None], pinned: set[str] = frozenset()) -> list[int]:
        """Slot per user (None -> -1), loading misses. Caller holds `lock`."""
        out = []
        batch = {u for u in users if u is not None} | set(pinned)
        for user in users:
            if user is None:
                out.append(-1)
                continue
            if user in self.removed:
                raise AdapterRemoved(
                    f"adapter of user {user!r} was removed by an admin; re-add it with POST /admin/adapters/{user}"
                )
            now = self.stat(user)
            if now is None:
                if user not in pinned:  # an earlier row of this batch may still use it
                    self._drop(user)
                raise AdapterRemoved(f"adapter of user {user!r} is no longer in the store")
            if user not in self.slots or self.seen.get(user) != now:  # missing or retrained
                self._install(user, *self.read(user), keep=batch)
            self.slots.move_to_end(user)
            out.append(self.slots[user])
        return out

    def _install(self, user: str, adapter: LoadedAdapter, seen, keep: set[str]) -> None:
        slot = self.slots.pop(user, None)
        if slot is None:
            used = set(self.slots.values())
            free = [s for s in range(self.size) if s not in used]
            if free:
                slot = free[0]
            else:
                victim = next((u for u in self.slots if u not in keep), None)
                if victim is None:
                    raise StoreError(
                        f"adapter cache of {self.size} slots is full with this batch; raise cache_size"
                    )
                slot = self.slots.pop(victim)
                self.seen.pop(victim, None)
        try:
            self.lora.load(slot, adapter)
        except Exception as e:  # e.g. shapes of another model: the slot may be half-written
            self.lora.clear(slot)  # cleared and left free, never served half-copied
            self.seen.pop(user, None)
            if isinstance(e, OwnlmError):
                raise
            raise StoreError(
                f"stored adapter of user {user!r} does not fit this base ({_first_line(e)}); "
                "retrain it for this run"
            ) from None
        self.slots[user] = slot
        self.seen[user] = seen

    def _drop(self, user: str) -> bool:
        """Clear a user's slot and forget them. Caller holds `lock`."""
        self.seen.pop(user, None)
        slot = self.slots.pop(user, None)
        if slot is not None:
            self.lora.clear(slot)
        return slot is not None

    def drop(self, user: str) -> None:
        """Forget a user whose adapter left the store: the slots of every variant of
        theirs cleared, not listed."""
        with self.lock:
            for key in [k for k in self.slots if split_key(k)[0] == user] + [user]:
                self._drop(key)
                self.removed.discard(key)

    # -- admin ----------------------------------------------------------------------
    def reload(self, user: str) -> int:
        """(Re)load a user's adapter now, replacing the cached copy atomically."""
        adapter, seen = self.read(user)
        with self.lock:
            self.removed.discard(user)
            self._install(user, adapter, seen, keep=set())
            return self.slots[user]

    def remove(self, user: str) -> bool:
        """Unload and stop serving a user's adapter (the store keeps its files); a user
        neither stored nor loaded is a NotFoundError, not a new entry in `removed`."""
        with self.lock:
            if user not in self.slots and not self.stored(user):
                raise NotFoundError(
                    f"user {user!r} has no adapter in the store nor in memory; "
                    "GET /admin/adapters and GET /v1/models list the served ones"
                )
            self.removed.add(user)
            return self._drop(user)

    def loaded(self) -> list[str]:
        return list(self.slots)
