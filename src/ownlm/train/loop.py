"""The optimisation loop every stage shares: LoRA injection and a small AdamW loop.

Stages train thousands of tiny adapters, so this is a plain loop rather than the HF
Trainer (whose per-run set-up would dominate a ten-item user).
"""

from __future__ import annotations

import math
import random

import torch
from peft import LoraConfig, get_peft_model
from tqdm.auto import tqdm

from ownlm.config import LoraSettings


def lora_config(backbone, s: LoraSettings) -> LoraConfig:
    if s.r <= 0:
        raise ValueError(f"LoRA rank r must be a positive integer, got {s.r}")
    return LoraConfig(
        r=s.r,
        lora_alpha=s.alpha,
        lora_dropout=s.dropout,
        # PEFT's shorthand "all-linear": every linear layer but the output head
        target_modules="all-linear"
        if s.targets == ["all-linear"]
        else list(s.targets or backbone.default_targets),
        modules_to_save=list(getattr(backbone, "modules_to_save", ())) or None,
        bias="none",
    )


def inject(backbone, s: LoraSettings, seed: int):
    """Wrap the backbone's model with a fresh LoRA (deterministic init per seed)."""
    torch.manual_seed(seed)
    return get_peft_model(backbone.model, lora_config(backbone, s))


def train_pairs(
    backbone,
    model,
    pairs: list[tuple[str, str]],
    s: LoraSettings,
    seed: int,
    desc: str | None = None,
) -> list[float]:
    """Train `model`'s trainable parameters on (prompt, target) pairs; returns step losses."""
    if not pairs:
        return []
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)
    steps = max(1, math.ceil(len(pairs) * s.epochs / s.batch_size))
    rng = random.Random(seed)
    order: list[int] = []
    losses = []
    model.train()
    bar = tqdm(range(steps), desc=desc, unit="step", leave=False, disable=desc is None)
    for _ in bar:
        if len(order) < s.batch_size:
            fresh = list(range(len(pairs)))
            rng.shuffle(fresh)
            order.extend(fresh)
        batch = [pairs[i] for i in order[: min(s.batch_size, len(pairs))]]
        del order[: len(batch)]
        loss = backbone.loss(model, [p for p, _ in batch], [t for _, t in batch])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses
