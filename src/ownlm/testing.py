"""Helpers for smoke tests and benchmarks: a servable run without training one.

    toy_backbone()                 a small random-weight Llama with a trained BPE tokenizer
    add_user_adapter(bb, store, u) a random LoRA for user `u`, saved as ownlm saves one
    toy_run(run_dir, users)        <run>/base and <run>/adapters/users/<id>, ready to serve

ownlm's own tests (tests/serve, tests/adapters) and bench/serve_*.py use them; a user can
check an install the same way, e.g. `build_server(toy_run_dir)` then a completion.
Users' lora_B are random (PEFT initialises B to zero), so every user answers differently.
Nothing here is used by training, evaluation or serving themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from ownlm.adapters.lora import detach
from ownlm.backbone.base import CausalBackbone, write_base_meta
from ownlm.backbone.tiny import build_model
from ownlm.backbone.tokenizer import train_tokenizer
from ownlm.config import TinyConfig
from ownlm.store import AdapterStore, Manifest

WORDS = (
    "the a user likes movies books music news sports science tags answer rating good bad".split()
)


def toy_texts(n: int = 400) -> list[str]:
    """`n` seeded sentences of 12 words from WORDS: the tokenizer's training corpus."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(len(WORDS), (n, 12), generator=g).tolist()
    return [" ".join(WORDS[i] for i in row) for row in idx]


def toy_backbone(
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate: int = 128,
    vocab: int = 300,
    max_len: int = 256,
    seed: int = 0,
) -> CausalBackbone:
    """A random-weight Llama of the given size named "toy" (deterministic per seed)."""
    tok = train_tokenizer(toy_texts(), vocab_size=vocab)
    cfg = TinyConfig(
        hidden_size=hidden,
        layers=layers,
        heads=heads,
        intermediate_size=intermediate,
        max_len=max_len,
        seed=seed,
    )
    model = build_model(cfg, max(vocab, len(tok)))
    return CausalBackbone(model.eval(), tok, name="toy", max_len=max_len)


def add_user_adapter(
    backbone: CausalBackbone,
    store: AdapterStore,
    user_id: str,
    seed: int,
    r: int = 8,
    std: float = 0.5,
    targets: Sequence[str] = CausalBackbone.default_targets,
) -> Path:
    """Save a LoRA of rank r on `targets` with random A and B for `user_id` into the
    store, with a manifest for this base (so the server accepts it)."""
    fingerprint = backbone.fingerprint()  # of the bare base, before PEFT wraps it in place
    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), lora_dropout=0.0)
    peft_model = get_peft_model(backbone.model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, std)
    path = store.save(
        f"user:{user_id}",
        lambda d: peft_model.save_pretrained(d),
        Manifest(name="", stage="user", task="toy", base_fingerprint=fingerprint),
    )
    detach(backbone, peft_model)  # the bare base back, unchanged
    return path


def toy_run(
    run_dir: Path,
    users: list[str],
    ranks: list[int] | None = None,
    targets: Sequence[str] = CausalBackbone.default_targets,
    **size,
) -> CausalBackbone:
    """Write <run>/base (HF dir + ownlm_base.json) and <run>/adapters/users/<id>, one
    LoRA per user (rank ranks[i], default 8; on `targets`); `size` goes to toy_backbone."""
    run_dir = Path(run_dir)
    backbone = toy_backbone(**size)
    backbone.save(run_dir / "base")
    write_base_meta(run_dir / "base", backbone, max_len=backbone.max_len)
    store = AdapterStore(run_dir / "adapters")
    for i, user in enumerate(users):
        r = (ranks or [8] * len(users))[i]
        add_user_adapter(backbone, store, user, seed=100 + i, r=r, targets=targets)
    return backbone
