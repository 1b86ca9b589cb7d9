"""The user stage's PEFT methods, each through PEFT's own config (issue #11, item 3;
OPPU Sec. 5 finds OPPU "versatile with different PEFT methods"):

    lora    LoraConfig: low-rank updates of the attention projections (`adapters.lora`)
    ia3     IA3Config (Liu et al. 2022): learned vectors rescaling the keys, the values
            and the feed-forward's inner activations; no rank, no init to tune
    prompt  PromptTuningConfig (Lester et al. 2021): `user.virtual_tokens` learned input
            embeddings prepended to every prompt, initialised from vocabulary tokens

All three save as vanilla PEFT directories. What each is served by differs
(`how_served`): ownlm's batched server and vLLM apply LoRA only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ownlm.config import UserSettings
from ownlm.errors import ConfigError

METHODS = ("lora", "ia3", "prompt")
PEFT_TYPES = {"LORA": "lora", "IA3": "ia3", "PROMPT_TUNING": "prompt"}  # adapter_config.json
NAMES = {"lora": "LoRA", "ia3": "IA3", "prompt": "prompt tuning"}

# IA3's modules: the IA3 paper's choice, keys, values and the FFN's inner activations.
# A causal LM takes PEFT's own tables by its model type (Llama: k_proj, v_proj,
# down_proj; GPT-2: c_attn, mlp.c_proj). MiniLM (BERT): key, value and the FFN's
# output.dense of each layer, as (targets, feed-forward modules, whose *input* is
# rescaled); regexes, since the suffix "output.dense" also names the attention's output
# projection (`attention.output.dense`), which IA3 leaves be.
IA3_ENCODER = (
    r".*\.(attention\.self\.(key|value)|layer\.\d+\.output\.dense)",
    r".*\.layer\.\d+\.output\.dense",
)
PROMPT_ON_ENCODER = (
    "prompt tuning needs a causal LM: it prepends learned embeddings to the input, and "
    "ownlm's MiniLM classifier takes token ids only; with backbone minilm use "
    "user.method=lora or user.method=ia3 (e.g. --set user.method=ia3)"
)


def check_method(method: str) -> str:
    """`method`, or a ConfigError naming the choices."""
    if method not in METHODS:
        raise ConfigError(
            f"user.method is {method!r}; choose one of {', '.join(METHODS)} "
            "(e.g. --set user.method=ia3)"
        )
    return method


def method_config(backbone, s: UserSettings, method: str | None = None, head: bool = True):
    """PEFT's config of `method` (default `s.method`) for `backbone`. `head=False` leaves
    the encoder's label head out of the adapter, as `lora_config` does."""
    from peft import IA3Config, PromptTuningConfig, TaskType
    from transformers.pytorch_utils import Conv1D

    from ownlm.adapters.layers import adaptable_layers
    from ownlm.adapters.lora import lora_config

    method = check_method(method or s.method)
    if method == "lora":
        return lora_config(backbone, s, head)
    saved = (list(getattr(backbone, "modules_to_save", ())) or None) if head else None
    if method == "ia3":
        targets, feedforward = ia3_modules(backbone)
        causal = backbone.kind == "causal"
        layers = adaptable_layers(backbone.model, targets, "user.targets") if causal else []
        return IA3Config(
            # CAUSAL_LM: vanilla `AutoPeftModelForCausalLM` loads it, PEFT's generate works
            task_type=TaskType.CAUSAL_LM if causal else None,
            target_modules=targets,
            feedforward_modules=feedforward,
            # GPT-2's Conv1D: as PEFT would set it itself, with a warning
            fan_in_fan_out=any(isinstance(m, Conv1D) for _, m in layers),
            modules_to_save=saved,
        )
    if backbone.kind != "causal":
        raise ConfigError(PROMPT_ON_ENCODER)
    return PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,  # PeftModelForCausalLM prepends the virtual tokens
        num_virtual_tokens=s.virtual_tokens,
        prompt_tuning_init="SAMPLE_VOCAB",  # Lester et al. Sec. 3: vocabulary init
    )


def ia3_modules(backbone):
    """(IA3's targets, its feed-forward modules) for `backbone`: PEFT's tables for a
    causal LM's model type, ownlm's MiniLM choice for the encoder."""
    from peft.utils import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD,
    )
    from peft.utils import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS

    if backbone.kind == "encoder":
        return IA3_ENCODER
    kind = getattr(getattr(backbone.model, "config", None), "model_type", None)
    if backbone.kind != "causal" or kind not in TARGETS or kind not in FEEDFORWARD:
        raise ConfigError(
            f"PEFT has no IA3 modules for this {kind or backbone.kind} model; train its "
            "users with user.method=lora (--set user.method=lora)"
        )
    return TARGETS[kind], FEEDFORWARD[kind]


def inject_method(
    backbone,
    s: UserSettings,
    seed: int,
    gradient_checkpointing: bool = False,
    head: bool = True,
    method: str | None = None,
):
    """Wrap the backbone's model with a fresh adapter of `method` (default `s.method`),
    deterministic per seed; take it off with `adapters.lora.detach`."""
    from peft import get_peft_model

    from ownlm.adapters.lora import enable_checkpointing, inject

    method = check_method(method or s.method)
    if method == "lora":
        return inject(backbone, s, seed, gradient_checkpointing, head)
    config = method_config(backbone, s, method, head)
    torch.manual_seed(seed)
    model = get_peft_model(backbone.model, config)
    if gradient_checkpointing:
        enable_checkpointing(backbone)
    return model


def trainable_parameters(peft_model) -> int:
    """The adapter's trainable parameters, as PEFT counts them (the encoder's per-user
    label head included)."""
    return int(peft_model.get_nb_trainable_parameters()[0])


def adapter_method(path: str | Path) -> str:
    """The method of a stored PEFT directory ("lora", "ia3", "prompt"; the PEFT type,
    lower-cased, for any other), read from its adapter_config.json."""
    cfg = json.loads((Path(path) / "adapter_config.json").read_text())
    peft_type = str(cfg.get("peft_type", "LORA"))
    return PEFT_TYPES.get(peft_type, peft_type.lower())


def how_served(method: str) -> str:
    """One sentence: what serves an adapter of `method`."""
    if method == "lora":
        return "LoRA adapters are served by `ownlm serve` (batched, per row) and by vLLM"
    name = NAMES.get(method, method)
    return (
        f"{name} adapters are not served by `ownlm serve` nor vLLM (both apply LoRA only): "
        "load one with vanilla PEFT (`ownlm export` writes its PEFT directory and the line "
        "that loads it) or score it with `ownlm eval`; train LoRA users "
        "(user.method=lora) to serve them"
    )


def load_trainable(backbone, path: str | Path):
    """A stored adapter of any method on the backbone's model, trainable (`ownlm
    update`). PEFT refuses `is_trainable` for prompt learning ("Cannot set a prompt
    learning adapter to trainable"): such an adapter is loaded as PEFT allows and its
    virtual tokens are made trainable again, the only parameters it has."""
    from peft import PeftConfig, PeftModel

    if not PeftConfig.from_pretrained(str(path)).is_prompt_learning:
        return PeftModel.from_pretrained(backbone.model, path, is_trainable=True)
    model = PeftModel.from_pretrained(backbone.model, path)
    for p in model.prompt_encoder.parameters():
        p.requires_grad_(True)
    return model
