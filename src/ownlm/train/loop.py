"""The one optimisation loop: the tiny backbone's pre-training, stage 1, stage 2 and every
user stage (OPPU's LoRA, PROPER's residual and router) run through `fit`.

Stages train thousands of tiny adapters, so this is a plain loop rather than the HF
Trainer (whose per-run set-up would dominate a ten-item user). What differs between
stages is passed in, not copied: the loss of a batch (`step_loss`), the parameter groups
and their learning rates, an optional learning-rate schedule, the weight decay.

Batches: each epoch is a fresh seeded shuffle of `items`; a step takes the next
`batch_size` of them (all of them when there are fewer), topping the order up with the
next shuffle when it runs short, so `epochs` may be fractional.

Validation: given an `EarlyStopping`, `fit` validates before the first step and after
every epoch's worth of steps, stops once the monitored value has not improved for
`patience` validations, and leaves the trainable parameters at their best validated
state (`epochs` is then a maximum). The records say what happened, epoch by epoch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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


@dataclass
class EarlyStopping:
    """Validation inside `fit`. `validate()` returns the held-out figures of the model as
    it is now, e.g. {"val_loss": 2.1, "accuracy": 0.4}; `monitor` names the one that
    decides ("val_loss" by default), `mode` whether lower ("min") or higher ("max") is
    better. A validation improves when it beats the best by more than `min_delta`.
    `records` gets one dict per validation: epoch, step, mean train loss since the last
    one, and what `validate` returned; `best` is the index of the kept one."""

    validate: Callable[[], dict]
    patience: int = 2
    monitor: str = "val_loss"
    mode: str = "min"
    min_delta: float = 0.0
    records: list[dict] = field(default_factory=list)
    best: int | None = None
    stopped_early: bool = False

    def __post_init__(self):
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")
        self._state: list[torch.Tensor] | None = None

    @property
    def best_record(self) -> dict | None:
        return None if self.best is None else self.records[self.best]

    def check(self, params: list[torch.Tensor], step: int, epoch: float, losses: list[float]):
        """Validate now; keep a copy of `params` if this is the best so far. Returns True
        when training should stop (`patience` validations without improvement)."""
        since = losses[self.records[-1]["step"] :] if self.records else []
        figures = self.validate()
        if self.monitor not in figures:
            raise KeyError(f"validate() returned {sorted(figures)}, not {self.monitor!r}")
        train_loss = sum(since) / len(since) if since else None
        self.records.append({"epoch": epoch, "step": step, "train_loss": train_loss, **figures})
        value = figures[self.monitor]
        sign = 1.0 if self.mode == "min" else -1.0
        if self.best is None or sign * (self.best_record[self.monitor] - value) > self.min_delta:
            self.best = len(self.records) - 1
            self._state = [p.detach().clone() for p in params]
        waited = len(self.records) - 1 - self.best
        self.stopped_early = waited >= self.patience
        return self.stopped_early

    def restore(self, params: list[torch.Tensor]) -> None:
        """Put the best validated values back into `params`."""
        if self._state is None:
            return
        with torch.no_grad():
            for p, kept in zip(params, self._state, strict=True):
                p.copy_(kept)


def _validate_at(n: int, batch_size: int, plan_len: int) -> dict[int, float]:
    """{step (1-based count): epoch} of the validations: for every whole k, the step at
    which `fit(epochs=k)` ends (`batch_plan`'s ceil(n * k / batch_size)), and the last
    step. A validation at epoch k thus sees the very state that training k epochs ends
    in (`ownlm tune` reads every budget off one run); when several k end at one step
    (fewer items than a batch), the largest names it."""
    at, k = {}, 1
    while (step := math.ceil(n * k / batch_size)) <= plan_len:
        at[step] = float(k)
        k += 1
    at.setdefault(plan_len, plan_len * batch_size / n)
    return at


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
    early_stopping: EarlyStopping | None = None,
) -> list[float]:
    """AdamW over `param_groups` (dicts with "params" and "lr") for
    max(min_steps, ceil(len(items) * epochs / batch_size)) steps; each step's loss is
    `step_loss(batch)`, a list of items. `module` is put in train mode while it runs.
    Gradients are clipped to norm `clip` over all parameters. With `early_stopping`,
    validation runs before the first step and after each epoch (see the module doc), in
    eval mode, and the parameters end at the best validated state. Returns the step
    losses (of the steps taken)."""
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
    checks = _validate_at(len(items), batch_size, steps) if early_stopping else {}
    if early_stopping is not None:
        validate_now(early_stopping, module, params, 0, 0.0, losses)
    if module is not None:
        module.train()
    bar = progress(plan, desc=desc, unit="step", leave=False)
    for step, indices in enumerate(bar, start=1):
        loss = step_loss([items[i] for i in indices])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        if sched is not None:
            sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if step in checks and validate_now(
            early_stopping, module, params, step, checks[step], losses
        ):
            break
    if early_stopping is not None:
        early_stopping.restore(params)
    if module is not None:
        module.eval()
    return losses


def validate_now(stopper: EarlyStopping, module, params, step: int, epoch: float, losses) -> bool:
    """One validation, in eval mode and without gradients, then back to training mode;
    True = stop. Every early-stopped loop validates through it (`fit`, stage 2's EM)."""
    if module is not None:
        module.eval()
    with torch.no_grad():
        stop = stopper.check(params, step, round(epoch, 3), losses)
    if module is not None:
        module.train()
    return stop


def train_pairs(
    backbone,
    model,
    pairs: list[tuple[str, str]],
    s: LoraSettings,
    seed: int,
    desc: str | None = None,
    early_stopping: EarlyStopping | None = None,
) -> list[float]:
    """Train `model`'s trainable parameters on (prompt, target) pairs; returns step losses.
    With `early_stopping`, validated as `fit` says and left at the best state."""
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
        early_stopping=early_stopping,
    )


def fit_mixture(
    backbone,
    state,
    pairs,
    param_groups,
    epochs,
    batch_size,
    seed,
    user_emb,
    losses=None,
    early_stopping: EarlyStopping | None = None,
    user_ids=None,
):
    """`fit` for PROPER's mixture: AdamW over `param_groups` on (prompt, target,
    user_row) triples. `user_emb(rows)` gives the batch's (B, d_u) embeddings (None for
    the user-only router); `user_ids(rows)` the rows of a `UserRouter`'s table (stage 2
    with `assignment: user`; default the state's fixed ids); `losses` maps a routing term to its weight ("balance": switch
    load balancing over tokens, "diversity": `group_loss` over the batch's users).
    With `early_stopping`, validated as `fit` says (stage 2). Returns the step losses
    (LM loss plus the weighted terms)."""
    from ownlm.adapters.mixture import balance_loss, group_loss, routing

    weights = {k: w for k, w in (losses or {}).items() if w > 0}

    def step_loss(batch):
        rows = torch.tensor([b[2] for b in batch])
        emb = user_emb(rows) if user_emb else None
        ids = user_ids(rows) if user_ids else state.user_ids
        with routing(state, user_emb=emb, user_ids=ids, record=bool(weights)):
            loss = backbone.loss(backbone.model, [b[0] for b in batch], [b[1] for b in batch])
            if "balance" in weights:
                loss = loss + weights["balance"] * balance_loss(state.gates)
            if "diversity" in weights:
                loss = loss + weights["diversity"] * group_loss(state.gates, rows)
        return loss

    return fit(
        step_loss,
        pairs,
        param_groups,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        module=backbone.model,
        desc=None if len(pairs) < 200 else "mixture",
        early_stopping=early_stopping,
    )
