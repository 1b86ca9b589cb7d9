"""The embedded default backbone: a small Llama and its tokenizer, built by ownlm.

No pretrained generative weights can be downloaded on the machines ownlm targets, so
ownlm builds its own: a byte-level BPE tokenizer and a 4-layer Llama, pre-trained on the
population's text (`ownlm.train.pretrain` trains it with the stages' loop and caches it
on disk, keyed by `corpus_key`). This module holds what the model *is*: its
architecture, how the corpus is packed into sequences (with `tiny.copy_share` of them
copy sequences, `copy_tasks`), what the copy phase steps over (`tiny.copy_steps`), and
the cache key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ownlm.backbone.copy_tasks import (
    COPY_LEN,
    COPY_SEP,
    IGNORE,
    RANDOM_POOL,
    copy_chunks,
    encode,
    frequent_tokens,
    random_repeats,
)
from ownlm.config import TinyConfig


def build_model(cfg: TinyConfig, vocab_size: int) -> LlamaForCausalLM:
    """A randomly initialised Llama of `cfg`'s size (seeded)."""
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


def pack_corpus(tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    """Pack the corpus into sequences of at most max_len tokens, each text ended by </s>;
    sequences of one token (nothing to predict) are dropped."""
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids + [tokenizer.eos_token_id])
    chunks = [stream[i : i + max_len] for i in range(0, max(len(stream) - 1, 1), max_len)]
    return [c for c in chunks if len(c) > 1]


def training_corpus(tokenizer, texts: list[str], cfg: TinyConfig) -> list:
    """What the pre-training steps over: the packed corpus (`pack_corpus`), then copy
    sequences (`copy_tasks.copy_chunks`) making up `cfg.copy_share` of the whole. With
    copy_share 0 it is the packed corpus alone."""
    chunks: list = pack_corpus(tokenizer, texts, cfg.max_len)
    if cfg.copy_share <= 0:
        return chunks
    n_copy = round(len(chunks) * cfg.copy_share / (1 - cfg.copy_share))
    return chunks + copy_chunks(tokenizer, texts, n_copy, cfg.max_len, cfg.seed)


def copy_phase_corpus(tokenizer, texts: list[str], cfg: TinyConfig) -> list:
    """What the copy phase (`cfg.copy_steps`) steps over: copy_steps * batch_size
    sequences of at most COPY_LEN tokens: `cfg.copy_random` of them random repeats of
    the corpus's RANDOM_POOL most frequent tokens, then of the rest half `copy_chunks` of
    the corpus and half the corpus packed (`pack_corpus`, cycled when short) so that its
    loss holds; in that order (the loop shuffles)."""
    n = cfg.copy_steps * cfg.batch_size
    n_random = round(n * cfg.copy_random)
    n_copy = round((n - n_random) / 2)
    pool = frequent_tokens([encode(tokenizer, t) for t in texts], RANDOM_POOL)
    sep, eos = encode(tokenizer, COPY_SEP), tokenizer.eos_token_id
    chunks: list = random_repeats(pool, sep, eos, n_random, cfg.seed)
    chunks += copy_chunks(tokenizer, texts, n_copy, COPY_LEN, cfg.seed)
    text, n_text = pack_corpus(tokenizer, texts, COPY_LEN), n - len(chunks)
    return chunks + (text * (n_text // max(len(text), 1) + 1))[:n_text]


def lm_batch(chunks: list, pad: int, device=None):
    """Right-padded (B, T) ids, attention mask and labels (-100 on padding). A chunk is
    a list of ids (every token learned) or an (ids, labels) pair (a copy sequence)."""
    pairs = [c if isinstance(c, tuple) else (c, c) for c in chunks]
    width = max(len(ids) for ids, _ in pairs)
    ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in pairs], device=device)
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in pairs], device=device)
    labels = torch.tensor([lab + [IGNORE] * (width - len(lab)) for _, lab in pairs], device=device)
    return ids, mask, labels


def corpus_key(texts: list[str], cfg: TinyConfig) -> str:
    """The cache key of a tiny model pre-trained on `texts` with `cfg`. copy_share 0,
    copy_steps 0 and copy_random 0 leave the key as it was before those settings existed
    (its training is the same); without a copy phase, copy_random does not count."""
    settings = asdict(cfg)
    if not settings["copy_steps"]:
        settings["copy_random"] = 0.0
    for name in ("copy_share", "copy_steps", "copy_random"):
        if not settings[name]:
            del settings[name]
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]
