"""Each family's LoRA targets are PEFT's own; PROPER's experts sit on the model's FFN."""

from __future__ import annotations

import pytest
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TABLE

from ownlm.adapters.layers import adaptable_layers
from ownlm.backbone.families import ffn_targets, lora_targets
from ownlm.errors import ConfigError
from ownlm.testing import FAMILIES, family_backbone

SMALL = {"hidden": 32, "layers": 2, "heads": 2, "intermediate": 48}


@pytest.fixture(scope="module")
def models():
    return {f: family_backbone(f, **SMALL).model for f in (*FAMILIES, "phi3")}


@pytest.mark.parametrize("family", FAMILIES)
def test_default_targets_are_pefts_and_name_layers_every_part_can_batch(models, family):
    model = models[family]
    assert lora_targets(model) == tuple(PEFT_TABLE[family])
    hits = adaptable_layers(model, lora_targets(model))
    assert len(hits) >= SMALL["layers"]  # at least one per block


def test_ffn_targets_name_the_feed_forward_layers_only(models):
    assert ffn_targets(models["llama"]) == ("gate_proj", "up_proj", "down_proj")
    assert ffn_targets(models["phi"]) == ("fc1", "fc2")
    # GPT-2's attention has a c_proj too: the FFN's is named with its block
    gpt2 = ffn_targets(models["gpt2"])
    assert gpt2 == ("c_fc", "mlp.c_proj")
    names = [n for n, _ in adaptable_layers(models["gpt2"], gpt2)]
    assert len(names) == 2 * SMALL["layers"] and all(".mlp." in n for n in names)


def test_a_model_type_peft_has_no_default_for_is_one_line_naming_the_fix(models):
    # Phi-3 is not in PEFT's table: its fused qkv_proj has no default
    with pytest.raises(ConfigError) as e:
        lora_targets(models["phi3"])
    msg = str(e.value)
    assert "'phi3'" in msg and "population.targets" in msg and "qkv_proj" in msg
    assert "\n" not in msg
