"""The layers a LoRA can sit on: nn.Linear and GPT-2's Conv1D; others refused in one line."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ownlm.adapters.layers import adaptable_layers, layer_dims, matches
from ownlm.errors import ConfigError
from ownlm.testing import family_backbone


def test_dims_read_the_conv1d_weight_transposed():
    conv, lin = Conv1D(nf=6, nx=4), nn.Linear(4, 6)
    assert layer_dims(conv) == layer_dims(lin) == (4, 6)
    assert conv.weight.shape == (4, 6) and lin.weight.shape == (6, 4)
    assert layer_dims(nn.Embedding(10, 4)) is None
    x = torch.randn(2, 3, 4)
    assert conv(x).shape == lin(x).shape == (2, 3, 6)


def test_targets_match_as_peft_matches_a_list_or_a_regex():
    assert matches("transformer.h.0.mlp.c_proj", ["mlp.c_proj"])
    assert not matches("transformer.h.0.attn.c_proj", ["mlp.c_proj"])
    assert matches("bert.encoder.layer.3.intermediate.dense", [r".*intermediate\.dense"])


def test_targets_on_other_layers_or_on_nothing_are_one_line_naming_type_and_setting():
    model = family_backbone("gpt2", hidden=32, layers=1, heads=2, intermediate=48).model
    with pytest.raises(ConfigError) as e:
        adaptable_layers(model, ["wte"], "user.targets")  # the token embedding
    msg = str(e.value)
    assert "gpt2" in msg and "Embedding" in msg and "--set user.targets=" in msg
    assert "c_attn" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="no module of this gpt2 model matches targets q_proj"):
        adaptable_layers(model, ["q_proj"])


def test_a_lora_on_a_type_without_pefts_default_names_the_setting():
    from ownlm.adapters.lora import lora_config
    from ownlm.config import LoraSettings, UserSettings

    backbone = family_backbone("phi3", hidden=32, layers=1, heads=2, intermediate=48)
    assert backbone.default_targets == ()  # not in PEFT's table: nothing guessed
    with pytest.raises(ConfigError, match=r"no default LoRA targets for this phi3.*user\.targets"):
        lora_config(backbone, UserSettings())
    cfg = lora_config(backbone, LoraSettings(targets=["qkv_proj"]))
    assert cfg.target_modules == {"qkv_proj"} and not cfg.fan_in_fan_out
