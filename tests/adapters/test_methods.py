"""The user stage's PEFT methods: PEFT's own configs, the base given back exactly after
each, counts as PEFT counts them, and the refusals that name what works."""

import pytest
import torch

from ownlm.adapters.lora import detach
from ownlm.adapters.methods import (
    adapter_method,
    check_method,
    how_served,
    inject_method,
    method_config,
    trainable_parameters,
)
from ownlm.config import UserSettings
from ownlm.errors import ConfigError
from ownlm.testing import toy_backbone

HIDDEN, LAYERS, FFN = 32, 2, 64


@pytest.fixture(scope="module")
def backbone():
    torch.set_num_threads(1)
    return toy_backbone(hidden=HIDDEN, layers=LAYERS, heads=2, intermediate=FFN)


def _logits(backbone, model):
    ids, mask, _ = backbone.encode_pairs(["the user likes", "a book"], ["music", "news"])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("method", ["lora", "ia3", "prompt"])
def test_detach_gives_the_base_back_exactly(backbone, method):
    before = _logits(backbone, backbone.model)
    state = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    model = inject_method(backbone, UserSettings(method=method), seed=3)
    with torch.no_grad():  # the adapter does something once its weights move
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.5)
    assert not torch.equal(_logits(backbone, model)[:, -before.shape[1] :], before)
    base = detach(backbone, model)
    assert base is backbone.model and not hasattr(base, "peft_config")
    assert torch.equal(_logits(backbone, base), before)
    after = base.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(state[k], after[k]) for k in state)


def test_configs_and_counts_are_pefts(backbone, tmp_path):
    s = UserSettings(r=4, virtual_tokens=5)
    ia3 = method_config(backbone, s, "ia3")
    assert ia3.peft_type.value == "IA3" and set(ia3.feedforward_modules) == {"down_proj"}
    assert set(ia3.target_modules) == {"k_proj", "v_proj", "down_proj"}
    expected = {
        "lora": LAYERS * 2 * 4 * (HIDDEN + HIDDEN),  # q_proj, v_proj: r * (in + out)
        "ia3": LAYERS * (HIDDEN + HIDDEN + FFN),  # k, v outputs; down_proj's input
        "prompt": 5 * HIDDEN,  # virtual tokens x embedding width
    }
    for method, count in expected.items():
        model = inject_method(backbone, s, seed=0, method=method)
        try:
            assert trainable_parameters(model) == count
            model.save_pretrained(tmp_path / method)
        finally:
            detach(backbone, model)
        assert adapter_method(tmp_path / method) == method


def test_unknown_method_and_what_serves_how(backbone):
    with pytest.raises(ConfigError, match="choose one of lora, ia3, prompt"):
        check_method("adapter")
    assert "`ownlm serve`" in how_served("lora")
    msg = how_served("ia3")
    assert "IA3" in msg and "vanilla PEFT" in msg and "LoRA only" in msg


def test_prompt_tuning_is_refused_on_the_encoder():
    class Encoder:  # what method_config reads of the MiniLM backbone
        kind = "encoder"
        modules_to_save = ("head",)

    with pytest.raises(ConfigError, match="user.method=ia3"):
        method_config(Encoder(), UserSettings(method="prompt"))
    ia3 = method_config(Encoder(), UserSettings(method="ia3"))
    assert ia3.modules_to_save == ["head"] and ia3.task_type is None


def test_ia3_on_minilm_rescales_keys_values_and_the_ffn_and_detaches_exactly():
    from ownlm.backbone.base import EncoderBackbone
    from ownlm.backbone.encoder import load_minilm_classifier

    backbone = EncoderBackbone(*load_minilm_classifier(("good", "bad", "meh")))
    ids, mask = backbone._batch(["a nice film", "terrible"])
    with torch.no_grad():
        before = backbone.model(input_ids=ids, attention_mask=mask)
    model = inject_method(backbone, UserSettings(method="ia3"), seed=0)
    c = backbone.model.config  # 6 layers, 384 wide, FFN 1536; the label head is the user's
    ia3 = c.num_hidden_layers * (2 * c.hidden_size + c.intermediate_size)
    assert trainable_parameters(model) == ia3 + 3 * c.hidden_size + 3
    adapted = {n.split(".layer.")[1] for n, p in model.named_parameters() if "ia3_l" in n}
    assert "0.output.dense.ia3_l.default" in adapted
    assert not any("attention.output" in n for n in adapted)  # not the attention's output
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3)
    detach(backbone, model)
    with torch.no_grad():
        assert torch.equal(backbone.model(input_ids=ids, attention_mask=mask), before)


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_gpt2_takes_pefts_modules_for_its_type_and_its_conv1d_layout(method):
    """GPT-2 (Conv1D, weight (in, out)): PEFT's own modules for gpt2, fan_in_fan_out set
    as PEFT would set it (no warning), the base given back exactly."""
    import warnings

    from ownlm.testing import family_backbone

    gpt2 = family_backbone("gpt2", hidden=HIDDEN, layers=1, heads=2, intermediate=FFN)
    cfg = method_config(gpt2, UserSettings(method=method))
    want = {"lora": {"c_attn"}, "ia3": {"c_attn", "mlp.c_proj"}}[method]
    assert set(cfg.target_modules) == want and cfg.fan_in_fan_out
    before = _logits(gpt2, gpt2.model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model = inject_method(gpt2, UserSettings(method=method), seed=0)
    detach(gpt2, model)
    assert torch.equal(_logits(gpt2, gpt2.model), before)
