"""A user's right to be forgotten: delete everything a run stores for them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ownlm.errors import NotFoundError
from ownlm.methods.proper.groups import stage2_users
from ownlm.store import AdapterStore, TokenStore


@dataclass
class Forgotten:
    removed: list[str] = field(default_factory=list)  # stores (and "tokens") that held them
    stage2_train_user: bool = False  # stage 2 learned from their history: retrain to remove


def forget_user(run_dir: str | Path, user: str) -> Forgotten:
    """Delete `user`'s adapters from every store of the run and revoke their tokens."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NotFoundError(f"run directory {run_dir} does not exist")
    out = Forgotten()
    for store_dir in sorted(
        p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith("adapters")
    ):
        if AdapterStore(store_dir).delete(f"user:{user}"):
            out.removed.append(store_dir.name)
    if TokenStore(run_dir).revoke_user(user):
        out.removed.append("tokens")
    out.stage2_train_user = user in stage2_users(AdapterStore(run_dir / "adapters"))
    return out
