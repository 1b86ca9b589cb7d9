"""The embedded default backbone: a small Llama trained from scratch on the users' text.

No pretrained generative weights can be downloaded on the machines ownlm targets, so
ownlm builds its own: a byte-level BPE tokenizer and a 4-layer Llama, pre-trained on the
population's text (every history item and query input of the train users). The result
is cached on disk, keyed by a hash of the corpus and the config, and reused.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ownlm.backbone.tokenizer import train_tokenizer


@dataclass
class TinyConfig:
    """Size and pre-training schedule of the embedded tiny Llama."""

    vocab_size: int = field(default=4096, metadata={"help": "BPE vocabulary size"})
    hidden_size: int = field(default=256, metadata={"help": "model width d"})
    layers: int = field(default=4, metadata={"help": "transformer blocks"})
    heads: int = field(default=4, metadata={"help": "attention heads"})
    intermediate_size: int = field(default=688, metadata={"help": "FFN width"})
    max_len: int = field(default=384, metadata={"help": "context length in tokens"})
    epochs: float = field(default=3.0, metadata={"help": "pre-training epochs over the corpus"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate (cosine decay)"})
    batch_size: int = field(default=16, metadata={"help": "sequences per step"})
    min_steps: int = field(
        default=150, metadata={"help": "at least this many steps, for small corpora"}
    )
    seed: int = field(default=0, metadata={"help": "initialisation and shuffling seed"})


def build_model(cfg: TinyConfig, vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.max_len,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def _chunks(tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    """Pack the corpus into sequences of max_len tokens, each text ended by </s>."""
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids + [tokenizer.eos_token_id])
    return [stream[i : i + max_len] for i in range(0, max(len(stream) - 1, 1), max_len)]


def pretrain(model, tokenizer, texts: list[str], cfg: TinyConfig) -> list[float]:
    """Causal-LM pre-training on packed text; returns the loss curve (one value a step)."""
    chunks = [c for c in _chunks(tokenizer, texts, cfg.max_len) if len(c) > 1]
    steps = max(cfg.min_steps, math.ceil(len(chunks) * cfg.epochs / cfg.batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
        ),
    )
    rng = random.Random(cfg.seed)
    order: list[int] = []
    losses: list[float] = []
    model.train()
    for _ in tqdm(range(steps), desc="pre-training tiny Llama", unit="step"):
        if len(order) < cfg.batch_size:
            fresh = list(range(len(chunks)))
            rng.shuffle(fresh)
            order.extend(fresh)
        batch = [chunks[i] for i in order[: cfg.batch_size]]
        del order[: cfg.batch_size]
        width = max(len(b) for b in batch)
        ids = torch.tensor([b + [tokenizer.pad_token_id] * (width - len(b)) for b in batch])
        mask = torch.tensor([[1] * len(b) + [0] * (width - len(b)) for b in batch])
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


def corpus_key(texts: list[str], cfg: TinyConfig) -> str:
    h = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def build_or_load_tiny(texts: list[str], cache_dir: Path, cfg: TinyConfig | None = None) -> Path:
    """Return a directory holding the pre-trained tiny Llama and its tokenizer.

    Built once per (corpus, config) and cached under `cache_dir/tiny-<key>`; the
    directory is a plain Hugging Face model directory, loadable by `from_pretrained`.
    """
    cfg = cfg or TinyConfig()
    if not texts:
        raise ValueError("cannot pre-train the tiny backbone on an empty corpus")
    target = Path(cache_dir) / f"tiny-{corpus_key(texts, cfg)}"
    if (target / "config.json").exists() and (target / "ownlm_pretrain.json").exists():
        return target
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    model = build_model(cfg, len(tokenizer))
    losses = pretrain(model, tokenizer, texts, cfg)
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    meta = {
        "config": asdict(cfg),
        "texts": len(texts),
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }
    (tmp / "ownlm_pretrain.json").write_text(json.dumps(meta, indent=2))
    tmp.replace(target)
    return target


def load_tiny(path: Path):
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
