"""A random-weight run to serve: a small Llama, a trained BPE tokenizer and N user LoRAs.

For tests, benchmarks and the load test, which need a servable run without training one.
Users' lora_B are random (PEFT initialises B to zero), so every user answers differently.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from ownlm.backbone.base import CausalBackbone, write_base_meta
from ownlm.backbone.tiny import TinyConfig, build_model
from ownlm.backbone.tokenizer import train_tokenizer
from ownlm.store import AdapterStore, Manifest

WORDS = (
    "the a user likes movies books music news sports science tags answer rating good bad".split()
)


def toy_texts(n: int = 400) -> list[str]:
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
) -> Path:
    """Save a LoRA (q/v, rank r) with random A and B for `user_id` into the store."""
    fingerprint = backbone.fingerprint()  # of the bare base, before PEFT wraps it in place
    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
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
    backbone.model = peft_model.unload()  # the bare base back, unchanged
    return path


def toy_run(
    run_dir: Path, users: list[str], ranks: list[int] | None = None, **size
) -> CausalBackbone:
    """Write <run>/base (HF dir + ownlm_base.json) and <run>/adapters/users/<id>."""
    run_dir = Path(run_dir)
    backbone = toy_backbone(**size)
    backbone.save(run_dir / "base")
    write_base_meta(run_dir / "base", backbone, max_len=backbone.max_len)
    store = AdapterStore(run_dir / "adapters")
    for i, user in enumerate(users):
        add_user_adapter(backbone, store, user, seed=100 + i, r=(ranks or [8] * len(users))[i])
    return backbone
