"""The variants `ownlm serve` answers with besides OPPU's: what the slots of the batched
engine must hold for them (the modules and the largest rank) and how each user's stored
files become one slot's LoRA (`cache.Served`).

proper-user: the group experts gated by the user's logits plus their residual, flattened
into one LoRA of rank G*r + r_u (`proper.served`), so PROPER users share every batch
with OPPU users. The variant table (`ownlm.variants`) says which variants are servable
and in which order `<base>:<user>` picks among a user's adapters (`SERVE_ORDER`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ownlm.adapters import peft_io
from ownlm.paths import RunPaths
from ownlm.serve.cache import Served
from ownlm.store import AdapterStore


@dataclass
class ServedVariants:
    """The non-OPPU variants served from one run, with what their slots need."""

    served: dict[str, Served] = field(default_factory=dict)
    targets: set[str] = field(default_factory=set)
    rank: int = 0


def user_dirs(store: AdapterStore) -> list[Path]:
    return [store.path(n) for n in store.names("user")]


def served_variants(run_dir: Path, base_fingerprint: str) -> ServedVariants:
    """proper-user, when the run has a stage 2 and proper-user adapters; else nothing."""
    from ownlm.proper.experts import ROUTER, store_fingerprint
    from ownlm.proper.served import Stage2, user_only_adapter

    paths = RunPaths(run_dir)
    groups, users = AdapterStore(paths.store()), AdapterStore(paths.store("proper-user"))
    out = ServedVariants()
    dirs = user_dirs(users)
    if not dirs or not groups.exists(ROUTER):
        return out
    stage2 = Stage2.read(groups, base_fingerprint)  # once, not on every user's load
    fingerprint = store_fingerprint(groups, base_fingerprint)
    out.served["proper-user"] = Served(users, fingerprint, partial(user_only_adapter, stage2))
    out.targets |= peft_io.target_names(dirs)
    out.rank = stage2.rank(dirs)
    return out
