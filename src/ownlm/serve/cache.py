"""LRU cache of user adapters in the engine's LoRA slots, loaded on demand from the store.

Every slot write and every batch run under one lock (`AdapterCache.lock`), so a request
sees an adapter either wholly before or wholly after a reload, never half-copied.
Files are read and checked (sha256, base fingerprint) before the lock is taken.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from ownlm.adapters.batched import BatchedLora
from ownlm.adapters.peft_io import LoadedAdapter, read_peft_adapter
from ownlm.errors import NotFoundError, StoreError
from ownlm.store import AdapterStore


class AdapterRemoved(NotFoundError):
    """The adapter was removed by an admin between a request's admission and its batch
    (served as 404: for the client the model no longer exists)."""


class AdapterCache:
    def __init__(self, lora: BatchedLora, store: AdapterStore, base_fingerprint: str):
        self.lora = lora
        self.store = store
        self.fingerprint = base_fingerprint
        self.lock = threading.Lock()
        self.slots: OrderedDict[str, int] = OrderedDict()  # user id -> slot, oldest first
        self.removed: set[str] = set()  # unloaded by an admin: not served until re-added

    @property
    def size(self) -> int:
        return self.lora.n_slots

    def servable(self, user: str) -> bool:
        return user not in self.removed and self.store.exists(f"user:{user}")

    def read(self, user: str) -> LoadedAdapter:
        """Check the stored adapter against its manifest and our base; read its weights."""
        return read_peft_adapter(self.store.verify(f"user:{user}", self.fingerprint))

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
            if user not in self.slots:
                self._install(user, self.read(user), keep=batch)
            self.slots.move_to_end(user)
            out.append(self.slots[user])
        return out

    def _install(self, user: str, adapter: LoadedAdapter, keep: set[str]) -> None:
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
        self.lora.load(slot, adapter)
        self.slots[user] = slot

    # -- admin ----------------------------------------------------------------------
    def reload(self, user: str) -> int:
        """(Re)load a user's adapter now, replacing the cached copy atomically."""
        adapter = self.read(user)
        with self.lock:
            self.removed.discard(user)
            self._install(user, adapter, keep=set())
            return self.slots[user]

    def remove(self, user: str) -> bool:
        """Unload and stop serving a user's adapter (the store keeps its files)."""
        with self.lock:
            self.removed.add(user)
            slot = self.slots.pop(user, None)
            if slot is not None:
                self.lora.clear(slot)
            return slot is not None

    def loaded(self) -> list[str]:
        return list(self.slots)
