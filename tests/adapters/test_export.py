import json

import pytest
import torch
from peft import PeftModel

from ownlm.adapters.export import export_mixture
from ownlm.adapters.mixture import (
    TokenUserRouter,
    UserRouter,
    install_mixture,
    mixture_layers,
    routing,
    uninstall_mixture,
)
from ownlm.errors import ConfigError
from tests.adapters.test_mixture import tiny_llama

TARGETS = ("gate_proj", "up_proj", "down_proj")


def random_user_mixture(model, groups=4, r=2, r_u=3, targets=TARGETS):
    state = install_mixture(model, targets, groups, r, 4, lambda lin: UserRouter(1, groups))
    torch.manual_seed(1)
    for layer in mixture_layers(model).values():
        with torch.no_grad():
            layer.B.normal_(std=0.2)
            layer.router.logits.normal_()
        layer.add_user_lora(r_u, 6)
        with torch.no_grad():
            layer.user_B.normal_(std=0.2)
    return state


def test_exported_flat_lora_equals_mixture_under_vanilla_peft(tmp_path):
    model = tiny_llama()
    ids = torch.randint(0, 300, (2, 7))
    state = random_user_mixture(model)
    with torch.no_grad(), routing(state, user_ids=torch.tensor([0])):
        mixed = model(input_ids=ids).logits
    export_mixture(model, tmp_path / "flat")
    cfg = json.loads((tmp_path / "flat" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 * 2 + 3 and cfg["lora_alpha"] == cfg["r"]

    base = uninstall_mixture(model)
    with torch.no_grad():
        plain = base(input_ids=ids).logits
    peft_model = PeftModel.from_pretrained(base, tmp_path / "flat").eval()
    with torch.no_grad():
        flat = peft_model(input_ids=ids).logits
    assert (mixed - plain).abs().max() > 1e-3  # the adapter does something
    assert (flat - mixed).abs().max().item() < 1e-5


def test_a_gpt2_mixture_exports_a_lora_auto_peft_loads(tmp_path):
    """GPT-2's FFN layers are Conv1D (weight (in, out)): the flat export still equals the
    mixture, and, with task_type CAUSAL_LM, AutoPeftModelForCausalLM loads it alone."""
    import warnings

    from peft import AutoPeftModelForCausalLM

    from ownlm.testing import family_backbone

    backbone = family_backbone("gpt2", hidden=32, layers=2, heads=2, intermediate=48)
    backbone.save(tmp_path / "base")
    model, ids = backbone.model, torch.randint(0, 300, (2, 7))
    state = random_user_mixture(model, targets=backbone.ffn_targets)
    assert len(mixture_layers(model)) == 4  # c_fc and mlp.c_proj of 2 blocks, no attn.c_proj
    with torch.no_grad(), routing(state, user_ids=torch.tensor([0])):
        mixed = model(input_ids=ids).logits
    export_mixture(model, tmp_path / "flat", 0, str(tmp_path / "base"), task_type="CAUSAL_LM")
    cfg = json.loads((tmp_path / "flat" / "adapter_config.json").read_text())
    assert cfg["task_type"] == "CAUSAL_LM" and cfg["fan_in_fan_out"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # PEFT's Conv1D fan_in_fan_out warning
        loaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "flat").eval()
    with torch.no_grad():
        assert (loaded(input_ids=ids).logits - mixed).abs().max().item() < 1e-5


def test_input_dependent_router_refuses_to_flatten(tmp_path):
    model = tiny_llama()
    install_mixture(model, TARGETS, 2, 2, 2, lambda lin: TokenUserRouter(lin.in_features, 4, 2))
    with pytest.raises(ConfigError, match="user-only"):
        export_mixture(model, tmp_path / "x")


def test_vllm_hint_rounds_the_rank_up_to_a_max_lora_rank_vllm_accepts(tmp_path):
    import json

    from ownlm.adapters.export import vllm_hint

    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 40}))
    hint = vllm_hint(tmp_path / "base", tmp_path, "user-u1")
    assert "--max-lora-rank 64" in hint and f"--lora-modules user-u1={tmp_path}" in hint
    assert "--enable-lora --max-loras 16" in hint  # vLLM's default is one adapter per batch
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 600}))
    assert "exceeds" in vllm_hint(tmp_path / "base", tmp_path, "u")
    assert "causal" in vllm_hint(tmp_path / "base", tmp_path, "u", kind="encoder")


@pytest.mark.parametrize(
    "arch, served",
    [("LlamaForCausalLM", True), ("Qwen2ForCausalLM", True), ("GPT2LMHeadModel", False)],
)
def test_vllm_line_only_for_architectures_vllm_serves_with_lora(tmp_path, arch, served):
    from ownlm.adapters.export import vllm_hint, vllm_problem

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text(json.dumps({"architectures": [arch]}))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8}))
    problem = vllm_problem(tmp_path / "base", tmp_path)
    assert (problem is None) == served
    if served:
        assert vllm_hint(tmp_path / "base", tmp_path, "u").startswith("vllm serve")
    else:
        assert "cannot apply a LoRA to it" in problem and "ownlm serve" in problem
