"""PROPER's user level as a loadable model: per user, a residual LoRA (B_u A_u, rank r_u)
and a LoRA-aware router that mixes the frozen group experts of stage 2 for them.

Two router variants (`ROUTERS`):
* "input": the paper's input-dependent router. The stage-2 user-aware router (per layer,
  softmax(W [x ; e_u])) is copied and fine-tuned for the user together with e_u, which
  starts from the user's projected history embedding.
* "user": gates depend on the user alone, one logit vector per layer, initialised at
  log of the mean stage-2 gates over the user's history prompts. The user's whole delta
  is then one LoRA of rank G*r + r_u (`ownlm.adapters.export`, `export_adapter` below).

Stored per user in run.store("proper-input" | "proper-user") as `user:<id>`: the residual
LoRA as a PEFT directory (alone it is only the residual: it needs the group experts) plus
`proper_router.safetensors` (the router parameters) and `proper_router.json`.

Serving rule (`prepare_user`): a trained user gets their adapter; a user with history
but no adapter gets gates from their history embedding through the stage-2 router, with
no training; a user with no history gets the population model (mixture off).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ownlm.adapters.export import INPUT_ROUTER_MSG, export_mixture
from ownlm.adapters.mixture import TokenUserRouter, UserRouter, routing
from ownlm.adapters.peft_io import CONFIG_FILE, read_lora, write_peft_lora
from ownlm.errors import ConfigError
from ownlm.proper.experts import groups_fingerprint, load_groups, proper_settings
from ownlm.retrieval.prompts import training_pairs, user_context
from ownlm.variants import of_method

if TYPE_CHECKING:
    from ownlm.run import Run

ROUTERS = {v.router: v.label for v in of_method("proper").values()}  # router -> what it is
ROUTER_FILE = "proper_router.safetensors"


def check_router(router: str) -> str:
    if router not in ROUTERS:
        raise ConfigError(f"router must be one of {sorted(ROUTERS)}, got {router!r}")
    return router


def proper_pairs(run: Run, user) -> list[tuple[str, str, int]]:
    """(prompt, target, row 0) per history item: OPPU's prompts, one user per model."""
    ctx = user_context(run.task, user)
    return [
        (p, t, 0) for p, t in training_pairs(run.task, ctx, run.cfg.retrieval_k, run.cfg.profile)
    ]


@torch.no_grad()
def mean_gates(gm, emb: torch.Tensor, pairs) -> dict[str, torch.Tensor]:
    """{layer: (G,)} stage-2 gates of one user averaged over their prompts' tokens."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for i in range(0, len(pairs), 16):
        batch = pairs[i : i + 16]
        with routing(gm.state, user_emb=emb, record=True):
            gm.backbone.loss(gm.backbone.model, [b[0] for b in batch], [b[1] for b in batch])
            for name, g in zip(gm.state.names, gm.state.gates, strict=True):
                flat = g.reshape(-1, g.shape[-1])
                sums[name] = sums.get(name, 0) + flat.sum(0)
                counts[name] = counts.get(name, 0) + flat.shape[0]
    return {n: sums[n] / counts[n] for n in sums}


def new_user_params(gm, run: Run, pairs, vector: np.ndarray | None, router: str, items=()):
    """Give the group model a fresh, trainable residual LoRA and router for one user.

    Returns (routing parameters, the other parameters, user_emb function for the loop):
    the user's own routing (their embedding, gate logits or router bias) learns at
    `proper.router_lr`, the residual LoRA (and router weights) at `user_lr`."""
    s = proper_settings(run)
    if gm.by_user:
        routing_params, shared = by_user_router(gm, gm.history_gates(pairs, items), router)
        emb_fn = None
    elif router == "user":
        e0 = gm.embed(vector)  # (1, d_u)
        init = mean_gates(gm, e0, pairs)
        routing_params, shared = [], []
        for name, layer in gm.layers.items():
            layer.router = UserRouter(1, gm.meta["groups"], gm.meta["top_k"]).to(e0.device)
            layer.router.logits.data = init[name].clamp_min(1e-4).log()[None]
            routing_params.append(layer.router.logits)
        emb_fn = None
        gm.state.user_ids = torch.zeros(1, dtype=torch.long, device=e0.device)
    else:
        emb = torch.nn.Parameter(gm.embed(vector).clone())
        shared = [
            p
            for layer in gm.layers.values()
            for p in layer.router.requires_grad_(True).parameters()
        ]
        routing_params = [emb]
        emb_fn = lambda rows: emb.expand(len(rows), -1)  # noqa: E731
        gm.state.user_emb = emb
    for layer in gm.layers.values():
        layer.add_user_lora(s.user_r, s.user_alpha)
        shared += [layer.user_A, layer.user_B]
    return routing_params, shared, emb_fn


def by_user_router(gm, gates: torch.Tensor, router: str):
    """Stage 3 on a 'user' assignment, starting at the untrained routing `gates` (G,).
    "user": ONE logit vector shared by every layer (the user stays one fact; a sparse
    user has few steps to spend), at log gates. "input": per layer a token router
    softmax(W x + b) with W = 0 and b = log gates, so it starts at the user-level routing
    and learns how tokens shift it. Returns (routing params, other params)."""
    log_g = gates.clamp_min(1e-4).log()  # trainable logits: a -inf would never move back
    layers = gm.layers
    device = next(iter(layers.values())).A.device
    if router == "user":
        shared_router = UserRouter(1, gm.meta["groups"]).to(device)
        with torch.no_grad():
            shared_router.logits.copy_(log_g[None].to(device))
        for layer in layers.values():
            layer.router = shared_router
        gm.state.user_ids = torch.zeros(1, dtype=torch.long, device=device)
        return [shared_router.logits], []
    biases, weights = [], []
    for layer in layers.values():
        layer.router = TokenUserRouter(layer.in_features, 0, gm.meta["groups"]).to(device)
        with torch.no_grad():
            layer.router.proj.weight.zero_()
            layer.router.proj.bias.copy_(log_g.to(device))
        biases.append(layer.router.proj.bias)
        weights.append(layer.router.proj.weight)
    return biases, weights


def finish_user(gm, router: str) -> None:
    """After training: the model answers for the user trained (input router: their e_u)."""
    if router == "input" and gm.state.user_emb is not None:
        gm.state.user_emb = gm.state.user_emb.detach()


def user_tensors(gm, router: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, layer in gm.layers.items():
        for k, v in layer.router.state_dict().items():
            out[f"{name}.{k}"] = v.detach().cpu().clone()  # a shared router: one copy each
    if router == "input" and gm.state.user_emb is not None:
        out["user_emb"] = gm.state.user_emb.detach().cpu().contiguous()
    return out


def write_user(directory, gm, router: str, alpha_u: float) -> None:
    lora = {n: (layer.user_A, layer.user_B) for n, layer in gm.layers.items()}
    write_peft_lora(directory, lora, alpha_u)
    save_file(user_tensors(gm, router), str(directory / ROUTER_FILE))
    (directory / "proper_router.json").write_text(json.dumps({"router": router}))


def apply_user(gm, path, router: str) -> None:
    """Load a stored PROPER user onto the group model (after `gm.reset()`)."""
    lora = read_lora(path)
    tensors = load_file(str(path / ROUTER_FILE))
    alpha = json.loads((path / CONFIG_FILE).read_text())["lora_alpha"]
    device = next(iter(gm.layers.values())).base.weight.device
    groups = gm.meta["groups"]
    shared = UserRouter(1, groups).to(device) if router == "user" and gm.by_user else None
    with torch.no_grad():
        for name, layer in gm.layers.items():
            a, b = lora[name]
            layer.add_user_lora(a.shape[0], alpha)
            layer.user_A.copy_(a)
            layer.user_B.copy_(b)
            if shared is not None:
                layer.router = shared  # stored once per layer, the same values
            elif router == "user":
                layer.router = UserRouter(1, groups, gm.meta["top_k"]).to(device)
            elif gm.by_user:
                layer.router = TokenUserRouter(layer.in_features, 0, groups).to(device)
            sd = {k: tensors[f"{name}.{k}"] for k in layer.router.state_dict()}
            layer.router.load_state_dict(sd)
    if router == "user":
        gm.state.user_ids = torch.zeros(1, dtype=torch.long, device=device)
    elif "user_emb" in tensors:
        gm.state.user_emb = tensors["user_emb"].to(device)


def prepare_user(gm, store, fp, user, router: str, vector: np.ndarray | None, pairs=None) -> str:
    """Set the group model up to answer for `user`; returns how ("adapter", "new",
    "population"). A user with history and no adapter is routed untrained: on a 'user'
    assignment by the likelihood of their history `pairs` under each expert
    (`GroupModel.history_gates`), else through the stage-2 router from their `vector`."""
    gm.reset()
    if store is not None and store.exists(user.name):
        apply_user(gm, store.verify(user.name, fp), router)
        return "adapter"
    if user.history and gm.by_user and pairs:
        gm.route(gm.history_gates(pairs, user.history))
        return "new"
    if user.history and not gm.by_user and vector is not None:
        gm.state.user_emb = gm.embed(vector)  # new user: stage-2 routing, no training
        return "new"
    gm.state.active = False
    return "population"


def load_user_model(run: Run, backbone, user, router: str):
    """`backbone.model` with the group mixture and this user's stored PROPER adapter."""
    fp = groups_fingerprint(run, backbone.fingerprint())
    gm = load_groups(run, backbone)
    apply_user(gm, run.store(f"proper-{check_router(router)}").verify(user.name, fp), router)
    return backbone.model


def export_adapter(run: Run, user_id: str, out_dir: Path, variant: str = "proper-user") -> Path:
    """Write user `user_id`'s effective PROPER model (user-only router) as one PEFT LoRA
    over the run's merged base, named by absolute path (`run.base_dir`, resolved). Only
    the user-only router flattens (`variant` is there to share OPPU's signature)."""
    if variant != "proper-user":
        raise ConfigError(f"user {user_id!r}: " + INPUT_ROUTER_MSG)
    user = next((u for u in run.dataset.users if u.user_id == user_id), None)
    if user is None:
        raise ConfigError(f"no user {user_id!r} in {run.cfg.data}; check the id")
    if not run.store("proper-user").exists(user.name):
        if run.store("proper-input").exists(user.name):
            raise ConfigError(f"user {user_id!r}: " + INPUT_ROUTER_MSG)
        raise ConfigError(
            f"user {user_id!r} has no PROPER adapter; train it with `ownlm train -c "
            f"{run.dir / 'config.yaml'} --stages groups,users --variants proper-user` "
            "(or export another variant: --variant oppu)"
        )
    backbone = run.base()
    model = load_user_model(run, backbone, user, "user")
    task = "CAUSAL_LM" if backbone.kind == "causal" else None  # AutoPeftModelForCausalLM
    return export_mixture(model, out_dir, 0, str(run.base_dir.resolve()), task_type=task)
