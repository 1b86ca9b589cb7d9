"""Stage 0: the backbone a run starts from. `tiny` is pre-trained here, on the train
users' text, with the stages' loop (causal-LM loss on packed sequences, AdamW with
weight decay 0.01, warm-up then cosine decay); any other spec is loaded as it is.

With dev users (`validation.dev_frac`), the pre-training is validated as the stages are
(`train.validation`): the LM loss on the dev users' text, packed the same way, before
training and after each epoch; it stops on the patience rule and keeps the best state.
`tiny.epochs` is then a maximum. Its records are kept in `ownlm_pretrain.json`.

Pre-training mixes copy sequences into the corpus (`tiny.copy_share`, see
`backbone.copy_tasks`) and can end with a copy phase (`tiny.copy_steps`: short sequences
of corpus copies and corpus text, with `tiny.copy_random` random token repeats). A copy
probe measures the skill: the share of held-out spans of 5-15 tokens (from the dev text,
else the train text) the model greedily repeats after `COPY_SEP`, before training and at
every validation (or at the end, unvalidated).

The tiny model is cached under `cache_dir/tiny-<key>`, keyed by the corpus, the config
and the validation text, as a plain Hugging Face directory that `from_pretrained` loads.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from rich.table import Table

from ownlm.backbone.base import CausalBackbone
from ownlm.backbone.copy_tasks import COPY_SEP, copy_probe, encode, greedy, spans
from ownlm.backbone.load import load_backbone
from ownlm.backbone.tiny import (
    build_model,
    copy_phase_corpus,
    corpus_key,
    lm_batch,
    pack_corpus,
    training_corpus,
)
from ownlm.backbone.tokenizer import train_tokenizer
from ownlm.config import TinyConfig
from ownlm.errors import ConfigError, DataError
from ownlm.log import console
from ownlm.train.loop import EarlyStopping, fit, warmup_cosine
from ownlm.train.validation import dev_corpus, dev_users

if TYPE_CHECKING:
    from ownlm.run import Run


def pretrain(
    model, tokenizer, texts: list[str], cfg: TinyConfig, stopper: EarlyStopping | None = None
) -> list[float]:
    """Causal-LM pre-training on packed text, then the copy phase (`copy_phase`, with
    `cfg.copy_steps`); returns the loss curve (one value a step). With `stopper`, the
    corpus epochs are validated and left at their best state, and the copy phase's
    model is validated once more and kept."""
    chunks = training_corpus(tokenizer, texts, cfg)
    losses = fit(
        lm_step(model, tokenizer),
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
        early_stopping=stopper,
    )
    if cfg.copy_steps and losses:
        losses += copy_phase(model, tokenizer, texts, cfg, stopper)
    return losses


def lm_step(model, tokenizer):
    """`step_loss(batch)` of the pre-training: the causal-LM loss on packed chunks."""

    def step_loss(batch):
        ids, mask, labels = lm_batch(batch, tokenizer.pad_token_id, model.device)
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss

    return step_loss


def copy_phase(model, tokenizer, texts: list[str], cfg: TinyConfig, stopper=None):
    """`cfg.copy_steps` steps on `tiny.copy_phase_corpus` (short sequences: corpus
    copies and text, `cfg.copy_random` of them random repeats) at half the peak lr,
    warm-up then cosine. The corpus epochs barely teach copying in a demo's budget, and
    a copy skill learned before them is lost in them, so it comes last. With `stopper`,
    one validation follows, recorded with `"phase": "copy"` and kept (the skill is the
    point; the corpus text in the mix holds the dev loss). Returns the step losses."""
    losses = fit(
        lm_step(model, tokenizer),
        copy_phase_corpus(tokenizer, texts, cfg),
        [{"params": list(model.parameters()), "lr": cfg.lr / 2}],
        epochs=1.0,
        batch_size=cfg.batch_size,
        seed=cfg.seed + 1,
        module=model,
        min_steps=cfg.copy_steps,
        weight_decay=0.01,
        schedule=warmup_cosine,
        desc="copy phase",
    )
    if stopper is not None:
        with torch.no_grad():  # `fit` left the model in eval mode
            figures = stopper.validate()
        stopper.records.append(
            {
                "epoch": stopper.best_record["epoch"],  # where the phase started from
                "step": stopper.records[-1]["step"] + len(losses),
                "train_loss": sum(losses) / len(losses),
                "phase": "copy",
                **figures,
            }
        )
        stopper.best = len(stopper.records) - 1
    return losses


PROBE_SPANS = 48  # held-out spans the copy probe repeats (a few seconds on 2 CPU cores)


def probe_for(model, tokenizer, texts: list[str], seed: int):
    """`probe()` -> {"copy_exact", "copy_tokens"}: `copy_tasks.copy_probe` of `model`
    on PROBE_SPANS seeded spans of `texts`."""
    held = spans([encode(tokenizer, t) for t in texts], PROBE_SPANS, seed + 1)
    sep = encode(tokenizer, COPY_SEP)
    return lambda: copy_probe(greedy(model, tokenizer.pad_token_id), held, sep)


def lm_validator(model, tokenizer, texts: list[str], cfg: TinyConfig):
    """`validate()` for the pre-training: {"val_loss", "copy_exact", "copy_tokens",
    "seconds"}: the mean LM loss of `model` on `texts` packed as the corpus is (each
    chunk weighing by its tokens), and the copy probe on spans of `texts`."""
    chunks = pack_corpus(tokenizer, texts, cfg.max_len)
    probe = probe_for(model, tokenizer, texts, cfg.seed)

    def validate() -> dict:
        start, total, tokens = time.perf_counter(), 0.0, 0
        for i in range(0, len(chunks), cfg.batch_size):
            batch = chunks[i : i + cfg.batch_size]
            ids, mask, labels = lm_batch(batch, tokenizer.pad_token_id, model.device)
            n = int((labels[:, 1:] != -100).sum())
            total += model(input_ids=ids, attention_mask=mask, labels=labels).loss.item() * n
            tokens += n
        figures = {"val_loss": total / max(tokens, 1), **probe()}
        return {**figures, "seconds": time.perf_counter() - start}

    return validate


def cache_key(texts: list[str], cfg: TinyConfig, dev_texts: list[str], patience: int) -> str:
    """The tiny model's cache key: the corpus and config, and what validated it (a model
    kept at its best dev epoch differs from one trained all its epochs)."""
    key = corpus_key(texts, cfg)
    if not dev_texts:
        return key
    h = hashlib.sha256(json.dumps([key, patience, dev_texts], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def build_or_load_tiny(
    texts: list[str],
    cache_dir: Path,
    cfg: TinyConfig | None = None,
    device=None,
    dev_texts: list[str] = (),
    patience: int = 2,
) -> Path:
    """Return a directory holding the pre-trained tiny Llama and its tokenizer, built once
    per (corpus, config, dev text). Pre-training runs on `device` in float32 (a model
    trained from scratch needs full-precision weights; it is cast to the run's dtype when
    loaded). With `dev_texts`, validated on them and kept at its best epoch."""
    cfg = cfg or TinyConfig()
    if not texts:
        raise DataError(
            "cannot pre-train the tiny backbone on an empty corpus; the train users need history items"
        )
    dev_texts = list(dev_texts)
    target = Path(cache_dir) / f"tiny-{cache_key(texts, cfg, dev_texts, patience)}"
    if (target / "config.json").exists() and (target / "ownlm_pretrain.json").exists():
        return target
    model, tokenizer, meta = train_tiny(texts, cfg, device, dev_texts, patience)
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "ownlm_pretrain.json").write_text(json.dumps(meta, indent=2))
    tmp.replace(target)
    return target


def train_tiny(texts: list[str], cfg: TinyConfig, device, dev_texts: list[str], patience: int):
    """Pre-train a fresh tiny Llama on `texts` (validated on `dev_texts` when there are
    any); returns (model, tokenizer, the record for ownlm_pretrain.json), and prints the
    table: the loss and the copy probe, before training and after."""
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    model = build_model(cfg, len(tokenizer)).to(device or "cpu")
    stopper, probe = None, None
    if dev_texts:
        stopper = EarlyStopping(lm_validator(model, tokenizer, dev_texts, cfg), patience)
    else:  # unvalidated: the probe runs on the train text, before and after
        probe = probe_for(model, tokenizer, texts, cfg.seed)
        model.eval()
    before = probe() if probe else None
    losses = pretrain(model, tokenizer, texts, cfg, stopper)
    meta = {
        "config": asdict(cfg),
        "texts": len(texts),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "steps": len(losses),
        "validation": validation_record(stopper, len(dev_texts)),
        "copy_probe": probe_record(stopper, before, probe() if probe else None),
    }
    print_pretraining(meta, losses)
    return model, tokenizer, meta


def validation_record(stopper: EarlyStopping | None, texts: int) -> dict | None:
    """The pre-training's validation, for ownlm_pretrain.json (None: unvalidated)."""
    if stopper is None:
        return None
    return {
        "monitor": "val_loss",
        "dev_texts": texts,
        "kept_epoch": stopper.best_record["epoch"],
        "kept": stopper.best,
        "stopped_early": stopper.stopped_early,
        "seconds": round(sum(r["seconds"] for r in stopper.records), 2),
        "records": stopper.records,
    }


def probe_record(stopper: EarlyStopping | None, before: dict | None, after: dict | None):
    """The copy probe before training and of the model kept: from the validation records
    when validated (spans of the dev text), else as measured (spans of the train text)."""
    if stopper is not None:
        before, after = stopper.records[0], stopper.best_record
        source = "dev text"
    else:
        source = "train text (also in the corpus: no dev users)"
    keys = ("copy_exact", "copy_tokens")
    return {
        "spans": PROBE_SPANS,
        "source": source,
        "before": {k: before[k] for k in keys},
        "after": {k: after[k] for k in keys},
    }


def print_pretraining(meta: dict, losses: list[float]) -> Table:
    """The pre-training's table on the console: per validation the train and dev loss
    and the copy probe (exact spans, tokens), the kept row in bold; unvalidated, the
    first and last train loss and the probe before and after."""
    table = Table()
    for name in ("epoch", "train loss", "val loss", "copy exact", "copy tokens"):
        table.add_column(name, justify="right")
    v, p = meta["validation"], meta["copy_probe"]
    if v is not None:
        title = f"pre-training (tiny): validation on {v['dev_texts']} dev texts"
        for i, r in enumerate(v["records"]):
            cells = [r.get("train_loss"), r["val_loss"], r["copy_exact"], r["copy_tokens"]]
            epoch = "copy" if r.get("phase") == "copy" else f"{r['epoch']:g}"
            table.add_row(epoch, *map(_num, cells), style="bold" if i == v["kept"] else None)
    else:
        title = "pre-training (tiny), unvalidated: copy probe on the train text"
        for when, loss in (("before", losses[0]), ("after", losses[-1])):
            table.add_row(when, _num(loss), "–", *map(_num, p[when].values()))
    console.print(title, markup=False, highlight=False, soft_wrap=True)
    console.print(table)
    return table


def _num(x) -> str:
    return "–" if x is None else f"{x:.4f}"


def initial_backbone(run: Run):
    """The run's backbone before any ownlm stage (the tiny one pre-trained if needed)."""
    cfg = run.cfg
    if cfg.quantize and cfg.backbone in ("tiny", "minilm"):
        raise ConfigError(
            f"quantize={cfg.quantize} is for Hugging Face causal LMs loaded from a directory; "
            f"the {cfg.backbone} backbone is small enough to train as it is"
        )
    if cfg.backbone == "tiny":
        dev = dev_corpus(run, dev_users(run))
        v = cfg.validation
        path = build_or_load_tiny(
            run.corpus(), run.cache_dir, cfg.tiny, run.device, dev, v.patience
        )
        return CausalBackbone.from_pretrained(
            path,
            "tiny",
            cfg.context_length or cfg.tiny.max_len,  # over its positions: refused
            run.device,
            run.dtype,
            prompt_format=cfg.prompt_format,
        )
    return load_backbone(
        cfg.backbone,
        run.task,
        cfg.context_length,
        run.device,
        run.dtype,
        cfg.quantize,
        cfg.prompt_format,
    )
