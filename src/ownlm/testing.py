"""Helpers for smoke tests and benchmarks: a servable run without training one.

    toy_backbone()                 a small random-weight Llama with a trained BPE tokenizer
    add_user_adapter(bb, store, u) a random LoRA for user `u`, saved as ownlm saves one
    toy_run(run_dir, users)        <run>/base and <run>/adapters/users/<id>, ready to serve
    save_family(path, family)      a random-init HF directory of one model family (Llama, Qwen2,
                                   Mistral, Gemma, Phi, GPT-2) with a locally trained tokenizer

ownlm's own tests (tests/serve, tests/adapters) and bench/serve_*.py use them; a user can
check an install the same way, e.g. `build_server(toy_run_dir)` then a completion.
Users' lora_B are random (PEFT initialises B to zero), so every user answers differently.
Nothing here is used by training, evaluation or serving themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from peft import get_peft_model

from ownlm.adapters.lora import detach, lora_config
from ownlm.backbone.base import CausalBackbone, write_base_meta
from ownlm.backbone.tiny import build_model
from ownlm.backbone.tokenizer import train_tokenizer
from ownlm.config import LoraSettings, TinyConfig
from ownlm.store import AdapterStore, Manifest

# model families a user brings (DESIGN.md, Backbones), by transformers' model_type
FAMILIES = ("llama", "qwen2", "mistral", "gemma", "phi", "gpt2")

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
    targets: Sequence[str] | None = None,
) -> Path:
    """Save a LoRA of rank r on `targets` (default: PEFT's for the model type) with random
    A and B for `user_id` into the store, with a manifest for this base (so the server
    accepts it)."""
    fingerprint = backbone.fingerprint()  # of the bare base, before PEFT wraps it in place
    torch.manual_seed(seed)
    s = LoraSettings(r=r, alpha=2 * r, dropout=0.0, targets=list(targets) if targets else None)
    cfg = lora_config(backbone, s)
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
    targets: Sequence[str] | None = None,
    family: str | None = None,
    **size,
) -> CausalBackbone:
    """Write <run>/base (HF dir + ownlm_base.json) and <run>/adapters/users/<id>, one
    LoRA per user (rank ranks[i], default 8; on `targets`); `size` goes to toy_backbone,
    or to family_backbone with a `family` (e.g. "gpt2")."""
    run_dir = Path(run_dir)
    backbone = family_backbone(family, **size) if family else toy_backbone(**size)
    backbone.save(run_dir / "base")
    write_base_meta(run_dir / "base", backbone, max_len=backbone.max_len)
    store = AdapterStore(run_dir / "adapters")
    for i, user in enumerate(users):
        r = (ranks or [8] * len(users))[i]
        add_user_adapter(backbone, store, user, seed=100 + i, r=r, targets=targets)
    return backbone


def family_config(
    family: str,
    vocab: int,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate: int = 128,
    max_len: int = 256,
):
    """A transformers config of `family` at this small size: a model_type whose config
    takes Llama's size names (FAMILIES but gpt2; also phi3, qwen3, ...), or gpt2."""
    from transformers import AutoConfig, GPT2Config

    ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    if family == "gpt2":  # GPT-2 names its sizes its own way (and its layers are Conv1D)
        return GPT2Config(
            vocab_size=vocab,
            n_positions=max_len,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_inner=intermediate,
            **ids,
        )
    extra = {"head_dim": hidden // heads} if family == "gemma" else {}
    return AutoConfig.for_model(
        family,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_len,
        tie_word_embeddings=True,
        **extra,
        **ids,
    )


def family_backbone(family: str, vocab: int = 300, seed: int = 0, **size) -> CausalBackbone:
    """A random-init causal LM of `family` (deterministic per seed) with a BPE tokenizer
    trained here on toy_texts; `size` goes to family_config."""
    from transformers import AutoModelForCausalLM

    tok = train_tokenizer(toy_texts(), vocab_size=vocab)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family_config(family, max(vocab, len(tok)), **size))
    return CausalBackbone(model.eval(), tok, name=family, max_len=size.get("max_len", 256))


def save_family(path: Path, family: str, **kwargs) -> Path:
    """Save `family_backbone(family, **kwargs)` into `path` (model and tokenizer): a
    backbone directory as a user brings one."""
    family_backbone(family, **kwargs).save(Path(path))
    return Path(path)
