"""The one optimisation loop: the tiny backbone's pre-training, stage 1, stage 2 and every
user stage (OPPU's LoRA, PROPER's residual and router) run through `fit`.

Stages train thousands of tiny adapters, so this is a plain loop rather than the HF
Trainer (whose per-run set-up would dominate a ten-item user). What differs between
stages is passed in, not copied: the loss of a batch (`step_loss`), the parameter groups
and their learning rates, an optional learning-rate schedule, the weight decay.

Batches: each epoch is a fresh seeded shuffle of `items`; a step takes the next
`batch_size` of them (all of them when there are fewer), topping the order up with the
next shuffle when it runs short, so `epochs` may be fractional.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import torch

from ownlm.config import LoraSettings
from ownlm.log import progress

Schedule = Callable[[int, int], float]  # (step, total steps) -> learning-rate multiplier


def warmup_cosine(step: int, steps: int) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to 0."""
    warmup = max(1, steps // 20)
    return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))


def batch_plan(
    n: int, epochs: float, batch_size: int, seed: int, min_steps: int = 1
) -> list[list[int]]:
    """The item indices of every step: max(min_steps, ceil(n * epochs / batch_size)) steps,
    each the next `batch_size` indices (all n when there are fewer) of a seeded shuffle,
    topped up with the next shuffle when it runs short. Every trainer that batches one
    user's (or the population's) items follows this plan, so they see the same batches."""
    if n == 0:
        return []
    steps = max(min_steps, math.ceil(n * epochs / batch_size))
    rng = random.Random(seed)
    order: list[int] = []
    plan = []
    for _ in range(steps):
        if len(order) < batch_size:
            fresh = list(range(n))
            rng.shuffle(fresh)
            order.extend(fresh)
        plan.append(order[: min(batch_size, n)])
        del order[: len(plan[-1])]
    return plan


def fit(
    step_loss: Callable[[list], torch.Tensor],
    items: Sequence,
    param_groups: list[dict],
    *,
    epochs: float,
    batch_size: int,
    seed: int,
    module: torch.nn.Module | None = None,
    min_steps: int = 1,
    weight_decay: float = 0.0,
    schedule: Schedule | None = None,
    clip: float = 1.0,
    desc: str | None = None,
) -> list[float]:
    """AdamW over `param_groups` (dicts with "params" and "lr") for
    max(min_steps, ceil(len(items) * epochs / batch_size)) steps; each step's loss is
    `step_loss(batch)`, a list of items. `module` is put in train mode while it runs.
    Gradients are clipped to norm `clip` over all parameters. Returns the step losses."""
    if not items:
        return []
    params = [p for g in param_groups for p in g["params"]]
    opt = torch.optim.AdamW(param_groups, weight_decay=weight_decay)
    plan = batch_plan(len(items), epochs, batch_size, seed, min_steps)
    steps = len(plan)
    sched = (
        torch.optim.lr_scheduler.LambdaLR(opt, lambda s: schedule(s, steps)) if schedule else None
    )
    losses: list[float] = []
    if module is not None:
        module.train()
    bar = progress(plan, desc=desc, unit="step", leave=False)
    for indices in bar:
        loss = step_loss([items[i] for i in indices])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        if sched is not None:
            sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    if module is not None:
        module.eval()
    return losses


def train_pairs(
    backbone,
    model,
    pairs: list[tuple[str, str]],
    s: LoraSettings,
    seed: int,
    desc: str | None = None,
) -> list[float]:
    """Train `model`'s trainable parameters on (prompt, target) pairs; returns step losses."""
    params = [p for p in model.parameters() if p.requires_grad]
    return fit(
        lambda batch: backbone.loss(model, [p for p, _ in batch], [t for _, t in batch]),
        pairs,
        [{"params": params, "lr": s.lr}],
        epochs=s.epochs,
        batch_size=s.batch_size,
        seed=seed,
        module=model,
        desc=desc,
    )


def fit_mixture(backbone, state, pairs, groups, epochs, batch_size, seed, user_emb, losses=None):
    """`fit` for PROPER's mixture: AdamW over the param `groups` on (prompt, target,
    user_row) triples. `user_emb(rows)` gives the batch's (B, d_u) embeddings (None for
    the user-only router); `losses` maps a routing term to its weight ("balance": switch
    load balancing over tokens, "diversity": `group_loss` over the batch's users).
    Returns the step losses (LM loss plus the weighted terms)."""
    from ownlm.adapters.mixture import balance_loss, group_loss, routing

    weights = {k: w for k, w in (losses or {}).items() if w > 0}

    def step_loss(batch):
        rows = torch.tensor([b[2] for b in batch])
        emb = user_emb(rows) if user_emb else None
        with routing(state, user_emb=emb, user_ids=state.user_ids, record=bool(weights)):
            loss = backbone.loss(backbone.model, [b[0] for b in batch], [b[1] for b in batch])
            if "balance" in weights:
                loss = loss + weights["balance"] * balance_loss(state.gates)
            if "diversity" in weights:
                loss = loss + weights["diversity"] * group_loss(state.gates, rows)
        return loss

    return fit(
        step_loss,
        pairs,
        groups,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        module=backbone.model,
        desc=None if len(pairs) < 200 else "mixture",
    )
