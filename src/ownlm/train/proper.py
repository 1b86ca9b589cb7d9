"""Stage 3 (PROPER's user level): per user, a residual LoRA (B_u A_u, rank r_u) and a
LoRA-aware router that mixes the frozen group experts of stage 2 for them.

Two router variants (`ROUTERS`):
* "input": the paper's input-dependent router. The stage-2 user-aware router (per layer,
  softmax(W [x ; e_u])) is copied and fine-tuned for the user together with e_u, which
  starts from the user's projected history embedding.
* "user": gates depend on the user alone, one logit vector per layer, initialised at
  log of the mean stage-2 gates over the user's history prompts. The user's whole delta
  is then one LoRA of rank G*r + r_u (`ownlm.adapters.export`).

Stored per user in run.store("proper-input" | "proper-user") as `user:<id>`: the residual
LoRA as a PEFT directory (alone it is only the residual: it needs the group experts) plus
`proper_router.safetensors` (the router parameters) and `proper_router.json`.

Serving rule (`prepare_user`): a trained user gets their adapter; a user with history
but no adapter gets gates from their history embedding through the stage-2 router, with
no training; a user with no history gets the population model (mixture off).
"""

from __future__ import annotations

import json

import numpy as np
import torch
from rich.console import Console
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ownlm.adapters.export import write_peft_lora
from ownlm.adapters.mixture import UserRouter, routing, uninstall_mixture
from ownlm.errors import ConfigError
from ownlm.personal import training_pairs, user_context
from ownlm.store import Manifest
from ownlm.train.groups import (
    fit_mixture,
    groups_fingerprint,
    history_vectors,
    load_groups,
    settings,
)
from ownlm.train.users import user_seed

console = Console(stderr=True)
ROUTERS = {"input": "input-dependent router", "user": "user-only router"}
ROUTER_FILE = "proper_router.safetensors"


def check_router(router: str) -> str:
    if router not in ROUTERS:
        raise ConfigError(f"router must be one of {sorted(ROUTERS)}, got {router!r}")
    return router


def user_pairs(run, user) -> list[tuple[str, str, int]]:
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


def fit_user(run, gm, user, vector: np.ndarray, router: str) -> list[float]:
    """Train one user's residual LoRA and router on the frozen group model. Leaves the
    model set up for this user (call `gm.reset()` before the next one)."""
    s, seed = settings(run), user_seed(run.cfg.seed, user.user_id)
    torch.manual_seed(seed)
    pairs = user_pairs(run, user)
    e0 = gm.embed(vector)  # (1, d_u)
    routing_params, shared = [], []  # the user's own routing (router_lr) / the rest (user_lr)
    if router == "user":
        init = mean_gates(gm, e0, pairs)
        for name, layer in gm.layers.items():
            layer.router = UserRouter(1, gm.meta["groups"], gm.meta["top_k"])
            layer.router.logits.data = init[name].clamp_min(1e-4).log()[None]
            routing_params.append(layer.router.logits)
        emb_fn = None
        gm.state.user_ids = torch.zeros(1, dtype=torch.long)
    else:
        emb = torch.nn.Parameter(e0.clone())
        for layer in gm.layers.values():
            shared += list(layer.router.requires_grad_(True).parameters())
        routing_params.append(emb)
        emb_fn = lambda rows: emb.expand(len(rows), -1)  # noqa: E731
    for layer in gm.layers.values():
        layer.add_user_lora(s.user_r, s.user_alpha)
        shared += [layer.user_A, layer.user_B]
    losses = fit_mixture(
        gm.backbone,
        gm.state,
        pairs,
        [{"params": routing_params, "lr": s.router_lr}, {"params": shared, "lr": s.user_lr}],
        s.user_epochs,
        s.batch_size,
        seed,
        emb_fn,
    )
    if router == "input":
        gm.state.user_emb = emb.detach()
    return losses


def user_tensors(gm, router: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, layer in gm.layers.items():
        for k, v in layer.router.state_dict().items():
            out[f"{name}.{k}"] = v.detach().contiguous()
    if router == "input":
        out["user_emb"] = gm.state.user_emb.detach().contiguous()
    return out


def write_user(directory, gm, router: str, alpha_u: float) -> None:
    lora = {n: (layer.user_A, layer.user_B) for n, layer in gm.layers.items()}
    write_peft_lora(directory, lora, alpha_u)
    save_file(user_tensors(gm, router), str(directory / ROUTER_FILE))
    (directory / "proper_router.json").write_text(json.dumps({"router": router}))


def apply_user(gm, path, router: str) -> None:
    """Load a stored PROPER user onto the group model (after `gm.reset()`)."""
    lora = load_file(str(path / "adapter_model.safetensors"))
    tensors = load_file(str(path / ROUTER_FILE))
    cfg = json.loads((path / "adapter_config.json").read_text())
    with torch.no_grad():
        for name, layer in gm.layers.items():
            a = lora[f"base_model.model.{name}.lora_A.weight"]
            layer.add_user_lora(a.shape[0], cfg["lora_alpha"])
            layer.user_A.copy_(a)
            layer.user_B.copy_(lora[f"base_model.model.{name}.lora_B.weight"])
            if router == "user":
                layer.router = UserRouter(1, gm.meta["groups"], gm.meta["top_k"])
            sd = {k: tensors[f"{name}.{k}"] for k in layer.router.state_dict()}
            layer.router.load_state_dict(sd)
    if router == "user":
        gm.state.user_ids = torch.zeros(1, dtype=torch.long)
    else:
        gm.state.user_emb = tensors["user_emb"]


def prepare_user(gm, store, fp, user, router: str, vector: np.ndarray | None) -> str:
    """Set the group model up to answer for `user`; returns how ("adapter", "new", "population")."""
    gm.reset()
    if store is not None and store.exists(user.name):
        apply_user(gm, store.verify(user.name, fp), router)
        return "adapter"
    if user.history and vector is not None:
        gm.state.user_emb = gm.embed(vector)  # new user: stage-2 routing, no training
        return "new"
    gm.state.active = False
    return "population"


def train_proper_users(run, router: str = "input", users=None, backbone=None) -> dict:
    """Stage 3 for `users` (default: the test users); resumable like OPPU's stage."""
    check_router(router)
    s = settings(run)
    users = run.split.test if users is None else users
    backbone = backbone or run.base()
    fp = groups_fingerprint(run, backbone.fingerprint())  # base + stage-2 weights
    store = run.store(f"proper-{router}")
    todo = [
        u
        for u in users
        if u.history
        and not (store.exists(u.name) and store.manifest(u.name).base_fingerprint == fp)
    ]
    vectors = history_vectors(run, todo, backbone) if todo else []
    gm = load_groups(run, backbone)
    try:
        for user, vec in tqdm(
            list(zip(todo, vectors, strict=True)), desc=f"PROPER users ({router})", unit="user"
        ):
            gm.reset()
            losses = fit_user(run, gm, user, vec, router)
            store.save(
                user.name,
                lambda d: write_user(d, gm, router, s.user_alpha),
                Manifest(
                    name=user.name,
                    stage=f"user/proper-{router}",
                    task=run.task.name,
                    base_fingerprint=fp,
                    extra={
                        "items": len(user.history),
                        "loss_first": losses[0],
                        "loss_last": losses[-1],
                    },
                ),
            )
    finally:
        gm.reset()
        uninstall_mixture(backbone.model)
    empty = sum(1 for u in users if not u.history)
    console.print(
        f"[bold]stage 3[/] PROPER ({ROUTERS[router]}): trained {len(todo)}, "
        f"resumed {len(users) - len(todo) - empty}, no history {empty}"
    )
    return {"trained": len(todo), "resumed": len(users) - len(todo) - empty, "empty": empty}


def load_user_model(run, backbone, user, router: str):
    """`backbone.model` with the group mixture and this user's stored PROPER adapter."""
    fp = groups_fingerprint(run, backbone.fingerprint())
    gm = load_groups(run, backbone)
    apply_user(gm, run.store(f"proper-{check_router(router)}").verify(user.name, fp), router)
    return backbone.model
