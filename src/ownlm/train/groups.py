"""Stage 2 (PROPER's group level): G LoRA experts on the FFN layers of the population-merged
base and a user-aware router, trained together on all train users' histories.

Flow: load run.base() (stage 1 merged, frozen) -> embed each train user's history
(all-MiniLM-L6-v2 mean of item embeddings, or the backbone's mean hidden state as a
fallback) -> project to `user_dim` (standardised PCA of the train users) to initialise a
learned user embedding -> train experts + routers + user embeddings with the LM loss
plus the switch load-balancing term -> save.

"Merge and freeze" (PROPER Sec. 3): a mixture whose gates depend on the input cannot be
folded into static weights, so here it means *freeze*: stage 3 loads the experts and the
router as a fixed part of its base and learns only residuals. The experts are stored as
standard PEFT LoRA directories `group:<g>` (each one alone is a valid LoRA of the base),
the routers, user embeddings and the projection as `router` (safetensors + json).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from rich.console import Console
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ownlm.adapters.export import write_peft_lora
from ownlm.adapters.mixture import (
    FFN_TARGETS,
    TokenUserRouter,
    balance_loss,
    group_loss,
    group_summary,
    install_mixture,
    mixture_layers,
    routing,
    uninstall_mixture,
    usage,
    user_gates,
)
from ownlm.errors import ConfigError, StoreError
from ownlm.personal import training_pairs, user_context
from ownlm.store import Manifest

console = Console(stderr=True)


@dataclass
class ProperSettings:
    """PROPER's group and user stages (Zhang et al. 2025). Defaults sized for the demo."""

    groups: int = field(default=4, metadata={"help": "number of group LoRA experts G"})
    r: int = field(default=8, metadata={"help": "rank of each group expert"})
    alpha: float = field(default=8.0, metadata={"help": "group experts' LoRA alpha"})
    targets: list[str] | None = field(
        default=None,
        metadata={
            "help": "modules carrying the experts; empty = FFN (gate/up/down_proj for Llama, intermediate/output dense for MiniLM)"
        },
    )
    user_dim: int = field(default=16, metadata={"help": "size of the learned user embedding"})
    top_k: int = field(default=0, metadata={"help": "experts per token (0 = dense gating)"})
    balance: float = field(
        default=0.1, metadata={"help": "weight of the switch load-balancing term (stage 2)"}
    )
    diversity: float = field(
        default=0.5,
        metadata={
            "help": "weight of the user-group term (stage 2): minus the user/expert mutual "
            "information, so each user picks a group and the groups stay diverse"
        },
    )
    lr: float = field(default=5e-4, metadata={"help": "stage-2 learning rate (AdamW)"})
    epochs: float = field(default=2.0, metadata={"help": "stage-2 passes over all train pairs"})
    batch_size: int = field(default=16, metadata={"help": "pairs per optimiser step"})
    user_r: int = field(default=8, metadata={"help": "rank r_u of each user's residual LoRA"})
    user_alpha: float = field(default=8.0, metadata={"help": "alpha of the user LoRA"})
    user_lr: float = field(default=1e-4, metadata={"help": "stage-3 learning rate (AdamW)"})
    user_epochs: float = field(default=2.0, metadata={"help": "stage-3 passes per user"})
    new_user: str = field(
        default="projection",
        metadata={
            "help": "how a user without a stage-2 row gets their embedding: 'projection' (PCA "
            "of their history embedding, as the table was initialised) or 'neighbours' (mean "
            "learned embedding of the train users with the most similar histories)"
        },
    )
    neighbours: int = field(default=3, metadata={"help": "train users averaged by 'neighbours'"})
    router_lr: float = field(
        default=5e-2,
        metadata={
            "help": "learning rate of the routing parameters: routers and user embeddings "
            "(stage 2), the user's embedding or gate logits (stage 3; a sparse user takes "
            "few steps, which must be enough to move them to another group)"
        },
    )


NEW_USER = ("projection", "neighbours")


def check_new_user(mode: str) -> str:
    if mode not in NEW_USER:
        raise ConfigError(f"proper.new_user must be one of {list(NEW_USER)}, got {mode!r}")
    return mode


def settings(run) -> ProperSettings:
    return getattr(run.cfg, "proper", None) or ProperSettings()


def targets_for(backbone, s: ProperSettings) -> list[str]:
    return list(s.targets or FFN_TARGETS[backbone.kind])


# -- user vectors --------------------------------------------------------------------
def history_vectors(run, users, backbone=None) -> np.ndarray:
    """(N, D) one vector per user: the mean all-MiniLM-L6-v2 embedding of their history
    items, or, if that encoder cannot be loaded, the backbone's mean hidden state."""
    texts = [[run.task.item_text(it) for it in u.history] or [""] for u in users]
    flat = [t for ts in texts for t in ts]
    try:
        from ownlm.retrieval.dense import embed_texts

        emb = embed_texts(flat)
    except (ImportError, OSError) as e:
        console.print(f"[yellow]MiniLM unavailable ({e}); using backbone hidden states[/]")
        emb = _backbone_embed(backbone or run.base(), flat)
    out, i = [], 0
    for ts in texts:
        out.append(emb[i : i + len(ts)].mean(0))
        i += len(ts)
    return np.stack(out).astype(np.float32)


@torch.no_grad()
def _backbone_embed(backbone, texts: list[str]) -> np.ndarray:
    enc = backbone.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    hidden = backbone.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    h = hidden.hidden_states[-1]  # (N, T, d)
    m = mask[..., None].float()
    return ((h * m).sum(1) / m.sum(1).clamp_min(1)).numpy()


def fit_projection(vectors: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), P (D, dim)): standardised PCA, so projected users are ~N(0, 1)."""
    mu = vectors.mean(0)
    _, sv, vt = np.linalg.svd(vectors - mu, full_matrices=False)
    k = min(dim, vt.shape[0])
    std = sv[:k] / math.sqrt(max(1, len(vectors) - 1))
    p = np.zeros((vectors.shape[1], dim), dtype=np.float32)
    p[:, :k] = vt[:k].T / np.maximum(std, 1e-6)
    return mu.astype(np.float32), p


# -- the shared training loop ----------------------------------------------------------
def fit_mixture(backbone, state, pairs, groups, epochs, batch_size, seed, user_emb, losses=None):
    """AdamW over the param `groups` (dicts with "params" and "lr") on (prompt, target,
    user_row) triples. `user_emb(rows)` gives the batch's (B, d_u) embeddings (None for the
    user-only router); `losses` maps a routing term to its weight ("balance": switch
    load balancing over tokens, "diversity": `group_loss` over the batch's users).
    Returns the step losses (LM loss plus the weighted terms)."""
    weights = {k: w for k, w in (losses or {}).items() if w > 0}
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    rng = random.Random(seed)
    steps = max(1, math.ceil(len(pairs) * epochs / batch_size))
    order: list[int] = []
    history = []
    backbone.model.train()
    for _ in tqdm(range(steps), leave=False, disable=len(pairs) < 200, desc="mixture"):
        if len(order) < batch_size:
            fresh = list(range(len(pairs)))
            rng.shuffle(fresh)
            order.extend(fresh)
        batch = [pairs[i] for i in order[: min(batch_size, len(pairs))]]
        del order[: len(batch)]
        rows = torch.tensor([b[2] for b in batch])
        emb = user_emb(rows) if user_emb else None
        with routing(state, user_emb=emb, user_ids=state.user_ids, record=bool(weights)):
            loss = backbone.loss(backbone.model, [b[0] for b in batch], [b[1] for b in batch])
            if "balance" in weights:
                loss = loss + weights["balance"] * balance_loss(state.gates)
            if "diversity" in weights:
                loss = loss + weights["diversity"] * group_loss(state.gates, rows)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        history.append(loss.item())
    backbone.model.eval()
    return history


# -- stage 2 ---------------------------------------------------------------------------
def train_groups(run, backbone=None) -> dict:
    """Train and store the group experts and the user-aware router. Returns statistics."""
    cfg, s = run.cfg, settings(run)
    check_new_user(s.new_user)
    backbone = backbone or run.base()
    base_fp = backbone.fingerprint()
    users = [u for u in run.split.train if u.history]
    vectors = history_vectors(run, users, backbone)
    mu, proj = fit_projection(vectors, s.user_dim)
    table = torch.nn.Parameter(torch.from_numpy((vectors - mu) @ proj))  # (U, d_u)
    pairs = []
    for row, u in enumerate(users):
        ctx = user_context(run.task, u)
        pairs += [
            (p, t, row) for p, t in training_pairs(run.task, ctx, cfg.retrieval_k, cfg.profile)
        ]
    backbone.model.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    state = install_mixture(
        backbone.model,
        targets_for(backbone, s),
        s.groups,
        s.r,
        s.alpha,
        lambda lin: TokenUserRouter(lin.in_features, s.user_dim, s.groups, s.top_k),
    )
    layers = mixture_layers(backbone.model)
    experts = [p for layer in layers.values() for p in (layer.A, layer.B)]
    routers = [table] + [p for layer in layers.values() for p in layer.router.parameters()]
    console.print(
        f"[bold]stage 2[/] {s.groups} group experts (r={s.r}) on {len(layers)} modules, "
        f"{len(pairs)} pairs from {len(users)} train users"
    )
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
        "groups": s.groups,
        "r": s.r,
        "alpha": s.alpha,
        "user_dim": s.user_dim,
        "top_k": s.top_k,
        "targets": targets_for(backbone, s),
        "layers": list(layers),
        "users": [u.user_id for u in users],
        "base_fingerprint": base_fp,
        "new_user": s.new_user,
        "neighbours": s.neighbours,
    }
    save_groups(run, layers, table, mu, proj, meta, base_fp, losses, vectors)
    uninstall_mixture(backbone.model)
    stats = {"pairs": len(pairs), "loss_first": losses[0], "loss_last": losses[-1], **used}
    console.print(
        f"stage 2 done: loss {losses[0]:.3f} -> {losses[-1]:.3f}; top expert share of "
        f"tokens {used['tokens']}, of users {used['users']}; users' mean top gate "
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


def save_groups(run, layers, table, mu, proj, meta, base_fp, losses, vectors) -> None:
    store = run.store()
    for g in range(meta["groups"]):
        weights = {name: (layer.A[g], layer.B[g]) for name, layer in layers.items()}
        store.save(
            f"group:{g}",
            lambda d, w=weights: write_peft_lora(d, w, meta["alpha"], str(run.base_dir)),
            Manifest(name="", stage="group", task=run.task.name, base_fingerprint=base_fp),
        )
    tensors = {
        f"{n}.{k}": v.detach().contiguous()
        for n, layer in layers.items()
        for k, v in layer.router.state_dict().items()
    }
    tensors.update(
        user_table=table.detach().contiguous(),
        proj_mean=torch.from_numpy(mu),
        proj_matrix=torch.from_numpy(proj),
    )
    if meta["new_user"] == "neighbours":  # train users' history vectors, to find neighbours
        tensors["train_vectors"] = torch.from_numpy(vectors).contiguous()

    def write(d):
        d.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(d / "router.safetensors"))
        (d / "router.json").write_text(json.dumps(meta, indent=2))

    store.save(
        "router",
        write,
        Manifest(
            name="",
            stage="group-router",
            task=run.task.name,
            base_fingerprint=base_fp,
            extra={"loss_first": losses[0], "loss_last": losses[-1]},
        ),
    )


def require_groups(run):
    """The run's adapter store, once stage 2 is there; else a StoreError naming the fix."""
    store = run.store()
    if not store.exists("router"):
        raise StoreError(
            f"run {run.dir} has no PROPER group stage (no {store.path('router')}); train it "
            f"first: ownlm train -c CONFIG --stages groups,users --variants "
            "proper-input,proper-user"
        )
    return store


def groups_fingerprint(run, base_fp: str) -> str:
    """What stage-3 adapters depend on: the merged base and the stored stage-2 weights.
    Stage-3 manifests carry it, so retraining stage 2 invalidates the user adapters."""
    store = require_groups(run)
    names = ["router", *store.names("group")]
    digest = hashlib.sha256(
        json.dumps([store.manifest(n).sha256 for n in names], sort_keys=True).encode()
    )
    return f"{base_fp}+{digest.hexdigest()[:8]}"


# -- loading (stage 3, evaluation, new users) ----------------------------------------------
@dataclass
class GroupModel:
    """The frozen stage-2 mixture installed on a backbone, plus what routes users to it."""

    backbone: object
    state: object
    meta: dict
    user_table: torch.Tensor  # (U_train, d_u)
    mu: torch.Tensor  # (D,)
    proj: torch.Tensor  # (D, d_u)
    routers: dict  # stage-2 router state per layer, to restore after each user
    train_vectors: torch.Tensor | None = None  # (U_train, D), stored with new_user='neighbours'

    @property
    def layers(self):
        return mixture_layers(self.backbone.model)

    def embed(self, vector: np.ndarray) -> torch.Tensor:
        """(1, d_u) the embedding of a user stage 2 has no row for, from their history
        vector: its projection (as the table was initialised), or with
        new_user='neighbours' the mean learned row of the most cosine-similar train users."""
        v = torch.from_numpy(vector)
        if self.meta.get("new_user") != "neighbours" or self.train_vectors is None:
            return ((v - self.mu) @ self.proj)[None]
        sims = torch.nn.functional.cosine_similarity(self.train_vectors, v[None], dim=-1)
        k = max(1, min(int(self.meta.get("neighbours", 3)), len(sims)))
        return self.user_table[sims.topk(k).indices].mean(0, keepdim=True)

    def reset(self) -> None:
        """Back to stage 2: stage-2 routers, no user LoRA, no user, mixture on."""
        for name, layer in self.layers.items():
            if not isinstance(layer.router, TokenUserRouter):
                layer.router = self._router(layer)
            layer.router.load_state_dict(self.routers[name])
            layer.router.requires_grad_(False)
            layer.drop_user_lora()
        self.state.user_emb = self.state.user_ids = None
        self.state.active = True

    def _router(self, layer):
        m = self.meta
        return TokenUserRouter(layer.base.in_features, m["user_dim"], m["groups"], m["top_k"])


def load_groups(run, backbone) -> GroupModel:
    """Install the stored stage-2 experts and routers (frozen) on `backbone.model`."""
    store = require_groups(run)
    fp = backbone.fingerprint()
    rdir = store.verify("router", fp)
    meta = json.loads((rdir / "router.json").read_text())
    tensors = load_file(str(rdir / "router.safetensors"))
    backbone.model.requires_grad_(False)
    state = install_mixture(
        backbone.model,
        meta["targets"],
        meta["groups"],
        meta["r"],
        meta["alpha"],
        lambda lin: TokenUserRouter(
            lin.in_features, meta["user_dim"], meta["groups"], meta["top_k"]
        ),
    )
    layers = mixture_layers(backbone.model)
    experts = [
        load_file(str(store.verify(f"group:{g}", fp) / "adapter_model.safetensors"))
        for g in range(meta["groups"])
    ]
    routers = {}
    with torch.no_grad():
        for name, layer in layers.items():
            for g, w in enumerate(experts):
                layer.A[g].copy_(w[f"base_model.model.{name}.lora_A.weight"])
                layer.B[g].copy_(w[f"base_model.model.{name}.lora_B.weight"])
            sd = {k: tensors[f"{name}.{k}"] for k in layer.router.state_dict()}
            layer.router.load_state_dict(sd)
            routers[name] = {k: v.clone() for k, v in sd.items()}
    backbone.model.requires_grad_(False)
    return GroupModel(
        backbone,
        state,
        meta,
        tensors["user_table"],
        tensors["proj_mean"],
        tensors["proj_matrix"],
        routers,
        tensors.get("train_vectors"),
    )
