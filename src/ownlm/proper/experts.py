"""PROPER's group level as a loadable model: G LoRA experts on the FFN layers of the
population-merged base and a user-aware router, how they are stored, and how a user is
placed on them.

"Merge and freeze" (PROPER Sec. 3): a mixture whose gates depend on the input cannot be
folded into static weights, so here it means *freeze*: stage 3 loads the experts and the
router as a fixed part of its base and learns only residuals. The experts are stored as
standard PEFT LoRA directories `group:<g>` (each one alone is a valid LoRA of the base),
the routers, user embeddings and the projection as `router` (safetensors + json).
How users are embedded and routed to the experts is `ownlm.proper.routing`.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ownlm.adapters.mixture import (
    TokenUserRouter,
    UserRouter,
    install_mixture,
    mixture_layers,
    uninstall_mixture,
)
from ownlm.adapters.peft_io import read_lora, write_peft_lora
from ownlm.backbone.device import model_device
from ownlm.config import ProperSettings
from ownlm.errors import NotFoundError
from ownlm.proper.assign import (
    GroupAnswers,
    answer_gates,
    group_prior,
    set_user_gates,
    user_gates_from_history,
)
from ownlm.proper.routing import router_factory
from ownlm.store import Manifest

if TYPE_CHECKING:
    from ownlm.run import Run

ROUTER = "router"  # the store name of the routers, user table and projection


def proper_settings(run: Run) -> ProperSettings:
    """The run's PROPER settings; the defaults when its config has no `proper` section."""
    return getattr(run.cfg, "proper", None) or ProperSettings()


def targets_for(backbone, s: ProperSettings) -> list[str]:  # default: the FFN's layers
    return list(s.targets or backbone.ffn_targets)


def save_groups(run: Run, layers, tensors, meta, base_fp, losses, validation=None) -> None:
    """Write the experts (`group:<g>`, PEFT) and the routing state `tensors` (`router`:
    router.safetensors + router.json `meta`) to the store; the router's manifest keeps
    the stage's `validation` record (`train.validation`)."""
    store = run.store()
    for name in store.names("group"):  # experts of an earlier, larger G
        if int(name.split(":")[1]) >= meta["groups"]:
            store.delete(name)
    for g in range(meta["groups"]):
        weights = {name: (layer.A[g], layer.B[g]) for name, layer in layers.items()}
        store.save(
            f"group:{g}",
            lambda d, w=weights: write_peft_lora(d, w, meta["alpha"], str(run.base_dir)),
            Manifest(name="", stage="group", task=run.task.name, base_fingerprint=base_fp),
        )

    def write(d):
        d.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(d / "router.safetensors"))
        (d / "router.json").write_text(json.dumps(meta, indent=2))

    manifest = Manifest(
        name="",
        stage="group-router",
        task=run.task.name,
        base_fingerprint=base_fp,
        extra={"loss_first": losses[0], "loss_last": losses[-1], "validation": validation},
    )
    with run.edit_record(write=False):  # a forget runs wholly before this, or after
        run.check_forgotten_since("stage 2's router (it names every train user)")
        store.save(ROUTER, write, manifest)


def require_groups(run: Run):
    """The run's adapter store, once stage 2 is there; else a NotFoundError naming the fix."""
    store = run.store()
    if not store.exists(ROUTER):
        raise NotFoundError(
            f"run {run.dir} has no PROPER group stage (no {store.path(ROUTER)}); train it "
            f"first: ownlm train -c CONFIG --stages groups,users --variants "
            "proper-input,proper-user"
        )
    return store


def stage2_users(store) -> list[str]:
    """The train users stage 2 learned an embedding for ([] without stage 2)."""
    meta = store.path(ROUTER) / "router.json"
    return json.loads(meta.read_text()).get("users", []) if meta.exists() else []


def _sha_digest(store, names: list[str]) -> str:
    shas = [store.manifest(n).sha256 for n in names]
    return hashlib.sha256(json.dumps(shas, sort_keys=True).encode()).hexdigest()


def stage2_digest(store) -> str:
    """8 hex digits naming the stored stage-2 weights (experts and router). After
    `forget_stage2_user` rewrote the router's user table, the digest it had before is kept
    (pinned in the router's manifest, with the experts it stood for): stage-3 adapters
    never read other users' rows, so they stay valid; retraining stage 2 unpins it."""
    groups = store.names("group")
    pin = store.manifest(ROUTER).extra.get("stage3_digest")
    if pin and pin.get("groups") == _sha_digest(store, groups):
        return pin["digest"]
    return _sha_digest(store, [ROUTER, *groups])[:8]


def groups_fingerprint(run: Run, base_fp: str) -> str:
    """What stage-3 adapters depend on: the merged base and the stored stage-2 weights.
    Stage-3 manifests carry it, so retraining stage 2 invalidates the user adapters."""
    return store_fingerprint(require_groups(run), base_fp)


def store_fingerprint(store, base_fp: str) -> str:
    """`groups_fingerprint` of the stage 2 held in `store` (the run's "oppu" store)."""
    return f"{base_fp}+{stage2_digest(store)}"


def forget_stage2_user(store, user_id: str) -> bool:
    """Take `user_id` out of the stored stage-2 router: their id from router.json, their
    row of the learned user table and of the stored history vectors. The experts and the
    routers' weights, trained on their history among others', stay (only retraining stage
    2 without them takes that out). True if stage 2 knew them."""
    if user_id not in stage2_users(store):
        return False
    rdir = store.path(ROUTER)
    if store.exists(ROUTER):
        store.verify(ROUTER)  # never re-stamp weights that are already corrupt
    meta = json.loads((rdir / "router.json").read_text())
    keep = [i for i, u in enumerate(meta["users"]) if u != user_id]
    meta["users"] = [meta["users"][i] for i in keep]
    tensors = None
    if (rdir / "router.safetensors").exists():
        tensors = load_file(str(rdir / "router.safetensors"))
        for key in ("user_table", "train_vectors", "user_gates"):  # (U_train, ...) rows
            if key in tensors:
                tensors[key] = tensors[key][keep].contiguous()
        if "group_prior" in tensors:  # the group sizes without them
            assign = tensors["user_gates"].argmax(-1)
            tensors["group_prior"] = group_prior(assign, tensors["group_prior"].shape[0])

    def write(d):
        d.mkdir(parents=True, exist_ok=True)
        if tensors is not None:
            save_file(tensors, str(d / "router.safetensors"))
        (d / "router.json").write_text(json.dumps(meta, indent=2))

    if not store.exists(ROUTER):  # no manifest (a damaged store): still drop their name
        _write_in_place(rdir, write)
        return True
    old = store.manifest(ROUTER)
    pin = {"digest": stage2_digest(store), "groups": _sha_digest(store, store.names("group"))}
    extra = {**old.extra, "stage3_digest": pin}
    store.save(ROUTER, write, Manifest("", old.stage, old.task, old.base_fingerprint, extra=extra))
    return True


def _write_in_place(directory, write) -> None:
    """`write(tmp)`, then each file it wrote replaces its namesake in `directory`."""
    tmp = directory.parent / f".tmp-{directory.name}-forget"
    write(tmp)
    for f in tmp.iterdir():
        os.replace(f, directory / f.name)
    tmp.rmdir()


# -- the loaded model ----------------------------------------------------------------------
@dataclass
class GroupModel:
    """The frozen stage-2 mixture installed on a backbone, plus what routes users to it.
    `assignment` 'user': one gate vector per user, shared by every layer (`user_table`
    holds the train users' gates (U_train, G), `prior` the groups' sizes); 'token' (runs
    trained before it, or by choice): per-layer token routers on a user embedding."""

    backbone: object
    state: object
    meta: dict
    user_table: torch.Tensor  # (U_train, d_u) embeddings, or (U_train, G) gates ('user')
    mu: torch.Tensor | None  # (D,)
    proj: torch.Tensor | None  # (D, d_u)
    routers: dict  # stage-2 router state per layer, to restore after each user
    train_vectors: torch.Tensor | None = None  # (U_train, D), stored with new_user='neighbours'
    prior: torch.Tensor | None = None  # (G,) 'user': smoothed group sizes of the train users
    centre: torch.Tensor | None = None  # (G,) 'user': the experts' mean train-item loss
    answers: GroupAnswers | None = None  # 'user', route_new 'answers': the groups' answers

    @property
    def layers(self):
        return mixture_layers(self.backbone.model)

    @property
    def by_user(self) -> bool:
        """True when a user is in a group ('user' assignment), not routed per token."""
        return self.meta.get("assignment", "token") == "user"

    def embed(self, vector: np.ndarray) -> torch.Tensor:
        """(1, d_u) the embedding of a user stage 2 has no row for, from their history
        vector: its projection (as the table was initialised), or with
        new_user='neighbours' the mean learned row of the most cosine-similar train users."""
        v = torch.from_numpy(vector).to(self.mu.device)
        if self.meta.get("new_user") != "neighbours" or self.train_vectors is None:
            return ((v - self.mu) @ self.proj)[None]
        sims = torch.nn.functional.cosine_similarity(self.train_vectors, v[None], dim=-1)
        k = max(1, min(int(self.meta.get("neighbours", 3)), len(sims)))
        return self.user_table[sims.topk(k).indices].mean(0, keepdim=True)

    def train_gates(self, user_id: str) -> torch.Tensor | None:
        """(G,) a stage-2 train user's gates ('user' assignment), None for another user."""
        users = self.meta.get("users", [])
        return self.user_table[users.index(user_id)] if user_id in users else None

    def history_gates(self, pairs, items=()) -> torch.Tensor:
        """(G,) the untrained routing of a user ('user' assignment), the groups' sizes as
        prior: the posterior over groups of their history `items` under the groups'
        answers (`proper.route_new: answers`, label tasks by default), else of their
        history `pairs`' likelihood under each expert (the stage-2 E-step)."""
        if self.answers is not None and items:
            return answer_gates(self.answers, list(items), self.prior)
        return user_gates_from_history(
            self.backbone, self.state, pairs, self.meta["groups"], self.prior, self.centre
        )

    def route(self, gates: torch.Tensor) -> None:
        """'user' assignment: every layer mixes the experts with these gates (G,)."""
        set_user_gates(next(iter(self.layers.values())).router, gates)

    def reset(self) -> None:
        """Back to stage 2: stage-2 routers, no user LoRA, no user, mixture on."""
        m = self.meta
        layers = self.layers
        shared = None
        if self.by_user:  # one router for every layer, at the prior until `route`
            device = next(iter(layers.values())).A.device
            shared = UserRouter(1, m["groups"]).to(device).requires_grad_(False)
            set_user_gates(shared, self.prior)
        for name, layer in layers.items():
            if shared is not None:
                layer.router = shared
            else:
                if not isinstance(layer.router, TokenUserRouter):
                    make = router_factory(m["user_dim"], m["groups"], m["top_k"])
                    layer.router = make(layer.base)
                layer.router.load_state_dict(self.routers[name])
                layer.router.requires_grad_(False)
            layer.drop_user_lora()
        self.state.user_emb = self.state.user_ids = None
        self.state.active = True

    def close(self) -> None:
        """Take the mixture off: the backbone is the bare merged base again."""
        self.reset()
        uninstall_mixture(self.backbone.model)


def load_groups(run: Run, backbone) -> GroupModel:
    """Install the stored stage-2 experts and routers (frozen) on `backbone.model`."""
    store = require_groups(run)
    fp = backbone.fingerprint()
    rdir = store.verify(ROUTER, fp)
    meta = json.loads((rdir / "router.json").read_text())
    meta.setdefault("assignment", "token")  # stage 2 of runs before 'user' existed
    tensors = load_file(str(rdir / "router.safetensors"), device=str(model_device(backbone.model)))
    backbone.model.requires_grad_(False)
    by_user = meta["assignment"] == "user"
    make = (
        (lambda lin: UserRouter(1, meta["groups"]))
        if by_user
        else router_factory(meta["user_dim"], meta["groups"], meta["top_k"])
    )
    state = install_mixture(
        backbone.model, meta["targets"], meta["groups"], meta["r"], meta["alpha"], make
    )
    layers = mixture_layers(backbone.model)
    experts = [read_lora(store.verify(f"group:{g}", fp)) for g in range(meta["groups"])]
    routers = {}
    with torch.no_grad():
        for name, layer in layers.items():
            for g, w in enumerate(experts):
                layer.A[g].copy_(w[name][0])
                layer.B[g].copy_(w[name][1])
            if not by_user:
                sd = {k: tensors[f"{name}.{k}"] for k in layer.router.state_dict()}
                layer.router.load_state_dict(sd)
                routers[name] = {k: v.clone() for k, v in sd.items()}
    backbone.model.requires_grad_(False)
    gm = GroupModel(
        backbone,
        state,
        meta,
        tensors["user_gates" if by_user else "user_table"],
        tensors.get("proj_mean"),
        tensors.get("proj_matrix"),
        routers,
        tensors.get("train_vectors"),
        tensors.get("group_prior"),
        tensors.get("expert_centre"),
    )
    if by_user and route_new(run) == "answers":
        groups_of = {u: int(g.argmax()) for u, g in zip(meta["users"], gm.user_table, strict=True)}
        gm.answers = GroupAnswers(run.task, run.dataset.users, groups_of, meta["groups"])
    gm.reset()
    return gm


def route_new(run: Run) -> str:
    """How a user stage 2 did not train on joins a group ('user' assignment), with
    `proper.route_new: auto` resolved: 'answers' for label tasks, else 'likelihood'."""
    how = proper_settings(run).route_new
    if how == "auto":
        return "answers" if run.task.labels else "likelihood"
    return how


@contextmanager
def group_model(run: Run, backbone):
    """`load_groups` for the length of a block; the backbone is bare again after it."""
    gm = load_groups(run, backbone)
    try:
        yield gm
    finally:
        gm.close()
