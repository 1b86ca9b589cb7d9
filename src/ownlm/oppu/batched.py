"""Stage 3 (OPPU), many users at once: the user stage of `sequential.py`, with K users'
LoRAs trained together in one batch (mLoRA's idea; `adapters/multi_lora.py` is the layer).

Each user trains exactly as alone: their own initialisation (PEFT's, under their seed),
their own `batch_plan` (so the same batches, and a user with fewer items takes fewer
steps), the loss of their own batch (mean token cross-entropy over their rows), their
own gradient clipping and their own AdamW state. What the users share is the frozen
base's forward and backward: at each global step the rows of every user still training
run together, in chunks of `chunk_rows` rows whose gradients accumulate. The loss is the
sum over users of each user's own mean, so each user's gradient is the one they would
get alone. The output head runs only at the supervised positions (`backbone.heads`, as
every loss does).

Finished users are saved through PEFT's `save_pretrained`, the same files as the
sequential stage writes, and leave memory before the next group starts. LoRA only:
other PEFT methods (`user.method`) and the MiniLM backbone train one user at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ownlm.adapters.lora import detach, inject, set_checkpointing
from ownlm.adapters.multi_lora import (
    MultiLora,
    Weights,
    copy_into_peft,
    install_multi_lora,
    peft_init,
)
from ownlm.backbone.heads import token_losses
from ownlm.config import LoraSettings
from ownlm.errors import ConfigError
from ownlm.log import get_logger, progress
from ownlm.oppu.model import VARIANTS, check_variant, user_pairs
from ownlm.train.budget import user_budget
from ownlm.train.loop import batch_plan
from ownlm.train.per_user import plan_users, save_user, stage_line, user_manifest, user_seed

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)

Optimizer = Callable[[list[dict]], torch.optim.Optimizer]  # param groups -> optimiser


def adamw(groups: list[dict]) -> torch.optim.Optimizer:
    """`fit`'s optimiser: AdamW without weight decay. Its state (step count included) is
    per parameter, so one AdamW over every user's group is one AdamW per user."""
    return torch.optim.AdamW(groups, weight_decay=0.0)


@dataclass
class UserJob:
    """One user to train: their adapter name, (prompt, target) pairs and seed."""

    name: str
    pairs: list[tuple[str, str]]
    seed: int


@dataclass
class Row:
    """One encoded training pair: unpadded ids and labels (-100 off the target)."""

    ids: torch.Tensor  # (T,) long, on the CPU
    labels: torch.Tensor  # (T,) long
    targets: int  # supervised tokens: labels after the first position that are not -100


def encode_rows(backbone, pairs: list[tuple[str, str]]) -> list[Row]:
    """Each pair tokenized once, as `backbone.encode_pairs` does it for a batch."""
    ids, mask, labels = backbone.encode_pairs([p for p, _ in pairs], [t for _, t in pairs])
    rows = []
    for i, n in enumerate(mask.sum(1).tolist()):
        lab = labels[i, :n]
        rows.append(Row(ids[i, :n], lab, int((lab[1:] != -100).sum())))
    return rows


def pad_rows(rows: list[Row], pad_id: int, device):
    """Right-padded (b, T) ids, mask and labels of `rows` on `device`."""
    pad = torch.nn.utils.rnn.pad_sequence
    ids = pad([r.ids for r in rows], batch_first=True, padding_value=pad_id)
    labels = pad([r.labels for r in rows], batch_first=True, padding_value=-100)
    mask = pad([torch.ones_like(r.ids) for r in rows], batch_first=True, padding_value=0)
    return ids.to(device), mask.to(device), labels.to(device)


def train_group(
    backbone,
    jobs: list[UserJob],
    s: LoraSettings,
    chunk_rows: int = 16,
    optimizer: Optimizer | None = None,
    clip: float = 1.0,
    gradient_checkpointing: bool = False,
) -> list[tuple[Weights, list[float]]]:
    """Train the users of `jobs` together; per user (trained LoRA weights, step losses).
    With `gradient_checkpointing` the base recomputes its activations in the backward
    pass (Hugging Face models). The backbone's model is left bare, as it came."""
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be a positive number of rows, got {chunk_rows}")
    empty = [job.name for job in jobs if not job.pairs]
    if empty:
        raise ConfigError(
            f"users {empty[:3]} have no training pairs; leave users without history out "
            "(train_users_batched counts them as 'empty')"
        )
    inits = [peft_init(backbone, s, job.seed) for job in jobs]
    plans = [batch_plan(len(job.pairs), s.epochs, s.batch_size, job.seed) for job in jobs]
    data = [encode_rows(backbone, job.pairs) for job in jobs]
    model = backbone.model
    multi = install_multi_lora(model, inits[0].scaling, inits[0].dropout)
    try:
        for init in inits:
            multi.add(init.weights)
        del inits
        groups = [{"params": multi.params(k), "lr": s.lr} for k in range(len(jobs))]
        opt = (optimizer or adamw)(groups)
        losses: list[list[float]] = [[] for _ in jobs]
        if gradient_checkpointing:
            set_checkpointing(model, True)
        model.train()
        for step in range(max(len(p) for p in plans)):
            active = [k for k, plan in enumerate(plans) if step < len(plan)]
            batch = {k: [data[k][i] for i in plans[k][step]] for k in active}
            step_losses = group_step(multi, batch, backbone.tokenizer.pad_token_id, chunk_rows)
            for k in active:
                torch.nn.utils.clip_grad_norm_(multi.params(k), clip)  # per user, as `fit`
            opt.step()  # users without rows this step have no grad: they do not move
            opt.zero_grad(set_to_none=True)
            for k, loss in zip(active, step_losses, strict=True):
                losses[k].append(loss)
        return [(multi.weights(k), losses[k]) for k in range(len(jobs))]
    finally:
        if gradient_checkpointing:
            set_checkpointing(model, False)
        model.eval()
        multi.uninstall()


def group_step(multi: MultiLora, batch: dict[int, list[Row]], pad_id: int, chunk_rows: int):
    """Forward and backward of one global step: every active user's batch (slot -> rows),
    longest rows first so chunks pad little. Returns each user's mean token loss, in the
    order of `batch`."""
    device = next(multi.model.parameters()).device
    slots = list(batch)
    # each user's loss is the mean over their own supervised tokens, as HF's `.loss`
    weight = {k: 1.0 / sum(r.targets for r in rows) for k, rows in batch.items()}
    rows = sorted(((k, r) for k, rs in batch.items() for r in rs), key=lambda x: -len(x[1].ids))
    total = torch.zeros(multi.n_users, device=device)
    for start in range(0, len(rows), chunk_rows):
        chunk = rows[start : start + chunk_rows]
        users = [k for k, _ in chunk]
        ids, mask, labels = pad_rows([r for _, r in chunk], pad_id, device)
        w = torch.tensor([weight[k] for k in users], device=device)
        with multi.use(users):  # backward too: checkpointed layers rerun their forward
            per_row = token_losses(multi.model, ids, mask, labels).sum(1) * w  # (b,)
            per_row.sum().backward()
        total.index_add_(0, torch.tensor(users, device=device), per_row.detach())
    return total[slots].tolist()


def save_group(
    run: Run, store, backbone, group, results, variant: str, base_fp: str, budget, seen: dict
) -> int:
    """Save each trained user as the sequential stage does (`save_user`: a PEFT model's
    `save_pretrained`, through the store, with the user manifest and its `budget`, unless
    they were forgotten or updated meanwhile). Returns how many were saved."""
    vessel = inject(backbone, run.cfg.user, seed=run.cfg.seed)  # weights overwritten per user
    saved = 0
    try:
        for user, (weights, losses) in zip(group, results, strict=True):
            copy_into_peft(vessel, weights)
            manifest = user_manifest(run, user, f"user/{variant}", base_fp, losses, budget)
            saved += save_user(run, store, user, vessel.save_pretrained, manifest, seen)
    finally:
        detach(backbone, vessel)
    return saved


def why_one_at_a_time(run: Run, backbone) -> str | None:
    """Why this run's users must train one at a time (the batched layer is LoRA's, on a
    causal LM), as the line to log; None when they can train together."""
    if backbone.kind != "causal":
        return (
            f"stage 3: {backbone.kind} backbone trains a per-user label head (modules_to_save); "
            "training users one at a time"
        )
    if run.cfg.user.method != "lora":  # the batched layer is LoRA's (`multi_lora`)
        return (
            f"stage 3: user.method={run.cfg.user.method} has no batched multi-user trainer "
            "(that is LoRA's); training users one at a time"
        )
    return None


def _train_users_of(
    run: Run, variant, backbone, group, budget, chunk_rows, optimizer
) -> list[tuple[Weights, list[float]]]:
    """`train_group` on one group of users: each with their own pairs and seed, all with
    the run's user-stage LoRA under `budget` (its lr and epochs)."""
    jobs = [
        UserJob(u.name, user_pairs(run, u, variant), user_seed(run.cfg.seed, u.user_id))
        for u in group
    ]
    return train_group(
        backbone,
        jobs,
        budget.lora(run.cfg.user),
        chunk_rows or run.cfg.user.chunk_rows,
        optimizer,
        gradient_checkpointing=run.cfg.gradient_checkpointing,
    )


def train_users_batched(
    run: Run,
    variant: str = "oppu",
    users=None,
    backbone=None,
    users_per_batch: int | None = None,
    chunk_rows: int | None = None,
    optimizer: Optimizer | None = None,
) -> dict:
    """`train_users` with `users_per_batch` users trained together: the same users
    trained, resumed or skipped (`plan_users`), the same files, the same counts
    returned. `chunk_rows` defaults to the run's `user.chunk_rows`. `optimizer` maps
    param groups (one per user) to an optimiser; default AdamW without weight decay."""
    check_variant(variant)
    users = run.split.test if users is None else users
    backbone = backbone or run.base()
    if reason := why_one_at_a_time(run, backbone):  # `oppu.user_stage` decides before
        raise ConfigError(reason.removeprefix("stage 3: ").replace("training users", "train users"))
    k = users_per_batch or run.cfg.user.users_per_batch
    if k < 1:
        raise ConfigError(f"users_per_batch must be at least 1, got {k}")
    base_fp = backbone.fingerprint()
    store = run.store(variant)
    budget = user_budget(run, variant, base_fp)  # the run's lr and epochs, tuned or not
    todo, counts = plan_users(store, users, base_fp, budget)
    seen = run.current_histories(todo)  # an update or forget landing later: not saved
    bar = progress(total=len(users), desc=f"user LoRAs ({variant}, {k} at once)", unit="user")
    bar.update(len(users) - len(todo))
    saved = 0
    for start in range(0, len(todo), k):
        group = todo[start : start + k]
        results = _train_users_of(run, variant, backbone, group, budget, chunk_rows, optimizer)
        saved += save_group(run, store, backbone, group, results, variant, base_fp, budget, seen)
        del results  # the group's weights leave memory before the next group
        bar.update(len(group))
    bar.close()
    log.info(
        f"[bold]stage 3[/] {VARIANTS[variant]} ({k} at once, {budget}): {stage_line(saved, counts)}"
    )
    return {"trained": saved, **counts}
