"""The layers a LoRA can sit on, as PEFT's LoRA adapts them, and which modules a list of
targets names.

    nn.Linear   weight (out, in)   Llama, Qwen2, Mistral, Gemma, Phi, MiniLM; bitsandbytes'
                                   Linear4bit is one too
    Conv1D      weight (in, out)   transformers' GPT-2 layer: a Linear with its weight
                                   transposed (PEFT's `fan_in_fan_out`)

A LoRA's A (r, in) and B (out, r) read the same for both, since the LoRA acts on the
layer's input and output, never on its weight. Every part of ownlm that wraps layers
by hand (the serving slots, the PROPER mixture, the multi-user trainer) asks `layer_dims`
for a layer's sizes and `adaptable_layers` for the layers of a target list, which refuses
any other layer type before any work, in one line naming the model type and the fix.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ownlm.errors import ConfigError


def layer_dims(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a layer a LoRA can adapt; None for any other module."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):  # weight (in, out) = (nx, nf)
        return module.nx, module.nf
    return None


def compute_dtype(layer: nn.Module) -> torch.dtype:
    """The dtype a layer computes in, which LoRA slots beside it take: a bitsandbytes
    4-bit layer's `compute_dtype` (its weight is packed uint8 storage, never a dtype to
    compute in), else its weight's dtype."""
    if getattr(layer, "compute_dtype", None) is not None:
        return layer.compute_dtype
    w = layer.weight
    return w.dtype if w.is_floating_point() else torch.float32


def matches(name: str, targets) -> bool:
    """Does module `name` match a target: a name suffix (`q_proj`, `mlp.c_proj`, as PEFT
    matches a list) or a regex over the whole name (`.*intermediate\\.dense`)?"""
    if isinstance(targets, str):
        targets = [targets]
    return any(
        name == t or name.endswith("." + t) or re.fullmatch(t, name) is not None for t in targets
    )


def model_type(model: nn.Module) -> str:
    """The model's `config.model_type` (e.g. "gpt2"), else its class name."""
    return getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__


def adaptable_names(model: nn.Module) -> list[str]:
    """The distinct last name parts of the layers a LoRA can adapt (the head excluded)."""
    names = [n.rsplit(".", 1)[-1] for n, m in model.named_modules() if layer_dims(m)]
    # the head is no target; .base / .base_layer are wrapped layers (ownlm's, PEFT's)
    return [n for n in dict.fromkeys(names) if n not in ("lm_head", "head", "base", "base_layer")]


def adaptable_layers(model: nn.Module, targets, key: str = "lora.targets", fix: str = "") -> list:
    """(name, layer) of every module of `model` that `targets` names, each a layer a LoRA
    can sit on. A ConfigError naming the model type and the fix (`fix`, else: change the
    setting `key`) when no module matches or one that matches is of another type (an
    embedding, a whole block)."""
    kind, names = model_type(model), ",".join(adaptable_names(model))
    fix = fix or f"name some with --set {key}=..."
    if not targets:  # a model type without a default in PEFT's table, and none named
        raise ConfigError(
            f"PEFT has no default LoRA targets for this {kind} model; its linear layers "
            f"are {names}: {fix}"
        )
    hits = [(n, m) for n, m in model.named_modules() if n and matches(n, targets)]
    if not hits:
        raise ConfigError(
            f"no module of this {kind} model matches targets {_show(targets)}; its linear "
            f"layers are {names}: {fix}"
        )
    bad = [(n, m) for n, m in hits if layer_dims(m) is None]
    if bad:
        name, module = bad[0]
        raise ConfigError(
            f"targets {_show(targets)} name {name} ({type(module).__name__}) of this {kind} "
            f"model; ownlm adapts nn.Linear and Conv1D layers only, here {names}: {fix}"
        )
    return hits


def _show(targets) -> str:
    return targets if isinstance(targets, str) else ",".join(targets)
