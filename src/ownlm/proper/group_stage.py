"""Stage 2 (PROPER's group level): G LoRA experts on the FFN layers of the population-merged
base and a user-aware router, trained together on all train users' histories.

Flow: load run.base() (stage 1 merged, frozen) -> embed each train user's history ->
project to `user_dim` to initialise a learned user embedding -> train experts + routers +
user embeddings with the LM loss plus the switch load-balancing and user-group terms
(`ownlm.train.loop.fit_mixture`) -> report how it routes -> save
(`ownlm.proper.experts` holds the model, its storage and the user vectors).
A resumed run keeps the stored stage when it was trained from the same base, users,
pairs and settings (`train.resume`).

With dev users it is validated each epoch on their items (`train.validation`), each dev
user placed on the router as stage 3 places a user stage 2 never saw (`dev_embeddings`):
it stops early, keeps its best epoch, prints its table and warns when the kept mixture
loses to the population reference.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

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
from ownlm.proper.experts import groups_fingerprint, proper_settings, save_groups, targets_for
from ownlm.proper.routing import (
    check_new_user,
    fit_projection,
    history_vectors,
    router_factory,
    token_router_tensors,
)
from ownlm.retrieval.prompts import training_pairs, user_context
from ownlm.train.loop import fit_mixture
from ownlm.train.stage import StagePlan, run_stage, validated_inputs
from ownlm.train.validation import (
    dev_users,
    early_stopping,
    pair_validator,
    summary,
    tuning_hints,
)

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)


def stage2_pairs(run: Run, users) -> list[tuple[str, str, int]]:
    """(prompt, target, the user's row in the table) for every history item of `users`."""
    cfg = run.cfg
    return [
        (p, t, row)
        for row, u in enumerate(users)
        for p, t in training_pairs(
            run.task, user_context(run.task, u), cfg.retrieval_k, cfg.profile
        )
    ]


def stage2_inputs(run: Run, base_fp: str, users, pairs, dev_pairs) -> tuple:
    """Stage 2's dev validation set and the digest of what it learns from: the base, the
    train users' histories (their vectors), the pairs, stage 2's settings (stage 3's
    `user_*` aside), the seed, and what validates it (`stage.validated_inputs`)."""
    s = asdict(proper_settings(run))
    return validated_inputs(
        run,
        dev_pairs,
        base=base_fp,
        users=[[u.user_id, u.history_digest()] for u in users],
        pairs=pairs,
        settings={k: v for k, v in s.items() if not k.startswith("user_")},
        seed=run.cfg.seed,
    )


def train_groups(run: Run, backbone=None) -> dict:
    """Train and store the group experts and the user-aware router, or keep the stored
    ones if they still hold. Returns statistics."""
    check_new_user(proper_settings(run).new_user)
    backbone = backbone or run.base()
    base_fp = backbone.fingerprint()
    users = [u for u in run.split.train if u.history]
    pairs = stage2_pairs(run, users)
    dev = dev_users(run)
    vset, inputs = stage2_inputs(run, base_fp, users, pairs, stage2_pairs(run, dev))

    s = proper_settings(run)
    plan = StagePlan(
        "groups",
        "stage 2 (groups)",
        pairs,
        vset,
        inputs,
        lambda: groups_fingerprint(run, base_fp),  # the base and the stored stage-2 weights
        f"[bold]stage 2[/] group experts kept: trained from the same base, "
        f"{len(users)} users and {len(pairs)} pairs",
        tuning_hints("proper", s.epochs, s.lr),
    )
    stats = run_stage(run, plan, lambda: fit_stage2(run, backbone, users, pairs, dev, vset))
    if "choice" in stats:  # the candidates for G, next to the kept candidate's validation
        run.record_stage("groups", {**run.stage_record("groups"), "choice": stats["choice"]})
    return stats


def fit_stage2(run: Run, backbone, users, pairs, dev, vset) -> dict:
    """Stage 2 as configured: user-level groups by EM (for each candidate G when
    `groups_choices` is set), or the per-token routers (`assignment: token`)."""
    s = proper_settings(run)
    if s.assignment == "user" and s.groups_choices:
        from ownlm.proper.group_count import choose_groups

        return choose_groups(run, backbone, users, pairs, vset)
    if s.assignment == "user":
        from ownlm.proper.em import fit_groups_em

        return fit_groups_em(run, backbone, users, pairs, vset)
    return fit_groups(run, backbone, users, pairs, dev, vset)


def fit_groups(run: Run, backbone, users, pairs, dev=(), vset=None) -> dict:
    """Stage 2 with `assignment: token`: initialise the user table from history vectors, train experts,
    routers and table together (validated on `vset` when given), report the routing,
    save."""
    cfg, s = run.cfg, proper_settings(run)
    base_fp = backbone.fingerprint()
    vectors = history_vectors(run, users, backbone)
    dev_vectors = history_vectors(run, dev, backbone) if vset else None
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
        stopper = None
        if vset:
            emb = dev_embeddings(run, dev_vectors, vectors, mu, proj, table)
            validate = routed_validator(backbone, state, run.task, vset, emb)
            stopper = early_stopping(run, vset, validate)
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
            early_stopping=stopper,
        )
        used = expert_usage(backbone, state, pairs, table)
        meta = router_meta(s, backbone, layers, users, base_fp)
        record = summary(stopper, vset)
        tensors = token_router_tensors(layers, table, mu, proj, vectors, s.new_user)
        save_groups(run, layers, tensors, meta, base_fp, losses, record)
    finally:
        uninstall_mixture(backbone.model)
    stats = {"pairs": len(pairs), "loss_first": losses[0], "loss_last": losses[-1], **used}
    log.info(
        f"stage 2 done: loss {losses[0]:.3f} -> {losses[-1]:.3f}; top expert share of tokens "
        f"{used['tokens']}, of users {used['users']}; users' mean top gate "
        f"{used['user_top_gate']} (uniform {1 / s.groups:.2f})"
    )
    return {**stats, "validation": record}


def router_meta(s, backbone, layers, users, base_fp: str) -> dict:
    """router.json: the mixture's shape, the train users' rows, the base it stands on."""
    return {
        **{k: getattr(s, k) for k in ("groups", "r", "alpha", "user_dim", "top_k")},
        **{k: getattr(s, k) for k in ("new_user", "neighbours")},
        "assignment": s.assignment,
        "targets": targets_for(backbone, s),
        "layers": list(layers),
        "users": [u.user_id for u in users],
        "base_fingerprint": base_fp,
    }


def dev_embeddings(run: Run, dev_vectors, vectors, mu, proj, table):
    """`emb()`: (n_dev, d_u) the dev users' embeddings, placed as stage 3 places a user
    stage 2 has no row for (`GroupModel.embed`): the projection of their history vector,
    or with new_user='neighbours' the mean learned row of their most similar train users
    (read from the table as it trains)."""
    s = proper_settings(run)
    if s.new_user != "neighbours":
        fixed = torch.from_numpy((dev_vectors - mu) @ proj).to(table.device)
        return lambda: fixed
    train, dev = torch.from_numpy(vectors), torch.from_numpy(dev_vectors)
    sims = torch.nn.functional.cosine_similarity(dev[:, None], train[None], dim=-1)  # (D, U)
    nearest = sims.topk(max(1, min(s.neighbours, len(train))), dim=-1).indices  # (D, k)
    nearest = nearest.to(table.device)
    return lambda: table[nearest].mean(1)


def routed_validator(backbone, state, task, vset, emb):
    """`pair_validator` on the mixture, each batch routed with its dev users' embeddings."""

    def wrap(batch):
        rows = torch.tensor([b[2] for b in batch])
        return routing(state, user_emb=emb()[rows])  # (B, d_u)

    return pair_validator(backbone, backbone.model, task, vset, wrap)


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
