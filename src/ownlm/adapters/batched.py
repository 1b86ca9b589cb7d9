"""Many users' LoRAs in one forward pass: a gathered multi-adapter Linear (Punica, S-LoRA).
It wraps the layers PEFT's LoRA adapts: nn.Linear and GPT-2's Conv1D (`adapters.layers`).

The adapters live stacked in memory, one *slot* per loaded user:

    A     (S, r, in)    lora_A weights, zero-padded to the largest rank r
    B     (S, out, r)   lora_B weights with the LoRA scaling folded in (B * alpha / r:
                        the product is linear in B, so the scale may ride on it)

Each batch row carries a slot index (-1 = no adapter, the bare base). Per row b,

    y_b = W x_b + B[idx_b] (A[idx_b] x_b)

computed for the whole batch with two batched matmuls over the gathered slots, so the
base matmul is shared by every user and one batch may hold 16 different users. Slot S
(one past the last) is all zeros and stands for "no adapter", so rows without an
adapter need no branch.

Loading reads a PEFT adapter directory through `ownlm.adapters.peft_io`: the same files
`PeftModel.from_pretrained` reads, so the output equals PEFT's
(tests/adapters/test_batched.py pins this).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ownlm.adapters.layers import adaptable_layers, compute_dtype, layer_dims
from ownlm.adapters.peft_io import LoadedAdapter, read_peft_adapter
from ownlm.errors import ConfigError, StoreError


class SlotState:
    """The per-row slot indices of the batch being run, shared by every wrapped layer."""

    def __init__(self, n_slots: int):
        self.n_slots = n_slots
        self.idx: torch.Tensor | None = None  # (batch,) long, -1 mapped to the zero slot
        self.version = 0  # bumped when idx or any slot changes: layers re-gather then


class BatchedLoraLinear(nn.Module):
    """A frozen Linear (or Conv1D) plus the stacked LoRA slots of every loaded user."""

    def __init__(self, base: nn.Module, state: SlotState, max_rank: int):
        super().__init__()
        self.base = base
        self.state = state
        n = state.n_slots + 1  # + the zero slot for rows without an adapter
        d_in, d_out = layer_dims(base)
        # float32 at least, as PEFT keeps and computes a LoRA over a bfloat16 or float16
        # base (so the served model is the evaluated one), from the layer's compute dtype,
        # never its storage's (uint8 for a 4-bit NF4 weight)
        dtype = torch.promote_types(compute_dtype(base), torch.float32)
        kw = {"dtype": dtype, "device": base.weight.device}
        self.register_buffer("A", torch.zeros(n, max_rank, d_in, **kw), persistent=False)
        self.register_buffer("B", torch.zeros(n, d_out, max_rank, **kw), persistent=False)
        self._gathered: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        idx = self.state.idx
        if idx is None:
            return y
        if self._gathered is None or self._gathered[0] != self.state.version:
            # gathered once per batch, reused by every decode step:
            # A[idx]^T (b, in, r), B[idx]^T (b, r, out)
            At = self.A[idx].transpose(1, 2).contiguous()
            Bt = self.B[idx].transpose(1, 2).contiguous()
            self._gathered = (self.state.version, At, Bt)
        _, At, Bt = self._gathered
        # x (b, T, in) @ (b, in, r) -> (b, T, r) @ (b, r, out) -> (b, T, out)
        return y + torch.bmm(torch.bmm(x.to(At.dtype), At), Bt).to(y.dtype)

    @torch.no_grad()
    def set_slot(self, slot: int, a: torch.Tensor | None, b: torch.Tensor | None) -> None:
        """Write one slot: a (r, in), b (out, r) already scaled; None clears it."""
        self.state.version += 1
        self._gathered = None
        self.A[slot].zero_()
        self.B[slot].zero_()
        if a is None:
            return
        r = a.shape[0]
        self.A[slot, :r].copy_(a)
        self.B[slot, :, :r].copy_(b)


class BatchedLora:
    """The batched LoRA layers installed in one HF causal LM, addressed by slot."""

    def __init__(
        self,
        model: nn.Module,
        layers: dict[str, BatchedLoraLinear],
        state: SlotState,
        max_rank: int,
    ):
        self.model = model
        self.layers = layers  # module name (as PEFT keys it, e.g. model.layers.0.self_attn.q_proj)
        self.state = state
        self.max_rank = max_rank

    @property
    def n_slots(self) -> int:
        return self.state.n_slots

    def load(self, slot: int, adapter: LoadedAdapter | str | Path) -> None:
        """Copy an adapter into `slot`; wrapped modules it does not touch get zeros."""
        if not 0 <= slot < self.n_slots:
            raise ConfigError(
                f"slot {slot} is out of range; this model has {self.n_slots} slots (0..{self.n_slots - 1})"
            )
        if not isinstance(adapter, LoadedAdapter):
            adapter = read_peft_adapter(adapter)
        unknown = sorted(set(adapter.weights) - set(self.layers))
        if unknown:
            raise StoreError(
                f"adapter targets modules {unknown[:3]} that are not batched here; "
                f"install_batched_lora with targets covering them (have {sorted(self.layers)[:2]}...)"
            )
        if adapter.rank > self.max_rank:
            raise StoreError(
                f"adapter rank {adapter.rank} exceeds max_rank={self.max_rank}; install with a larger max_rank"
            )
        for name, layer in self.layers.items():
            a, b = adapter.weights.get(name, (None, None))
            layer.set_slot(slot, a, b)

    def clear(self, slot: int) -> None:
        for layer in self.layers.values():
            layer.set_slot(slot, None, None)

    def slot_tensor(self, slots: list[int]) -> torch.Tensor:
        """(batch,) indices with -1 (no adapter) mapped to the zero slot."""
        device = next(iter(self.layers.values())).A.device
        return torch.tensor(
            [self.n_slots if s < 0 else s for s in slots], dtype=torch.long, device=device
        )

    @contextmanager
    def use(self, slots: list[int] | torch.Tensor | None):
        """Run the model with row i using slot slots[i] (-1: no adapter)."""
        prev = self.state.idx
        if slots is not None and not isinstance(slots, torch.Tensor):
            slots = self.slot_tensor(list(slots))
        self.state.idx = slots
        self.state.version += 1
        try:
            yield
        finally:
            self.state.idx = prev
            self.state.version += 1


def install_batched_lora(
    model: nn.Module, n_slots: int, max_rank: int, targets: tuple[str, ...]
) -> BatchedLora:
    """Wrap every layer whose name ends in one of `targets` (the served adapters'
    modules, or the backbone's `default_targets`) in place; returns the handle.
    A module so named that no LoRA slot can wrap (not an nn.Linear nor a Conv1D) is a
    ConfigError naming the model type, before anything is wrapped."""
    state = SlotState(n_slots)
    fix = "serve adapters trained on this base, on such layers"
    hits = adaptable_layers(model, targets, fix=fix)
    layers: dict[str, BatchedLoraLinear] = {}
    for name, module in hits:
        parent_name, _, child = name.rpartition(".")
        wrapped = BatchedLoraLinear(module, state, max_rank)
        setattr(model.get_submodule(parent_name), child, wrapped)
        layers[name] = wrapped
    return BatchedLora(model, layers, state, max_rank)
