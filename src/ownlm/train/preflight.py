"""Before any work: the layers every LoRA of the asked stages will sit on.

`check_targets` builds the run's backbone as an empty skeleton (its modules on the
`meta` device: no weights read, no tiny pre-training) and resolves each stage's targets
on it as the stage will: the population and user LoRAs (`lora.targets`, default PEFT's
table for the model type), PROPER's experts (`proper.targets`, default the FFN's
layers). A model type PEFT has no default for, or targets that name nothing or a layer
ownlm cannot batch (`adapters.layers`), is one ConfigError naming the model type and the
setting, before stage 1 trains.
"""

from __future__ import annotations

import torch

from ownlm.adapters.layers import adaptable_layers
from ownlm.adapters.lora import peft_targets
from ownlm.backbone.families import ffn_targets, lora_targets
from ownlm.variants import of_method


def skeleton(cfg):
    """The run's causal LM with its modules on the meta device, or None (the MiniLM
    encoder, whose targets are ownlm's own; a spec that does not load, which the loader
    reports itself)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if cfg.backbone == "minilm":
        return None
    with torch.device("meta"):
        if cfg.backbone == "tiny":
            from ownlm.backbone.tiny import build_model

            return build_model(cfg.tiny, cfg.tiny.vocab_size)
        try:
            config = AutoConfig.from_pretrained(cfg.backbone)
        except (OSError, ValueError):
            return None
        return AutoModelForCausalLM.from_config(config)


def check_targets(cfg, stages: list[str], variants: list[str]) -> None:
    """Resolve the targets of every LoRA `stages` and `variants` will inject, on the
    backbone's skeleton; a ConfigError (one line) when one cannot be placed."""
    model = skeleton(cfg)
    if model is None:
        return
    loras = []
    if "population" in stages:
        loras.append((cfg.population.targets, "population.targets"))
    if "users" in stages and cfg.user.method == "lora" and set(variants) & set(of_method("oppu")):
        loras.append((cfg.user.targets, "user.targets"))
    for targets, key in loras:
        targets = peft_targets(targets or lora_targets(model))
        if targets != "all-linear":
            adaptable_layers(model, targets, key)
    proper = "groups" in stages or "control" in stages or set(variants) - set(of_method("oppu"))
    if proper:
        adaptable_layers(model, cfg.proper.targets or ffn_targets(model), "proper.targets")
