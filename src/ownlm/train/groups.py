"""Stage 2 (PROPER's group level): G LoRA experts on the FFN layers of the population-merged
base and a user-aware router, trained together on all train users' histories.

Flow: load run.base() (stage 1 merged, frozen) -> embed each train user's history ->
project to `user_dim` to initialise a learned user embedding -> train experts + routers +
user embeddings with the LM loss plus the switch load-balancing and user-group terms
(`ownlm.train.loop.fit_mixture`) -> report how it routes -> save
(`ownlm.methods.proper.groups` holds the model, its storage and the user vectors).
A resumed run keeps the stored stage when it was trained from the same base, users,
pairs and settings (`train.resume`).
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from ownlm.adapters.mixture import (
    group_summary,
    install_mixture,
    mixture_layers,
    routing,
    uninstall_mixture,
    usage,
    user_gates,
)
from ownlm.backbone.device import model_device
from ownlm.log import get_logger
from ownlm.methods.proper.groups import (
    check_new_user,
    fit_projection,
    groups_fingerprint,
    history_vectors,
    router_factory,
    save_groups,
    settings,
    targets_for,
)
from ownlm.retrieval.prompts import training_pairs, user_context
from ownlm.train.loop import fit_mixture
from ownlm.train.resume import inputs_digest, mark_done, still_valid

log = get_logger(__name__)


def stage2_pairs(run, users) -> list[tuple[str, str, int]]:
    """(prompt, target, the user's row in the table) for every history item of `users`."""
    cfg = run.cfg
    return [
        (p, t, row)
        for row, u in enumerate(users)
        for p, t in training_pairs(
            run.task, user_context(run.task, u), cfg.retrieval_k, cfg.profile
        )
    ]


def stage2_inputs(run, base_fp: str, users, pairs) -> str:
    """Digest of what stage 2 learns from: the base, the train users' histories (their
    vectors), the pairs, stage 2's settings (stage 3's `user_*` aside) and the seed."""
    s = asdict(settings(run))
    return inputs_digest(
        base=base_fp,
        users=[[u.user_id, u.history_digest()] for u in users],
        pairs=pairs,
        settings={k: v for k, v in s.items() if not k.startswith("user_")},
        seed=run.cfg.seed,
    )


def train_groups(run, backbone=None) -> dict:
    """Train and store the group experts and the user-aware router, or keep the stored
    ones if they still hold. Returns statistics."""
    check_new_user(settings(run).new_user)
    backbone = backbone or run.base()
    base_fp = backbone.fingerprint()
    users = [u for u in run.split.train if u.history]
    pairs = stage2_pairs(run, users)
    inputs = stage2_inputs(run, base_fp, users, pairs)

    def identity():  # the base and the stored stage-2 weights
        return groups_fingerprint(run, base_fp)

    if still_valid(run, "groups", inputs, identity):
        log.info(
            f"[bold]stage 2[/] group experts kept: trained from the same base, "
            f"{len(users)} users and {len(pairs)} pairs"
        )
        return {"pairs": len(pairs), "kept": True}
    stats = fit_groups(run, backbone, users, pairs)
    mark_done(run, "groups", inputs, identity)
    return stats


def fit_groups(run, backbone, users, pairs) -> dict:
    """Stage 2 proper: initialise the user table from history vectors, train experts,
    routers and table together, report the routing, save."""
    cfg, s = run.cfg, settings(run)
    base_fp = backbone.fingerprint()
    vectors = history_vectors(run, users, backbone)
    mu, proj = fit_projection(vectors, s.user_dim)
    device = model_device(backbone.model)
    table = torch.nn.Parameter(torch.from_numpy((vectors - mu) @ proj).to(device))  # (U, d_u)
    backbone.model.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    state = install_mixture(
        backbone.model,
        targets_for(backbone, s),
        s.groups,
        s.r,
        s.alpha,
        router_factory(s.user_dim, s.groups, s.top_k),
    )
    layers = mixture_layers(backbone.model)
    experts = [p for layer in layers.values() for p in (layer.A, layer.B)]
    routers = [table] + [p for layer in layers.values() for p in layer.router.parameters()]
    log.info(
        f"[bold]stage 2[/] {s.groups} experts (r={s.r}), {len(layers)} modules, {len(pairs)} pairs"
    )
    try:
        losses = fit_mixture(
            backbone,
            state,
            pairs,
            [{"params": experts, "lr": s.lr}, {"params": routers, "lr": s.router_lr}],
            s.epochs,
            s.batch_size,
            cfg.seed,
            lambda rows: table[rows],
            {"balance": s.balance, "diversity": s.diversity},
        )
        used = expert_usage(backbone, state, pairs, table)
        meta = {
            **{k: getattr(s, k) for k in ("groups", "r", "alpha", "user_dim", "top_k")},
            **{k: getattr(s, k) for k in ("new_user", "neighbours")},
            "targets": targets_for(backbone, s),
            "layers": list(layers),
            "users": [u.user_id for u in users],
            "base_fingerprint": base_fp,
        }
        save_groups(run, layers, table, mu, proj, meta, base_fp, losses, vectors)
    finally:
        uninstall_mixture(backbone.model)
    stats = {"pairs": len(pairs), "loss_first": losses[0], "loss_last": losses[-1], **used}
    log.info(
        f"stage 2 done: loss {losses[0]:.3f} -> {losses[-1]:.3f}; top expert share of tokens "
        f"{used['tokens']}, of users {used['users']}; users' mean top gate "
        f"{used['user_top_gate']} (uniform {1 / s.groups:.2f})"
    )
    return stats


@torch.no_grad()
def expert_usage(backbone, state, pairs, table, per_user: int = 4) -> dict:
    """How stage 2 routes, on up to `per_user` pairs of each train user:
    "tokens": (G,) fraction of tokens (all layers) whose top expert is g;
    "users": (G,) fraction of users whose mean gate's top expert is g;
    "user_top_gate": the users' mean largest gate (1/G: no groups, 1: hard groups)."""
    by_user: dict[int, list] = {}
    for p in pairs:
        if len(by_user.setdefault(p[2], [])) < per_user:
            by_user[p[2]].append(p)
    sample = [p for ps in by_user.values() for p in ps]
    gates, per_user_gates = [], []
    for i in range(0, len(sample), 16):
        batch = sample[i : i + 16]
        rows = torch.tensor([b[2] for b in batch])
        with routing(state, user_emb=table[rows], record=True):
            backbone.loss(backbone.model, [b[0] for b in batch], [b[1] for b in batch])
            gates += state.gates
            per_user_gates.append((rows, state.gates))
    # each user's gate averaged over layers and their sequences
    sums: dict[int, torch.Tensor] = {}
    for rows, layer_gates in per_user_gates:
        uniq = torch.unique(rows)
        mean = sum(user_gates(g, rows) for g in layer_gates) / len(layer_gates)  # (U_b, G)
        for u, q in zip(uniq.tolist(), mean, strict=True):
            sums[u] = sums.get(u, 0) + q
    summary = group_summary(torch.stack([v / v.sum() for v in sums.values()]))  # q: (U, G)
    return {
        "tokens": [round(x, 4) for x in usage(gates).tolist()],
        "users": [round(x, 4) for x in summary["users"]],
        "user_top_gate": round(summary["user_top_gate"], 4),
    }
