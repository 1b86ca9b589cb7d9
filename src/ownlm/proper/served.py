"""A PROPER user with the user-only router as the server's batched slots take them: one
LoRA per user, so that PROPER users share every batch with OPPU users.

With gates that depend on the user alone (pi constant over tokens), a layer's delta is

    sum_g pi_g s B_g A_g + s_u B_u A_u  =  B_cat A_cat,
    A_cat = [A_1; ...; A_G; A_u]                         (G*r + r_u, in)
    B_cat = [pi_1 s B_1, ..., pi_G s B_G, s_u B_u]       (out, G*r + r_u)

the same flattening `ownlm export` writes (`adapters.export`), computed here from the
stored files alone (the stage-2 experts and router record, the user's residual LoRA and
gate logits), without installing the mixture on the served model. The input-dependent
router has no such form: its gates change with every token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from ownlm.adapters.mixture import top_k_softmax
from ownlm.adapters.peft_io import LoadedAdapter, read_config, read_lora
from ownlm.errors import StoreError
from ownlm.proper.experts import ROUTER
from ownlm.proper.users import ROUTER_FILE
from ownlm.store import AdapterStore


def stage2_record(store: AdapterStore, fingerprint: str) -> dict:
    """The stored stage-2 router record (`router.json`), checked against the base."""
    meta = json.loads((store.verify(ROUTER, fingerprint) / "router.json").read_text())
    meta.setdefault("assignment", "token")  # stage 2 of runs before 'user' existed
    return meta


@dataclass(frozen=True)
class Stage2:
    """The stored stage 2 a proper-user user is flattened over, read and checked once
    (a server holds it for every user it loads): the router record and the experts."""

    meta: dict
    experts: list[dict[str, tuple[torch.Tensor, torch.Tensor]]]

    @classmethod
    def read(cls, store: AdapterStore, fingerprint: str) -> Stage2:
        """Stage 2 of `store` (the run's), its files checked against the base `fingerprint`."""
        meta = stage2_record(store, fingerprint)
        groups = range(meta["groups"])
        return cls(meta, [read_lora(store.verify(f"group:{g}", fingerprint)) for g in groups])

    def rank(self, user_paths: list[Path]) -> int:
        """The largest rank these users flatten to: G*r plus their residual's rank."""
        r_u = max((read_config(p).get("r", 0) for p in user_paths), default=0)
        return self.meta["groups"] * self.meta["r"] + r_u


def user_only_adapter(stage2: Stage2, user_dir: Path) -> LoadedAdapter:
    """The proper-user model stored in `user_dir` as one LoRA with its scales in B
    (`LoadedAdapter`, as `read_peft_adapter` gives an OPPU user's): the group experts of
    `stage2`, gated by the user's logits, plus the user's residual."""
    meta, experts = stage2.meta, stage2.experts
    if json.loads((user_dir / "proper_router.json").read_text()).get("router") != "user":
        raise StoreError(f"{user_dir} is not a user-only PROPER adapter; it cannot be flattened")
    residual = read_lora(user_dir)
    alpha_u = read_config(user_dir).get("lora_alpha")
    logits = load_file(str(user_dir / ROUTER_FILE))
    top_k = 0 if meta["assignment"] == "user" else meta["top_k"]  # as `apply_user` routes
    scale = meta["alpha"] / meta["r"]
    weights = {}
    for name, (a_u, b_u) in residual.items():
        pi = top_k_softmax(logits[f"{name}.logits"][0].float(), top_k)
        a = [e[name][0] for e in experts] + [a_u]
        b = [e[name][1] * (pi[g] * scale) for g, e in enumerate(experts)]
        b.append(b_u * ((alpha_u or a_u.shape[0]) / a_u.shape[0]))
        weights[name] = (torch.cat(a, 0).contiguous(), torch.cat(b, 1).contiguous())
    rank = meta["groups"] * meta["r"] + max(a.shape[0] for a, _ in residual.values())
    return LoadedAdapter(weights, rank)
