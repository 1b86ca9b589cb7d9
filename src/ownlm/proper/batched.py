"""Stage 3 (PROPER's user level), many users at once: `user_stage.fit_proper_user` for K
users in one batch, over the frozen group model of stage 2 ('user' assignment).

Each user trains exactly as alone: their parameters are drawn by `new_user_params`
under their own seed (the same routing start, the same residual init), they follow
their own `batch_plan` (the same batches; fewer items, fewer steps), their loss is the
mean token cross-entropy over their own rows, their gradient is clipped over their own
parameters, and AdamW keeps their own state (router at `proper.router_lr`, the rest at
the budget's lr). What they share is the frozen forward and backward: at each global
step the rows of every user still training run together, in chunks of `chunk_rows`
rows whose gradients accumulate. Row b is gated by its own user's router (the
user-only router: one logit vector shared by every layer; the input router: per layer
a token router) and adds its own user's residual B_u A_u x (`RowSlots`, the per-row
routers of `adapters.mixture`, and a forward hook per mixture layer here).

Finished users are put back on the group model one at a time and written exactly as
the one-at-a-time stage writes them (`write_user`, `save_user`). Token assignment
(per-layer routers on user embeddings) and non-causal backbones train one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ownlm.adapters.mixture import RowSlots, RowTokenRouter, RowUserRouter
from ownlm.backbone.heads import token_losses
from ownlm.errors import ConfigError
from ownlm.log import progress
from ownlm.proper.experts import proper_settings
from ownlm.proper.users import new_user_params, proper_pairs, write_user
from ownlm.train.loop import batch_plan
from ownlm.train.per_user import save_user, user_manifest, user_seed

if TYPE_CHECKING:
    from ownlm.run import Run


def why_one_at_a_time(gm) -> str | None:
    """Why the users of this group model must train one at a time, as the line to log
    (None: they can train together). Only a 'user' assignment on a causal LM batches."""
    if not gm.by_user:
        return (
            "stage 3 (PROPER): token assignment (per-layer routers on user embeddings) has "
            "no batched trainer; training users one at a time"
        )
    if gm.backbone.kind != "causal":
        return (
            f"stage 3 (PROPER): {gm.backbone.kind} backbone has no batched trainer; "
            "training users one at a time"
        )
    return None


@dataclass
class Row:
    """One encoded training pair: unpadded ids and labels (-100 off the target)."""

    ids: torch.Tensor  # (T,) long
    labels: torch.Tensor  # (T,) long
    targets: int  # supervised tokens (labels after the first position that are not -100)


def encode_rows(backbone, pairs) -> list[Row]:
    """Each (prompt, target, ...) pair tokenized once, as `backbone.loss` tokenizes it."""
    ids, mask, labels = backbone.encode_pairs([p[0] for p in pairs], [p[1] for p in pairs])
    rows = []
    for i, n in enumerate(mask.sum(1).tolist()):
        lab = labels[i, :n]
        rows.append(Row(ids[i, :n], lab, int((lab[1:] != -100).sum())))
    return rows


@dataclass
class UserSlot:
    """One user's trainable PROPER model, taken off the group model after
    `new_user_params`: per mixture layer their router module and residual (A, B)."""

    routers: dict[str, torch.nn.Module]
    lora: dict[str, tuple[torch.nn.Parameter, torch.nn.Parameter]]
    groups: list[dict]  # AdamW param groups: routing at router_lr, the rest at the lr
    plan: list[list[int]]  # `batch_plan`: the item indices of each of their steps
    rows: list[Row]
    losses: list[float] = field(default_factory=list)

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for g in self.groups for p in g["params"]]


def new_slot(run: Run, gm, user, router: str, budget) -> UserSlot:
    """Draw `user`'s parameters as `fit_proper_user` does (its seed, `new_user_params`
    on the reset group model), then take them off the model."""
    s, seed = proper_settings(run), user_seed(run.cfg.seed, user.user_id)
    gm.reset()
    torch.manual_seed(seed)
    pairs = proper_pairs(run, user)
    routing_params, shared, _ = new_user_params(gm, run, pairs, None, router, user.history)
    layers = gm.layers
    return UserSlot(
        {n: layer.router for n, layer in layers.items()},
        {n: (layer.user_A, layer.user_B) for n, layer in layers.items()},
        [{"params": routing_params, "lr": s.router_lr}, {"params": shared, "lr": budget.lr}],
        batch_plan(len(pairs), budget.epochs, s.batch_size, seed),
        encode_rows(gm.backbone, pairs),
    )


def put_user(gm, slot: UserSlot, scaling: float) -> None:
    """Set the group model up for one trained user, as `fit_proper_user` leaves it."""
    gm.reset()
    for name, layer in gm.layers.items():
        layer.router = slot.routers[name]
        layer.user_A, layer.user_B = slot.lora[name]
        layer.user_scaling = scaling
    device = next(iter(gm.layers.values())).A.device
    gm.state.user_ids = torch.zeros(1, dtype=torch.long, device=device)


def residual_hook(slots: RowSlots, lora: list[tuple], scaling: float):
    """A forward hook adding row b's own user's residual s_u B_k A_k x to a mixture
    layer's output (`lora`: per user slot, that layer's (A, B))."""

    def hook(layer, args, y):
        if not layer.state.active or slots.idx is None:
            return y
        x = args[0]
        h = (x[:, None, :] if x.dim() == 2 else x).to(layer.A.dtype)  # (B, T, in)
        a = torch.stack([lora[k][0] for k in slots.users])[slots.idx]  # (B, r, in)
        b = torch.stack([lora[k][1] for k in slots.users])[slots.idx]  # (B, out, r)
        delta = torch.bmm(torch.bmm(h, a.transpose(1, 2)), b.transpose(1, 2)) * scaling
        return y + (delta[:, 0] if x.dim() == 2 else delta).to(y.dtype)

    return hook


def install_rows(gm, slots: list[UserSlot], rows: RowSlots, router: str, scaling: float):
    """Put per-row routers and residual hooks on every mixture layer; returns the hooks'
    handles (remove them, then `gm.reset()`, to undo)."""
    gm.reset()
    handles, shared = [], None
    for name, layer in gm.layers.items():
        if router == "user":  # one logit vector per user, shared by every layer
            if shared is None:
                shared = RowUserRouter([s.routers[name] for s in slots], rows)
            layer.router = shared
        else:
            layer.router = RowTokenRouter([s.routers[name] for s in slots], rows)
        lora = [s.lora[name] for s in slots]
        handles.append(layer.register_forward_hook(residual_hook(rows, lora, scaling)))
    return handles


def step_rows(gm, rows: RowSlots, batch: dict[int, list[Row]], chunk_rows: int) -> list[float]:
    """Forward and backward of one global step over every active user's rows (slot ->
    rows), longest first, `chunk_rows` at a time. Each user's loss is the mean over
    their own supervised tokens, as `backbone.loss`; returns them in `batch`'s order."""
    model, pad_id = gm.backbone.model, gm.backbone.tokenizer.pad_token_id
    device = next(iter(gm.layers.values())).A.device
    weight = {k: 1.0 / max(1, sum(r.targets for r in rs)) for k, rs in batch.items()}
    ordered = sorted(((k, r) for k, rs in batch.items() for r in rs), key=lambda x: -len(x[1].ids))
    total = torch.zeros(max(batch) + 1, device=device)
    pad = torch.nn.utils.rnn.pad_sequence
    for start in range(0, len(ordered), chunk_rows):
        chunk = ordered[start : start + chunk_rows]
        users = [k for k, _ in chunk]
        ids = pad([r.ids for _, r in chunk], batch_first=True, padding_value=pad_id)
        labels = pad([r.labels for _, r in chunk], batch_first=True, padding_value=-100)
        mask = pad([torch.ones_like(r.ids) for _, r in chunk], batch_first=True)
        w = torch.tensor([weight[k] for k in users], device=device)
        rows.set(users, device)
        try:
            per_row = token_losses(model, ids.to(device), mask.to(device), labels.to(device))
            per_row = per_row.sum(1) * w
            per_row.sum().backward()
        finally:
            rows.clear()
        total.index_add_(0, torch.tensor(users, device=device), per_row.detach())
    return total[list(batch)].tolist()


def train_slots(gm, slots: list[UserSlot], router: str, scaling: float, chunk_rows: int):
    """Train the users of `slots` together (their losses land in `slot.losses`); the
    group model is reset afterwards, the trained parameters stay in the slots."""
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be a positive number of rows, got {chunk_rows}")
    rows, model = RowSlots(), gm.backbone.model
    handles = install_rows(gm, slots, rows, router, scaling)
    opt = torch.optim.AdamW([g for s in slots for g in s.groups], weight_decay=0.0)
    try:
        model.train()
        for step in range(max(len(s.plan) for s in slots)):
            active = [k for k, s in enumerate(slots) if step < len(s.plan)]
            batch = {k: [slots[k].rows[i] for i in slots[k].plan[step]] for k in active}
            losses = step_rows(gm, rows, batch, chunk_rows)
            for k, loss in zip(active, losses, strict=True):
                torch.nn.utils.clip_grad_norm_(slots[k].params, 1.0)  # per user, as `fit`
                slots[k].losses.append(loss)
            opt.step()  # users without rows this step have no gradient: they stay put
            opt.zero_grad(set_to_none=True)
    finally:
        model.eval()
        for h in handles:
            h.remove()
        gm.reset()


def train_proper_batched(
    run: Run, gm, todo, seen: dict, router: str, fp: str, budget, k: int, chunk_rows=None
) -> int:
    """Stage 3 for the planned users `todo`, `k` at a time in one batch; each saved as
    `train_proper_users` saves them (`write_user`, `user_manifest`, `save_user` under
    their lock, unless forgotten or updated since `seen`). Returns how many were saved."""
    s = proper_settings(run)
    store, scaling = run.store(f"proper-{router}"), s.user_alpha / s.user_r
    chunk_rows = chunk_rows or run.cfg.user.chunk_rows
    bar = progress(total=len(todo), desc=f"PROPER users ({router}, {k} at once)", unit="user")
    saved = 0
    for start in range(0, len(todo), k):
        group = todo[start : start + k]
        slots = [new_slot(run, gm, user, router, budget) for user in group]
        train_slots(gm, slots, router, scaling, chunk_rows)
        for user, slot in zip(group, slots, strict=True):
            put_user(gm, slot, scaling)
            manifest = user_manifest(run, user, f"user/proper-{router}", fp, slot.losses, budget)
            write = lambda d: write_user(d, gm, router, s.user_alpha)  # noqa: E731
            saved += save_user(run, store, user, write, manifest, seen)
        gm.reset()
        del slots  # the group's parameters leave memory before the next group
        bar.update(len(group))
    bar.close()
    return saved
