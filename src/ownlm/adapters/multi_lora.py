"""Many users' LoRAs trained in one batch: a trainable multi-user LoRA layer (mLoRA's
idea, Ye et al. 2023, in plain PyTorch). `batched.py` is its inference-only sibling.

Each wrapped Linear keeps its frozen base W and, for every user k of the group, that
user's own LoRA parameters, separate `nn.Parameter`s so that each user has their own
optimiser state, step count and gradient clipping:

    A[k]  (r, in)    lora_A, as PEFT keeps it
    B[k]  (out, r)   lora_B

Each batch row carries its user (`RowUsers`, shared by every wrapped layer). Per row b,

    y_b = W x_b + scaling * B[k_b] (A[k_b] dropout(x_b))

computed for the whole batch with two batched matmuls over the gathered users, so the
frozen base runs once for all users' rows. Only the users that have rows in the batch
are stacked: a user without rows gets no gradient at all (None, not zeros), so an
optimiser step leaves them exactly where they are.

Initial weights are PEFT's own: `peft_init` injects a fresh PEFT LoRA with the user's
seed, exactly as the sequential stage does (`lora.inject`), copies it and unloads it.
`copy_into_peft` puts trained weights back into a PEFT model, so that users are saved
by PEFT's `save_pretrained` in the ecosystem's format.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from ownlm.adapters.layers import layer_dims, model_type
from ownlm.adapters.lora import detach, inject
from ownlm.config import LoraSettings
from ownlm.errors import ConfigError

Weights = dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (A (r, in), B (out, r))


@dataclass
class LoraInit:
    """One user's fresh LoRA as PEFT drew it, keyed by module name in the bare model."""

    weights: Weights
    scaling: dict[str, float]  # PEFT's per-module scaling (alpha / r, or rsLoRA's)
    dropout: float


def peft_lora_layers(peft_model) -> dict[str, LoraLayer]:
    """The LoRA-wrapped modules of a PEFT model, by their name in the bare model."""
    adapter = peft_model.active_adapter
    bare = peft_model.base_model.model
    return {
        name: module
        for name, module in bare.named_modules()
        if isinstance(module, LoraLayer) and adapter in module.lora_A
    }


def peft_init(backbone, s: LoraSettings, seed: int) -> LoraInit:
    """The LoRA `inject(backbone, s, seed)` would give, copied out; the base is left bare."""
    if getattr(backbone, "modules_to_save", ()):
        raise ConfigError(
            f"backbone {backbone.name!r} trains modules_to_save {list(backbone.modules_to_save)} "
            "per user, which the multi-user LoRA layer cannot batch; train these users one "
            "at a time (train_users)"
        )
    model = inject(backbone, s, seed)
    try:
        adapter = model.active_adapter
        layers = peft_lora_layers(model)
        weights = {
            name: (
                m.lora_A[adapter].weight.detach().clone(),
                m.lora_B[adapter].weight.detach().clone(),
            )
            for name, m in layers.items()
        }
        scaling = {name: float(m.scaling[adapter]) for name, m in layers.items()}
    finally:
        detach(backbone, model)
    return LoraInit(weights, scaling, s.dropout)


@torch.no_grad()
def copy_into_peft(peft_model, weights: Weights) -> None:
    """Overwrite a PEFT model's LoRA weights with `weights` (same modules, same shapes)."""
    adapter = peft_model.active_adapter
    layers = peft_lora_layers(peft_model)
    if set(layers) != set(weights):
        missing, extra = sorted(set(layers) - set(weights)), sorted(set(weights) - set(layers))
        raise ConfigError(
            f"weights do not match the PEFT model's LoRA modules (missing {missing[:3]}, "
            f"unknown {extra[:3]}); build the PEFT model with the same LoRA settings"
        )
    for name, (a, b) in weights.items():
        layers[name].lora_A[adapter].weight.copy_(a)
        layers[name].lora_B[adapter].weight.copy_(b)


class RowUsers:
    """Whose rows the running batch holds, shared by every wrapped layer."""

    def __init__(self):
        self.users: list[int] = []  # the user slots present in the batch, each once
        self.idx: torch.Tensor | None = None  # (batch,) long: row -> position in `users`


class MultiLoraLinear(nn.Module):
    """A frozen Linear (or GPT-2's Conv1D: `adapters.layers`) plus one trainable LoRA per
    user slot."""

    def __init__(self, base: nn.Module, rows: RowUsers, scaling: float, dropout: float):
        super().__init__()
        self.base = base
        self.rows = rows
        self.scaling = scaling
        # one dropout for all users: each row draws its own mask anyway
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.A = nn.ParameterList()
        self.B = nn.ParameterList()

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """A new user slot from A (r, in) and B (out, r). The dtype is kept as given: PEFT
        keeps LoRA weights in float32 beside a half-precision base."""
        device = self.base.weight.device
        self.A.append(nn.Parameter(a.detach().to(device, copy=True)))
        self.B.append(nn.Parameter(b.detach().to(device, copy=True)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        rows = self.rows
        if rows.idx is None:
            return y
        A = torch.stack([self.A[k] for k in rows.users])  # (U, r, in)
        B = torch.stack([self.B[k] for k in rows.users])  # (U, out, r)
        h = self.dropout(x.to(A.dtype))  # the LoRA path runs in the LoRA's dtype, as PEFT's
        # (b, T, in) @ (b, in, r) -> (b, T, r) @ (b, r, out) -> (b, T, out)
        delta = torch.bmm(torch.bmm(h, A[rows.idx].transpose(1, 2)), B[rows.idx].transpose(1, 2))
        return (y + delta * self.scaling).to(y.dtype)


class MultiLora:
    """The multi-user LoRA layers installed in one HF model, addressed by user slot."""

    def __init__(self, model: nn.Module, layers: dict[str, MultiLoraLinear], rows: RowUsers):
        self.model = model
        self.layers = layers  # module name in the bare model (as PEFT keys it) -> layer
        self.rows = rows
        self.n_users = 0
        self._requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)  # the base is frozen: gradients reach only the LoRAs

    def add(self, weights: Weights) -> int:
        """A new user slot holding `weights` (every installed module); returns the slot."""
        if set(weights) != set(self.layers):
            raise ConfigError(
                f"a user's LoRA must cover exactly the installed modules {sorted(self.layers)[:2]}..., "
                f"got {sorted(weights)[:2]}...; draw it with peft_init on the same settings"
            )
        for name, layer in self.layers.items():
            layer.add(*weights[name])
        self.n_users += 1
        return self.n_users - 1

    def params(self, slot: int) -> list[nn.Parameter]:
        """One user's parameters in PEFT's order (per module: lora_A, then lora_B)."""
        return [p for layer in self.layers.values() for p in (layer.A[slot], layer.B[slot])]

    def weights(self, slot: int) -> Weights:
        return {n: (lay.A[slot].detach(), lay.B[slot].detach()) for n, lay in self.layers.items()}

    @contextmanager
    def use(self, row_users: list[int]):
        """Run the model with row i applying user slot row_users[i]'s LoRA."""
        bad = [k for k in row_users if not 0 <= k < self.n_users]
        if bad:
            raise ConfigError(
                f"user slots {bad[:3]} are not installed; slots are 0..{self.n_users - 1}"
            )
        users = sorted(set(row_users))
        pos = {k: i for i, k in enumerate(users)}
        device = next(iter(self.layers.values())).base.weight.device
        self.rows.users = users
        self.rows.idx = torch.tensor([pos[k] for k in row_users], device=device)
        try:
            yield
        finally:
            self.rows.users, self.rows.idx = [], None

    def uninstall(self) -> nn.Module:
        """Put every base module back and the parameters' requires_grad as they were."""
        for name, layer in self.layers.items():
            parent, _, child = name.rpartition(".")
            setattr(self.model.get_submodule(parent), child, layer.base)
        for n, p in self.model.named_parameters():
            p.requires_grad_(self._requires_grad[n])
        self.layers = {}
        return self.model


def install_multi_lora(model: nn.Module, scaling: dict[str, float], dropout: float) -> MultiLora:
    """Wrap every module named in `scaling` (names as in `LoraInit`) in place; no users
    yet (`MultiLora.add` adds them). Undo with `MultiLora.uninstall`."""
    rows = RowUsers()
    layers: dict[str, MultiLoraLinear] = {}
    for name, scale in scaling.items():
        try:
            base = model.get_submodule(name)
        except AttributeError as e:
            raise ConfigError(
                f"module {name!r} is not in {type(model).__name__}; draw the LoRA (peft_init) "
                "on this same model"
            ) from e
        if layer_dims(base) is None:
            raise ConfigError(
                f"module {name!r} of this {model_type(model)} model is a {type(base).__name__}, "
                "which the multi-user LoRA cannot batch; target nn.Linear or Conv1D layers "
                "(--set user.targets=...)"
            )
        layers[name] = MultiLoraLinear(base, rows, scale, dropout)
    handle = MultiLora(model, layers, rows)  # records requires_grad before wrapping
    for name, layer in layers.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
    return handle
