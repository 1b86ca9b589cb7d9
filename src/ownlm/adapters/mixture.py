"""Mixture of LoRA experts (PROPER's group level, Zhang et al. 2025, arXiv 2503.01303).

A `MixtureLoRALinear` wraps one target layer of any Hugging Face model (an nn.Linear, or
GPT-2's Conv1D: `adapters.layers`):

    y = base(x) + sum_g pi_g(x, u) * s * B_g A_g x  +  s_u * B_u A_u x

with G group experts (A: (G, r, in), B: (G, out, r), s = alpha / r), an optional user
residual LoRA (A_u: (r_u, in), B_u: (out, r_u)) and gates pi from a router:

* `TokenUserRouter` (stage 2, and the "input" variant of stage 3): gates =
  softmax(W [x_t ; e_u]) per token. The router's token input is the wrapped layer's own
  input x (for gate/up_proj the normed hidden state, for down_proj the FFN activation):
  this needs no hook into the backbone's forward and works for any architecture.
  Dense, or top-k (logits outside the k largest are masked before the softmax).
* `UserRouter` ("user" variant): gates = softmax(l_u), one learned logit vector per user
  and layer, independent of the input. This is what makes a user's delta one static LoRA
  (see `ownlm.adapters.export`).

Every wrapped layer holds its own router (as LoRAMoE); they share one `MixtureState`,
which carries what the current batch is about: its users' embeddings (B, d_u) or ids,
and, while training stage 2, the gates each layer produced (for the balance term).
Inputs are (B, T, in) as in every HF transformer; a (B, in) input is treated as T = 1.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ownlm.adapters.layers import adaptable_layers, layer_dims
from ownlm.errors import ConfigError


@dataclass
class MixtureState:
    """What every mixture layer of one model reads for the current batch."""

    user_emb: torch.Tensor | None = None  # (B or 1, d_u), for TokenUserRouter
    user_ids: torch.Tensor | None = None  # (B or 1,) long, rows of UserRouter's table
    record: bool = False  # keep each layer's gates for the balance term
    gates: list[torch.Tensor] = field(default_factory=list)  # (B, T, G) or (B, G) each
    names: list[str] = field(default_factory=list)  # the layer that produced each gates
    active: bool = True  # False: every layer is its bare base (the population model)


class TokenUserRouter(nn.Module):
    """gates = softmax(W [x ; e_u]) over G experts, per token; top_k=0 means dense."""

    def __init__(self, in_features: int, user_dim: int, groups: int, top_k: int = 0):
        super().__init__()
        if top_k < 0 or top_k > groups:
            raise ConfigError(f"top_k must be in [0, {groups}] (0 = dense), got {top_k}")
        self.proj = nn.Linear(in_features + user_dim, groups)
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)
        self.user_dim, self.top_k = user_dim, top_k

    def forward(self, x: torch.Tensor, state: MixtureState) -> torch.Tensor:
        b, t, _ = x.shape
        e = state.user_emb
        if e is None:
            if self.user_dim:
                raise ConfigError(
                    "the user-aware router needs the batch's user embeddings; wrap the "
                    "forward in `routing(state, user_emb=...)`"
                )
            e = x.new_zeros(1, 0)  # a router that ignores users (user_dim 0)
        w = self.proj.weight
        e = e.to(device=w.device, dtype=w.dtype)[:, None, :].expand(b, t, -1)  # (B, T, d_u)
        logits = self.proj(torch.cat([x.to(w.dtype), e], dim=-1))  # (B, T, G)
        return top_k_softmax(logits, self.top_k)


class UserRouter(nn.Module):
    """gates = softmax(l_u): one logit vector per user, independent of the input."""

    def __init__(self, n_users: int, groups: int, top_k: int = 0):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_users, groups))  # (U, G)
        self.top_k = top_k

    def forward(self, x: torch.Tensor, state: MixtureState) -> torch.Tensor:
        ids = state.user_ids
        if ids is None:
            ids = torch.zeros(1, dtype=torch.long, device=self.logits.device)
        return top_k_softmax(self.logits[ids.to(self.logits.device)], self.top_k).to(x.dtype)


def top_k_softmax(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Softmax over the last dim; with k > 0 only the k largest logits get mass."""
    if k and k < logits.shape[-1]:
        kth = logits.topk(k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits.softmax(-1)


class MixtureLoRALinear(nn.Module):
    def __init__(
        self,
        base: nn.Module,
        groups: int,
        r: int,
        alpha: float,
        router: nn.Module,
        state: MixtureState,
    ):
        super().__init__()
        if groups <= 0 or r <= 0:
            raise ConfigError(f"groups and rank must be positive integers, got {groups}, {r}")
        self.base = base
        self.in_features, self.out_features = layer_dims(base)
        self.groups, self.r, self.scaling = groups, r, alpha / r
        # Experts live beside the base weight but in float32 whatever the base's precision
        # (as PEFT keeps adapters of a bf16/fp16 base): they train and are saved exactly.
        dev = base.weight.device
        a = torch.empty(groups, r, self.in_features, dtype=torch.float32, device=dev)
        for g in range(groups):  # PEFT's LoRA init: kaiming A, zero B (delta starts at 0)
            nn.init.kaiming_uniform_(a[g], a=math.sqrt(5))
        self.A = nn.Parameter(a)  # (G, r, in)
        self.B = nn.Parameter(torch.zeros(groups, self.out_features, r, device=dev))
        self.router = router
        self.state = state  # shared, not a submodule
        self.name = ""  # the wrapped Linear's name in the bare model, set by install
        self.user_A: nn.Parameter | None = None  # (r_u, in)
        self.user_B: nn.Parameter | None = None  # (out, r_u)
        self.user_scaling = 0.0

    def add_user_lora(self, r_u: int, alpha_u: float) -> None:
        """A fresh residual LoRA (PEFT init) for one user's stage-3 training."""
        dev = self.A.device
        a = torch.empty(r_u, self.in_features, dtype=self.A.dtype, device=dev)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.user_A = nn.Parameter(a)
        self.user_B = nn.Parameter(
            torch.zeros(self.out_features, r_u, dtype=self.A.dtype, device=dev)
        )
        self.user_scaling = alpha_u / r_u

    def drop_user_lora(self) -> None:
        self.user_A = self.user_B = None
        self.user_scaling = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.state.active:
            return y
        flat = x.dim() == 2
        h = (x[:, None, :] if flat else x).to(self.A.dtype)  # (B, T, in), the experts' dtype
        gates = self.router(h, self.state)  # (B, T, G) or (B|1, G)
        if self.state.record:
            self.state.gates.append(gates)
            self.state.names.append(self.name)
        if gates.dim() == 2:
            gates = gates[:, None, :]  # (B|1, 1, G): the same mixture for every token
        b, t, _ = h.shape
        g, r = self.groups, self.r
        # all experts in two matmuls: x A_cat^T, gate, then B_cat (out, G*r)
        xa = (h @ self.A.reshape(g * r, -1).T).view(b, t, g, r)  # (B, T, G, r)
        xa = (xa * gates[..., None]).reshape(b, t, g * r)  # gate each expert's rank slice
        b_cat = self.B.permute(1, 0, 2).reshape(self.out_features, g * r)  # (out, G*r)
        delta = (xa @ b_cat.T) * self.scaling  # (B, T, out)
        if self.user_A is not None:
            delta = delta + (h @ self.user_A.T @ self.user_B.T) * self.user_scaling
        return y + (delta[:, 0] if flat else delta).to(y.dtype)


def matching_linears(model: nn.Module, targets) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every nn.Linear or Conv1D of `model` that the mixture wraps for
    `targets`; also what a plain LoRA must adapt to sit on exactly the experts' modules.
    A ConfigError naming the model type and `proper.targets` when none matches or one
    that matches is another kind of module (`adapters.layers`)."""
    return adaptable_layers(model, targets, "proper.targets")


def install_mixture(
    model: nn.Module,
    targets,
    groups: int,
    r: int,
    alpha: float,
    make_router,
    state: MixtureState | None = None,
) -> MixtureState:
    """Wrap every layer of `model` whose name matches a target (a suffix such as
    `gate_proj` or a regex such as `.*intermediate\\.dense`) in a MixtureLoRALinear.
    `make_router(layer)` builds each layer's router. Returns the shared state."""
    state = state or MixtureState()
    for name, lin in matching_linears(model, targets):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        router = make_router(lin).to(lin.weight.device)
        layer = MixtureLoRALinear(lin, groups, r, alpha, router, state)
        layer.name = name
        setattr(parent, child, layer)
    return state


def mixture_layers(model: nn.Module) -> dict[str, MixtureLoRALinear]:
    """{name of the wrapped Linear in the bare model: layer}."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MixtureLoRALinear)}


def uninstall_mixture(model: nn.Module) -> nn.Module:
    """Put every wrapped Linear back, unchanged: the model is the bare base again."""
    for name, layer in mixture_layers(model).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.base)
    return model


@contextmanager
def routing(
    state: MixtureState,
    user_emb: torch.Tensor | None = None,
    user_ids: torch.Tensor | None = None,
    record: bool = False,
):
    """Tell the mixture layers which users the batch inside this block belongs to."""
    saved = (state.user_emb, state.user_ids, state.record)
    state.user_emb, state.user_ids, state.record = user_emb, user_ids, record
    state.gates, state.names = [], []
    try:
        yield state
    finally:
        state.user_emb, state.user_ids, state.record = saved


def balance_loss(gates: list[torch.Tensor]) -> torch.Tensor:
    """Switch-Transformer load balancing (Fedus et al. 2022, eq. 4), averaged over layers:
    G * sum_g f_g P_g, with f_g the fraction of tokens whose top expert is g and P_g the
    mean gate of g. It is 1 when usage is uniform and G when one expert takes everything.
    Only P_g carries gradient (f_g is a count): the most used experts are pushed down."""
    terms = []
    for g in gates:
        p = g.reshape(-1, g.shape[-1])  # (N, G)
        f = torch.nn.functional.one_hot(p.argmax(-1), p.shape[-1]).float().mean(0)
        terms.append(p.shape[-1] * (f * p.mean(0)).sum())
    return torch.stack(terms).mean()


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy over the last dim, in nats."""
    return -(p * p.clamp_min(1e-9).log()).sum(-1)


def user_gates(gates: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
    """(U_batch, G): each distinct user's mean gate over their sequences' tokens.
    gates: (B, T, G) or (B, G); users: (B,) any ids (rows of the user table)."""
    per_seq = gates.mean(1) if gates.dim() == 3 else gates  # (B, G)
    _, inverse = torch.unique(users, return_inverse=True)  # (B,) in [0, U_batch)
    n = int(inverse.max()) + 1
    sums = per_seq.new_zeros(n, per_seq.shape[-1]).index_add(0, inverse.to(per_seq.device), per_seq)
    counts = torch.bincount(inverse, minlength=n).to(per_seq)  # (U_batch,)
    return sums / counts[:, None]


def group_summary(q: torch.Tensor) -> dict:
    """How users sit on experts, from their mean gates q (U, G): "users", each expert's
    share of the users whose largest gate it has; "user_top_gate", the users' mean largest
    gate (1/G: no groups, 1: hard groups)."""
    if len(q) == 0:
        return {"users": [0.0] * q.shape[-1], "user_top_gate": 0.0}
    shares = torch.bincount(q.argmax(-1), minlength=q.shape[-1]).float() / len(q)
    return {"users": shares.tolist(), "user_top_gate": float(q.max(-1).values.mean())}


def group_loss(gates: list[torch.Tensor], users: torch.Tensor) -> torch.Tensor:
    """Minus the mutual information between user and expert, over log G, averaged over
    layers: (mean_u H(q_u) - H(mean_u q_u)) / log G, with q_u the user's mean gate.

    In [-1, 1]; -1 when every user sits on one expert and the users cover the experts
    evenly. The first part makes each user pick a group (users become groups rather than
    every token spreading over every expert), the second keeps the groups diverse (no
    collapse onto one expert). Fully differentiable; the switch `balance_loss` only
    balances tokens, which uniform gates for everyone already satisfy."""
    terms = []
    for g in gates:
        if g.shape[-1] < 2:
            return g.new_zeros(())
        q = user_gates(g, users)  # (U_batch, G)
        terms.append((_entropy(q).mean() - _entropy(q.mean(0))) / math.log(q.shape[-1]))
    return torch.stack(terms).mean()


def usage(gates: list[torch.Tensor]) -> torch.Tensor:
    """(G,) fraction of tokens (over all layers) whose top expert is g."""
    tops = torch.cat([g.reshape(-1, g.shape[-1]).argmax(-1) for g in gates])
    return torch.bincount(tops, minlength=gates[0].shape[-1]).float() / tops.numel()


# -- per-row routing: K users trained in one batch (PROPER's batched user stage) ------------
class RowSlots:
    """Whose rows the running batch holds, shared by the per-row routers and residuals:
    `users` the user slots present (each once), `idx` (B,) row -> position in `users`."""

    def __init__(self):
        self.users: list[int] = []
        self.idx: torch.Tensor | None = None

    def set(self, row_users: list[int], device) -> None:
        """Row i belongs to user slot row_users[i]."""
        self.users = sorted(set(row_users))
        pos = {k: i for i, k in enumerate(self.users)}
        self.idx = torch.tensor([pos[k] for k in row_users], device=device)

    def clear(self) -> None:
        self.users, self.idx = [], None


class RowUserRouter(nn.Module):
    """Row b's gates are softmax(l_k) of its own user k: K users' `UserRouter`s (one
    logit row each, separate parameters, so each has its own optimiser state). Only the
    users present are stacked: an absent user gets no gradient (None, not zeros)."""

    def __init__(self, routers: list[UserRouter], slots: RowSlots):
        super().__init__()
        self.routers = nn.ModuleList(routers)
        self.slots, self.top_k = slots, routers[0].top_k

    def forward(self, x: torch.Tensor, state: MixtureState) -> torch.Tensor:
        logits = torch.cat([self.routers[k].logits[:1] for k in self.slots.users])  # (U, G)
        return top_k_softmax(logits[self.slots.idx], self.top_k).to(x.dtype)  # (B, G)


class RowTokenRouter(nn.Module):
    """Row b's gates are softmax(W_k x + b_k) per token of its own user k: K users'
    user-independent `TokenUserRouter`s (user_dim 0), applied with one batched matmul."""

    def __init__(self, routers: list[TokenUserRouter], slots: RowSlots):
        super().__init__()
        if any(r.user_dim for r in routers):
            raise ConfigError(
                "RowTokenRouter takes token routers without a user input (user_dim 0)"
            )
        self.routers = nn.ModuleList(routers)
        self.slots, self.top_k = slots, routers[0].top_k

    def forward(self, x: torch.Tensor, state: MixtureState) -> torch.Tensor:
        present = [self.routers[k].proj for k in self.slots.users]
        w = torch.stack([p.weight for p in present])[self.slots.idx]  # (B, G, in)
        b = torch.stack([p.bias for p in present])[self.slots.idx]  # (B, G)
        logits = torch.bmm(x.to(w.dtype), w.transpose(1, 2)) + b[:, None, :]  # (B, T, G)
        return top_k_softmax(logits, self.top_k)
