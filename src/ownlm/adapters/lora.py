"""A fresh PEFT LoRA on a backbone, and taking it off again exactly.

Every stage that trains a plain LoRA (the population stage, OPPU's user stage, the
studies) injects it with `inject` and removes it with `detach`; the user stage's other
PEFT methods (IA3, prompt tuning: `adapters.methods`) are taken off by `detach` too.
"""

from __future__ import annotations

import re

import torch
from peft import LoraConfig, get_peft_model
from transformers.pytorch_utils import Conv1D

from ownlm.adapters.layers import adaptable_layers, layer_dims
from ownlm.config import LoraSettings, UserSettings
from ownlm.errors import ConfigError

REENTRANT_OFF = {"use_reentrant": False}  # torch's recommended checkpointing mode


def lora_config(backbone, s: LoraSettings, head: bool = True) -> LoraConfig:
    """PEFT's config for `s` on `backbone`; `head=False` leaves the backbone's trained
    head (the encoder's label head, `modules_to_save`) frozen and out of the adapter.
    Without `s.targets`, the modules PEFT's own table names for the model's type
    (`backbone.default_targets`); the targets must name nn.Linear or Conv1D layers,
    which every part of ownlm can batch, else a ConfigError naming the setting."""
    if s.r <= 0:
        raise ConfigError(f"LoRA rank r must be a positive integer, got {s.r}")
    targets = peft_targets(s.targets or backbone.default_targets)
    key = "user.targets" if isinstance(s, UserSettings) else "population.targets"
    if targets == "all-linear":
        layers = [(n, m) for n, m in backbone.model.named_modules() if layer_dims(m)]
    else:
        layers = adaptable_layers(backbone.model, targets, key)
    return LoraConfig(
        r=s.r,
        lora_alpha=s.alpha,
        lora_dropout=s.dropout,
        target_modules=targets,
        # GPT-2's Conv1D keeps its weight as (in, out): PEFT's fan_in_fan_out, set as PEFT
        # would set it itself (with a warning) on meeting the layer
        fan_in_fan_out=any(isinstance(m, Conv1D) for _, m in layers),
        modules_to_save=(list(getattr(backbone, "modules_to_save", ())) or None) if head else None,
        bias="none",
    )


def peft_targets(targets) -> list[str] | str:
    """Targets as PEFT's target_modules reads them: "all-linear" (every linear layer but
    the output head), one regex over the whole module name (a string), else a list of
    module name suffixes."""
    targets = list(targets)
    if len(targets) == 1 and not re.fullmatch(r"[\w.]+", targets[0]):
        return targets[0]
    return targets


def inject(
    backbone, s: LoraSettings, seed: int, gradient_checkpointing: bool = False, head: bool = True
):
    """Wrap the backbone's model with a fresh LoRA (deterministic init per seed). The
    LoRA weights are float32 whatever the base's precision (PEFT's adapter autocast), so
    they train and are saved exactly. With `gradient_checkpointing` the base recomputes
    its activations in the backward pass (Hugging Face models only)."""
    torch.manual_seed(seed)
    if getattr(backbone.model, "is_loaded_in_4bit", False) and not getattr(
        backbone.model, "_ownlm_kbit_ready", False
    ):
        from peft import prepare_model_for_kbit_training

        # QLoRA: norms in float32, inputs that carry gradients through the frozen 4-bit base
        prepare_model_for_kbit_training(backbone.model, use_gradient_checkpointing=False)
        backbone.model._ownlm_kbit_ready = True
    model = get_peft_model(backbone.model, lora_config(backbone, s, head))
    if gradient_checkpointing:
        enable_checkpointing(backbone)
    return model


def enable_checkpointing(backbone) -> None:
    """Make the backbone recompute its activations in the backward pass (Hugging Face
    models only; another backbone is a ConfigError naming the fix)."""
    if not hasattr(backbone.model, "gradient_checkpointing_enable"):
        raise ConfigError(
            f"gradient_checkpointing needs a Hugging Face model; the {backbone.kind} "
            f"backbone {backbone.name!r} has none: set gradient_checkpointing=false"
        )
    set_checkpointing(backbone.model, True)


def set_checkpointing(model, on: bool) -> None:
    """Turn a Hugging Face model's activation checkpointing on or off, by transformers'
    own name for it: `activation_checkpointing_*` since 5.x (`gradient_checkpointing_*`
    warns there that it will be removed in v6), else the older name."""
    new = hasattr(model, "activation_checkpointing_enable")
    if on and new:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=REENTRANT_OFF)
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=REENTRANT_OFF)
    elif new:
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()


def is_checkpointing(model) -> bool:
    """Whether a model recomputes its activations (False for a non-HF model)."""
    if hasattr(type(model), "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))


def detach(backbone, peft_model):
    """Remove a PEFT adapter and give the backbone its own base model back, exactly.

    LoRA and IA3 layers are unloaded; a prompt-tuned model never touched the base's
    layers (its virtual tokens live in the PEFT wrapper), so the base is taken back as
    it is. modules_to_save (the encoder's label head) are restored from the base's copy,
    since PEFT's unload() leaves the adapter's trained copy in place, which would carry
    one user's head into the next user's model.
    """
    if peft_model.peft_config[peft_model.active_adapter].is_prompt_learning:
        model = peft_model.get_base_model()
    else:
        model = peft_model.unload()
    vars(model).pop("peft_config", None)  # PEFT's note on the base: the base has no adapter
    if is_checkpointing(model):
        set_checkpointing(model, False)
    for name, state in getattr(backbone, "_saved", {}).items():
        model.get_submodule(name).load_state_dict(state)
    backbone.model = model.eval()
    return backbone.model
