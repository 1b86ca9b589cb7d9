"""Stage 0: the backbone a run starts from. `tiny` is pre-trained here, on the train
users' text, with the stages' loop (causal-LM loss on packed sequences, AdamW with
weight decay 0.01, warm-up then cosine decay); any other spec is loaded as it is.

The tiny model is cached under `cache_dir/tiny-<key>`, keyed by the corpus and the
config, as a plain Hugging Face directory that `from_pretrained` loads.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ownlm.backbone.base import CausalBackbone
from ownlm.backbone.load import load_backbone
from ownlm.backbone.tiny import build_model, corpus_key, lm_batch, pack_corpus
from ownlm.backbone.tokenizer import train_tokenizer
from ownlm.config import TinyConfig
from ownlm.errors import ConfigError, DataError
from ownlm.train.loop import fit, warmup_cosine


def pretrain(model, tokenizer, texts: list[str], cfg: TinyConfig) -> list[float]:
    """Causal-LM pre-training on packed text; returns the loss curve (one value a step)."""
    chunks = pack_corpus(tokenizer, texts, cfg.max_len)

    def step_loss(batch):
        ids, mask, labels = lm_batch(batch, tokenizer.pad_token_id, model.device)
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss

    return fit(
        step_loss,
        chunks,
        [{"params": list(model.parameters()), "lr": cfg.lr}],
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        module=model,
        min_steps=cfg.min_steps,
        weight_decay=0.01,
        schedule=warmup_cosine,
        desc="pre-training tiny Llama",
    )


def build_or_load_tiny(
    texts: list[str], cache_dir: Path, cfg: TinyConfig | None = None, device=None
) -> Path:
    """Return a directory holding the pre-trained tiny Llama and its tokenizer, built once
    per (corpus, config). Pre-training runs on `device` in float32 (a model trained from
    scratch needs full-precision weights; it is cast to the run's dtype when loaded)."""
    cfg = cfg or TinyConfig()
    if not texts:
        raise DataError(
            "cannot pre-train the tiny backbone on an empty corpus; the train users need history items"
        )
    target = Path(cache_dir) / f"tiny-{corpus_key(texts, cfg)}"
    if (target / "config.json").exists() and (target / "ownlm_pretrain.json").exists():
        return target
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    model = build_model(cfg, len(tokenizer)).to(device or "cpu")
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


def initial_backbone(run):
    """The run's backbone before any ownlm stage (the tiny one pre-trained if needed)."""
    cfg = run.cfg
    if cfg.quantize and cfg.backbone in ("tiny", "minilm"):
        raise ConfigError(
            f"quantize={cfg.quantize} is for Hugging Face causal LMs loaded from a directory; "
            f"the {cfg.backbone} backbone is small enough to train as it is"
        )
    if cfg.backbone == "tiny":
        path = build_or_load_tiny(run.corpus(), run.cache_dir, cfg.tiny, run.device)
        return CausalBackbone.from_pretrained(path, "tiny", cfg.tiny.max_len, run.device, run.dtype)
    return load_backbone(
        cfg.backbone, run.task, device=run.device, dtype=run.dtype, quantize=cfg.quantize
    )
