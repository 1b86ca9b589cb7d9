"""What a Hugging Face model family means for ownlm, read from PEFT and from the model.

    lora_targets(model)   the modules a LoRA adapts when the config names none: PEFT's own
                          table, by `config.model_type` (q_proj,v_proj for Llama, Qwen2,
                          Mistral and Gemma; q_proj,v_proj,fc1,fc2 for Phi; c_attn for GPT-2)
    ffn_targets(model)    the layers of each block's feed-forward network, where PROPER puts
                          its group experts (Sec. 3), found in the model's own structure

A model type PEFT has no default for is refused in one line that lists the model's
linear layers and the setting that names them.
"""

from __future__ import annotations

import torch
from torch import nn

from ownlm.errors import ConfigError

FFN_BLOCKS = ("mlp", "feed_forward", "ffn")  # how HF decoder layers name their FFN block
WRAPPED = ("base", "base_layer")  # where ownlm's and PEFT's wrappers keep the wrapped layer


def _model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def _linear_names(model: nn.Module) -> str:
    return ",".join(dict.fromkeys(n.rsplit(".", 1)[-1] for n in _matrix_names(model)))


def _matrix_names(model: nn.Module) -> list[str]:
    """The names of the model's weight-matrix layers, the head excluded, each once
    whether bare or wrapped by an adapter (a wrapper keeps its layer as .base or
    .base_layer: PROPER's mixture, the serving slots, PEFT)."""
    return [n for n, m in model.named_modules() if _is_matrix(m) and _own_name(n)]


def _own_name(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return last not in WRAPPED and last != "lm_head"


def _is_matrix(module: nn.Module) -> bool:
    for attr in WRAPPED:  # an adapter's wrapper stands for the layer it wraps
        module = getattr(module, attr, module)
    w = getattr(module, "weight", None)
    return isinstance(w, torch.Tensor) and w.dim() == 2 and not isinstance(module, nn.Embedding)


def _table_value(value) -> tuple[str, ...]:
    """PEFT's entries are a list of name suffixes or one regex string (e.g. gemma4)."""
    return (value,) if isinstance(value, str) else tuple(value)


def lora_targets(model: nn.Module, required: bool = True) -> tuple[str, ...]:
    """PEFT's default LoRA targets for `model`'s type. A type PEFT has no entry for is a
    ConfigError naming the fix, or () with `required=False`."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as TABLE

    kind = _model_type(model)
    if kind in TABLE:
        return _table_value(TABLE[kind])
    if not required:
        return ()
    raise ConfigError(
        f"PEFT has no default LoRA targets for model type {kind!r}; name the layers to "
        "adapt with --set population.targets=... and --set user.targets=... (its "
        f"linear layers: {_linear_names(model)})"
    )


def ffn_targets(model: nn.Module, key: str = "proper.targets") -> tuple[str, ...]:
    """The layers of the first block's FFN (a module named mlp, feed_forward or ffn), as
    targets that name those layers in every block and nothing else: the layer's own
    name when no other layer is called so (`gate_proj`), else block.layer (`mlp.c_proj`
    for GPT-2, whose attention has a c_proj too)."""
    names = _matrix_names(model)
    for block_name, block in model.named_modules():
        block_kind = block_name.rsplit(".", 1)[-1]
        if block_kind not in FFN_BLOCKS:
            continue
        layers = [child for child, m in block.named_children() if _is_matrix(m)]
        if layers:
            return tuple(_unique_suffix(names, block_kind, child) for child in layers)
    raise ConfigError(
        f"no feed-forward block (a module named {' or '.join(FFN_BLOCKS)}) in this "
        f"{_model_type(model) or type(model).__name__} model; name PROPER's expert layers "
        f"with --set {key}=... (its linear layers: {_linear_names(model)})"
    )


def _unique_suffix(names: list[str], block: str, child: str) -> str:
    others = [n for n in names if n.endswith("." + child) and not n.endswith(f".{block}.{child}")]
    return f"{block}.{child}" if others else child
